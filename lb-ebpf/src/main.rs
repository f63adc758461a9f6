#![no_std]
#![no_main]

mod maps;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::Counter;

/// The balancer.
#[xdp]
pub fn lb_xdp(_ctx: XdpContext) -> u32 {
    stats::count(Counter::PassNotIp);
    xdp_action::XDP_PASS
}

/// Backend side: strips the tunnel header of packets for served VIPs.
#[xdp]
pub fn lb_decap(_ctx: XdpContext) -> u32 {
    stats::count(Counter::DecapPassNotTunnel);
    xdp_action::XDP_PASS
}

/// A bare `XDP_PASS` for veth peers that receive native `XDP_TX`/`XDP_REDIRECT` frames.
#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmark calibration: nothing but the program call.
#[xdp]
pub fn lb_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmark floor.
#[xdp]
pub fn lb_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
