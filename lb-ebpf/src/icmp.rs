//! ICMP: inbound too-big errors about a VIP flow are steered to that flow's backend; outbound too-big answers to
//! packets that would exceed the MTU once encapsulated.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    AddrWords, CFG_F_ICMP_TOO_BIG, Counter, FAMILY_V4, FlowKey, GlobalConfig, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, XDP_DROP, XDP_PASS, XDP_TX, csum,
};

use crate::{
    parse::{
        ETH_HLEN, EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, L3, Ports, VLAN_HLEN, VlanHdr, frame_len,
        ptr_at,
    },
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

const DROP_OVER_MTU: Verdict = Verdict::new(XDP_DROP, Counter::DropOverMtu);
const DROP_ADJUST: Verdict = Verdict::new(XDP_DROP, Counter::DropAdjustFailed);
const TOO_BIG_SENT: Verdict = Verdict::new(XDP_TX, Counter::IcmpTooBigSent);

/// Largest answers: the minimum MTUs every IPv4 / IPv6 host must accept (RFC 1812 / RFC 8200).
const ANSWER_MAX_V4: usize = 576;
const ANSWER_MAX_V6: usize = 1280;
const ANSWER_HDRS_V4: usize = 20 + 8;
const ANSWER_HDRS_V6: usize = 40 + 8;
const QUOTE_MAX_V4: usize = ANSWER_MAX_V4 - ANSWER_HDRS_V4;
const QUOTE_MAX_V6: usize = ANSWER_MAX_V6 - ANSWER_HDRS_V6;
const ICMPV6_MIN_MTU: u32 = 1280;

/// A packet that would exceed `cfg.mtu` once encapsulated with `overhead` bytes: answered with a too-big error
/// when enabled and meaningful (TCP/UDP, IPv4 with DF), else dropped. The answer replaces the packet in place:
/// the frame is cut to the quote, grown at the front by the new IP + ICMP headers, and sent back with `XDP_TX`.
#[inline(always)]
pub fn over_mtu(ctx: &XdpContext, l3: &L3, cfg: &GlobalConfig, overhead: usize) -> Verdict {
    let l4_ok = l3.proto == IPPROTO_TCP || l3.proto == IPPROTO_UDP;
    if cfg.flags & CFG_F_ICMP_TOO_BIG == 0 || !l4_ok || (l3.family == FAMILY_V4 && !l3.df) {
        return DROP_OVER_MTU;
    }
    match answer(ctx, l3, cfg.mtu - overhead as u32) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn answer(ctx: &XdpContext, l3: &L3, mtu: u32) -> Result<Verdict, Verdict> {
    let v4 = l3.family == FAMILY_V4;
    let l2 = l3.off;
    let orig_len = frame_len(ctx) - l2;
    let (quote_max, hdrs) = if v4 {
        (QUOTE_MAX_V4, ANSWER_HDRS_V4)
    } else {
        (QUOTE_MAX_V6, ANSWER_HDRS_V6)
    };
    let quote = if orig_len < quote_max {
        orig_len
    } else {
        quote_max
    };

    // Everything needed from the original L2 header, before the head moves.
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(DROP_ADJUST)?;
    let (dmac, smac, et) = unsafe { ((*eth).dst, (*eth).src, (*eth).proto) };
    let vlan = if l2 > ETH_HLEN {
        let tag: *const VlanHdr = ptr_at(ctx, ETH_HLEN).ok_or(DROP_ADJUST)?;
        Some(unsafe { ((*tag).tci, (*tag).proto) })
    } else {
        None
    };

    let cut = orig_len - quote;
    if cut > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(cut as i32)) } != 0 {
        return Err(DROP_ADJUST);
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(hdrs as i32)) } != 0 {
        return Err(DROP_ADJUST);
    }

    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(DROP_ADJUST)?;
    unsafe {
        (*eth).dst = smac;
        (*eth).src = dmac;
        (*eth).proto = et;
    }
    let ip_off = if let Some((tci, proto)) = vlan {
        let tag: *mut VlanHdr = ptr_at(ctx, ETH_HLEN).ok_or(DROP_ADJUST)?;
        unsafe {
            (*tag).tci = tci;
            (*tag).proto = proto;
        }
        ETH_HLEN + VLAN_HLEN
    } else {
        ETH_HLEN
    };

    let icmp_off = ip_off + hdrs - 8;
    let mut sum = quote_sum(ctx, icmp_off + 8, quote)?;
    let icmp: *mut IcmpHdr = ptr_at(ctx, icmp_off).ok_or(DROP_ADJUST)?;
    let mut h = if v4 {
        IcmpHdr {
            ty: 3,
            code: 4,
            check: 0,
            rest: ((mtu as u16).to_be() as u32) << 16,
        }
    } else {
        let mtu = if mtu < ICMPV6_MIN_MTU {
            ICMPV6_MIN_MTU
        } else {
            mtu
        };
        IcmpHdr {
            ty: 2,
            code: 0,
            check: 0,
            rest: mtu.to_be(),
        }
    };
    sum += (h.ty as u64) | ((h.code as u64) << 8);
    sum += h.rest as u64;

    if v4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, ip_off).ok_or(DROP_ADJUST)?;
        let mut iph = Ipv4Hdr {
            version_ihl: 0x45,
            tos: 0,
            tot_len: ((hdrs + quote) as u16).to_be(),
            id: 0,
            frag_off: 0,
            ttl: 64,
            proto: IPPROTO_ICMP,
            check: 0,
            src: l3.dst[0],
            dst: l3.src[0],
        };
        // SAFETY: Ipv4Hdr is 20 bytes of plain integers, alignment ≥ 2.
        let words: &[u16; 10] = unsafe { &*(&iph as *const Ipv4Hdr as *const [u16; 10]) };
        iph.check = csum::ipv4_header(words);
        unsafe { *ip = iph };
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, ip_off).ok_or(DROP_ADJUST)?;
        let len = (8 + quote) as u32;
        unsafe {
            *ip = Ipv6Hdr {
                version_tc_flow: [0x60, 0, 0, 0],
                payload_len: (len as u16).to_be(),
                next_hdr: IPPROTO_ICMPV6,
                hop_limit: 64,
                src: l3.dst,
                dst: l3.src,
            };
        }
        // Pseudo-header, as 32-bit memory-order words (their one's-complement sum folds like 16-bit words).
        let mut i = 0;
        while i < 4 {
            sum += l3.dst[i] as u64 + l3.src[i] as u64;
            i += 1;
        }
        sum += len.to_be() as u64 + (IPPROTO_ICMPV6 as u32).to_be() as u64;
    }
    h.check = !csum::fold(sum);
    unsafe { *icmp = h };
    Ok(TOO_BIG_SENT)
}

/// One's-complement sum (unfolded) of the `len` quoted bytes at `off`, as memory-order 16-bit words; a final odd
/// byte is padded with zero.
#[inline(always)]
fn quote_sum(ctx: &XdpContext, off: usize, len: usize) -> Result<u64, Verdict> {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < QUOTE_MAX_V6 / 2 {
        if 2 * i + 2 > len {
            break;
        }
        let w: *const u16 = ptr_at(ctx, off + 2 * i).ok_or(DROP_ADJUST)?;
        sum += unsafe { *w } as u64;
        i += 1;
    }
    if len & 1 == 1 {
        let b: *const u8 = ptr_at(ctx, off + len - 1).ok_or(DROP_ADJUST)?;
        sum += unsafe { *b } as u64;
    }
    Ok(sum)
}
