//! Per-CPU one-second budgets (`LB_RATE_WINDOWS`): flow-table inserts and ICMP too-big answers.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{RATE_WINDOW_NS, RateLimit};

use crate::maps::LB_RATE_WINDOWS;

/// Takes one from this CPU's `limit` budget of `cap` per window; `false` when the window's budget is spent. The
/// clock is read only here, so only on the paths that take from a budget with a cap set. A window start in the
/// future (set by a test to freeze the window) never rolls over.
#[inline(always)]
pub fn take(limit: RateLimit, cap: u32) -> bool {
    if cap == 0 {
        return true;
    }
    let Some(w) = LB_RATE_WINDOWS.get_ptr_mut(limit as u32) else {
        return true;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe {
        if now.saturating_sub((*w).window_start_ns) >= RATE_WINDOW_NS {
            (*w).window_start_ns = now;
            (*w).count = 0;
        }
        if (*w).count >= cap as u64 {
            return false;
        }
        (*w).count += 1;
    }
    true
}
