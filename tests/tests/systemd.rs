//! lbd as a `Type=notify` service with a watchdog, on a real lbd in the lab. The test plays the service manager's
//! side of the protocol: it binds the notification socket, starts lbd with NOTIFY_SOCKET, WATCHDOG_USEC and
//! WATCHDOG_PID as systemd sets them, and checks that READY=1 comes only once lbd serves (program attached, control
//! socket answering, /metrics listening), that WATCHDOG=1 keeps coming, and STOPPING=1 on SIGTERM. Every other lab
//! test starts lbd without NOTIFY_SOCKET, which must change nothing. Needs root; prints a skip reason otherwise.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use lb_tests::harness::netns::skip_unless_root;
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
