//! Next hop of a backend: `bpf_fib_lookup`, cached per CPU and per backend, then `XDP_TX` or a devmap redirect.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::{bpf_fib_lookup, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};
use lb_common::{
    AddrWords, BackendId, Counter, FAMILY_V4, NEXTHOP_CACHE_TTL_NS, NextHop, XDP_DROP, XDP_TX,
};

use crate::{
    maps::{LB_NEXTHOP_CACHE, LB_TX_PORTS},
    stats::Verdict,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

pub const DROP_NO_ROUTE: Verdict = Verdict::new(XDP_DROP, Counter::DropNoRoute);

/// The cached or freshly looked-up next hop towards backend `id` at `dst`.
///
/// The cache is checked against `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC at tick resolution, a memory read)
/// instead of `bpf_ktime_get_ns` (a clocksource read on every packet): a TTL of one second does not need better
/// than tick precision, and both clocks count from the same origin.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    id: BackendId,
    family: u8,
    dst: &AddrWords,
    src: &AddrWords,
) -> Result<NextHop, Verdict> {
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let cache = LB_NEXTHOP_CACHE.get_ptr_mut(id);
    if let Some(c) = cache
        && unsafe { (*c).expires_ns } > now
    {
        return Ok(unsafe { *c });
    }
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    if family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(DROP_NO_ROUTE);
    }
    let nh = NextHop {
        smac: p.smac,
        dmac: p.dmac,
        ifindex: p.ifindex,
        expires_ns: now + NEXTHOP_CACHE_TTL_NS,
    };
    if let Some(c) = cache {
        unsafe { *c = nh };
    }
    Ok(nh)
}

/// Sends the rewritten frame: back out of the ingress interface, or through the devmap. An egress interface
/// userspace did not add to `LB_TX_PORTS` cannot be reached: counted as no route.
#[inline(always)]
pub fn emit(ctx: &XdpContext, nh: &NextHop) -> Verdict {
    if nh.ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        return Verdict::new(XDP_TX, Counter::Tx);
    }
    match LB_TX_PORTS.redirect(nh.ifindex, XDP_DROP as u64) {
        Ok(action) => Verdict::new(action, Counter::Redirect),
        Err(_) => DROP_NO_ROUTE,
    }
}
