//! VIP lookup: the exact `(addr, port, proto)` service, else the port-0 wildcard of the address. An address whose
//! filter bit is clear has no entry at all, so most traffic that is not for a VIP never reaches the hash map.

use lb_common::{AddrWords, VIP_F_FRAG_ONLY, VipKey, VipMeta, hash::vip_filter_bit};

use crate::maps::{LB_VIP_FILTER, LB_VIPS};

/// `false` only when `addr` certainly has no `LB_VIPS` entry.
#[inline(always)]
fn may_be_vip(addr: &AddrWords) -> bool {
    let bit = vip_filter_bit(addr);
    match LB_VIP_FILTER.get(bit / 64) {
        Some(word) => *word & (1u64 << (bit % 64)) != 0,
        // Cannot happen (the index is in range); the lookups decide.
        None => true,
    }
}

/// The VIP serving `(addr, port, proto)`; a port-0 entry that only carries a fragment policy does not count.
#[inline(always)]
pub fn find(addr: &AddrWords, port: u16, proto: u8, family: u8) -> Option<VipMeta> {
    if !may_be_vip(addr) {
        return None;
    }
    let mut key = VipKey {
        addr: *addr,
        port,
        proto,
        family,
    };
    if let Some(m) = LB_VIPS.get_ptr(key) {
        return Some(unsafe { *m });
    }
    if port == 0 {
        return None;
    }
    key.port = 0;
    let m = unsafe { *LB_VIPS.get_ptr(key)? };
    if m.flags & VIP_F_FRAG_ONLY != 0 {
        return None;
    }
    Some(m)
}

/// The fragment policy entry `(addr, 0, proto)` (`VIP_F_FRAG_ONLY` entries included: that is what they are for).
#[inline(always)]
pub fn find_fragment(addr: &AddrWords, proto: u8, family: u8) -> Option<VipMeta> {
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
