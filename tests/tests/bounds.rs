//! Every endpoint of lbd is bounded, and nothing a local user or a big table does takes backends down: the real
//! lbd in the lab, with its descriptor limit at 1,024 as service managers set it, under 1,100 idle connections to
//! /metrics; health probes that fail on lbd's own host (out of local ports here) counted as unknown, not against
//! the backend; `lbctl flows` on a large flow table, answered in bounded pieces while lbd goes on.
//! Needs root; prints a skip reason otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use lb_common::{FlowKey, FlowState, maps};
use lb_tests::harness::netns::skip_unless_root;
use lb_tests::harness::wait;
use lb_tests::lab::daemon::Lbd;
use lb_tests::lab::{self, Lab, LabOptions};
use lb_userspace::control::api::{MAX_FLOWS, Request, Response};
use lb_userspace::health::BackendHealth;

fn health(lbd: &Lbd) -> Vec<BackendHealth> {
    match lbd.call(&Request::Health) {
        Response::Health(rows) => rows,
        other => panic!("Health: {other:?}"),
    }
}

/// Flips and unknown (locally failed) probes over every row.
fn flips_and_unknown(rows: &[BackendHealth]) -> (u64, u64) {
    (
        rows.iter().map(|r| r.transitions).sum(),
        rows.iter().map(|r| r.unknown).sum(),
    )
}

fn start(edit: impl FnOnce(&mut toml::Table), nofile: Option<(u64, u64)>) -> (Lab, Lbd) {
    let lab = Lab::new(&LabOptions::default());
    let cfg = lab.write_config("lbd.toml", edit);
    let lbd = Lbd::start_with_nofile(&lab, &cfg, nofile);
    lbd.wait_all_backends_up(&lab, Duration::from_secs(20));
    (lab, lbd)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The test process itself holds the 1,100 connections: its own soft limit goes up to its hard limit.
fn raise_own_nofile(need: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard >= need,
        "this test needs {need} descriptors; the hard limit is {hard}"
    );
    if soft < need {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
}

/// With lbd's descriptor limit at 1,024 (soft and hard, so its own raise cannot help), 1,100 idle connections to
/// /metrics — every local user can open them — leave lbd's descriptors, its probes and every backend alone: lbd
/// serves at most `metrics::MAX_CONNECTIONS` at once, closes the others at once and the idle ones after
/// `metrics::IDLE_TIMEOUT`, after which /metrics answers again while the 1,100 are still open on the client's side.
#[test]
fn idle_metrics_connections_leave_probes_and_backends_alone() {
    use lb_userspace::metrics::{IDLE_TIMEOUT, MAX_CONNECTIONS};
    if skip_unless_root("idle_metrics_connections_leave_probes_and_backends_alone") {
        return;
    }
    const IDLE: usize = 1100;
    raise_own_nofile(IDLE as u64 + 256);
    let (lab, lbd) = start(|_| {}, Some((1024, 1024)));
    assert!(
        lbd.log_text().contains("descriptor limit 1024"),
        "lbd runs with another limit:\n{}",
        lbd.log_text()
    );
    let pid = lbd.pid().expect("lbd runs");
    let before = flips_and_unknown(&health(&lbd));
    let addr = lbd.metrics_addr();

    let idle: Vec<TcpStream> = lab.balancer.ns.run(|| {
        (0..IDLE)
            .map(|i| {
                TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("idle connection {i} to {addr}: {e}"))
            })
            .collect()
    });
    // Six probe intervals of the lab's checks (500 ms, fall 2) with all of them open.
    let held = Instant::now();
    let mut most_fds = 0;
    while held.elapsed() < Duration::from_secs(3) {
        most_fds = most_fds.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows = health(&lbd);
    println!(
        "{IDLE} idle connections: lbd held at most {most_fds} descriptors; (flips, unknown) {before:?} -> {:?}",
        flips_and_unknown(&rows)
    );
    assert!(
        rows.iter().all(|r| r.up),
        "a backend went down: {rows:#?}\nlbd log:\n{}",
        lbd.log_text()
    );
    assert_eq!(
        flips_and_unknown(&rows),
        before,
        "probes failed (locally or not) while the connections were open: {rows:#?}"
    );
    assert!(
        most_fds < 1024 - 100,
        "lbd came within 100 of its limit: {most_fds} descriptors"
    );

    // Bounded time: the idle ones lbd kept are closed after IDLE_TIMEOUT, then /metrics answers (the 1,100 are
    // still open on this side).
    let body = wait::until(
        "/metrics to answer",
        IDLE_TIMEOUT + Duration::from_secs(20),
        Duration::from_millis(200),
        || lbd.try_metrics(),
        |e| e.to_string(),
    );
    let refused: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("lb_metrics_connections_refused_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no refused count in:\n{body}"));
    assert!(
        refused >= (IDLE - MAX_CONNECTIONS) as u64,
        "{refused} connections refused of {IDLE} with a cap of {MAX_CONNECTIONS}"
    );
    // Every idle connection was closed by lbd: over the cap at once, the others after the idle timeout.
    for (i, mut s) in idle.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "idle connection {i} got an answer: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            // A connection closed with unread data in lbd's buffers is reset rather than closed: closed all the same.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("idle connection {i} still open: {e}"),
        }
    }
    assert_eq!(
        flips_and_unknown(&health(&lbd)).0,
        before.0,
        "a backend flipped"
    );
}

/// Started with the soft limit service managers give (1,024) under a higher hard one, lbd runs with the hard one.
#[test]
fn lbd_raises_its_soft_descriptor_limit_to_the_hard_one() {
    if skip_unless_root("lbd_raises_its_soft_descriptor_limit_to_the_hard_one") {
        return;
    }
    let (_lab, lbd) = start(|_| {}, Some((1024, 8192)));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", lbd.pid().expect("lbd runs")))
        .expect("/proc/<lbd>/limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["8192", "8192"],
        "{open_files}"
    );
    assert!(
        lbd.log_text()
            .contains("descriptor limit raised from 1024 to 8192"),
        "{}",
        lbd.log_text()
    );
}

/// A probe that fails on lbd's host says nothing about the backend. With the balancer namespace's local port range
/// cut to four ports, TCP connects and HTTP probes soon fail with EADDRNOTAVAIL (each used port stays in TIME_WAIT
/// towards its backend for a minute): they are counted as unknown, no backend leaves its ring, and the probes pass
/// again once ports are back.
#[test]
fn probes_failing_on_this_host_are_unknown_not_down() {
    if skip_unless_root("probes_failing_on_this_host_are_unknown_not_down") {
        return;
    }
    let (lab, lbd) = start(|_| {}, None);
    let ns = &lab.balancer.ns;
    let range = ns.exec(&["sysctl", "-n", "net.ipv4.ip_local_port_range"]);
    let range = range.split_whitespace().collect::<Vec<_>>().join(" ");
    let before = flips_and_unknown(&health(&lbd));
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40003");
    // Restores the range when the test ends, also on a panic.
    struct Restore<'a>(&'a lb_tests::harness::netns::NetNs, String);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.0.sysctl("net.ipv4.ip_local_port_range", &self.1);
        }
    }
    let restore = Restore(ns, range);

    // Long enough for every TCP/HTTP target to run out and then for `fall` (2) of its probes to fail over and over.
    let deadline = Instant::now() + Duration::from_secs(15);
    let rows = loop {
        let rows = health(&lbd);
        let out_of_ports = rows
            .iter()
            .filter(|r| {
                r.unknown + r.failures >= 4
                    && r.last_reason.contains("Cannot assign requested address")
            })
            .count();
        if out_of_ports >= 3 {
            std::thread::sleep(Duration::from_secs(2));
            break health(&lbd);
        }
        assert!(
            Instant::now() < deadline,
            "probes did not run out of local ports within 15 s: {rows:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in &rows {
        println!(
            "{} {} {:?}: up {} unknown {} failures {} last {:?}",
            r.key.vip, r.key.backend, r.kind, r.up, r.unknown, r.failures, r.last_reason
        );
    }
    assert!(
        rows.iter().all(|r| r.up),
        "a local failure took a backend down: {rows:#?}\nlbd log:\n{}",
        lbd.log_text()
    );
    assert_eq!(
        flips_and_unknown(&rows).0,
        before.0,
        "a backend flipped: {rows:#?}"
    );
    // Scraping needs a local port too.
    drop(restore);
    let metrics = lbd.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lb_backend_health_checks_total{")
                && l.contains("result=\"unknown\"")),
        "{metrics}"
    );
    assert!(
        lbd.log_text()
            .contains("health probe failed on this host, not counted against the backend"),
        "{}",
        lbd.log_text()
    );
    // With ports back, every probe passes again.
    wait::until(
        "every probe to pass again",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let rows = health(&lbd);
            if rows.iter().all(|r| r.last_ok == Some(true)) {
                Ok(())
            } else {
                Err(rows)
            }
        },
        |rows| format!("{rows:#?}"),
    );
}

/// Fills lbd's pinned flow table with `n` entries of the IPv4 HTTP VIP's backends.
fn fill_flows(lab: &Lab, lbd: &Lbd, n: u32) {
    use aya::maps::{HashMap, Map, MapData};
    let ids: Vec<u32> = match lbd.call(&Request::VipList) {
        Response::Vips(v) => v
            .iter()
            .find(|v| v.vip.address == std::net::IpAddr::V4(lab::VIP_V4) && v.vip.port == 80)
            .expect("the IPv4 HTTP VIP")
            .backends
            .iter()
            .map(|b| b.id)
            .collect(),
        other => panic!("VipList: {other:?}"),
    };
    let path = lb_userspace::pins::maps_dir(lab.pin_dir.path()).join(maps::FLOWS);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut flows: HashMap<MapData, FlowKey, FlowState> =
        HashMap::try_from(Map::LruHashMap(data)).expect("LB_FLOWS is an LRU hash");
    for i in 0..n {
        // 198.18.128.0/17 sources, every port: distinct 5-tuples, all for the VIP.
        let src = std::net::Ipv4Addr::from(
            u32::from(std::net::Ipv4Addr::new(198, 18, 128, 0)) + (i >> 14),
        );
        let key = FlowKey::new(
            src.into(),
            (1024 + (i & 0x3fff)) as u16,
            lab::VIP_V4.into(),
            80,
            lb_common::IPPROTO_TCP,
        );
        let state = FlowState::new(&key, ids[i as usize % ids.len()]);
        flows.insert(key, state, 0).expect("insert a flow");
    }
}

/// `lbctl flows` on a 200,000-entry flow table: the default answer is 100 entries, the largest 100,000, sent in
/// pieces (lines) of bounded size as lbd walks the table on a descriptor of its own; a client that stops reading is
/// let go after the write timeout, and meanwhile lbd answers lbctl and /metrics, applies edits and keeps probing.
#[test]
fn flows_are_capped_streamed_and_leave_lbd_responsive() {
    use lb_userspace::control::api::FLOWS_PER_PART;
    use lb_userspace::control::server::WRITE_TIMEOUT;
    if skip_unless_root("flows_are_capped_streamed_and_leave_lbd_responsive") {
        return;
    }
    const FLOWS: u32 = 200_000;
    let (lab, lbd) = start(
        |cfg| {
            cfg["daemon"]
                .as_table_mut()
                .expect("[daemon]")
                .insert("flow_table_size".into(), 262_144.into());
        },
        None,
    );
    let filled = Instant::now();
    fill_flows(&lab, &lbd, FLOWS);
    println!("{FLOWS} flows written in {:?}", filled.elapsed());

    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json", "flows"];
        all.extend_from_slice(args);
        let out = lbd.lbctl(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("lbctl {all:?}: {e}"))
    };
    assert_eq!(json(&[]).as_array().map(Vec::len), Some(100), "the default");
    let all = json(&["--limit", &MAX_FLOWS.to_string()]);
    let all = all.as_array().expect("an array");
    assert_eq!(all.len(), MAX_FLOWS, "the cap, of a larger table");
    assert!(
        all.iter()
            .all(|f| f["vip"]["address"] == lab::VIP_V4.to_string() && f["backend"].is_string()),
        "every flow names its VIP and backend: {:?}",
        &all[..3]
    );
    let out = lbd.lbctl_output(&["flows", "--limit", &(MAX_FLOWS + 1).to_string()]);
    assert_eq!(out.status.code(), Some(2), "over the cap: {out:?}");

    // lbd holds other clients to the cap too.
    let mut s = UnixStream::connect(lbd.socket()).expect("connect");
    s.write_all(format!("{{\"type\":\"flows\",\"limit\":{}}}\n", MAX_FLOWS + 1).as_bytes())
        .expect("request");
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .expect("an answer");
    match serde_json::from_str::<Response>(&answer) {
        Ok(Response::Error { message }) => assert!(message.contains("1..=100000"), "{message}"),
        other => panic!("over the cap: {:.300}", format!("{other:?}")),
    }

    // The raw protocol: the answer comes as pieces of at most FLOWS_PER_PART entries, one line each.
    let request = format!("{{\"type\":\"flows\",\"limit\":{MAX_FLOWS}}}\n");
    let mut s = UnixStream::connect(lbd.socket()).expect("connect");
    s.write_all(request.as_bytes()).expect("request");
    let (mut lines, mut entries, mut longest) = (0, 0, 0);
    for line in BufReader::new(&s).lines() {
        let line = line.expect("a line");
        lines += 1;
        longest = longest.max(line.len());
        let part: Response = serde_json::from_str(&line).expect("a response");
        match part {
            Response::FlowsPart(f) => {
                assert!(f.len() <= FLOWS_PER_PART, "a piece of {}", f.len());
                entries += f.len();
            }
            Response::Flows(f) => {
                entries += f.len();
                break;
            }
            other => panic!("in a flows answer: {other:?}"),
        }
    }
    println!("{entries} flows in {lines} lines, the longest {longest} bytes");
    assert_eq!(entries, MAX_FLOWS);
    assert!(lines >= MAX_FLOWS / FLOWS_PER_PART, "{lines} lines");
    assert!(longest < 400 * FLOWS_PER_PART, "a line of {longest} bytes");

    // A client that asks for the most and reads nothing: lbd goes on with everything else...
    let before = flips_and_unknown(&health(&lbd));
    let mut stalled = UnixStream::connect(lbd.socket()).expect("connect");
    stalled.write_all(request.as_bytes()).expect("request");
    let stalled_at = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let status = lbd.lbctl(&["status"]);
    assert!(status.contains("eth0"), "{status}");
    lbd.lbctl(&[
        "backend",
        "weight",
        &format!("{}:80/tcp", lab::VIP_V4),
        &lab::backend_v4(2).to_string(),
        "200",
    ]);
    lbd.metrics();
    // ...and lets it go after WRITE_TIMEOUT: what the client then reads ends before the whole answer.
    stalled
        .set_read_timeout(Some(WRITE_TIMEOUT + Duration::from_secs(30)))
        .expect("timeout");
    std::thread::sleep(WRITE_TIMEOUT + Duration::from_secs(2));
    let mut got = Vec::new();
    let read = stalled.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    let complete = text.lines().any(|l| l.starts_with("{\"type\":\"flows\""));
    println!(
        "stalled client: {} bytes, then {read:?}, {:?} after asking",
        got.len(),
        stalled_at.elapsed()
    );
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "lbd did not close the stalled connection: {read:?}"
    );
    assert!(!complete, "the stalled client got the whole answer");
    let after = health(&lbd);
    assert!(after.iter().all(|r| r.up), "{after:#?}");
    assert_eq!(
        flips_and_unknown(&after),
        before,
        "probes failed meanwhile: {after:#?}"
    );
}
