//! lbd as a `Type=notify` service with a watchdog, on a real lbd in the lab. The test plays the service manager's
//! side of the protocol: it binds the notification socket, starts lbd with NOTIFY_SOCKET, WATCHDOG_USEC and
//! WATCHDOG_PID as systemd sets them, and checks that READY=1 comes only once lbd serves (program attached, control
//! socket answering, /metrics listening), that WATCHDOG=1 keeps coming, and STOPPING=1 on SIGTERM. Every other lab
//! test starts lbd without NOTIFY_SOCKET, which must change nothing. Needs root; prints a skip reason otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use lb_tests::harness::netns::{run_cmd, skip_unless_root};
use lb_tests::lab::daemon::{Launch, Lbd};
use lb_tests::lab::{self, Lab, LabOptions};
use lb_userspace::control::api::{Request, Response};
use lb_userspace::control::client::Client;

/// systemd's timeout for the test: lbd pings every half of it.
const WATCHDOG: Duration = Duration::from_secs(1);

/// The next datagram within `limit`, as its lines.
fn next(sock: &UnixDatagram, limit: Duration) -> Option<Vec<String>> {
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(limit.max(Duration::from_millis(1))))
        .expect("timeout");
    match sock.recv(&mut buf) {
        Ok(n) => Some(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned)
                .collect(),
        ),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("receiving notifications: {e}"),
    }
}

/// Every datagram received within `limit`.
fn receive(sock: &UnixDatagram, limit: Duration) -> Vec<Vec<String>> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while let Some(m) = next(sock, deadline.saturating_duration_since(Instant::now())) {
        out.push(m);
        if Instant::now() >= deadline {
            break;
        }
    }
    out
}

#[test]
fn ready_once_serving_watchdog_pings_and_stopping() {
    if skip_unless_root("ready_once_serving_watchdog_pings_and_stopping") {
        return;
    }
    let lab = Lab::new(&LabOptions::default());
    let cfg = lab.write_config("lbd.toml", |_| {});
    let path = lab.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notification socket");
    let launch = Launch {
        // systemd sets WATCHDOG_PID to the main process; the shell replaces itself with lbd, keeping its pid.
        wrapper: vec![
            "sh".into(),
            "-c".into(),
            r#"export WATCHDOG_PID=$$; exec "$0" "$@""#.into(),
        ],
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), WATCHDOG.as_micros().to_string()),
        ],
        ..Launch::default()
    };
    let socket = lab.socket_path();
    let metrics_addr = lb_userspace::config::Config::load(&cfg)
        .expect("the lab config loads")
        .daemon
        .metrics_addr;
    let (lbd, at_ready) = std::thread::scope(|s| {
        // At the moment READY=1 arrives, everything it promises must already hold: no retries here.
        let checker = s.spawn(|| {
            let first = next(&sock, Duration::from_secs(60)).expect("no notification within 60 s");
            let status = Client::connect(&socket)
                .and_then(|mut c| c.call(&Request::Status))
                .map(|r| matches!(r, Response::Status(ref s) if s.attached))
                .unwrap_or(false);
            let xdp = lab
                .balancer
                .ns
                .ip(&["link", "show", "dev", lab::HOST_IF])
                .contains("prog/xdp");
            let metrics = lab
                .balancer
                .ns
                .run(|| std::net::TcpStream::connect(metrics_addr).is_ok());
            (first, status, xdp, metrics)
        });
        let lbd = Lbd::start_with(&lab, &cfg, launch);
        (lbd, checker.join().expect("checker thread"))
    });
    let (first, status, xdp, metrics) = at_ready;
    println!("first notification: {first:?}");
    assert!(
        first.iter().any(|l| l == "READY=1"),
        "the first notification is not READY=1: {first:?}"
    );
    assert!(
        first.iter().any(|l| l.starts_with("STATUS=serving 3 VIPs")),
        "no status line with READY: {first:?}"
    );
    assert!(
        status,
        "READY=1 before the control socket answered with lb_xdp attached"
    );
    assert!(xdp, "READY=1 before lb_xdp was on the interface");
    assert!(metrics, "READY=1 before /metrics listened");
    assert!(
        lbd.log_text().contains("systemd watchdog enabled"),
        "lbd did not see the watchdog; log:\n{}",
        lbd.log_text()
    );

    // Pings every WATCHDOG/2: 4 s hold about 8; at least 3 leaves room for a slow, shared machine.
    let pings = receive(&sock, 4 * WATCHDOG)
        .into_iter()
        .filter(|m| m.iter().any(|l| l == "WATCHDOG=1"))
        .count();
    println!("{pings} watchdog pings in {:?}", 4 * WATCHDOG);
    assert!(pings >= 3, "{pings} WATCHDOG=1 in {:?}", 4 * WATCHDOG);

    let pid = lbd.pid().expect("lbd runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM lbd");
    let after = receive(&sock, Duration::from_secs(10));
    assert!(
        after.iter().flatten().any(|l| l == "STOPPING=1"),
        "no STOPPING=1 after SIGTERM: {after:?}"
    );
}

/// The unit file as shipped.
fn unit_text() -> String {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/lbd.service");
    std::fs::read_to_string(&unit).unwrap_or_else(|e| panic!("{}: {e}", unit.display()))
}

/// The values of every `key=` line of the unit, in order.
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

/// `systemd-analyze syscall-filter`: every group and its members (system calls and nested groups).
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let out = run_cmd(Command::new("systemd-analyze").arg("syscall-filter"));
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in out.lines() {
        if line.starts_with('@') {
            let name = line
                .split_whitespace()
                .next()
                .expect("group name")
                .to_owned();
            groups.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if let (Some(g), Some(word)) = (&current, line.split_whitespace().next())
            && !word.starts_with('#')
        {
            groups.get_mut(g).expect("group").push(word.to_owned());
        }
    }
    groups
}

fn expand(name: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
    match groups.get(name) {
        Some(members) if name.starts_with('@') => {
            for m in members {
                expand(m, groups, out);
            }
        }
        _ => {
            out.insert(name.to_owned());
        }
    }
}

/// The system calls the unit's SystemCallFilter= lines allow, read as systemd reads them: the first line is an
/// allow list, each later one adds to it or (`~`) takes away from it.
fn allowed_syscalls(text: &str) -> BTreeSet<String> {
    let groups = syscall_groups();
    let mut allowed = BTreeSet::new();
    let lines = unit_values(text, "SystemCallFilter");
    assert!(
        lines.first().is_some_and(|l| !l.starts_with('~')),
        "the unit's first SystemCallFilter= must be an allow list: {lines:?}"
    );
    for line in lines {
        let (deny, list) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        let mut set = BTreeSet::new();
        for item in list.split_whitespace() {
            expand(item, &groups, &mut set);
        }
        if deny {
            allowed.retain(|s| !set.contains(s));
        } else {
            allowed.extend(set);
        }
    }
    allowed
}

/// lbd under strace through everything it does while running — start, health checks of every kind over IPv4 and
/// IPv6, /metrics, lbctl reads and edits, a SIGHUP reload, announcing with `[announce]` on (routes written and
/// removed over rtnetlink, `lbctl announce drain` and `undrain`), `lbctl shutdown --detach` — and every system call it
/// made and every socket family it opened must be allowed by the unit's SystemCallFilter= and
/// RestrictAddressFamilies=. systemd is not PID 1 on the machines this runs on, so the unit's sandbox cannot be
/// started as a service here; this checks the lists against what lbd really calls instead.
#[test]
fn the_units_syscall_filter_and_address_families_cover_what_lbd_calls() {
    if skip_unless_root("the_units_syscall_filter_and_address_families_cover_what_lbd_calls") {
        return;
    }
    for tool in ["strace", "systemd-analyze"] {
        if which::which(tool).is_err() {
            println!("SKIP: {tool} is not installed (cargo xtask setup installs it)");
            return;
        }
    }
    let text = unit_text();
    let allowed = allowed_syscalls(&text);
    let families: BTreeSet<String> = unit_values(&text, "RestrictAddressFamilies")
        .iter()
        .flat_map(|l| l.split_whitespace().map(str::to_owned))
        .collect();
    assert!(
        !families.is_empty(),
        "the unit sets no RestrictAddressFamilies="
    );

    let mut lab = Lab::new(&LabOptions::default());
    let drained = lab.dir.path().join("announce-drained");
    let cfg = lab.write_config("lbd.toml", |cfg| {
        // An HTTPS check too, so the TLS path is traced.
        let vips = cfg.get_mut("vip").and_then(|v| v.as_array_mut()).expect("[[vip]]");
        let mut v = vips[0].as_table().expect("vip table").clone();
        v.insert("address".into(), lab::VIP2_V4.to_string().into());
        v.insert(
            "health".into(),
            toml::Value::Table(
                toml::from_str(&format!(
                    "kind = \"https\"\nport = {}\npath = \"/\"\ntls_server_name = \"{}\"\ntls_ca_file = \"{}\"\n\
                     interval_ms = 300\ntimeout_ms = 250",
                    lab::HTTPS_PORT,
                    lab::pki::BACKEND_TLS_NAME,
                    lab.pki.ca.display()
                ))
                .expect("https health"),
            ),
        );
        vips.push(toml::Value::Table(v));
        // Announcing on, so the rtnetlink route reads and writes are traced too (AF_NETLINK).
        let mut a = toml::Table::new();
        a.insert("enabled".into(), true.into());
        a.insert("hold_down_ms".into(), 300.into());
        a.insert(
            "drain_file".into(),
            drained.display().to_string().into(),
        );
        cfg.insert("announce".into(), toml::Value::Table(a));
    });
    let trace = lab.dir.path().join("lbd.strace");
    let lbd = Lbd::start_with(
        &lab,
        &cfg,
        Launch {
            wrapper: vec![
                "strace".into(),
                "-f".into(),
                "-qq".into(),
                "-o".into(),
                trace.display().to_string(),
            ],
            ..Launch::default()
        },
    );
    lbd.wait_all_backends_up(&lab, Duration::from_secs(30));
    let vip2 = format!("{}:{}/tcp", lab::VIP2_V4, lab::HTTP_PORT);
    let b0 = lab::backend_v4(0).to_string();
    lbd.wait_backend_state(lab::backend_v4(0), true, Duration::from_secs(30));
    let _ = lbd.metrics();
    for args in [
        vec!["stats"],
        vec!["health"],
        vec!["flows"],
        vec!["vip", "list"],
        vec!["backend", "drain", &vip2, &b0],
        vec!["backend", "weight", &vip2, &b0, "100"],
        vec!["reload"],
        vec!["announce"],
        vec!["announce", "drain"],
        vec!["announce", "undrain"],
    ] {
        lbd.lbctl(&args);
    }
    lab.stop_server(1);
    lbd.wait_backend_state(lab::backend_v4(1), false, Duration::from_secs(30));
    lbd.shutdown_detach();

    let strace =
        std::fs::read_to_string(&trace).unwrap_or_else(|e| panic!("{}: {e}", trace.display()));
    let mut called = BTreeSet::new();
    let mut opened = BTreeSet::new();
    for line in strace.lines() {
        // "<pid> name(args..." — resumed and exit lines start otherwise.
        let Some(call) = line.split_once(' ').map(|(_, c)| c.trim_start()) else {
            continue;
        };
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        called.insert(name.to_owned());
        if name == "socket"
            && let Some(family) = args.split(',').next()
        {
            opened.insert(family.trim().to_owned());
        }
    }
    // strace's own exec of lbd is the first line; execve is allowed anyway (systemd's filter starts at exec).
    println!("lbd called {} system calls: {called:?}", called.len());
    println!("and opened sockets of {opened:?}");
    assert!(
        called.contains("bpf") && called.len() > 20,
        "the trace looks empty: {called:?}"
    );
    assert!(
        opened.contains("AF_NETLINK"),
        "no netlink socket in the trace: the announcement routes were not traced ({opened:?})"
    );
    let outside: Vec<&String> = called.difference(&allowed).collect();
    assert!(
        outside.is_empty(),
        "lbd called system calls the unit's SystemCallFilter= refuses: {outside:?}"
    );
    let refused: Vec<&String> = opened.difference(&families).collect();
    assert!(
        refused.is_empty(),
        "lbd opened sockets the unit's RestrictAddressFamilies= refuses: {refused:?} (allowed {families:?})"
    );
}
