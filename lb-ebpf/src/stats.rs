//! Per-CPU counters: verdict reasons, per-VIP and per-backend traffic.

use lb_common::Counter;

use crate::maps::LB_COUNTERS;

/// Adds one to a verdict/reason counter. Per-CPU, so a plain add is race-free.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = LB_COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *p += 1 };
    }
}
