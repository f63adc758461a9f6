//! Which service a packet belongs to, and whether its destination is a VIP address at all. An address whose filter
//! bit is clear has no entry in either map, so traffic that is not for a VIP never reaches a hash map.

use lb_common::{AddrKey, AddrWords, VipKey, VipMeta, hash::vip_filter_bit, lookup};

use crate::{
    maps::{LB_VIP_ADDRS, LB_VIP_FILTER, LB_VIPS},
    parse::L3,
    verdict::{DROP_MALFORMED, DROP_NOT_SERVED, PASS_NOT_VIP, Unbalanced, Verdict},
};

/// `false` only when `addr` certainly has no `LB_VIPS` / `LB_VIP_ADDRS` entry.
#[inline(always)]
fn may_be_vip(addr: &AddrWords) -> bool {
    let bit = vip_filter_bit(addr);
    match LB_VIP_FILTER.get(bit / 64) {
        Some(word) => *word & (1u64 << (bit % 64)) != 0,
        // Cannot happen (the index is in range); the lookups decide.
        None => true,
    }
}

/// The service of `(addr, port, proto)` (docs/dataplane.md, "Terms").
#[inline(always)]
pub fn service(addr: &AddrWords, port: u16, proto: u8, family: u8) -> Option<VipMeta> {
    if !may_be_vip(addr) {
        return None;
    }
    lookup::service(addr, port, proto, family, |k| {
        LB_VIPS.get_ptr(*k).map(|m| unsafe { *m })
    })
}

/// The fragment policy entry `(addr, 0, proto)` (`VIP_F_FRAG_ONLY` entries included: that is what they are for).
#[inline(always)]
pub fn fragment_policy(addr: &AddrWords, proto: u8, family: u8) -> Option<VipMeta> {
    if !may_be_vip(addr) {
        return None;
    }
    let key = VipKey {
        addr: *addr,
        port: 0,
        proto,
        family,
    };
    LB_VIPS.get_ptr(key).map(|m| unsafe { *m })
}

/// Whether some `LB_VIPS` entry has this address.
#[inline(always)]
pub fn is_vip_address(addr: &AddrWords, family: u8) -> bool {
    if !may_be_vip(addr) {
        return false;
    }
    let key = AddrKey {
        addr: *addr,
        family,
        _pad: [0; 3],
    };
    LB_VIP_ADDRS.get_ptr(key).is_some()
}

/// The verdict for a packet with a valid IP header that is not balanced: dropped if it is for a VIP address (the
/// kernel would route it back upstream), passed otherwise.
#[inline(always)]
pub fn unbalanced(l3: &L3, why: Unbalanced) -> Verdict {
    if !is_vip_address(&l3.dst, l3.family) {
        return PASS_NOT_VIP;
    }
    match why {
        Unbalanced::Malformed => DROP_MALFORMED,
        Unbalanced::NotServed => DROP_NOT_SERVED,
    }
}
