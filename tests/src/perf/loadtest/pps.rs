//! Phase 1, packet rate: small TCP SYN and UDP packets from many source ports at the VIP, sent by `trafgen`
//! (netsniff-ng, through the kernel's packet socket) and by the project's live-frames generator (`lb_loadgen` run
//! with BPF_PROG_TEST_RUN in live-frames mode, which transmits from inside the kernel). The same streams go through
//! `lb_xdp` under lbd, then through `lb_floor` attached at the same interface, so the program's cost per packet
//! stands next to the least a forwarding XDP program costs, measured on the same traffic in the same run.
//!
//! Generated packets come from 198.18.1.0/24 (IPv6: fd00:18:1::/64), address ranges no lab host owns: every host that may receive them
//! (backends after `lb_xdp`, the client for `lb_floor`'s reflections) drops them in an nftables ingress rule with a
//! counter, so they never load a network stack and each delivery is counted once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::harness::lab_programs::LabPrograms;
use anyhow::{Context, Result, bail};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, XdpMode};
use lb_common::{LOADGEN_PORT_BASE, LOADGEN_PORTS, programs};

use super::measure::{ProgStats, run_bounded, xdp_prog_id};
use super::results::PpsRun;
use crate::harness::netns::{NetNs, mac_str};
use crate::harness::packets::{Ip, L2, TCP_SYN, frame};
use crate::harness::rig::xdp_md;
use crate::lab::{self, HOST_IF, Lab};

/// Source of every generated packet (outside the lab's segment, see the module doc).
const GEN_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const GEN_SRC_NET: &str = "198.18.1.0/24";
const GEN_SRC_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, 1);
const GEN_SRC_NET_V6: &str = "fd00:18:1::/64";
const SINK_TABLE: &str = "lbt_sink";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    Syn,
    Udp,
    /// TCP SYN to the IPv6 VIP (IPv6 in IPv6 to the backends).
    Syn6,
}

impl Traffic {
    fn name(self) -> &'static str {
        match self {
            Traffic::Syn => "tcp-syn",
            Traffic::Udp => "udp",
            Traffic::Syn6 => "tcp6-syn",
        }
    }
    fn target(self) -> SocketAddr {
        match self {
            Traffic::Syn => SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::HTTP_PORT),
            Traffic::Udp => SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::UDP_PORT),
            Traffic::Syn6 => SocketAddr::new(IpAddr::V6(lab::VIP_V6), lab::HTTP_PORT),
        }
    }
}

/// nftables ingress rules dropping (and counting) generated packets on a set of hosts; removed on drop.
pub struct Sinks<'a> {
    hosts: Vec<&'a NetNs>,
}

impl<'a> Sinks<'a> {
    pub fn install(hosts: Vec<&'a NetNs>) -> Sinks<'a> {
        let rules = format!(
            "table netdev {SINK_TABLE} {{\n  chain ingress {{\n    type filter hook ingress device \"{HOST_IF}\" \
             priority -500; policy accept;\n    ip saddr {GEN_SRC_NET} counter drop\n    \
             ip6 saddr {GEN_SRC_NET_V6} counter drop\n  }}\n}}\n"
        );
        let sinks = Sinks { hosts };
        for ns in &sinks.hosts {
            ns.exec(&["nft", &rules]);
        }
        sinks
    }

    /// Generated packets delivered to any of the hosts so far.
    pub fn delivered(&self) -> Result<u64> {
        let mut total = 0;
        for ns in &self.hosts {
            let out = ns.exec(&["nft", "-j", "list", "table", "netdev", SINK_TABLE]);
            let v: serde_json::Value = serde_json::from_str(&out).context("parsing nft -j")?;
            total += counter_packets(&v);
        }
        Ok(total)
    }
}

impl Drop for Sinks<'_> {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = ns.exec_output(&["nft", "delete", "table", "netdev", SINK_TABLE]);
        }
    }
}

/// Sum of every `"counter": {"packets": N}` in nft's JSON.
fn counter_packets(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::Object(m) => {
            let here = m
                .get("counter")
                .and_then(|c| c.get("packets"))
                .and_then(|p| p.as_u64())
                .unwrap_or(0);
            here + m.values().map(counter_packets).sum::<u64>()
        }
        serde_json::Value::Array(a) => a.iter().map(counter_packets).sum(),
        _ => 0,
    }
}

/// What a generator did: frames sent, over how long, and its own ns per frame when it is a BPF program.
struct Sent {
    frames: u64,
    seconds: f64,
    generator_ns: Option<f64>,
}

/// Runs `generate` and reads, around it, the program attached to the balancer's port and the sinks.
fn measure(
    lab: &Lab,
    sinks: &Sinks,
    program: &str,
    generator: &str,
    traffic: Traffic,
    generate: impl FnOnce() -> Result<Sent>,
) -> Result<PpsRun> {
    let id = xdp_prog_id(&lab.balancer.ns, HOST_IF)?;
    let prog0 = ProgStats::of(id)?;
    let sink0 = sinks.delivered()?;
    let sent = generate()?;
    // Frames still in flight (veth rings, NAPI) land within a few ms.
    std::thread::sleep(Duration::from_millis(200));
    let prog1 = ProgStats::of(id)?;
    let sink1 = sinks.delivered()?;
    let secs = sent.seconds.max(1e-9);
    let forwarded = sink1.saturating_sub(sink0);
    Ok(PpsRun {
        generator: generator.into(),
        traffic: traffic.name().into(),
        program: program.into(),
        seconds: sent.seconds,
        offered_pps: sent.frames as f64 / secs,
        balancer_pps: prog1.runs.saturating_sub(prog0.runs) as f64 / secs,
        forwarded_pps: forwarded as f64 / secs,
        loss: if sent.frames == 0 {
            1.0
        } else {
            1.0 - (forwarded as f64 / sent.frames as f64).min(1.0)
        },
        prog_ns_per_packet: prog0.ns_per_run(&prog1),
        generator_ns_per_packet: sent.generator_ns,
    })
}

const TRAFGEN_TRIES: u32 = 3;

fn last_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Frames sent and, when it says, seconds spent sending, from trafgen's summary:
/// `N packets outgoing` and `S sec, U usec on CPU0 (N packets)`.
fn parse_trafgen(text: &str) -> Option<(u64, Option<f64>)> {
    let frames = text
        .lines()
        .find_map(|l| l.trim().strip_suffix("packets outgoing"))
        .and_then(|n| n.trim().parse::<u64>().ok())?;
    let sending = text.lines().find_map(|l| {
        let (sec, rest) = l.trim().split_once(" sec, ")?;
        let usec = rest.split_once(" usec on CPU")?.0;
        Some(sec.trim().parse::<f64>().ok()? + usec.trim().parse::<f64>().ok()? / 1e6)
    });
    Some((frames, sending))
}

/// trafgen for `seconds` from the client's port, one CPU, every packet a new source port in the generator's window.
pub fn trafgen(
    lab: &Lab,
    sinks: &Sinks,
    program: &str,
    traffic: Traffic,
    seconds: f64,
) -> Result<PpsRun> {
    let client = lab.client();
    let l4 = match traffic {
        Traffic::Syn | Traffic::Syn6 => format!(
            "tcp(sp=dinc({}, {}), dp={}, syn, seq=drnd())",
            LOADGEN_PORT_BASE,
            u32::from(LOADGEN_PORT_BASE) + LOADGEN_PORTS - 1,
            traffic.target().port()
        ),
        Traffic::Udp => format!(
            "udp(sp=dinc({}, {}), dp={}), \"loadtest\"",
            LOADGEN_PORT_BASE,
            u32::from(LOADGEN_PORT_BASE) + LOADGEN_PORTS - 1,
            traffic.target().port()
        ),
    };
    let l3 = match traffic.target().ip() {
        IpAddr::V4(vip) => format!("ipv4(saddr={GEN_SRC}, daddr={vip}, ttl=64)"),
        IpAddr::V6(vip) => format!("ipv6(saddr={GEN_SRC_V6}, daddr={vip}, hoplimit=64)"),
    };
    let conf = format!(
        "{{\n  eth(da={}, sa={}),\n  {l3},\n  {l4}\n}}\n",
        mac_str(lab.balancer.ns.mac(HOST_IF)),
        mac_str(client.ns.mac(HOST_IF)),
    );
    let path = lab
        .dir
        .path()
        .join(format!("trafgen-{}.cfg", traffic.name()));
    std::fs::write(&path, conf).with_context(|| format!("write {}", path.display()))?;
    let path = path.to_str().context("utf-8 path")?.to_string();
    let attempt = || {
        measure(lab, sinks, program, "trafgen", traffic, || {
            // trafgen stops on SIGINT and then prints what it sent; `timeout` delivers it after the run time.
            let secs = format!("{seconds:.2}");
            let cmd = client.ns.command(&[
                "timeout",
                "-s",
                "INT",
                &secs,
                "trafgen",
                "--dev",
                HOST_IF,
                "--conf",
                &path,
                "--cpus",
                "1",
                "--no-sock-mem",
                // Through dev_queue_xmit like any sender, rather than straight into the driver.
                "--qdisc-path",
            ]);
            let start = Instant::now();
            let out = run_bounded(cmd, "trafgen", Duration::from_secs_f64(seconds + 10.0))?;
            let elapsed = start.elapsed().as_secs_f64().min(seconds);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let (frames, sending) = parse_trafgen(&text)
                .with_context(|| format!("no `N packets outgoing` in trafgen's output:\n{text}"))?;
            Ok(Sent {
                frames,
                // Its own sending time leaves out its start-up inside the `timeout` window.
                seconds: sending.filter(|&s| s > 0.0).unwrap_or(elapsed),
                generator_ns: None,
            })
        })
    };
    // trafgen 0.6.8 exits when its packet socket's ring reports EAGAIN ("Flushing TX_RING failed"), which a full
    // veth ring can cause now and then; the run is repeated from scratch (fresh counters) a couple of times.
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt() {
            Err(e) if tries < TRAFGEN_TRIES && format!("{e:#}").contains("TX_RING") => {
                eprintln!(
                    "loadtest: trafgen stopped early ({}); running it again",
                    last_line(&e)
                );
            }
            other => return other,
        }
    }
}

/// The live-frames generator: `lb_loadgen` run in the client namespace with its ingress set to the client's port;
/// each `XDP_TX` leaves through that port for real.
pub struct LiveGen {
    lab_programs: LabPrograms,
    template: Vec<u8>,
    ifindex: u32,
}

/// Frames per BPF_PROG_TEST_RUN call: large enough to hide the syscall, small enough to stop on time.
const LIVE_CHUNK: u32 = 1 << 16;

impl LiveGen {
    pub fn new(lab: &Lab, traffic: Traffic) -> Result<LiveGen> {
        let mut lab_programs = LabPrograms::load()?;
        // veth transmits an XDP frame only when its peer runs XDP (it queues to the peer's NAPI).
        let port = lab::client_switch_port(0);
        lab.switch.run(|| -> Result<()> {
            let pass = lab_programs.xdp(programs::PASS)?;
            pass.attach(&port, XdpMode::Driver)
                .with_context(|| format!("attach lb_pass to {port} (the client's switch port)"))?;
            Ok(())
        })?;
        let client = lab.client();
        let target = traffic.target();
        let ip = match traffic {
            // lb_loadgen moves the source port of IPv4 templates only.
            Traffic::Syn6 => bail!("the live-frames generator sends IPv4 only"),
            Traffic::Syn => Ip::tcp(
                IpAddr::V4(GEN_SRC),
                LOADGEN_PORT_BASE,
                target.ip(),
                target.port(),
                TCP_SYN,
            ),
            Traffic::Udp => Ip::udp(
                IpAddr::V4(GEN_SRC),
                LOADGEN_PORT_BASE,
                target.ip(),
                target.port(),
                b"loadtest",
            ),
        };
        let template = frame(
            &L2::new(client.ns.mac(HOST_IF), lab.balancer.ns.mac(HOST_IF)),
            &ip.bytes(),
        );
        let ifindex = client.ns.ifindex(HOST_IF);
        Ok(LiveGen {
            lab_programs,
            template,
            ifindex,
        })
    }

    pub fn run(
        &mut self,
        lab: &Lab,
        sinks: &Sinks,
        program: &str,
        traffic: Traffic,
        seconds: f64,
    ) -> Result<PpsRun> {
        let client = lab.client();
        let template = self.template.clone();
        let ifindex = self.ifindex;
        let prog = self.lab_programs.xdp(programs::LOADGEN)?;
        measure(lab, sinks, program, "live-frames", traffic, || {
            let info0 = prog.info()?;
            let ctx = xdp_md(template.len(), ifindex);
            let _in_client = client.ns.enter();
            let start = Instant::now();
            let mut frames = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                let r = prog.test_run(TestRunOptions {
                    data_in: Some(&template),
                    ctx_in: Some(&ctx),
                    repeat: LIVE_CHUNK,
                    attrs: TestRunAttrs::new().xdp_live_frames(0),
                    ..TestRunOptions::new()
                });
                if let Err(e) = r {
                    bail!("lb_loadgen live-frames run: {e:?}");
                }
                frames += u64::from(LIVE_CHUNK);
            }
            let elapsed = start.elapsed().as_secs_f64();
            let info1 = prog.info()?;
            let runs = info1.run_count().saturating_sub(info0.run_count());
            let ns = (info1.run_time() - info0.run_time()).as_nanos() as f64 / runs.max(1) as f64;
            Ok(Sent {
                frames,
                seconds: elapsed,
                generator_ns: Some(ns),
            })
        })
    }
}

/// `lb_floor` attached (native) to the balancer's port while this lives; lbd must have detached lb_xdp.
pub struct Floor {
    _lab_programs: LabPrograms,
}

impl Floor {
    pub fn attach(lab: &Lab) -> Result<Floor> {
        let mut lab_programs = LabPrograms::load()?;
        lab.balancer.ns.run(|| -> Result<()> {
            lab_programs
                .xdp(programs::FLOOR)?
                .attach(HOST_IF, XdpMode::Driver)
                .context("attach lb_floor to the balancer's port")?;
            Ok(())
        })?;
        Ok(Floor {
            _lab_programs: lab_programs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trafgen_summary() {
        let text = "     1 packets to schedule\n    54 bytes in total\nRunning! Hang up with ^C!\n\n\n     \
                    2075904 packets outgoing\n   112098816 bytes outgoing\n           5 sec, 7966 usec on CPU0 \
                    (2075904 packets)\n";
        let (frames, secs) = parse_trafgen(text).unwrap();
        assert_eq!(frames, 2_075_904);
        assert!((secs.unwrap() - 5.007966).abs() < 1e-9);
        assert_eq!(parse_trafgen("54 bytes in total\n"), None);
        assert_eq!(parse_trafgen("7 packets outgoing\n"), Some((7, None)));
    }
}
