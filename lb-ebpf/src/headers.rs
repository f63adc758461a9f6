//! Header layouts and the bounds-checked view of the packet: the one place packet pointers are made. Constants
//! compared against packet fields are pre-swapped to network order so nothing is byte-swapped per packet on the
//! common path. Shared by both objects (the lab programs parse too).

use aya_ebpf::programs::XdpContext;
use lb_common::AddrWords;

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

impl Ipv4Hdr {
    /// The header's length in bytes (IHL · 4) when it says version 4 and IHL ≥ 5: every IPv4 header the programs
    /// read (a packet's, a tunnel's outer one, the one an ICMP error quotes) must pass this before its options are
    /// skipped.
    #[inline(always)]
    pub fn header_len(&self) -> Option<usize> {
        let ihl = ((self.version_ihl & 0x0f) as usize) << 2;
        if self.version_ihl >> 4 != 4 || ihl < 20 {
            return None;
        }
        Some(ihl)
    }
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

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}
