//! Per-CPU counters: verdict reasons, per-VIP and per-backend traffic. Per-CPU maps make plain adds race-free.

use lb_common::{BackendId, Counter};

use crate::maps::{LB_BACKEND_STATS, LB_COUNTERS, LB_VIP_STATS};

/// What a program does with a packet and the one verdict-reason counter that says why.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: u32,
    pub counter: Counter,
}

impl Verdict {
    #[inline(always)]
    pub const fn new(action: u32, counter: Counter) -> Self {
        Verdict { action, counter }
    }
}

/// Counts the verdict's reason and returns its action: the single exit of every entry point.
#[inline(always)]
pub fn finish(v: Verdict) -> u32 {
    count(v.counter);
    v.action
}

/// Adds one to a verdict/reason (or informational) counter.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = LB_COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *p += 1 };
    }
}

/// One packet of `len` bytes for VIP `vip_id`.
#[inline(always)]
pub fn vip_packet(vip_id: u32, len: u64) {
    if let Some(s) = LB_VIP_STATS.get_ptr_mut(vip_id) {
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
        }
    }
}

/// A flow-table insert for VIP `vip_id`.
#[inline(always)]
pub fn vip_new_flow(vip_id: u32) {
    if let Some(s) = LB_VIP_STATS.get_ptr_mut(vip_id) {
        unsafe { (*s).new_flows += 1 };
    }
}

/// A non-SYN packet of VIP `vip_id` that found no flow entry.
#[inline(always)]
pub fn vip_lru_miss(vip_id: u32) {
    if let Some(s) = LB_VIP_STATS.get_ptr_mut(vip_id) {
        unsafe { (*s).lru_misses += 1 };
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
