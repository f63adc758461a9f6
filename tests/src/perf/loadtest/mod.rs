//! `cargo xtask loadtest`: how fast, compared to what operators run today, measured in one run on the lab.
//!
//! Three phases, each with its own module: packet rate ([`pps`]), HTTP requests through this balancer, HAProxy and
//! an nftables DNAT balancer ([`requests`]), TCP throughput ([`throughput`]). Every run lasts
//! [`Options::run_seconds`], every tool runs under a hard time limit, and everything the phases set up (lbd,
//! HAProxy, nftables tables, iperf3 servers, the lab itself) is torn down by guards, also on error or panic.
//! [`report`] writes the Markdown table, the JSON and the PNG chart.

pub mod chart;
pub mod ecmp;
pub mod measure;
pub mod nginx;
pub mod pps;
pub mod report;
pub mod requests;
pub mod results;
pub mod throughput;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::lab::daemon::Lbd;
use crate::lab::traffic;
use crate::lab::{self, Lab, LabOptions};
use pps::{Floor, LiveGen, Sinks, Traffic};
use requests::{BalancerCpu, Haproxy, Mode, NftDnat};
use results::{Machine, Results, WrkBalancer};

pub struct Options {
    pub quick: bool,
    /// Length of each measured run (wrk and iperf3 round it up to whole seconds).
    pub run_seconds: f64,
    /// Where the report goes (`target/loadtest` for `cargo xtask loadtest`).
    pub out_dir: PathBuf,
    /// Progress lines go to stderr instead of stdout (`--json` keeps stdout for the JSON).
    pub progress_to_stderr: bool,
}

impl Options {
    /// Full runs: 7 s each, so no phase exceeds about 60 s with its set-up.
    pub fn full(out_dir: &Path) -> Options {
        Options {
            quick: false,
            run_seconds: 7.0,
            out_dir: out_dir.to_path_buf(),
            progress_to_stderr: false,
        }
    }

    /// `--quick`: 1 s runs; every phase stays within about 10 s.
    pub fn quick(out_dir: &Path) -> Options {
        Options {
            quick: true,
            run_seconds: 1.0,
            ..Options::full(out_dir)
        }
    }

    fn say(&self, msg: &str) {
        if self.progress_to_stderr {
            eprintln!("{msg}");
        } else {
            println!("{msg}");
        }
    }
}

/// Builds the lab, runs the three phases and writes the report; returns the figures.
pub fn run(opts: &Options) -> Result<Results> {
    measure::require_tools()?;
    // The programs' own ns/packet come from the kernel's run-time statistics, on while this fd lives.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    opts.say("loadtest: building the lab (client, balancer, 3 backends)");
    let mut lab = Lab::new(&LabOptions::default());
    let iperf_vips = throughput::vip_entries(&lab);
    let cfg = lab.write_config("loadtest.toml", |c| loadtest_config(c, iperf_vips));
    let mut r = Results {
        machine: machine(opts),
        ..Results::default()
    };

    let t = Instant::now();
    opts.say("loadtest: phase 1/3, packet rate (trafgen, live frames; lb_xdp then lb_floor)");
    pps_phase(&lab, &cfg, opts, &mut r)?;
    r.phase_seconds.pps = t.elapsed().as_secs_f64();

    let t = Instant::now();
    opts.say("loadtest: phase 2/3, requests (wrk through lb_xdp, HAProxy, nftables)");
    wrk_phase(&mut lab, &cfg, opts, &mut r)?;
    r.phase_seconds.wrk = t.elapsed().as_secs_f64();

    let t = Instant::now();
    opts.say("loadtest: phase 3/3, throughput (iperf3 through lb_xdp and direct)");
    iperf_phase(&lab, &cfg, opts, &mut r)?;
    r.phase_seconds.iperf3 = t.elapsed().as_secs_f64();

    drop(lab);
    notes(&mut r);
    let written = report::write(&r, &opts.out_dir)?;
    for p in written {
        opts.say(&format!("loadtest: wrote {}", p.display()));
    }
    Ok(r)
}

/// The lab config, adapted for measuring: the iperf3 services added, the production flow-table size, and health
/// checks with room for a saturated machine.
fn loadtest_config(c: &mut toml::Table, iperf_vips: Vec<toml::Value>) {
    let vips = c
        .get_mut("vip")
        .and_then(|v| v.as_array_mut())
        .expect("config/lab.toml has [[vip]] entries");
    vips.extend(iperf_vips);
    // With the default 300 ms timeout, a packet flood on two cores can delay a check enough to take a healthy
    // backend out in the middle of a measurement.
    for vip in vips.iter_mut() {
        if let Some(h) = vip.get_mut("health").and_then(|h| h.as_table_mut()) {
            h.insert("timeout_ms".into(), 450.into());
            h.insert("fall".into(), 4.into());
        }
    }
    // The production default, not the lab's small table: a SYN stream from 60,000 ports would otherwise keep a
    // nearly full LRU evicting on every insert, which measures the table size rather than the balancer.
    c.get_mut("daemon")
        .and_then(|d| d.as_table_mut())
        .expect("config/lab.toml has a [daemon] table")
        .insert(
            "flow_table_size".into(),
            i64::from(lb_common::DEFAULT_FLOW_TABLE_SIZE).into(),
        );
}

fn machine(opts: &Options) -> Machine {
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        quick: opts.quick,
        run_seconds: opts.run_seconds,
    }
}

fn start_lbd(lab: &Lab, cfg: &Path) -> Lbd {
    let lbd = Lbd::start(lab, cfg);
    lbd.wait_all_backends_up(lab, Duration::from_secs(20));
    lbd
}

/// `lbctl shutdown --detach`, then waits until the balancer's port has no XDP program, so the next balancer under
/// test owns it.
fn stop_lbd(lab: &Lab, lbd: Lbd) -> Result<()> {
    let start = Instant::now();
    lbd.shutdown_detach();
    while measure::xdp_prog_id(&lab.balancer.ns, lab::HOST_IF).is_ok() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "lb_xdp still attached to the balancer's port 20 s after `lbctl shutdown --detach`"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn pps_phase(lab: &Lab, cfg: &Path, opts: &Options, r: &mut Results) -> Result<()> {
    let secs = opts.run_seconds;
    let mut hosts: Vec<_> = lab.backends.iter().map(|b| &b.host.ns).collect();
    // lb_floor sends every frame back towards its source: the client's sink counts those.
    hosts.push(&lab.client().ns);
    let sinks = Sinks::install(hosts);
    // Created first: it puts lb_pass on the client's switch port, which every run then crosses the same way.
    let mut live = LiveGen::new(lab, Traffic::Syn)?;

    let lbd = start_lbd(lab, cfg);
    r.pps.trafgen_syn = pps::trafgen(lab, &sinks, "lb_xdp", Traffic::Syn, secs)?;
    r.pps.trafgen_udp = pps::trafgen(lab, &sinks, "lb_xdp", Traffic::Udp, secs)?;
    r.pps.live_syn = live.run(lab, &sinks, "lb_xdp", Traffic::Syn, secs)?;
    r.pps.trafgen_syn_v6 = pps::trafgen(lab, &sinks, "lb_xdp", Traffic::Syn6, secs)?;
    stop_lbd(lab, lbd)?;

    let floor = Floor::attach(lab)?;
    r.pps.floor_trafgen_syn = pps::trafgen(lab, &sinks, "lb_floor", Traffic::Syn, secs)?;
    r.pps.floor_live_syn = live.run(lab, &sinks, "lb_floor", Traffic::Syn, secs)?;
    r.pps.floor_trafgen_syn_v6 = pps::trafgen(lab, &sinks, "lb_floor", Traffic::Syn6, secs)?;
    drop(floor);
    Ok(())
}

/// Requests sent before each balancer's measured runs, so none of them pays for first contact (ARP, the backends'
/// accept queues and threads, HAProxy's first connections, empty flow tables).
pub(crate) const WARM_UP_REQUESTS: usize = 300;

fn wrk_pair(
    lab: &Lab,
    secs: f64,
    what: &str,
    cpu: BalancerCpu,
    backends: &[u32],
) -> Result<WrkBalancer> {
    let vip = SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::HTTP_PORT);
    let warm = traffic::http_burst(&lab.client().ns, vip, WARM_UP_REQUESTS, 16);
    anyhow::ensure!(
        warm.failures == 0,
        "{what}: warm-up requests to {vip} failed:\n{}",
        warm.render()
    );
    Ok(WrkBalancer {
        what: what.into(),
        keepalive: requests::wrk(&lab.client().ns, Mode::KeepAlive, secs, &cpu, backends)?,
        new_conn: requests::wrk(&lab.client().ns, Mode::NewConnection, secs, &cpu, backends)?,
    })
}

fn wrk_phase(lab: &mut Lab, cfg: &Path, opts: &Options, r: &mut Results) -> Result<()> {
    let nginx = nginx::Nginx::start(lab)?;
    let result = wrk_balancers(lab, cfg, opts, r, &nginx.pids());
    nginx.stop(lab);
    result
}

/// The three balancers in turn in front of the same backends (`backends`: their server processes).
fn wrk_balancers(
    lab: &Lab,
    cfg: &Path,
    opts: &Options,
    r: &mut Results,
    backends: &[u32],
) -> Result<()> {
    let secs = opts.run_seconds;
    let lbd = start_lbd(lab, cfg);
    let prog = measure::xdp_prog_id(&lab.balancer.ns, lab::HOST_IF)?;
    r.wrk.xdp = wrk_pair(
        lab,
        secs,
        "lbd + lb_xdp: Maglev, IPIP, direct server return",
        BalancerCpu::XdpPrograms(vec![prog]),
        backends,
    )?;
    stop_lbd(lab, lbd)?;

    let hap = Haproxy::start(lab)?;
    r.wrk.haproxy = wrk_pair(
        lab,
        secs,
        "HAProxy, TCP mode, round robin, 2 threads",
        BalancerCpu::Process(hap.pid()),
        backends,
    )?;
    drop(hap);

    let nat = NftDnat::start(lab)?;
    r.wrk.nftables = wrk_pair(
        lab,
        secs,
        "nftables DNAT (jhash of client address and port) + masquerade",
        BalancerCpu::None,
        backends,
    )?;
    drop(nat);

    opts.say(
        "loadtest: phase 2/3, requests through the ECMP lab (3 balancers behind a BGP router)",
    );
    r.wrk.ecmp = ecmp::wrk_row(secs)?;
    Ok(())
}

fn iperf_phase(lab: &Lab, cfg: &Path, opts: &Options, r: &mut Results) -> Result<()> {
    let secs = opts.run_seconds;
    let _servers = throughput::Servers::start(lab)?;
    let lbd = start_lbd(lab, cfg);
    r.iperf3.xdp_one_flow = throughput::iperf(lab, true, false, secs)?;
    r.iperf3.xdp_many_flows = throughput::iperf(lab, true, true, secs)?;
    stop_lbd(lab, lbd)?;
    r.iperf3.direct_one_flow = throughput::iperf(lab, false, false, secs)?;
    r.iperf3.direct_many_flows = throughput::iperf(lab, false, true, secs)?;
    Ok(())
}

/// The caveats a reader needs to read the figures right.
fn notes(r: &mut Results) {
    let cpus = r.machine.cpus;
    r.notes.push(format!(
        "Client, balancer and backends are namespaces on one machine with {cpus} CPUs: they compete for the same \
         cores, so absolute figures are far below separate hosts; compare within this run (ratios)."
    ));
    r.notes.push(
        "Balancer CPU per request: for lb_xdp the program's own run time (kernel BPF statistics; the veth driver \
         around it is not included); for HAProxy its process's user + system time (its share of softirq work is not \
         included); nftables runs in softirq context and cannot be separated from the other namespaces. Lab CPU \
         per request counts every busy CPU of the machine and is comparable across balancers."
            .into(),
    );
    r.notes.push(
        "Backends of the wrk runs are nginx, one process (one thread) per backend; \"busiest backend CPU\" is the \
         busiest one's CPU time over the run's wall time, so near 100% a backend, not the balancer, limited the \
         run. The ecmp row's backends run the lab's own test server (tiny_http, 4 threads). wrk's read errors in \
         new-connection mode are the server closing as asked and are not counted as errors."
            .into(),
    );
    r.notes.push(
        "Packet rate: generated frames come from 198.18.1.0/24 and are dropped by nftables ingress rules on the \
         receiving hosts (counted there as forwarded). lb_xdp treats every SYN as a new connection (Maglev pick and \
         flow-table insert), so the SYN rows measure its new-flow path on every packet; the UDP row repeats 60,000 \
         flows, so after the first pass it measures established flows. The live-frames generator transmits from \
         inside the kernel, but every frame still crosses veth, bridge and veth on the same CPUs, so the chain, not \
         the generator, bounds its rate."
            .into(),
    );
    r.notes.push(
        "The ecmp row runs in a lab of its own: the client reaches three balancers through a router (one more kernel \
         forwarding hop) that spreads connections with ECMP over the BGP routes they announce. All balancers share \
         the machine's cores, so the row shows the tier works at speed, not that it scales; on separate hosts each \
         balancer adds its own capacity."
            .into(),
    );
    let many = &r.iperf3.xdp_many_flows;
    if many.ring_drops > 0 {
        r.notes.push(format!(
            "Throughput: retransmissions follow frames dropped at full veth receive rings (256 frames per queue; \
             the balancer's cable has one queue per CPU, the other hosts' one); in the many-flows run through lb_xdp \
             {} of {} such drops were at the balancer's port, where bursts arrive faster than the program and the \
             veth chain drain them (a veth queue is drained on the CPU that sent into it). Real NICs have rings of \
             thousands of frames.",
            many.balancer_ring_drops, many.ring_drops
        ));
    }
    let lossy: Vec<String> = r
        .pps
        .named()
        .iter()
        .filter(|(_, run)| run.loss > 0.05)
        .map(|(name, run)| format!("{name} {:.0}%", run.loss * 100.0))
        .collect();
    if !lossy.is_empty() {
        r.notes.push(format!(
            "Loss above 5% ({}): frames the generator offered faster than the veth/bridge chain could carry them are \
             dropped at full veth rings, before or after the balancer (compare 'at balancer' with 'offered').",
            lossy.join(", ")
        ));
    }
}
