//! The checker: one task per (VIP, backend) running its probe every interval, with rise/fall hysteresis, a shared
//! table of the latest results, and an event channel to the daemon.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::tls::TlsClient;
use super::{BackendHealth, CheckKind, CheckSpec, HealthEvent, HealthKey};

type Table = Arc<Mutex<HashMap<HealthKey, BackendHealth>>>;

struct Task {
    target: SocketAddr,
    spec: CheckSpec,
    handle: Option<JoinHandle<()>>,
}

/// Owns the probe tasks; must be used inside a tokio runtime. Dropping it stops every probe.
pub struct Checker {
    table: Table,
    tasks: HashMap<HealthKey, Task>,
    events: mpsc::Sender<HealthEvent>,
    transitions: Arc<AtomicU64>,
}

impl Checker {
    pub fn new(events: mpsc::Sender<HealthEvent>) -> Self {
        Checker {
            table: Arc::default(),
            tasks: HashMap::new(),
            events,
            transitions: Arc::default(),
        }
    }

    /// Starts checking `key` at `target` with `spec` from state `up`, or restarts it if target or spec changed
    /// (keeping its current up/down state, so a reload that edits the check does not flap the backend). Unchanged:
    /// nothing happens.
    pub fn set(&mut self, key: HealthKey, target: SocketAddr, spec: CheckSpec, up: bool) {
        if let Some(t) = self.tasks.get(&key) {
            if t.target == target && t.spec == spec {
                return;
            }
        }
        let up = self.stop(&key).map_or(up, |row| row.up);
        let row = BackendHealth::new(key, spec.kind, target, up);
        self.table.lock().expect("health table").insert(key, row);
        let handle = (spec.kind != CheckKind::None).then(|| {
            tokio::spawn(run(
                key,
                target,
                spec.clone(),
                self.table.clone(),
                self.events.clone(),
                self.transitions.clone(),
            ))
        });
        self.tasks.insert(
            key,
            Task {
                target,
                spec,
                handle,
            },
        );
    }

    /// Stops checking `key` and forgets its state.
    pub fn remove(&mut self, key: &HealthKey) {
        self.stop(key);
    }

    /// Makes the checked set exactly `wanted` (key, target, spec, state a new check starts in): starts new,
    /// restarts changed, stops the rest.
    pub fn sync(
        &mut self,
        wanted: impl IntoIterator<Item = (HealthKey, SocketAddr, CheckSpec, bool)>,
    ) {
        let mut keep = std::collections::HashSet::new();
        for (key, target, spec, up) in wanted {
            keep.insert(key);
            self.set(key, target, spec, up);
        }
        let stale: Vec<_> = self
            .tasks
            .keys()
            .filter(|k| !keep.contains(k))
            .copied()
            .collect();
        for key in stale {
            self.stop(&key);
        }
    }

    /// Health state of `key`; a backend without a check (or not known here) is up.
    pub fn is_up(&self, key: &HealthKey) -> bool {
        self.table
            .lock()
            .expect("health table")
            .get(key)
            .is_none_or(|row| row.up)
    }

    /// The table for `lbctl health` and metrics, sorted by key.
    pub fn table(&self) -> Vec<BackendHealth> {
        let mut rows: Vec<_> = self
            .table
            .lock()
            .expect("health table")
            .values()
            .cloned()
            .collect();
        rows.sort_by_key(|r| r.key);
        rows
    }

    /// Up/down transitions since start, over all backends (also those removed since).
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    fn stop(&mut self, key: &HealthKey) -> Option<BackendHealth> {
        if let Some(handle) = self.tasks.remove(key).and_then(|t| t.handle) {
            handle.abort();
        }
        self.table.lock().expect("health table").remove(key)
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for (_, t) in self.tasks.drain() {
            if let Some(h) = t.handle {
                h.abort();
            }
        }
    }
}

/// The TLS client of an HTTPS check, set up once per check task. An error (a CA file deleted since the config was
/// validated) fails every probe with that reason, so the operator sees why in `lbctl health` and the log.
type Tls = Result<Option<TlsClient>, String>;

fn prepare_tls(spec: &CheckSpec, target: SocketAddr) -> Tls {
    if spec.kind != CheckKind::Https {
        return Ok(None);
    }
    TlsClient::new(&spec.tls(), target.ip()).map(Some)
}

async fn probe(spec: &CheckSpec, target: SocketAddr, tls: &Tls) -> Result<(), String> {
    let timeout = spec.timeout();
    match spec.kind {
        CheckKind::Tcp => super::tcp::probe(target, timeout).await,
        CheckKind::Http | CheckKind::Https => {
            super::http::probe(
                target,
                spec.path.as_deref().unwrap_or(super::DEFAULT_HTTP_PATH),
                spec.expect_status.unwrap_or(super::DEFAULT_HTTP_STATUS),
                timeout,
                tls.as_ref().map_err(Clone::clone)?.as_ref(),
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

async fn run(
    key: HealthKey,
    target: SocketAddr,
    spec: CheckSpec,
    table: Table,
    events: mpsc::Sender<HealthEvent>,
    transitions: Arc<AtomicU64>,
) {
    let mut ticker = tokio::time::interval(spec.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tls = prepare_tls(&spec, target);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        // Each probe bounds itself by the timeout too; this outer bound also covers DNS-free connect stalls.
        let result = match tokio::time::timeout(spec.timeout(), probe(&spec, target, &tls)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {} ms", spec.timeout_ms)),
        };
        let latency_us = started.elapsed().as_micros() as u64;
        let event = {
            let mut table = table.lock().expect("health table");
            let Some(row) = table.get_mut(&key) else {
                return;
            };
            apply(row, &spec, result, latency_us)
        };
        if let Some(event) = event {
            transitions.fetch_add(1, Ordering::Relaxed);
            if event.up {
                tracing::info!(vip = %key.vip, backend = %key.backend, %target, "backend up: {}", event.reason);
            } else {
                tracing::warn!(vip = %key.vip, backend = %key.backend, %target, "backend down: {}", event.reason);
            }
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// Records one probe result; returns the event when it flips the state (after `rise` successes or `fall` failures).
fn apply(
    row: &mut BackendHealth,
    spec: &CheckSpec,
    result: Result<(), String>,
    latency_us: u64,
) -> Option<HealthEvent> {
    row.checks += 1;
    row.last_latency_us = Some(latency_us);
    row.last_ok = Some(result.is_ok());
    let flipped = match result {
        Ok(()) => {
            row.last_reason = "ok".into();
            row.consecutive_ok = row.consecutive_ok.saturating_add(1);
            row.consecutive_fail = 0;
            (!row.up && row.consecutive_ok >= spec.rise)
                .then(|| format!("{} consecutive successes", row.consecutive_ok))
        }
        Err(reason) => {
            row.failures += 1;
            row.consecutive_fail = row.consecutive_fail.saturating_add(1);
            row.consecutive_ok = 0;
            let flip = (row.up && row.consecutive_fail >= spec.fall).then(|| {
                format!(
                    "{} consecutive failures, last: {reason}",
                    row.consecutive_fail
                )
            });
            row.last_reason = reason;
            flip
        }
    };
    flipped.map(|reason| {
        row.up = !row.up;
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
    use super::*;

    fn row() -> BackendHealth {
        BackendHealth::new(
            HealthKey {
                vip: crate::control::api::parse_vip("198.18.0.10:80/tcp").unwrap(),
                backend: "198.18.1.1".parse().unwrap(),
            },
            CheckKind::Tcp,
            "198.18.1.1:80".parse().unwrap(),
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
        let fail = || Err("refused".to_string());
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
}
