//! Steps 1 and 2 of docs/dataplane.md: Ethernet, one VLAN tag, the IP header and the IPv6 extension header walk,
//! giving the network layer the later steps decide on.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AddrWords, FAMILY_V4, FAMILY_V6, FlowKey, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, IPPROTO_IPV6_FRAG,
    IPPROTO_ROUTING, IPV6_MAX_EXT_HEADERS,
};

use crate::headers::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IP_DF, IP_MF_OFFSET,
    IP6_OFFSET_M, Ipv4Hdr, Ipv6ExtHdr, Ipv6FragHdr, Ipv6Hdr, VLAN_HLEN, VlanHdr, frame_len, ptr_at,
    ptr_within,
};
use crate::verdict::{PASS_MALFORMED, PASS_NOT_IP, PASS_UNSUPPORTED, Verdict};

/// Hides a value's origin from the optimiser. The IP end is known to lie inside the frame (step 2 checked it), so
/// LLVM deletes a header's `data_end` check as implied by its IP-end check; the verifier, which does not follow
/// that arithmetic, then rejects the access. An opaque IP end keeps both checks in the object.
#[inline(always)]
fn opaque(v: usize) -> usize {
    core::hint::black_box(v)
}

/// The network layer of a frame, as far as the VIP decision needs it.
pub struct L3 {
    pub family: u8,
    /// Offset of the IP header (the L2 header length: 14, or 18 with a VLAN tag).
    pub off: usize,
    /// Offset of the IP end (IP header offset + the IP packet's own length); ≤ the frame length.
    pub end: usize,
    /// Offset of the L4 header: after IPv4 options, or where the IPv6 extension header walk stopped.
    pub l4: usize,
    /// The protocol found there (TCP/UDP/ICMP/ICMPv6, or anything the program does not balance).
    pub proto: u8,
    pub fragment: bool,
    /// An IPv6 extension header was cut short by the IP end.
    pub chain_cut: bool,
    /// IPv4 DF bit (false for IPv6).
    pub df: bool,
    pub src: AddrWords,
    pub dst: AddrWords,
}

impl L3 {
    /// The flow as the client sent it, with these ports (network order; zero for a 3-tuple).
    #[inline(always)]
    pub fn flow_key(&self, sport: u16, dport: u16) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport,
            dport,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

/// Steps 1 and 2 of `lb_xdp`: Ethernet, one VLAN tag, the IP header, IPv6 extension headers. Anything the program
/// cannot look into is an `XDP_PASS` verdict.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<L3, Verdict> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(PASS_MALFORMED)?;
    let mut proto = unsafe { (*eth).proto };
    let mut off = ETH_HLEN;
    if proto == ETH_P_8021Q {
        let tag: *const VlanHdr = ptr_at(ctx, ETH_HLEN).ok_or(PASS_MALFORMED)?;
        proto = unsafe { (*tag).proto };
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            return Err(PASS_UNSUPPORTED);
        }
        off = ETH_HLEN + VLAN_HLEN;
    } else if proto == ETH_P_8021AD {
        return Err(PASS_UNSUPPORTED);
    }
    if proto == ETH_P_IPV4 {
        parse_v4(ctx, off)
    } else if proto == ETH_P_IPV6 {
        parse_v6(ctx, off)
    } else {
        Err(PASS_NOT_IP)
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, off: usize) -> Result<L3, Verdict> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off).ok_or(PASS_MALFORMED)?;
    let ihl = unsafe { (*ip).header_len() }.ok_or(PASS_MALFORMED)?;
    let avail = frame_len(ctx) - off;
    let total = u16::from_be(unsafe { (*ip).tot_len }) as usize;
    if ihl > avail || total < ihl || total > avail {
        return Err(PASS_MALFORMED);
    }
    let frag = unsafe { (*ip).frag_off };
    Ok(L3 {
        family: FAMILY_V4,
        off,
        end: opaque(off + total),
        l4: off + ihl,
        proto: unsafe { (*ip).proto },
        fragment: frag & IP_MF_OFFSET != 0,
        chain_cut: false,
        df: frag & IP_DF != 0,
        src: [unsafe { (*ip).src }, 0, 0, 0],
        dst: [unsafe { (*ip).dst }, 0, 0, 0],
    })
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, off: usize) -> Result<L3, Verdict> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off).ok_or(PASS_MALFORMED)?;
    let avail = frame_len(ctx) - off;
    let payload = u16::from_be(unsafe { (*ip).payload_len }) as usize;
    if unsafe { (*ip).version_tc_flow[0] } >> 4 != 6 || payload + 40 > avail {
        return Err(PASS_MALFORMED);
    }
    let mut l3 = L3 {
        family: FAMILY_V6,
        off,
        end: opaque(off + 40 + payload),
        l4: off + 40,
        proto: unsafe { (*ip).next_hdr },
        fragment: false,
        chain_cut: false,
        df: false,
        src: unsafe { (*ip).src },
        dst: unsafe { (*ip).dst },
    };
    walk_ext_headers(ctx, &mut l3);
    Ok(l3)
}

/// Moves `l3.l4`/`l3.proto` past the IPv6 extension headers the program understands (docs/dataplane.md, step 2).
#[inline(always)]
fn walk_ext_headers(ctx: &XdpContext, l3: &mut L3) {
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        let nh = l3.proto;
        if nh == IPPROTO_HOPOPTS || nh == IPPROTO_DSTOPTS || nh == IPPROTO_ROUTING {
            let Some(h) = ptr_within::<Ipv6ExtHdr>(ctx, l3.l4, l3.end) else {
                l3.chain_cut = true;
                return;
            };
            let len = (unsafe { (*h).len } as usize + 1) << 3;
            if l3.l4 + len > l3.end {
                l3.chain_cut = true;
                return;
            }
            // Segments left: the destination is a waypoint the program does not route through.
            if nh == IPPROTO_ROUTING && unsafe { (*h).data[1] } != 0 {
                return;
            }
            l3.proto = unsafe { (*h).next_hdr };
            l3.l4 += len;
        } else if nh == IPPROTO_IPV6_FRAG {
            let Some(fh) = ptr_within::<Ipv6FragHdr>(ctx, l3.l4, l3.end) else {
                l3.chain_cut = true;
                return;
            };
            l3.proto = unsafe { (*fh).next_hdr };
            l3.l4 += 8;
            if unsafe { (*fh).frag_off } & IP6_OFFSET_M != 0 {
                l3.fragment = true;
                return;
            }
        } else {
            return;
        }
    }
}
