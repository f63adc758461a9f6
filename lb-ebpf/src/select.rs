//! Maglev ring lookup: userspace built the table, the program only indexes it.

use lb_common::{Backend, BackendId, GlobalConfig, VipMeta, lookup::ring_index};

use crate::maps::{LB_BACKENDS, LB_RING};

/// `ring[hash]`: the backend at the flow's ring entry, `None` for "no backend" (bad sizes, an unset entry, or a
/// backend entry with no address family).
#[inline(always)]
pub fn ring_pick(meta: &VipMeta, cfg: &GlobalConfig, hash: u32) -> Option<(BackendId, Backend)> {
    let idx = ring_index(hash, meta.ring_slot, meta.ring_size, cfg.ring_stride)?;
    let id = unsafe { *LB_RING.get_ptr(idx)? };
    if id == 0 {
        return None;
    }
    let be = unsafe { *LB_BACKENDS.get_ptr(id)? };
    if be.family == 0 {
        return None;
    }
    Some((id, be))
}
