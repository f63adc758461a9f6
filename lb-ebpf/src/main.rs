//! The production object: `lb_xdp`, `lb_decap` and `lb_hc`, the only programs lbd loads (calibration and lab programs are
//! in the lab object, lab.rs). Each entry point calls a `try_` function and turns its result, success or error,
//! into one counted verdict; nothing returns `XDP_ABORTED`. Behaviour: docs/dataplane.md, whose steps are the
//! functions below (`try_lb_xdp` dispatches steps 1 to 5; `transport` runs 5 to 8 for TCP/UDP).
#![no_std]
#![no_main]

mod conntrack;
mod decap;
mod encap;
mod fib;
mod hc;
mod headers;
mod icmp;
mod maps;
mod parse;
mod rate;
mod select;
mod stats;
mod verdict;
mod vip;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    Backend, BackendId, Counter, FAMILY_V4, FlowKey, GlobalConfig, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_TCP, IPPROTO_UDP, RateLimit, VIP_F_FRAG_HASH3, VIP_F_L2DSR, VipMeta, hash::flow_hash,
};

use crate::{
    conntrack::Lookup,
    headers::{Ports, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr, frame_len, ptr_within},
    icmp::Message,
    maps::LB_CONFIG,
    parse::L3,
    stats::VipCounters,
    verdict::{
        DROP_FRAGMENT, DROP_MALFORMED, DROP_NO_BACKEND, PASS_NOT_VIP, Unbalanced, Verdict, finish,
    },
};

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

/// Balancer side, TC egress of lbd's probe interface: sends marked health probes along the VIP path.
#[classifier]
pub fn lb_hc(ctx: TcContext) -> i32 {
    match hc::try_lb_hc(&ctx) {
        Ok(v) | Err(v) => finish(v) as i32,
    }
}

#[inline(always)]
fn config() -> Result<&'static GlobalConfig, Verdict> {
    LB_CONFIG.get(0).ok_or(DROP_NO_BACKEND)
}

/// Steps 1 and 2 (parse), then the step that owns the packet's protocol.
#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let l3 = parse::parse(ctx)?;
    if l3.chain_cut {
        return Err(vip::unbalanced(&l3, Unbalanced::Malformed));
    }
    if l3.fragment {
        return fragment(ctx, &l3);
    }
    let icmp = if l3.family == FAMILY_V4 {
        IPPROTO_ICMP
    } else {
        IPPROTO_ICMPV6
    };
    if l3.proto == icmp {
        icmp_message(ctx, &l3)
    } else if l3.proto == IPPROTO_TCP || l3.proto == IPPROTO_UDP {
        transport(ctx, &l3)
    } else {
        Err(vip::unbalanced(&l3, Unbalanced::NotServed))
    }
}

/// Step 3: a fragment follows its fragment policy.
#[inline(always)]
fn fragment(ctx: &XdpContext, l3: &L3) -> Result<Verdict, Verdict> {
    let meta = vip::fragment_policy(&l3.dst, l3.proto, l3.family)
        .ok_or_else(|| vip::unbalanced(l3, Unbalanced::NotServed))?;
    let len = frame_len(ctx) as u64;
    VipCounters::packet(meta.vip_id, len);
    if meta.flags & VIP_F_FRAG_HASH3 == 0 {
        return Ok(DROP_FRAGMENT);
    }
    stats::count(Counter::FragmentHashed);
    let key = l3.flow_key(0, 0);
    let hash = flow_hash(&key);
    let cfg = config()?;
    let picked = select::ring_pick(&meta, cfg, hash).ok_or(DROP_NO_BACKEND)?;
    forward(ctx, l3, &meta, cfg, Chosen::of(picked, hash), len)
}

/// Step 4: echo requests to a VIP address are answered, too-big errors about a VIP flow steered.
#[inline(always)]
fn icmp_message(ctx: &XdpContext, l3: &L3) -> Result<Verdict, Verdict> {
    match icmp::message(ctx, l3).map_err(|why| vip::unbalanced(l3, why))? {
        Message::EchoRequest if vip::is_vip_address(&l3.dst, l3.family) => {
            icmp::echo_reply(ctx, l3)
        }
        Message::EchoRequest => Err(PASS_NOT_VIP),
        Message::TooBig => too_big(ctx, l3),
        Message::Other => Err(vip::unbalanced(l3, Unbalanced::NotServed)),
    }
}

/// Step 4, too-big: to the backend of the quoted flow (the flow table's if usable, else the ring's).
#[inline(always)]
fn too_big(ctx: &XdpContext, l3: &L3) -> Result<Verdict, Verdict> {
    let q = icmp::quote(ctx, l3).map_err(|why| vip::unbalanced(l3, why))?;
    let meta = vip::service(&q.vip, q.vip_port, q.proto, l3.family)
        .ok_or_else(|| vip::unbalanced(l3, Unbalanced::NotServed))?;
    let len = frame_len(ctx) as u64;
    VipCounters::packet(meta.vip_id, len);
    stats::count(Counter::IcmpSteered);
    let cfg = config()?;
    let hash3 = meta.flags & VIP_F_FRAG_HASH3 != 0;
    let key = if hash3 { q.flow.three_tuple() } else { q.flow };
    let hash = flow_hash(&key);
    let pinned = match hash3 {
        false => match conntrack::lookup(&q.flow, &meta) {
            Lookup::Hit(id, be, _) => Some((id, be)),
            _ => None,
        },
        true => None,
    };
    let picked = match pinned {
        Some(p) => p,
        None => select::ring_pick(&meta, cfg, hash).ok_or(DROP_NO_BACKEND)?,
    };
    forward(ctx, l3, &meta, cfg, Chosen::of(picked, hash), len)
}

/// Steps 5 to 8 for TCP and UDP.
#[inline(always)]
fn transport(ctx: &XdpContext, l3: &L3) -> Result<Verdict, Verdict> {
    let ports: *const Ports =
        ptr_within(ctx, l3.l4, l3.end).ok_or_else(|| vip::unbalanced(l3, Unbalanced::Malformed))?;
    let (sport, dport) = unsafe { ((*ports).src, (*ports).dst) };
    let meta = vip::service(&l3.dst, dport, l3.proto, l3.family)
        .ok_or_else(|| vip::unbalanced(l3, Unbalanced::NotServed))?;
    let new_connection = l4_header(ctx, l3)?;
    let len = frame_len(ctx) as u64;
    let vip_counters = VipCounters::packet(meta.vip_id, len);
    let cfg = config()?;
    let key = l3.flow_key(sport, dport);
    let to = choose_backend(&key, &meta, cfg, new_connection, &vip_counters)?;
    forward(ctx, l3, &meta, cfg, to, len)
}

/// Step 5, once the service is known: the whole TCP/UDP header lies before the IP end. Returns whether the
/// segment asks for a new connection (SYN without ACK, RST or FIN).
#[inline(always)]
fn l4_header(ctx: &XdpContext, l3: &L3) -> Result<bool, Verdict> {
    if l3.proto != IPPROTO_TCP {
        ptr_within::<[u8; 8]>(ctx, l3.l4, l3.end).ok_or(DROP_MALFORMED)?;
        return Ok(false);
    }
    let tcp: *const TcpHdr = ptr_within(ctx, l3.l4, l3.end).ok_or(DROP_MALFORMED)?;
    let doff = ((unsafe { (*tcp).doff } >> 4) as usize) << 2;
    if doff < 20 || l3.l4 + doff > l3.end {
        return Err(DROP_MALFORMED);
    }
    let flags = unsafe { (*tcp).flags } & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN);
    Ok(flags == TCP_SYN)
}

/// Step 7: the backend of a TCP/UDP packet, with the flow's hash (for an IPv6 outer header's label): computed for a
/// new flow, read from the flow's entry for an established one, which so hashes nothing.
#[inline(always)]
fn choose_backend(
    key: &FlowKey,
    meta: &VipMeta,
    cfg: &GlobalConfig,
    new_connection: bool,
    vip_counters: &VipCounters,
) -> Result<Chosen, Verdict> {
    if meta.flags & VIP_F_FRAG_HASH3 != 0 {
        let hash = flow_hash(&key.three_tuple());
        let picked = select::ring_pick(meta, cfg, hash).ok_or(DROP_NO_BACKEND)?;
        return Ok(Chosen::of(picked, hash));
    }
    if !new_connection {
        match conntrack::lookup(key, meta) {
            Lookup::Hit(id, be, hash) => return Ok(Chosen::of((id, be), hash)),
            Lookup::Miss => vip_counters.lru_miss(),
            Lookup::Unusable => {}
        }
    }
    let hash = flow_hash(key);
    let (id, be) = select::ring_pick(meta, cfg, hash).ok_or(DROP_NO_BACKEND)?;
    if rate::take(RateLimit::NewFlows, cfg.new_flow_cap) {
        conntrack::insert(key, id, hash);
        vip_counters.new_flow();
    } else {
        stats::count(Counter::NewFlowCapped);
    }
    Ok(Chosen::of((id, be), hash))
}

/// The backend a packet goes to: its id, its entry, and the flow's hash (for an IPv6 outer header's label).
struct Chosen {
    id: BackendId,
    be: Backend,
    hash: u32,
}

impl Chosen {
    #[inline(always)]
    fn of((id, be): (BackendId, Backend), hash: u32) -> Self {
        Chosen { id, be, hash }
    }
}

/// Step 8: encapsulate or rewrite MACs, route, and pick `XDP_TX` or a redirect.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    l3: &L3,
    meta: &VipMeta,
    cfg: &GlobalConfig,
    to: Chosen,
    len: u64,
) -> Result<Verdict, Verdict> {
    let Chosen { id, be, hash } = to;
    let be = &be;
    stats::backend_packet(id, len);
    if meta.flags & VIP_F_L2DSR != 0 {
        if be.family != l3.family {
            return Err(DROP_NO_BACKEND);
        }
        let nh = fib::next_hop(ctx, id, be, cfg)?;
        encap::rewrite_macs(ctx, &nh)?;
        return Ok(fib::emit(ctx, &nh));
    }
    let inner_len = len as usize - l3.off;
    let overhead = encap::overhead(be.family);
    if cfg.mtu > 0 && inner_len + overhead > cfg.mtu as usize {
        return Err(icmp::over_mtu(ctx, l3, cfg, overhead));
    }
    let nh = fib::next_hop(ctx, id, be, cfg)?;
    encap::encapsulate(ctx, l3.off, inner_len, l3.family, be, cfg, &nh, hash)?;
    Ok(fib::emit(ctx, &nh))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
