//! `lbd`'s configuration: the file as written ([`raw`]: `deny_unknown_fields`, strings where a bad value must be
//! reported rather than rejected by serde) becomes the typed [`Config`] everything else consumes, which the rules
//! ([`rules`]) check as a whole. Runtime edits ([`edit`]) change a typed config and run the same rules: one
//! validator, no round trip through the file form. Every problem is reported at once, each naming its field path
//! and value, so an operator fixes a config in one round; nothing is applied unless it passes.

pub mod edit;
pub mod raw;
mod rules;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::dataplane::MapSizes;
use crate::health::{CheckKind, CheckSpec, CheckTarget, TrustStores};
use crate::names::named_enum;
pub use crate::service::{Protocol, VipAddr};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/lbd/lbd.sock";
/// Not 9100: node_exporter listens there on many edge hosts.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9662";
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
/// `[announce]` defaults: a kernel table of its own, a route protocol number no routing daemon uses (iproute2's
/// rt_protos names none at 250), a hold-down longer than the default health check's `fall × interval` (3 s), so that
/// a starting balancer attracts traffic only once its checks had their say, and the state directory systemd gives lbd.
pub const DEFAULT_ANNOUNCE_TABLE: u32 = 100;
pub const DEFAULT_ANNOUNCE_PROTOCOL: u32 = 250;
pub const DEFAULT_HOLD_DOWN_MS: u64 = 5000;
pub const DEFAULT_DRAIN_FILE: &str = "/var/lib/lbd/announce-drained";
/// A VIP's address is announced while the VIP has at least this many backends up and weighted.
pub const DEFAULT_MIN_HEALTHY: u32 = 1;
/// Below this share (percent of a VIP's configured weight, drained backends left out) of healthy backends, a VIP's
/// ring holds every backend that is not drained, healthy or not: a tier sized to lose a member or two that has lost
/// three quarters of its weight is likelier to be failing its checks than failing (a broken check, a path from the
/// balancer that clients do not take), and the survivors could not carry all the traffic anyway. Only when every
/// backend is down does this differ from dropping; 0 turns it off (Envoy's default is 50).
pub const DEFAULT_PANIC_THRESHOLD: u32 = 25;

/// A configuration whose every field parsed; [`Config::validate`] holds it to the rules. It serializes in the file's
/// form with every default filled in (`lbctl config check --json`): what would run, itself a valid config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub announce: AnnounceConfig,
    #[serde(rename = "vip")]
    pub vips: Vec<VipConfig>,
    /// The CA stores its HTTPS checks trust, read once when it is validated (derived from `vips`, so not part of
    /// what it says).
    #[serde(skip)]
    pub trust: TrustStores,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonConfig {
    pub interface: String,
    pub xdp_mode: XdpMode,
    pub pin_dir: PathBuf,
    pub control_socket: PathBuf,
    pub metrics_addr: SocketAddr,
    /// Map sizes, fixed when the maps are created (a change is an upgrade at the next start, see the daemon).
    #[serde(flatten)]
    pub sizes: MapSizes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encap_src_v4: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encap_src_v6: Option<Ipv6Addr>,
    pub mtu: u32,
    pub new_flow_cap: u32,
    pub icmp_too_big: bool,
    /// ICMP too-big answers per second per CPU (0 = no limit).
    pub icmp_answer_cap: u32,
}

/// `[announce]`: lbd keeps every VIP address it announces as a route in a kernel table of its own, with a route
/// protocol number of its own; the host's BGP speaker (BIRD) learns that table and announces what is in it. lbd
/// speaks no BGP (see `announce`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnnounceConfig {
    pub enabled: bool,
    /// The kernel routing table that holds the announced addresses (BIRD's `kernel table`).
    pub table: u32,
    /// The routes' protocol number (`ip route ... proto N`): lbd's routes in `table` are the ones with it.
    pub protocol: u32,
    /// A withdrawn (or new) address is announced only after it has deserved it for this long without a break.
    pub hold_down_ms: u64,
    /// Exists while `lbctl announce drain` is in force, so a restarted lbd stays drained.
    pub drain_file: PathBuf,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            enabled: false,
            table: DEFAULT_ANNOUNCE_TABLE,
            protocol: DEFAULT_ANNOUNCE_PROTOCOL,
            hold_down_ms: DEFAULT_HOLD_DOWN_MS,
            drain_file: DEFAULT_DRAIN_FILE.into(),
        }
    }
}

named_enum! {
    /// How `lb_xdp` is attached.
    pub enum XdpMode {
        Native = "native",
        Generic = "generic",
        /// Native, falling back to generic (with a warning) where the driver has no XDP support.
        Auto = "auto",
    }
}

named_enum! {
    /// How a VIP's packets reach its backends.
    pub enum Mode {
        /// IP-in-IP (IPIP, IP6IP6, 4-in-6, 6-in-4) direct server return.
        Ipip = "ipip",
        /// Destination-MAC rewrite (L2 direct server return).
        L2dsr = "l2dsr",
    }
}

named_enum! {
    /// What happens to fragments of a VIP's datagrams.
    pub enum FragmentPolicy {
        /// Counted and dropped.
        Drop = "drop",
        /// Forwarded by the 3-tuple hash; the VIP becomes stateless.
        Hash3 = "hash3",
    }
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
    /// The health check (default: TCP connect to the VIP port; `kind = "none"` checks nothing).
    pub health: CheckSpec,
    /// With `[announce]` on, the VIP keeps its address announced while at least this many of its backends are up
    /// and weighted (0: announced whatever its health).
    pub min_healthy: u32,
    /// Percent of the configured weight that must be healthy; below it health is ignored (panic mode).
    pub panic_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// 0..=MAX_WEIGHT; 0 drains (no new flows, existing flows stay).
    pub weight: u32,
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

    /// The file's text, parsed and held to the rules.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError(vec![e.to_string().trim_end().to_string()]))?;
        raw.to_config()
    }

    /// Holds the whole config to every rule; errors name a VIP by its key (`vip[198.19.0.10:80/tcp]`), which is
    /// what an operator editing at run time knows it by. (The file's errors name it by position instead.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        let labels: Vec<String> = self
            .vips
            .iter()
            .map(|v| format!("vip[{}]", v.key()))
            .collect();
        let mut errs = Vec::new();
        self.check(&labels, &mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errs))
        }
    }

    /// Whether some VIP's check probes along the VIP path (and so needs lbd's probe route).
    pub fn uses_vip_path_checks(&self) -> bool {
        self.vips
            .iter()
            .any(|v| v.health.kind != CheckKind::None && v.health.target == CheckTarget::Vip)
    }
}

impl DaemonConfig {
    /// The balancer's encapsulation source of `ip`'s family: where a VIP-path probe to `ip` comes from, and so
    /// where the backend's reply goes.
    pub fn encap_src(&self, ip: IpAddr) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(_) => self.encap_src_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.encap_src_v6.map(IpAddr::V6),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use lb_common::DEFAULT_MAX_BACKENDS;

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
health = { kind = "none" }
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
        assert_ne!(
            c.daemon.metrics_addr.port(),
            9100,
            "node_exporter's port on many edge hosts"
        );
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
        for lab in ["lab.toml", "ecmp-lab.toml"] {
            if let Err(e) = Config::load(&dir.join(lab)) {
                panic!("{lab}: {e}");
            }
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
    fn the_effective_config_is_itself_the_same_config() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let example = std::fs::read_to_string(dir.join("lbd.toml")).expect("config/lbd.toml");
        for (name, text) in [
            (
                "lab.toml",
                std::fs::read_to_string(dir.join("lab.toml")).unwrap(),
            ),
            (
                "lbd.toml",
                example.replacen("# interface = ", "interface = ", 1),
            ),
            ("GOOD", GOOD.to_string()),
            // [announce] on, every field set.
            (
                "ecmp-lab.toml",
                std::fs::read_to_string(dir.join("ecmp-lab.toml")).unwrap(),
            ),
        ] {
            let c = Config::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let effective = toml::to_string(&c).unwrap_or_else(|e| panic!("{name}: {e}"));
            let again = Config::parse(&effective).unwrap_or_else(|e| {
                panic!("{name}'s effective config is refused: {e}\n{effective}")
            });
            assert_eq!(
                again, c,
                "{name}: the effective config differs\n{effective}"
            );
        }
    }

    #[test]
    fn a_vip_without_health_gets_a_tcp_check_on_its_port() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.vips[0].health.kind, crate::health::CheckKind::Tcp);
        assert_eq!(c.vips[0].health.port_for(80), 80);
        assert_eq!(
            c.vips[0].health.target,
            crate::health::CheckTarget::Vip,
            "along the VIP path by default"
        );
        // A port-0 VIP has no port to check by default: it must say which, or that it checks nothing.
        let e = errors(&GOOD.replace("health = { kind = \"none\" }\n", ""));
        assert_eq!(
            e,
            [
                "vip[1].health.port: 0 must be set (1..=65535) for a port-0 VIP, whose check has no port of its own \
              (or kind = \"none\")"
            ]
        );
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

        let e = errors(&GOOD.replace("max_vips = 8", "max_vips = 2"));
        assert_eq!(
            e,
            [
                "vip: 2 VIPs need 3 entries in the VIP map (2 for the VIPs, 1 for the fragments of port-specific VIPs, \
                 one per address and protocol), more than daemon.max_vips = 2"
            ]
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
                .any(|x| x.starts_with("vip[2].fragments: hash3 conflicts with vip[0]")),
            "{e:#?}"
        );
    }

    /// `n` single-port TCP VIPs on distinct addresses under `max_vips`.
    fn single_port_vips(n: usize, max_vips: u32) -> String {
        let mut text = format!(
            "[daemon]\ninterface = \"eth1\"\nencap_src_v4 = \"198.18.0.1\"\nmax_vips = {max_vips}\n\
             max_ring_size = 13\n"
        );
        for i in 0..n {
            text += &format!(
                "[[vip]]\naddress = \"198.19.{}.{}\"\nport = 80\nprotocol = \"tcp\"\nring_size = 13\n\
                 backends = [{{ address = \"198.18.1.11\" }}]\n",
                i / 200,
                i % 200 + 1
            );
        }
        text
    }

    #[test]
    fn capacity_counts_the_fragment_entries() {
        // Each single-port VIP on its own address needs its fragment entry too: 32 fit in 64 entries, 33 do not.
        Config::parse(&single_port_vips(32, 64)).unwrap_or_else(|e| panic!("{e}"));
        let e = errors(&single_port_vips(33, 64));
        assert!(
            e.len() == 1 && e[0].starts_with("vip: 33 VIPs need 66 entries in the VIP map"),
            "{e:#?}"
        );
        // Ports of one address and protocol share their fragment entry.
        let shared = single_port_vips(1, 3)
            + "[[vip]]\naddress = \"198.19.0.1\"\nport = 443\nprotocol = \"tcp\"\nring_size = 13\n\
               backends = [{ address = \"198.18.1.11\" }]\n";
        Config::parse(&shared).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn addresses_that_cannot_work_are_refused() {
        for (addr, why) in [
            ("0.0.0.0", "is the unspecified address"),
            ("::", "is the unspecified address"),
            ("224.0.0.5", "is a multicast address"),
            ("ff02::1", "is a multicast address"),
            ("255.255.255.255", "is the broadcast address"),
            ("127.0.0.1", "is a loopback address"),
            (
                "::ffff:198.18.0.100",
                "is an IPv4-mapped IPv6 address; write the IPv4 address",
            ),
        ] {
            let vip = GOOD.replace(
                "address = \"198.18.0.100\"",
                &format!("address = \"{addr}\""),
            );
            let e = Config::parse(&vip).map(|_| ()).unwrap_err().0;
            assert!(
                e.contains(&format!("vip[0].address: \"{addr}\" {why}")),
                "VIP {addr}: {e:#?}"
            );
            let backend = GOOD.replace("\"fd00:18:1::11\"", &format!("\"{addr}\""));
            let e = Config::parse(&backend).map(|_| ()).unwrap_err().0;
            assert!(
                e.iter().any(
                    |x| x.starts_with(&format!("vip[1].backends[0].address: \"{addr}\" {why}"))
                ),
                "backend {addr}: {e:#?}"
            );
        }
    }

    #[test]
    fn a_timeout_longer_than_the_interval_is_refused() {
        let e = errors(&GOOD.replace(
            "health = { kind = \"none\" }",
            "health = { kind = \"tcp\", port = 80, interval_ms = 500, timeout_ms = 600 }",
        ));
        assert_eq!(
            e,
            [
                "vip[1].health.timeout_ms: 600 is longer than interval_ms = 500: probes would overlap and a hung \
                 backend would be probed before its last probe gave up"
            ]
        );
    }

    #[test]
    fn a_short_interval_alone_shortens_the_default_timeout() {
        let c = Config::parse(&GOOD.replace(
            "health = { kind = \"none\" }",
            "health = { kind = \"tcp\", port = 80, interval_ms = 200 }",
        ))
        .expect("interval_ms = 200 without a timeout is valid");
        assert_eq!(
            c.vips[1].health.timeout_ms,
            Some(200),
            "{:?}",
            c.vips[1].health
        );
    }

    #[test]
    fn paths_must_be_absolute() {
        let e = errors(&GOOD.replace(
            "max_vips = 8",
            "max_vips = 8\npin_dir = \"lb\"\ncontrol_socket = \"run/lbd.sock\"",
        ));
        assert_eq!(
            e,
            [
                "daemon.pin_dir: \"lb\" must be an absolute path",
                "daemon.control_socket: \"run/lbd.sock\" must be an absolute path"
            ]
        );
    }

    #[test]
    fn announce_defaults_and_rules() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.announce, AnnounceConfig::default());
        assert!(!c.announce.enabled);
        assert_eq!(c.vips[0].min_healthy, DEFAULT_MIN_HEALTHY);

        let on = GOOD.replacen(
            "[[vip]]",
            "[announce]\nenabled = true\nhold_down_ms = 1000\n\n[[vip]]\nmin_healthy = 2",
            1,
        );
        let c = Config::parse(&on).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.announce.enabled);
        assert_eq!(c.announce.table, DEFAULT_ANNOUNCE_TABLE);
        assert_eq!(c.announce.hold_down_ms, 1000);
        assert_eq!(c.vips[0].min_healthy, 2);

        let bad = GOOD.replacen(
            "[[vip]]",
            "[announce]\nenabled = true\ntable = 254\nprotocol = 12\nhold_down_ms = 3600001\n\
             drain_file = \"drained\"\n\n[[vip]]",
            1,
        );
        let e = errors(&bad);
        let want = [
            "announce.table: 254 is the kernel's main table; the announced addresses need a table of their own, \
             which only the BGP speaker reads",
            "announce.protocol: 12 is the number of \"bird\" routes; pick one no routing daemon uses, such as 250",
            "announce.hold_down_ms: 3600001 exceeds 3600000 (an hour)",
            "announce.drain_file: \"drained\" must be an absolute path",
        ];
        assert_eq!(e, want);
        let e = errors(&GOOD.replacen(
            "[[vip]]",
            "[announce]\nprotocol = 256\ntabel = 7\n[[vip]]",
            1,
        ));
        assert!(e[0].contains("tabel"), "{e:?}");
        let e = errors(&GOOD.replacen("[[vip]]", "[announce]\nprotocol = 256\n[[vip]]", 1));
        assert_eq!(e, ["announce.protocol: 256 is out of range 0..=255"]);
    }

    #[test]
    fn syntax_error_names_the_place() {
        let e = errors("[daemon]\ninterface = eth0\n");
        assert!(e[0].contains("line 2"), "{e:?}");
    }
}
