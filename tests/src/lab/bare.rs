//! A bare balancer: a namespace whose `eth0` is wired to one peer namespace, a bpffs pin directory and a private
//! directory for the config, socket and log, and the real `lbd` started on it. No backends, no clients: for what
//! lbd does with its pins, its maps, its config and its signals. Everything is removed on drop.

use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{Backend, BackendId, Counter, VipKey, VipMeta, maps};

use crate::harness::guards::{BpffsDir, ChildGuard, TempDir};
use crate::harness::netns::{NetNs, veth_pair};
use crate::harness::pinned::{self, counter};
use crate::harness::wait;
use crate::lab::target_binary;

pub const LB_ADDR: &str = "198.18.0.1";
pub const PEER_ADDR: &str = "198.18.0.2";
/// VIP addresses the tests program (TCP port 80).
pub const VIP: &str = "198.18.0.100";
pub const VIP2: &str = "198.18.0.101";
/// `max_ring_size` of [`Bare::config`].
pub const RING: u32 = 251;

pub struct Bare {
    pub lb: NetNs,
    pub peer: NetNs,
    pub pins: BpffsDir,
    pub dir: TempDir,
}

impl Bare {
    pub fn new(tag: &str) -> Bare {
        let lb = NetNs::new(tag);
        let peer = NetNs::new(&format!("{tag}peer"));
        wire(&lb, &peer);
        Bare {
            lb,
            peer,
            pins: BpffsDir::new(tag),
            dir: TempDir::new(tag),
        }
    }

    /// Writes `lbd.toml`: small maps, and one TCP port-80 VIP per address in `vips` with two backends that exist
    /// nowhere, unchecked (`health = { kind = "none" }`).
    pub fn config(&self, vips: &[&str]) -> PathBuf {
        let mut text = self.daemon_section(8, 32, RING);
        for v in vips {
            text.push_str(&format!(
                "[[vip]]\naddress = \"{v}\"\nport = 80\nprotocol = \"tcp\"\nring_size = {RING}\n\
                 backends = [{{ address = \"198.18.0.11\" }}, {{ address = \"198.18.0.12\" }}]\n\
                 health = {{ kind = \"none\" }}\n"
            ));
        }
        self.write_config(&text)
    }

    /// The `[daemon]` table for this bench with the given map sizes.
    pub fn daemon_section(&self, max_vips: u32, max_backends: u32, max_ring_size: u32) -> String {
        format!(
            "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"auto\"\npin_dir = \"{}\"\ncontrol_socket = \"{}\"\n\
             metrics_addr = \"127.0.0.1:9662\"\nencap_src_v4 = \"{LB_ADDR}\"\nmax_vips = {max_vips}\n\
             max_backends = {max_backends}\nflow_table_size = 1024\nmax_ring_size = {max_ring_size}\n",
            self.pins.path().display(),
            self.socket().display()
        )
    }

    /// Writes `text` as `lbd.toml` and returns its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("lbd.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("lbd.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("lbd.log")
    }

    /// lbd in the balancer namespace but the host's mount namespace (bpffs must be the host's).
    pub fn lbd_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.lb.name()))
            .arg("--")
            .arg(target_binary("lbd"))
            .args(args);
        cmd.env("RUST_LOG", "info");
        cmd
    }

    /// Runs lbd with `config` to its end (a start that must fail, `--detach`, `--check`). An lbd still running
    /// after 30 s (one that started where it should have refused) is killed and the test fails.
    pub fn run_to_exit(&self, config: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["--config", config.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        let mut child = self
            .lbd_command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run lbd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait for lbd").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect lbd's output");
                panic!(
                    "lbd {args:?} was expected to exit but ran for 30 s; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("collect lbd's output")
    }

    /// Starts lbd with `config` and waits until it has finished starting.
    pub fn start(&self, config: &Path) -> ChildGuard {
        // The log is appended to across restarts, and a restarted lbd finds the VIP map already programmed: only
        // one more "lbd running" line says this process has finished starting.
        let started_before = self.started_count();
        let mut child = self.spawn(config);
        self.wait_for(&mut child, "lbd to finish starting", || {
            self.started_count() > started_before
        });
        assert!(
            !self.vips().is_empty(),
            "lbd started but the VIP map is not programmed; log:\n{}",
            self.log_text()
        );
        child
    }

    /// Starts lbd with `config` without waiting.
    pub fn spawn(&self, config: &Path) -> ChildGuard {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open log");
        let mut cmd = self.lbd_command(&["--config", config.to_str().expect("utf-8")]);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        ChildGuard::spawn(cmd, "lbd")
    }

    pub fn started_count(&self) -> usize {
        self.log_text().matches("lbd running").count()
    }

    /// Waits up to 30 s for `cond`, failing early when lbd exits.
    pub fn wait_for(&self, child: &mut ChildGuard, what: &str, cond: impl Fn() -> bool) {
        wait::until_true(
            what,
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let done = cond();
                assert!(
                    done || child.alive(),
                    "lbd exited while waiting for {what}; log:\n{}",
                    self.log_text()
                );
                done
            },
            || format!("log:\n{}", self.log_text()),
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    pub fn xdp_attached(&self) -> bool {
        self.lb.ip(&["link", "show", "dev", "eth0"]).contains("xdp")
    }

    /// Sends 20 non-VIP datagrams and asserts that `lb_xdp` counted them on top of `before` (its `PassNotVip`
    /// counter in the pinned maps); returns the new count. `what` says which step failed.
    pub fn passes_non_vip(&self, before: u64, what: &str) -> u64 {
        self.send_non_vip(20);
        let now = counter(self.pins.path(), Counter::PassNotVip);
        assert!(now >= before + 20, "{what}: pass_not_vip {before} -> {now}");
        now
    }

    /// Sends `n` UDP datagrams from the peer to the balancer's own address: `lb_xdp` passes them (not a VIP).
    pub fn send_non_vip(&self, n: usize) {
        self.peer.run(|| {
            let s = UdpSocket::bind((PEER_ADDR, 0)).expect("bind udp in peer");
            for _ in 0..n {
                s.send_to(b"x", (LB_ADDR, 9)).expect("send udp");
            }
        });
    }

    /// The entries of the pinned `LB_VIPS` (empty when it is not pinned).
    pub fn vips(&self) -> Vec<(VipKey, VipMeta)> {
        let Ok(data) =
            MapData::from_pin(lb_userspace::pins::maps_dir(self.pins.path()).join(maps::VIPS))
        else {
            return Vec::new();
        };
        let map: HashMap<_, VipKey, VipMeta> =
            HashMap::try_from(Map::HashMap(data)).expect("LB_VIPS is a hash map");
        map.iter().filter_map(Result::ok).collect()
    }

    /// The `LB_VIPS` entry of the TCP port-80 service at `addr`.
    pub fn vip_meta(&self, addr: &str) -> Option<VipMeta> {
        let key = VipKey::new(addr.parse::<IpAddr>().expect("VIP address"), 80, 6);
        self.vips()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, m)| m)
    }

    /// A VIP's active ring (stride [`RING`]).
    pub fn ring(&self, meta: &VipMeta) -> Vec<BackendId> {
        pinned::ring(self.pins.path(), meta, RING)
    }

    /// The non-empty entries of the pinned `LB_BACKENDS`.
    pub fn backends(&self) -> Vec<(BackendId, Backend)> {
        let arr: Array<_, Backend> = Array::try_from(Map::Array(pinned::open_map(
            self.pins.path(),
            maps::BACKENDS,
        )))
        .expect("LB_BACKENDS array");
        (0..arr.len())
            .filter_map(|id| Some((id, arr.get(&id, 0).ok()?)))
            .filter(|(_, b)| b.family != 0)
            .collect()
    }
}

/// The balancer's `eth0` and the peer's, addressed and up.
pub fn wire(lb: &NetNs, peer: &NetNs) {
    veth_pair(lb, "eth0", peer, "eth0");
    lb.add_addr("eth0", &format!("{LB_ADDR}/24"));
    peer.add_addr("eth0", &format!("{PEER_ADDR}/24"));
    lb.link_up("eth0");
    peer.link_up("eth0");
}

/// Sends `sig` to a child.
pub fn kill(child: &ChildGuard, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).expect("kill lbd");
}

/// Waits (10 s at most) until a signalled child has exited.
pub fn wait_exit(child: &mut ChildGuard, what: &str) {
    child.wait_exit(Duration::from_secs(10), || what.to_string());
}
