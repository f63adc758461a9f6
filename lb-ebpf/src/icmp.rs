//! ICMP: inbound too-big errors about a VIP flow are steered to that flow's backend; outbound too-big answers to
//! packets that would exceed the MTU once encapsulated.

use aya_ebpf::programs::XdpContext;
use lb_common::{AddrWords, Counter, FAMILY_V4, FlowKey, XDP_PASS};

use crate::{
    parse::{IcmpHdr, Ipv4Hdr, Ipv6Hdr, L3, Ports, ptr_at},
    stats::Verdict,
};

const PASS_MALFORMED: Verdict = Verdict::new(XDP_PASS, Counter::PassMalformed);
pub const PASS_NOT_VIP: Verdict = Verdict::new(XDP_PASS, Counter::PassNotVip);

/// What a too-big error quotes: the packet the backend sent (VIP → client).
pub struct Quoted {
    /// The VIP side of the quoted packet (its source).
    pub vip: AddrWords,
    /// Its source port (the VIP's port), network order.
    pub vip_port: u16,
    pub proto: u8,
    /// The flow as the client sent it, the key the flow table knows.
    pub flow: FlowKey,
}

/// Step 4: an ICMP fragmentation-needed / ICMPv6 packet-too-big whose quote is a packet from one of our VIPs.
/// Every other ICMP message is `PassNotVip`; a truncated or inconsistent one is `PassMalformed`.
#[inline(always)]
pub fn parse_too_big(ctx: &XdpContext, l3: &L3) -> Result<Quoted, Verdict> {
    let icmp: *const IcmpHdr = ptr_at(ctx, l3.l4).ok_or(PASS_MALFORMED)?;
    let (ty, code) = unsafe { ((*icmp).ty, (*icmp).code) };
    let q = l3.l4 + 8;
    let (src, dst, proto, il4) = if l3.family == FAMILY_V4 {
        if ty != 3 || code != 4 {
            return Err(PASS_NOT_VIP);
        }
        let ip: *const Ipv4Hdr = ptr_at(ctx, q).ok_or(PASS_MALFORMED)?;
        let vihl = unsafe { (*ip).version_ihl };
        let ihl = ((vihl & 0x0f) as usize) << 2;
        if vihl >> 4 != 4 || ihl < 20 {
            return Err(PASS_MALFORMED);
        }
        ptr_at::<[u8; 8]>(ctx, q + ihl).ok_or(PASS_MALFORMED)?;
        unsafe {
            (
                [(*ip).src, 0, 0, 0],
                [(*ip).dst, 0, 0, 0],
                (*ip).proto,
                q + ihl,
            )
        }
    } else {
        if ty != 2 {
            return Err(PASS_NOT_VIP);
        }
        let ip: *const Ipv6Hdr = ptr_at(ctx, q).ok_or(PASS_MALFORMED)?;
        ptr_at::<[u8; 8]>(ctx, q + 40).ok_or(PASS_MALFORMED)?;
        if unsafe { (*ip).version_tc_flow[0] } >> 4 != 6 {
            return Err(PASS_MALFORMED);
        }
        unsafe { ((*ip).src, (*ip).dst, (*ip).next_hdr, q + 40) }
    };
    if src != l3.dst {
        return Err(PASS_NOT_VIP);
    }
    let ports: *const Ports = ptr_at(ctx, il4).ok_or(PASS_MALFORMED)?;
    let (sport, dport) = unsafe { ((*ports).src, (*ports).dst) };
    Ok(Quoted {
        vip: src,
        vip_port: sport,
        proto,
        flow: FlowKey {
            src: dst,
            dst: src,
            sport: dport,
            dport: sport,
            proto,
            family: l3.family,
            _pad: [0; 2],
        },
    })
}

const DROP_OVER_MTU: Verdict = Verdict::new(lb_common::XDP_DROP, Counter::DropOverMtu);

/// A packet that would exceed `cfg.mtu` once encapsulated.
#[inline(always)]
pub fn over_mtu(
    _ctx: &XdpContext,
    _l3: &L3,
    _cfg: &lb_common::GlobalConfig,
    _overhead: usize,
) -> Verdict {
    DROP_OVER_MTU
}
