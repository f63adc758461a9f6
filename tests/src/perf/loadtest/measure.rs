//! What the load test reads from the machine: CPU time (whole machine, one process), an XDP program's kernel
//! run-time statistics, interface counters; and running the traffic tools with a hard time limit.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::harness::guards::ChildGuard;
use crate::harness::netns::NetNs;

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Busy CPU seconds of the whole machine so far (every CPU; idle and iowait excluded), from /proc/stat.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already inside user/nice]
    let busy: u64 = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / clock_ticks_per_s()
}

/// User + system CPU seconds of process `pid` (all its threads) so far.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks_per_s())
}

/// Kernel run-time statistics of one loaded program (BPF_ENABLE_STATS must be on).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgStats {
    pub runs: u64,
    pub run_ns: u64,
}

impl ProgStats {
    pub fn of(prog_id: u32) -> Result<ProgStats> {
        for info in aya::programs::loaded_programs() {
            let info = info.context("listing loaded BPF programs")?;
            if info.id() == prog_id {
                return Ok(ProgStats {
                    runs: info.run_count(),
                    run_ns: info.run_time().as_nanos() as u64,
                });
            }
        }
        bail!("BPF program id {prog_id} is not loaded")
    }

    /// ns per run between `self` (earlier) and `later`; 0 when nothing ran.
    pub fn ns_per_run(&self, later: &ProgStats) -> f64 {
        let runs = later.runs.saturating_sub(self.runs);
        if runs == 0 {
            return 0.0;
        }
        later.run_ns.saturating_sub(self.run_ns) as f64 / runs as f64
    }
}

/// Id of the XDP program attached to `ifname` in `ns` (from `ip -d -j link`).
pub fn xdp_prog_id(ns: &NetNs, ifname: &str) -> Result<u32> {
    let out = ns.exec(&["ip", "-d", "-j", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -j link`")?;
    v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .map(|id| id as u32)
        .with_context(|| format!("no XDP program attached to {ifname} in {}", ns.name()))
}

/// Packet counters of `ifname` in `ns`.
#[derive(Clone, Copy, Debug, Default)]
pub struct IfCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
}

pub fn if_counters(ns: &NetNs, ifname: &str) -> Result<IfCounters> {
    let out = ns.exec(&["ip", "-s", "-j", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -s -j link`")?;
    let s = &v[0]["stats64"];
    Ok(IfCounters {
        rx_packets: s["rx"]["packets"].as_u64().context("rx packets")?,
        tx_packets: s["tx"]["packets"].as_u64().context("tx packets")?,
    })
}

/// Transmit drops of every interface in `ns` whose name starts with `prefix`, by name.
pub fn tx_drops(ns: &NetNs, prefix: &str) -> Result<Vec<(String, u64)>> {
    let out = ns.exec(&["ip", "-s", "-j", "link", "show"]);
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -s -j link`")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?;
            let dropped = l["stats64"]["tx"]["dropped"].as_u64()?;
            name.starts_with(prefix)
                .then(|| (name.to_string(), dropped))
        })
        .collect())
}

/// Runs `cmd` to completion within `limit`, capturing its output; past the limit it is killed and this fails.
/// Every traffic tool runs through here, so no run of the load test can hang. The pipes are drained while the
/// tool runs: a tool that writes more than a pipe holds would otherwise block until the limit.
pub fn run_bounded(cmd: Command, what: &str, limit: Duration) -> Result<Output> {
    use std::io::Read;
    let mut cmd = cmd;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn(cmd, what);
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let child = guard.child_mut();
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = guard.child_mut().try_wait().context("wait")? {
            break status;
        }
        if Instant::now() >= deadline {
            // Dropping the guard kills the tool. The readers are not joined: a grandchild (under `timeout`, say)
            // may still hold the pipes open.
            drop(guard);
            bail!("{what} did not finish within {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Fails with the tool's stderr unless it exited 0.
pub fn check(out: &Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails naming the Debian package when a tool the load test runs is not installed.
pub fn require_tools() -> Result<()> {
    let tools = [
        ("trafgen", "netsniff-ng"),
        ("wrk", "wrk"),
        ("iperf3", "iperf3"),
        ("haproxy", "haproxy"),
        ("nginx", "nginx"),
        ("nft", "nftables"),
    ];
    let missing: Vec<String> = tools
        .iter()
        .filter(|(bin, _)| which::which(bin).is_err())
        .map(|(bin, pkg)| format!("{bin} (apt: {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the load test needs {}; `cargo xtask setup` installs them",
            missing.join(", ")
        );
    }
    Ok(())
}
