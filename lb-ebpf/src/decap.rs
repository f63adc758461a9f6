//! `lb_decap`: the backend side of IP-in-IP. Strips the outer header of tunnel packets addressed to this host
//! whose inner destination is a VIP it serves; everything else goes up untouched.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    AddrKey, Counter, FAMILY_V4, FAMILY_V6, IPPROTO_IPIP, IPPROTO_IPV6, XDP_DROP, XDP_PASS,
};

use crate::{
    maps::{LB_DECAP_LOCAL, LB_DECAP_VIPS},
    parse::{ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, ptr_at},
    stats::Verdict,
};

const NOT_TUNNEL: Verdict = Verdict::new(XDP_PASS, Counter::DecapPassNotTunnel);
const NOT_VIP: Verdict = Verdict::new(XDP_PASS, Counter::DecapPassNotVip);
const MALFORMED: Verdict = Verdict::new(XDP_DROP, Counter::DecapDropMalformed);
/// adjust_head cannot fail for a shrink inside a frame whose bytes were just checked; if it does, leave the
/// packet to the kernel like any other packet this program cannot handle.
const ADJUST_FAILED: Verdict = NOT_TUNNEL;

#[inline(always)]
pub fn try_lb_decap(ctx: &XdpContext) -> Verdict {
    match inner(ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn inner(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(NOT_TUNNEL)?;
    let et = unsafe { (*eth).proto };
    let (outer_len, proto, local) = if et == ETH_P_IPV4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(NOT_TUNNEL)?;
        let vihl = unsafe { (*ip).version_ihl };
        let ihl = ((vihl & 0x0f) as usize) << 2;
        if vihl >> 4 != 4 || ihl < 20 || ETH_HLEN + ihl > ctx.data_end() - ctx.data() {
            return Err(NOT_TUNNEL);
        }
        let local = AddrKey {
            addr: [unsafe { (*ip).dst }, 0, 0, 0],
            family: FAMILY_V4,
            _pad: [0; 3],
        };
        (ihl, unsafe { (*ip).proto }, local)
    } else if et == ETH_P_IPV6 {
        let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(NOT_TUNNEL)?;
        if unsafe { (*ip).version_tc_flow[0] } >> 4 != 6 {
            return Err(NOT_TUNNEL);
        }
        let local = AddrKey {
            addr: unsafe { (*ip).dst },
            family: FAMILY_V6,
            _pad: [0; 3],
        };
        (40, unsafe { (*ip).next_hdr }, local)
    } else {
        return Err(NOT_TUNNEL);
    };
    if proto != IPPROTO_IPIP && proto != IPPROTO_IPV6 {
        return Err(NOT_TUNNEL);
    }
    if LB_DECAP_LOCAL.get_ptr(local).is_none() {
        return Err(NOT_TUNNEL);
    }
    let inner_off = ETH_HLEN + outer_len;
    let (vip, new_et) = if proto == IPPROTO_IPIP {
        let ip: *const Ipv4Hdr = ptr_at(ctx, inner_off).ok_or(MALFORMED)?;
        (
            AddrKey {
                addr: [unsafe { (*ip).dst }, 0, 0, 0],
                family: FAMILY_V4,
                _pad: [0; 3],
            },
            ETH_P_IPV4,
        )
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, inner_off).ok_or(MALFORMED)?;
        (
            AddrKey {
                addr: unsafe { (*ip).dst },
                family: FAMILY_V6,
                _pad: [0; 3],
            },
            ETH_P_IPV6,
        )
    };
    if LB_DECAP_VIPS.get_ptr(vip).is_none() {
        return Err(NOT_VIP);
    }
    // Keep the Ethernet addresses: copy them forward over the end of the outer header, then drop the front.
    let (dst, src) = unsafe { ((*eth).dst, (*eth).src) };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(ADJUST_FAILED);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(ADJUST_FAILED)?;
    unsafe {
        (*eth).dst = dst;
        (*eth).src = src;
        (*eth).proto = new_et;
    }
    Ok(Verdict::new(XDP_PASS, Counter::DecapOk))
}
