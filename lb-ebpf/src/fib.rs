//! Next hop of a backend: `bpf_fib_lookup`, cached per CPU and per backend (answers and failures), then `XDP_TX` or
//! a devmap redirect.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::{bpf_fib_lookup, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};
use lb_common::{
    Backend, BackendId, FAMILY_V4, GlobalConfig, NEXTHOP_CACHE_TTL_NS, NEXTHOP_NEG_TTL_NS, NextHop,
    XDP_DROP,
};

use crate::{
    maps::{LB_NEXTHOP_CACHE, LB_TX_PORTS},
    verdict::{DROP_NO_ROUTE, TX, Verdict, redirect},
};

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// The FIB question for backend `be` (see [`next_hop`]), as if the packet had arrived on `ifindex`. `lb_hc` asks
/// the same one, so a probe leaves as a client's packet would.
#[inline(always)]
pub fn question(ifindex: u32, be: &Backend, cfg: &GlobalConfig) -> FibParams {
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.ifindex = ifindex;
    if be.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = cfg.encap_src_v4;
        p.__bindgen_anon_4.ipv4_dst = be.addr[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = cfg.encap_src_v6;
        p.__bindgen_anon_4.ipv6_dst = be.addr;
    }
    p
}

/// `bpf_fib_lookup` for the program context `ctx` (an `xdp_md` or a `__sk_buff`); the answer is written into `p`.
#[inline(always)]
pub fn lookup(ctx: *mut core::ffi::c_void, p: &mut FibParams) -> i64 {
    unsafe { bpf_fib_lookup(ctx, p, core::mem::size_of::<FibParams>() as i32, 0) }
}

/// The cached or freshly looked-up next hop towards backend `id`.
///
/// The question asked of the FIB depends on the backend alone (its address, and the balancer's own encapsulation
/// source of that family as the source, in both forwarding modes), because the answer is cached per backend: a
/// client-dependent question would hand one client's answer to the next.
///
/// The cache is checked against `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC at tick resolution, a memory read)
/// instead of `bpf_ktime_get_ns` (a clocksource read on every packet): a TTL of one second does not need better
/// than tick precision, and both clocks count from the same origin.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    id: BackendId,
    be: &Backend,
    cfg: &GlobalConfig,
) -> Result<NextHop, Verdict> {
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let cache = LB_NEXTHOP_CACHE.get_ptr_mut(id);
    if let Some(c) = cache
        && unsafe { (*c).expires_ns } > now
    {
        if unsafe { (*c).ifindex } == 0 {
            return Err(DROP_NO_ROUTE);
        }
        return Ok(unsafe { *c });
    }
    let mut p = question(unsafe { (*ctx.ctx).ingress_ifindex }, be, cfg);
    let rc = lookup(ctx.ctx as *mut _, &mut p);
    let (nh, result) = if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        let nh = NextHop {
            smac: p.smac,
            dmac: p.dmac,
            ifindex: p.ifindex,
            expires_ns: now + NEXTHOP_CACHE_TTL_NS,
        };
        (nh, Ok(nh))
    } else {
        let failed = NextHop {
            smac: [0; 6],
            dmac: [0; 6],
            ifindex: 0,
            expires_ns: now + NEXTHOP_NEG_TTL_NS,
        };
        (failed, Err(DROP_NO_ROUTE))
    };
    if let Some(c) = cache {
        unsafe { *c = nh };
    }
    result
}

/// Sends the rewritten frame: back out of the ingress interface, or through the devmap. An egress interface
/// userspace did not add to `LB_TX_PORTS` cannot be reached: counted as no route.
#[inline(always)]
pub fn emit(ctx: &XdpContext, nh: &NextHop) -> Verdict {
    if nh.ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        return TX;
    }
    match LB_TX_PORTS.redirect(nh.ifindex, XDP_DROP as u64) {
        Ok(action) => redirect(action),
        Err(_) => DROP_NO_ROUTE,
    }
}
