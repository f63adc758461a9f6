//! The control protocol between `lbctl` and `lbd`: one JSON [`Request`] per line on the unix socket, answered by
//! one JSON [`Response`] line. Typed on both ends so the CLI and the daemon cannot drift; `--json` in `lbctl`
//! prints these very structures.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::announce::AnnounceInfo;
use crate::config::{FragmentPolicy, Mode, VipAddr};
use crate::health::{BackendHealth, CheckSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Status,
    VipList,
    VipAdd {
        /// Boxed: a VIP with its health check is several times larger than every other request.
        vip: Box<VipSpec>,
    },
    VipDel {
        vip: VipAddr,
    },
    BackendAdd {
        vip: VipAddr,
        backend: IpAddr,
        weight: Option<u32>,
    },
    BackendDel {
        vip: VipAddr,
        backend: IpAddr,
    },
    /// Weight 0: no new flows, existing flows stay.
    BackendDrain {
        vip: VipAddr,
        backend: IpAddr,
    },
    BackendWeight {
        vip: VipAddr,
        backend: IpAddr,
        weight: u32,
    },
    Health,
    Stats,
    /// Up to `limit` (1..=[`MAX_FLOWS`]) flow-table entries, answered as [`Response::FlowsPart`]s and a final
    /// [`Response::Flows`].
    Flows {
        limit: usize,
    },
    Simulate {
        flow: FiveTuple,
    },
    /// Re-read the config file the daemon was started with and diff-apply it.
    Reload,
    /// Validate a config text without applying it.
    ConfigCheck {
        toml: String,
    },
    /// Stop the daemon; `detach` also removes the XDP program (otherwise it keeps forwarding).
    Shutdown {
        detach: bool,
    },
    /// What is announced over BGP and why not.
    Announce,
    /// `drain: true` withdraws every address of this balancer (maintenance), `false` lets health decide again.
    AnnounceDrain {
        drain: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Response {
    /// A mutation (or reload, config check, shutdown) succeeded; the message says what changed.
    Ok {
        message: String,
    },
    Error {
        message: String,
    },
    Status(StatusInfo),
    Vips(Vec<VipInfo>),
    Health(Vec<BackendHealth>),
    Stats(Stats),
    /// The last (or only) piece of a flows answer.
    Flows(Vec<FlowInfo>),
    /// A piece of a flows answer; more follow, up to a [`Response::Flows`] (or an error).
    FlowsPart(Vec<FlowInfo>),
    Simulate(SimulateResult),
    Announce(AnnounceInfo),
}

/// The most flow-table entries one `Flows` request may ask for: a look at the table, not a dump of it (the table
/// can hold millions; bpftool reads pinned maps whole).
pub const MAX_FLOWS: usize = 100_000;
/// `lbctl flows` without `--limit`.
pub const DEFAULT_FLOWS: usize = 100;
/// Entries per streamed piece of a flows answer: one line of about 150 kB.
pub const FLOWS_PER_PART: usize = 1000;

impl Response {
    /// A piece of a streamed answer: the answer goes on after it.
    pub fn is_part(&self) -> bool {
        matches!(self, Response::FlowsPart(_))
    }

    pub fn error(message: impl Into<String>) -> Self {
        Response::Error {
            message: message.into(),
        }
    }
    pub fn ok(message: impl Into<String>) -> Self {
        Response::Ok {
            message: message.into(),
        }
    }
}

/// A VIP to add at runtime, in the config file's vocabulary so the daemon validates it with the same code
/// (strings for protocol/mode/fragments, as in `[[vip]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSpec {
    pub address: IpAddr,
    #[serde(default)]
    pub port: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragments: Option<String>,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<CheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy: Option<u32>,
    pub panic_threshold: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub version: String,
    pub pid: u32,
    pub interface: String,
    /// The XDP attach mode actually in use ("native" or "generic").
    pub xdp_mode: String,
    pub config_path: String,
    pub uptime_secs: u64,
    pub vips: usize,
    pub backends: usize,
    /// True when this process adopted pinned maps/link from a previous `lbd`.
    pub adopted: bool,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Whether `lb_xdp` runs on the interface now (false while the interface is gone).
    pub attached: bool,
    /// Times `lb_xdp` was attached again to a re-created interface.
    pub reattachments: u64,
    /// What is announced over BGP.
    pub announce: AnnounceInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipInfo {
    pub vip: VipAddr,
    pub id: u32,
    pub mode: Mode,
    pub ring_size: u32,
    pub fragments: FragmentPolicy,
    pub min_healthy: u32,
    /// Digest of the active Maglev table by backend address (`digest::table_digest`): equal on every balancer
    /// that sends each flow of this VIP to the same backend.
    pub table_digest: String,
    pub backends: Vec<BackendInfo>,
    /// Below its panic threshold: every backend not drained is in the ring, healthy or not.
    #[serde(default)]
    pub panic: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub address: IpAddr,
    pub id: u32,
    pub weight: u32,
    /// Health state (always true without a check).
    pub up: bool,
    /// Entries of the VIP's ring this backend holds now (0 when down or drained).
    pub ring_entries: u32,
}

/// Cumulative counters (since the maps were created); `lbctl stats` samples twice for rates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Verdict/reason counters by `lb_common::Counter::name()`.
    pub counters: BTreeMap<String, u64>,
    pub vips: Vec<VipStats>,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStats {
    pub vip: VipAddr,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets that missed the flow table (not a SYN of a known flow), i.e. LRU misses.
    pub flow_misses: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStats {
    pub vip: VipAddr,
    pub backend: IpAddr,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FiveTuple {
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    pub flow: FiveTuple,
    pub backend_id: u32,
    /// Resolved from the id; `None` when the id no longer belongs to a configured backend.
    pub backend: Option<IpAddr>,
    pub vip: Option<VipAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulateResult {
    pub flow: FiveTuple,
    /// The VIP the flow matched (`None`: not for a VIP, the packet would be passed to the kernel).
    pub vip: Option<VipAddr>,
    pub backend: Option<IpAddr>,
    pub backend_id: Option<u32>,
    pub hash: Option<u32>,
    pub ring_index: Option<u32>,
    /// True when the live flow table already pins this flow (its backend wins over the ring).
    pub from_flow_table: bool,
    /// Human explanation ("ring", "flow table", "no backend up", ...).
    pub note: String,
}

/// Parses `ADDR:PORT/PROTO`, `[V6]:PORT/PROTO` or `ADDR/PROTO` (port 0 = every port) as printed by `VipAddr`.
pub fn parse_vip(s: &str) -> Result<VipAddr, String> {
    let (addr, proto) = s
        .rsplit_once('/')
        .ok_or_else(|| format!("{s:?}: expected ADDR:PORT/PROTO (e.g. 198.18.0.10:80/tcp)"))?;
    let protocol = parse_proto(proto)?;
    let (address, port) = if let Ok(sa) = addr.parse::<SocketAddr>() {
        (sa.ip(), sa.port())
    } else if let Ok(ip) = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        (ip, 0)
    } else {
        return Err(format!("{s:?}: {addr:?} is not an address or address:port"));
    };
    Ok(VipAddr {
        address,
        port,
        protocol,
    })
}

/// `tcp`/`udp` (or a number) to an IP protocol number.
pub fn parse_proto(s: &str) -> Result<u8, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(lb_common::IPPROTO_TCP),
        "udp" => Ok(lb_common::IPPROTO_UDP),
        other => other
            .parse()
            .map_err(|_| format!("{s:?}: protocol must be tcp or udp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_one_json_line() {
        let vip = parse_vip("198.18.0.10:80/tcp").unwrap();
        let reqs = vec![
            Request::Status,
            Request::VipList,
            Request::VipDel { vip },
            Request::BackendWeight {
                vip,
                backend: "198.18.1.1".parse().unwrap(),
                weight: 7,
            },
            Request::Flows { limit: 10 },
            Request::Shutdown { detach: true },
            Request::Announce,
            Request::AnnounceDrain { drain: true },
        ];
        for r in reqs {
            let line = serde_json::to_string(&r).unwrap();
            assert!(!line.contains('\n'), "{line}");
            let back: Request = serde_json::from_str(&line).unwrap();
            assert_eq!(back, r, "{line}");
        }
        let resp = Response::Vips(vec![]);
        let line = serde_json::to_string(&resp).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), resp);
    }

    #[test]
    fn vip_strings_parse_both_families_and_port_zero() {
        let v = parse_vip("[fd00::10]:443/udp").unwrap();
        assert_eq!((v.port, v.protocol), (443, lb_common::IPPROTO_UDP));
        assert_eq!(parse_vip("fd00::10/tcp").unwrap().port, 0);
        assert_eq!(parse_vip("198.18.0.10/tcp").unwrap().port, 0);
        assert_eq!(
            parse_vip(&v.to_string()).unwrap(),
            v,
            "Display and parse agree"
        );
        assert!(parse_vip("198.18.0.10:80").is_err());
        assert!(parse_vip("198.18.0.10:80/icmp").is_err());
    }
}
