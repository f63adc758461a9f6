//! Every verdict of the three programs, named once: what the program does with a packet and the one verdict-reason
//! counter that says why. Entry points end in [`finish`], which counts the reason and returns the action.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use lb_common::{Counter, XDP_DROP, XDP_PASS, XDP_TX};

use crate::stats;

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
    stats::count(v.counter);
    v.action
}

const fn pass(c: Counter) -> Verdict {
    Verdict::new(XDP_PASS, c)
}

const fn drop(c: Counter) -> Verdict {
    Verdict::new(XDP_DROP, c)
}

// lb_xdp
pub const PASS_NOT_IP: Verdict = pass(Counter::PassNotIp);
pub const PASS_NOT_VIP: Verdict = pass(Counter::PassNotVip);
pub const PASS_MALFORMED: Verdict = pass(Counter::PassMalformed);
pub const PASS_UNSUPPORTED: Verdict = pass(Counter::PassUnsupported);
pub const TX: Verdict = Verdict::new(XDP_TX, Counter::Tx);
pub const DROP_MALFORMED: Verdict = drop(Counter::DropMalformed);
pub const DROP_NOT_SERVED: Verdict = drop(Counter::DropNotServed);
pub const DROP_FRAGMENT: Verdict = drop(Counter::DropFragment);
pub const DROP_NO_BACKEND: Verdict = drop(Counter::DropNoBackend);
pub const DROP_NO_ROUTE: Verdict = drop(Counter::DropNoRoute);
pub const DROP_ADJUST: Verdict = drop(Counter::DropAdjustFailed);
pub const DROP_OVER_MTU: Verdict = drop(Counter::DropOverMtu);
pub const DROP_ICMP_RATE_LIMITED: Verdict = drop(Counter::DropIcmpRateLimited);
pub const ICMP_TOO_BIG_SENT: Verdict = Verdict::new(XDP_TX, Counter::IcmpTooBigSent);
pub const ICMP_ECHO_REPLY: Verdict = Verdict::new(XDP_TX, Counter::IcmpEchoReply);

/// A redirect through the devmap, with the action `bpf_redirect_map` returned.
#[inline(always)]
pub const fn redirect(action: u32) -> Verdict {
    Verdict::new(action, Counter::Redirect)
}

// lb_decap
pub const DECAP_OK: Verdict = pass(Counter::DecapOk);
pub const DECAP_NOT_TUNNEL: Verdict = pass(Counter::DecapPassNotTunnel);
pub const DECAP_NOT_VIP: Verdict = pass(Counter::DecapPassNotVip);
pub const DECAP_MALFORMED: Verdict = drop(Counter::DecapDropMalformed);
pub const DECAP_BAD_SOURCE: Verdict = drop(Counter::DecapDropSource);
pub const DECAP_FRAGMENT: Verdict = drop(Counter::DecapDropFragment);

// lb_hc (TC actions, not XDP ones)
pub const HC_PASS_UNMARKED: Verdict = Verdict::new(TC_ACT_OK as u32, Counter::HcPassUnmarked);
pub const HC_SENT: Verdict = Verdict::new(TC_ACT_REDIRECT as u32, Counter::HcSent);
pub const HC_DROP_NO_BACKEND: Verdict = Verdict::new(TC_ACT_SHOT as u32, Counter::HcDropNoBackend);
pub const HC_DROP_NO_ROUTE: Verdict = Verdict::new(TC_ACT_SHOT as u32, Counter::HcDropNoRoute);
pub const HC_DROP_MALFORMED: Verdict = Verdict::new(TC_ACT_SHOT as u32, Counter::HcDropMalformed);

/// Why a packet with a valid IP header was not balanced (steps 3 to 5 of docs/dataplane.md). Whether that means
/// a drop or a pass depends only on its destination: see `vip::unbalanced`.
#[derive(Clone, Copy)]
pub enum Unbalanced {
    /// A header after the IP header is cut short or invalid.
    Malformed,
    /// Well formed, but no service takes it.
    NotServed,
}
