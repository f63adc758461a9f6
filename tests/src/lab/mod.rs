//! The lab: a client, a balancer and backends in private network namespaces on one bridged segment, the way an
//! edge host sits in front of its gateways. The demo, the end-to-end tests and the load tests all build it here.
//!
//! ```text
//!   client ns (198.18.0.2)  ──┐
//!   balancer ns (198.18.0.1) ─┤ switch ns: bridge br0 ── backend ns ×N (198.18.0.11..; VIPs on lo, lb_decap)
//!                             │   (lb_pass on the balancer's port: native XDP_TX on veth needs a program on the peer)
//! ```
//! VIPs live in 198.19.0.0/24 and fd00:19::/64, routed by the client to the balancer, so no host on the segment ever
//! resolves a VIP with ARP/ND (the backends hold it on loopback, as DSR requires). Replies go straight from backend
//! to client. Everything is torn down on drop, also after a panic; [`guards::cleanup_stale`] removes the leftovers of a killed
//! run (namespaces, bpffs pins) at start.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use lb_common::AddrKey;
use lb_userspace::dataplane::{Dataplane, LoadOptions, MapSizes};

use crate::harness::guards::{self, BpffsDir, ChildGuard, TempDir};
use crate::harness::lab_programs::LabPrograms;
use crate::harness::netns::{self, NetNs, veth_pair_with_queues};
use crate::harness::wait;
use pki::LabPki;

pub mod bare;
pub mod bird;
pub mod churn;
pub mod daemon;
pub mod ecmp;
pub mod interrupt;
pub mod nft_counters;
pub mod paths;
pub mod pki;
pub mod promql;
pub mod scrape;
pub mod servers;
pub mod sessions;
pub mod traffic;

pub const LAN_V4_PREFIX: u8 = 24;
pub const LAN_V6_PREFIX: u8 = 64;
pub const BALANCER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const BALANCER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
/// The lab's VIPs (config/lab.toml serves these).
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
/// A second IPv4 VIP address, for tests that add a VIP at run time.
pub const VIP2_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
pub const VIP_V4_NET: &str = "198.19.0.0/24";
pub const VIP_V6_NET: &str = "fd00:19::/64";
pub const HTTP_PORT: u16 = 80;
/// Every backend also serves HTTPS here, with the lab's certificate (see `pki`).
pub const HTTPS_PORT: u16 = 443;
pub const UDP_PORT: u16 = 53;
/// Interface name of every host's port on the segment (names are per namespace).
pub const HOST_IF: &str = "eth0";

/// Backend `i` (0-based): 198.18.0.(11+i), fd00:18::(11+i).
pub fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + i as u8)
}
pub fn backend_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x11 + i as u16)
}

/// The lab config with the IPv4 HTTP VIP's backends replaced by `(backend index, weight)`.
pub fn with_http_backends(backends: &[(usize, u32)]) -> impl FnOnce(&mut toml::Table) + '_ {
    move |cfg| {
        let vips = cfg
            .get_mut("vip")
            .and_then(|v| v.as_array_mut())
            .expect("[[vip]] array");
        let http = vips
            .iter_mut()
            .filter_map(|v| v.as_table_mut())
            .find(|v| {
                v.get("address").and_then(|a| a.as_str()) == Some(&VIP_V4.to_string())
                    && v.get("port").and_then(|p| p.as_integer()) == Some(HTTP_PORT as i64)
            })
            .expect("the lab config has the IPv4 HTTP VIP");
        let list: Vec<toml::Value> = backends
            .iter()
            .map(|(i, w)| {
                let mut t = toml::Table::new();
                t.insert("address".into(), backend_v4(*i).to_string().into());
                t.insert("weight".into(), i64::from(*w).into());
                toml::Value::Table(t)
            })
            .collect();
        http.insert("backends".into(), toml::Value::Array(list));
    }
}

/// Extra clients beyond the first: 198.18.0.(3+j).
fn client_v4(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 2 + j as u8)
}
fn client_v6(j: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2 + j as u16)
}

pub struct LabOptions {
    pub backends: usize,
    pub clients: usize,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            backends: 3,
            clients: 1,
        }
    }
}

pub struct LabHost {
    pub ns: NetNs,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// A backend host: its namespace, addresses, the decap program and its servers.
pub struct LabBackend {
    pub host: LabHost,
    pub name: String,
    server: Option<ChildGuard>,
    /// lb_decap, attached while `Some`.
    decap: Option<Dataplane>,
    /// The balancers' encapsulation sources lb_decap accepts.
    from: Vec<IpAddr>,
}

pub struct Lab {
    // Field order is drop order: processes and programs go before the namespaces they live in.
    pub backends: Vec<LabBackend>,
    _pass: LabPrograms,
    pub clients: Vec<LabHost>,
    pub balancer: LabHost,
    pub switch: NetNs,
    /// The lab's CA and the backends' certificate (files in `dir`).
    pub pki: LabPki,
    /// A private directory for configs, sockets and logs of this lab.
    pub dir: TempDir,
    /// Where lbd pins its maps and link (on the host's bpffs; removed on drop).
    pub pin_dir: BpffsDir,
}

impl Lab {
    pub fn new(opts: &LabOptions) -> Lab {
        assert!(opts.backends >= 1 && opts.backends <= 40, "1..=40 backends");
        assert!(opts.clients >= 1 && opts.clients <= 8, "1..=8 clients");
        netns::cleanup_stale();
        guards::cleanup_stale();
        let dir = TempDir::new("lab");
        let pki = LabPki::create(dir.path());
        let pin_dir = BpffsDir::new("lab");

        let switch = NetNs::new("sw");
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.link_up("br0");
        let attach = |role: &str, v4: Ipv4Addr, v6: Ipv6Addr| plug(&switch, "br0", role, v4, v6);

        // One queue per CPU on the balancer's cable, as a NIC's RSS would give it.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let balancer = plug_with_queues(&switch, "br0", "lb", BALANCER_V4, BALANCER_V6, cpus);
        // bpf_fib_lookup answers only for interfaces that forward (else BPF_FIB_LKUP_RET_FWD_DISABLED): a balancer
        // host must enable forwarding, for IPv6 too.
        balancer.ns.sysctl("net.ipv4.ip_forward", "1");
        balancer.ns.sysctl("net.ipv6.conf.all.forwarding", "1");

        // Native XDP_TX out of the balancer's veth is dropped unless the peer runs an XDP program too.
        let mut pass = LabPrograms::load().expect("load the lab object for lb_pass");
        switch.run(|| {
            let prog = pass.xdp(lb_common::programs::PASS).expect("lb_pass");
            prog.attach("p-lb", aya::programs::XdpMode::Driver)
                .expect("attach lb_pass (native) to the balancer's switch port");
        });

        let clients: Vec<LabHost> = (0..opts.clients)
            .map(|j| {
                let c = attach(&format!("c{j}"), client_v4(j), client_v6(j));
                // A veth leaves TCP/UDP checksums to "hardware" (CHECKSUM_PARTIAL); XDP forwarding drops that skb
                // state, so the backend would get a packet with a half-done checksum. Real NICs receive complete
                // checksums; make the client's veth compute them in software to match.
                c.ns.exec(&["ethtool", "-K", HOST_IF, "tx", "off"]);
                c.ns.add_route(VIP_V4_NET, Some(&BALANCER_V4.to_string()), HOST_IF);
                c.ns.add_route(VIP_V6_NET, Some(&BALANCER_V6.to_string()), HOST_IF);
                c
            })
            .collect();

        let backends = (0..opts.backends)
            .map(|i| {
                let host = attach(&format!("b{i}"), backend_v4(i), backend_v6(i));
                // The balancer's encapsulation sources (config/lab.toml's encap_src_v4/v6).
                LabBackend::new(host, i, &[IpAddr::V4(BALANCER_V4), IpAddr::V6(BALANCER_V6)])
            })
            .collect::<Vec<_>>();

        let mut lab = Lab {
            backends,
            _pass: pass,
            clients,
            balancer,
            switch,
            pki,
            dir,
            pin_dir,
        };
        for i in 0..lab.backends.len() {
            lab.start_server(i);
        }
        lab
    }

    /// Starts backend `i`'s servers and waits until they accept connections.
    pub fn start_server(&mut self, i: usize) {
        self.backends[i].start_server(&self.pki, HTTP_PORT);
    }

    /// Starts backend `i`'s servers with HTTP on `http_port` instead of the VIPs' port (another server takes that).
    pub fn start_server_on(&mut self, i: usize, http_port: u16) {
        self.backends[i].start_server(&self.pki, http_port);
    }

    /// Stops backend `i`'s servers (the process is killed: new connections are refused, open ones reset).
    pub fn stop_server(&mut self, i: usize) {
        self.backends[i].stop_server();
    }

    pub fn client(&self) -> &LabHost {
        &self.clients[0]
    }

    /// Writes the lab's lbd config (config/lab.toml with this lab's pin directory, socket and log paths) and
    /// returns its path. `edit` may change the parsed config before it is written.
    pub fn write_config(&self, name: &str, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
        let mut cfg: toml::Table = LAB_CONFIG.parse().expect("config/lab.toml parses");
        {
            let daemon = cfg
                .get_mut("daemon")
                .and_then(|d| d.as_table_mut())
                .expect("config/lab.toml has a [daemon] table");
            daemon.insert(
                "pin_dir".into(),
                self.pin_dir.path().display().to_string().into(),
            );
            daemon.insert(
                "control_socket".into(),
                self.socket_path().display().to_string().into(),
            );
        }
        edit(&mut cfg);
        let path = self.dir.path().join(name);
        std::fs::write(&path, toml::to_string(&cfg).expect("serialize config"))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("lbd.sock")
    }
}

impl LabBackend {
    /// Backend `i` (named `backend-<i+1>`) on `host`: the VIPs on its loopback and lb_decap taking IP-in-IP from
    /// the balancers' encapsulation sources `from`. Its servers start with [`LabBackend::start_server`].
    pub fn new(host: LabHost, i: usize, from: &[IpAddr]) -> LabBackend {
        for vip in [IpAddr::V4(VIP_V4), IpAddr::V4(VIP2_V4), IpAddr::V6(VIP_V6)] {
            let cidr = match vip {
                IpAddr::V4(a) => format!("{a}/32"),
                IpAddr::V6(a) => format!("{a}/128"),
            };
            host.ns.add_addr("lo", &cidr);
        }
        let decap = attach_decap(&host, from);
        LabBackend {
            name: format!("backend-{}", i + 1),
            host,
            server: None,
            decap: Some(decap),
            from: from.to_vec(),
        }
    }

    /// Detaches lb_decap (the program goes with its last descriptor): tunnelled packets reach the kernel, which has
    /// no tunnel device here and discards them.
    pub fn detach_decap(&mut self) {
        assert!(
            self.decap.take().is_some(),
            "{}: lb_decap was not attached",
            self.name
        );
    }

    /// Attaches lb_decap again.
    pub fn attach_decap(&mut self) {
        assert!(
            self.decap.is_none(),
            "{}: lb_decap is attached already",
            self.name
        );
        self.decap = Some(attach_decap(&self.host, &self.from));
    }

    /// Starts the servers (HTTP on `http_port` and HTTPS on :443 of every address, UDP on :53 of the VIPs and its
    /// own addresses) and waits until they accept connections.
    pub fn start_server(&mut self, pki: &LabPki, http_port: u16) {
        let exe = lab_binary();
        assert!(self.server.is_none(), "{} is already serving", self.name);
        // UDP sockets are bound to exact addresses so each reply leaves from the address the request went to:
        // the VIPs for clients (DSR), the backend's own addresses for health checks.
        let udp: Vec<String> = [
            IpAddr::V4(VIP_V4),
            IpAddr::V6(VIP_V6),
            IpAddr::V4(self.host.v4),
            IpAddr::V6(self.host.v6),
        ]
        .iter()
        .map(|ip| std::net::SocketAddr::new(*ip, UDP_PORT).to_string())
        .collect();
        let (http, https_port) = (http_port.to_string(), HTTPS_PORT.to_string());
        let mut argv = vec![
            exe.to_str().expect("utf-8 path"),
            "serve",
            "--name",
            &self.name,
            "--http-port",
            &http,
            "--https-port",
            &https_port,
            "--tls-cert",
            pki.cert.to_str().expect("utf-8 path"),
            "--tls-key",
            pki.key.to_str().expect("utf-8 path"),
        ];
        for u in &udp {
            argv.extend(["--udp", u.as_str()]);
        }
        let mut cmd = self.host.ns.command(&argv);
        cmd.stdin(Stdio::null());
        self.server = Some(ChildGuard::spawn(cmd, &format!("{} server", self.name)));
        let addr = std::net::SocketAddr::new(IpAddr::V4(self.host.v4), http_port);
        self.host.ns.run(|| {
            wait::until_true(
                &format!("the server on {addr} to accept"),
                Duration::from_secs(10),
                Duration::from_millis(50),
                || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
                String::new,
            )
        });
    }

    /// Stops the servers (the process is killed: new connections are refused, open ones reset).
    pub fn stop_server(&mut self) {
        self.server = None;
    }
}

/// A host `role` in a namespace of its own, plugged into `bridge` of `switch` through port `p-<role>`, with `v4`/24
/// and `v6`/64 on its port `eth0`.
pub fn plug(switch: &NetNs, bridge: &str, role: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> LabHost {
    plug_with_queues(switch, bridge, role, v4, v6, 1)
}

/// [`plug`] with `queues` queues on both ends of the host's cable.
pub fn plug_with_queues(
    switch: &NetNs,
    bridge: &str,
    role: &str,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    queues: usize,
) -> LabHost {
    let ns = NetNs::new(role);
    let port = switch_port(role);
    veth_pair_with_queues(&ns, HOST_IF, switch, &port, queues);
    switch.ip(&["link", "set", &port, "master", bridge]);
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
    ns.add_addr(HOST_IF, &format!("{v4}/{LAN_V4_PREFIX}"));
    ns.add_addr(HOST_IF, &format!("{v6}/{LAN_V6_PREFIX}"));
    LabHost { ns, v4, v6 }
}

/// The switch-side name of a host's port: `p-<role>` (role "lb", "c0", "b1", ...).
fn switch_port(role: &str) -> String {
    format!("p-{role}")
}

/// The switch-side port of the balancer.
pub fn balancer_switch_port() -> String {
    switch_port("lb")
}

/// The switch-side port of client `j` (0-based).
pub fn client_switch_port(j: usize) -> String {
    switch_port(&format!("c{j}"))
}

/// An nftables interface-name pattern that matches the switch-side port of every backend.
pub fn backend_switch_ports() -> String {
    switch_port("b*")
}

/// The lab's config as shipped (the demo runs exactly this, with paths made private to the run).
pub const LAB_CONFIG: &str = include_str!("../../../config/lab.toml");

/// Map sizes for the backends' lb_decap, which needs the production object but not its balancer maps.
pub fn small_sizes() -> MapSizes {
    MapSizes {
        max_vips: 4,
        max_backends: 8,
        flow_table_size: 64,
        max_ring_size: 7,
    }
}

/// Attaches lb_decap (native) to a backend's port: IP-in-IP from one of `from` for one of its addresses whose inner
/// destination is a lab VIP is decapsulated and passed up; the kernel here has no tunnel devices.
fn attach_decap(host: &LabHost, from: &[IpAddr]) -> Dataplane {
    let mut dp = Dataplane::load(&LoadOptions {
        sizes: small_sizes(),
        pin_dir: None,
        programs: &[lb_common::programs::DECAP],
    })
    .expect("load the eBPF object for lb_decap");
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V4(VIP2_V4), IpAddr::V6(VIP_V6)] {
        dp.add_decap_vip(&AddrKey::new(vip)).expect("LB_DECAP_VIPS");
    }
    for local in [IpAddr::V4(host.v4), IpAddr::V6(host.v6)] {
        dp.add_decap_local(&AddrKey::new(local))
            .expect("LB_DECAP_LOCAL");
    }
    for balancer in from {
        dp.add_decap_from(&AddrKey::new(*balancer))
            .expect("LB_DECAP_FROM");
    }
    host.ns.run(|| {
        let prog = dp.xdp(lb_common::programs::DECAP).expect("lb_decap");
        prog.attach(HOST_IF, aya::programs::XdpMode::Driver)
            .expect("attach lb_decap (native) to the backend's port");
    });
    dp
}

/// The `lb-lab` binary (it also serves as the backends' server process).
pub fn lab_binary() -> PathBuf {
    let me = std::env::current_exe().expect("current_exe");
    if me.file_name().is_some_and(|n| n == "lb-lab") {
        return me;
    }
    target_binary("lb-lab")
}

/// A binary of this workspace next to the running executable: `target/<profile>/<name>` (test executables live in
/// `target/<profile>/deps`). Panics with the command to build it when it is missing.
pub fn target_binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("current_exe");
    for dir in me.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{name} not found next to {} — build it first (`cargo build -p lb-userspace -p lb-tests --bins`, which \
         `cargo xtask test` does)",
        me.display()
    );
}
