//! Private network namespaces for tests, torn down by RAII (also when a test panics).
//!
//! Everything a test configures lives in a namespace made here; nothing ever touches the root namespace. Names are
//! `lbt-<tag>-<pid>-<n>` so parallel test processes (and other people's labs) never collide, and so
//! [`cleanup_stale`] can tell a leftover of a killed run from a namespace that is still in use.
//!
//! Configuration goes through `ip` (iproute2): it is what an operator would type, and its error messages are good.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

const PREFIX: &str = "lbt-";
const NETNS_DIR: &str = "/var/run/netns";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when the process can create namespaces and load BPF programs. Tests print a skip reason and return
/// when it is false.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Prints why a test is skipped when not root; returns true when the caller should return early.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIP {test}: needs root (network namespaces, BPF)");
    true
}

/// Runs a command and panics with its stderr when it fails; returns stdout.
pub fn run_cmd(cmd: &mut Command) -> String {
    let out = output_of(cmd);
    if !out.status.success() {
        panic!(
            "command failed ({}): {:?}\nstdout: {}\nstderr: {}",
            out.status,
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output_of(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// A uniquely named network namespace, deleted on drop (by the handle that created it).
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// False for a [`NetNs::handle`]: the namespace belongs to another value, which deletes it.
    owned: bool,
}

impl NetNs {
    /// Creates `lbt-<tag>-<pid>-<n>` with its loopback up. `tag` is a short word saying which test owns it.
    pub fn new(tag: &str) -> NetNs {
        assert!(
            !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "netns tag must be a non-empty [A-Za-z0-9_] word, got {tag:?}"
        );
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{tag}-{}-{n}", std::process::id());
        run_cmd(Command::new("ip").args(["netns", "add", &name]));
        // From here on the guard owns it: a panic below still deletes it.
        let ns = NetNs { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Another handle on the same namespace, for a value that runs things in it (a daemon) but must not delete
    /// it; the creator's handle still does, and must outlive this one.
    pub fn handle(&self) -> NetNs {
        NetNs {
            name: self.name.clone(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`; panics with stderr on failure, returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_cmd(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `argv` inside the namespace (`ip netns exec`); panics with stderr on failure, returns stdout.
    pub fn exec(&self, argv: &[&str]) -> String {
        run_cmd(&mut self.command(argv))
    }

    /// Like [`NetNs::exec`] but returns the raw output, for commands whose failure the test wants to check.
    pub fn exec_output(&self, argv: &[&str]) -> Output {
        output_of(&mut self.command(argv))
    }

    /// A `Command` that runs `argv` inside the namespace, for callers that need to spawn or pipe.
    pub fn command(&self, argv: &[&str]) -> Command {
        assert!(!argv.is_empty(), "empty argv");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// A `Command` that runs `argv` in the namespace's network stack while keeping the host's mount namespace, so
    /// that the host's bpffs (/sys/fs/bpf) is visible: pins must outlive the process (`ip netns exec` would give
    /// the process a private /sys without bpffs). What lbd needs.
    pub fn nsenter_command(&self, argv: &[&str]) -> Command {
        assert!(!argv.is_empty(), "empty argv");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={NETNS_DIR}/{}", self.name))
            .arg("--")
            .args(argv);
        cmd
    }

    /// Runs `f` on a dedicated thread that has entered the namespace, and returns its result (a panic in `f`
    /// propagates). The calling thread's namespace is never changed. BPF_PROG_TEST_RUN resolves
    /// `ingress_ifindex` in the caller's namespace, so fixture runs go through here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = self.file();
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Moves the current thread into the namespace until the returned guard drops (which moves it back).
    /// For code that must keep non-`Send` state across calls; prefer [`NetNs::run`].
    pub fn enter(&self) -> NsEnterGuard {
        let original = File::open("/proc/thread-self/ns/net").expect("open own netns");
        setns(self.file(), CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
        NsEnterGuard { original }
    }

    fn file(&self) -> File {
        let path = Path::new(NETNS_DIR).join(&self.name);
        File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
    }

    pub fn link_up(&self, ifname: &str) {
        self.ip(&["link", "set", ifname, "up"]);
    }

    pub fn link_down(&self, ifname: &str) {
        self.ip(&["link", "set", ifname, "down"]);
    }

    /// Adds `cidr` (e.g. `198.18.0.1/24`, `fd00::1/64`) to `ifname`. IPv6 addresses skip DAD so they are usable at
    /// once.
    pub fn add_addr(&self, ifname: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", ifname]);
        }
    }

    /// A route to `prefix` through `via` on `ifname` (or on-link when `via` is `None`).
    pub fn add_route(&self, prefix: &str, via: Option<&str>, ifname: &str) {
        let mut args = vec!["route", "add", prefix];
        if let Some(gw) = via {
            args.extend(["via", gw]);
        }
        args.extend(["dev", ifname]);
        self.ip(&args);
    }

    /// A PERMANENT neighbour entry, so `bpf_fib_lookup` answers without ARP/ND.
    pub fn add_neigh(&self, ifname: &str, ip: &str, mac: [u8; 6]) {
        self.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac_str(mac),
            "dev",
            ifname,
            "nud",
            "permanent",
        ]);
    }

    pub fn set_mac(&self, ifname: &str, mac: [u8; 6]) {
        self.ip(&["link", "set", ifname, "address", &mac_str(mac)]);
    }

    pub fn set_mtu(&self, ifname: &str, mtu: u32) {
        self.ip(&["link", "set", ifname, "mtu", &mtu.to_string()]);
    }

    pub fn ifindex(&self, ifname: &str) -> u32 {
        let out = self.exec(&["cat", &format!("/sys/class/net/{ifname}/ifindex")]);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("ifindex of {ifname} in {}: {out:?}: {e}", self.name))
    }

    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        let out = self.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
        parse_mac(out.trim()).unwrap_or_else(|| panic!("mac of {ifname} in {}: {out:?}", self.name))
    }

    /// Disables IPv6 router solicitations/DAD noise and lets the namespace forward, for lab routers.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // Deleting the namespace also deletes every interface in it, and veth peers elsewhere with them.
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

/// Returned by [`NetNs::enter`]; moves the thread back to where it was on drop.
#[must_use = "the thread leaves the namespace when this guard drops"]
pub struct NsEnterGuard {
    original: File,
}

impl Drop for NsEnterGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.original, CloneFlags::CLONE_NEWNET) {
            // Continuing in the wrong namespace would make later tests on this thread misbehave silently.
            eprintln!("fatal: cannot return to the original netns: {e}");
            std::process::abort();
        }
    }
}

/// Creates a veth pair with one end (`a_if`) in `a` and the other (`b_if`) in `b`, both up. The pair is created
/// directly inside the namespaces, never in the root one.
pub fn veth_pair(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    veth_pair_with_queues(a, a_if, b, b_if, 1);
}

/// [`veth_pair`] with `queues` transmit and receive queues on both ends: each receive queue has its own ring and
/// NAPI context, as a NIC's RSS queues do.
pub fn veth_pair_with_queues(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str, queues: usize) {
    assert!(
        a_if.len() <= 15 && b_if.len() <= 15,
        "interface names are at most 15 bytes: {a_if} {b_if}"
    );
    let q = queues.to_string();
    let per_end = ["numtxqueues", &q, "numrxqueues", &q];
    let mut argv = vec!["link", "add", a_if];
    argv.extend(per_end);
    argv.extend(["type", "veth", "peer", "name", b_if]);
    argv.extend(per_end);
    argv.extend(["netns", b.name()]);
    a.ip(&argv);
    a.link_up(a_if);
    b.link_up(b_if);
}

/// Deletes `lbt-*` namespaces left behind by test processes that no longer exist (killed runs skip `Drop`).
/// Namespaces of live processes, including other tests running now, are left alone.
pub fn cleanup_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    }
}

/// The pid embedded in a name made by [`NetNs::new`].
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let _counter: u32 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

pub fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("lbt-fixture-1234-7"), Some(1234));
        assert_eq!(owner_pid("lbt-a_b-99-0"), Some(99));
        assert_eq!(owner_pid("lbt-1234-7"), None);
        assert_eq!(owner_pid("lab-x-1234-7"), None);
        assert_eq!(owner_pid("lbt-x-y-7"), None);
    }

    #[test]
    fn mac_round_trip() {
        let m = [0x02, 0, 0xde, 0xad, 0xbe, 0xef];
        assert_eq!(parse_mac(&mac_str(m)), Some(m));
        assert_eq!(parse_mac("02:00:de:ad:be"), None);
    }

    #[test]
    fn namespace_lifecycle_and_veth() {
        if skip_unless_root("namespace_lifecycle_and_veth") {
            return;
        }
        cleanup_stale();
        let path;
        {
            let a = NetNs::new("nsunit");
            let b = NetNs::new("nsunit");
            path = Path::new(NETNS_DIR).join(a.name());
            assert!(path.exists());
            veth_pair(&a, "va", &b, "vb");
            a.add_addr("va", "198.18.200.1/30");
            b.add_addr("vb", "198.18.200.2/30");
            a.add_neigh("va", "198.18.200.2", b.mac("vb"));
            assert!(a.ifindex("va") > 1);
            // A socket keeps the namespace it was created in, so it can be made in one and used from anywhere.
            let rx = b.run(|| std::net::UdpSocket::bind("198.18.200.2:9999").expect("bind in b"));
            rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            a.run(|| {
                let tx = std::net::UdpSocket::bind("198.18.200.1:0").expect("bind in a");
                tx.send_to(b"hello", "198.18.200.2:9999")
                    .expect("send from a");
            });
            let mut buf = [0u8; 16];
            let (n, from) = rx
                .recv_from(&mut buf)
                .expect("datagram across the veth pair");
            assert_eq!(&buf[..n], b"hello");
            assert_eq!(from.ip().to_string(), "198.18.200.1");
            // `run` sees the namespace's interfaces, the calling thread still sees its own.
            let inside = a.run(|| nix_if_exists("va"));
            assert!(inside, "va not visible from NetNs::run");
            assert!(
                !nix_if_exists("va"),
                "va leaked into the caller's namespace"
            );
            {
                let _g = a.enter();
                assert!(nix_if_exists("va"));
            }
            assert!(!nix_if_exists("va"));
        }
        assert!(
            !path.exists(),
            "namespace {} not deleted on drop",
            path.display()
        );
    }

    /// `/sys` is bound to the namespace that mounted it, so ask the kernel through the thread's netns instead.
    fn nix_if_exists(ifname: &str) -> bool {
        nix::net::if_::if_nametoindex(ifname).is_ok()
    }
}
