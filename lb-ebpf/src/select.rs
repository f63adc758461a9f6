//! Maglev ring lookup: userspace built the table, the program only indexes it.

use lb_common::{BackendId, GlobalConfig, VipMeta, hash::ring_index};

use crate::maps::{LB_BACKENDS, LB_RING};

/// `ring[hash]`: the backend id at the flow's ring entry, `None` for "no backend" (bad sizes, an unset entry, or
/// a backend entry with no address family).
#[inline(always)]
pub fn ring_pick(meta: &VipMeta, cfg: &GlobalConfig, hash: u32) -> Option<BackendId> {
    let idx = ring_index(hash, meta.ring_slot, meta.ring_size, cfg.ring_stride)?;
    let id = unsafe { *LB_RING.get_ptr(idx)? };
    let be = LB_BACKENDS.get_ptr(id)?;
    if id == 0 || unsafe { (*be).family } == 0 {
        return None;
    }
    Some(id)
}
