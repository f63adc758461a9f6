//! What lbd's tasks share: the daemon behind its lock, the health checker, when it started, and the stop signal.
//! The signal loop (`runtime`), the control handler (`control::handler`) and the metrics endpoint all hold one.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tokio::sync::{Mutex, watch};

use crate::daemon::Daemon;
use crate::health::{CheckKind, Checker, HealthKey};

pub struct Shared {
    pub daemon: Mutex<Daemon>,
    pub checker: std::sync::Mutex<Checker>,
    pub started: Instant,
    /// Becomes true once, on `lbctl shutdown`; the main loop, the control server and the metrics server all wait
    /// for it. A watch, not a Notify: a Notify permit goes to one waiter only, and the main loop re-registers its
    /// wait on every event, so under a stream of health events the permit could land elsewhere and the daemon never
    /// stop.
    pub stop: watch::Sender<bool>,
    /// Set with the stop by `lbctl shutdown --detach`: remove the program on the way out.
    pub detach: AtomicBool,
}

impl Shared {
    pub fn new(daemon: Daemon, checker: Checker) -> Shared {
        Shared {
            daemon: Mutex::new(daemon),
            checker: std::sync::Mutex::new(checker),
            started: Instant::now(),
            stop: watch::Sender::new(false),
            detach: false.into(),
        }
    }

    /// Re-reads the config file and applies the difference (SIGHUP, `lbctl reload`): what changed, or why the
    /// running state was kept.
    pub async fn reload(&self) -> Result<String, String> {
        let mut d = self.daemon.lock().await;
        match d.reload() {
            Ok(diff) => {
                self.sync_checks(&d);
                Ok(format!("reloaded: {}", diff.summary()))
            }
            Err(e) => Err(format!("reload rejected, running state kept: {e:#}")),
        }
    }

    /// Health checks wanted by the current config: every backend of every VIP with a check other than `none`,
    /// each starting in the state the daemon has for it (recovered from the maps at start: a backend that was down
    /// stays out of the ring until it passes `rise` checks).
    pub fn sync_checks(&self, daemon: &Daemon) {
        let wanted: Vec<_> = daemon
            .config()
            .vips
            .iter()
            .filter(|v| v.health.kind != CheckKind::None)
            .flat_map(|v| {
                v.backends.iter().map(move |b| {
                    let key = HealthKey {
                        vip: v.key(),
                        backend: b.address,
                    };
                    let target = v.health.target(b.address, v.port);
                    (
                        key,
                        target,
                        v.health.clone(),
                        daemon.is_up(&key.vip, b.address),
                    )
                })
            })
            .collect();
        self.checker
            .lock()
            .expect("checker lock")
            .sync(wanted, &daemon.config().trust);
    }
}
