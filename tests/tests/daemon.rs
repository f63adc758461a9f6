//! The real `lbd` binary in a network namespace: config validation before anything is touched, SIGHUP diff
//! reloads, SIGKILL + restart adopting the pinned maps and link while the program keeps forwarding, and the program
//! attached again when its interface is re-created.
//!
//! Needs `target/<profile>/lbd`: build it first with `cargo build -p lb-userspace` (`cargo xtask test` does).

use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{BackendId, Counter, VipKey, VipMeta, maps};
use lb_tests::harness::guards::{BpffsDir, ChildGuard};
use lb_tests::harness::netns::{NetNs, skip_unless_root, veth_pair};
use lb_tests::harness::pinned::{self, counter};
use lb_tests::lab::target_binary;

const LB_ADDR: &str = "198.18.0.1";
const PEER_ADDR: &str = "198.18.0.2";
const VIP: &str = "198.18.0.100";
const VIP2: &str = "198.18.0.101";
const RING: u32 = 251;

/// A balancer namespace with `eth0` wired to a peer namespace, a bpffs pin directory and a temp directory for the
/// config, socket and log; all removed on drop.
struct Bench {
    lb: NetNs,
    peer: NetNs,
    pins: BpffsDir,
    dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Bench {
    fn new(tag: &str) -> Bench {
        let lb = NetNs::new(tag);
        let peer = NetNs::new(&format!("{tag}peer"));
        wire(&lb, &peer);
        // Tags are unique per test, so tag + pid is unique per run.
        let dir = std::env::temp_dir().join(format!("lbt-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Bench {
            lb,
            peer,
            pins: BpffsDir::new(tag),
            dir: TempDir(dir),
        }
    }

    fn config(&self, vips: &[&str]) -> PathBuf {
        let mut text = format!(
            "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"auto\"\npin_dir = \"{}\"\ncontrol_socket = \"{}\"\n\
             encap_src_v4 = \"{LB_ADDR}\"\nmax_vips = 8\nmax_backends = 32\nflow_table_size = 1024\n\
             max_ring_size = {RING}\n",
            self.pins.path().display(),
            self.dir.0.join("lbd.sock").display()
        );
        for v in vips {
            text.push_str(&format!(
                "[[vip]]\naddress = \"{v}\"\nport = 80\nprotocol = \"tcp\"\nring_size = {RING}\n\
                 backends = [{{ address = \"198.18.0.11\" }}, {{ address = \"198.18.0.12\" }}]\n"
            ));
        }
        let path = self.dir.0.join("lbd.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    fn log(&self) -> PathBuf {
        self.dir.0.join("lbd.log")
    }

    /// lbd in the balancer namespace but the host's mount namespace (bpffs must be the host's).
    fn lbd_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.lb.name()))
            .arg("--")
            .arg(target_binary("lbd"))
            .args(args);
        cmd.env("RUST_LOG", "info");
        cmd
    }

    fn start(&self, config: &Path) -> ChildGuard {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open log");
        let mut cmd = self.lbd_command(&["--config", config.to_str().expect("utf-8")]);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        // The log is appended to across restarts, and a restarted lbd finds the VIP map already programmed: only
        // one more "lbd running" line says this process has finished starting.
        let started_before = self.started_count();
        let mut child = ChildGuard::spawn(cmd, "lbd");
        self.wait_for(&mut child, "lbd to finish starting", || {
            self.started_count() > started_before
        });
        assert!(
            lb_userspace::pins::maps_dir(self.pins.path())
                .join(maps::VIPS)
                .exists()
                && !vips(self.pins.path()).is_empty(),
            "lbd started but the VIP map is not programmed; log:\n{}",
            self.log_text()
        );
        child
    }

    fn started_count(&self) -> usize {
        self.log_text().matches("lbd running").count()
    }

    fn wait_for(&self, child: &mut ChildGuard, what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(
                child.alive(),
                "lbd exited while waiting for {what}; log:\n{}",
                self.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn xdp_attached(&self) -> bool {
        self.lb.ip(&["link", "show", "dev", "eth0"]).contains("xdp")
    }

    /// Sends 20 non-VIP datagrams and asserts that `lb_xdp` counted them on top of `before` (its `PassNotVip`
    /// counter in the pinned maps); returns the new count. `what` says which step failed.
    fn passes_non_vip(&self, before: u64, what: &str) -> u64 {
        self.send_non_vip(20);
        let now = counter(self.pins.path(), Counter::PassNotVip);
        assert!(now >= before + 20, "{what}: pass_not_vip {before} -> {now}");
        now
    }

    /// Sends `n` UDP datagrams from the peer to the balancer's own address: `lb_xdp` passes them (not a VIP).
    fn send_non_vip(&self, n: usize) {
        self.peer.run(|| {
            let s = UdpSocket::bind((PEER_ADDR, 0)).expect("bind udp in peer");
            for _ in 0..n {
                s.send_to(b"x", (LB_ADDR, 9)).expect("send udp");
            }
        });
    }
}

/// The balancer's `eth0` and the peer's, addressed and up.
fn wire(lb: &NetNs, peer: &NetNs) {
    veth_pair(lb, "eth0", peer, "eth0");
    lb.add_addr("eth0", &format!("{LB_ADDR}/24"));
    peer.add_addr("eth0", &format!("{PEER_ADDR}/24"));
    lb.link_up("eth0");
    peer.link_up("eth0");
}

fn vips(pins: &Path) -> Vec<(VipKey, VipMeta)> {
    let Ok(data) = MapData::from_pin(lb_userspace::pins::maps_dir(pins).join(maps::VIPS)) else {
        return Vec::new();
    };
    let map: HashMap<_, VipKey, VipMeta> =
        HashMap::try_from(Map::HashMap(data)).expect("LB_VIPS is a hash map");
    map.iter().filter_map(Result::ok).collect()
}

fn vip_meta(pins: &Path, addr: &str) -> Option<VipMeta> {
    let key = VipKey::new(addr.parse::<IpAddr>().unwrap(), 80, 6);
    vips(pins)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, m)| m)
}

fn ring(pins: &Path, meta: &VipMeta) -> Vec<BackendId> {
    pinned::ring(pins, meta, RING)
}

fn kill(child: &ChildGuard, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).expect("kill lbd");
}

#[test]
fn bad_config_exits_nonzero_naming_the_field_and_attaches_nothing() {
    if skip_unless_root("bad_config_exits_nonzero_naming_the_field_and_attaches_nothing") {
        return;
    }
    let b = Bench::new("lbdbad");
    let path = b.config(&[VIP]);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("198.18.0.11", "10.0.0.x", 1);
    std::fs::write(&path, text).unwrap();
    let out = b
        .lbd_command(&["--config", path.to_str().unwrap()])
        .output()
        .expect("run lbd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "lbd accepted a bad config; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("vip[0].backends[0].address: \"10.0.0.x\" is not an IP address"),
        "error does not name the field:\n{stderr}"
    );
    assert!(
        !b.xdp_attached(),
        "a program was attached: {}",
        b.lb.ip(&["link", "show", "dev", "eth0"])
    );
    assert!(
        !b.pins.path().exists(),
        "pins were created at {}",
        b.pins.path().display()
    );
}

#[test]
fn sighup_applies_only_the_diff() {
    if skip_unless_root("sighup_applies_only_the_diff") {
        return;
    }
    let b = Bench::new("lbdhup");
    let config = b.config(&[VIP]);
    let mut lbd = b.start(&config);
    assert!(
        b.xdp_attached(),
        "lb_xdp not attached; log:\n{}",
        b.log_text()
    );
    let before = vip_meta(b.pins.path(), VIP).expect("VIP programmed");
    let ring_before = ring(b.pins.path(), &before);
    assert!(
        ring_before.iter().all(|&id| id != 0),
        "ring has unset entries: {ring_before:?}"
    );
    assert_eq!(
        ring_before
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2,
        "two backends in the ring"
    );

    b.config(&[VIP, VIP2]);
    kill(&lbd, nix::sys::signal::Signal::SIGHUP);
    b.wait_for(&mut lbd, "the added VIP", || {
        vip_meta(b.pins.path(), VIP2).is_some()
    });

    let after = vip_meta(b.pins.path(), VIP).expect("unchanged VIP still there");
    assert_eq!(
        after, before,
        "the unchanged VIP's entry (and its active ring slot) was rewritten"
    );
    assert_eq!(
        ring(b.pins.path(), &after),
        ring_before,
        "the unchanged VIP's ring changed"
    );
    let added = vip_meta(b.pins.path(), VIP2).unwrap();
    assert_ne!(added.vip_id, before.vip_id);
    assert!(
        ring(b.pins.path(), &added).iter().all(|&id| id != 0),
        "added VIP's ring incomplete"
    );

    // An invalid file is rejected and the running state kept.
    std::fs::write(&config, "[daemon]\ninterface = 1\n").unwrap();
    kill(&lbd, nix::sys::signal::Signal::SIGHUP);
    b.wait_for(&mut lbd, "the reload rejection in the log", || {
        b.log_text().contains("reload rejected")
    });
    assert_eq!(
        vips(b.pins.path()).len(),
        2 + 2,
        "VIPs changed after a rejected reload (2 VIPs + 2 fragment entries)"
    );

    // SIGTERM: exits, the program stays attached.
    kill(&lbd, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lbd.alive() {
        assert!(
            Instant::now() < deadline,
            "lbd ignored SIGTERM; log:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(b.xdp_attached(), "SIGTERM detached the program");

    // --detach removes program and pins.
    let out = b
        .lbd_command(&["--config", b.config(&[VIP]).to_str().unwrap(), "--detach"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lbd --detach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!b.xdp_attached(), "still attached after --detach");
    assert!(!b.pins.path().exists(), "pins left after --detach");
}

#[test]
fn sigkill_and_restart_adopt_the_pinned_state() {
    if skip_unless_root("sigkill_and_restart_adopt_the_pinned_state") {
        return;
    }
    let b = Bench::new("lbdkill");
    let config = b.config(&[VIP]);
    let mut lbd = b.start(&config);
    let meta = vip_meta(b.pins.path(), VIP).expect("VIP programmed");
    let ring_before = ring(b.pins.path(), &meta);

    let c1 = b.passes_non_vip(0, "lb_xdp did not see the datagrams");

    kill(&lbd, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lbd.alive() {
        assert!(Instant::now() < deadline, "lbd survived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(b.xdp_attached(), "the program went away with the process");
    let c2 = b.passes_non_vip(c1, "not forwarding without the daemon");

    let lbd = b.start(&config);
    assert!(
        b.log_text().contains("adopted the pinned XDP link"),
        "link not adopted; log:\n{}",
        b.log_text()
    );
    assert!(
        b.log_text().contains("adopted the pinned maps' state"),
        "maps not adopted; log:\n{}",
        b.log_text()
    );
    let meta2 = vip_meta(b.pins.path(), VIP).expect("VIP still programmed");
    assert_eq!(
        meta2.vip_id, meta.vip_id,
        "VIP id changed across the restart"
    );
    assert_eq!(
        ring(b.pins.path(), &meta2),
        ring_before,
        "backend ids changed across the restart"
    );
    b.passes_non_vip(c2, "counters did not continue after the restart");
    drop(lbd);
}

#[test]
fn a_recreated_interface_gets_lb_xdp_again() {
    if skip_unless_root("a_recreated_interface_gets_lb_xdp_again") {
        return;
    }
    let b = Bench::new("lbdif");
    let mut lbd = b.start(&b.config(&[VIP]));
    let c1 = b.passes_non_vip(0, "lb_xdp did not see the datagrams");

    // A driver reload or a rebuilt bond looks like this: the device goes away (the kernel detaches the program
    // with it) and a device of the same name comes back without one.
    b.lb.ip(&["link", "del", "eth0"]);
    b.wait_for(&mut lbd, "the interface loss in the log", || {
        b.log_text().contains("the interface is gone")
    });
    wire(&b.lb, &b.peer);
    b.wait_for(&mut lbd, "the re-attachment in the log", || {
        b.log_text().contains("lb_xdp attached to it again")
    });
    assert!(b.xdp_attached(), "no XDP program on the new eth0");
    b.passes_non_vip(
        c1,
        "the program on the new eth0 does not count into the same maps",
    );
    let status = lb_userspace::control::client::Client::connect(&b.dir.0.join("lbd.sock"))
        .and_then(|mut c| c.call(&lb_userspace::control::api::Request::Status))
        .expect("lbctl status");
    let lb_userspace::control::api::Response::Status(s) = status else {
        panic!("status answered {status:?}")
    };
    assert!(s.attached && s.reattachments == 1, "{s:?}");
    drop(lbd);
}
