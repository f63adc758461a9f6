//! Header layouts and the bounds-checked view of the packet (steps 1 and 2 of docs/dataplane.md). Constants
//! compared against packet fields are pre-swapped to network order so nothing is byte-swapped per packet on the
//! common path.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AddrWords, FAMILY_V4, FAMILY_V6, FlowKey, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, IPPROTO_IPV6_FRAG,
    IPPROTO_ROUTING, IPV6_MAX_EXT_HEADERS,
};

use crate::verdict::{PASS_MALFORMED, PASS_NOT_IP, PASS_UNSUPPORTED, Verdict};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IPV4: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD: u16 = 0x88a8u16.to_be();
/// IPv4 `frag_off` bits: MF and the offset (any fragment) / DF.
pub const IP_MF_OFFSET: u16 = 0x3fffu16.to_be();
pub const IP_DF: u16 = 0x4000u16.to_be();
/// IPv6 Fragment header `frag_off` bits: the offset and M (both zero: an atomic fragment).
pub const IP6_OFFSET_M: u16 = 0xfff9u16.to_be();

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
pub struct VlanHdr {
    pub tci: u16,
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_tc_flow: [u8; 4],
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: AddrWords,
    pub dst: AddrWords,
}

#[repr(C)]
pub struct Ipv6FragHdr {
    pub next_hdr: u8,
    pub reserved: u8,
    pub frag_off: u16,
    pub id: u32,
}

/// The first 8 bytes of Hop-by-Hop, Destination Options and Routing headers (every one is at least 8 long).
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub next_hdr: u8,
    /// Length in 8-byte units, not counting the first 8 bytes.
    pub len: u8,
    /// Routing header: routing type, segments left; others: options.
    pub data: [u8; 6],
}

/// The 4 bytes every TCP/UDP header starts with.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// The part of a TCP header the program reads.
#[repr(C)]
pub struct TcpHdr {
    pub ports: Ports,
    pub seq: u32,
    pub ack: u32,
    /// Data offset in the high nibble.
    pub doff: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg: u16,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// ICMP and ICMPv6 share the first 8 bytes' layout.
#[repr(C)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
    pub check: u16,
    pub rest: u32,
}

/// The one place packet pointers are made: `size_of::<T>()` bytes at `off` must lie inside the frame.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

/// [`ptr_at`] for a header after the IP header: it must also lie before the IP end (`end`, a frame offset), so that
/// Ethernet padding is never read as a header.
#[inline(always)]
pub fn ptr_within<T>(ctx: &XdpContext, off: usize, end: usize) -> Option<*mut T> {
    if off + core::mem::size_of::<T>() > end {
        return None;
    }
    ptr_at(ctx, off)
}

/// Hides a value's origin from the optimiser. The IP end is known to lie inside the frame (step 2 checked it), so
/// LLVM deletes a header's `data_end` check as implied by its IP-end check; the verifier, which does not follow
/// that arithmetic, then rejects the access. An opaque IP end keeps both checks in the object.
#[inline(always)]
fn opaque(v: usize) -> usize {
    core::hint::black_box(v)
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
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
    let vihl = unsafe { (*ip).version_ihl };
    let ihl = ((vihl & 0x0f) as usize) << 2;
    let avail = frame_len(ctx) - off;
    let total = u16::from_be(unsafe { (*ip).tot_len }) as usize;
    if vihl >> 4 != 4 || ihl < 20 || ihl > avail || total < ihl || total > avail {
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
