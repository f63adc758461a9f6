//! Per-CPU counters: verdict reasons, per-VIP and per-backend traffic. Per-CPU maps make plain adds race-free.

use lb_common::{BackendId, Counter, VipStats};

use crate::maps::{LB_BACKEND_STATS, LB_COUNTERS, LB_VIP_STATS};

/// Adds one to a verdict/reason (or informational) counter.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = LB_COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *p += 1 };
    }
}

/// A service's stats entry on this CPU, looked up once per packet and updated through the steps.
pub struct VipCounters(Option<*mut VipStats>);

impl VipCounters {
    /// One packet of `len` bytes for VIP `vip_id`.
    #[inline(always)]
    pub fn packet(vip_id: u32, len: u64) -> Self {
        let s = LB_VIP_STATS.get_ptr_mut(vip_id);
        if let Some(s) = s {
            unsafe {
                (*s).packets += 1;
                (*s).bytes += len;
            }
        }
        VipCounters(s)
    }

    /// A flow-table insert.
    #[inline(always)]
    pub fn new_flow(&self) {
        if let Some(s) = self.0 {
            unsafe { (*s).new_flows += 1 };
        }
    }

    /// A packet that is not a new connection found no flow entry.
    #[inline(always)]
    pub fn lru_miss(&self) {
        if let Some(s) = self.0 {
            unsafe { (*s).lru_misses += 1 };
        }
    }
}

/// One packet of `len` bytes sent towards backend `id`.
#[inline(always)]
pub fn backend_packet(id: BackendId, len: u64) {
    if let Some(s) = LB_BACKEND_STATS.get_ptr_mut(id) {
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
        }
    }
}
