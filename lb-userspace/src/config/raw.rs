//! The file as written. Addresses and enums are strings here so that every bad value is reported with its path,
//! not serde's first one; converting to the typed [`Config`] checks only that each value parses (and fills the
//! defaults), the rules are the typed config's (`rules.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use lb_common::{
    DEFAULT_FLOW_TABLE_SIZE, DEFAULT_ICMP_ANSWER_CAP, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_RING_SIZE,
    DEFAULT_MAX_VIPS, DEFAULT_NEW_FLOW_CAP, DEFAULT_RING_SIZE,
};
use serde::Deserialize;

use super::{
    AnnounceConfig, BackendConfig, Config, ConfigError, DEFAULT_CONTROL_SOCKET,
    DEFAULT_METRICS_ADDR, DEFAULT_MIN_HEALTHY, DEFAULT_MTU, DEFAULT_PANIC_THRESHOLD,
    DEFAULT_PIN_DIR, DEFAULT_WEIGHT, DaemonConfig, FragmentPolicy, Mode, VipConfig, XdpMode,
};
use crate::dataplane::MapSizes;
use crate::health::{CheckSpec, TrustStores};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub daemon: RawDaemon,
    #[serde(default)]
    pub announce: Option<RawAnnounce>,
    #[serde(default, rename = "vip")]
    pub vips: Vec<RawVip>,
}

/// Addresses and enums are strings here so that validation can report all bad values, not serde's first one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub interface: String,
    #[serde(default)]
    pub xdp_mode: Option<String>,
    #[serde(default)]
    pub pin_dir: Option<PathBuf>,
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    #[serde(default)]
    pub metrics_addr: Option<String>,
    #[serde(default)]
    pub max_vips: Option<u32>,
    #[serde(default)]
    pub max_backends: Option<u32>,
    #[serde(default)]
    pub flow_table_size: Option<u32>,
    #[serde(default)]
    pub max_ring_size: Option<u32>,
    #[serde(default)]
    pub encap_src_v4: Option<String>,
    #[serde(default)]
    pub encap_src_v6: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub new_flow_cap: Option<u32>,
    #[serde(default)]
    pub icmp_too_big: Option<bool>,
    #[serde(default)]
    pub icmp_answer_cap: Option<u32>,
}

/// Every key optional: an absent `[announce]` is announcing off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnnounce {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub table: Option<u32>,
    #[serde(default)]
    pub protocol: Option<u32>,
    #[serde(default)]
    pub hold_down_ms: Option<u64>,
    #[serde(default)]
    pub drain_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVip {
    pub address: String,
    #[serde(default)]
    pub port: u16,
    pub protocol: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub ring_size: Option<u32>,
    #[serde(default)]
    pub fragments: Option<String>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    #[serde(default)]
    pub health: Option<CheckSpec>,
    #[serde(default)]
    pub min_healthy: Option<u32>,
    pub panic_threshold: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub address: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

impl RawConfig {
    /// The typed config, held to the rules. A VIP with a value that does not parse is left out of the rules (they
    /// could only repeat the same problem); every other VIP is checked, and errors name VIPs by their position
    /// in the file (`vip[2]`).
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let mut errs = Vec::new();
        let daemon = self.daemon.to_typed(&mut errs);
        let mut vips = Vec::new();
        let mut labels = Vec::new();
        for (i, raw) in self.vips.iter().enumerate() {
            let label = format!("vip[{i}]");
            if let Some(v) = raw.to_typed(&label, &mut errs) {
                vips.push(v);
                labels.push(label);
            }
        }
        let announce = self
            .announce
            .as_ref()
            .map_or_else(AnnounceConfig::default, RawAnnounce::to_typed);
        let config = Config {
            daemon,
            announce,
            vips,
            trust: TrustStores::default(),
        };
        config.check(&labels, &mut errs);
        if errs.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(errs))
        }
    }
}

/// `value` parsed as `T`, or an error `path: <why>` (a bad value keeps its place with `None`).
fn parse<T: FromStr>(path: &str, value: &str, errs: &mut Vec<String>, what: &str) -> Option<T> {
    match value.parse::<T>() {
        Ok(v) => Some(v),
        Err(_) => {
            errs.push(format!("{path}: {value:?} is not {what}"));
            None
        }
    }
}

/// A name of a `named_enum!` (its own error text names the choices), or `default` when absent.
fn name<T: FromStr<Err = String>>(
    path: &str,
    value: Option<&str>,
    default: T,
    errs: &mut Vec<String>,
) -> T {
    match value.map(str::parse::<T>) {
        None => default,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            errs.push(format!("{path}: {e}"));
            default
        }
    }
}

impl RawDaemon {
    /// Every field with its default; a value that does not parse is reported and replaced by the default, so the
    /// VIPs are still checked against the rest of the section.
    fn to_typed(&self, errs: &mut Vec<String>) -> DaemonConfig {
        let metrics_raw = self.metrics_addr.as_deref().unwrap_or(DEFAULT_METRICS_ADDR);
        let metrics_addr = parse("daemon.metrics_addr", metrics_raw, errs, "an address:port")
            .unwrap_or_else(|| {
                DEFAULT_METRICS_ADDR
                    .parse()
                    .expect("default metrics address parses")
            });
        DaemonConfig {
            interface: self.interface.clone(),
            xdp_mode: name(
                "daemon.xdp_mode",
                self.xdp_mode.as_deref(),
                XdpMode::Auto,
                errs,
            ),
            pin_dir: self
                .pin_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            control_socket: self
                .control_socket
                .clone()
                .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            metrics_addr,
            sizes: MapSizes {
                max_vips: self.max_vips.unwrap_or(DEFAULT_MAX_VIPS),
                max_backends: self.max_backends.unwrap_or(DEFAULT_MAX_BACKENDS),
                flow_table_size: self.flow_table_size.unwrap_or(DEFAULT_FLOW_TABLE_SIZE),
                max_ring_size: self.max_ring_size.unwrap_or(DEFAULT_MAX_RING_SIZE),
            },
            encap_src_v4: self
                .encap_src_v4
                .as_deref()
                .and_then(|s| parse::<Ipv4Addr>("daemon.encap_src_v4", s, errs, "an IPv4 address")),
            encap_src_v6: self
                .encap_src_v6
                .as_deref()
                .and_then(|s| parse::<Ipv6Addr>("daemon.encap_src_v6", s, errs, "an IPv6 address")),
            mtu: self.mtu.unwrap_or(DEFAULT_MTU),
            new_flow_cap: self.new_flow_cap.unwrap_or(DEFAULT_NEW_FLOW_CAP),
            icmp_too_big: self.icmp_too_big.unwrap_or(true),
            icmp_answer_cap: self.icmp_answer_cap.unwrap_or(DEFAULT_ICMP_ANSWER_CAP),
        }
    }
}

impl RawAnnounce {
    fn to_typed(&self) -> AnnounceConfig {
        let d = AnnounceConfig::default();
        AnnounceConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            table: self.table.unwrap_or(d.table),
            protocol: self.protocol.unwrap_or(d.protocol),
            hold_down_ms: self.hold_down_ms.unwrap_or(d.hold_down_ms),
            drain_file: self.drain_file.clone().unwrap_or(d.drain_file),
        }
    }
}

impl RawVip {
    /// The typed VIP, or `None` (with the errors) when a value of it does not parse. `path` names it in errors.
    pub fn to_typed(&self, path: &str, errs: &mut Vec<String>) -> Option<VipConfig> {
        let n_errs = errs.len();
        let address = parse::<IpAddr>(
            &format!("{path}.address"),
            &self.address,
            errs,
            "an IP address",
        );
        let protocol = self
            .protocol
            .parse()
            .map_err(|e| errs.push(format!("{path}.protocol: {e}")))
            .ok();
        let mode = name(
            &format!("{path}.mode"),
            self.mode.as_deref(),
            Mode::Ipip,
            errs,
        );
        let fragments = name(
            &format!("{path}.fragments"),
            self.fragments.as_deref(),
            FragmentPolicy::Drop,
            errs,
        );
        let backends: Vec<Option<BackendConfig>> = self
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| {
                let address = parse::<IpAddr>(
                    &format!("{path}.backends[{j}].address"),
                    &b.address,
                    errs,
                    "an IP address",
                )?;
                Some(BackendConfig {
                    address,
                    weight: b.weight.unwrap_or(DEFAULT_WEIGHT),
                })
            })
            .collect();
        if errs.len() != n_errs {
            return None;
        }
        Some(VipConfig {
            address: address?,
            port: self.port,
            protocol: protocol?,
            mode,
            ring_size: self.ring_size.unwrap_or(DEFAULT_RING_SIZE),
            fragments,
            backends: backends.into_iter().collect::<Option<Vec<_>>>()?,
            // The documented default: a TCP connect on the VIP port (a port-0 VIP must name a port, the rules say).
            health: self.health.clone().unwrap_or_default().filled(),
            min_healthy: self.min_healthy.unwrap_or(DEFAULT_MIN_HEALTHY),
            panic_threshold: self.panic_threshold.unwrap_or(DEFAULT_PANIC_THRESHOLD),
        })
    }
}
