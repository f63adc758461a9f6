//! `lb_decap`: the backend side of IP-in-IP. Strips the outer header of tunnel packets from a configured balancer,
//! addressed to this host, whose inner destination is a VIP it serves; everything else goes up untouched, except
//! tunnel packets for this host that are fragmented, from anyone else, or cut short (docs/dataplane.md, `lb_decap`).

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    AddrKey, AddrWords, FAMILY_V4, FAMILY_V6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_IPV6_FRAG,
};

use crate::{
    headers::{
        ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IP_MF_OFFSET, Ipv4Hdr, Ipv6FragHdr, Ipv6Hdr,
        frame_len, ptr_at,
    },
    maps::{LB_DECAP_FROM, LB_DECAP_LOCAL, LB_DECAP_VIPS},
    verdict::{
        DECAP_BAD_SOURCE, DECAP_FRAGMENT, DECAP_MALFORMED, DECAP_NOT_TUNNEL, DECAP_NOT_VIP,
        DECAP_OK, Verdict,
    },
};

/// adjust_head cannot fail for a shrink inside a frame whose bytes were just checked; if it does, leave the
/// packet to the kernel like any other packet this program cannot handle.
const ADJUST_FAILED: Verdict = DECAP_NOT_TUNNEL;

/// The outer header of a tunnel packet, as far as the checks need it.
struct Outer {
    len: usize,
    /// The inner protocol: 4 or 41.
    proto: u8,
    fragment: bool,
    family: u8,
    src: AddrWords,
    dst: AddrWords,
}

#[inline(always)]
pub fn try_lb_decap(ctx: &XdpContext) -> Verdict {
    match inner(ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn key(addr: AddrWords, family: u8) -> AddrKey {
    AddrKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

/// Step 1: an IP-in-IP outer header, or `DecapPassNotTunnel`.
#[inline(always)]
fn outer(ctx: &XdpContext) -> Result<Outer, Verdict> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(DECAP_NOT_TUNNEL)?;
    let et = unsafe { (*eth).proto };
    let o = if et == ETH_P_IPV4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(DECAP_NOT_TUNNEL)?;
        let ihl = unsafe { (*ip).header_len() }.ok_or(DECAP_NOT_TUNNEL)?;
        if ETH_HLEN + ihl > frame_len(ctx) {
            return Err(DECAP_NOT_TUNNEL);
        }
        Outer {
            len: ihl,
            proto: unsafe { (*ip).proto },
            fragment: unsafe { (*ip).frag_off } & IP_MF_OFFSET != 0,
            family: FAMILY_V4,
            src: [unsafe { (*ip).src }, 0, 0, 0],
            dst: [unsafe { (*ip).dst }, 0, 0, 0],
        }
    } else if et == ETH_P_IPV6 {
        let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(DECAP_NOT_TUNNEL)?;
        if unsafe { (*ip).version_tc_flow[0] } >> 4 != 6 {
            return Err(DECAP_NOT_TUNNEL);
        }
        let mut o = Outer {
            len: 40,
            proto: unsafe { (*ip).next_hdr },
            fragment: false,
            family: FAMILY_V6,
            src: unsafe { (*ip).src },
            dst: unsafe { (*ip).dst },
        };
        if o.proto == IPPROTO_IPV6_FRAG {
            let fh: *const Ipv6FragHdr = ptr_at(ctx, ETH_HLEN + 40).ok_or(DECAP_NOT_TUNNEL)?;
            o.proto = unsafe { (*fh).next_hdr };
            o.len += 8;
            o.fragment = true;
        }
        o
    } else {
        return Err(DECAP_NOT_TUNNEL);
    };
    if o.proto != IPPROTO_IPIP && o.proto != IPPROTO_IPV6 {
        return Err(DECAP_NOT_TUNNEL);
    }
    Ok(o)
}

#[inline(always)]
fn inner(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let o = outer(ctx)?;
    // Step 2.
    if LB_DECAP_LOCAL.get_ptr(key(o.dst, o.family)).is_none() {
        return Err(DECAP_NOT_TUNNEL);
    }
    // Steps 3 and 4.
    if o.fragment {
        return Err(DECAP_FRAGMENT);
    }
    if LB_DECAP_FROM.get_ptr(key(o.src, o.family)).is_none() {
        return Err(DECAP_BAD_SOURCE);
    }
    // Step 5.
    let inner_off = ETH_HLEN + o.len;
    let (vip, new_et) = if o.proto == IPPROTO_IPIP {
        let ip: *const Ipv4Hdr = ptr_at(ctx, inner_off).ok_or(DECAP_MALFORMED)?;
        (key([unsafe { (*ip).dst }, 0, 0, 0], FAMILY_V4), ETH_P_IPV4)
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, inner_off).ok_or(DECAP_MALFORMED)?;
        (key(unsafe { (*ip).dst }, FAMILY_V6), ETH_P_IPV6)
    };
    if LB_DECAP_VIPS.get_ptr(vip).is_none() {
        return Err(DECAP_NOT_VIP);
    }
    // Step 6. Keep the Ethernet addresses: copy them forward over the end of the outer header, drop the front.
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(ADJUST_FAILED)?;
    let (dst, src) = unsafe { ((*eth).dst, (*eth).src) };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, o.len as i32) } != 0 {
        return Err(ADJUST_FAILED);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(ADJUST_FAILED)?;
    unsafe {
        (*eth).dst = dst;
        (*eth).src = src;
        (*eth).proto = new_et;
    }
    Ok(DECAP_OK)
}
