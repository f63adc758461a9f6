//! `lbd`'s TOML configuration: the file as written ([`RawConfig`], `deny_unknown_fields`) and the validated form
//! ([`Config`]) everything else consumes. Validation reads the whole file and reports every problem at once, each
//! naming its field path and value, so an operator fixes a config in one round; nothing is applied unless it passes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use lb_common::{
    DEFAULT_FLOW_TABLE_SIZE, DEFAULT_ICMP_ANSWER_CAP, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_RING_SIZE,
    DEFAULT_MAX_VIPS, DEFAULT_NEW_FLOW_CAP, DEFAULT_RING_SIZE, IPPROTO_TCP, IPPROTO_UDP,
};
use serde::{Deserialize, Serialize};

use crate::health::CheckSpec;
use crate::maglev::is_prime;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/lbd/lbd.sock";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9100";
/// Highest backend weight; 0 drains.
pub const MAX_WEIGHT: u32 = 1000;
pub const DEFAULT_WEIGHT: u32 = 100;
/// The IP MTU behind the balancer: Ethernet's. An operator who omits `mtu` gets too-big answers, not a path-MTU
/// black hole (0 turns the check off).
pub const DEFAULT_MTU: u32 = 1500;
/// The least non-zero `mtu`: IPv6 needs 1280-byte packets to pass end to end (RFC 8200) and IP6IP6 adds a 40-byte
/// outer header; below this an encapsulated minimum-size packet could not be forwarded and no too-big answer could
/// fix it.
pub const MIN_MTU: u32 = 1280 + 40;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub daemon: RawDaemon,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub address: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub vips: Vec<VipConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonConfig {
    pub interface: String,
    pub xdp_mode: XdpMode,
    pub pin_dir: PathBuf,
    pub control_socket: PathBuf,
    pub metrics_addr: SocketAddr,
    pub sizes: Sizes,
    pub encap_src_v4: Option<Ipv4Addr>,
    pub encap_src_v6: Option<Ipv6Addr>,
    pub mtu: u32,
    pub new_flow_cap: u32,
    pub icmp_too_big: bool,
    /// ICMP too-big answers per second per CPU (0 = no limit).
    pub icmp_answer_cap: u32,
}

/// Map sizes, fixed when the maps are created (a change needs a fresh load, see the daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sizes {
    pub max_vips: u32,
    pub max_backends: u32,
    pub flow_table_size: u32,
    pub max_ring_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    Native,
    Generic,
    /// Native, falling back to generic (with a warning) where the driver has no XDP support.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Ipip,
    L2dsr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FragmentPolicy {
    Drop,
    Hash3,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VipConfig {
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub ring_size: u32,
    pub fragments: FragmentPolicy,
    pub backends: Vec<BackendConfig>,
    pub health: Option<CheckSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// 0..=MAX_WEIGHT; 0 drains (no new flows, existing flows stay).
    pub weight: u32,
}

/// Identifies a VIP across reloads: what the dataplane keys it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VipAddr {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: u8,
}

impl fmt::Display for VipAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = Protocol::from_number(self.protocol)
            .map(|p| p.to_string())
            .unwrap_or(self.protocol.to_string());
        write!(f, "{}/{proto}", SocketAddr::new(self.address, self.port))
    }
}

impl VipConfig {
    pub fn key(&self) -> VipAddr {
        VipAddr {
            address: self.address,
            port: self.port,
            protocol: self.protocol.number(),
        }
    }
}

/// Every problem found, one per line, each `path: "value" reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid config ({} error{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError(vec![e.to_string().trim_end().to_string()]))?;
        raw.validate()
    }
}

impl RawConfig {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let mut errs = Vec::new();
        let daemon = self.daemon.validate(&mut errs);
        let mut vips = Vec::new();
        let mut seen: HashMap<VipAddr, usize> = HashMap::new();
        for (i, raw) in self.vips.iter().enumerate() {
            if let Some(vip) = raw.validate(i, &daemon, &mut errs) {
                if let Some(first) = seen.insert(vip.key(), i) {
                    errs.push(format!("vip[{i}]: {} duplicates vip[{first}]", vip.key()));
                }
                vips.push(vip);
            }
        }
        check_totals(&daemon, &vips, &mut errs);
        if errs.is_empty() {
            Ok(Config { daemon, vips })
        } else {
            Err(ConfigError(errs))
        }
    }
}

fn check_totals(daemon: &DaemonConfig, vips: &[VipConfig], errs: &mut Vec<String>) {
    if vips.len() > daemon.sizes.max_vips as usize {
        errs.push(format!(
            "vip: {} VIPs exceed daemon.max_vips = {}",
            vips.len(),
            daemon.sizes.max_vips
        ));
    }
    // A backend id names a (VIP, backend) pair (see state.rs); id 0 is reserved, so max_backends - 1 are usable.
    let backends: usize = vips.iter().map(|v| v.backends.len()).sum();
    if backends >= daemon.sizes.max_backends as usize {
        errs.push(format!(
            "vip[*].backends: {} (VIP, backend) pairs exceed daemon.max_backends - 1 = {}",
            backends,
            daemon.sizes.max_backends.saturating_sub(1)
        ));
    }
    // Fragments of a port-specific VIP are matched by a (address, port 0) entry; VIPs sharing it must agree.
    let mut frag: BTreeMap<(IpAddr, u8), (usize, FragmentPolicy)> = BTreeMap::new();
    let wildcards: HashSet<(IpAddr, u8)> = vips
        .iter()
        .filter(|v| v.port == 0)
        .map(|v| (v.address, v.protocol.number()))
        .collect();
    for (i, v) in vips.iter().enumerate() {
        let k = (v.address, v.protocol.number());
        if v.port == 0 || wildcards.contains(&k) {
            continue;
        }
        match frag.get(&k) {
            Some(&(first, policy)) if policy != v.fragments => errs.push(format!(
                "vip[{i}].fragments: {:?} conflicts with vip[{first}] on the same address and protocol ({:?}); \
                 fragments carry no port, so they share one policy",
                v.fragments, policy
            )),
            Some(_) => {}
            None => {
                frag.insert(k, (i, v.fragments));
            }
        }
    }
}

fn parse_ip(path: &str, value: &str, errs: &mut Vec<String>) -> Option<IpAddr> {
    match value.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errs.push(format!("{path}: {value:?} is not an IP address"));
            None
        }
    }
}

fn one_of<T: Copy>(
    path: &str,
    value: Option<&str>,
    default: T,
    choices: &[(&str, T)],
    errs: &mut Vec<String>,
) -> T {
    let Some(value) = value else { return default };
    match choices.iter().find(|(name, _)| *name == value) {
        Some((_, v)) => *v,
        None => {
            let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
            errs.push(format!(
                "{path}: {value:?} is not one of {}",
                names.join(", ")
            ));
            default
        }
    }
}

impl RawDaemon {
    fn validate(&self, errs: &mut Vec<String>) -> DaemonConfig {
        if self.interface.is_empty() {
            errs.push("daemon.interface: \"\" is empty".into());
        }
        let xdp_mode = one_of(
            "daemon.xdp_mode",
            self.xdp_mode.as_deref(),
            XdpMode::Auto,
            &[
                ("native", XdpMode::Native),
                ("generic", XdpMode::Generic),
                ("auto", XdpMode::Auto),
            ],
            errs,
        );
        let metrics_raw = self.metrics_addr.as_deref().unwrap_or(DEFAULT_METRICS_ADDR);
        let metrics_addr = metrics_raw.parse().unwrap_or_else(|_| {
            errs.push(format!(
                "daemon.metrics_addr: {metrics_raw:?} is not an address:port"
            ));
            DEFAULT_METRICS_ADDR
                .parse()
                .expect("default metrics address parses")
        });
        let sizes = Sizes {
            max_vips: self.max_vips.unwrap_or(DEFAULT_MAX_VIPS),
            max_backends: self.max_backends.unwrap_or(DEFAULT_MAX_BACKENDS),
            flow_table_size: self.flow_table_size.unwrap_or(DEFAULT_FLOW_TABLE_SIZE),
            max_ring_size: self.max_ring_size.unwrap_or(DEFAULT_MAX_RING_SIZE),
        };
        for (name, v) in [
            ("max_vips", sizes.max_vips),
            ("max_backends", sizes.max_backends),
            ("flow_table_size", sizes.flow_table_size),
            ("max_ring_size", sizes.max_ring_size),
        ] {
            if v == 0 {
                errs.push(format!("daemon.{name}: 0 must be at least 1"));
            }
        }
        if sizes.max_backends == 1 {
            errs.push("daemon.max_backends: 1 leaves no backend (id 0 is reserved)".into());
        }
        let ring_entries = 2u64 * sizes.max_vips as u64 * sizes.max_ring_size as u64;
        if ring_entries > u32::MAX as u64 / 4 {
            errs.push(format!(
                "daemon.max_ring_size: {} with max_vips {} needs {ring_entries} ring entries, too many for one map",
                sizes.max_ring_size, sizes.max_vips
            ));
        }
        let encap_src_v4 = self
            .encap_src_v4
            .as_deref()
            .and_then(|s| match s.parse::<Ipv4Addr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    errs.push(format!("daemon.encap_src_v4: {s:?} is not an IPv4 address"));
                    None
                }
            });
        let encap_src_v6 = self
            .encap_src_v6
            .as_deref()
            .and_then(|s| match s.parse::<Ipv6Addr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    errs.push(format!("daemon.encap_src_v6: {s:?} is not an IPv6 address"));
                    None
                }
            });
        let mtu = self.mtu.unwrap_or(DEFAULT_MTU);
        if mtu != 0 && mtu < MIN_MTU {
            errs.push(format!(
                "daemon.mtu: {mtu} is below {MIN_MTU} (IPv6's 1280 plus a 40-byte outer header); 0 turns the check off"
            ));
        }
        DaemonConfig {
            interface: self.interface.clone(),
            xdp_mode,
            pin_dir: self
                .pin_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            control_socket: self
                .control_socket
                .clone()
                .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            metrics_addr,
            sizes,
            encap_src_v4,
            encap_src_v6,
            mtu,
            new_flow_cap: self.new_flow_cap.unwrap_or(DEFAULT_NEW_FLOW_CAP),
            icmp_too_big: self.icmp_too_big.unwrap_or(true),
            icmp_answer_cap: self.icmp_answer_cap.unwrap_or(DEFAULT_ICMP_ANSWER_CAP),
        }
    }
}

impl RawVip {
    fn validate(
        &self,
        i: usize,
        daemon: &DaemonConfig,
        errs: &mut Vec<String>,
    ) -> Option<VipConfig> {
        let n_errs = errs.len();
        let p = format!("vip[{i}]");
        let address = parse_ip(&format!("{p}.address"), &self.address, errs);
        let protocol = match self.protocol.as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            other => {
                errs.push(format!("{p}.protocol: {other:?} is not one of tcp, udp"));
                None
            }
        };
        let mode = one_of(
            &format!("{p}.mode"),
            self.mode.as_deref(),
            Mode::Ipip,
            &[("ipip", Mode::Ipip), ("l2dsr", Mode::L2dsr)],
            errs,
        );
        let fragments = one_of(
            &format!("{p}.fragments"),
            self.fragments.as_deref(),
            FragmentPolicy::Drop,
            &[
                ("drop", FragmentPolicy::Drop),
                ("hash3", FragmentPolicy::Hash3),
            ],
            errs,
        );
        let ring_size = self.ring_size.unwrap_or(DEFAULT_RING_SIZE);
        if !is_prime(ring_size) {
            errs.push(format!("{p}.ring_size: {ring_size} is not prime"));
        }
        if ring_size > daemon.sizes.max_ring_size {
            errs.push(format!(
                "{p}.ring_size: {ring_size} exceeds daemon.max_ring_size = {}",
                daemon.sizes.max_ring_size
            ));
        }
        let mut backends = Vec::new();
        let mut seen = HashSet::new();
        for (j, b) in self.backends.iter().enumerate() {
            let bp = format!("{p}.backends[{j}]");
            let weight = b.weight.unwrap_or(DEFAULT_WEIGHT);
            if weight > MAX_WEIGHT {
                errs.push(format!(
                    "{bp}.weight: {weight} is out of range 0..={MAX_WEIGHT}"
                ));
            }
            let Some(baddr) = parse_ip(&format!("{bp}.address"), &b.address, errs) else {
                continue;
            };
            if !seen.insert(baddr) {
                errs.push(format!("{bp}.address: {:?} is listed twice", b.address));
            }
            if baddr.is_unspecified() || baddr.is_multicast() {
                errs.push(format!(
                    "{bp}.address: {:?} is not a unicast address",
                    b.address
                ));
            }
            if let Some(vaddr) = address {
                if mode == Mode::L2dsr && vaddr.is_ipv4() != baddr.is_ipv4() {
                    errs.push(format!(
                        "{bp}.address: {:?} is {} but the l2dsr VIP {vaddr} is {} (L2 DSR cannot change the family)",
                        b.address,
                        family(baddr),
                        family(vaddr)
                    ));
                }
            }
            if mode == Mode::Ipip {
                match baddr {
                    IpAddr::V4(_) if daemon.encap_src_v4.is_none() => errs.push(format!(
                        "{bp}.address: {:?} needs daemon.encap_src_v4 for IP-in-IP encapsulation",
                        b.address
                    )),
                    IpAddr::V6(_) if daemon.encap_src_v6.is_none() => errs.push(format!(
                        "{bp}.address: {:?} needs daemon.encap_src_v6 for IP-in-IP encapsulation",
                        b.address
                    )),
                    _ => {}
                }
            }
            backends.push(BackendConfig {
                address: baddr,
                weight: weight.min(MAX_WEIGHT),
            });
        }
        if let Some(h) = &self.health {
            errs.extend(h.validate(&format!("{p}.health"), self.port));
        }
        if errs.len() != n_errs {
            return None;
        }
        Some(VipConfig {
            address: address?,
            port: self.port,
            protocol: protocol?,
            mode,
            ring_size,
            fragments,
            backends,
            health: self.health.clone(),
        })
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
interface = "eth1"
encap_src_v4 = "198.18.0.1"
encap_src_v6 = "fd00:18::1"
max_vips = 8
max_ring_size = 251

[[vip]]
address = "198.18.0.100"
port = 80
protocol = "tcp"
ring_size = 251
backends = [{ address = "198.18.1.11" }, { address = "198.18.1.12", weight = 0 }]

[[vip]]
address = "fd00:18::100"
protocol = "udp"
mode = "l2dsr"
ring_size = 13
fragments = "hash3"
backends = [{ address = "fd00:18:1::11", weight = 1000 }]
"#;

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Ok(c) => panic!("accepted a bad config: {c:#?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn good_config_with_defaults() {
        let c = Config::parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.daemon.xdp_mode, XdpMode::Auto);
        assert_eq!(c.daemon.pin_dir, Path::new(DEFAULT_PIN_DIR));
        assert_eq!(c.daemon.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.daemon.metrics_addr.to_string(), DEFAULT_METRICS_ADDR);
        assert_eq!(c.daemon.sizes.max_backends, DEFAULT_MAX_BACKENDS);
        assert_eq!(c.daemon.sizes.max_ring_size, 251);
        assert_eq!(c.vips.len(), 2);
        assert_eq!(c.vips[0].mode, Mode::Ipip);
        assert_eq!(c.vips[0].fragments, FragmentPolicy::Drop);
        assert_eq!(c.vips[0].backends[0].weight, DEFAULT_WEIGHT);
        assert_eq!(c.vips[0].backends[1].weight, 0);
        assert_eq!(c.vips[1].port, 0);
        assert_eq!(c.vips[1].mode, Mode::L2dsr);
        assert_eq!(c.vips[1].key().to_string(), "[fd00:18::100]:0/udp");
    }

    #[test]
    fn shipped_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        if let Err(e) = Config::load(&dir.join("lab.toml")) {
            panic!("lab.toml: {e}");
        }
        // The package installs lbd.toml with `interface` commented out, so that installing it attaches nothing: as
        // shipped it must be refused for exactly that, and be valid once the interface is set.
        let example = std::fs::read_to_string(dir.join("lbd.toml")).expect("config/lbd.toml");
        let e = errors(&example);
        assert!(
            e.len() == 1 && e[0].contains("missing field `interface`"),
            "{e:#?}"
        );
        let set = example.replacen("# interface = ", "interface = ", 1);
        assert_ne!(
            set, example,
            "lbd.toml has a commented `# interface = ` line"
        );
        if let Err(e) = Config::parse(&set) {
            panic!("lbd.toml with its interface set: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = errors(&GOOD.replace("max_vips = 8", "max_vipz = 8"));
        assert!(e[0].contains("max_vipz"), "{e:?}");
        let e = errors(&GOOD.replace("weight = 1000", "wieght = 1000"));
        assert!(e[0].contains("wieght"), "{e:?}");
    }

    #[test]
    fn every_error_is_reported_with_path_and_value() {
        let bad = GOOD
            .replace("\"198.18.1.11\"", "\"10.0.0.x\"")
            .replace("ring_size = 13", "ring_size = 15")
            .replace("weight = 1000", "weight = 1001")
            .replace("\"tcp\"", "\"sctp\"")
            .replace(
                "interface = \"eth1\"",
                "interface = \"eth1\"\nxdp_mode = \"fast\"",
            );
        let e = errors(&bad);
        let want = [
            "daemon.xdp_mode: \"fast\" is not one of native, generic, auto",
            "vip[0].backends[0].address: \"10.0.0.x\" is not an IP address",
            "vip[0].protocol: \"sctp\" is not one of tcp, udp",
            "vip[1].ring_size: 15 is not prime",
            "vip[1].backends[0].weight: 1001 is out of range 0..=1000",
        ];
        for w in want {
            assert!(e.iter().any(|x| x == w), "missing {w:?} in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn semantic_errors() {
        let dup = format!(
            "{GOOD}\n[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\nring_size = 7\n"
        );
        let e = errors(&dup);
        assert!(
            e.iter()
                .any(|x| x.contains("vip[2]: 198.18.0.100:80/tcp duplicates vip[0]")),
            "{e:#?}"
        );

        let e = errors(&GOOD.replace("fd00:18:1::11", "198.18.1.11"));
        assert!(
            e.iter()
                .any(|x| x.starts_with("vip[1].backends[0].address: \"198.18.1.11\" is IPv4")),
            "{e:#?}"
        );

        let e = errors(&GOOD.replace("ring_size = 251\nbackends", "ring_size = 257\nbackends"));
        assert!(
            e.iter()
                .any(|x| x == "vip[0].ring_size: 257 exceeds daemon.max_ring_size = 251"),
            "{e:#?}"
        );

        let e = errors(&GOOD.replace("encap_src_v4 = \"198.18.0.1\"", ""));
        assert!(
            e.iter().any(|x| x.contains("needs daemon.encap_src_v4")),
            "{e:#?}"
        );

        let e = errors(&GOOD.replace("max_vips = 8", "max_vips = 1"));
        assert!(
            e.iter().any(|x| x.contains("exceed daemon.max_vips = 1")),
            "{e:#?}"
        );

        let twice = GOOD.replace(
            "{ address = \"198.18.1.12\", weight = 0 }",
            "{ address = \"198.18.1.11\" }",
        );
        let e = errors(&twice);
        assert!(
            e.iter()
                .any(|x| x.contains("vip[0].backends[1].address: \"198.18.1.11\" is listed twice")),
            "{e:#?}"
        );

        let frag = format!(
            "{GOOD}\n[[vip]]\naddress = \"198.18.0.100\"\nport = 81\nprotocol = \"tcp\"\nring_size = 7\nfragments = \"hash3\"\n"
        );
        let e = errors(&frag);
        assert!(
            e.iter()
                .any(|x| x.starts_with("vip[2].fragments: Hash3 conflicts with vip[0]")),
            "{e:#?}"
        );
    }

    #[test]
    fn syntax_error_names_the_place() {
        let e = errors("[daemon]\ninterface = eth0\n");
        assert!(e[0].contains("line 2"), "{e:?}");
    }
}
