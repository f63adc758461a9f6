//! `lb_hc`: health probes along the VIP path. lbd's checker marks each probe socket with the backend it is for
//! (`lb_common::hc_mark`) and connects to the VIP; a policy rule routes marked packets out of lbd's probe interface,
//! whose TC egress runs this program. It sends the packet to the backend the mark names the way `lb_xdp` sends a
//! client's: the same outer header (`encap::outer_v4`/`outer_v6`, source `encap_src`) or, for an L2 DSR VIP, the
//! packet as it is to the backend's MAC. So the probe only succeeds if the backend takes tunnelled (or
//! MAC-addressed) traffic for the VIP and answers from it: decap attached, VIP on its loopback, route back.
//!
//! Unlike `lb_xdp`, the next hop's MAC comes from the kernel's neighbour table through `bpf_redirect_neigh`, which
//! resolves a missing entry (ARP / ND) instead of dropping: probes are what keeps the balancer's neighbour entries
//! for its backends fresh, for `lb_xdp`'s `bpf_fib_lookup` to find.
//!
//! Found in the lab: with the next hop named, the first probe to each backend and family at lbd's start timed out
//! (4 runs of 4); with a tunnelled probe's mark dropped and the kernel routing it anew towards the backend
//! (`bpf_redirect_neigh` without a next hop, which also replaces the route attached to the packet), none did (5 of
//! 5). Our reading: a packet that waits for its neighbour is sent, once the answer is in, along the route attached
//! to it, and a probe's is still the one to the probe interface. An L2 DSR probe cannot be routed anew (its IP
//! destination is the VIP, so the next hop must be named): its first packet to a backend whose neighbour is
//! unresolved can be lost (one failure, which `fall` >= 2 absorbs).

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        bpf_redir_neigh,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect_neigh},
    programs::TcContext,
};
use lb_common::{FAMILY_V4, FAMILY_V6, hc_mark::ProbeMark};

use crate::{
    encap,
    fib::{self, AF_INET, AF_INET6},
    headers::{ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6},
    maps::{LB_BACKENDS, LB_CONFIG},
    verdict::{
        HC_DROP_MALFORMED, HC_DROP_NO_BACKEND, HC_DROP_NO_ROUTE, HC_PASS_UNMARKED, HC_SENT, Verdict,
    },
};

/// Offset of the Ethernet type field.
const ETH_PROTO_OFF: usize = 12;

#[inline(always)]
pub fn try_lb_hc(ctx: &TcContext) -> Result<Verdict, Verdict> {
    let skb = ctx.skb.skb;
    let Some(probe) = ProbeMark::decode(unsafe { (*skb).mark }) else {
        return Ok(HC_PASS_UNMARKED);
    };
    let be = *LB_BACKENDS.get(probe.backend).ok_or(HC_DROP_NO_BACKEND)?;
    if be.family != FAMILY_V4 && be.family != FAMILY_V6 {
        return Err(HC_DROP_NO_BACKEND);
    }
    let cfg = LB_CONFIG.get(0).ok_or(HC_DROP_NO_BACKEND)?;
    let proto: u16 = ctx.load(ETH_PROTO_OFF).map_err(|_| HC_DROP_MALFORMED)?;
    let inner_family = if proto == ETH_P_IPV4 {
        FAMILY_V4
    } else if proto == ETH_P_IPV6 {
        FAMILY_V6
    } else {
        return Err(HC_DROP_MALFORMED);
    };
    if probe.l2dsr {
        // As lb_xdp: an L2 DSR backend takes the client's packet as it is, so only one of its family.
        if be.family != inner_family {
            return Err(HC_DROP_NO_BACKEND);
        }
    } else {
        let inner_len = (ctx.len() as usize)
            .checked_sub(ETH_HLEN)
            .ok_or(HC_DROP_MALFORMED)?;
        let outer = encap::overhead(be.family);
        let flags = if be.family == FAMILY_V4 {
            BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
        } else {
            BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
        };
        // Room after the Ethernet header; the kernel marks the skb as encapsulated (and sets its protocol to the
        // outer family), so checksum offload and segmentation still find the inner headers.
        ctx.adjust_room(outer as i32, BPF_ADJ_ROOM_MAC, flags as u64)
            .map_err(|_| HC_DROP_MALFORMED)?;
        let stored = if be.family == FAMILY_V4 {
            let h = encap::outer_v4(inner_len, inner_family, &be, cfg);
            ctx.store(ETH_HLEN, &h, 0)
                .and_then(|_| ctx.store(ETH_PROTO_OFF, &ETH_P_IPV4, 0))
        } else {
            // The kernel's hash of the probe's flow: one label per probe connection, as lb_xdp gives one per flow.
            let label = unsafe { bpf_get_hash_recalc(skb) };
            let h = encap::outer_v6(inner_len, inner_family, &be, cfg, label);
            ctx.store(ETH_HLEN, &h, 0)
                .and_then(|_| ctx.store(ETH_PROTO_OFF, &ETH_P_IPV6, 0))
        };
        stored.map_err(|_| HC_DROP_MALFORMED)?;
    }
    send(ctx, &be, cfg, probe.l2dsr)
}

/// Routes towards the backend as `lb_xdp`'s `fib::next_hop` asks (the backend's address from the balancer's
/// encapsulation source, as if arriving on this interface), then hands the frame to the egress interface with the
/// next hop's MAC filled in by the neighbour table.
#[inline(always)]
fn send(
    ctx: &TcContext,
    be: &lb_common::Backend,
    cfg: &lb_common::GlobalConfig,
    l2dsr: bool,
) -> Result<Verdict, Verdict> {
    let skb = ctx.skb.skb;
    let mut p = fib::question(unsafe { (*skb).ifindex }, be, cfg);
    let rc = fib::lookup(skb as *mut _, &mut p);
    // An unresolved neighbour still names the interface and the next hop: bpf_redirect_neigh resolves it.
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Err(HC_DROP_NO_ROUTE);
    }
    if !l2dsr {
        // Routed again by the kernel from the outer header (see the module's comment); unmarked, so by the main
        // table, out of the interface the lookup named.
        ctx.set_mark(0);
        let action = unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) };
        if action != TC_ACT_REDIRECT as i64 {
            return Err(HC_DROP_NO_ROUTE);
        }
        return Ok(HC_SENT);
    }
    // The lookup left the next hop (the gateway, or the backend itself on link) in its destination field.
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    if be.family == FAMILY_V4 {
        nh.nh_family = AF_INET as u32;
        nh.__bindgen_anon_1.ipv4_nh = unsafe { p.__bindgen_anon_4.ipv4_dst };
    } else {
        nh.nh_family = AF_INET6 as u32;
        nh.__bindgen_anon_1.ipv6_nh = unsafe { p.__bindgen_anon_4.ipv6_dst };
    }
    let action = unsafe {
        bpf_redirect_neigh(
            p.ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    if action != TC_ACT_REDIRECT as i64 {
        return Err(HC_DROP_NO_ROUTE);
    }
    Ok(HC_SENT)
}
