//! VIP-path health checks on the lab: a probe goes to the VIP's address, encapsulated (or MAC-rewritten) to its one
//! backend by `lb_hc` exactly as `lb_xdp` sends a client's packet, so a backend that stopped serving the VIP fails
//! it while a direct check of the same backend still passes. Real lbd, real programs, real backends; needs root.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lb_tests::harness::netns::skip_unless_root;
use lb_tests::harness::wait;
use lb_tests::lab::daemon::Lbd;
use lb_tests::lab::{self, Lab, LabOptions, traffic};
use lb_userspace::control::api::{Request, Response};
use lb_userspace::health::{BackendHealth, CheckTarget};

const LIMIT: Duration = Duration::from_secs(20);

/// A second TCP VIP on port 80 of `VIP2_V4` (which every lab backend also holds on its loopback), with the lab's
/// three backends, in `mode` and checked towards `target`.
fn add_vip2(mode: &'static str, target: &'static str) -> impl FnOnce(&mut toml::Table) {
    move |cfg| {
        let vips = cfg["vip"].as_array_mut().expect("[[vip]]");
        let mut v = toml::Table::new();
        v.insert("address".into(), lab::VIP2_V4.to_string().into());
        v.insert("port".into(), i64::from(lab::HTTP_PORT).into());
        v.insert("protocol".into(), "tcp".into());
        v.insert("mode".into(), mode.into());
        let backends: Vec<toml::Value> = (0..3)
            .map(|i| {
                let mut b = toml::Table::new();
                b.insert("address".into(), lab::backend_v4(i).to_string().into());
                toml::Value::Table(b)
            })
            .collect();
        v.insert("backends".into(), toml::Value::Array(backends));
        let mut h = toml::Table::new();
        for (k, n) in [
            ("interval_ms", 300),
            ("timeout_ms", 200),
            ("rise", 2),
            ("fall", 2),
        ] {
            h.insert(k.into(), toml::Value::Integer(n));
        }
        h.insert("target".into(), target.into());
        v.insert("health".into(), toml::Value::Table(h));
        vips.push(toml::Value::Table(v));
    }
}

/// A TCP VIP on `vip:443` whose backends are the lab's three backends at `backend(i)`, tunnelled across families
/// (every lab backend serves HTTPS on all its addresses, so a TCP check there passes).
fn add_cross_family_vip(cfg: &mut toml::Table, vip: IpAddr, backend: fn(usize) -> IpAddr) {
    let v: toml::Table = format!(
        "address = \"{vip}\"\nport = {}\nprotocol = \"tcp\"\nmode = \"ipip\"\n\
         backends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\
         health = {{ kind = \"tcp\", interval_ms = 300, timeout_ms = 200, rise = 2, fall = 2 }}\n",
        lab::HTTPS_PORT,
        backend(0),
        backend(1),
        backend(2)
    )
    .parse()
    .expect("a VIP table");
    cfg["vip"]
        .as_array_mut()
        .expect("[[vip]]")
        .push(toml::Value::Table(v));
}

fn start(edit: impl FnOnce(&mut toml::Table)) -> (Lab, Lbd) {
    let lab = Lab::new(&LabOptions::default());
    let cfg = lab.write_config("lbd.toml", edit);
    let lbd = Lbd::start(&lab, &cfg);
    for b in &lab.backends {
        lbd.wait_backend_state(b.host.v4, true, LIMIT);
        lbd.wait_backend_state(b.host.v6, true, LIMIT);
    }
    (lab, lbd)
}

fn rows(lbd: &Lbd) -> Vec<BackendHealth> {
    match lbd.call(&Request::Health) {
        Response::Health(rows) => rows,
        other => panic!("health: {other:?}"),
    }
}

/// The row of `backend` on the VIP `vip` (as lbctl names it: `198.19.0.10:80/tcp`).
fn row(lbd: &Lbd, vip: &str, backend: IpAddr) -> BackendHealth {
    rows(lbd)
        .into_iter()
        .find(|r| r.key.vip.to_string() == vip && r.key.backend == backend)
        .unwrap_or_else(|| panic!("no health row for {backend} on {vip}"))
}

/// Waits until the row says `up` and the rings show it.
fn wait_row(lbd: &Lbd, vip: &str, backend: IpAddr, up: bool, why: &str) {
    wait::until(
        &format!(
            "{backend} on {vip} {} ({why})",
            if up { "up" } else { "down" }
        ),
        LIMIT,
        Duration::from_millis(100),
        || {
            let r = row(lbd, vip, backend);
            if r.up == up && !r.pending {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
        |r| format!("last row {r}"),
    );
}

fn counter(lbd: &Lbd, name: &str) -> u64 {
    match lbd.call(&Request::Stats) {
        Response::Stats(s) => s.counters.get(name).copied().unwrap_or(0),
        other => panic!("stats: {other:?}"),
    }
}

/// Probes that completed since the row was read before (to tell a check that keeps passing from one that stalled).
fn passes_on(lbd: &Lbd, vip: &str, backend: IpAddr) -> bool {
    let before = row(lbd, vip, backend);
    wait::until(
        &format!("two more probes of {backend} on {vip}"),
        LIMIT,
        Duration::from_millis(100),
        || {
            let r = row(lbd, vip, backend);
            if r.checks >= before.checks + 2 {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        },
        |r| format!("last row {r}"),
    )
    .last_ok
        == Some(true)
}

fn vip_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

#[test]
fn a_backend_without_the_vip_on_its_loopback_fails_the_vip_path_check_while_a_direct_check_passes()
{
    if skip_unless_root(
        "a_backend_without_the_vip_on_its_loopback_fails_the_vip_path_check_while_a_direct_check_passes",
    ) {
        return;
    }
    let (lab, lbd) = start(add_vip2("ipip", "direct"));
    let (tcp4, udp4, http6, direct) = (
        format!("{}:{}/tcp", lab::VIP_V4, lab::HTTP_PORT),
        format!("{}:{}/udp", lab::VIP_V4, lab::UDP_PORT),
        format!("[{}]:{}/tcp", lab::VIP_V6, lab::HTTP_PORT),
        format!("{}:{}/tcp", lab::VIP2_V4, lab::HTTP_PORT),
    );
    let b = &lab.backends[1];
    let (v4, v6) = (IpAddr::V4(b.host.v4), IpAddr::V6(b.host.v6));
    // Where each row's probes go: the VIP for the default target, the backend for `direct`.
    let r = row(&lbd, &tcp4, v4);
    assert_eq!(
        (r.path, r.target),
        (
            CheckTarget::Vip,
            SocketAddr::new(IpAddr::V4(lab::VIP_V4), 80)
        ),
        "{r:?}"
    );
    let r = row(&lbd, &direct, v4);
    assert_eq!(
        (r.path, r.target),
        (CheckTarget::Direct, SocketAddr::new(v4, 80)),
        "{r:?}"
    );
    // /metrics says the same, per row.
    let metrics = lbd.metrics();
    for (vip, target) in [(&tcp4, "vip"), (&direct, "direct")] {
        let line = format!(
            "lb_backend_health_check_info{{vip=\"{vip}\",backend=\"{v4}\",kind=\"tcp\",target=\"{target}\"}} 1"
        );
        assert!(metrics.lines().any(|l| l == line), "/metrics lacks {line}");
    }
    let sent = counter(&lbd, "hc_sent");
    assert!(
        sent > 0,
        "lb_hc sent no probe packet while every VIP-path check passed"
    );
    assert_eq!(
        counter(&lbd, "hc_drop_no_route") + counter(&lbd, "hc_drop_no_backend"),
        0
    );

    for vip in [IpAddr::V4(lab::VIP_V4), IpAddr::V6(lab::VIP_V6)] {
        b.host.ns.ip(&["addr", "del", &vip_cidr(vip), "dev", "lo"]);
    }
    wait_row(
        &lbd,
        &tcp4,
        v4,
        false,
        "tcp over IPIP, VIP gone from its loopback",
    );
    wait_row(
        &lbd,
        &udp4,
        v4,
        false,
        "udp over IPIP, VIP gone from its loopback",
    );
    wait_row(
        &lbd,
        &http6,
        v6,
        false,
        "http over IP6IP6, VIP gone from its loopback",
    );
    assert!(
        passes_on(&lbd, &direct, v4),
        "the direct check of the same backend failed too: {:?}",
        row(&lbd, &direct, v4)
    );
    let r = row(&lbd, &direct, v4);
    assert!(
        r.up && r.transitions == 0,
        "the direct check flipped: {r:?}"
    );
    for other in [&lab.backends[0], &lab.backends[2]] {
        assert!(
            row(&lbd, &tcp4, IpAddr::V4(other.host.v4)).up,
            "{} went down with it",
            other.name
        );
    }
    // The ring lost the backend: clients are served by the other two, none fails.
    let t = traffic::http_burst(
        &lab.client().ns,
        SocketAddr::new(IpAddr::V4(lab::VIP_V4), 80),
        200,
        8,
    );
    assert_eq!(
        t.failures, 0,
        "with {} out of the ring: {:?}",
        b.name, t.errors
    );
    assert!(
        !t.per_backend.contains_key(&b.name),
        "{} still got requests:\n{}",
        b.name,
        t.render()
    );

    for vip in [IpAddr::V4(lab::VIP_V4), IpAddr::V6(lab::VIP_V6)] {
        b.host.ns.ip(&["addr", "add", &vip_cidr(vip), "dev", "lo"]);
    }
    wait_row(&lbd, &tcp4, v4, true, "VIP back on its loopback");
    wait_row(&lbd, &udp4, v4, true, "VIP back on its loopback");
    wait_row(&lbd, &http6, v6, true, "VIP back on its loopback");
}

#[test]
fn a_backend_whose_decap_is_detached_fails_the_vip_path_check() {
    if skip_unless_root("a_backend_whose_decap_is_detached_fails_the_vip_path_check") {
        return;
    }
    let (mut lab, lbd) = start(|cfg| {
        add_vip2("ipip", "direct")(cfg);
        // IPv4 in IPv6, and IPv6 in IPv4.
        add_cross_family_vip(cfg, IpAddr::V4(lab::VIP2_V4), |i| {
            IpAddr::V6(lab::backend_v6(i))
        });
        add_cross_family_vip(cfg, IpAddr::V6(lab::VIP_V6), |i| {
            IpAddr::V4(lab::backend_v4(i))
        });
    });
    let tcp4 = format!("{}:{}/tcp", lab::VIP_V4, lab::HTTP_PORT);
    let http6 = format!("[{}]:{}/tcp", lab::VIP_V6, lab::HTTP_PORT);
    let mixed = format!("{}:{}/tcp", lab::VIP2_V4, lab::HTTPS_PORT);
    let mixed6 = format!("[{}]:{}/tcp", lab::VIP_V6, lab::HTTPS_PORT);
    let direct = format!("{}:{}/tcp", lab::VIP2_V4, lab::HTTP_PORT);
    let (v4, v6) = (
        IpAddr::V4(lab.backends[2].host.v4),
        IpAddr::V6(lab.backends[2].host.v6),
    );
    // IPv4 probes in IPv6 tunnels and IPv6 probes in IPv4 tunnels reach the backends (start waited for every row
    // of their addresses).
    assert!(row(&lbd, &mixed, v6).up);
    assert!(row(&lbd, &mixed6, v4).up);

    lab.backends[2].detach_decap();
    wait_row(&lbd, &tcp4, v4, false, "lb_decap detached");
    wait_row(&lbd, &http6, v6, false, "lb_decap detached");
    wait_row(&lbd, &mixed, v6, false, "lb_decap detached, IPv4 in IPv6");
    wait_row(&lbd, &mixed6, v4, false, "lb_decap detached, IPv6 in IPv4");
    assert!(
        passes_on(&lbd, &direct, v4),
        "the direct check failed without lb_decap: {:?}",
        row(&lbd, &direct, v4)
    );

    lab.backends[2].attach_decap();
    wait_row(&lbd, &tcp4, v4, true, "lb_decap attached again");
    wait_row(&lbd, &http6, v6, true, "lb_decap attached again");
    wait_row(&lbd, &mixed, v6, true, "lb_decap attached again");
    wait_row(&lbd, &mixed6, v4, true, "lb_decap attached again");
}

/// Without lbd's probe interface a marked probe meets the probe table's `blackhole` fallback, never the main
/// table: it fails on this host, counted as unknown, and no backend leaves its ring.
#[test]
fn a_deleted_probe_interface_makes_probes_unknown_not_backends_down() {
    if skip_unless_root("a_deleted_probe_interface_makes_probes_unknown_not_backends_down") {
        return;
    }
    let (lab, lbd) = start(|_| {});
    let flips = |rows: &[BackendHealth]| rows.iter().map(|r| r.transitions).sum::<u64>();
    let before = flips(&rows(&lbd));
    lab.balancer
        .ns
        .ip(&["link", "del", lb_userspace::probe_path::INTERFACE]);
    let unknown = wait::until(
        "every VIP-path row to count unknown probes",
        LIMIT,
        Duration::from_millis(100),
        || {
            let rows = rows(&lbd);
            if rows
                .iter()
                .all(|r| r.unknown >= 3 && r.last_reason.contains("probe route is missing"))
            {
                Ok(rows)
            } else {
                Err(format!("{rows:#?}"))
            }
        },
        |rows| rows,
    );
    assert_eq!(
        flips(&unknown),
        before,
        "a backend flipped without the probe interface: {unknown:#?}"
    );
    assert!(unknown.iter().all(|r| r.up), "{unknown:#?}");
}

#[test]
fn l2dsr_vips_are_checked_along_their_path_too() {
    if skip_unless_root("l2dsr_vips_are_checked_along_their_path_too") {
        return;
    }
    // VIP2 (IPv4) and the lab's IPv6 VIP forward by MAC rewrite.
    let (lab, lbd) = start(|cfg| {
        add_vip2("l2dsr", "vip")(cfg);
        for v in cfg["vip"].as_array_mut().expect("[[vip]]") {
            if v["address"].as_str() == Some(&lab::VIP_V6.to_string()) {
                v.as_table_mut()
                    .expect("vip")
                    .insert("mode".into(), "l2dsr".into());
            }
        }
    });
    let l2v4 = format!("{}:{}/tcp", lab::VIP2_V4, lab::HTTP_PORT);
    let l2v6 = format!("[{}]:{}/tcp", lab::VIP_V6, lab::HTTP_PORT);
    let tcp4 = format!("{}:{}/tcp", lab::VIP_V4, lab::HTTP_PORT);
    let b = &lab.backends[0];
    let (v4, v6) = (IpAddr::V4(b.host.v4), IpAddr::V6(b.host.v6));
    assert_eq!(row(&lbd, &l2v4, v4).path, CheckTarget::Vip);
    let t = traffic::http_burst(
        &lab.client().ns,
        SocketAddr::new(IpAddr::V4(lab::VIP2_V4), 80),
        60,
        4,
    );
    assert_eq!(
        t.failures, 0,
        "the L2 DSR VIP does not serve: {:?}",
        t.errors
    );

    // An L2 DSR probe is the client's packet to the backend's MAC, not a tunnel: it needs no lb_decap, while the
    // IPIP VIP's probe of the same backend does.
    let (mut lab, lbd) = (lab, lbd);
    lab.backends[1].detach_decap();
    let (v4_1, v6_1) = (
        IpAddr::V4(lab.backends[1].host.v4),
        IpAddr::V6(lab.backends[1].host.v6),
    );
    wait_row(&lbd, &tcp4, v4_1, false, "IPIP without lb_decap");
    assert!(passes_on(&lbd, &l2v4, v4_1), "{:?}", row(&lbd, &l2v4, v4_1));
    assert!(passes_on(&lbd, &l2v6, v6_1), "{:?}", row(&lbd, &l2v6, v6_1));
    lab.backends[1].attach_decap();
    wait_row(&lbd, &tcp4, v4_1, true, "lb_decap attached again");

    let b = &lab.backends[0];
    for vip in [IpAddr::V4(lab::VIP2_V4), IpAddr::V6(lab::VIP_V6)] {
        b.host.ns.ip(&["addr", "del", &vip_cidr(vip), "dev", "lo"]);
    }
    wait_row(&lbd, &l2v4, v4, false, "L2 DSR, VIP gone from its loopback");
    wait_row(
        &lbd,
        &l2v6,
        v6,
        false,
        "L2 DSR over IPv6, VIP gone from its loopback",
    );
    // The IPIP VIP on the same backend does not depend on VIP2.
    assert!(passes_on(&lbd, &tcp4, v4), "{:?}", row(&lbd, &tcp4, v4));

    for vip in [IpAddr::V4(lab::VIP2_V4), IpAddr::V6(lab::VIP_V6)] {
        b.host.ns.ip(&["addr", "add", &vip_cidr(vip), "dev", "lo"]);
    }
    wait_row(&lbd, &l2v4, v4, true, "VIP back on its loopback");
    wait_row(&lbd, &l2v6, v6, true, "VIP back on its loopback");
}

/// An interface called `lbhc0` that lbd did not make (here a veth) is not lbd's to route probes into: lbd refuses to
/// start, says why, and leaves the host as it was (no rule, no program on the balancer's interface).
#[test]
fn a_foreign_interface_named_like_the_probe_interface_is_refused() {
    if skip_unless_root("a_foreign_interface_named_like_the_probe_interface_is_refused") {
        return;
    }
    let lab = Lab::new(&LabOptions::default());
    let ns = &lab.balancer.ns;
    let name = lb_userspace::probe_path::INTERFACE;
    ns.ip(&[
        "link",
        "add",
        name,
        "type",
        "veth",
        "peer",
        "name",
        "lbhc-peer",
    ]);
    let cfg = lab.write_config("lbd.toml", |_| {});
    let lbd = lb_tests::lab::target_binary("lbd");
    let out = ns
        .nsenter_command(&[
            lbd.to_str().expect("utf-8"),
            "--config",
            cfg.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run lbd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is not an IFB device"),
        "lbd started beside a foreign {name}: {:?}\n{stderr}",
        out.status
    );
    let link = ns.ip(&["-d", "link", "show", name]);
    assert!(link.contains("veth"), "{name} was changed: {link}");
    let rules = ns.ip(&["rule", "show"]);
    assert!(
        !rules.contains("lookup 19528"),
        "a probe rule was added: {rules}"
    );
    let eth0 = ns.ip(&["link", "show", lab::HOST_IF]);
    assert!(
        !eth0.contains("xdp"),
        "lb_xdp was attached by an lbd that refused to start: {eth0}"
    );
}

/// Every VIP of the lab config checked towards `target`.
fn every_check_towards(target: &'static str) -> impl Fn(&mut toml::Table) {
    move |cfg| {
        for v in cfg["vip"].as_array_mut().expect("[[vip]]") {
            let v = v.as_table_mut().expect("a VIP table");
            let h = v
                .entry("health")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            h.as_table_mut()
                .expect("a health table")
                .insert("target".into(), target.into());
        }
    }
}

/// Where the probe route cannot be made (a foreign `lbhc0`), a config that checks directly only still runs, and a
/// reload asking for VIP-path checks is refused with the reason, the running checks kept as they were: marked probes
/// without the rule would leave by the main table, towards whatever serves the VIP.
#[test]
fn without_the_probe_path_a_reload_asking_for_vip_path_checks_is_refused() {
    if skip_unless_root("without_the_probe_path_a_reload_asking_for_vip_path_checks_is_refused") {
        return;
    }
    let lab = Lab::new(&LabOptions::default());
    let ns = &lab.balancer.ns;
    let name = lb_userspace::probe_path::INTERFACE;
    ns.ip(&[
        "link",
        "add",
        name,
        "type",
        "veth",
        "peer",
        "name",
        "lbhc-peer",
    ]);
    let cfg = lab.write_config("lbd.toml", every_check_towards("direct"));
    let lbd = Lbd::start(&lab, &cfg);
    lbd.wait_all_backends_up(&lab, LIMIT);
    assert!(
        lbd.log_text().contains("no VIP-path probe route"),
        "lbd did not say why it runs without the probe path:\n{}",
        lbd.log_text()
    );
    let before = rows(&lbd);
    assert!(
        before.iter().all(|r| r.path == CheckTarget::Direct),
        "a check runs along the VIP path without the probe route: {before:?}"
    );

    lab.write_config("lbd.toml", every_check_towards("vip"));
    match lbd.call(&Request::Reload) {
        Response::Error { message } => assert!(
            message.contains("probe route") && message.contains("is not an IFB device"),
            "the refusal does not say why: {message}"
        ),
        other => {
            panic!("a reload asking for VIP-path checks without the probe route answered {other:?}")
        }
    }
    let after = rows(&lbd);
    assert!(
        after.iter().all(|r| r.path == CheckTarget::Direct && r.up),
        "the refused reload changed the checks: {after:?}"
    );
    assert_eq!(
        after.iter().map(|r| &r.key).collect::<Vec<_>>(),
        before.iter().map(|r| &r.key).collect::<Vec<_>>(),
        "the refused reload changed which backends are checked"
    );
    assert_eq!(counter(&lbd, "hc_sent"), 0, "lb_hc sent probes");
}
