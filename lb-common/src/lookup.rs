//! The program's lookup rules that userspace must answer the same way (`lbctl simulate`): which service a packet
//! belongs to, whether a flow-table entry may be used, and which ring entry a hash selects. The reference model in
//! `tests` keeps its own copy of these rules on purpose: it is the oracle the program is checked against.

use crate::{
    consts::{BACKEND_F_ACTIVE, VIP_F_FRAG_ONLY},
    types::{AddrWords, Backend, VipKey, VipMeta},
};

/// The service of `(addr, port, proto)`: the first of `(addr, port, proto)` and `(addr, 0, proto)` that exists and
/// is not `VIP_F_FRAG_ONLY` (such an entry only gives fragments a policy and never matches an unfragmented packet,
/// not even one sent to port 0). `get` is the `LB_VIPS` lookup.
#[inline(always)]
pub fn service(
    addr: &AddrWords,
    port: u16,
    proto: u8,
    family: u8,
    mut get: impl FnMut(&VipKey) -> Option<VipMeta>,
) -> Option<VipMeta> {
    let mut key = VipKey {
        addr: *addr,
        port,
        proto,
        family,
    };
    if let Some(m) = get(&key)
        && m.flags & VIP_F_FRAG_ONLY == 0
    {
        return Some(m);
    }
    if port == 0 {
        return None;
    }
    key.port = 0;
    match get(&key) {
        Some(m) if m.flags & VIP_F_FRAG_ONLY == 0 => Some(m),
        _ => None,
    }
}

/// Whether a flow-table entry naming backend `be` may carry a packet of service `meta`: the backend is active and
/// still belongs to that service (backend ids are reused, entries outlive them).
#[inline(always)]
pub const fn flow_entry_usable(be: &Backend, meta: &VipMeta) -> bool {
    be.flags & BACKEND_F_ACTIVE != 0 && be.vip_id == meta.vip_id
}

/// The ring entry a hash selects: `slot * stride + hash % ring_size`. `None` when the sizes are unusable
/// (userspace never writes such a VIP; the program counts it as "no backend").
#[inline(always)]
pub const fn ring_index(hash: u32, ring_slot: u32, ring_size: u32, stride: u32) -> Option<u32> {
    if ring_size == 0 || ring_size > stride {
        return None;
    }
    match ring_slot.checked_mul(stride) {
        Some(base) => base.checked_add(hash % ring_size),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{FAMILY_V4, IPPROTO_TCP};

    fn meta(vip_id: u32, flags: u32) -> VipMeta {
        VipMeta {
            vip_id,
            flags,
            ..Default::default()
        }
    }

    /// A map of `(port, meta)` entries of one address.
    fn lookup(entries: &[(u16, VipMeta)], port: u16) -> Option<u32> {
        let get = |k: &VipKey| entries.iter().find(|(p, _)| k.port == *p).map(|(_, m)| *m);
        service(&[1, 0, 0, 0], port, IPPROTO_TCP, FAMILY_V4, get).map(|m| m.vip_id)
    }

    #[test]
    fn exact_then_wildcard_and_fragment_only_entries_never_serve() {
        let exact_and_frag = [(80, meta(1, 0)), (0, meta(2, VIP_F_FRAG_ONLY))];
        assert_eq!(lookup(&exact_and_frag, 80), Some(1));
        assert_eq!(lookup(&exact_and_frag, 81), None);
        // Port 0 hits the fragment-only entry exactly: still no service.
        assert_eq!(lookup(&exact_and_frag, 0), None);
        let wildcard = [(80, meta(1, 0)), (0, meta(3, 0))];
        assert_eq!(lookup(&wildcard, 81), Some(3));
        assert_eq!(lookup(&wildcard, 0), Some(3));
        assert_eq!(lookup(&wildcard, 80), Some(1));
        // A fragment-only entry on a port (userspace never writes one) is skipped for the wildcard.
        let odd = [(80, meta(1, VIP_F_FRAG_ONLY)), (0, meta(3, 0))];
        assert_eq!(lookup(&odd, 80), Some(3));
    }

    #[test]
    fn a_flow_entry_is_usable_only_on_an_active_backend_of_its_own_service() {
        let be = |vip_id, flags| Backend {
            vip_id,
            flags,
            ..Default::default()
        };
        assert!(flow_entry_usable(&be(4, BACKEND_F_ACTIVE), &meta(4, 0)));
        assert!(!flow_entry_usable(&be(4, 0), &meta(4, 0)));
        assert!(!flow_entry_usable(&be(5, BACKEND_F_ACTIVE), &meta(4, 0)));
    }

    #[test]
    fn ring_index_bounds() {
        assert_eq!(ring_index(10, 3, 7, 11), Some(3 * 11 + 3));
        assert_eq!(ring_index(10, 0, 0, 11), None);
        assert_eq!(ring_index(10, 0, 12, 11), None);
        assert_eq!(ring_index(1, u32::MAX, 7, 11), None);
    }
}
