//! `lb_loadgen`: the load tests' packet generator; lbd never attaches it. Userspace runs it with BPF_PROG_TEST_RUN
//! in live-frames mode on one template frame (Ethernet, IPv4 without options, TCP or UDP). Each run moves the frame
//! to the next source port of a window of `LOADGEN_PORTS`, so the balancer sees that many flows, and returns
//! `XDP_TX`, which the kernel turns into a real transmission out of the interface named in the run's context.
//!
//! Live frames recycle their pages without restoring the data, so a frame may hold the port of an earlier run: the
//! program reads whatever port is there and updates the checksum incrementally from it.

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};
use lb_common::{IPPROTO_TCP, IPPROTO_UDP, LOADGEN_PORT_BASE, LOADGEN_PORTS, XDP_TX, csum};

use crate::headers::{ETH_HLEN, ETH_P_IPV4, EthHdr, Ipv4Hdr, Ports, ptr_at};

/// This CPU's frame counter (`lb_common::programs::LOADGEN_SEQ`).
#[map]
static LB_LOADGEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Offsets of the checksum in the TCP and UDP headers.
const TCP_CHECK_OFF: usize = 16;
const UDP_CHECK_OFF: usize = 6;

/// `XDP_TX` with the next source port, or None for a frame that is not a template this program understands.
#[inline(always)]
pub fn try_lb_loadgen(ctx: &XdpContext) -> Option<u32> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    if unsafe { (*eth).proto } != ETH_P_IPV4 {
        return None;
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    let (version_ihl, proto) = unsafe { ((*ip).version_ihl, (*ip).proto) };
    if version_ihl != 0x45 {
        return None;
    }
    let l4 = ETH_HLEN + lb_common::IPV4_HDR_LEN;
    let check_off = match proto {
        IPPROTO_TCP => TCP_CHECK_OFF,
        IPPROTO_UDP => UDP_CHECK_OFF,
        _ => return None,
    };
    let ports: *mut Ports = ptr_at(ctx, l4)?;
    let check: *mut u16 = ptr_at(ctx, l4 + check_off)?;
    let seq = LB_LOADGEN_SEQ.get_ptr_mut(0)?;
    let n = unsafe { *seq };
    unsafe { *seq = n.wrapping_add(1) };
    let port = (LOADGEN_PORT_BASE + (n % LOADGEN_PORTS) as u16).to_be();
    unsafe {
        let old = (*ports).src;
        (*ports).src = port;
        let sum = *check;
        // A zero UDP checksum means "none" (IPv4): leave it so; a computed zero is sent as its other form.
        if !(proto == IPPROTO_UDP && sum == 0) {
            let new = csum::replace16(sum, old, port);
            *check = if new == 0 && proto == IPPROTO_UDP {
                0xffff
            } else {
                new
            };
        }
    }
    Some(XDP_TX)
}
