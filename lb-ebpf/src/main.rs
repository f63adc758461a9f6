//! The XDP programs. Each entry point calls a `try_` function and turns its result, success or error, into one
//! counted verdict; nothing returns `XDP_ABORTED`. Behaviour: docs/dataplane.md.
#![no_std]
#![no_main]

mod conntrack;
mod decap;
mod encap;
mod fib;
mod icmp;
mod loadgen;
mod maps;
mod parse;
mod select;
mod stats;
mod vip;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{
    BackendId, Counter, FAMILY_V4, FlowKey, GlobalConfig, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_TCP, IPPROTO_UDP, VIP_F_FRAG_HASH3, VIP_F_L2DSR, VipMeta, XDP_DROP, XDP_PASS, XDP_TX,
    hash::flow_hash,
};

use crate::{
    conntrack::Lookup,
    maps::{LB_BACKENDS, LB_CONFIG},
    parse::{EthHdr, L3, Ports, TCP_ACK, TCP_SYN, TcpHdr, frame_len, ptr_at},
    stats::{Verdict, finish},
};

const DROP_NO_BACKEND: Verdict = Verdict::new(XDP_DROP, Counter::DropNoBackend);
const DROP_MALFORMED: Verdict = Verdict::new(XDP_DROP, Counter::DropMalformed);
const DROP_FRAGMENT: Verdict = Verdict::new(XDP_DROP, Counter::DropFragment);
const PASS_MALFORMED: Verdict = Verdict::new(XDP_PASS, Counter::PassMalformed);

/// The balancer.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match try_lb_xdp(&ctx) {
        Ok(v) | Err(v) => finish(v),
    }
}

/// Backend side: strips the tunnel header of packets for served VIPs.
#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    finish(decap::try_lb_decap(&ctx))
}

/// A bare `XDP_PASS` for veth peers that receive native `XDP_TX`/`XDP_REDIRECT` frames.
#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Benchmark calibration: nothing but the program call.
#[xdp]
pub fn lb_empty(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Load-test generator (see loadgen.rs): next source port, `XDP_TX`; anything else is dropped.
#[xdp]
pub fn lb_loadgen(ctx: XdpContext) -> u32 {
    loadgen::try_lb_loadgen(&ctx).unwrap_or(XDP_DROP)
}

/// Benchmark floor: the least a forwarding program does (parse Ethernet + IPv4, swap MACs, `XDP_TX`).
#[xdp]
pub fn lb_floor(ctx: XdpContext) -> u32 {
    try_lb_floor(&ctx).unwrap_or(XDP_PASS)
}

#[inline(always)]
fn try_lb_floor(ctx: &XdpContext) -> Option<u32> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    if unsafe { (*eth).proto } != parse::ETH_P_IPV4 {
        return None;
    }
    ptr_at::<parse::Ipv4Hdr>(ctx, parse::ETH_HLEN)?;
    unsafe { core::mem::swap(&mut (*eth).dst, &mut (*eth).src) };
    Some(XDP_TX)
}

#[inline(always)]
fn config() -> Result<&'static GlobalConfig, Verdict> {
    LB_CONFIG.get(0).ok_or(DROP_NO_BACKEND)
}

#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let l3 = parse::parse(ctx)?;
    let len = frame_len(ctx) as u64;

    // Step 3: fragments (before ICMP: an ICMP fragment follows the fragment policy).
    if l3.fragment {
        let meta = vip::find_fragment(&l3.dst, l3.proto, l3.family).ok_or(icmp::PASS_NOT_VIP)?;
        stats::vip_packet(meta.vip_id, len);
        if meta.flags & VIP_F_FRAG_HASH3 == 0 {
            return Ok(DROP_FRAGMENT);
        }
        stats::count(Counter::FragmentHashed);
        let key = FlowKey {
            src: l3.src,
            dst: l3.dst,
            sport: 0,
            dport: 0,
            proto: l3.proto,
            family: l3.family,
            _pad: [0; 2],
        };
        let hash = flow_hash(&key);
        let cfg = config()?;
        let id = select::ring_pick(&meta, cfg, hash).ok_or(DROP_NO_BACKEND)?;
        return forward(ctx, &l3, &meta, cfg, id, FlowHash::known(&key, hash), len);
    }

    // Step 4: inbound ICMP too-big, steered by the quoted flow.
    if (l3.family == FAMILY_V4 && l3.proto == IPPROTO_ICMP)
        || (l3.family != FAMILY_V4 && l3.proto == IPPROTO_ICMPV6)
    {
        let q = icmp::parse_too_big(ctx, &l3)?;
        let meta = vip::find(&q.vip, q.vip_port, q.proto, l3.family).ok_or(icmp::PASS_NOT_VIP)?;
        stats::vip_packet(meta.vip_id, len);
        stats::count(Counter::IcmpSteered);
        let cfg = config()?;
        let (id, hash) = if meta.flags & VIP_F_FRAG_HASH3 != 0 {
            let hash = flow_hash(&q.flow.three_tuple());
            (select::ring_pick(&meta, cfg, hash), hash)
        } else {
            let hash = flow_hash(&q.flow);
            match conntrack::pinned(&q.flow) {
                Some(id) => (Some(id), hash),
                None => (select::ring_pick(&meta, cfg, hash), hash),
            }
        };
        let id = id.ok_or(DROP_NO_BACKEND)?;
        return forward(
            ctx,
            &l3,
            &meta,
            cfg,
            id,
            FlowHash::known(&q.flow, hash),
            len,
        );
    }

    // Step 5: TCP/UDP VIP lookup; only a VIP packet has its L4 header validated.
    if l3.proto != IPPROTO_TCP && l3.proto != IPPROTO_UDP {
        return Err(icmp::PASS_NOT_VIP);
    }
    let ports: *const Ports = ptr_at(ctx, l3.l4).ok_or(PASS_MALFORMED)?;
    let (sport, dport) = unsafe { ((*ports).src, (*ports).dst) };
    let meta = vip::find(&l3.dst, dport, l3.proto, l3.family).ok_or(icmp::PASS_NOT_VIP)?;
    let syn = if l3.proto == IPPROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, l3.l4).ok_or(DROP_MALFORMED)?;
        let doff = ((unsafe { (*tcp).doff } >> 4) as usize) << 2;
        if doff < 20 || l3.l4 + doff > frame_len(ctx) {
            return Err(DROP_MALFORMED);
        }
        unsafe { (*tcp).flags & (TCP_SYN | TCP_ACK) == TCP_SYN }
    } else {
        ptr_at::<[u8; 8]>(ctx, l3.l4).ok_or(DROP_MALFORMED)?;
        false
    };

    // Step 6.
    stats::vip_packet(meta.vip_id, len);
    let cfg = config()?;
    let key = FlowKey {
        src: l3.src,
        dst: l3.dst,
        sport,
        dport,
        proto: l3.proto,
        family: l3.family,
        _pad: [0; 2],
    };

    // Step 7.
    if meta.flags & VIP_F_FRAG_HASH3 != 0 {
        let hash = flow_hash(&key.three_tuple());
        let id = select::ring_pick(&meta, cfg, hash).ok_or(DROP_NO_BACKEND)?;
        return forward(ctx, &l3, &meta, cfg, id, FlowHash::known(&key, hash), len);
    }
    let found = if syn {
        Lookup::Stale
    } else {
        conntrack::lookup(&key)
    };
    // An established flow needs no hash unless it is encapsulated in IPv6 (flow label): `forward` computes it then.
    let (id, hash) = match found {
        Lookup::Hit(id) => (id, None),
        other => {
            if let Lookup::Miss = other {
                stats::vip_lru_miss(meta.vip_id);
            }
            let hash = flow_hash(&key);
            let id = select::ring_pick(&meta, cfg, hash).ok_or(DROP_NO_BACKEND)?;
            if conntrack::admit_new_flow(cfg) {
                conntrack::insert(&key, id, meta.vip_id);
                stats::vip_new_flow(meta.vip_id);
            } else {
                stats::count(Counter::NewFlowCapped);
            }
            (id, Some(hash))
        }
    };
    forward(ctx, &l3, &meta, cfg, id, FlowHash { key: &key, hash }, len)
}

/// A flow's hash, or the key to compute it from when it is first needed.
struct FlowHash<'a> {
    key: &'a FlowKey,
    hash: Option<u32>,
}

impl<'a> FlowHash<'a> {
    #[inline(always)]
    fn known(key: &'a FlowKey, hash: u32) -> Self {
        FlowHash {
            key,
            hash: Some(hash),
        }
    }

    #[inline(always)]
    fn get(&self) -> u32 {
        match self.hash {
            Some(h) => h,
            None => flow_hash(self.key),
        }
    }
}

/// Step 8: encapsulate or rewrite MACs, route, and pick `XDP_TX` or a redirect.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    l3: &L3,
    meta: &VipMeta,
    cfg: &GlobalConfig,
    id: BackendId,
    hash: FlowHash,
    len: u64,
) -> Result<Verdict, Verdict> {
    stats::backend_packet(id, len);
    let be = unsafe { *LB_BACKENDS.get_ptr(id).ok_or(DROP_NO_BACKEND)? };
    if meta.flags & VIP_F_L2DSR != 0 {
        if be.family != l3.family {
            return Err(DROP_NO_BACKEND);
        }
        let nh = fib::next_hop(ctx, id, be.family, &be.addr, &l3.src)?;
        encap::rewrite_macs(ctx, &nh)?;
        return Ok(fib::emit(ctx, &nh));
    }
    let inner_len = len as usize - l3.off;
    let overhead = encap::overhead(be.family);
    if cfg.mtu > 0 && inner_len + overhead > cfg.mtu as usize {
        return Err(icmp::over_mtu(ctx, l3, cfg, overhead));
    }
    let src = if be.family == FAMILY_V4 {
        [cfg.encap_src_v4, 0, 0, 0]
    } else {
        cfg.encap_src_v6
    };
    let nh = fib::next_hop(ctx, id, be.family, &be.addr, &src)?;
    let label = if be.family == FAMILY_V4 {
        0
    } else {
        hash.get()
    };
    encap::encapsulate(ctx, l3.off, inner_len, l3.family, &be, cfg, &nh, label)?;
    Ok(fib::emit(ctx, &nh))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
