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

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{XDP_DROP, XDP_PASS, XDP_TX};

use crate::headers::{ETH_HLEN, ETH_P_IPV4, EthHdr, Ipv4Hdr, ptr_at};

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
    if unsafe { (*eth).proto } != ETH_P_IPV4 {
        return None;
    }
    ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    unsafe { core::mem::swap(&mut (*eth).dst, &mut (*eth).src) };
    Some(XDP_TX)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
