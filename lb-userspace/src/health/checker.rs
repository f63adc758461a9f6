//! The checker: probes, and the per-VIP views they feed. A probe is a target and a way to check it; a backend that
//! several VIPs check the same way is probed once, and each VIP's view applies its own rise/fall hysteresis to the
//! shared results. The probes run on a thread of their own ([`ProbeThread`]) and each starts at a random point of
//! its first interval, so that a config's probes do not all fire in the same instant, every interval, for ever.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::thread::ProbeThread;
use super::tls::{TlsClient, TrustStores};
use super::{BackendHealth, CheckKind, CheckSpec, Endpoint, HealthEvent, HealthKey, ProbeError};

/// What is probed: one endpoint (address, and for a VIP-path probe the backend its mark names), one way. Views whose
/// checks differ only in `rise`/`fall` share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProbeKey {
    target: Endpoint,
    check: CheckSpec,
}

impl ProbeKey {
    fn new(target: Endpoint, spec: &CheckSpec) -> ProbeKey {
        ProbeKey {
            target,
            check: spec.probe_part(),
        }
    }
}

/// One VIP's view of a backend: the row `lbctl health` shows and the hysteresis applied to it.
struct View {
    row: BackendHealth,
    spec: CheckSpec,
    probe: ProbeKey,
}

/// The views, and which views each probe feeds. Shared by the checker and the probe tasks.
#[derive(Default)]
struct Views {
    rows: HashMap<HealthKey, View>,
    fed_by: HashMap<ProbeKey, BTreeSet<HealthKey>>,
}

type SharedViews = Arc<Mutex<Views>>;

struct Probe {
    handle: JoinHandle<()>,
    /// The CA store an HTTPS probe was built with: a reload that reads the CA file again restarts the probe.
    roots: Option<Arc<RootCertStore>>,
}

/// Counts over every probe, for the metrics.
#[derive(Default)]
struct Totals {
    transitions: AtomicU64,
    local_errors: AtomicU64,
}

/// Owns the probes; dropping it stops them all.
pub struct Checker {
    views: SharedViews,
    probes: HashMap<ProbeKey, Probe>,
    events: mpsc::Sender<Vec<HealthEvent>>,
    totals: Arc<Totals>,
    trust: TrustStores,
    // Last: the probe tasks are aborted (in `drop`) before their runtime goes.
    thread: ProbeThread,
}

impl Checker {
    /// Starts the probes' thread.
    pub fn new(events: mpsc::Sender<Vec<HealthEvent>>) -> std::io::Result<Checker> {
        Ok(Checker {
            views: SharedViews::default(),
            probes: HashMap::new(),
            events,
            totals: Arc::default(),
            trust: TrustStores::default(),
            thread: ProbeThread::start()?,
        })
    }

    /// Starts checking `key` at `target` with `spec` from state `up`, or moves it to another probe if target or
    /// spec changed (keeping its current up/down state, so a reload that edits the check does not flap the
    /// backend). Unchanged: nothing happens.
    pub fn set(&mut self, key: HealthKey, target: Endpoint, spec: CheckSpec, up: bool) {
        let probe = ProbeKey::new(target, &spec);
        let old = {
            let mut views = self.views.lock().expect("health views");
            let unchanged = views
                .rows
                .get(&key)
                .is_some_and(|v| v.probe.target == target && v.spec == spec);
            if unchanged {
                None
            } else {
                let up = views.rows.get(&key).map_or(up, |v| v.row.up);
                let old = views.detach(&key);
                if spec.kind != CheckKind::None {
                    views.fed_by.entry(probe.clone()).or_default().insert(key);
                }
                views.rows.insert(
                    key,
                    View {
                        row: BackendHealth::new(key, spec.kind, target, up),
                        spec: spec.clone(),
                        probe: probe.clone(),
                    },
                );
                old
            }
        };
        if let Some(old) = old {
            self.stop_if_unfed(&old);
        }
        if spec.kind != CheckKind::None {
            self.ensure_probe(probe);
        }
    }

    /// Stops checking `key` and forgets its state (and its probe, when no other view uses it).
    pub fn remove(&mut self, key: &HealthKey) {
        let old = self.views.lock().expect("health views").remove(key);
        if let Some(old) = old {
            self.stop_if_unfed(&old);
        }
    }

    /// Makes the checked set exactly `wanted` (key, target, spec, state a new check starts in): starts new,
    /// restarts changed, stops the rest. `trust` holds the CA stores of the config the checks come from.
    pub fn sync(
        &mut self,
        wanted: impl IntoIterator<Item = (HealthKey, Endpoint, CheckSpec, bool)>,
        trust: &TrustStores,
    ) {
        self.trust = trust.clone();
        let mut keep = std::collections::HashSet::new();
        for (key, target, spec, up) in wanted {
            keep.insert(key);
            self.set(key, target, spec, up);
        }
        let stale: Vec<HealthKey> = {
            let views = self.views.lock().expect("health views");
            views
                .rows
                .keys()
                .filter(|k| !keep.contains(k))
                .copied()
                .collect()
        };
        for key in stale {
            self.remove(&key);
        }
    }

    /// Health state of `key`; a backend without a check (or not known here) is up.
    pub fn is_up(&self, key: &HealthKey) -> bool {
        self.views
            .lock()
            .expect("health views")
            .rows
            .get(key)
            .is_none_or(|v| v.row.up)
    }

    /// The daemon applied these transitions (its rings and backend entries follow them): their rows are no longer
    /// pending, unless they flipped again meanwhile.
    pub fn applied(&self, changes: &[(HealthKey, bool)]) {
        let mut views = self.views.lock().expect("health views");
        for (key, up) in changes {
            if let Some(v) = views.rows.get_mut(key)
                && v.row.up == *up
            {
                v.row.pending = false;
            }
        }
    }

    /// The table for `lbctl health` and metrics, sorted by key.
    pub fn table(&self) -> Vec<BackendHealth> {
        let mut rows: Vec<_> = self
            .views
            .lock()
            .expect("health views")
            .rows
            .values()
            .map(|v| v.row.clone())
            .collect();
        rows.sort_by_key(|r| r.key);
        rows
    }

    /// Up/down transitions since start, over all backends (also those removed since).
    pub fn transitions(&self) -> u64 {
        self.totals.transitions.load(Ordering::Relaxed)
    }

    /// Probes that could not run on this host since start (each counted once, however many views it feeds).
    pub fn local_errors(&self) -> u64 {
        self.totals.local_errors.load(Ordering::Relaxed)
    }

    /// Probes running now: fewer than views when backends are shared.
    pub fn probes(&self) -> usize {
        self.probes.len()
    }

    /// Starts the probe of `key` unless it runs already with the CA store the current config holds for it.
    fn ensure_probe(&mut self, key: ProbeKey) {
        let tls = self.tls(&key);
        let roots = match &tls {
            Ok(Some((_, roots))) => roots.clone(),
            _ => None,
        };
        if let Some(p) = self.probes.get(&key) {
            let same_roots = match (&p.roots, &roots) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            };
            if same_roots {
                return;
            }
            p.handle.abort();
        }
        let handle = self.thread.handle().spawn(run(
            key.clone(),
            tls.map(|t| t.map(|(client, _)| client)),
            self.views.clone(),
            self.events.clone(),
            self.totals.clone(),
        ));
        self.probes.insert(key, Probe { handle, roots });
    }

    /// The TLS client of an HTTPS probe, with the CA store it trusts. An error (a CA file deleted since the config
    /// was validated) is this host's problem: every probe reports it, as unknown.
    fn tls(&self, key: &ProbeKey) -> Tls {
        if key.check.kind != CheckKind::Https {
            return Ok(None);
        }
        let settings = key.check.tls();
        let roots = if settings.verify {
            Some(self.trust.get(settings.ca_file)?)
        } else {
            None
        };
        let client = TlsClient::new(&settings, key.target.addr.ip(), &self.trust)?;
        Ok(Some((client, roots)))
    }

    fn stop_if_unfed(&mut self, key: &ProbeKey) {
        let fed = self
            .views
            .lock()
            .expect("health views")
            .fed_by
            .contains_key(key);
        if !fed && let Some(p) = self.probes.remove(key) {
            p.handle.abort();
        }
    }
}

impl Views {
    /// Takes `key` off its probe; returns that probe.
    fn detach(&mut self, key: &HealthKey) -> Option<ProbeKey> {
        let probe = self.rows.get(key)?.probe.clone();
        if let Some(fed) = self.fed_by.get_mut(&probe) {
            fed.remove(key);
            if fed.is_empty() {
                self.fed_by.remove(&probe);
            }
        }
        Some(probe)
    }

    fn remove(&mut self, key: &HealthKey) -> Option<ProbeKey> {
        let probe = self.detach(key);
        self.rows.remove(key);
        probe
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for (_, p) in self.probes.drain() {
            p.handle.abort();
        }
    }
}

type Tls = Result<Option<(TlsClient, Option<Arc<RootCertStore>>)>, String>;

async fn probe(
    spec: &CheckSpec,
    target: &Endpoint,
    tls: &Result<Option<TlsClient>, String>,
) -> Result<(), ProbeError> {
    let timeout = spec.timeout();
    match spec.kind {
        CheckKind::Tcp => super::tcp::probe(target, timeout).await,
        CheckKind::Http | CheckKind::Https => {
            let tls = tls
                .as_ref()
                .map_err(|e| ProbeError::local(format!("tls setup: {e}")))?;
            super::http::probe(
                target,
                spec.path.as_deref().unwrap_or(super::DEFAULT_HTTP_PATH),
                spec.expect_status.unwrap_or(super::DEFAULT_HTTP_STATUS),
                timeout,
                tls.as_ref(),
            )
            .await
        }
        CheckKind::Udp => {
            super::udp::probe(
                target,
                spec.send.as_deref().unwrap_or("").as_bytes(),
                spec.expect.as_deref().unwrap_or("").as_bytes(),
                timeout,
            )
            .await
        }
        CheckKind::None => Ok(()),
    }
}

/// Where in its first interval a probe starts: anywhere, so that the probes of a config (started together) spread
/// over the interval instead of all firing at once.
fn first_probe_delay(interval: Duration) -> Duration {
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(rand::random_range(0..ms))
}

async fn run(
    key: ProbeKey,
    tls: Result<Option<TlsClient>, String>,
    views: SharedViews,
    events: mpsc::Sender<Vec<HealthEvent>>,
    totals: Arc<Totals>,
) {
    let (endpoint, spec) = (key.target, &key.check);
    let target = endpoint.addr;
    let first = tokio::time::Instant::now() + first_probe_delay(spec.interval());
    let mut ticker = tokio::time::interval_at(first, spec.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Local failures in a row: logged when a run starts and when it ends, not once per probe.
    let mut local_run = 0u64;
    loop {
        ticker.tick().await;
        let started = Instant::now();
        // Each probe bounds itself by the timeout too; this outer bound also covers DNS-free connect stalls.
        let result = match tokio::time::timeout(spec.timeout(), probe(spec, &endpoint, &tls)).await
        {
            Ok(r) => r,
            Err(_) => Err(ProbeError::backend(format!(
                "timed out after {} ms",
                spec.timeout_ms()
            ))),
        };
        let latency_us = started.elapsed().as_micros() as u64;
        match &result {
            Err(e) if e.local => {
                totals.local_errors.fetch_add(1, Ordering::Relaxed);
                if local_run == 0 {
                    tracing::warn!(%target, "health probe failed on this host, not counted against the backend: {e}");
                }
                local_run += 1;
            }
            _ if local_run > 0 => {
                tracing::info!(%target, failed = local_run, "health probes run again after failing on this host");
                local_run = 0;
            }
            _ => {}
        }
        let flips: Vec<HealthEvent> = {
            let mut views = views.lock().expect("health views");
            let Some(fed) = views.fed_by.get(&key).cloned() else {
                return;
            };
            fed.iter()
                .filter_map(|k| {
                    let v = views.rows.get_mut(k)?;
                    apply(&mut v.row, &v.spec, result.clone(), latency_us)
                })
                .collect()
        };
        if flips.is_empty() {
            continue;
        }
        for event in &flips {
            totals.transitions.fetch_add(1, Ordering::Relaxed);
            let k = event.key;
            if event.up {
                tracing::info!(vip = %k.vip, backend = %k.backend, %target, "backend up: {}", event.reason);
            } else {
                tracing::warn!(vip = %k.vip, backend = %k.backend, %target, "backend down: {}", event.reason);
            }
        }
        if events.send(flips).await.is_err() {
            return;
        }
    }
}

/// Records one probe result; returns the event when it flips the state (after `rise` successes or `fall` failures).
/// A local failure is recorded as unknown and moves neither run.
fn apply(
    row: &mut BackendHealth,
    spec: &CheckSpec,
    result: Result<(), ProbeError>,
    latency_us: u64,
) -> Option<HealthEvent> {
    row.checks += 1;
    let flipped = match result {
        Ok(()) => {
            row.last_latency_us = Some(latency_us);
            row.last_ok = Some(true);
            row.last_reason = "ok".into();
            row.consecutive_ok = row.consecutive_ok.saturating_add(1);
            row.consecutive_fail = 0;
            (!row.up && row.consecutive_ok >= spec.rise)
                .then(|| format!("{} consecutive successes", row.consecutive_ok))
        }
        Err(e) if e.local => {
            row.unknown += 1;
            row.last_ok = None;
            row.last_reason = format!("unknown (failed on this host, not counted): {e}");
            None
        }
        Err(e) => {
            row.last_latency_us = Some(latency_us);
            row.last_ok = Some(false);
            row.failures += 1;
            row.consecutive_fail = row.consecutive_fail.saturating_add(1);
            row.consecutive_ok = 0;
            let flip = (row.up && row.consecutive_fail >= spec.fall).then(|| {
                format!(
                    "{} consecutive failures, last: {}",
                    row.consecutive_fail, e.reason
                )
            });
            row.last_reason = e.reason;
            flip
        }
    };
    flipped.map(|reason| {
        row.up = !row.up;
        row.pending = true;
        row.transitions += 1;
        HealthEvent {
            key: row.key,
            up: row.up,
            reason,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn row() -> BackendHealth {
        BackendHealth::new(
            HealthKey {
                vip: crate::control::api::parse_vip("198.18.0.10:80/tcp").unwrap(),
                backend: "198.18.1.1".parse().unwrap(),
            },
            CheckKind::Tcp,
            Endpoint::direct("198.18.1.1:80".parse().unwrap()),
            true,
        )
    }

    #[test]
    fn hysteresis_needs_fall_failures_then_rise_successes() {
        let spec = CheckSpec {
            rise: 2,
            fall: 3,
            ..CheckSpec::default()
        };
        let mut r = row();
        let fail = || Err(ProbeError::backend("refused"));
        assert!(apply(&mut r, &spec, fail(), 1).is_none());
        assert!(apply(&mut r, &spec, fail(), 1).is_none());
        // A success in between resets the failure run.
        assert!(apply(&mut r, &spec, Ok(()), 1).is_none());
        assert!(apply(&mut r, &spec, fail(), 1).is_none());
        assert!(apply(&mut r, &spec, fail(), 1).is_none());
        let down = apply(&mut r, &spec, fail(), 1).expect("third consecutive failure flips down");
        assert!(!down.up && !r.up, "{down:?}");
        assert!(down.reason.contains("refused"), "{down:?}");
        assert!(
            apply(&mut r, &spec, fail(), 1).is_none(),
            "already down: no event"
        );
        assert!(apply(&mut r, &spec, Ok(()), 1).is_none());
        let up = apply(&mut r, &spec, Ok(()), 1).expect("second success flips up");
        assert!(up.up && r.up);
        assert_eq!((r.transitions, r.checks), (2, 9));
        assert_eq!(r.failures, 6, "{r:?}");
    }

    #[test]
    fn a_local_failure_is_unknown_and_moves_no_run() {
        let spec = CheckSpec {
            rise: 1,
            fall: 2,
            ..CheckSpec::default()
        };
        let mut r = row();
        let local = || {
            Err(ProbeError::local(
                "connect: Too many open files (os error 24)",
            ))
        };
        assert!(apply(&mut r, &spec, Err(ProbeError::backend("refused")), 1).is_none());
        for _ in 0..10 {
            assert!(apply(&mut r, &spec, local(), 1).is_none(), "{r:?}");
        }
        assert!(r.up && r.consecutive_fail == 1, "{r:?}");
        assert_eq!((r.checks, r.failures, r.unknown), (11, 1, 10));
        assert!(
            r.last_ok.is_none() && r.last_reason.contains("not counted"),
            "{r:?}"
        );
        // The next real failure is the second in a row: the local ones in between did not reset the run either.
        let down = apply(&mut r, &spec, Err(ProbeError::backend("refused")), 1).expect("down");
        assert!(!down.up, "{down:?}");
    }

    #[test]
    fn first_probes_spread_over_the_interval() {
        let interval = Duration::from_millis(1000);
        let delays: Vec<Duration> = (0..200).map(|_| first_probe_delay(interval)).collect();
        assert!(delays.iter().all(|d| *d < interval), "{delays:?}");
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        // 200 uniform draws: the chance that all fall in one half of the interval is 2^-199.
        assert!(*max - *min > interval / 2, "{min:?}..{max:?}");
    }

    /// A loopback listener that counts the connections it accepts.
    fn counting_listener() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let n = accepted.clone();
        std::thread::spawn(move || {
            for _ in listener.incoming().flatten() {
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
        (addr, accepted)
    }

    fn key_of(vip: &str, target: SocketAddr) -> HealthKey {
        HealthKey {
            vip: crate::control::api::parse_vip(vip).unwrap(),
            backend: target.ip(),
        }
    }

    #[tokio::test]
    async fn views_of_one_backend_share_a_probe_until_the_last_goes() {
        let (target, accepted) = counting_listener();
        let (tx, _rx) = mpsc::channel(16);
        let mut checker = Checker::new(tx).unwrap();
        let spec = |rise| CheckSpec {
            interval_ms: 50,
            rise,
            ..CheckSpec::default()
        };
        let (a, b, c) = (
            key_of("198.18.0.10:80/tcp", target),
            key_of("198.18.0.11:80/tcp", target),
            key_of("198.18.0.12:80/tcp", target),
        );
        checker.set(a, target.into(), spec(2), true);
        checker.set(b, target.into(), spec(2), true);
        // Another hysteresis is another view of the same probe.
        checker.set(c, target.into(), spec(5), true);
        assert_eq!(checker.probes(), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let rows = checker.table();
        let probed = accepted.load(Ordering::Relaxed);
        let checks: Vec<u64> = rows.iter().map(|r| r.checks).collect();
        assert!(checks.iter().all(|&n| n >= 3), "{rows:?}");
        // Each view saw every probe; the backend saw each probe once (two more may be in flight at the edges).
        assert!(
            probed <= checks.iter().max().unwrap() + 2,
            "{probed} probes, views saw {checks:?}"
        );

        checker.remove(&a);
        checker.remove(&b);
        assert_eq!(checker.probes(), 1, "c still uses it");
        checker.set(
            c,
            SocketAddr::from((target.ip(), target.port() + 1)).into(),
            spec(5),
            true,
        );
        assert_eq!(
            checker.probes(),
            1,
            "c moved to another target; the old probe stopped"
        );
        checker.remove(&c);
        assert_eq!(checker.probes(), 0);
    }
}
