//! Phase 2, requests: `wrk` from the client namespace to the VIP, with persistent connections and with a new
//! connection per request, through three balancers in turn on the same lab: lbd with `lb_xdp` (IPIP, direct server
//! return), HAProxy in TCP mode on the balancer host, and an nftables DNAT balancer (jhash over the client's address
//! and port, masquerade so replies come back through it, as a NAT balancer needs).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::measure::{ProgStats, check, machine_busy_seconds, process_cpu_seconds, run_bounded};
use super::results::WrkRun;
use crate::harness::guards::ChildGuard;
use crate::harness::netns::NetNs;
use crate::lab::{self, HOST_IF, Lab};

/// Open connections per wrk run (two wrk threads: the machine has few cores and the backends need them too).
pub const CONNECTIONS: u32 = 32;
const THREADS: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    NewConnection,
}

/// Where the balancer's CPU time can be read for a run.
pub enum BalancerCpu {
    /// The XDP programs of the balancers under test, by program id (kernel run-time statistics, summed).
    XdpPrograms(Vec<u32>),
    /// A process (HAProxy): user + system time.
    Process(u32),
    /// Not attributable (nftables runs in softirq context, shared with every namespace).
    None,
}

fn vip_url() -> String {
    format!(
        "http://{}/",
        SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::HTTP_PORT)
    )
}

/// One wrk run from `client` against the VIP; `seconds` is rounded up to whole seconds (wrk's unit). `backends`:
/// the backends' server processes, whose CPU time is read around the run.
pub fn wrk(
    client: &NetNs,
    mode: Mode,
    seconds: f64,
    cpu: &BalancerCpu,
    backends: &[u32],
) -> Result<WrkRun> {
    let secs = seconds.ceil().max(1.0) as u64;
    let threads = format!("-t{THREADS}");
    let conns = format!("-c{CONNECTIONS}");
    let duration = format!("-d{secs}s");
    let url = vip_url();
    let mut argv = vec![
        "wrk",
        &threads,
        &conns,
        &duration,
        "--latency",
        "--timeout",
        "5s",
    ];
    if mode == Mode::NewConnection {
        argv.extend(["-H", "Connection: close"]);
    }
    argv.push(&url);
    let progs: &[u32] = match cpu {
        BalancerCpu::XdpPrograms(ids) => ids,
        _ => &[],
    };
    let prog0 = progs
        .iter()
        .map(|&id| ProgStats::of(id))
        .collect::<Result<Vec<_>>>()?;
    let proc0 = match cpu {
        BalancerCpu::Process(pid) => process_cpu_seconds(*pid),
        _ => None,
    };
    let backends0: Vec<Option<f64>> = backends.iter().map(|&p| process_cpu_seconds(p)).collect();
    let busy0 = machine_busy_seconds();
    let started = Instant::now();
    let out = run_bounded(client.command(&argv), "wrk", Duration::from_secs(secs + 15))?;
    let wall = started.elapsed().as_secs_f64();
    let busy1 = machine_busy_seconds();
    let busiest = backends
        .iter()
        .zip(&backends0)
        .filter_map(|(&p, c0)| Some((process_cpu_seconds(p)? - (*c0)?) / wall))
        .reduce(f64::max);
    let text = check(&out, "wrk")?;
    let mut run = parse_wrk(&text).with_context(|| format!("parsing wrk's output:\n{text}"))?;
    run.connections = CONNECTIONS;
    run.busiest_backend_cpu = busiest;
    let reqs = run.requests.max(1) as f64;
    run.lab_cpu_us_per_req = (busy1 - busy0) * 1e6 / reqs;
    run.balancer_cpu_us_per_req = match cpu {
        BalancerCpu::XdpPrograms(ids) => {
            let mut run_ns = 0;
            for (&id, p0) in ids.iter().zip(&prog0) {
                run_ns += ProgStats::of(id)?.run_ns.saturating_sub(p0.run_ns);
            }
            Some(run_ns as f64 / 1e3 / reqs)
        }
        BalancerCpu::Process(pid) => match (proc0, process_cpu_seconds(*pid)) {
            (Some(a), Some(b)) => Some((b - a) * 1e6 / reqs),
            _ => None,
        },
        BalancerCpu::None => None,
    };
    Ok(run)
}

/// The figures of wrk's text report (`--latency`).
pub fn parse_wrk(text: &str) -> Result<WrkRun> {
    let mut run = WrkRun::default();
    let mut have = (false, false, false, false);
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line
            .strip_suffix(" read")
            .and_then(|l| l.split_once(" requests in "))
        {
            // "224426 requests in 5.02s, 32.75MB"
            run.requests = rest.0.trim().parse().context("request count")?;
            let secs = rest.1.split(',').next().unwrap_or("");
            run.seconds = duration_secs(secs).context("run time")?;
            have.0 = true;
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            run.req_per_s = v.trim().parse().context("Requests/sec")?;
            have.1 = true;
        } else if let Some(v) = line.strip_prefix("50%") {
            run.p50_ms = duration_secs(v.trim()).context("p50")? * 1e3;
            have.2 = true;
        } else if let Some(v) = line.strip_prefix("99%") {
            run.p99_ms = duration_secs(v.trim()).context("p99")? * 1e3;
            have.3 = true;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 62366, write 0, timeout 0": read errors are closes the request asked for.
            for part in v.split(',') {
                let mut kv = part.split_whitespace();
                if let (Some(k), Some(n)) = (kv.next(), kv.next())
                    && k != "read"
                {
                    run.errors += n.parse::<u64>().context("socket error count")?;
                }
            }
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += v.trim().parse::<u64>().context("non-2xx count")?;
        }
    }
    if !(have.0 && have.1 && have.2 && have.3) {
        bail!("missing figures (requests/time, Requests/sec, 50%, 99%)");
    }
    Ok(run)
}

/// "400.00us", "1.23ms", "5.02s", "1.00m" as seconds.
fn duration_secs(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(v * scale)
}

/// HAProxy (TCP mode, round robin over the lab's backends) on the balancer host, listening on the VIP, which it
/// holds on loopback while it runs. lbd must have detached lb_xdp first.
pub struct Haproxy<'a> {
    lab: &'a Lab,
    child: Option<ChildGuard>,
    pub log: PathBuf,
}

impl<'a> Haproxy<'a> {
    pub fn start(lab: &'a Lab) -> Result<Haproxy<'a>> {
        let servers: String = lab
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("    server b{i} {}:{}\n", b.host.v4, lab::HTTP_PORT))
            .collect();
        // nbthread 2: the machine's cores; maxconn stays far below any file-descriptor limit.
        let cfg = format!(
            "global\n    nbthread 2\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 2s\n    \
             timeout client 30s\n    timeout server 30s\nfrontend vip\n    bind {}:{}\n    default_backend \
             gateways\nbackend gateways\n    balance roundrobin\n{servers}",
            lab::VIP_V4,
            lab::HTTP_PORT
        );
        let path = lab.dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).with_context(|| format!("write {}", path.display()))?;
        let log = lab.dir.path().join("haproxy.log");
        let mut hap = Haproxy {
            lab,
            child: None,
            log: log.clone(),
        };
        lab.balancer
            .ns
            .add_addr("lo", &format!("{}/32", lab::VIP_V4));
        let logf =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd =
            lab.balancer
                .ns
                .command(&["haproxy", "-db", "-f", path.to_str().context("utf-8")?]);
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        hap.child = Some(ChildGuard::spawn(cmd, "haproxy"));
        wait_for_vip(lab, &mut hap.child, &log)?;
        Ok(hap)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for Haproxy<'_> {
    fn drop(&mut self) {
        self.child = None;
        let _ = self.lab.balancer.ns.exec_output(&[
            "ip",
            "addr",
            "del",
            &format!("{}/32", lab::VIP_V4),
            "dev",
            "lo",
        ]);
    }
}

/// Waits until a TCP connection from the client to the VIP succeeds (the balancer under test is ready).
fn wait_for_vip(lab: &Lab, child: &mut Option<ChildGuard>, log: &std::path::Path) -> Result<()> {
    let vip = SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::HTTP_PORT);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = lab
            .client()
            .ns
            .run(|| std::net::TcpStream::connect_timeout(&vip, Duration::from_millis(200)).is_ok());
        if ok {
            return Ok(());
        }
        if let Some(c) = child.as_mut()
            && !c.alive()
        {
            bail!(
                "{} exited at start:\n{}",
                c.what(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{vip} not reachable within 10 s:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const NAT_TABLE: &str = "lbt_dnat";

/// An nftables DNAT balancer on the balancer host: new connections to the VIP are spread by jhash of the client's
/// address and port over the backends, and masqueraded so replies return through the balancer. lbd must have
/// detached lb_xdp first.
pub struct NftDnat<'a> {
    lab: &'a Lab,
}

impl<'a> NftDnat<'a> {
    pub fn start(lab: &'a Lab) -> Result<NftDnat<'a>> {
        let n = lab.backends.len();
        let map: Vec<String> = lab
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i} : {}", b.host.v4))
            .collect();
        let addrs: Vec<String> = lab.backends.iter().map(|b| b.host.v4.to_string()).collect();
        let rules = format!(
            "table ip {NAT_TABLE} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy \
             accept;\n    ip daddr {vip} tcp dport {port} dnat to jhash ip saddr . tcp sport mod {n} map {{ {map} \
             }}\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip \
             daddr {{ {addrs} }} tcp dport {port} ct status dnat masquerade\n  }}\n}}\n",
            vip = lab::VIP_V4,
            port = lab::HTTP_PORT,
            map = map.join(", "),
            addrs = addrs.join(", "),
        );
        let ns = &lab.balancer.ns;
        // Backends share the client's segment: without this the balancer would tell the client to go direct.
        ns.sysctl("net.ipv4.conf.all.send_redirects", "0");
        ns.sysctl(&format!("net.ipv4.conf.{HOST_IF}.send_redirects"), "0");
        ns.exec(&["nft", &rules]);
        let nat = NftDnat { lab };
        wait_for_vip(lab, &mut None, std::path::Path::new("/dev/null"))?;
        Ok(nat)
    }
}

impl Drop for NftDnat<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .balancer
            .ns
            .exec_output(&["nft", "delete", "table", "ip", NAT_TABLE]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_wrk_report() {
        let text = "Running 5s test @ http://198.19.0.10/\n  2 threads and 32 connections\n  Thread Stats   Avg      \
                    Stdev     Max   +/- Stdev\n    Latency   745.46us  582.31us  10.59ms   80.90%\n  Latency \
                    Distribution\n     50%  614.00us\n     75%    0.99ms\n     90%    1.43ms\n     99%    2.68ms\n  \
                    62369 requests in 5.01s, 9.10MB read\n  Socket errors: connect 2, read 62366, write 1, timeout \
                    3\n  Non-2xx or 3xx responses: 4\nRequests/sec:  12457.96\nTransfer/sec:      1.82MB\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests, 62369);
        assert!((r.seconds - 5.01).abs() < 1e-9);
        assert!((r.req_per_s - 12457.96).abs() < 1e-9);
        assert!((r.p50_ms - 0.614).abs() < 1e-9);
        assert!((r.p99_ms - 2.68).abs() < 1e-9);
        assert_eq!(r.errors, 2 + 1 + 3 + 4);
        assert!(parse_wrk("Running 5s test\n").is_err());
    }
}
