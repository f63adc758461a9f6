//! The lab object (`lb-lab-ebpf`): calibration and test programs for the benchmarks, the load tests and the lab.
//! lbd never loads it; the production object (main.rs) holds only what runs on an edge host.
#![no_std]
#![no_main]

#[path = "headers.rs"]
#[allow(
    dead_code,
    reason = "the production object's header layouts; the lab programs read only a few"
)]
mod headers;
#[path = "loadgen.rs"]
mod loadgen;

use aya_ebpf::{helpers::bpf_xdp_adjust_head, macros::xdp, programs::XdpContext};
use lb_common::{IPPROTO_IPIP, XDP_DROP, XDP_PASS, XDP_TX, csum};

use crate::headers::{ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IP_DF, Ipv4Hdr, Ipv6Hdr, ptr_at};

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

/// Benchmark floor: the least a forwarding program does (parse Ethernet + the IPv4 or IPv6 header, swap MACs,
/// `XDP_TX`); the floor of both families' packet-rate rows.
#[xdp]
pub fn lb_floor(ctx: XdpContext) -> u32 {
    try_lb_floor(&ctx).unwrap_or(XDP_PASS)
}

#[inline(always)]
fn try_lb_floor(ctx: &XdpContext) -> Option<u32> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let proto = unsafe { (*eth).proto };
    if proto == ETH_P_IPV4 {
        ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    } else if proto == ETH_P_IPV6 {
        ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    } else {
        return None;
    }
    unsafe { core::mem::swap(&mut (*eth).dst, &mut (*eth).src) };
    Some(XDP_TX)
}

/// Encapsulation floor: the least any IPIP balancer does to a packet (parse Ethernet + IPv4, room for an outer
/// header, fixed MACs and a fixed outer IPv4 header with its checksum, `XDP_TX`); no lookup of any kind. The
/// balancer's paths are also quoted against it, so the figure that remains is what choosing a backend costs.
#[xdp]
pub fn lb_encap_floor(ctx: XdpContext) -> u32 {
    try_lb_encap_floor(&ctx).unwrap_or(XDP_PASS)
}

/// Fixed outer addresses (198.18.0.1 -> 198.18.0.2, big-endian) and MACs: constants, so nothing is looked up.
const ENCAP_SRC: u32 = u32::from_be_bytes([198, 18, 0, 1]).to_be();
const ENCAP_DST: u32 = u32::from_be_bytes([198, 18, 0, 2]).to_be();
const ENCAP_SMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const ENCAP_DMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[inline(always)]
fn try_lb_encap_floor(ctx: &XdpContext) -> Option<u32> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    if unsafe { (*eth).proto } != ETH_P_IPV4 {
        return None;
    }
    ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    let inner_len = ctx.data_end() - ctx.data() - ETH_HLEN;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -20) } != 0 {
        return Some(XDP_DROP);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    let mut h = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((inner_len + 20) as u16).to_be(),
        id: 0,
        frag_off: IP_DF,
        ttl: 64,
        proto: IPPROTO_IPIP,
        check: 0,
        src: ENCAP_SRC,
        dst: ENCAP_DST,
    };
    // SAFETY: Ipv4Hdr is 20 bytes of plain integers, alignment ≥ 2.
    let words: &[u16; 10] = unsafe { &*(&h as *const Ipv4Hdr as *const [u16; 10]) };
    h.check = csum::ipv4_header(words);
    unsafe {
        (*eth).dst = ENCAP_DMAC;
        (*eth).src = ENCAP_SMAC;
        (*eth).proto = ETH_P_IPV4;
        *ip = h;
    }
    Some(XDP_TX)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
