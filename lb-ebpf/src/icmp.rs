//! ICMP: echo requests to a VIP address are answered; inbound too-big errors about a VIP flow are steered to that
//! flow's backend; packets that would exceed the MTU once encapsulated are answered with too-big errors.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    AddrWords, CFG_F_ICMP_TOO_BIG, FAMILY_V4, FlowKey, GlobalConfig, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_TCP, IPPROTO_UDP, RateLimit, csum,
};

use crate::{
    headers::{
        ETH_HLEN, EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, Ports, VLAN_HLEN, VlanHdr, frame_len, ptr_at,
        ptr_within,
    },
    parse::L3,
    rate,
    verdict::{
        DROP_ADJUST, DROP_ICMP_RATE_LIMITED, DROP_OVER_MTU, ICMP_ECHO_REPLY, ICMP_TOO_BIG_SENT,
        Unbalanced, Verdict,
    },
};

const ICMP_ECHO_REPLY_TYPE: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_PKT_TOO_BIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// TTL / hop limit of everything the program originates.
const ANSWER_TTL: u8 = 64;

/// The ICMP messages the program acts on (docs/dataplane.md, step 4).
pub enum Message {
    EchoRequest,
    TooBig,
    Other,
}

/// The message type of an ICMP / ICMPv6 packet whose 8-byte header lies before the IP end.
#[inline(always)]
pub fn message(ctx: &XdpContext, l3: &L3) -> Result<Message, Unbalanced> {
    let icmp: *const IcmpHdr = ptr_within(ctx, l3.l4, l3.end).ok_or(Unbalanced::Malformed)?;
    let (ty, code) = unsafe { ((*icmp).ty, (*icmp).code) };
    let m = if l3.family == FAMILY_V4 {
        match ty {
            ICMP_ECHO_REQUEST => Message::EchoRequest,
            ICMP_DEST_UNREACH if code == ICMP_FRAG_NEEDED => Message::TooBig,
            _ => Message::Other,
        }
    } else {
        match ty {
            ICMPV6_ECHO_REQUEST => Message::EchoRequest,
            ICMPV6_PKT_TOO_BIG => Message::TooBig,
            _ => Message::Other,
        }
    };
    Ok(m)
}

/// Turns an echo request into its reply in place: Ethernet and IP addresses swapped, TTL / hop limit 64, type
/// 0 / 129, checksums updated incrementally; everything else (options, extension headers, data, padding) stays.
#[inline(always)]
pub fn echo_reply(ctx: &XdpContext, l3: &L3) -> Result<Verdict, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(DROP_ADJUST)?;
    let icmp: *mut IcmpHdr = ptr_within(ctx, l3.l4, l3.end).ok_or(DROP_ADJUST)?;
    unsafe { core::mem::swap(&mut (*eth).dst, &mut (*eth).src) };
    let reply = if l3.family == FAMILY_V4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, l3.off).ok_or(DROP_ADJUST)?;
        unsafe {
            // TTL and protocol share one checksummed 16-bit word.
            let old = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
            let new = u16::from_ne_bytes([ANSWER_TTL, (*ip).proto]);
            (*ip).check = csum::replace16((*ip).check, old, new);
            (*ip).ttl = ANSWER_TTL;
            (*ip).dst = l3.src[0];
            (*ip).src = l3.dst[0];
        }
        ICMP_ECHO_REPLY_TYPE
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, l3.off).ok_or(DROP_ADJUST)?;
        unsafe {
            (*ip).hop_limit = ANSWER_TTL;
            (*ip).dst = l3.src;
            (*ip).src = l3.dst;
        }
        ICMPV6_ECHO_REPLY
    };
    unsafe {
        let code = (*icmp).code;
        let old = u16::from_ne_bytes([(*icmp).ty, code]);
        let new = u16::from_ne_bytes([reply, code]);
        (*icmp).check = csum::replace16((*icmp).check, old, new);
        (*icmp).ty = reply;
    }
    Ok(ICMP_ECHO_REPLY)
}

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

/// The quote of a too-big error (step 4): complete before the IP end (else malformed), and sent by the outer
/// destination (else not ours).
#[inline(always)]
pub fn quote(ctx: &XdpContext, l3: &L3) -> Result<Quoted, Unbalanced> {
    let q = l3.l4 + 8;
    let (src, dst, proto, il4) = if l3.family == FAMILY_V4 {
        let ip: *const Ipv4Hdr = ptr_within(ctx, q, l3.end).ok_or(Unbalanced::Malformed)?;
        let ihl = unsafe { (*ip).header_len() }.ok_or(Unbalanced::Malformed)?;
        unsafe {
            (
                [(*ip).src, 0, 0, 0],
                [(*ip).dst, 0, 0, 0],
                (*ip).proto,
                q + ihl,
            )
        }
    } else {
        let ip: *const Ipv6Hdr = ptr_within(ctx, q, l3.end).ok_or(Unbalanced::Malformed)?;
        if unsafe { (*ip).version_tc_flow[0] } >> 4 != 6 {
            return Err(Unbalanced::Malformed);
        }
        unsafe { ((*ip).src, (*ip).dst, (*ip).next_hdr, q + 40) }
    };
    ptr_within::<[u8; 8]>(ctx, il4, l3.end).ok_or(Unbalanced::Malformed)?;
    if src != l3.dst {
        return Err(Unbalanced::NotServed);
    }
    let ports: *const Ports = ptr_within(ctx, il4, l3.end).ok_or(Unbalanced::Malformed)?;
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

/// Largest answers: the minimum MTUs every IPv4 / IPv6 host must accept (RFC 1812 / RFC 8200).
const ANSWER_MAX_V4: usize = 576;
const ANSWER_MAX_V6: usize = 1280;
const ANSWER_HDRS_V4: usize = 20 + 8;
const ANSWER_HDRS_V6: usize = 40 + 8;
const QUOTE_MAX_V4: usize = ANSWER_MAX_V4 - ANSWER_HDRS_V4;
const QUOTE_MAX_V6: usize = ANSWER_MAX_V6 - ANSWER_HDRS_V6;
/// The least MTU a link may have (RFC 791 / RFC 8200): never advertise less.
const IPV4_MIN_MTU: u32 = 68;
const IPV6_MIN_MTU: u32 = 1280;

/// A packet that would exceed `cfg.mtu` once encapsulated with `overhead` bytes: answered with a too-big error
/// when enabled, meaningful (TCP/UDP, IPv4 with DF) and within this CPU's answer budget, else dropped. The answer
/// replaces the packet in place: the frame is cut to the quote, grown at the front by the new IP + ICMP headers,
/// and sent back with `XDP_TX`.
#[inline(always)]
pub fn over_mtu(ctx: &XdpContext, l3: &L3, cfg: &GlobalConfig, overhead: usize) -> Verdict {
    let v4 = l3.family == FAMILY_V4;
    let l4_ok = l3.proto == IPPROTO_TCP || l3.proto == IPPROTO_UDP;
    if cfg.flags & CFG_F_ICMP_TOO_BIG == 0 || !l4_ok || (v4 && !l3.df) {
        return DROP_OVER_MTU;
    }
    // Each answer sums up to 1,232 quoted bytes, and spoofed packets can ask for them.
    if !rate::take(RateLimit::IcmpAnswers, cfg.icmp_answer_cap) {
        return DROP_ICMP_RATE_LIMITED;
    }
    let floor = if v4 { IPV4_MIN_MTU } else { IPV6_MIN_MTU };
    let mtu = cfg.mtu.saturating_sub(overhead as u32).max(floor);
    match answer(ctx, l3, mtu) {
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
        let mtu = if mtu > u16::MAX as u32 {
            u16::MAX
        } else {
            mtu as u16
        };
        IcmpHdr {
            ty: ICMP_DEST_UNREACH,
            code: ICMP_FRAG_NEEDED,
            check: 0,
            rest: (mtu.to_be() as u32) << 16,
        }
    } else {
        IcmpHdr {
            ty: ICMPV6_PKT_TOO_BIG,
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
            ttl: ANSWER_TTL,
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
                hop_limit: ANSWER_TTL,
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
    Ok(ICMP_TOO_BIG_SENT)
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
