//! Active health checks: one tokio task per probe (a backend address and a way to check it: TCP connect, HTTP or
//! HTTPS GET, UDP send/expect) feeds the view of every VIP that checks that backend that way, and each view applies
//! its rise/fall hysteresis; state changes are logged, counted and sent to the daemon as [`HealthEvent`]s, and a
//! table of the latest results answers `lbctl health`. A probe that failed on this host ([`ProbeError::local`]) is
//! counted as unknown and changes no state.
//!
//! Initial state: **up**. A starting (or restarting) `lbd` forwards to every configured backend at once, as Katran-
//! style operators expect; a dead backend leaves the ring after `fall` failed probes (at most
//! `fall × interval` later). A backend added at runtime starts up for the same reason.
//!
//! Checks run from the daemon's own network namespace with plain sockets, so a daemon started inside a netns checks
//! from there. A check's `target` says where its probes go: `vip` (the default) connects to the VIP's address and
//! port, with a socket mark that has `lb_hc` send the probe to this one backend the way `lb_xdp` sends a client's
//! packet (see `probe_path`), so it proves the backend serves the VIP; `direct` connects to the backend's own
//! address, which proves only that the server runs.

mod checker;
pub(crate) mod http;
mod probe_error;
mod socket;
mod tcp;
mod thread;
pub(crate) mod tls;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::names::named_enum;
use crate::service::VipAddr;

pub use checker::Checker;
pub use probe_error::ProbeError;
pub use tls::TrustStores;

pub const DEFAULT_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_HTTP_PATH: &str = "/";
pub const DEFAULT_HTTP_STATUS: u16 = 200;
/// Bounds that keep a typo from turning into a probe storm or a check that never concludes.
pub const MIN_INTERVAL_MS: u64 = 50;
pub const MAX_TIMEOUT_MS: u64 = 60_000;

named_enum! {
    /// What a health check does.
    #[derive(Default)]
    pub enum CheckKind {
        #[default]
        Tcp = "tcp",
        Http = "http",
        /// HTTP over TLS: the handshake (and, unless `tls_verify = false`, the certificate) must succeed too.
        Https = "https",
        Udp = "udp",
        /// No probing: the backend is always up (weight and drain still apply).
        None = "none",
    }
}

named_enum! {
    /// Where a check's probes go.
    #[derive(Default)]
    pub enum CheckTarget {
        /// To the VIP's address, sent to the one backend along the path clients' packets take (encapsulated or
        /// MAC-rewritten by `lb_hc`); the backend's reply returns directly, as DSR replies do.
        #[default]
        Vip = "vip",
        /// To the backend's own address, as a plain connection.
        Direct = "direct",
    }
}

/// Where a probe connects, and how its packets leave this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// The VIP's address and the check port (`target = "vip"`), or the backend's (`"direct"`).
    pub addr: SocketAddr,
    /// VIP-path probes: the socket mark (`lb_common::hc_mark`) that has `lb_hc` send the probe to its backend.
    pub mark: Option<u32>,
    /// The probe's source address, where the backend's direct reply returns (the balancer's encapsulation source
    /// of the VIP's family); `None`: the kernel's choice.
    pub source: Option<IpAddr>,
}

impl Endpoint {
    /// A plain connection to `addr`.
    pub fn direct(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            mark: None,
            source: None,
        }
    }

    /// Which way this endpoint's probes go.
    pub fn target(&self) -> CheckTarget {
        match self.mark {
            Some(_) => CheckTarget::Vip,
            None => CheckTarget::Direct,
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::direct(addr)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// A VIP's `[vip.health]` table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    #[serde(default)]
    pub kind: CheckKind,
    /// Where the probes go: along the VIP path (default) or to the backend's own address.
    #[serde(default)]
    pub target: CheckTarget,
    /// Port probed on each backend; default: the VIP port (required when the VIP is port 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP: request path (default "/").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP: the status a healthy backend answers (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// HTTPS: SNI and the name the certificate must be valid for (default: the address the probe connects to, as an
    /// IP SAN: the VIP's for `target = "vip"`, as a client would check it, the backend's for `"direct"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// HTTPS: PEM file of the CAs to trust instead of the system store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<String>,
    /// HTTPS: `false` accepts any certificate (the handshake must still succeed). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// UDP: payload sent (required for udp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// UDP: the reply must start with these bytes (default: any reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Default: 500 ms, or `interval_ms` when that is shorter. Read it through [`CheckSpec::timeout_ms`];
    /// [`CheckSpec::filled`] writes the default out (as the effective configuration shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_interval_ms() -> u64 {
    DEFAULT_INTERVAL_MS
}
fn default_rise() -> u32 {
    DEFAULT_RISE
}
fn default_fall() -> u32 {
    DEFAULT_FALL
}

impl Default for CheckSpec {
    fn default() -> Self {
        CheckSpec {
            kind: CheckKind::Tcp,
            target: CheckTarget::Vip,
            port: None,
            path: None,
            expect_status: None,
            tls_server_name: None,
            tls_ca_file: None,
            tls_verify: None,
            send: None,
            expect: None,
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: None,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }
}

impl CheckSpec {
    /// Every problem with this spec for a VIP on `vip_port`, each prefixed with `field_path` (e.g. `vip[0].health`).
    /// The CA store an HTTPS check trusts is read here, into the config's `trust`.
    pub fn validate(&self, field_path: &str, vip_port: u16, trust: &TrustStores) -> Vec<String> {
        let mut errors = Vec::new();
        let mut err = |field: &str, value: String, why: &str| {
            errors.push(format!("{field_path}.{field}: {value} {why}"));
        };
        if self.kind != CheckKind::None && self.port.unwrap_or(vip_port) == 0 {
            err(
                "port",
                format!("{:?}", self.port.unwrap_or(0)),
                "must be set (1..=65535) for a port-0 VIP, whose check has no port of its own (or kind = \"none\")",
            );
        }
        if self.interval_ms < MIN_INTERVAL_MS {
            err(
                "interval_ms",
                self.interval_ms.to_string(),
                &format!("must be at least {MIN_INTERVAL_MS}"),
            );
        }
        let timeout_ms = self.timeout_ms();
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            err(
                "timeout_ms",
                timeout_ms.to_string(),
                &format!("must be 1..={MAX_TIMEOUT_MS}"),
            );
        }
        if timeout_ms > self.interval_ms {
            err(
                "timeout_ms",
                timeout_ms.to_string(),
                &format!(
                    "is longer than interval_ms = {}: probes would overlap and a hung backend would be probed \
                     before its last probe gave up",
                    self.interval_ms
                ),
            );
        }
        if self.rise == 0 {
            err("rise", "0".into(), "must be at least 1");
        }
        if self.fall == 0 {
            err("fall", "0".into(), "must be at least 1");
        }
        if let Some(p) = &self.path {
            if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                err(
                    "path",
                    format!("{p:?}"),
                    "must start with '/' and contain no spaces",
                );
            }
        }
        if let Some(s) = self.expect_status {
            if !(100..=599).contains(&s) {
                err("expect_status", s.to_string(), "must be 100..=599");
            }
        }
        if let Some(n) = &self.tls_server_name
            && let Err(e) = tls::server_name(n)
        {
            err(
                "tls_server_name",
                format!("{n:?}"),
                &format!("is not a server name: {e}"),
            );
        }
        // The trust store is loaded here (once per config), so a missing or empty CA file (or an empty system store)
        // rejects the config instead of leaving every probe unable to run.
        if let Some(f) = &self.tls_ca_file
            && !f.starts_with('/')
        {
            // lbd's working directory is whatever its service manager chose; a relative path would move with it.
            err("tls_ca_file", format!("{f:?}"), "must be an absolute path");
        } else if self.kind == CheckKind::Https
            && self.tls_verify.unwrap_or(true)
            && let Err(e) = trust.get(self.tls_ca_file.as_deref())
        {
            let (field, value) = match &self.tls_ca_file {
                Some(f) => ("tls_ca_file", format!("{f:?}")),
                None => ("tls_verify", "true".to_owned()),
            };
            err(field, value, &format!("cannot be used: {e}"));
        }
        let kind_only = |field: &str, set: bool, kinds: &[CheckKind], errors: &mut Vec<String>| {
            if set && !kinds.contains(&self.kind) {
                let names: Vec<String> = kinds.iter().map(|k| format!("{k:?}")).collect();
                errors.push(format!(
                    "{field_path}.{field}: set but kind is {:?} (only for {})",
                    self.kind,
                    names.join(" or ")
                ));
            }
        };
        let web = &[CheckKind::Http, CheckKind::Https];
        let tls = &[CheckKind::Https];
        kind_only("path", self.path.is_some(), web, &mut errors);
        kind_only(
            "expect_status",
            self.expect_status.is_some(),
            web,
            &mut errors,
        );
        kind_only(
            "tls_server_name",
            self.tls_server_name.is_some(),
            tls,
            &mut errors,
        );
        kind_only("tls_ca_file", self.tls_ca_file.is_some(), tls, &mut errors);
        kind_only("tls_verify", self.tls_verify.is_some(), tls, &mut errors);
        kind_only("send", self.send.is_some(), &[CheckKind::Udp], &mut errors);
        kind_only(
            "expect",
            self.expect.is_some(),
            &[CheckKind::Udp],
            &mut errors,
        );
        if self.kind == CheckKind::Udp && self.send.as_deref().unwrap_or("").is_empty() {
            errors.push(format!(
                "{field_path}.send: missing; a udp check needs a payload to send"
            ));
        }
        errors
    }

    /// The port probed for a VIP on `vip_port`.
    pub fn port_for(&self, vip_port: u16) -> u16 {
        self.port.unwrap_or(vip_port)
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// The probe timeout: as set, else 500 ms or the interval when that is shorter (so that `interval_ms = 200`
    /// alone is a valid check).
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
            .unwrap_or(DEFAULT_TIMEOUT_MS.min(self.interval_ms))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms())
    }

    /// This spec with its defaults written out, as the running configuration holds it.
    pub fn filled(self) -> CheckSpec {
        CheckSpec {
            timeout_ms: Some(self.timeout_ms()),
            ..self
        }
    }

    /// What makes two checks one probe: everything but the hysteresis (each VIP's view applies its own `rise` and
    /// `fall`) and the port (the probe's target carries it).
    pub fn probe_part(&self) -> CheckSpec {
        CheckSpec {
            port: None,
            rise: 0,
            fall: 0,
            ..self.clone().filled()
        }
    }

    /// The TLS settings of an HTTPS check.
    pub fn tls(&self) -> tls::TlsSettings<'_> {
        tls::TlsSettings {
            server_name: self.tls_server_name.as_deref(),
            ca_file: self.tls_ca_file.as_deref(),
            verify: self.tls_verify.unwrap_or(true),
        }
    }
}

/// What a health state belongs to: a backend of one VIP (the same address may pass on one VIP and fail on another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HealthKey {
    pub vip: VipAddr,
    pub backend: IpAddr,
}

/// An up/down transition (never sent for a probe that keeps the state). The daemon receives those of one probe
/// result together, as one batch: a backend that serves a hundred VIPs flips a hundred rows at once, and each ring
/// should be rebuilt in one go, not in whatever parts the runtime happened to wake up for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthEvent {
    pub key: HealthKey,
    pub up: bool,
    pub reason: String,
}

/// Rows from an lbd that predates VIP-path checks probed directly.
fn direct_path() -> CheckTarget {
    CheckTarget::Direct
}

/// One row of the queryable health table (`lbctl health`, metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    pub key: HealthKey,
    pub kind: CheckKind,
    /// Where the probes connect: the VIP's address and port (`path = "vip"`) or the backend's.
    pub target: SocketAddr,
    #[serde(default = "direct_path")]
    pub path: CheckTarget,
    pub up: bool,
    /// `up` flipped and the dataplane does not show it yet (the rings are being rebuilt, or that failed: lbd's log
    /// says why). Until then a backend said down still receives new flows.
    #[serde(default)]
    pub pending: bool,
    /// Result of the latest probe; `None` before the first one finished.
    pub last_ok: Option<bool>,
    /// Why the latest probe failed (or "ok").
    pub last_reason: String,
    pub last_latency_us: Option<u64>,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub checks: u64,
    /// Probes that failed, of `checks`.
    #[serde(default)]
    pub failures: u64,
    /// Probes that could not run on this host (out of descriptors, ports, buffers), of `checks`: not counted
    /// against the backend.
    #[serde(default)]
    pub unknown: u64,
    pub transitions: u64,
}

impl BackendHealth {
    /// A backend with no probe run yet, starting in state `up`.
    pub fn new(key: HealthKey, kind: CheckKind, endpoint: Endpoint, up: bool) -> Self {
        BackendHealth {
            key,
            kind,
            target: endpoint.addr,
            path: endpoint.target(),
            up,
            pending: false,
            last_ok: None,
            last_reason: String::new(),
            last_latency_us: None,
            consecutive_ok: 0,
            consecutive_fail: 0,
            checks: 0,
            failures: 0,
            unknown: 0,
            transitions: 0,
        }
    }
}

/// Probes against real servers on loopback (plain sockets, as the daemon uses in its namespace).
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, UdpSocket};
    use tokio::sync::mpsc;

    use super::*;

    const T: Duration = Duration::from_millis(300);

    fn key(port: u16) -> HealthKey {
        HealthKey {
            vip: crate::control::api::parse_vip(&format!("198.18.0.10:{port}/tcp")).unwrap(),
            backend: "127.0.0.1".parse().unwrap(),
        }
    }

    /// An HTTP/1 server answering every request with `status` (or never answering when `None`).
    async fn http_server(status: Option<u16>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    match status {
                        Some(code) => {
                            let body = "hi";
                            let resp = format!(
                                "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = s.write_all(resp.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        addr
    }

    /// The next batch, which must hold one event (these tests have one row per probe).
    async fn next_event(
        rx: &mut mpsc::Receiver<Vec<HealthEvent>>,
        within: Duration,
    ) -> HealthEvent {
        let mut batch = tokio::time::timeout(within, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no health event within {within:?}"))
            .expect("checker alive");
        assert_eq!(batch.len(), 1, "{batch:?}");
        batch.pop().unwrap()
    }

    /// A TCP listener to check, a checker and its event receiver, and a TCP check every 50 ms.
    fn tcp_setup(
        timeout_ms: u64,
        rise_fall: u32,
    ) -> (
        std::net::TcpListener,
        Checker,
        mpsc::Receiver<Vec<HealthEvent>>,
        CheckSpec,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, rx) = mpsc::channel(16);
        let spec = CheckSpec {
            interval_ms: 50,
            timeout_ms: Some(timeout_ms),
            rise: rise_fall,
            fall: rise_fall,
            ..CheckSpec::default()
        };
        (listener, Checker::new(tx).unwrap(), rx, spec)
    }

    #[tokio::test]
    async fn tcp_goes_down_after_fall_and_up_after_rise() {
        let (listener, mut checker, mut rx, spec) = tcp_setup(200, 2);
        let target = listener.local_addr().unwrap();
        let k = key(target.port());
        checker.set(k, target.into(), spec, true);
        assert!(
            checker.is_up(&k),
            "starts up so a new daemon forwards at once"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let row = &checker.table()[0];
        assert!(
            row.up && row.checks >= 2 && row.last_ok == Some(true),
            "{row:?}"
        );

        drop(listener);
        let down = next_event(&mut rx, Duration::from_secs(3)).await;
        assert!(!down.up, "{down:?}");
        assert_eq!(down.key, k);
        assert!(down.reason.contains("2 consecutive failures"), "{down:?}");
        assert!(!checker.is_up(&k));
        assert!(checker.table()[0].pending, "down, but not applied yet");
        checker.applied(&[(k, true)]);
        assert!(
            checker.table()[0].pending,
            "an older verdict applied: still pending"
        );
        checker.applied(&[(k, false)]);
        assert!(!checker.table()[0].pending, "applied");

        let _back = std::net::TcpListener::bind(target).expect("rebind the same port");
        let up = next_event(&mut rx, Duration::from_secs(3)).await;
        assert!(up.up, "{up:?}");
        let row = &checker.table()[0];
        assert_eq!(row.transitions, 2, "{row:?}");
        assert_eq!(checker.transitions(), 2);
    }

    #[tokio::test]
    async fn a_shared_probe_sends_its_flips_as_one_batch() {
        let (listener, mut checker, mut rx, spec) = tcp_setup(50, 1);
        let target = listener.local_addr().unwrap();
        // Fifty VIPs with the same backend and check: one probe feeds them all.
        let keys: Vec<HealthKey> = (1..=50).map(key).collect();
        for k in &keys {
            checker.set(*k, target.into(), spec.clone(), true);
        }
        assert_eq!(checker.probes(), 1);
        drop(listener);
        let batch = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .expect("a batch within 3 s")
            .expect("checker alive");
        let mut flipped: Vec<HealthKey> = batch.iter().filter(|e| !e.up).map(|e| e.key).collect();
        flipped.sort();
        assert_eq!(flipped, keys, "every view's flip in the first batch");
    }

    #[tokio::test]
    async fn http_status_must_match() {
        let ok = http_server(Some(200)).await;
        let broken = http_server(Some(503)).await;
        http::probe(&ok.into(), "/healthz", 200, T, None)
            .await
            .expect("200 is healthy");
        let err = http::probe(&broken.into(), "/healthz", 200, T, None)
            .await
            .unwrap_err();
        assert!(err.reason.contains("status 503") && !err.local, "{err}");
        http::probe(&broken.into(), "/", 503, T, None)
            .await
            .expect("503 healthy when expected");
    }

    #[tokio::test]
    async fn http_check_times_out_on_a_silent_server() {
        let silent = http_server(None).await;
        let started = std::time::Instant::now();
        let err = http::probe(&silent.into(), "/", 200, Duration::from_millis(150), None)
            .await
            .unwrap_err();
        assert!(err.reason.contains("timed out") && !err.local, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "bounded by the timeout"
        );
    }

    #[tokio::test]
    async fn http_checker_marks_a_failing_status_down() {
        let broken = http_server(Some(500)).await;
        let (tx, mut rx) = mpsc::channel(16);
        let mut checker = Checker::new(tx).unwrap();
        let spec = CheckSpec {
            kind: CheckKind::Http,
            path: Some("/healthz".into()),
            interval_ms: 50,
            fall: 1,
            ..CheckSpec::default()
        };
        checker.set(key(broken.port()), broken.into(), spec, true);
        let down = next_event(&mut rx, Duration::from_secs(3)).await;
        assert!(!down.up && down.reason.contains("status 500"), "{down:?}");
    }

    #[tokio::test]
    async fn udp_reply_must_start_with_expect() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = server.recv_from(&mut buf).await {
                let mut reply = b"PONG ".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = server.send_to(&reply, peer).await;
            }
        });
        udp::probe(&addr.into(), b"ping", b"PONG", T)
            .await
            .expect("prefix matches");
        let err = udp::probe(&addr.into(), b"ping", b"NOPE", T)
            .await
            .unwrap_err();
        assert!(err.reason.contains("does not start with"), "{err}");

        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let err = udp::probe(&closed_addr.into(), b"ping", b"", T)
            .await
            .unwrap_err();
        assert!(
            !err.local && (err.reason.contains("refused") || err.reason.contains("no reply")),
            "closed port fails: {err}"
        );
    }

    #[tokio::test]
    async fn tcp_check_times_out_when_syns_go_unanswered() {
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, getsockname, listen,
            socket,
        };
        // A listener that never accepts, with a backlog of 0: once one connection fills the accept queue the
        // kernel drops further SYNs, so the next connect hangs exactly like a blackholed backend, on loopback.
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(127, 0, 0, 1, 0),
        )
        .unwrap();
        listen(&fd, Backlog::new(0).unwrap()).unwrap();
        let port = getsockname::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&fd))
            .unwrap()
            .port();
        let target: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, port).into();
        // Each successful probe leaves its (closed) connection in the never-accepted queue, filling it.
        let started = std::time::Instant::now();
        let mut succeeded = 0;
        let err = loop {
            match tcp::probe(&target.into(), Duration::from_millis(150)).await {
                Ok(()) => {
                    succeeded += 1;
                    assert!(succeeded < 16, "accept queue never filled");
                }
                Err(e) => break e,
            }
        };
        assert!(err.reason.contains("timed out") && !err.local, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    }

    #[test]
    fn spec_defaults_and_validation_name_fields() {
        let spec: CheckSpec = toml::from_str("kind = \"udp\"\nsend = \"x\"").unwrap();
        assert_eq!(
            (spec.interval_ms, spec.timeout_ms(), spec.rise, spec.fall),
            (
                DEFAULT_INTERVAL_MS,
                DEFAULT_TIMEOUT_MS,
                DEFAULT_RISE,
                DEFAULT_FALL
            )
        );
        assert!(
            spec.validate("vip[0].health", 53, &TrustStores::default())
                .is_empty()
        );
        assert!(
            toml::from_str::<CheckSpec>("knd = \"tcp\"").is_err(),
            "unknown field"
        );
        let bad = CheckSpec {
            kind: CheckKind::Udp,
            rise: 0,
            path: Some("x".into()),
            ..CheckSpec::default()
        };
        let errors = bad.validate("vip[1].health", 0, &TrustStores::default());
        for field in ["port", "rise", "path", "send"] {
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with(&format!("vip[1].health.{field}"))),
                "{field} missing in {errors:?}"
            );
        }
        let none = CheckSpec {
            kind: CheckKind::None,
            ..CheckSpec::default()
        };
        assert!(
            none.validate("h", 0, &TrustStores::default()).is_empty(),
            "{:?}",
            none.validate("h", 0, &TrustStores::default())
        );
    }
}
