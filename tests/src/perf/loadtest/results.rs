//! What one load-test run measured. Serialized as the `--json` output and rendered by [`super::report`].
//! Figures are `None` where the harness could not measure them; the report says why in [`Results::notes`].

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Results {
    pub pps: PpsPhase,
    pub wrk: WrkPhase,
    pub iperf3: IperfPhase,
    /// Wall-clock seconds each phase took, set-up included.
    pub phase_seconds: PhaseSeconds,
    pub machine: Machine,
    /// Caveats found while measuring (a tool's quirk, a figure that is not comparable), shown under the table.
    pub notes: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct PhaseSeconds {
    pub pps: f64,
    pub wrk: f64,
    pub iperf3: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    /// `--quick` (short runs: the figures are noisier).
    pub quick: bool,
    /// Seconds each measured run lasted (wrk, trafgen, the live-frames generator).
    pub run_seconds: f64,
}

/// Packet rate: small packets from many source ports at the VIP, through the program attached to the balancer's
/// interface, into sinks (nftables ingress drop rules) on the receiving hosts.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct PpsPhase {
    /// trafgen, TCP SYN, through lb_xdp.
    pub trafgen_syn: PpsRun,
    /// trafgen, UDP, through lb_xdp.
    pub trafgen_udp: PpsRun,
    /// The live-frames generator (BPF_PROG_TEST_RUN), TCP SYN, through lb_xdp.
    pub live_syn: PpsRun,
    /// trafgen, TCP SYN, through lb_floor at the same point (parse, swap MACs, XDP_TX).
    pub floor_trafgen_syn: PpsRun,
    /// The live-frames generator, TCP SYN, through lb_floor.
    pub floor_live_syn: PpsRun,
    /// trafgen, TCP SYN to the IPv6 VIP, through lb_xdp (IPv6 in IPv6 to the backends).
    #[serde(default)]
    pub trafgen_syn_v6: PpsRun,
    /// trafgen, TCP SYN to the IPv6 VIP, through lb_floor.
    #[serde(default)]
    pub floor_trafgen_syn_v6: PpsRun,
}

impl PpsPhase {
    /// Every run with its JSON field name, in report order.
    pub fn named(&self) -> [(&'static str, &PpsRun); 7] {
        [
            ("trafgen_syn", &self.trafgen_syn),
            ("trafgen_udp", &self.trafgen_udp),
            ("live_syn", &self.live_syn),
            ("trafgen_syn_v6", &self.trafgen_syn_v6),
            ("floor_trafgen_syn", &self.floor_trafgen_syn),
            ("floor_live_syn", &self.floor_live_syn),
            ("floor_trafgen_syn_v6", &self.floor_trafgen_syn_v6),
        ]
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct PpsRun {
    /// "trafgen" or "live-frames".
    pub generator: String,
    /// "tcp-syn" or "udp".
    pub traffic: String,
    /// The XDP program on the balancer's interface: "lb_xdp" or "lb_floor".
    pub program: String,
    pub seconds: f64,
    /// Frames the generator put on the wire per second.
    pub offered_pps: f64,
    /// Frames the balancer's program ran on per second (its kernel run count).
    pub balancer_pps: f64,
    /// Frames that came out of the balancer and reached a host's sink per second.
    pub forwarded_pps: f64,
    /// 1 − forwarded / offered.
    pub loss: f64,
    /// The balancer program's own ns per packet (kernel BPF run-time statistics).
    pub prog_ns_per_packet: f64,
    /// The generator's own ns per packet (live-frames only: its program's run-time statistics).
    pub generator_ns_per_packet: Option<f64>,
}

/// HTTP requests with wrk from the client namespace to the VIP, three balancers in the same lab.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct WrkPhase {
    pub xdp: WrkBalancer,
    pub haproxy: WrkBalancer,
    pub nftables: WrkBalancer,
    /// Three lbd + lb_xdp balancers behind a router spreading flows with ECMP over BGP routes (its own lab).
    #[serde(default)]
    pub ecmp: WrkBalancer,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct WrkBalancer {
    /// What ran, e.g. "lbd + lb_xdp (IPIP, DSR)".
    pub what: String,
    /// Persistent connections (HTTP/1.1 keep-alive).
    pub keepalive: WrkRun,
    /// A new TCP connection for every request (`Connection: close`).
    pub new_conn: WrkRun,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct WrkRun {
    pub connections: u32,
    pub seconds: f64,
    pub requests: u64,
    pub req_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// connect + write + timeout errors and non-2xx answers (wrk's read "errors" are the server closing a
    /// `Connection: close` connection, which is what that mode asks for, so they are not counted).
    pub errors: u64,
    /// CPU µs per request spent by the balancer where it can be attributed: the XDP program's own run time, or
    /// the HAProxy process's user + system time. None for nftables (it runs in softirq context, shared with
    /// every other namespace on the machine).
    pub balancer_cpu_us_per_req: Option<f64>,
    /// Busy CPU µs per request of the whole machine (client, balancer, backends): comparable across balancers.
    pub lab_cpu_us_per_req: f64,
    /// The busiest backend server's CPU time over the run's wall time (each serves on one thread, so near 1.0 it
    /// was saturated and limited the run); None where the servers' processes were not measured.
    #[serde(default)]
    pub busiest_backend_cpu: Option<f64>,
}

/// TCP throughput with iperf3 through the balancer, and the same without it (client straight to a backend).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct IperfPhase {
    pub xdp_one_flow: IperfRun,
    pub xdp_many_flows: IperfRun,
    pub direct_one_flow: IperfRun,
    pub direct_many_flows: IperfRun,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct IperfRun {
    pub flows: u32,
    pub seconds: f64,
    /// Received by the servers, summed over flows.
    pub gbit_per_s: f64,
    pub retransmits: u64,
    /// Frames the lab's switch could not hand to a host because that host's veth receive ring was full, over all
    /// ports during the run: where the retransmitted segments were lost.
    pub ring_drops: u64,
    /// The part of `ring_drops` at the balancer's port (in front of lb_xdp).
    pub balancer_ring_drops: u64,
}
