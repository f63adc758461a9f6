//! End-to-end: the real lbd, the real XDP programs (native mode on veth), real TCP/UDP from a client namespace to
//! backends in their own namespaces. Each test builds its own lab (see tests/src/lab/) and tears it down, also when
//! it fails. Needs root; prints a skip reason otherwise.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_tests::harness::netns::{NetNs, skip_unless_root};
use lb_tests::harness::wait;
use lb_tests::lab::daemon::Lbd;
use lb_tests::lab::nft_counters::NftCounters;
use lb_tests::lab::traffic::{self, HttpConn, Tally};
use lb_tests::lab::{self, Lab, LabOptions, with_http_backends};
use lb_userspace::control::api::{Request, Response};

fn vip4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::HTTP_PORT)
}

fn vip6() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(lab::VIP_V6), lab::HTTP_PORT)
}

fn start(backends: usize, edit: impl FnOnce(&mut toml::Table)) -> (Lab, Lbd) {
    let lab = Lab::new(&LabOptions {
        backends,
        clients: 1,
    });
    let cfg = lab.write_config("lbd.toml", edit);
    let lbd = Lbd::start(&lab, &cfg);
    for b in &lab.backends {
        lbd.wait_backend_state(b.host.v4, true, Duration::from_secs(20));
    }
    (lab, lbd)
}

/// Requests for a share check: one backend's share of n requests at 1/3 varies by sqrt(2/n) relative (binomial),
/// 2.6% at 3000, so [`assert_share`]'s ±10% is about four standard deviations. A fair split passes; a backend with a
/// sixth more or less of the ring than its due fails.
const SHARE_REQUESTS: usize = 3000;

fn assert_share(t: &Tally, name: &str, expected: f64, what: &str) {
    let got = *t.per_backend.get(name).unwrap_or(&0) as f64 / t.total_ok() as f64;
    assert!(
        (got - expected).abs() <= 0.10 * expected,
        "{what}: {name} got {:.1}% of requests, expected {:.1}% ± 10% (relative)\n{}",
        100.0 * got,
        100.0 * expected,
        t.render()
    );
}

/// Each backend of the lab got an equal share of the answered requests.
fn assert_even(t: &Tally, lab: &Lab, what: &str) {
    for b in &lab.backends {
        assert_share(t, &b.name, 1.0 / lab.backends.len() as f64, what);
    }
}

#[test]
fn equal_and_weighted_shares() {
    if skip_unless_root("equal_and_weighted_shares") {
        return;
    }
    let (lab, lbd) = start(3, |_| {});
    let t = traffic::http_burst(&lab.client().ns, vip4(), SHARE_REQUESTS, 16);
    println!("equal weights:\n{}", t.render());
    assert_eq!(t.failures, 0, "failed requests: {:?}", t.errors);
    assert_even(&t, &lab, "equal weights");

    // Weights 1:2:3 through a reload of the running daemon.
    lab.write_config(
        "lbd.toml",
        with_http_backends(&[(0, 100), (1, 200), (2, 300)]),
    );
    match lbd.call(&Request::Reload) {
        Response::Ok { .. } => {}
        other => panic!("reload: {other:?}"),
    }
    let t = traffic::http_burst(&lab.client().ns, vip4(), 6000, 16);
    println!("weights 1:2:3:\n{}", t.render());
    assert_eq!(t.failures, 0, "failed requests: {:?}", t.errors);
    for (i, share) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].into_iter().enumerate() {
        assert_share(&t, &lab.backends[i].name, share, "weights 1:2:3");
    }
}

fn vip_packets(lbd: &Lbd, vip: SocketAddr) -> u64 {
    match lbd.call(&Request::Stats) {
        Response::Stats(s) => s
            .vips
            .iter()
            .filter(|v| v.vip.address == vip.ip() && v.vip.port == vip.port())
            .map(|v| v.packets)
            .sum(),
        other => panic!("stats: {other:?}"),
    }
}

/// Counters on the lab's switch (bridge forward hook: every frame between two hosts is seen once, by no code of the
/// project) for what DSR means: the client's packets to the VIP, the balancer's IP-in-IP packets to the backends,
/// all the balancer transmits, and the replies reaching the client, in all and straight from a backend.
fn dsr_counters(lab: &Lab) -> NftCounters<'_> {
    let (lb, client, backends) = (
        lab::balancer_switch_port(),
        lab::client_switch_port(0),
        lab::backend_switch_ports(),
    );
    let (vip, port) = (lab::VIP_V4, lab::HTTP_PORT);
    // The client's packets only: the balancer's VIP-path health probes are tunnelled too, with its own address as
    // the inner source (the inner IPv4 source is 12 bytes into the inner header, after the 20-byte outer one).
    let client_hex = format!("{:#010x}", u32::from(lab::CLIENT_V4));
    let chains = format!(
        "  chain forward {{\n    type filter hook forward priority 0; policy accept;\n\
         iifname \"{client}\" ip daddr {vip} tcp dport {port} counter name \"to_vip\"\n\
         iifname \"{lb}\" oifname \"{backends}\" ip protocol 4 @nh,256,32 {client_hex} counter name \"tunnelled\"\n\
         iifname \"{lb}\" counter name \"balancer_tx\"\n\
         oifname \"{client}\" ip saddr {vip} tcp sport {port} counter name \"replies\"\n\
         iifname \"{backends}\" oifname \"{client}\" ip saddr {vip} tcp sport {port} \
         counter name \"replies_direct\"\n  }}"
    );
    NftCounters::install(
        &lab.switch,
        "bridge",
        "lbt_dsr",
        &[
            "to_vip",
            "tunnelled",
            "balancer_tx",
            "replies",
            "replies_direct",
        ],
        &chains,
    )
}

#[test]
fn direct_server_return() {
    if skip_unless_root("direct_server_return") {
        return;
    }
    let (lab, lbd) = start(3, |_| {});
    let counters = dsr_counters(&lab);
    let vip0 = vip_packets(&lbd, vip4());
    let requests = 500;
    let t = traffic::http_burst(&lab.client().ns, vip4(), requests, 8);
    assert_eq!(t.failures, 0, "failed requests: {:?}", t.errors);
    // The last FIN/ACK exchanges of the burst are still crossing the switch when the client returns.
    std::thread::sleep(Duration::from_millis(300));
    let c = counters.read();
    let vip = vip_packets(&lbd, vip4()) - vip0;
    println!("switch counters: {c:?}; lb_xdp counted {vip} VIP packets");
    let n = |name: &str| c.get(name).copied().unwrap_or(0);
    let (to_vip, tunnelled, replies) = (n("to_vip"), n("tunnelled"), n("replies"));
    assert!(
        to_vip >= 3 * requests as u64 && replies * 9 >= to_vip * 5,
        "{requests} requests: {to_vip} packets to the VIP and {replies} replies crossed the switch ({c:?})"
    );
    // Every VIP packet leaves the balancer once, tunnelled to a backend. A frame lost on a full veth ring is sent
    // again by TCP and counted again on the client's side only, hence the 1% below and none above.
    let one_per_packet = |what: &str, got: u64| {
        assert!(
            got <= to_vip && got * 100 >= to_vip * 99,
            "{what}: {got} for the client's {to_vip} packets to the VIP (switch counters {c:?})"
        );
    };
    one_per_packet("lb_xdp's VIP packet counter", vip);
    one_per_packet(
        "IP-in-IP packets from the balancer to the backends",
        tunnelled,
    );
    // Besides the tunnelled requests the balancer sends only its health probes (about 60 frames a second here),
    // however many replies there are; replies through it would add at least one frame each.
    let other = n("balancer_tx") - tunnelled;
    assert!(
        other < replies,
        "the balancer transmitted {other} frames besides the tunnelled ones while {replies} replies reached the \
         client: its transmit count grows with the replies (switch counters {c:?})"
    );
    assert_eq!(
        n("replies_direct"),
        replies,
        "replies reached the client other than straight from a backend (switch counters {c:?})"
    );
}

#[test]
fn backend_added_while_connections_are_open() {
    if skip_unless_root("backend_added_while_connections_are_open") {
        return;
    }
    let (lab, lbd) = start(3, with_http_backends(&[(0, 100), (1, 100)]));
    let mut conns = traffic::open_connections(&lab.client().ns, vip4(), 120);
    let third = lab::backend_v4(2);
    let out = lbd.lbctl(&[
        "backend",
        "add",
        &format!("{}/tcp", vip4()),
        &third.to_string(),
    ]);
    println!("lbctl backend add: {out}");
    lbd.wait_backend_state(third, true, Duration::from_secs(10));
    for (i, (c, who)) in conns.iter_mut().enumerate() {
        let again = c
            .get()
            .unwrap_or_else(|e| panic!("connection {i} ({who}) broke after the add: {e}"));
        assert_eq!(&again, who, "connection {i} moved from {who} to {again}");
    }
    let t = traffic::http_burst(&lab.client().ns, vip4(), SHARE_REQUESTS, 16);
    println!("after the add:\n{}", t.render());
    assert_eq!(t.failures, 0, "failed requests: {:?}", t.errors);
    assert_even(&t, &lab, "new connections after the add");
}

/// Opens `n` connections and groups them by backend.
fn open_by_backend(lab: &Lab, n: usize) -> BTreeMap<String, Vec<HttpConn>> {
    let mut by: BTreeMap<String, Vec<HttpConn>> = BTreeMap::new();
    for (c, who) in traffic::open_connections(&lab.client().ns, vip4(), n) {
        by.entry(who).or_default().push(c);
    }
    by
}

#[test]
fn backend_failure_and_recovery() {
    if skip_unless_root("backend_failure_and_recovery") {
        return;
    }
    let (mut lab, lbd) = start(3, |_| {});
    let mut open = open_by_backend(&lab, 60);
    let victim = lab.backends[1].name.clone();
    lab.stop_server(1);
    let took = lbd.wait_backend_state(lab::backend_v4(1), false, Duration::from_secs(10));
    // lab.toml: interval 500 ms, fall 2 → out of rotation within 2 × 0.5 s + 1 s.
    println!(
        "{victim} marked down {:.2} s after its server stopped",
        took.as_secs_f64()
    );
    assert!(
        took <= Duration::from_millis(2000),
        "down after {took:?}, limit fall × interval + 1 s = 2 s"
    );

    for (who, conns) in open.iter_mut().filter(|(w, _)| **w != victim) {
        for c in conns {
            assert_eq!(
                &c.get()
                    .unwrap_or_else(|e| panic!("connection to {who} broke: {e}")),
                who
            );
        }
    }
    let t = traffic::http_burst(&lab.client().ns, vip4(), 300, 8);
    println!("with {victim} down:\n{}", t.render());
    assert_eq!(
        t.failures, 0,
        "requests failed while {victim} was out: {:?}",
        t.errors
    );
    assert!(
        !t.per_backend.contains_key(&victim),
        "{victim} still receives new connections"
    );

    lab.start_server(1);
    let back = lbd.wait_backend_state(lab::backend_v4(1), true, Duration::from_secs(10));
    println!(
        "{victim} back up {:.2} s after its server returned",
        back.as_secs_f64()
    );
    let t = traffic::http_burst(&lab.client().ns, vip4(), SHARE_REQUESTS, 16);
    println!("with {victim} back:\n{}", t.render());
    assert_eq!(t.failures, 0, "{:?}", t.errors);
    assert_even(&t, &lab, &format!("{victim} back in rotation"));
}

#[test]
fn drain_keeps_open_connections_and_takes_no_new_ones() {
    if skip_unless_root("drain_keeps_open_connections_and_takes_no_new_ones") {
        return;
    }
    let (lab, lbd) = start(3, |_| {});
    let mut open = open_by_backend(&lab, 60);
    let drained = lab.backends[0].name.clone();
    assert!(
        open.get(&drained).is_some_and(|c| !c.is_empty()),
        "no connection landed on {drained}"
    );
    let out = lbd.lbctl(&[
        "backend",
        "drain",
        &format!("{}/tcp", vip4()),
        &lab::backend_v4(0).to_string(),
    ]);
    println!("lbctl backend drain: {out}");
    let t = traffic::http_burst(&lab.client().ns, vip4(), 300, 8);
    println!("after the drain:\n{}", t.render());
    assert_eq!(t.failures, 0, "{:?}", t.errors);
    assert!(
        !t.per_backend.contains_key(&drained),
        "{drained} is drained but got new connections"
    );
    for (who, conns) in open.iter_mut() {
        for c in conns {
            assert_eq!(
                &c.get().unwrap_or_else(|e| panic!(
                    "open connection to {who} broke after the drain: {e}"
                )),
                who
            );
        }
    }
}

#[test]
fn lbd_killed_and_restarted_under_traffic_loses_nothing() {
    if skip_unless_root("lbd_killed_and_restarted_under_traffic_loses_nothing") {
        return;
    }
    let (lab, mut lbd) = start(3, |_| {});
    let stop = AtomicBool::new(false);
    let total = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            let mut t = Tally::default();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                t.merge(traffic::http_burst(&lab.client().ns, vip4(), 20, 4));
            }
            t
        });
        std::thread::sleep(Duration::from_millis(500));
        let before = lbd.pid();
        lbd.kill9();
        std::thread::sleep(Duration::from_millis(500));
        lbd.restart();
        println!(
            "lbd {before:?} killed with SIGKILL, restarted as {:?}",
            lbd.pid()
        );
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        traffic.join().expect("traffic thread")
    });
    println!("during the restart:\n{}", total.render());
    assert!(
        total.total_ok() > 50,
        "too little traffic to mean anything: {}",
        total.total_ok()
    );
    assert_eq!(
        total.failures, 0,
        "requests failed across the restart: {:?}",
        total.errors
    );
    match lbd.call(&Request::Status) {
        Response::Status(s) => assert!(
            s.adopted,
            "the restarted lbd did not adopt the pinned state: {s:?}"
        ),
        other => panic!("status: {other:?}"),
    }
}

#[test]
fn reload_adding_a_vip_leaves_existing_flows_alone() {
    if skip_unless_root("reload_adding_a_vip_leaves_existing_flows_alone") {
        return;
    }
    let (lab, lbd) = start(3, |_| {});
    let mut open = open_by_backend(&lab, 60);
    let added = lab.write_config("lbd.toml", |cfg| {
        let vips = cfg
            .get_mut("vip")
            .and_then(|v| v.as_array_mut())
            .expect("[[vip]]");
        let mut v = vips[0].as_table().expect("vip table").clone();
        v.insert("address".into(), lab::VIP2_V4.to_string().into());
        v.insert("port".into(), i64::from(lab::HTTP_PORT).into());
        v.insert("protocol".into(), "tcp".into());
        v.remove("fragments");
        v.remove("ring_size");
        v.insert(
            "health".into(),
            toml::Value::Table(toml::from_str("kind = \"tcp\"\nport = 80").expect("health")),
        );
        vips.push(toml::Value::Table(v));
    });
    println!("reloading with {}", added.display());
    let out = lbd.lbctl(&["reload"]);
    println!("lbctl reload: {out}");
    for (who, conns) in open.iter_mut() {
        for c in conns {
            assert_eq!(
                &c.get()
                    .unwrap_or_else(|e| panic!("connection to {who} broke by the reload: {e}")),
                who
            );
        }
    }
    let new_vip = SocketAddr::new(IpAddr::V4(lab::VIP2_V4), lab::HTTP_PORT);
    let t = traffic::http_burst(&lab.client().ns, new_vip, 150, 8);
    println!("the added VIP {new_vip}:\n{}", t.render());
    assert_eq!(t.failures, 0, "{:?}", t.errors);
}

#[test]
fn udp_and_ipv6_vips() {
    if skip_unless_root("udp_and_ipv6_vips") {
        return;
    }
    let (lab, _lbd) = start(3, |_| {});
    let udp = traffic::udp_burst(
        &lab.client().ns,
        SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::UDP_PORT),
        SHARE_REQUESTS,
    );
    println!("UDP:\n{}", udp.render());
    assert_eq!(udp.failures, 0, "{:?}", udp.errors);
    assert_even(&udp, &lab, "UDP spread over all three backends");
    let v6 = traffic::http_burst(&lab.client().ns, vip6(), SHARE_REQUESTS, 16);
    println!("IPv6:\n{}", v6.render());
    assert_eq!(v6.failures, 0, "{:?}", v6.errors);
    assert_even(&v6, &lab, "IPv6 spread over all three backends");
}

fn icmp_dest_unreach_received(ns: &NetNs) -> u64 {
    let snmp = ns.exec(&["cat", "/proc/net/snmp"]);
    let mut lines = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (
        lines.next().expect("Icmp header"),
        lines.next().expect("Icmp values"),
    );
    let idx = names
        .split_whitespace()
        .position(|n| n == "InDestUnreachs")
        .expect("InDestUnreachs");
    values
        .split_whitespace()
        .nth(idx)
        .expect("value")
        .parse()
        .expect("number")
}

#[test]
fn icmp_frag_needed_reaches_the_flows_backend() {
    if skip_unless_root("icmp_frag_needed_reaches_the_flows_backend") {
        return;
    }
    let (lab, _lbd) = start(3, |_| {});
    let mut conns = traffic::open_connections(&lab.client().ns, vip4(), 1);
    let (conn, who) = conns.pop().expect("one connection");
    let before: Vec<u64> = lab
        .backends
        .iter()
        .map(|b| icmp_dest_unreach_received(&b.host.ns))
        .collect();

    // A router on the way back to the client says the backend's reply (VIP:80 → client) was too big. It is sent
    // to the VIP, so it reaches the balancer, which must hand it to the backend holding that flow.
    let IpAddr::V4(client_ip) = conn.local.ip() else {
        panic!("v4 connection")
    };
    let quoted = lb_tests::harness::packets::Ip::tcp(
        IpAddr::V4(lab::VIP_V4),
        lab::HTTP_PORT,
        conn.local.ip(),
        conn.local.port(),
        0x10,
    )
    .bytes();
    let icmp =
        lb_tests::harness::packets::icmp4_frag_needed(client_ip, lab::VIP_V4, 1400, &quoted[..28])
            .bytes();
    lab.client()
        .ns
        .run(|| traffic::send_raw_ipv4(&icmp, lab::VIP_V4));

    let got = wait::until(
        "a backend to receive the ICMP frag-needed",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let after: Vec<u64> = lab
                .backends
                .iter()
                .map(|b| icmp_dest_unreach_received(&b.host.ns))
                .collect();
            let got: Vec<usize> = (0..after.len()).filter(|&i| after[i] > before[i]).collect();
            if got.is_empty() { Err(()) } else { Ok(got) }
        },
        |()| format!("the flow is on {who}"),
    );
    assert_eq!(got.len(), 1, "the ICMP reached several backends: {got:?}");
    assert_eq!(
        lab.backends[got[0]].name, who,
        "the ICMP went to {} but the flow is on {who}",
        lab.backends[got[0]].name
    );
    drop(conn);
}

/// `lbctl --json <args>` against the real lbd, parsed.
fn lbctl_json(lbd: &Lbd, args: &[&str]) -> serde_json::Value {
    let mut argv = vec!["--json"];
    argv.extend_from_slice(args);
    let out = lbd.lbctl(&argv);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lbctl {args:?}: not JSON ({e}): {out}"))
}

/// Whether a JSON row's `vip` is `vip` (printed as "ADDR:PORT" or "[V6]:PORT").
fn row_is_vip(row: &serde_json::Value, vip: &str) -> bool {
    let a = &row["vip"];
    format!("{}:{}", a["address"].as_str().unwrap_or(""), a["port"]) == vip
        || format!("[{}]:{}", a["address"].as_str().unwrap_or(""), a["port"]) == vip
}

fn vip_entry<'a>(list: &'a serde_json::Value, vip: &str) -> Option<&'a serde_json::Value> {
    list.as_array()?.iter().find(|v| row_is_vip(v, vip))
}

/// `lbctl stats` after `requests` new connections to `vip` (and no other traffic to it): the VIP's packets (at
/// least a SYN, a request and a FIN each) and flow-table inserts (one per SYN), packets on each of `backends`, and
/// a verdict count that covers them.
fn assert_stats_count(stats: &serde_json::Value, vip: &str, requests: usize, backends: &[String]) {
    let s = &stats["stats"];
    let v =
        vip_entry(&s["vips"], vip).unwrap_or_else(|| panic!("stats: no row for {vip}: {stats}"));
    let (packets, new_flows) = (
        v["packets"].as_u64().unwrap_or(0),
        v["new_flows"].as_u64().unwrap_or(0),
    );
    let requests = requests as u64;
    assert!(
        packets >= 3 * requests && new_flows >= requests,
        "stats for {vip} after {requests} connections: {packets} packets, {new_flows} new flows: {v}"
    );
    for b in backends {
        let rows = s["backends"].as_array().into_iter().flatten();
        let got: u64 = rows
            .filter(|r| r["backend"] == b.as_str() && row_is_vip(r, vip))
            .filter_map(|r| r["packets"].as_u64())
            .sum();
        assert!(got > 0, "stats: no packets for backend {b} of {vip}: {s}");
    }
    let tx = s["counters"]["tx"].as_u64().unwrap_or(0);
    assert!(
        tx >= packets,
        "stats: {tx} packets transmitted, fewer than {vip}'s {packets}: {s}"
    );
}

/// `lbctl simulate` names the backend that a real connection of the same 5-tuple reaches: before the connection
/// (the ring) and while it is open (the flow table). Over eight source ports a wrong answer matches by chance with
/// probability (1/3)^8.
fn simulate_matches_real_connections(lab: &Lab, lbd: &Lbd) {
    let name_of = |sim: &serde_json::Value| {
        let addr = sim["backend"]
            .as_str()
            .unwrap_or_else(|| panic!("simulate: no backend: {sim}"));
        lab.backends
            .iter()
            .find(|b| b.host.v4.to_string() == addr)
            .unwrap_or_else(|| panic!("simulate: {addr} is not a lab backend: {sim}"))
            .name
            .clone()
    };
    // Below the ephemeral range, so no other connection of the test holds these ports.
    for sport in 20_000..20_008u16 {
        let local = SocketAddr::new(IpAddr::V4(lab::CLIENT_V4), sport);
        let argv = [
            "simulate".to_string(),
            "tcp".into(),
            lab::CLIENT_V4.to_string(),
            sport.to_string(),
            lab::VIP_V4.to_string(),
            lab::HTTP_PORT.to_string(),
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let before = lbctl_json(lbd, &argv);
        let mut conn = lab
            .client()
            .ns
            .run(|| traffic::HttpConn::connect_from(local, vip4()))
            .unwrap_or_else(|e| panic!("{e}"));
        let reached = conn
            .get()
            .unwrap_or_else(|e| panic!("GET from {local}: {e}"));
        let during = lbctl_json(lbd, &argv);
        println!(
            "{local}: reached {reached}; simulate: {} before, {} during (flow table: {})",
            before["backend"], during["backend"], during["from_flow_table"]
        );
        assert_eq!(
            name_of(&before),
            reached,
            "simulate {local} before the connection: {before}"
        );
        assert_eq!(
            (name_of(&during), &during["from_flow_table"]),
            (reached.clone(), &serde_json::Value::Bool(true)),
            "simulate {local} during the connection: {during}"
        );
    }
}

#[test]
fn lbctl_round_trips_every_command_against_the_real_daemon() {
    if skip_unless_root("lbctl_round_trips_every_command_against_the_real_daemon") {
        return;
    }
    let (lab, lbd) = start(3, |_| {});
    let status = lbctl_json(&lbd, &["status"]);
    assert_eq!(status["interface"], lab::HOST_IF, "status: {status}");

    let vip2 = format!("{}:{}", lab::VIP2_V4, lab::HTTP_PORT);
    let b = |i: usize| lab::backend_v4(i).to_string();
    lbctl_json(
        &lbd,
        &[
            "vip",
            "add",
            &format!("{vip2}/tcp"),
            "--backend",
            &b(0),
            "--backend",
            &format!("{}=200", b(1)),
            "--health",
            "kind = \"tcp\"",
        ],
    );
    let list = lbctl_json(&lbd, &["vip", "list"]);
    let added =
        vip_entry(&list, &vip2).unwrap_or_else(|| panic!("vip add: {vip2} not listed: {list}"));
    assert_eq!(
        added["backends"].as_array().map(Vec::len),
        Some(2),
        "{added}"
    );

    // Traffic reaches the VIP that lbctl added, and `stats` counts it there.
    let requests = 60;
    let t = traffic::http_burst(
        &lab.client().ns,
        SocketAddr::new(IpAddr::V4(lab::VIP2_V4), lab::HTTP_PORT),
        requests,
        4,
    );
    assert_eq!(t.failures, 0, "{:?}", t.errors);
    assert_stats_count(
        &lbctl_json(&lbd, &["stats", "--interval", "0"]),
        &vip2,
        requests,
        &[b(0), b(1)],
    );

    lbctl_json(
        &lbd,
        &[
            "backend",
            "add",
            &format!("{vip2}/tcp"),
            &b(2),
            "--weight",
            "50",
        ],
    );
    lbctl_json(
        &lbd,
        &["backend", "weight", &format!("{vip2}/tcp"), &b(2), "300"],
    );
    lbctl_json(&lbd, &["backend", "drain", &format!("{vip2}/tcp"), &b(0)]);
    lbctl_json(&lbd, &["backend", "del", &format!("{vip2}/tcp"), &b(1)]);
    let list = lbctl_json(&lbd, &["vip", "list"]);
    let v = vip_entry(&list, &vip2).expect("still listed");
    let weights: BTreeMap<String, u64> = v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|x| {
            (
                x["address"].as_str().unwrap_or("").to_string(),
                x["weight"].as_u64().unwrap_or(999),
            )
        })
        .collect();
    assert_eq!(
        weights,
        BTreeMap::from([(b(0), 0), (b(2), 300)]),
        "after add/weight/drain/del: {v}"
    );

    let health = lbctl_json(&lbd, &["health"]);
    assert!(
        health.as_array().is_some_and(|h| h.len() >= 9),
        "health rows: {health}"
    );
    let flows = lbctl_json(&lbd, &["flows", "--limit", "10"]);
    assert!(
        flows.as_array().is_some_and(|f| !f.is_empty()),
        "flows after traffic: {flows}"
    );
    simulate_matches_real_connections(&lab, &lbd);

    let cfg = lab.dir.path().join("lbd.toml");
    lbctl_json(&lbd, &["config", "check", cfg.to_str().expect("utf-8")]);
    let bad = lab.dir.path().join("bad.toml");
    std::fs::write(&bad, "[daemon]\ninterface = \"eth0\"\nbogus = 1\n").expect("write bad config");
    let out = lbd.lbctl_output(&["config", "check", bad.to_str().expect("utf-8")]);
    assert!(
        !out.status.success(),
        "config check accepted an unknown key"
    );

    // Reload from the file drops the runtime-added VIP; deleting it by hand first must work too.
    lbctl_json(&lbd, &["vip", "del", &format!("{vip2}/tcp")]);
    assert!(
        vip_entry(&lbctl_json(&lbd, &["vip", "list"]), &vip2).is_none(),
        "vip del"
    );
    lbctl_json(&lbd, &["reload"]);

    // The Prometheus endpoint of the live daemon (config/lab.toml: 127.0.0.1:9662 in the balancer's namespace).
    let metrics = lbd.metrics();
    for needle in [
        "lb_verdicts_total",
        "pass_not_vip",
        "lb_backend_up",
        "198.18.0.11",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle:?}:\n{metrics}"
        );
    }
    lbd.shutdown_detach();
}

/// Health rows of the VIP printed as `vip` (e.g. "198.19.0.10:443/tcp").
fn health_of(lbd: &Lbd, vip: &str) -> Vec<lb_userspace::health::BackendHealth> {
    match lbd.call(&Request::Health) {
        Response::Health(rows) => rows
            .into_iter()
            .filter(|r| r.key.vip.to_string() == vip)
            .collect(),
        other => panic!("Health: unexpected answer {other:?}"),
    }
}

/// Waits until `cond` holds for the VIP's rows (all of them present); panics with the rows and lbd's log.
fn wait_health(
    lbd: &Lbd,
    vip: &str,
    what: &str,
    cond: impl Fn(&lb_userspace::health::BackendHealth) -> bool,
) {
    wait::until(
        &format!("{vip} {what}"),
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            let rows = health_of(lbd, vip);
            if rows.len() == 3 && rows.iter().all(&cond) {
                Ok(())
            } else {
                Err(rows)
            }
        },
        |rows| format!("{rows:#?}\nlbd log:\n{}", lbd.log_text()),
    )
}

/// HTTPS health checks through the real lbd: the backends serve a certificate of a CA made for this lab. A check
/// that trusts that CA and asks for the certificate's name passes, and follows a backend whose server stops and
/// returns; a check asking for another name fails on every backend, saying why.
#[test]
fn https_health_checks_verify_the_backends_certificates() {
    if skip_unless_root("https_health_checks_verify_the_backends_certificates") {
        return;
    }
    let mut lab = Lab::new(&LabOptions {
        backends: 3,
        clients: 1,
    });
    let ca = lab.pki.ca.to_str().expect("utf-8 path").to_owned();
    let https_vip = |address: std::net::Ipv4Addr, name: &str| -> toml::Value {
        let text = format!(
            r#"address = "{address}"
port = {port}
protocol = "tcp"
backends = [{{ address = "{b0}" }}, {{ address = "{b1}" }}, {{ address = "{b2}" }}]
health = {{ kind = "https", path = "/healthz", tls_server_name = "{name}", tls_ca_file = "{ca}", interval_ms = 300, timeout_ms = 300, rise = 2, fall = 2 }}
"#,
            port = lab::HTTPS_PORT,
            b0 = lab::backend_v4(0),
            b1 = lab::backend_v4(1),
            b2 = lab::backend_v4(2),
        );
        toml::Value::Table(text.parse().expect("VIP table"))
    };
    let cfg = lab.write_config("lbd.toml", |cfg| {
        cfg.insert(
            "vip".into(),
            toml::Value::Array(vec![
                https_vip(lab::VIP_V4, lb_tests::lab::pki::BACKEND_TLS_NAME),
                https_vip(lab::VIP2_V4, "other.lab"),
            ]),
        );
    });
    let lbd = Lbd::start(&lab, &cfg);
    let (good, wrong) = (
        format!("{}:{}/tcp", lab::VIP_V4, lab::HTTPS_PORT),
        format!("{}:{}/tcp", lab::VIP2_V4, lab::HTTPS_PORT),
    );

    wait_health(&lbd, &good, "passing its checks", |r| {
        r.up && r.last_ok == Some(true) && r.checks >= 2
    });
    wait_health(&lbd, &wrong, "down for the certificate's name", |r| {
        !r.up && r.last_reason.contains("certificate")
    });
    println!("wrong name: {}", health_of(&lbd, &wrong)[0].last_reason);

    lab.stop_server(1);
    let victim = lab::backend_v4(1);
    wait_health(&lbd, &good, "down for backend-2 only", |r| {
        r.up == (r.key.backend != IpAddr::V4(victim))
    });
    lab.start_server(1);
    wait_health(&lbd, &good, "all up again", |r| {
        r.up && r.last_ok == Some(true)
    });
}
