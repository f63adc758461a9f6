//! `bench maglev`: Maglev build time, the kernel memory of the maps for 100 VIPs x 100 backends, the RSS of a real
//! lbd serving that config, and how long that lbd takes from a failed check of a backend every VIP shares to every
//! VIP's ring rid of it (`down_to_ring_ms`: lbd hands its entries over first) and to every VIP's exact Maglev table
//! installed (`down_to_maglev_ms`; the full run, see [`Options`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::guards::ChildGuard;
use crate::harness::netns::{NetNs, veth_pair};
use crate::lab::target_binary;
use lb_common::BackendId;
use lb_userspace::control::api::{Request, Response};
use lb_userspace::control::client::Client;
use lb_userspace::dataplane::{Dataplane, LoadOptions, MapSizes};
use lb_userspace::maglev;

use super::median;

const M: u32 = 65537;

/// How much to measure.
#[derive(Clone, Copy)]
pub struct Options {
    /// Builds per backend count; the figure is their median.
    pub builds: usize,
    /// The state whose map memory and lbd RSS are measured: this many VIPs with this many backends each.
    pub vips: u32,
    pub backends_per_vip: u32,
}

impl Options {
    /// What `cargo xtask bench maglev` measures.
    pub const FULL: Options = Options {
        builds: 7,
        vips: 100,
        backends_per_vip: 100,
    };
    /// One build per size and a small state, for the test suite: the figures mean nothing.
    pub const SMOKE: Options = Options {
        builds: 1,
        vips: 10,
        backends_per_vip: 10,
    };
}

pub struct Report {
    pub build_ms: BTreeMap<u32, f64>,
    pub map_bytes: u64,
    /// None when lbd could not be measured; the reason is in `notes`.
    pub lbd_rss_bytes: Option<u64>,
    /// From the log line of the failed check to the last VIP's ring without the failed backend (its entries handed
    /// over), by lbd's own clock; None when not measured (see `notes`).
    pub down_to_ring_ms: Option<f64>,
    /// The same to the last VIP's rebuilt Maglev table.
    pub down_to_maglev_ms: Option<f64>,
    pub notes: Vec<String>,
}

/// A failed check of the shared backend to the last ring rid of it, and to the last Maglev table rebuilt.
struct DownTo {
    ring_ms: f64,
    maglev_ms: f64,
}

pub fn run(opts: &Options) -> Report {
    let mut build_ms = BTreeMap::new();
    for n in [10, 100, 1000] {
        build_ms.insert(n, build_time_ms(n, opts.builds));
    }
    let map_bytes = map_bytes(opts);
    let mut notes = Vec::new();
    let (lbd_rss_bytes, down_to) = match lbd_figures(opts) {
        Ok(r) => r,
        Err(e) => {
            notes.push(format!("lbd not measured: {e}"));
            (None, None)
        }
    };
    Report {
        build_ms,
        map_bytes,
        lbd_rss_bytes,
        down_to_ring_ms: down_to.as_ref().map(|d| d.ring_ms),
        down_to_maglev_ms: down_to.as_ref().map(|d| d.maglev_ms),
        notes,
    }
}

fn build_time_ms(n: u32, builds: usize) -> f64 {
    let names: Vec<String> = (0..n)
        .map(|i| format!("198.18.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let backends: Vec<(BackendId, u32, &str)> = names
        .iter()
        .enumerate()
        .map(|(i, s)| (i as BackendId + 1, 100, s.as_str()))
        .collect();
    let mut ms: Vec<f64> = (0..builds)
        .map(|_| {
            let t = Instant::now();
            let table = std::hint::black_box(maglev::build(&backends, M));
            let el = t.elapsed().as_secs_f64() * 1e3;
            assert_eq!(
                table.len(),
                M as usize,
                "maglev::build returned a table of the wrong size"
            );
            el
        })
        .collect();
    median(&mut ms)
}

fn sizes(opts: &Options) -> MapSizes {
    MapSizes {
        // LB_VIPS also holds each VIP address's fragment-policy entry (address, port 0, protocol), which lbd's
        // config check does not count against max_vips: with max_vips = VIPs, lbd stops half-way through them.
        max_vips: 2 * opts.vips,
        // Ids are 1..max_backends: id 0 means "unset".
        max_backends: opts.vips * opts.backends_per_vip + 1,
        max_ring_size: M,
        ..MapSizes::default()
    }
}

/// Sums the kernel's `memlock` of every BPF map this process holds: the bench holds only the one Dataplane.
fn map_bytes(opts: &Options) -> u64 {
    let dp = Dataplane::load(&LoadOptions {
        sizes: sizes(opts),
        pin_dir: None,
        // The maps' memory is the figure; the programs add none of it.
        programs: &[],
    })
    .unwrap_or_else(|e| panic!("loading a Dataplane with {:?}: {e:#}", sizes(opts)));
    let mut total = 0;
    let mut maps = 0;
    for fd in std::fs::read_dir("/proc/self/fdinfo").expect("read /proc/self/fdinfo") {
        let Ok(info) = std::fs::read_to_string(fd.expect("fdinfo entry").path()) else {
            continue;
        };
        if !info.lines().any(|l| l.starts_with("map_type:")) {
            continue;
        }
        let memlock = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .map(|v| v.trim().parse::<u64>());
        total += memlock
            .expect("map fdinfo without memlock")
            .expect("memlock is a number");
        maps += 1;
    }
    assert!(maps > 0, "no BPF map fds found after loading the Dataplane");
    drop(dp);
    total
}

/// The backend every VIP has (the others are each VIP's own), in the prefix lbd's namespace takes as local.
const SHARED_BACKEND: &str = "198.18.255.1";
const BACKEND_PREFIX: &str = "198.18.128.0/17";
const CHECK_PORT: u16 = 7070;

/// The lbd config: `opts.vips` VIPs with `opts.backends_per_vip` backends each, one of them shared by all; no health
/// checks unless `checked` (so RSS is the state, not probe traffic), else a direct TCP check on [`CHECK_PORT`] (the
/// backends are local addresses, not hosts serving the VIPs) that takes a backend down at its first failure.
fn config(opts: &Options, ifname: &str, pin_dir: &str, sock: &str, checked: bool) -> String {
    let s = sizes(opts);
    let mut c = format!(
        "[daemon]\ninterface = \"{ifname}\"\nxdp_mode = \"generic\"\npin_dir = \"{pin_dir}\"\n\
         control_socket = \"{sock}\"\nmetrics_addr = \"127.0.0.1:9662\"\nencap_src_v4 = \"198.18.0.1\"\n\
         max_vips = {}\nmax_backends = {}\nmax_ring_size = {}\n",
        s.max_vips, s.max_backends, s.max_ring_size
    );
    let health = if checked {
        format!(
            "{{ kind = \"tcp\", target = \"direct\", port = {CHECK_PORT}, interval_ms = 1000, timeout_ms = 500, rise = 1, fall = 1 }}"
        )
    } else {
        "{ kind = \"none\" }".to_string()
    };
    for v in 0..opts.vips {
        write!(c, "\n[[vip]]\naddress = \"198.19.0.{}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"ipip\"\nhealth = {health}\nbackends = [\n    {{ address = \"{SHARED_BACKEND}\" }},\n", v + 1)
            .unwrap();
        for b in 1..opts.backends_per_vip {
            writeln!(c, "    {{ address = \"198.18.{}.{}\" }},", 128 + v, b).unwrap();
        }
        c.push_str("]\n");
    }
    c
}

/// A real lbd with the config of `opts`: its RSS once it serves every VIP without checks, then, reloaded with checks,
/// `down_to_ring_ms` and `down_to_maglev_ms` when the shared backend starts refusing connections.
fn lbd_figures(opts: &Options) -> Result<(Option<u64>, Option<DownTo>), String> {
    let lbd = std::panic::catch_unwind(|| target_binary("lbd"))
        .map_err(|_| "lbd binary not built".to_string())?;
    let pid = std::process::id();
    let ns = NetNs::new("bench");
    let peer = NetNs::new("benchp");
    let ifname = format!("lbb{pid}");
    veth_pair(&ns, &ifname, &peer, "p0");
    ns.link_up(&ifname);
    peer.link_up("p0");
    ns.add_addr(&ifname, "198.18.0.1/24");
    ns.link_up("lo");
    // Every backend address is this namespace's own, so one listener answers all their checks.
    ns.ip(&["route", "add", "local", BACKEND_PREFIX, "dev", "lo"]);
    let dir = std::env::temp_dir().join(format!("lb-bench-{pid}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let pin_dir = format!("/sys/fs/bpf/lb-bench-{pid}");
    let sock = dir.join("lbd.sock");
    let cfg = dir.join("lbd.toml");
    let write = |checked: bool| {
        std::fs::write(
            &cfg,
            config(opts, &ifname, &pin_dir, &sock.to_string_lossy(), checked),
        )
        .map_err(|e| e.to_string())
    };
    write(false)?;
    // nsenter keeps this mount namespace, where bpffs is mounted (`ip netns exec` remounts /sys).
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(&lbd)
        .arg("--config")
        .arg(&cfg);
    // lbd logs every VIP it adds: to a file, which a failure quotes and the ring figure is read from.
    let log = dir.join("lbd.log");
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    cmd.stdout(Stdio::null())
        .stderr(log_file)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    let mut child = ChildGuard::spawn(cmd, "lbd");
    let result = wait_and_measure(&mut child, &sock, opts.vips as usize, &log).and_then(|rss| {
        write(true)?;
        let ring = down_to_ring(&ns, &mut child, &sock, opts, &log)?;
        Ok((Some(rss), Some(ring)))
    });
    drop(child);
    let _ = std::fs::remove_dir_all(&pin_dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Reloads lbd with checks on, waits until every backend passes, makes the shared one refuse connections and reads
/// from lbd's log the times from its failed check to the last of the VIPs' rings rid of it, and rebuilt.
fn down_to_ring(
    ns: &NetNs,
    child: &mut ChildGuard,
    sock: &Path,
    opts: &Options,
    log: &Path,
) -> Result<DownTo, String> {
    let listener = ns
        .run(|| std::net::TcpListener::bind(("0.0.0.0", CHECK_PORT)))
        .map_err(|e| format!("listening for the checks: {e}"))?;
    // Accepted and dropped: a check is a connect. Blocking accept ends when the process does.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let call = |r: &Request| -> Result<Response, String> {
        Client::connect(sock)
            .and_then(|mut c| c.call(r))
            .map_err(|e| format!("{r:?}: {e}"))
    };
    match call(&Request::Reload)? {
        Response::Ok { .. } => {}
        other => return Err(format!("reload with checks answered {other:?}")),
    }
    let pairs = (opts.vips * opts.backends_per_vip) as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Response::Health(rows) = call(&Request::Health)?
            && rows.len() == pairs
            && rows.iter().all(|r| r.up && r.last_ok == Some(true))
        {
            break;
        }
        if !child.alive() || Instant::now() > deadline {
            return Err(format!(
                "the {pairs} backends did not all pass their checks within 60 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    ns.exec(&["nft", "add", "table", "inet", "lbbench"]);
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "lbbench",
        "out",
        "{ type filter hook output priority 0 ; }",
    ]);
    ns.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "lbbench",
        "out",
        "ip",
        "daddr",
        SHARED_BACKEND,
        "tcp",
        "dport",
        &CHECK_PORT.to_string(),
        "reject",
        "with",
        "tcp",
        "reset",
    ]);
    let vips = opts.vips as usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).map_err(|e| e.to_string())?;
        let lines: Vec<&str> = text.lines().collect();
        let failed = lines
            .iter()
            .filter(|l| l.contains("backend down") && l.contains(SHARED_BACKEND))
            .filter_map(|l| timestamp(l))
            .reduce(f64::min);
        let logged = |what: &str| -> Vec<f64> {
            lines
                .iter()
                .filter(|l| {
                    l.contains(what) && l.contains(SHARED_BACKEND) && l.contains("up=false")
                })
                .filter_map(|l| timestamp(l))
                .collect()
        };
        let (handed, rebuilt) = (logged("ring entries handed"), logged("ring rebuilt"));
        if let Some(first) = failed
            && handed.len() == vips
            && rebuilt.len() == vips
        {
            let last = |t: &[f64]| t.iter().copied().fold(f64::MIN, f64::max);
            // Where the time went: lbd logs each batch's work and its wait for the daemon's lock.
            let applied: Vec<&str> = lines
                .iter()
                .filter(|l| l.contains("health changes applied"))
                .filter(|l| timestamp(l).is_some_and(|t| t >= first))
                .copied()
                .collect();
            eprintln!(
                "lb-bench maglev: {} health batches after the failed check:\n{}",
                applied.len(),
                applied.join("\n")
            );
            return Ok(DownTo {
                ring_ms: (last(&handed) - first) * 1e3,
                maglev_ms: (last(&rebuilt) - first) * 1e3,
            });
        }
        if !child.alive() || Instant::now() > deadline {
            return Err(format!(
                "lbd logged, for {SHARED_BACKEND} within 30 s, {} of {vips} rings handed over and {} rebuilt (failed \
                 check logged: {})",
                handed.len(),
                rebuilt.len(),
                failed.is_some()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Seconds of the day of a tracing log line (`2026-12-02T00:52:02.123456Z ...`).
fn timestamp(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.strip_suffix('Z')?;
    let clock = t.split('T').nth(1)?;
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Waits until lbd serves every VIP of its config, then reads its RSS. The figure stands only if lbd still runs
/// after the reading: a daemon that is still starting, or failing, does not hold the state being measured.
fn wait_and_measure(
    child: &mut ChildGuard,
    sock: &Path,
    vips: usize,
    log: &Path,
) -> Result<u64, String> {
    let died = |what: &str| {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        format!(
            "lbd {what}; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if !child.alive() {
            return Err(died("exited before serving its config"));
        }
        if Instant::now() > deadline {
            return Err(died(&format!("did not serve its {vips} VIPs within 120 s")));
        }
        // lbd answers on its control socket only once the whole config is in the maps.
        if let Ok(mut c) = Client::connect(sock)
            && let Ok(Response::Status(s)) = c.call(&Request::Status)
            && s.vips == vips
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // nsenter execs lbd, so the child pid is lbd's.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .map_err(|e| died(&format!("could not be measured ({e})")))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| died("has no VmRSS in /proc/<lbd>/status"))?;
    if !child.alive() {
        return Err(died("exited while it was measured"));
    }
    Ok(kb * 1024)
}
