//! The LRU flow table: which backend an established flow went to.

use lb_common::{Backend, BackendId, FlowKey, FlowState, VipMeta, lookup::flow_entry_usable};

use crate::maps::{LB_BACKENDS, LB_FLOWS};

/// What the flow table says about a flow of one service.
pub enum Lookup {
    /// A usable entry: the backend is active and belongs to the service; with the flow's hash (kept in the entry).
    Hit(BackendId, Backend, u32),
    /// An entry exists but may not be used (inactive backend, or an id that now belongs to another service):
    /// re-choose and overwrite.
    Unusable,
    Miss,
}

#[inline(always)]
pub fn lookup(key: &FlowKey, meta: &VipMeta) -> Lookup {
    let Some(st) = LB_FLOWS.get_ptr(key) else {
        return Lookup::Miss;
    };
    let (id, hash) = unsafe { ((*st).backend_id, (*st).hash) };
    match LB_BACKENDS.get_ptr(id) {
        Some(be) if flow_entry_usable(unsafe { &*be }, meta) => {
            Lookup::Hit(id, unsafe { *be }, hash)
        }
        _ => Lookup::Unusable,
    }
}

/// Inserts or overwrites the flow's entry; `hash` is the flow's `flow_hash`, computed to choose its backend.
#[inline(always)]
pub fn insert(key: &FlowKey, backend_id: BackendId, hash: u32) {
    // A failed insert (e.g. memory pressure) only costs stickiness; the packet is still forwarded by hash.
    let _ = LB_FLOWS.insert(key, FlowState { backend_id, hash }, 0);
}
