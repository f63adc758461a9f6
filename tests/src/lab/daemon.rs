//! A real `lbd` process in a balancer namespace (the lab's, or one of the ECMP lab's), and `lbctl` against it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lb_userspace::control::api::{Request, Response};
use lb_userspace::control::client::Client;
use lb_userspace::health::CheckKind;

use crate::harness::capabilities;
use crate::harness::guards::ChildGuard;
use crate::harness::netns::NetNs;
use crate::harness::wait;
use crate::lab::{Lab, target_binary};

/// `lbd --config <path>` running in a balancer's namespace. Killed (SIGKILL) on drop; the lab's pin directory
/// guard then removes what it left attached.
pub struct Lbd {
    child: Option<ChildGuard>,
    /// The balancer's namespace (lbd and lbctl run there).
    ns: NetNs,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    launch: Launch,
}

/// How lbd is started, for tests that start it the way a service manager would.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// A command that runs lbd as its last arguments and replaces itself with it (`setpriv ...`, `sh -c '...
    /// exec "$0" "$@"'`), so the process started is lbd's.
    pub wrapper: Vec<String>,
    pub env: Vec<(String, String)>,
    /// RLIMIT_NOFILE (soft, hard) lbd starts with, when not inherited.
    pub nofile: Option<(u64, u64)>,
}

impl Launch {
    /// As config/lbd.service starts lbd: root with exactly the unit's capabilities, no_new_privs (see
    /// [`capabilities::setpriv_wrapper`]).
    pub fn as_the_unit() -> Launch {
        Launch {
            wrapper: capabilities::setpriv_wrapper(&capabilities::unit_capabilities()),
            ..Launch::default()
        }
    }
}

impl Lbd {
    /// Starts lbd in the lab's balancer and waits until its control socket answers.
    pub fn start(lab: &Lab, config: &Path) -> Lbd {
        Lbd::start_with(lab, config, Launch::default())
    }

    /// [`Lbd::start`] with its descriptor limit at `nofile` (soft, hard) when it starts.
    pub fn start_with_nofile(lab: &Lab, config: &Path, nofile: Option<(u64, u64)>) -> Lbd {
        Lbd::start_with(
            lab,
            config,
            Launch {
                nofile,
                ..Launch::default()
            },
        )
    }

    /// Like [`Lbd::start`], through `launch`.
    pub fn start_with(lab: &Lab, config: &Path, launch: Launch) -> Lbd {
        Lbd::start_in_with(
            &lab.balancer.ns,
            config,
            &lab.dir.path().join("lbd.log"),
            launch,
        )
    }

    /// Starts lbd in `ns` with `config` (whose control socket it answers on), logging to `log`.
    pub fn start_in(ns: &NetNs, config: &Path, log: &Path) -> Lbd {
        Lbd::start_in_with(ns, config, log, Launch::default())
    }

    /// Like [`Lbd::start_in`], through `launch`.
    pub fn start_in_with(ns: &NetNs, config: &Path, log: &Path, launch: Launch) -> Lbd {
        let socket = raw_daemon(config)
            .control_socket
            .unwrap_or_else(|| lb_userspace::config::DEFAULT_CONTROL_SOCKET.into());
        let mut lbd = Lbd {
            child: None,
            ns: ns.handle(),
            config: config.to_path_buf(),
            socket,
            log: log.to_path_buf(),
            launch,
        };
        lbd.spawn();
        lbd
    }

    fn spawn(&mut self) {
        let lbd = target_binary("lbd");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let mut argv: Vec<&str> = self.launch.wrapper.iter().map(String::as_str).collect();
        argv.extend([
            lbd.to_str().expect("utf-8 path"),
            "--config",
            self.config.to_str().expect("utf-8 path"),
        ]);
        let mut cmd = self.ns.nsenter_command(&argv);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .env("RUST_LOG", "info")
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)));
        if let Some((soft, hard)) = self.launch.nofile {
            use nix::sys::resource::{Resource, setrlimit};
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and the closure touches nothing else of the parent.
            unsafe {
                cmd.pre_exec(move || {
                    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(std::io::Error::from)
                });
            }
        }
        self.child = Some(ChildGuard::spawn(cmd, "lbd"));
        let log = || std::fs::read_to_string(&self.log).unwrap_or_default();
        wait::until_true(
            "lbd to answer on its control socket",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                if let Ok(mut c) = Client::connect(&self.socket)
                    && matches!(c.call(&Request::Status), Ok(Response::Status(_)))
                {
                    return true;
                }
                let alive = self.child.as_mut().is_some_and(|c| c.alive());
                assert!(alive, "lbd exited during start-up; its log:\n{}", log());
                false
            },
            || format!("its log:\n{}", log()),
        );
    }

    /// SIGKILL, as a crash would: no cleanup runs. The program must stay attached and forwarding.
    pub fn kill9(&mut self) {
        self.child = None;
    }

    /// SIGTERM, as `systemctl stop` sends: lbd exits and leaves the program forwarding; returns once it is gone.
    pub fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM lbd");
        c.wait_exit(Duration::from_secs(10), || {
            format!("SIGTERM sent; its log:\n{}", self.log_text())
        });
    }

    /// Starts lbd again with the same config (after [`Lbd::kill9`] or [`Lbd::terminate`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running lbd");
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One control request; panics (with lbd's log) when the daemon cannot be reached.
    pub fn call(&self, req: &Request) -> Response {
        let mut c = Client::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect to lbd: {e}\nlbd log:\n{}", self.log_text()));
        c.call(req)
            .unwrap_or_else(|e| panic!("{req:?}: {e}\nlbd log:\n{}", self.log_text()))
    }

    /// Runs `lbctl --socket <sock> <args>` and returns its stdout; panics with stderr when it fails. The socket is a
    /// path, so lbctl can run from anywhere; it runs in the balancer namespace anyway, as an operator would.
    pub fn lbctl(&self, args: &[&str]) -> String {
        let out = self.lbctl_output(args);
        assert!(
            out.status.success(),
            "lbctl {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`Lbd::lbctl`], also returning lbctl's pid (nsenter execs it, so the pid lbd sees is this one).
    pub fn lbctl_with_pid(&self, args: &[&str]) -> (String, u32) {
        let mut cmd = self.lbctl_command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("run lbctl: {e}"));
        let pid = child.id();
        let out = child.wait_with_output().expect("lbctl");
        assert!(
            out.status.success(),
            "lbctl {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        (String::from_utf8_lossy(&out.stdout).into_owned(), pid)
    }

    /// Sends lbd a signal (SIGHUP: reload).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.pid().expect("lbd runs");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
            .unwrap_or_else(|e| panic!("kill -{sig} lbd: {e}"));
    }

    pub fn lbctl_output(&self, args: &[&str]) -> std::process::Output {
        self.lbctl_command(args)
            .output()
            .unwrap_or_else(|e| panic!("run lbctl: {e}"))
    }

    fn lbctl_command(&self, args: &[&str]) -> Command {
        let lbctl = target_binary("lbctl");
        let mut argv = vec![
            lbctl.to_str().expect("utf-8 path"),
            "--socket",
            self.socket.to_str().expect("utf-8"),
        ];
        argv.extend_from_slice(args);
        self.ns.nsenter_command(&argv)
    }

    /// The body of `GET /metrics` from the config's `metrics_addr`, asked inside the balancer's namespace where lbd
    /// listens; panics unless the answer is 200.
    pub fn metrics(&self) -> String {
        self.try_metrics().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The config's `metrics_addr` (where lbd listens, in the balancer's namespace).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        raw_daemon(&self.config)
            .metrics_addr
            .as_deref()
            .unwrap_or(lb_userspace::config::DEFAULT_METRICS_ADDR)
            .parse()
            .unwrap_or_else(|e| panic!("{}: metrics_addr: {e}", self.config.display()))
    }

    /// [`Lbd::metrics`], or why it failed (connection refused or closed, no answer within 3 s, not 200).
    pub fn try_metrics(&self) -> Result<String, String> {
        let addr = self.metrics_addr();
        let response = self.ns.run(|| -> std::io::Result<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")?;
            let mut response = String::new();
            s.read_to_string(&mut response)?;
            Ok(response)
        });
        let response = response.map_err(|e| format!("GET /metrics at {addr}: {e}"))?;
        match response.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
            _ => Err(format!("GET /metrics at {addr}:\n{response}")),
        }
    }

    /// Health table rows of `backend` (one per VIP that uses it).
    pub fn backend_up(&self, backend: IpAddr) -> Vec<bool> {
        match self.call(&Request::Health) {
            Response::Health(rows) => rows
                .iter()
                .filter(|h| h.key.backend == backend)
                // A pending verdict is not in the rings yet: traffic still follows the old one.
                .map(|h| h.up != h.pending)
                .collect(),
            other => panic!("Health: unexpected answer {other:?}"),
        }
    }

    /// Whether every checked health row of `backend` has had a passing probe.
    fn all_probed(&self, backend: IpAddr) -> bool {
        match self.call(&Request::Health) {
            Response::Health(rows) => rows
                .iter()
                .filter(|h| h.key.backend == backend && h.kind != CheckKind::None)
                .all(|h| h.last_ok == Some(true)),
            other => panic!("Health: unexpected answer {other:?}"),
        }
    }

    /// Waits until every health row of `backend` says `up` (and, for up, each checked row has passed a probe);
    /// returns how long it took.
    pub fn wait_backend_state(
        &self,
        backend: impl Into<IpAddr>,
        up: bool,
        limit: Duration,
    ) -> Duration {
        let backend = backend.into();
        let start = Instant::now();
        wait::until(
            &format!("{backend} {}", if up { "up" } else { "down" }),
            limit,
            Duration::from_millis(50),
            || {
                let rows = self.backend_up(backend);
                // "Up" also waits for a passing probe of each checked row: first probes are spread over the
                // interval, and until one has run lbd's host may not have resolved the backend's neighbour entry
                // yet (an XDP redirect to an unresolved neighbour drops the packet; TCP retransmits, a single UDP
                // request is lost).
                let probed = !up || self.all_probed(backend);
                if !rows.is_empty() && rows.iter().all(|&u| u == up) && probed {
                    Ok(start.elapsed())
                } else {
                    Err(rows)
                }
            },
            |rows| format!("rows {rows:?}; lbd log:\n{}", self.log_text()),
        )
    }

    /// Waits until every backend of the lab is up in every VIP.
    pub fn wait_all_backends_up(&self, lab: &Lab, limit: Duration) {
        for b in &lab.backends {
            self.wait_backend_state(b.host.v4, true, limit);
            self.wait_backend_state(b.host.v6, true, limit);
        }
    }

    /// `lbctl shutdown --detach`; panics (with lbd's log) unless the process exits within 10 s.
    pub fn shutdown_detach(mut self) {
        let _ = self.lbctl(&["shutdown", "--detach"]);
        if let Some(mut c) = self.child.take() {
            c.wait_exit(Duration::from_secs(10), || {
                format!(
                    "`lbctl shutdown --detach` sent; its log:\n{}",
                    self.log_text()
                )
            });
        }
    }
}

/// The `[daemon]` table of `config` as written: the harness reads where lbd listens without validating the file,
/// which would load its CA files (tests count how often lbd does).
fn raw_daemon(config: &Path) -> lb_userspace::config::raw::RawDaemon {
    let text =
        std::fs::read_to_string(config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    toml::from_str::<lb_userspace::config::raw::RawConfig>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", config.display()))
        .daemon
}
