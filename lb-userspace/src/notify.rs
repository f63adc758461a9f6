//! lbd's side of systemd's service protocol (`Type=notify`, `WatchdogSec=`): READY=1 once the balancer serves
//! (program attached, maps programmed, control socket and /metrics listening), STOPPING=1 on the way out, and
//! WATCHDOG=1 from the main loop, so that a loop that stops turning (a deadlock, a stuck map write) gets lbd
//! restarted; the pinned program keeps forwarding meanwhile. Without NOTIFY_SOCKET (lbd not started by systemd)
//! every call is a no-op, and without WATCHDOG_USEC there is no watchdog.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Tells the service manager that start-up is complete, with a status line for `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// One watchdog keep-alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often the main loop must ping: half the service manager's timeout (as sd_watchdog_enabled(3) advises), or
/// `None` when no watchdog is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    // false: keep the variables, so a later look (and nothing else: lbd starts no children) still sees them.
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

fn send(states: &[NotifyState]) {
    // A lost notification must not stop the balancer: systemd then restarts or times it out, which is its job.
    match sd_notify::notify(false, states) {
        Ok(()) => debug!(?states, "notified the service manager"),
        Err(e) => warn!(?states, "notifying the service manager failed: {e}"),
    }
}
