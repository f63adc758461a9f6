//! Active health checks: one tokio task per (VIP, backend) probes the backend (TCP connect, HTTP GET, UDP
//! send/expect) and applies rise/fall hysteresis; state changes are logged, counted and sent to the daemon as
//! [`HealthEvent`]s, and a table of the latest results answers `lbctl health`.
//!
//! Initial state: **up**. A starting (or restarting) `lbd` forwards to every configured backend at once, as Katran-
//! style operators expect; a dead backend leaves the ring after `fall` failed probes (at most
//! `fall × interval` later). A backend added at runtime starts up for the same reason.
//!
//! Checks run from the daemon's own network namespace with plain sockets, so a daemon started inside a netns checks
//! from there.

mod checker;
pub(crate) mod http;
mod tcp;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::VipAddr;

pub use checker::Checker;

pub const DEFAULT_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_HTTP_PATH: &str = "/";
pub const DEFAULT_HTTP_STATUS: u16 = 200;
/// Bounds that keep a typo from turning into a probe storm or a check that never concludes.
pub const MIN_INTERVAL_MS: u64 = 50;
pub const MAX_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    #[default]
    Tcp,
    Http,
    Udp,
    /// No probing: the backend is always up (weight and drain still apply).
    None,
}

/// A VIP's `[vip.health]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    #[serde(default)]
    pub kind: CheckKind,
    /// Port probed on each backend; default: the VIP port (required when the VIP is port 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP: request path (default "/").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP: the status a healthy backend answers (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// UDP: payload sent (required for udp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// UDP: the reply must start with these bytes (default: any reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_interval_ms() -> u64 {
    DEFAULT_INTERVAL_MS
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
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
            port: None,
            path: None,
            expect_status: None,
            send: None,
            expect: None,
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }
}

impl CheckSpec {
    /// Every problem with this spec for a VIP on `vip_port`, each prefixed with `field_path` (e.g. `vip[0].health`).
    pub fn validate(&self, field_path: &str, vip_port: u16) -> Vec<String> {
        let mut errors = Vec::new();
        let mut err = |field: &str, value: String, why: &str| {
            errors.push(format!("{field_path}.{field}: {value} {why}"));
        };
        if self.kind != CheckKind::None && self.port.unwrap_or(vip_port) == 0 {
            err(
                "port",
                format!("{:?}", self.port.unwrap_or(0)),
                "must be set (1..=65535) for a port-0 VIP",
            );
        }
        if self.interval_ms < MIN_INTERVAL_MS {
            err(
                "interval_ms",
                self.interval_ms.to_string(),
                &format!("must be at least {MIN_INTERVAL_MS}"),
            );
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            err(
                "timeout_ms",
                self.timeout_ms.to_string(),
                &format!("must be 1..={MAX_TIMEOUT_MS}"),
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
        let kind_only = |field: &str, set: bool, kind: CheckKind, errors: &mut Vec<String>| {
            if set && self.kind != kind {
                errors.push(format!(
                    "{field_path}.{field}: set but kind is {:?} (only for {:?})",
                    self.kind, kind
                ));
            }
        };
        kind_only("path", self.path.is_some(), CheckKind::Http, &mut errors);
        kind_only(
            "expect_status",
            self.expect_status.is_some(),
            CheckKind::Http,
            &mut errors,
        );
        kind_only("send", self.send.is_some(), CheckKind::Udp, &mut errors);
        kind_only("expect", self.expect.is_some(), CheckKind::Udp, &mut errors);
        if self.kind == CheckKind::Udp && self.send.as_deref().unwrap_or("").is_empty() {
            errors.push(format!(
                "{field_path}.send: missing; a udp check needs a payload to send"
            ));
        }
        errors
    }

    /// Where the probes go for `backend` of a VIP on `vip_port`.
    pub fn target(&self, backend: IpAddr, vip_port: u16) -> SocketAddr {
        SocketAddr::new(backend, self.port.unwrap_or(vip_port))
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// What a health state belongs to: a backend of one VIP (the same address may pass on one VIP and fail on another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HealthKey {
    pub vip: VipAddr,
    pub backend: IpAddr,
}

/// Sent to the daemon on every up/down transition (never for a probe that keeps the state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthEvent {
    pub key: HealthKey,
    pub up: bool,
    pub reason: String,
}

/// One row of the queryable health table (`lbctl health`, metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    pub key: HealthKey,
    pub kind: CheckKind,
    pub target: SocketAddr,
    pub up: bool,
    /// Result of the latest probe; `None` before the first one finished.
    pub last_ok: Option<bool>,
    /// Why the latest probe failed (or "ok").
    pub last_reason: String,
    pub last_latency_us: Option<u64>,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub checks: u64,
    pub transitions: u64,
}
