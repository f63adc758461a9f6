//! The ECMP lab: several balancers behind an upstream router, each announcing the VIP addresses over BGP through its
//! own BIRD, the router spreading flows over them with ECMP on an L4 hash, the backends replying straight to the
//! clients (DSR). Every host in a private network namespace; addresses from 198.18.0.0/15 and fd00::/8 only
//! (config/ecmp-lab.toml has the plan).
//!
//! ```text
//!   clients ── edge ── router (BIRD, multipath, fib_multipath_hash_policy=1) ── fabric ──┬── balancer ×3 (lbd, lb_xdp, BIRD)
//!      ▲                 ▲                                                              └── backend ×N (VIPs on lo, lb_decap)
//!      └──── replies ────┴──────────────────── from the backends (DSR) ────────────────────────┘
//! ```
//! The edge and the fabric are two bridges of one switch namespace. Torn down on drop, also after a panic, with
//! every lbd and BIRD process.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lb_userspace::control::api::{Request, Response};

use crate::harness::guards::{self, BpffsDir, TempDir};
use crate::harness::lab_programs::LabPrograms;
use crate::harness::netns::{self, NetNs, veth_pair};
use crate::lab::bird::{self, Bird};
use crate::lab::daemon::{Launch, Lbd};
use crate::lab::paths::FlowPaths;
use crate::lab::pki::LabPki;
use crate::lab::{
    HOST_IF, HTTP_PORT, LabBackend, LabHost, VIP_V4, VIP_V4_NET, VIP_V6, VIP_V6_NET, plug,
};

/// The router on the edge segment (198.18.64.0/24, fd00:18:64::/64) and on the fabric (198.18.65.0/24,
/// fd00:18:65::/64).
pub const ROUTER_EDGE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 1);
pub const ROUTER_EDGE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0x64, 0, 0, 0, 0, 1);
pub const ROUTER_FABRIC_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 65, 1);
pub const ROUTER_FABRIC_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0x65, 0, 0, 0, 0, 1);
pub const ROUTER_AS: u32 = 65000;
/// All balancers share one AS, as a tier usually does: their routes then have equal AS paths, which BGP multipath
/// needs to merge them.
pub const BALANCER_AS: u32 = 65001;
/// The backends config/ecmp-lab.toml lists; more backends in a lab are spares, for adding at run time.
pub const CONFIGURED_BACKENDS: usize = 3;
/// The router's interfaces: towards the clients and towards the balancers and backends.
const ROUTER_EDGE_IF: &str = "eth0";
const ROUTER_FABRIC_IF: &str = "eth1";
/// The router's port on the fabric bridge, where the flows towards the balancers leave it.
const ROUTER_FABRIC_PORT: &str = "p-rtf";
/// The whole lab (sessions, BGP, the first announcement after the hold-down) comes up within this on a quiet
/// machine in about 10 s; a shared 2-core machine gets four times that.
const UP_LIMIT: Duration = Duration::from_secs(60);

/// `198.18.<net>.<host>` and `fd00:18:<net>::<host>`, the numbers written the same in both (host 11 is `::11`).
fn addr(net: u8, host: u8) -> (Ipv4Addr, Ipv6Addr) {
    let hex =
        |n: u8| u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex digits");
    (
        Ipv4Addr::new(198, 18, net, host),
        Ipv6Addr::new(0xfd00, 0x18, hex(net), 0, 0, 0, 0, hex(host)),
    )
}
const EDGE: u8 = 64;
const FABRIC: u8 = 65;

/// Balancer `k` (0-based, named `lb<k+1>`): 198.18.65.(11+k), fd00:18:65::(11+k).
pub fn balancer_v4(k: usize) -> Ipv4Addr {
    addr(FABRIC, 11 + k as u8).0
}
pub fn balancer_v6(k: usize) -> Ipv6Addr {
    addr(FABRIC, 11 + k as u8).1
}
/// Backend `i`: 198.18.65.(21+i), fd00:18:65::(21+i).
pub fn backend_v4(i: usize) -> Ipv4Addr {
    addr(FABRIC, 21 + i as u8).0
}
pub fn backend_v6(i: usize) -> Ipv6Addr {
    addr(FABRIC, 21 + i as u8).1
}
/// Client `j`: 198.18.64.(2+j), fd00:18:64::(2+j).
fn client(j: usize) -> (Ipv4Addr, Ipv6Addr) {
    addr(EDGE, 2 + j as u8)
}

pub fn vip4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), HTTP_PORT)
}
pub fn vip6() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(VIP_V6), HTTP_PORT)
}

/// One balancer's config as the lab runs it (config/ecmp-lab.toml is balancer 1's).
pub const ECMP_CONFIG: &str = include_str!("../../../config/ecmp-lab.toml");

pub struct EcmpOptions {
    pub balancers: usize,
    /// At least [`CONFIGURED_BACKENDS`]; the others run servers but are in no VIP until added.
    pub backends: usize,
    pub clients: usize,
    /// How each lbd is started: by default as config/lbd.service starts it, with only the unit's capabilities, so
    /// lbd keeps CAP_NET_ADMIN alone once attached (its announcement routes need it) and the lab's announcements
    /// are the ones a sandboxed lbd makes.
    pub launch: Launch,
}

impl Default for EcmpOptions {
    fn default() -> Self {
        EcmpOptions {
            balancers: 3,
            backends: CONFIGURED_BACKENDS,
            clients: 2,
            launch: Launch::as_the_unit(),
        }
    }
}

pub struct EcmpBalancer {
    // Field order is drop order: the processes, then the pins, then the namespace.
    pub lbd: Lbd,
    pub bird: Bird,
    pin_dir: BpffsDir,
    pub host: LabHost,
    /// `lb1`, `lb2`, ...: also the router's BGP protocol for it.
    pub name: String,
    pub config: PathBuf,
}

pub struct EcmpLab {
    // Field order is drop order: processes and programs go before the namespaces they live in.
    pub balancers: Vec<EcmpBalancer>,
    pub router_bird: Bird,
    pub backends: Vec<LabBackend>,
    _pass: LabPrograms,
    pub clients: Vec<LabHost>,
    pub router: NetNs,
    paths: FlowPaths,
    pub switch: NetNs,
    pub pki: LabPki,
    pub dir: TempDir,
}

impl EcmpLab {
    /// Builds the lab and returns once every balancer serves, every BGP session is up and the router has a path
    /// through every balancer for both VIPs.
    pub fn new(opts: &EcmpOptions) -> EcmpLab {
        assert!((1..=9).contains(&opts.balancers), "1..=9 balancers");
        assert!(
            (CONFIGURED_BACKENDS..=9).contains(&opts.backends),
            "{CONFIGURED_BACKENDS}..=9 backends"
        );
        assert!((1..=8).contains(&opts.clients), "1..=8 clients");
        netns::cleanup_stale();
        guards::cleanup_stale();
        let dir = TempDir::new("ecmp");
        let pki = LabPki::create(dir.path());

        let switch = NetNs::new("esw");
        for bridge in ["edge", "fabric"] {
            switch.ip(&["link", "add", bridge, "type", "bridge"]);
            switch.link_up(bridge);
        }

        let router = NetNs::new("rt");
        for (ifname, port, bridge, v4, v6) in [
            (
                ROUTER_EDGE_IF,
                "p-rte",
                "edge",
                ROUTER_EDGE_V4,
                ROUTER_EDGE_V6,
            ),
            (
                ROUTER_FABRIC_IF,
                "p-rtf",
                "fabric",
                ROUTER_FABRIC_V4,
                ROUTER_FABRIC_V6,
            ),
        ] {
            veth_pair(&router, ifname, &switch, port);
            switch.ip(&["link", "set", port, "master", bridge]);
            router.add_addr(ifname, &format!("{v4}/24"));
            router.add_addr(ifname, &format!("{v6}/64"));
        }
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            // The L4 5-tuple picks the path, so the flows of one client spread over the balancers.
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
            // Replies come back from the backends, not through the balancer the request took.
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            router.sysctl(key, value);
        }

        let clients: Vec<LabHost> = (0..opts.clients)
            .map(|j| {
                let (v4, v6) = client(j);
                let c = plug(&switch, "edge", &format!("c{j}"), v4, v6);
                // Checksums in software, as in the single lab (see Lab::new): lb_xdp forwards what the client's veth
                // would have left half-done.
                c.ns.exec(&["ethtool", "-K", HOST_IF, "tx", "off"]);
                c.ns.add_route(VIP_V4_NET, Some(&ROUTER_EDGE_V4.to_string()), HOST_IF);
                c.ns.add_route(VIP_V6_NET, Some(&ROUTER_EDGE_V6.to_string()), HOST_IF);
                c
            })
            .collect();

        let encap_sources: Vec<IpAddr> = (0..opts.balancers)
            .flat_map(|k| [IpAddr::V4(balancer_v4(k)), IpAddr::V6(balancer_v6(k))])
            .collect();
        let mut backends: Vec<LabBackend> = (0..opts.backends)
            .map(|i| {
                let host = plug(
                    &switch,
                    "fabric",
                    &format!("b{i}"),
                    backend_v4(i),
                    backend_v6(i),
                );
                host.ns
                    .add_route("default", Some(&ROUTER_FABRIC_V4.to_string()), HOST_IF);
                host.ns
                    .add_route("default", Some(&ROUTER_FABRIC_V6.to_string()), HOST_IF);
                LabBackend::new(host, i, &encap_sources)
            })
            .collect();
        for b in &mut backends {
            b.start_server(&pki, HTTP_PORT);
        }

        let mut pass = LabPrograms::load().expect("load the lab object for lb_pass");
        let balancers: Vec<EcmpBalancer> = (0..opts.balancers)
            .map(|k| start_balancer(&switch, &mut pass, &dir, k, &opts.launch))
            .collect();
        let neighbors: Vec<(String, IpAddr, u32)> = balancers
            .iter()
            .enumerate()
            .map(|(k, b)| (b.name.clone(), IpAddr::V4(balancer_v4(k)), BALANCER_AS))
            .collect();
        let router_bird = Bird::start(
            &router,
            &dir.path().join("router"),
            "router",
            &bird::router_config(ROUTER_FABRIC_V4, ROUTER_AS, &neighbors),
        );
        let lab = EcmpLab {
            balancers,
            router_bird,
            backends,
            _pass: pass,
            clients,
            router,
            paths: FlowPaths::install(&switch, ROUTER_FABRIC_PORT, &[vip4(), vip6()]),
            switch,
            pki,
            dir,
        };
        for b in &lab.balancers {
            for i in 0..CONFIGURED_BACKENDS {
                b.lbd.wait_backend_state(backend_v4(i), true, UP_LIMIT);
                b.lbd.wait_backend_state(backend_v6(i), true, UP_LIMIT);
            }
        }
        let names: Vec<String> = lab.balancers.iter().map(|b| b.name.clone()).collect();
        lab.router_bird.wait_established(&names, UP_LIMIT);
        lab.wait_next_hops(&lab.all(), UP_LIMIT);
        lab
    }

    /// Every balancer's index.
    pub fn all(&self) -> Vec<usize> {
        (0..self.balancers.len()).collect()
    }

    /// The balancers the router's route to `vip` goes through now (none without a route).
    pub fn next_hops(&self, vip: IpAddr) -> BTreeSet<usize> {
        let family = if vip.is_ipv4() { "-4" } else { "-6" };
        let out = self
            .router
            .ip(&[family, "-j", "route", "show", &vip.to_string()]);
        let routes: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!("ip -j route show {vip} in the router: {e}: {out}");
        });
        let mut gateways = Vec::new();
        for r in routes.as_array().into_iter().flatten() {
            match r.get("nexthops").and_then(|n| n.as_array()) {
                Some(hops) => gateways.extend(hops.iter().filter_map(|h| h.get("gateway"))),
                None => gateways.extend(r.get("gateway")),
            }
        }
        gateways
            .iter()
            .filter_map(|g| g.as_str()?.parse::<IpAddr>().ok())
            .filter_map(|g| self.balancer_at(g))
            .collect()
    }

    /// Which balancer has address `ip`.
    pub fn balancer_at(&self, ip: IpAddr) -> Option<usize> {
        (0..self.balancers.len())
            .find(|&k| ip == IpAddr::V4(balancer_v4(k)) || ip == IpAddr::V6(balancer_v6(k)))
    }

    /// Waits until the router's routes to both VIPs go through exactly the balancers `expect`; returns how long
    /// that took (the convergence time, when called right after a change).
    pub fn wait_next_hops(&self, expect: &[usize], limit: Duration) -> Duration {
        let want: BTreeSet<usize> = expect.iter().copied().collect();
        let start = Instant::now();
        loop {
            let now = [
                self.next_hops(IpAddr::V4(VIP_V4)),
                self.next_hops(IpAddr::V6(VIP_V6)),
            ];
            if now.iter().all(|n| *n == want) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "the router's routes to {VIP_V4} and {VIP_V6} go through {now:?}, not {want:?}, after {limit:?}\n\
                 router BIRD:\n{}\n{}",
                self.router_bird.birdc(&["show", "protocols"]),
                self.router_bird.birdc(&["show", "route"]),
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The balancer each client flow (by its client address and port) crossed during the last `window`, as the
    /// switch saw it (see `paths`); a flow seen on two balancers in the window (it moved meanwhile) is left out.
    pub fn flow_balancers(&self, window: Duration) -> BTreeMap<SocketAddr, usize> {
        self.paths
            .observe(window)
            .into_iter()
            .filter_map(|(flow, ports)| {
                let [port] = Vec::from_iter(ports).try_into().ok()?;
                let k = self
                    .balancers
                    .iter()
                    .position(|b| port == format!("p-{}", b.name))?;
                Some((flow, k))
            })
            .collect()
    }

    /// The VIP addresses balancer `k`'s lbd announces now: its routes in the announcement table, read from the
    /// kernel as BIRD reads them.
    pub fn announced_by(&self, k: usize) -> BTreeSet<IpAddr> {
        let announce = &self.balancer_config(k).announce;
        let (table, proto) = (announce.table.to_string(), announce.protocol.to_string());
        ["-4", "-6"]
            .iter()
            .flat_map(|family| {
                let out = self.balancers[k].host.ns.ip(&[
                    family, "-j", "route", "show", "table", &table, "proto", &proto,
                ]);
                route_destinations(&out)
            })
            .collect()
    }

    /// Balancer `k`'s config as lbd runs it.
    pub fn balancer_config(&self, k: usize) -> lb_userspace::config::Config {
        let path = &self.balancers[k].config;
        lb_userspace::config::Config::load(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// After a change that makes balancer `k` announce both VIPs (`announced`) or neither: how long (from now) until
    /// its lbd had written (or removed) the routes, and until the router's routes went through exactly `expect`.
    pub fn wait_announcement(
        &self,
        k: usize,
        announced: bool,
        expect: &[usize],
        limit: Duration,
    ) -> (Duration, Duration) {
        let start = Instant::now();
        let vips: BTreeSet<IpAddr> = [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)].into();
        loop {
            let routes = self.announced_by(k);
            let done = if announced {
                routes.is_superset(&vips)
            } else {
                routes.is_disjoint(&vips)
            };
            if done {
                let lbd = start.elapsed();
                let router = lbd + self.wait_next_hops(expect, limit.saturating_sub(lbd));
                return (lbd, router);
            }
            assert!(
                start.elapsed() < limit,
                "{}'s announcement routes are {routes:?} after {limit:?}; its lbd log:\n{}",
                self.balancers[k].name,
                self.balancers[k].lbd.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Each VIP's table digest on balancer `k` (`lbctl vip list --json`'s `table_digest`).
    pub fn digests(&self, k: usize) -> BTreeMap<String, String> {
        match self.balancers[k].lbd.call(&Request::VipList) {
            Response::Vips(vips) => vips
                .into_iter()
                .map(|v| (v.vip.to_string(), v.table_digest))
                .collect(),
            other => panic!("{}: VipList answered {other:?}", self.balancers[k].name),
        }
    }

    /// Packets balancer `k`'s lb_xdp counted for the VIPs.
    pub fn vip_packets(&self, k: usize) -> u64 {
        match self.balancers[k].lbd.call(&Request::Stats) {
            Response::Stats(s) => s.vips.iter().map(|v| v.packets).sum(),
            other => panic!("{}: Stats answered {other:?}", self.balancers[k].name),
        }
    }

    /// Runs `lbctl ARGS` on every balancer; panics if one fails.
    pub fn lbctl_all(&self, args: &[&str]) {
        for b in &self.balancers {
            b.lbd.lbctl(args);
        }
    }
}

/// Balancer `k`: its host on the fabric, lb_pass on its switch port (native XDP_TX on veth needs a program on the
/// peer), lbd with its own copy of config/ecmp-lab.toml, and its BIRD.
fn start_balancer(
    switch: &NetNs,
    pass: &mut LabPrograms,
    dir: &TempDir,
    k: usize,
    launch: &Launch,
) -> EcmpBalancer {
    let name = format!("lb{}", k + 1);
    let host = plug(switch, "fabric", &name, balancer_v4(k), balancer_v6(k));
    // bpf_fib_lookup answers only for interfaces that forward.
    host.ns.sysctl("net.ipv4.ip_forward", "1");
    host.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    let port = format!("p-{name}");
    switch.run(|| {
        let prog = pass.xdp(lb_common::programs::PASS).expect("lb_pass");
        prog.attach(&port, aya::programs::XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attach lb_pass (native) to {port}: {e}"));
    });
    let own = dir.path().join(&name);
    std::fs::create_dir_all(&own).expect("balancer directory");
    let pin_dir = BpffsDir::new("ecmp");
    let mut cfg: toml::Table = ECMP_CONFIG.parse().expect("config/ecmp-lab.toml parses");
    let set = |cfg: &mut toml::Table, table: &str, key: &str, value: String| {
        cfg.get_mut(table)
            .and_then(|t| t.as_table_mut())
            .unwrap_or_else(|| panic!("config/ecmp-lab.toml has a [{table}] table"))
            .insert(key.into(), value.into());
    };
    set(
        &mut cfg,
        "daemon",
        "encap_src_v4",
        balancer_v4(k).to_string(),
    );
    set(
        &mut cfg,
        "daemon",
        "encap_src_v6",
        balancer_v6(k).to_string(),
    );
    set(
        &mut cfg,
        "daemon",
        "pin_dir",
        pin_dir.path().display().to_string(),
    );
    let path = |f: &str| own.join(f).display().to_string();
    set(&mut cfg, "daemon", "control_socket", path("lbd.sock"));
    set(&mut cfg, "announce", "drain_file", path("drained"));
    let config = own.join("lbd.toml");
    std::fs::write(&config, toml::to_string(&cfg).expect("serialize config"))
        .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
    let lbd = Lbd::start_in_with(&host.ns, &config, &own.join("lbd.log"), launch.clone());
    let table: u32 = cfg["announce"]["table"]
        .as_integer()
        .and_then(|t| t.try_into().ok())
        .expect("announce.table");
    let bird = Bird::start(
        &host.ns,
        &own,
        "bird",
        &bird::balancer_config(
            balancer_v4(k),
            BALANCER_AS,
            table,
            IpAddr::V4(ROUTER_FABRIC_V4),
            ROUTER_AS,
            IpAddr::V6(balancer_v6(k)),
        ),
    );
    EcmpBalancer {
        lbd,
        bird,
        pin_dir,
        host,
        name,
        config,
    }
}

impl EcmpBalancer {
    /// Where lbd pins its maps and link.
    pub fn pin_dir(&self) -> &std::path::Path {
        self.pin_dir.path()
    }
}

/// The destinations of the routes `ip -j route show ...` printed.
pub fn route_destinations(json: &str) -> Vec<IpAddr> {
    let routes: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("ip -j route show: {e}: {json}"));
    routes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("dst")?.as_str()?.parse().ok())
        .collect()
}
