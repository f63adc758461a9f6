//! The LRU flow table and the per-CPU cap on new flows per second.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    BACKEND_F_ACTIVE, BackendId, FlowKey, FlowState, GlobalConfig, NEW_FLOW_WINDOW_NS,
};

use crate::maps::{LB_BACKENDS, LB_FLOWS, LB_NEW_FLOW_RATE};

/// What the flow table says about a flow.
pub enum Lookup {
    /// Pinned to an active backend.
    Hit(BackendId),
    /// An entry exists but its backend is inactive: re-choose and overwrite.
    Stale,
    Miss,
}

#[inline(always)]
pub fn lookup(key: &FlowKey) -> Lookup {
    let Some(st) = LB_FLOWS.get_ptr(key) else {
        return Lookup::Miss;
    };
    let id = unsafe { (*st).backend_id };
    match LB_BACKENDS.get_ptr(id) {
        Some(be) if unsafe { (*be).flags } & BACKEND_F_ACTIVE != 0 => Lookup::Hit(id),
        _ => Lookup::Stale,
    }
}

/// The backend of a flow for a reply-direction lookup (ICMP): pinned and active, else `None`.
#[inline(always)]
pub fn pinned(key: &FlowKey) -> Option<BackendId> {
    match lookup(key) {
        Lookup::Hit(id) => Some(id),
        _ => None,
    }
}

/// Takes one insert from this CPU's new-flow budget; `false` when the window's cap is reached. The clock is read
/// only here (new flows with a cap configured), never on established traffic. A window start in the future (set
/// by a test to freeze the window) never rolls over.
#[inline(always)]
pub fn admit_new_flow(cfg: &GlobalConfig) -> bool {
    if cfg.new_flow_cap == 0 {
        return true;
    }
    let Some(w) = LB_NEW_FLOW_RATE.get_ptr_mut(0) else {
        return true;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe {
        if now.saturating_sub((*w).window_start_ns) >= NEW_FLOW_WINDOW_NS {
            (*w).window_start_ns = now;
            (*w).count = 0;
        }
        if (*w).count >= cfg.new_flow_cap as u64 {
            return false;
        }
        (*w).count += 1;
    }
    true
}

/// Inserts or overwrites the flow's entry.
#[inline(always)]
pub fn insert(key: &FlowKey, backend_id: BackendId, vip_id: u32) {
    let st = FlowState { backend_id, vip_id };
    // A failed insert (e.g. memory pressure) only costs stickiness; the packet is still forwarded by hash.
    let _ = LB_FLOWS.insert(key, st, 0);
}
