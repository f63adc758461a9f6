//! `lbctl` (the real binary, a separate process) against the real control server with an in-process fake
//! `Handler` (the tests named `fake_handler_*`): every command round-trips with `--json` and sends the request it
//! should; a streamed answer arrives whole; the handler learns the uid and pid of the process on the other end; the
//! daemon-not-running and permission errors are clear and exit non-zero; the socket is 0600 in a 0700 directory and
//! refuses other users; connections over the cap are refused and idle ones closed.
//!
//! Needs `lbctl` built next to this test (`cargo build -p lb-userspace --bins`). The lab test (`e2e.rs`) runs the
//! same commands against a real `lbd`.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use lb_tests::harness::guards::TempDir;
use lb_tests::harness::wait;
use lb_tests::lab::target_binary;
use lb_userspace::announce::{AddressInfo, AddressState, AnnounceInfo, VipHealth};
use lb_userspace::control::api::{
    BackendInfo, BackendStats, FiveTuple, FlowInfo, SimulateResult, Stats, StatusInfo, VipInfo,
    VipStats, parse_vip,
};
use lb_userspace::control::{Handler, Peer, Reply, Request, Response, Server};
use lb_userspace::health::{BackendHealth, CheckKind, HealthKey};
use serde_json::Value;

const VIP: &str = "198.18.0.10:80/tcp";
const BACKEND: &str = "198.18.1.1";

/// Answers like a daemon with one VIP and one backend, and records what it was asked and by whom.
#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<Request>>,
    peers: Mutex<Vec<Peer>>,
}

/// A fake flow entry, number `i`.
fn flow(i: usize) -> FlowInfo {
    let vip = parse_vip(VIP).unwrap();
    FlowInfo {
        flow: FiveTuple {
            protocol: 6,
            src: ("198.18.2.1".parse::<IpAddr>().unwrap(), 40000 + i as u16).into(),
            dst: (vip.address, 80).into(),
        },
        backend_id: 1,
        backend: Some(BACKEND.parse().unwrap()),
        vip: Some(vip),
    }
}

impl Handler for Fake {
    async fn handle(&self, peer: Peer, request: Request) -> Reply {
        self.peers.lock().unwrap().push(peer);
        if let Request::Flows { limit } = request {
            self.seen.lock().unwrap().push(request);
            // Streamed as lbd does: pieces of two, then the rest.
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let flows: Vec<FlowInfo> = (0..limit).map(flow).collect();
            let mut pieces: Vec<&[FlowInfo]> = flows.chunks(2).collect();
            let last = pieces.pop().unwrap_or(&[]).to_vec();
            for p in pieces {
                tx.try_send(Response::FlowsPart(p.to_vec())).unwrap();
            }
            tx.try_send(Response::Flows(last)).unwrap();
            return Reply::Stream(rx);
        }
        self.answer(request).into()
    }
}

impl Fake {
    fn answer(&self, request: Request) -> Response {
        self.seen.lock().unwrap().push(request.clone());
        let vip = parse_vip(VIP).unwrap();
        let backend: IpAddr = BACKEND.parse().unwrap();
        match request {
            Request::Status => Response::Status(StatusInfo {
                version: "test".into(),
                pid: std::process::id(),
                interface: "veth-test".into(),
                xdp_mode: "native".into(),
                config_path: "/etc/lbd/lbd.toml".into(),
                uptime_secs: 5,
                vips: 1,
                backends: 1,
                adopted: false,
                reloads_ok: 1,
                reloads_failed: 0,
                attached: true,
                reattachments: 0,
                announce: Default::default(),
            }),
            Request::VipList => Response::Vips(vec![VipInfo {
                vip,
                id: 0,
                mode: lb_userspace::config::Mode::Ipip,
                ring_size: 65537,
                fragments: lb_userspace::config::FragmentPolicy::Drop,
                min_healthy: 1,
                table_digest: "0123456789abcdef".into(),
                backends: vec![BackendInfo {
                    address: backend,
                    id: 1,
                    weight: 100,
                    up: true,
                    ring_entries: 65537,
                }],
                panic: false,
            }]),
            Request::Health => Response::Health(vec![BackendHealth {
                key: HealthKey { vip, backend },
                kind: CheckKind::Tcp,
                target: (backend, 80).into(),
                path: lb_userspace::health::CheckTarget::Direct,
                up: true,
                pending: false,
                last_ok: Some(true),
                last_reason: "ok".into(),
                last_latency_us: Some(120),
                consecutive_ok: 3,
                consecutive_fail: 0,
                checks: 3,
                failures: 1,
                unknown: 0,
                transitions: 0,
            }]),
            Request::Stats => {
                // Grows on every call so that the two samples of `lbctl stats` give a non-zero rate.
                let n = self.seen.lock().unwrap().len() as u64;
                Response::Stats(Stats {
                    counters: [("tx".to_string(), n * 10)].into(),
                    vips: vec![VipStats {
                        vip,
                        packets: n * 10,
                        bytes: n * 1000,
                        new_flows: n,
                        flow_misses: n,
                    }],
                    backends: vec![BackendStats {
                        vip,
                        backend,
                        packets: n * 10,
                        bytes: n * 1000,
                    }],
                })
            }
            Request::Simulate { flow } => Response::Simulate(SimulateResult {
                flow,
                vip: Some(vip),
                backend: Some(backend),
                backend_id: Some(1),
                hash: Some(0xdead_beef),
                ring_index: Some(7),
                from_flow_table: false,
                note: "ring".into(),
            }),
            Request::Announce => Response::Announce(AnnounceInfo {
                enabled: true,
                table: 100,
                protocol: 250,
                hold_down_ms: 5000,
                addresses: vec![AddressInfo {
                    address: vip.address,
                    state: AddressState::Unhealthy,
                    announce_in_ms: None,
                    changes: 2,
                    vips: vec![VipHealth {
                        vip,
                        serving: 0,
                        backends: 1,
                        min_healthy: 1,
                    }],
                }],
                ..Default::default()
            }),
            Request::BackendDel { backend: b, .. } if b != backend => {
                Response::error(format!("{b} is not a backend of {vip}"))
            }
            other => Response::ok(format!("done: {other:?}")),
        }
    }
}

struct Harness {
    dir: PathBuf,
    socket: PathBuf,
    fake: Arc<Fake>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Harness {
    fn start() -> Harness {
        let dir = std::env::temp_dir()
            .join(format!(
                "lbt-ctl-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ))
            .with_extension("d");
        let _ = std::fs::remove_dir_all(&dir);
        let socket = dir.join("run").join("lbd.sock");
        let fake = Arc::new(Fake::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (f, s) = (fake.clone(), socket.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server =
                    Server::bind(&s).unwrap_or_else(|e| panic!("bind {}: {e}", s.display()));
                ready_tx.send(()).unwrap();
                server
                    .serve(f, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        ready_rx.recv().expect("server thread started");
        Harness {
            dir,
            socket,
            fake,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn lbctl(&self, args: &[&str]) -> Output {
        lbctl_at(&self.socket, args)
    }

    /// Runs `lbctl --json ARGS`, asserts success, returns the parsed JSON and the request the daemon received.
    fn json(&self, args: &[&str]) -> (Value, Request) {
        let before = self.fake.seen.lock().unwrap().len();
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.lbctl(&all);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "lbctl {all:?} failed ({}): {}{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let value: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("lbctl {all:?}: not JSON ({e}): {stdout}"));
        let seen = self.fake.seen.lock().unwrap();
        assert!(seen.len() > before, "lbctl {all:?} sent nothing");
        (value, seen.last().unwrap().clone())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lbctl_at(socket: &Path, args: &[&str]) -> Output {
    lbctl_run(Command::new(target_binary("lbctl")), socket, args)
}

fn lbctl_run(mut cmd: Command, socket: &Path, args: &[&str]) -> Output {
    cmd.arg("--socket").arg(socket).args(args);
    cmd.output()
        .unwrap_or_else(|e| panic!("run lbctl {args:?}: {e}"))
}

/// A copy of lbctl that every user may run, in a 0755 directory of its own: the build's copy may sit where other
/// users cannot enter (a clone under /root, as in CI), which would stop `nobody` before it reaches the socket.
fn lbctl_for_everyone() -> (TempDir, PathBuf) {
    let dir = TempDir::new("ctlbin");
    let exe = dir.path().join("lbctl");
    std::fs::copy(target_binary("lbctl"), &exe).expect("copy lbctl");
    for (path, mode) in [(dir.path(), 0o755), (exe.as_path(), 0o755)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }
    let reachable = exe.ancestors().skip(1).all(|p| {
        p.as_os_str().is_empty()
            || std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    });
    assert!(
        reachable,
        "{} is not reachable by other users",
        exe.display()
    );
    (dir, exe)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn fake_handler_every_command_round_trips_with_json() {
    let h = Harness::start();
    let vip = parse_vip(VIP).unwrap();
    let backend: IpAddr = BACKEND.parse().unwrap();

    let (v, r) = h.json(&["status"]);
    assert_eq!(
        (v["xdp_mode"].as_str(), r),
        (Some("native"), Request::Status),
        "{v}"
    );

    let (v, r) = h.json(&["vip", "list"]);
    assert_eq!(r, Request::VipList);
    assert_eq!(v[0]["backends"][0]["address"], BACKEND, "{v}");
    assert_eq!(v[0]["table_digest"], "0123456789abcdef", "{v}");

    let (v, r) = h.json(&[
        "vip",
        "add",
        "[fd00::10]:53/udp",
        "--mode",
        "l2dsr",
        "--backend",
        "fd00::1=50",
        "--backend",
        "fd00::2",
        "--health",
        r#"kind = "udp", send = "ping", expect = "pong""#,
    ]);
    assert_eq!(v["ok"], true, "{v}");
    let Request::VipAdd { vip: spec } = r else {
        panic!("vip add sent {r:?}")
    };
    assert_eq!(
        (spec.port, spec.protocol.as_str(), spec.mode.as_deref()),
        (53, "udp", Some("l2dsr"))
    );
    assert_eq!(spec.backends.len(), 2);
    assert_eq!(spec.backends[0].weight, Some(50));
    let health = spec.health.expect("health sent");
    assert_eq!(
        (health.kind, health.send.as_deref()),
        (CheckKind::Udp, Some("ping"))
    );

    let (_, r) = h.json(&["vip", "del", VIP]);
    assert_eq!(r, Request::VipDel { vip });
    let (_, r) = h.json(&["backend", "add", VIP, BACKEND, "--weight", "10"]);
    assert_eq!(
        r,
        Request::BackendAdd {
            vip,
            backend,
            weight: Some(10)
        }
    );
    let (_, r) = h.json(&["backend", "del", VIP, BACKEND]);
    assert_eq!(r, Request::BackendDel { vip, backend });
    let (_, r) = h.json(&["backend", "drain", VIP, BACKEND]);
    assert_eq!(r, Request::BackendDrain { vip, backend });
    let (_, r) = h.json(&["backend", "weight", VIP, BACKEND, "3"]);
    assert_eq!(
        r,
        Request::BackendWeight {
            vip,
            backend,
            weight: 3
        }
    );

    let (v, r) = h.json(&["health"]);
    assert_eq!(r, Request::Health);
    assert_eq!(
        (v[0]["up"].as_bool(), v[0]["consecutive_ok"].as_u64()),
        (Some(true), Some(3)),
        "{v}"
    );

    let (v, r) = h.json(&["stats", "--interval", "0.2"]);
    assert_eq!(r, Request::Stats);
    let pps = v["vip_rates"][0]["pps"]
        .as_f64()
        .unwrap_or_else(|| panic!("no pps: {v}"));
    assert!(pps > 0.0, "two samples must give a rate: {v}");
    assert!(v["stats"]["counters"]["tx"].as_u64().is_some(), "{v}");

    // Five entries in three pieces: all of them, in order, in one JSON array.
    let (v, r) = h.json(&["flows", "--limit", "5"]);
    assert_eq!(r, Request::Flows { limit: 5 });
    let ports: Vec<u64> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|f| {
            f["flow"]["src"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(ports, [40000, 40001, 40002, 40003, 40004], "{v}");
    let out = h.lbctl(&["flows", "--limit", "3"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        table.lines().count(),
        1 + 3,
        "a header and three rows:\n{table}"
    );
    // Beyond the cap is a usage error, sent nowhere.
    let before = h.fake.seen.lock().unwrap().len();
    let out = h.lbctl(&["flows", "--limit", "100001"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1..=100000"),
        "{out:?}"
    );
    assert_eq!(h.fake.seen.lock().unwrap().len(), before);

    let (v, r) = h.json(&[
        "simulate",
        "tcp",
        "198.18.2.1",
        "40000",
        "198.18.0.10",
        "80",
    ]);
    let Request::Simulate { flow } = r else {
        panic!("simulate sent {r:?}")
    };
    assert_eq!(
        (flow.protocol, flow.src.port(), flow.dst.port()),
        (6, 40000, 80)
    );
    assert_eq!(v["backend"], BACKEND, "{v}");

    let (v, r) = h.json(&["announce"]);
    assert_eq!(r, Request::Announce);
    assert_eq!(v["addresses"][0]["state"], "unhealthy", "{v}");
    let (_, r) = h.json(&["announce", "drain"]);
    assert_eq!(r, Request::AnnounceDrain { drain: true });
    let (_, r) = h.json(&["announce", "undrain"]);
    assert_eq!(r, Request::AnnounceDrain { drain: false });
    let out = h.lbctl(&["announce"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "withdrawn: no VIP has min_healthy backends (198.18.0.10:80/tcp 0/1 serving, needs 1)"
        ),
        "{text}"
    );

    let (_, r) = h.json(&["reload"]);
    assert_eq!(r, Request::Reload);
    let lab_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/lab.toml");
    let lab_config = lab_config.to_str().unwrap();
    let (_, r) = h.json(&["config", "check", "--remote", lab_config]);
    assert!(matches!(r, Request::ConfigCheck { .. }), "{r:?}");
    let (_, r) = h.json(&["shutdown", "--detach"]);
    assert_eq!(r, Request::Shutdown { detach: true });

    // Human output works too (no --json): a table with the backend in it.
    let out = h.lbctl(&["vip", "list"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(BACKEND),
        "{out:?}"
    );
}

#[test]
fn fake_handler_errors_exit_1_with_the_message() {
    let h = Harness::start();
    let out = h.lbctl(&["backend", "del", VIP, "198.18.9.9"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("198.18.9.9 is not a backend of"),
        "{stderr}"
    );
    let out = h.lbctl(&["vip", "del", "not-a-vip"]);
    assert_eq!(out.status.code(), Some(1), "bad arguments: {out:?}");
}

#[test]
fn config_check_is_local_and_names_the_field() {
    let dir = std::env::temp_dir().join(format!("lbt-ctlcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lab_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/lab.toml");
    let nowhere = dir.join("no.sock");
    let out = lbctl_at(&nowhere, &["config", "check", lab_config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "lab.toml is valid without a daemon: {out:?}"
    );

    // --json shows what would run: the defaults filled in, as a config lbd itself accepts.
    let minimal = dir.join("minimal.toml");
    std::fs::write(
        &minimal,
        "[daemon]\ninterface = \"eth0\"\nencap_src_v4 = \"198.18.0.1\"\n[[vip]]\naddress = \"198.19.0.10\"\nport = 80\nprotocol = \"tcp\"\n\
         backends = [{ address = \"198.18.0.11\" }]\n",
    )
    .unwrap();
    let out = lbctl_at(
        &nowhere,
        &["--json", "config", "check", minimal.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["ok"], true, "{v}");
    let eff = &v["effective"];
    for (path, want) in [
        ("/daemon/mtu", serde_json::json!(1500)),
        ("/daemon/metrics_addr", serde_json::json!("127.0.0.1:9662")),
        ("/daemon/pin_dir", serde_json::json!("/sys/fs/bpf/lb")),
        ("/daemon/xdp_mode", serde_json::json!("auto")),
        ("/daemon/flow_table_size", serde_json::json!(1048576)),
        ("/vip/0/mode", serde_json::json!("ipip")),
        ("/vip/0/ring_size", serde_json::json!(65537)),
        ("/vip/0/panic_threshold", serde_json::json!(25)),
        ("/vip/0/backends/0/weight", serde_json::json!(100)),
        ("/vip/0/health/kind", serde_json::json!("tcp")),
        ("/vip/0/health/interval_ms", serde_json::json!(1000)),
        ("/vip/0/health/timeout_ms", serde_json::json!(500)),
    ] {
        assert_eq!(eff.pointer(path), Some(&want), "{path} in {eff:#}");
    }
    let again = dir.join("effective.toml");
    let text = toml::to_string(&eff).expect("the effective config as TOML");
    std::fs::write(&again, &text).unwrap();
    let out = lbctl_at(
        &nowhere,
        &["--json", "config", "check", again.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "the effective config is refused:\n{text}\n{out:?}"
    );
    let v2: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        &v2["effective"], eff,
        "the effective config of the effective config differs"
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[daemon]\ninterface = \"eth0\"\ncolour = \"blue\"\n").unwrap();
    let out = lbctl_at(&nowhere, &["config", "check", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("colour"),
        "names the unknown field: {stderr}"
    );
}

#[test]
fn not_running_is_a_clear_error() {
    let socket = std::env::temp_dir().join(format!("lbt-ctl-none-{}/lbd.sock", std::process::id()));
    let out = lbctl_at(&socket, &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "lbd is not running (no socket at {})",
            socket.display()
        )),
        "{stderr}"
    );
}

#[test]
fn fake_handler_socket_is_root_only() {
    if !is_root() {
        eprintln!("skip: needs root to check root-only permissions");
        return;
    }
    let h = Harness::start();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&h.socket), 0o600, "socket {}", h.socket.display());
    assert_eq!(mode(h.socket.parent().unwrap()), 0o700, "socket directory");

    // An unprivileged user (nobody) is refused, with a message saying why.
    let (_dir, lbctl) = lbctl_for_everyone();
    let mut nobody = Command::new(&lbctl);
    nobody.uid(65534).gid(65534);
    let out = lbctl_run(nobody, &h.socket, &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(h.fake.seen.lock().unwrap().is_empty(), "nobody got through");
}

/// The handler is told who is asking: the uid and pid of the process at the other end of the socket (SO_PEERCRED),
/// which lbd writes next to every change it logs.
#[test]
fn fake_handler_learns_the_peers_uid_and_pid() {
    let h = Harness::start();
    let mut cmd = Command::new(target_binary("lbctl"));
    cmd.arg("--socket")
        .arg(&h.socket)
        .args(["backend", "drain", VIP, BACKEND]);
    let child = cmd.spawn().expect("run lbctl");
    let pid = child.id() as i32;
    let out = child.wait_with_output().expect("lbctl");
    assert!(out.status.success(), "{out:?}");
    let peers = h.fake.peers.lock().unwrap().clone();
    assert_eq!(
        peers,
        [Peer {
            uid: nix::unistd::getuid().as_raw(),
            pid: Some(pid)
        }]
    );
}

/// At most MAX_CONNECTIONS at once: one more is told why and closed, without waiting for the others; a connection
/// that sends no request is closed after IDLE_TIMEOUT, which frees its place.
#[test]
fn fake_handler_refuses_connections_over_the_cap_and_closes_idle_ones() {
    use lb_userspace::control::server::{IDLE_TIMEOUT, MAX_CONNECTIONS};
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    let h = Harness::start();
    let idle: Vec<UnixStream> = (0..MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&h.socket).expect("connect"))
        .collect();
    // The server accepts in its own time: wait until it has taken all of them (the next one is then refused).
    let refused = wait::until(
        "a connection over the cap refused",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let out = h.lbctl(&["status"]);
            if out.status.success() {
                Err(out)
            } else {
                Ok(out)
            }
        },
        |out| format!("the last was answered: {out:?}"),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("at most {MAX_CONNECTIONS} control connections")),
        "{stderr}"
    );

    let started = Instant::now();
    for mut s in idle {
        s.set_read_timeout(Some(IDLE_TIMEOUT + Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = s
            .read(&mut buf)
            .expect("closed by the server, not timed out here");
        assert_eq!(n, 0, "an idle connection got {:?}", &buf[..n]);
    }
    assert!(
        started.elapsed() >= IDLE_TIMEOUT / 2,
        "closed long before the idle timeout"
    );
    let out = h.lbctl(&["status"]);
    assert!(out.status.success(), "{out:?}");
}
