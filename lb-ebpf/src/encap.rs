//! Rewrites for the two forwarding modes: IP-in-IP (all four family combinations) and L2 DSR.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{Backend, FAMILY_V4, GlobalConfig, IPPROTO_IPIP, IPPROTO_IPV6, NextHop, csum};

use crate::{
    headers::{ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IP_DF, Ipv4Hdr, Ipv6Hdr, ptr_at},
    verdict::{DROP_ADJUST, DROP_MALFORMED, Verdict},
};

/// Outer header length for a backend family.
#[inline(always)]
pub fn overhead(backend_family: u8) -> usize {
    if backend_family == FAMILY_V4 { 20 } else { 40 }
}

/// L2 DSR: only the Ethernet addresses change (a VLAN tag stays).
#[inline(always)]
pub fn rewrite_macs(ctx: &XdpContext, nh: &NextHop) -> Result<(), Verdict> {
    // Step 1 saw the Ethernet header: this cannot fail, the check is for the verifier.
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(DROP_MALFORMED)?;
    unsafe {
        (*eth).dst = nh.dmac;
        (*eth).src = nh.smac;
    }
    Ok(())
}

/// Replaces the L2 header (`l2_len` bytes, VLAN tag included) by Ethernet + an outer IP header towards `be`.
/// `inner_len` is the frame length minus `l2_len`; `inner_family` picks protocol 4 or 41; `label_hash` (the flow's
/// hash) gives an IPv6 outer header its flow label and is unused for IPv4.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "one inlined call site; a struct would only rename the same values"
)]
pub fn encapsulate(
    ctx: &XdpContext,
    l2_len: usize,
    inner_len: usize,
    inner_family: u8,
    be: &Backend,
    cfg: &GlobalConfig,
    nh: &NextHop,
    label_hash: u32,
) -> Result<(), Verdict> {
    let outer = overhead(be.family);
    let delta = l2_len as i32 - (ETH_HLEN + outer) as i32;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(DROP_ADJUST);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(DROP_ADJUST)?;
    unsafe {
        (*eth).dst = nh.dmac;
        (*eth).src = nh.smac;
    }
    if be.family == FAMILY_V4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(DROP_ADJUST)?;
        unsafe {
            (*eth).proto = ETH_P_IPV4;
            *ip = outer_v4(inner_len, inner_family, be, cfg);
        }
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(DROP_ADJUST)?;
        unsafe {
            (*eth).proto = ETH_P_IPV6;
            *ip = outer_v6(inner_len, inner_family, be, cfg, label_hash);
        }
    }
    Ok(())
}

/// Protocol number of the tunnel for an inner packet of `inner_family`: 4 (IP-in-IP) or 41 (IPv6-in-IP).
#[inline(always)]
fn tunnel_proto(inner_family: u8) -> u8 {
    if inner_family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    }
}

/// The outer IPv4 header towards IPv4 backend `be` for an inner packet of `inner_len` bytes: the one header both
/// `lb_xdp` and `lb_hc` put in front.
#[inline(always)]
pub fn outer_v4(inner_len: usize, inner_family: u8, be: &Backend, cfg: &GlobalConfig) -> Ipv4Hdr {
    let mut h = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((inner_len + 20) as u16).to_be(),
        id: 0,
        frag_off: IP_DF,
        ttl: 64,
        proto: tunnel_proto(inner_family),
        check: 0,
        src: cfg.encap_src_v4,
        dst: be.addr[0],
    };
    // SAFETY: Ipv4Hdr is 20 bytes of plain integers, alignment ≥ 2.
    let words: &[u16; 10] = unsafe { &*(&h as *const Ipv4Hdr as *const [u16; 10]) };
    h.check = csum::ipv4_header(words);
    h
}

/// The outer IPv6 header towards IPv6 backend `be`; `label_hash` (the flow's hash) gives the flow label, so a
/// flow's packets stay on one path of an ECMP fabric and different flows spread.
#[inline(always)]
pub fn outer_v6(
    inner_len: usize,
    inner_family: u8,
    be: &Backend,
    cfg: &GlobalConfig,
    label_hash: u32,
) -> Ipv6Hdr {
    let label = label_hash & 0xf_ffff;
    Ipv6Hdr {
        version_tc_flow: [0x60, (label >> 16) as u8, (label >> 8) as u8, label as u8],
        payload_len: (inner_len as u16).to_be(),
        next_hdr: tunnel_proto(inner_family),
        hop_limit: 64,
        src: cfg.encap_src_v6,
        dst: be.addr,
    }
}
