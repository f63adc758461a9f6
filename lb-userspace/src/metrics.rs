//! Prometheus metrics: the daemon fills a [`Snapshot`] (the same [`Stats`] and health table `lbctl` sees, plus
//! its own event counts), [`render`] turns it into the text exposition format with `prometheus-client`, and
//! [`serve`] answers `GET /metrics` on the configured TCP address with a minimal hyper HTTP/1 server.
//!
//! Values are cumulative since the maps were created, so they are exported as counters; a snapshot is rendered into
//! a fresh registry each scrape (cheap at these sizes, and no state to keep in step with reloads).
//!
//! The endpoint is reachable by every local user, so it is bounded: at most [`MAX_CONNECTIONS`] at once (one more
//! is closed at once and counted), a connection must send its request headers within [`IDLE_TIMEOUT`] (on arrival
//! and between kept-alive requests), and none lives longer than [`MAX_CONNECTION_TIME`]. Without these, idle
//! connections held lbd's descriptors until its health probes failed for lack of one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::announce::{AddressState, AnnounceInfo};
use crate::control::api::Stats;
use crate::health::BackendHealth;
use crate::service::VipAddr;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Connections served at once: Prometheus needs one per server scraping, people with curl a few more.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a connection may take to send a request's headers, when it opens and between kept-alive requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest any connection lives: a client that stops reading its answer is let go after this.
pub const MAX_CONNECTION_TIME: Duration = Duration::from_secs(60);

/// Everything one scrape exports. The daemon builds it on demand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub stats: Stats,
    pub health: Vec<BackendHealth>,
    /// Maglev rings built and installed (initial programming, health changes, weight changes, reloads).
    pub ring_rebuilds: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Whether `lb_xdp` runs on the interface now.
    pub attached: bool,
    /// Times `lb_xdp` was attached again to a re-created interface.
    pub reattachments: u64,
    /// Each VIP's active table digest (`digest`): every balancer of a tier should export the same.
    pub table_digests: BTreeMap<VipAddr, String>,
    pub announce: AnnounceInfo,
    /// VIPs below their panic threshold now (their rings ignore health).
    pub panicking: Vec<String>,
    /// Times a VIP entered panic mode.
    pub panics: u64,
    /// Health probes running (a backend checked the same way by several VIPs is one probe).
    pub probes: usize,
    /// Probes that could not run on this host (out of descriptors, ports, buffers), none counted against a backend.
    pub probe_local_errors: u64,
    /// Connections to this endpoint closed unserved because [`MAX_CONNECTIONS`] were open (filled in by [`serve`]).
    pub metrics_refused: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabels {
    vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    vip: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    vip: String,
    backend: String,
    result: String,
}

/// What a backend's check is: an info metric (always 1), so the series of the other families keep their labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckInfoLabels {
    vip: String,
    backend: String,
    kind: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DigestLabels {
    vip: String,
    digest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AddressLabels {
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AddressStateLabels {
    address: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

fn counter_family<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Counter>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

/// A counter without labels, registered with its current value.
fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// The text exposition of `snap` (OpenMetrics, which Prometheus scrapes natively).
pub fn render(snap: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("lb");

    let verdicts = counter_family::<ReasonLabels>(
        &mut registry,
        "verdicts",
        "Packets by verdict/reason (lb_common::Counter names)",
    );
    for (reason, value) in &snap.stats.counters {
        verdicts
            .get_or_create(&ReasonLabels {
                reason: reason.clone(),
            })
            .inc_by(*value);
    }

    let vip_packets = counter_family::<VipLabels>(&mut registry, "vip_packets", "Packets to a VIP");
    let vip_bytes = counter_family::<VipLabels>(&mut registry, "vip_bytes", "Bytes to a VIP");
    let vip_new = counter_family::<VipLabels>(&mut registry, "vip_new_flows", "New flows to a VIP");
    let vip_miss = counter_family::<VipLabels>(
        &mut registry,
        "vip_flow_table_misses",
        "VIP packets that missed the flow table",
    );
    for v in &snap.stats.vips {
        let l = VipLabels {
            vip: v.vip.to_string(),
        };
        vip_packets.get_or_create(&l).inc_by(v.packets);
        vip_bytes.get_or_create(&l).inc_by(v.bytes);
        vip_new.get_or_create(&l).inc_by(v.new_flows);
        vip_miss.get_or_create(&l).inc_by(v.flow_misses);
    }

    let panic = Family::<VipLabels, Gauge>::default();
    registry.register(
        "vip_panic",
        "1 while a VIP is below its panic threshold: every backend not drained is in its ring, healthy or not",
        panic.clone(),
    );
    for v in &snap.stats.vips {
        let vip = v.vip.to_string();
        let on = snap.panicking.contains(&vip);
        panic.get_or_create(&VipLabels { vip }).set(i64::from(on));
    }
    counter(
        &mut registry,
        "vip_panics",
        "Times a VIP entered panic mode",
        snap.panics,
    );

    let be_packets = counter_family::<BackendLabels>(
        &mut registry,
        "backend_packets",
        "Packets sent to a backend",
    );
    let be_bytes =
        counter_family::<BackendLabels>(&mut registry, "backend_bytes", "Bytes sent to a backend");
    for b in &snap.stats.backends {
        let l = BackendLabels {
            vip: b.vip.to_string(),
            backend: b.backend.to_string(),
        };
        be_packets.get_or_create(&l).inc_by(b.packets);
        be_bytes.get_or_create(&l).inc_by(b.bytes);
    }

    let up = Family::<BackendLabels, Gauge>::default();
    registry.register(
        "backend_up",
        "Backend health state (1 up, 0 down)",
        up.clone(),
    );
    let transitions = counter_family::<BackendLabels>(
        &mut registry,
        "backend_health_transitions",
        "Health state changes of a backend",
    );
    let checks = counter_family::<CheckLabels>(
        &mut registry,
        "backend_health_checks",
        "Health probes of a backend by result (unknown: failed on this host, not counted against the backend)",
    );
    let latency = Family::<BackendLabels, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "backend_health_check_latency_seconds",
        "Duration of a backend's latest health probe",
        latency.clone(),
    );
    let info = Family::<CheckInfoLabels, Gauge>::default();
    registry.register(
        "backend_health_check_info",
        "A backend's check (always 1): its kind, and its target (vip: probes go to the VIP along the client path, \
         encapsulated to this backend; direct: to the backend's own address)",
        info.clone(),
    );
    for h in &snap.health {
        let l = BackendLabels {
            vip: h.key.vip.to_string(),
            backend: h.key.backend.to_string(),
        };
        info.get_or_create(&CheckInfoLabels {
            vip: l.vip.clone(),
            backend: l.backend.clone(),
            kind: h.kind.name().into(),
            target: h.path.name().into(),
        })
        .set(1);
        up.get_or_create(&l).set(i64::from(h.up));
        transitions.get_or_create(&l).inc_by(h.transitions);
        for (result, n) in [
            ("ok", h.checks - h.failures - h.unknown),
            ("failed", h.failures),
            ("unknown", h.unknown),
        ] {
            checks
                .get_or_create(&CheckLabels {
                    vip: l.vip.clone(),
                    backend: l.backend.clone(),
                    result: result.into(),
                })
                .inc_by(n);
        }
        if let Some(us) = h.last_latency_us {
            latency.get_or_create(&l).set(us as f64 / 1e6);
        }
    }

    let probes = Gauge::<i64>::default();
    probes.set(snap.probes as i64);
    registry.register(
        "health_probes",
        "Health probes running (one per backend address and check, however many VIPs share it)",
        probes,
    );
    counter(
        &mut registry,
        "health_probe_local_errors",
        "Health probes that failed on this host (descriptors, ports, buffers): logged, never counted against a backend",
        snap.probe_local_errors,
    );

    counter(
        &mut registry,
        "metrics_connections_refused",
        "Connections to /metrics closed unserved because the endpoint's connection cap was reached",
        snap.metrics_refused,
    );
    counter(
        &mut registry,
        "ring_rebuilds",
        "Maglev rings built and installed",
        snap.ring_rebuilds,
    );

    let reloads =
        counter_family::<ResultLabels>(&mut registry, "reloads", "Config reloads by result");
    for (result, n) in [("ok", snap.reloads_ok), ("failed", snap.reloads_failed)] {
        reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc_by(n);
    }

    let attached = Gauge::<i64>::default();
    attached.set(i64::from(snap.attached));
    registry.register(
        "xdp_attached",
        "1 while lb_xdp runs on the configured interface, 0 while the interface is gone",
        attached,
    );
    counter(
        &mut registry,
        "xdp_reattachments",
        "Times lb_xdp was attached again to a re-created interface",
        snap.reattachments,
    );

    let digests = Family::<DigestLabels, Gauge>::default();
    registry.register(
        "vip_table_info",
        "Digest of a VIP's active Maglev table by backend address (1 per VIP); equal on balancers that agree",
        digests.clone(),
    );
    for (vip, digest) in &snap.table_digests {
        digests
            .get_or_create(&DigestLabels {
                vip: vip.to_string(),
                digest: digest.clone(),
            })
            .set(1);
    }
    render_announce(&mut registry, &snap.announce);

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// What is announced over BGP and why not (nothing while announcing is off).
fn render_announce(registry: &mut Registry, a: &AnnounceInfo) {
    if !a.enabled {
        return;
    }
    let flag = |registry: &mut Registry, name: &str, help: &str, on: bool| {
        let g = Gauge::<i64>::default();
        g.set(i64::from(on));
        registry.register(name, help, g);
    };
    flag(
        registry,
        "announce_drained",
        "1 while `lbctl announce drain` withdraws every address of this balancer",
        a.drained,
    );
    flag(
        registry,
        "announce_failing",
        "1 while the announcement routes cannot be read or written",
        a.error.is_some(),
    );
    let announced = Family::<AddressLabels, Gauge>::default();
    registry.register(
        "announced",
        "1 while this balancer announces the VIP address over BGP",
        announced.clone(),
    );
    let state = Family::<AddressStateLabels, Gauge>::default();
    registry.register(
        "announce_state",
        "Where a VIP address stands (1 for its state): announced, hold-down, unhealthy, drained",
        state.clone(),
    );
    let changes = counter_family::<AddressLabels>(
        registry,
        "announce_changes",
        "Announcements and withdrawals of a VIP address by this lbd",
    );
    for addr in &a.addresses {
        let l = AddressLabels {
            address: addr.address.to_string(),
        };
        announced.get_or_create(&l).set(i64::from(addr.announced()));
        changes.get_or_create(&l).inc_by(addr.changes);
        for s in AddressState::ALL {
            state
                .get_or_create(&AddressStateLabels {
                    address: l.address.clone(),
                    state: s.to_string(),
                })
                .set(i64::from(*s == addr.state));
        }
    }
}

/// Binds `addr` now (so a bad address fails the daemon's start) and returns the serving future.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Answers `GET /metrics` with [`render`] of a fresh snapshot from `source` until `shutdown` completes.
pub async fn serve<F, Fut>(listener: TcpListener, source: F, shutdown: impl Future<Output = ()>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Snapshot> + Send,
{
    let refused = Arc::new(AtomicU64::new(0));
    let source = {
        let refused = refused.clone();
        Arc::new(move || {
            let snap = source();
            let refused = refused.load(Ordering::Relaxed);
            async move {
                Snapshot {
                    metrics_refused: refused,
                    ..snap.await
                }
            }
        })
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Whether the cap is reached: said in the log when it starts and when it ends, not once per connection.
    let mut full = false;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Accepted only to be closed: left in the listen queue it would wait there, unserved, for a slot.
            refused.fetch_add(1, Ordering::Relaxed);
            if !full {
                full = true;
                tracing::warn!(
                    "metrics: {MAX_CONNECTIONS} connections open; closing further ones until some finish"
                );
            }
            drop(stream);
            continue;
        };
        if full && slots.available_permits() > 0 {
            full = false;
            tracing::info!(
                refused = refused.load(Ordering::Relaxed),
                "metrics: below the connection cap again"
            );
        }
        let source = source.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(answer(req, &*source).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(IDLE_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(MAX_CONNECTION_TIME, conn).await {
                Ok(Err(e)) => tracing::debug!("metrics connection: {e}"),
                Err(_) => {
                    tracing::debug!("metrics connection open for {MAX_CONNECTION_TIME:?}; closed")
                }
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

async fn answer<F, Fut>(req: Request<Incoming>, source: &F) -> Response<Full<Bytes>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Snapshot>,
{
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(StatusCode::OK, CONTENT_TYPE, render(&source().await)),
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/plain",
            "lbd: metrics at /metrics\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::{BackendStats, VipStats};
    use crate::health::{CheckKind, HealthKey};

    fn snapshot() -> Snapshot {
        let vip = crate::control::api::parse_vip("198.18.0.10:80/tcp").unwrap();
        let backend = "198.18.1.1".parse().unwrap();
        Snapshot {
            stats: Stats {
                counters: [("tx".to_string(), 42), ("drop_no_backend".to_string(), 3)].into(),
                vips: vec![VipStats {
                    vip,
                    packets: 10,
                    bytes: 1500,
                    new_flows: 2,
                    flow_misses: 4,
                }],
                backends: vec![BackendStats {
                    vip,
                    backend,
                    packets: 9,
                    bytes: 1400,
                }],
            },
            health: vec![BackendHealth {
                key: HealthKey { vip, backend },
                kind: CheckKind::Tcp,
                target: "198.18.1.1:80".parse().unwrap(),
                path: crate::health::CheckTarget::Direct,
                up: true,
                pending: false,
                last_ok: Some(true),
                last_reason: "ok".into(),
                last_latency_us: Some(100),
                consecutive_ok: 5,
                consecutive_fail: 0,
                checks: 6,
                failures: 1,
                unknown: 1,
                transitions: 1,
            }],
            ring_rebuilds: 7,
            reloads_ok: 2,
            reloads_failed: 1,
            attached: true,
            reattachments: 3,
            table_digests: [(vip, "0123456789abcdef".to_string())].into(),
            announce: AnnounceInfo {
                enabled: true,
                drained: false,
                table: 100,
                protocol: 250,
                hold_down_ms: 5000,
                addresses: vec![crate::announce::AddressInfo {
                    address: vip.address,
                    state: AddressState::Announced,
                    announce_in_ms: None,
                    changes: 1,
                    vips: Vec::new(),
                }],
                error: None,
            },
            panicking: vec!["198.18.0.10:80/tcp".into()],
            panics: 4,
            probes: 1,
            probe_local_errors: 4,
            metrics_refused: 0,
        }
    }

    #[test]
    fn renders_every_family_with_labels() {
        let text = render(&snapshot());
        for line in [
            r#"lb_verdicts_total{reason="tx"} 42"#,
            r#"lb_verdicts_total{reason="drop_no_backend"} 3"#,
            r#"lb_vip_packets_total{vip="198.18.0.10:80/tcp"} 10"#,
            r#"lb_vip_bytes_total{vip="198.18.0.10:80/tcp"} 1500"#,
            r#"lb_vip_new_flows_total{vip="198.18.0.10:80/tcp"} 2"#,
            r#"lb_vip_flow_table_misses_total{vip="198.18.0.10:80/tcp"} 4"#,
            r#"lb_backend_packets_total{vip="198.18.0.10:80/tcp",backend="198.18.1.1"} 9"#,
            r#"lb_backend_bytes_total{vip="198.18.0.10:80/tcp",backend="198.18.1.1"} 1400"#,
            r#"lb_backend_up{vip="198.18.0.10:80/tcp",backend="198.18.1.1"} 1"#,
            r#"lb_backend_health_transitions_total{vip="198.18.0.10:80/tcp",backend="198.18.1.1"} 1"#,
            r#"lb_backend_health_check_info{vip="198.18.0.10:80/tcp",backend="198.18.1.1",kind="tcp",target="direct"} 1"#,
            r#"lb_backend_health_checks_total{vip="198.18.0.10:80/tcp",backend="198.18.1.1",result="ok"} 4"#,
            r#"lb_backend_health_checks_total{vip="198.18.0.10:80/tcp",backend="198.18.1.1",result="failed"} 1"#,
            r#"lb_backend_health_checks_total{vip="198.18.0.10:80/tcp",backend="198.18.1.1",result="unknown"} 1"#,
            "lb_health_probes 1",
            "lb_health_probe_local_errors_total 4",
            r#"lb_backend_health_check_latency_seconds{vip="198.18.0.10:80/tcp",backend="198.18.1.1"} 0.0001"#,
            "lb_ring_rebuilds_total 7",
            r#"lb_reloads_total{result="ok"} 2"#,
            r#"lb_reloads_total{result="failed"} 1"#,
            "lb_xdp_attached 1",
            "lb_xdp_reattachments_total 3",
            r#"lb_vip_table_info{vip="198.18.0.10:80/tcp",digest="0123456789abcdef"} 1"#,
            "lb_announce_drained 0",
            "lb_announce_failing 0",
            r#"lb_announced{address="198.18.0.10"} 1"#,
            r#"lb_announce_state{address="198.18.0.10",state="announced"} 1"#,
            r#"lb_announce_state{address="198.18.0.10",state="hold-down"} 0"#,
            r#"lb_announce_changes_total{address="198.18.0.10"} 1"#,
            r#"lb_vip_panic{vip="198.18.0.10:80/tcp"} 1"#,
            "lb_vip_panics_total 4",
            "# TYPE lb_backend_up gauge",
            "# TYPE lb_verdicts counter",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn down_backend_renders_zero() {
        let mut snap = snapshot();
        snap.health[0].up = false;
        let text = render(&snap);
        assert!(
            text.contains(r#"lb_backend_up{vip="198.18.0.10:80/tcp",backend="198.18.1.1"} 0"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn serves_get_metrics_over_http() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, || async { snapshot() }, async {
            let _ = stopped.await;
        }));
        let (status, body) =
            crate::health::http::get(addr, "/metrics", std::time::Duration::from_secs(5))
                .await
                .expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("lb_ring_rebuilds_total 7"), "{body}");
        let (status, _) =
            crate::health::http::get(addr, "/nope", std::time::Duration::from_secs(5))
                .await
                .expect("GET /nope");
        assert_eq!(status, 404);
        stop.send(()).unwrap();
        server.await.unwrap();
    }
}
