//! What lbd's tasks share: the daemon behind its lock, the health checker, the announcements, when it started, and
//! the stop signal. The signal loop (`runtime`), the control handler (`control::handler`) and the metrics endpoint
//! all hold one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard, watch};
use tracing::{info, warn};

use crate::announce::Announcer;
use crate::config::VipAddr;
use crate::daemon::Daemon;
use crate::health::{CheckKind, CheckTarget, Checker, Endpoint, HealthKey};

pub struct Shared {
    /// In an `Arc` of its own so that a heavy change (a reload, a health change across many VIPs: Maglev builds and
    /// ring writes) moves the lock onto a blocking thread and the runtime goes on serving probes, lbctl and
    /// /metrics meanwhile.
    pub daemon: Arc<Mutex<Daemon>>,
    pub checker: std::sync::Mutex<Checker>,
    pub started: Instant,
    /// Becomes true once, on `lbctl shutdown`; the main loop, the control server and the metrics server all wait
    /// for it. A watch, not a Notify: a Notify permit goes to one waiter only, and the main loop re-registers its
    /// wait on every event, so under a stream of health events the permit could land elsewhere and the daemon never
    /// stop.
    pub stop: watch::Sender<bool>,
    /// Set with the stop by `lbctl shutdown --detach`: remove the program on the way out.
    pub detach: AtomicBool,
    pub announcer: std::sync::Mutex<Announcer>,
    /// Each VIP's table digest, valid while the daemon's `ring_builds` is the number kept with it: reading a ring
    /// back costs one syscall per slot, too much for every scrape.
    digests: std::sync::Mutex<(u64, BTreeMap<VipAddr, String>)>,
}

impl Shared {
    pub fn new(daemon: Daemon, checker: Checker, announcer: Announcer) -> Shared {
        Shared {
            daemon: Arc::new(Mutex::new(daemon)),
            checker: std::sync::Mutex::new(checker),
            started: Instant::now(),
            stop: watch::Sender::new(false),
            detach: false.into(),
            announcer: std::sync::Mutex::new(announcer),
            digests: Default::default(),
        }
    }

    /// Makes the announcements follow the daemon's config and health view as they are now.
    pub fn sync_announcements(&self, daemon: &Daemon) {
        let mut a = self.announcer.lock().expect("announcer lock");
        a.reconfigure(&daemon.config().announce);
        a.sync(Instant::now(), &daemon.vip_health());
    }

    /// Every VIP's table digest (see `digest`), read from the live rings when one was rebuilt since the last call.
    pub fn table_digests(&self, daemon: &Daemon) -> BTreeMap<VipAddr, String> {
        let mut cache = self.digests.lock().expect("digest lock");
        let fresh = cache.0 == daemon.ring_builds
            && daemon.state().vips.keys().all(|k| cache.1.contains_key(k));
        if !fresh {
            let mut digests = BTreeMap::new();
            for (k, v) in &daemon.state().vips {
                match daemon.live_ring(k) {
                    Ok(ring) => {
                        digests.insert(*k, crate::digest::table_digest(&ring, &v.backends));
                    }
                    Err(e) => tracing::warn!(vip = %k, "reading the ring for its digest: {e:#}"),
                }
            }
            *cache = (daemon.ring_builds, digests);
        }
        cache.1.clone()
    }

    /// Re-reads the config file and applies the difference (SIGHUP, `lbctl reload`): what changed, or why the
    /// running state was kept.
    pub async fn reload(&self) -> Result<String, String> {
        let (d, result) = self.off_runtime(|d| d.reload()).await;
        match result {
            Ok(diff) => {
                self.sync_checks(&d);
                self.sync_announcements(&d);
                Ok(format!("reloaded: {}", diff.summary()))
            }
            Err(e) => Err(format!("reload rejected, running state kept: {e:#}")),
        }
    }

    /// Applies health transitions (all those queued at once: each VIP they touch is rebuilt once), then lets the
    /// announcements follow the new health view.
    pub async fn set_health(&self, changes: Vec<(HealthKey, bool)>) {
        let queued = Instant::now();
        let (d, (result, vips, took, changes)) = self
            .off_runtime(move |d| {
                let started = Instant::now();
                let vips: BTreeSet<VipAddr> = changes.iter().map(|(k, _)| k.vip).collect();
                (
                    d.set_health(&changes),
                    vips.len(),
                    started.elapsed(),
                    changes,
                )
            })
            .await;
        match result {
            // The rows stay pending: `lbctl health` must not say a backend is out while the rings still hold it.
            Err(e) => warn!("applying health changes failed: {e:#}"),
            // What a failover costs, for operators sizing rings and VIP counts (and bench maglev's down_to_ring_ms).
            Ok(()) => {
                self.checker.lock().expect("checker lock").applied(&changes);
                info!(
                    vips,
                    apply_ms = took.as_secs_f64() * 1e3,
                    waited_ms = (queued.elapsed() - took).as_secs_f64() * 1e3,
                    "health changes applied"
                )
            }
        }
        // At once, not at the next announcement tick: a VIP that lost its last backend must stop attracting
        // traffic. Also after a failed batch: whatever part of it was applied counts.
        self.sync_announcements(&d);
    }

    /// Runs `f` on the daemon on a blocking thread, returning the daemon's lock with its result.
    async fn off_runtime<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Daemon) -> R + Send + 'static,
    ) -> (OwnedMutexGuard<Daemon>, R) {
        let mut d = self.daemon.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            let r = f(&mut d);
            (d, r)
        })
        .await
        .expect("a daemon change panicked")
    }

    /// Health checks wanted by the current config: every backend of every VIP with a check other than `none`,
    /// each starting in the state the daemon has for it (recovered from the maps at start: a backend that was down
    /// stays out of the ring until it passes `rise` checks).
    pub fn sync_checks(&self, daemon: &Daemon) {
        let config = daemon.config();
        let wanted: Vec<_> = config
            .vips
            .iter()
            .filter(|v| v.health.kind != CheckKind::None)
            .flat_map(|v| {
                v.backends.iter().filter_map(move |b| {
                    let key = HealthKey {
                        vip: v.key(),
                        backend: b.address,
                    };
                    let port = v.health.port_for(v.port);
                    let endpoint = match v.health.target {
                        CheckTarget::Direct => Endpoint::direct(SocketAddr::new(b.address, port)),
                        CheckTarget::Vip => {
                            let Some(mark) = daemon.probe_mark(&key.vip, b.address, v.mode) else {
                                tracing::warn!(vip = %key.vip, backend = %b.address, "no backend id to mark its probes with; not checked");
                                return None;
                            };
                            Endpoint {
                                addr: SocketAddr::new(v.address, port),
                                mark: Some(mark),
                                source: config.daemon.encap_src(v.address),
                            }
                        }
                    };
                    Some((
                        key,
                        endpoint,
                        v.health.clone(),
                        daemon.is_up(&key.vip, b.address),
                    ))
                })
            })
            .collect();
        self.checker
            .lock()
            .expect("checker lock")
            .sync(wanted, &config.trust);
    }
}
