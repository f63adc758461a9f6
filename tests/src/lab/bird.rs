//! A real BIRD 2 (Debian `bird2`) inside a lab namespace, with its config, control socket, pid file and log in a
//! private directory, killed with the test (`ChildGuard`: SIGKILL on drop, and when the test process dies).
//!
//! Timers are the smallest BIRD accepts, so that sessions come up and go down in about a second: hold time 3 s,
//! keepalive 1 s, the first connection attempt after 1 s instead of 5, and a retry 1 s after an error instead of a
//! minute.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::guards::ChildGuard;
use crate::harness::netns::NetNs;
use crate::harness::wait;

/// The session timers every lab BGP session uses (see the module comment).
pub const FAST_TIMERS: &str = "hold time 3; keepalive time 1; connect delay time 1; connect retry time 1; error wait time 1, 5;";

pub struct Bird {
    child: Option<ChildGuard>,
    ns: NetNs,
    dir: PathBuf,
    name: String,
}

impl Bird {
    /// Writes `config` (without its `log` line, which is added here) and starts `bird` in `ns`; returns once its
    /// control socket answers.
    pub fn start(ns: &NetNs, dir: &Path, name: &str, config: &str) -> Bird {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let mut bird = Bird {
            child: None,
            ns: ns.handle(),
            dir: dir.to_path_buf(),
            name: name.to_string(),
        };
        let text = format!("log \"{}\" all;\n{config}", bird.path("log").display());
        std::fs::write(bird.path("conf"), text).expect("write the BIRD config");
        bird.spawn();
        bird
    }

    fn path(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.name))
    }

    fn spawn(&mut self) {
        let (conf, sock, pid) = (self.path("conf"), self.path("sock"), self.path("pid"));
        let mut cmd = self.ns.command(&[
            "bird",
            "-f",
            "-c",
            conf.to_str().expect("utf-8"),
            "-s",
            sock.to_str().expect("utf-8"),
            "-P",
            pid.to_str().expect("utf-8"),
        ]);
        let out = std::fs::File::create(self.path("out")).expect("bird output file");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        let _ = std::fs::remove_file(&sock);
        self.child = Some(ChildGuard::spawn(cmd, &format!("bird {}", self.name)));
        let (out, log) = (self.path("out"), self.path("log"));
        let failed = || {
            let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
            format!("{}\n{}", read(&out), read(&log))
        };
        let name = self.name.clone();
        wait::until_true(
            &format!("bird {name} to answer birdc"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                if self.try_birdc(&["show", "status"]).is_some() {
                    return true;
                }
                let alive = self.child.as_mut().is_some_and(|c| c.alive());
                assert!(alive, "bird {name} exited:\n{}", failed());
                false
            },
            failed,
        );
    }

    /// SIGKILL: a crash of the BGP speaker, or the host gone as far as BGP can tell. The kernel closes the TCP
    /// session, so the peer sees it down at once rather than after the hold time.
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Starts it again with the same config (after [`Bird::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running bird");
        self.spawn();
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn try_birdc(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.path("sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `birdc -s <socket> ARGS`; panics when BIRD does not answer.
    pub fn birdc(&self, args: &[&str]) -> String {
        self.try_birdc(args)
            .unwrap_or_else(|| panic!("birdc {args:?} of {}: no answer", self.name))
    }

    /// The BGP state of protocol `proto` (`Established`, `Active`, `Connect`, ...).
    pub fn bgp_state(&self, proto: &str) -> String {
        let out = self.birdc(&["show", "protocols", proto]);
        out.lines()
            .find(|l| l.starts_with(proto))
            .and_then(|l| l.split_whitespace().nth(5))
            .unwrap_or("")
            .to_string()
    }

    /// Waits until every protocol in `protos` is established; returns how long it took.
    pub fn wait_established(&self, protos: &[String], limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let states: Vec<String> = protos.iter().map(|p| self.bgp_state(p)).collect();
            if states.iter().all(|s| s == "Established") {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "bird {}: sessions {protos:?} not established within {limit:?} ({states:?});\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.path("log")).unwrap_or_default()
    }
}

/// A balancer's BIRD: learns lbd's announcement routes from kernel table `table` (both families) and exports them,
/// and only them, to its upstream router over one session that carries IPv4 and IPv6 (IPv6 routes with this
/// balancer's IPv6 address as next hop).
pub fn balancer_config(
    router_id: Ipv4Addr,
    local_as: u32,
    table: u32,
    neighbor: IpAddr,
    neighbor_as: u32,
    v6_next_hop: IpAddr,
) -> String {
    format!(
        "router id {router_id};
protocol device {{ scan time 10; }}
protocol kernel lbd4 {{ kernel table {table}; learn; scan time 10; ipv4 {{ import all; export none; }}; }}
protocol kernel lbd6 {{ kernel table {table}; learn; scan time 10; ipv6 {{ import all; export none; }}; }}
protocol bgp upstream {{
  local {router_id} as {local_as};
  neighbor {neighbor} as {neighbor_as};
  {FAST_TIMERS}
  ipv4 {{ import none; export where source = RTS_INHERIT; next hop self; }};
  ipv6 {{ import none; export where source = RTS_INHERIT; next hop address {v6_next_hop}; }};
}}
"
    )
}

/// The upstream router's BIRD: a session to each balancer, every route learned installed in the kernel with all
/// equal paths merged into one multipath route (ECMP).
pub fn router_config(
    router_id: Ipv4Addr,
    local_as: u32,
    neighbors: &[(String, IpAddr, u32)],
) -> String {
    let mut s = format!(
        "router id {router_id};
protocol device {{ scan time 10; }}
protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}
protocol kernel {{ merge paths on; ipv6 {{ import none; export all; }}; }}
template bgp balancer {{
  local {router_id} as {local_as};
  {FAST_TIMERS}
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
"
    );
    for (name, addr, asn) in neighbors {
        s += &format!("protocol bgp {name} from balancer {{ neighbor {addr} as {asn}; }}\n");
    }
    s
}
