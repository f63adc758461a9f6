//! Least privilege, on a real lbd in the lab: started with exactly the capabilities config/lbd.service grants, it
//! loads and attaches, then keeps only CAP_NET_RAW, for VIP-path probe marks (every thread, all five sets, read from
//! /proc as an operator would), and still does every job of the running daemon: forwarding, a SIGHUP reload that
//! adds a VIP, an lbctl drain and undrain, a health flip that rebuilds a ring, /metrics. Needs root; prints a skip
//! reason otherwise.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lb_tests::harness::capabilities;
use lb_tests::harness::netns::skip_unless_root;
use lb_tests::harness::wait;
use lb_tests::lab::daemon::{Launch, Lbd};
use lb_tests::lab::{self, Lab, LabOptions, traffic};
use lb_userspace::control::api::{Request, Response, VipInfo};
use lb_userspace::privileges::{RUNNING, RUNNING_ANNOUNCING};

fn unit_capabilities() -> BTreeSet<String> {
    capabilities::unit_capabilities()
}

fn as_the_unit_starts_it(caps: &BTreeSet<String>) -> Launch {
    Launch {
        wrapper: capabilities::setpriv_wrapper(caps),
        ..Launch::default()
    }
}

fn names(caps: &[caps::Capability]) -> BTreeSet<String> {
    caps.iter().map(|c| c.to_string()).collect()
}

/// Panics unless every thread of `pid` holds exactly [`RUNNING`] in its effective and permitted sets and in its
/// bounding set, and nothing inheritable or ambient.
fn assert_dropped(pid: u32, when: &str) {
    capabilities::assert_threads_hold(pid, &names(RUNNING), when);
}

fn vips(lbd: &Lbd) -> Vec<VipInfo> {
    match lbd.call(&Request::VipList) {
        Response::Vips(v) => v,
        other => panic!("VipList answered {other:?}"),
    }
}

/// `(weight, up, ring entries)` of `backend` in `vip` (printed like "198.19.0.10:80/tcp").
fn backend_row(lbd: &Lbd, vip: &str, backend: IpAddr) -> Option<(u32, bool, u32)> {
    vips(lbd)
        .into_iter()
        .find(|v| v.vip.to_string() == vip)?
        .backends
        .into_iter()
        .find(|b| b.address == backend)
        .map(|b| (b.weight, b.up, b.ring_entries))
}

fn wait_until(lbd: &Lbd, what: &str, cond: impl Fn() -> bool) {
    wait::until_true(
        what,
        Duration::from_secs(20),
        Duration::from_millis(100),
        cond,
        || format!("lbd log:\n{}", lbd.log_text()),
    )
}

#[test]
fn lbd_started_with_the_units_capabilities_keeps_only_cap_net_raw_and_still_does_its_jobs() {
    if skip_unless_root(
        "lbd_started_with_the_units_capabilities_keeps_only_cap_net_raw_and_still_does_its_jobs",
    ) {
        return;
    }
    let granted = unit_capabilities();
    println!("config/lbd.service grants {granted:?}");
    let mut lab = Lab::new(&LabOptions::default());
    let cfg = lab.write_config("lbd.toml", |_| {});
    let lbd = Lbd::start_with(&lab, &cfg, as_the_unit_starts_it(&granted));
    lbd.wait_all_backends_up(&lab, Duration::from_secs(20));
    let pid = lbd.pid().expect("lbd runs");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim(), "lbd", "pid {pid} is not lbd itself");
    assert_dropped(pid, "after start");
    assert!(
        lbd.log_text().contains("dropped every other capability"),
        "no drop in the log:\n{}",
        lbd.log_text()
    );

    let vip = SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::HTTP_PORT);
    let t = traffic::http_burst(&lab.client().ns, vip, 150, 8);
    assert_eq!(t.failures, 0, "forwarding after the drop: {:?}", t.errors);

    // A SIGHUP reload that adds a VIP: map writes only.
    lab.write_config("lbd.toml", |cfg| {
        let vips = cfg
            .get_mut("vip")
            .and_then(|v| v.as_array_mut())
            .expect("[[vip]]");
        let mut v = vips[0].as_table().expect("vip table").clone();
        v.insert("address".into(), lab::VIP2_V4.to_string().into());
        vips.push(toml::Value::Table(v));
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP lbd");
    let vip2 = SocketAddr::new(IpAddr::V4(lab::VIP2_V4), lab::HTTP_PORT);
    let vip2_name = format!("{vip2}/tcp");
    wait_until(&lbd, "the VIP the reload adds", || {
        backend_row(&lbd, &vip2_name, lab::backend_v4(0).into()).is_some_and(|(_, _, n)| n > 0)
    });
    let t = traffic::http_burst(&lab.client().ns, vip2, 60, 8);
    assert_eq!(t.failures, 0, "the VIP added by SIGHUP: {:?}", t.errors);

    // lbctl drain and undrain.
    let vip_name = format!("{vip}/tcp");
    let b0 = lab::backend_v4(0).to_string();
    lbd.lbctl(&["backend", "drain", &vip_name, &b0]);
    let (w, _, n) = backend_row(&lbd, &vip_name, lab::backend_v4(0).into()).expect("backend 0");
    assert_eq!((w, n), (0, 0), "drained backend: weight and ring entries");
    lbd.lbctl(&["backend", "weight", &vip_name, &b0, "100"]);
    let (w, _, n) = backend_row(&lbd, &vip_name, lab::backend_v4(0).into()).expect("backend 0");
    assert!(
        w == 100 && n > 0,
        "undrained backend: weight {w}, ring entries {n}"
    );

    // A health flip each way rebuilds the ring.
    lab.stop_server(1);
    lbd.wait_backend_state(lab::backend_v4(1), false, Duration::from_secs(20));
    let (_, up, n) = backend_row(&lbd, &vip_name, lab::backend_v4(1).into()).expect("backend 1");
    assert!(
        !up && n == 0,
        "down backend still in the ring: up {up}, entries {n}"
    );
    lab.start_server(1);
    lbd.wait_backend_state(lab::backend_v4(1), true, Duration::from_secs(20));
    wait_until(&lbd, "backend 1 back in the ring", || {
        backend_row(&lbd, &vip_name, lab::backend_v4(1).into()).is_some_and(|(_, _, n)| n > 0)
    });

    let metrics = lbd.metrics();
    for line in [
        r#"lb_reloads_total{result="ok"} 1"#.to_string(),
        format!(
            r#"lb_backend_up{{vip="{vip_name}",backend="{}"}} 1"#,
            lab::backend_v4(1)
        ),
        "lb_xdp_attached 1".to_string(),
    ] {
        assert!(metrics.contains(&line), "/metrics lacks {line}:\n{metrics}");
    }
    assert_dropped(
        pid,
        "after the reload, the edits, the health flips and a scrape",
    );
}

/// What a restart under the unit does with capabilities, and what lbd does after dropping them with the pins: a
/// restart on a changed `flow_table_size` upgrades the pinned maps (new maps, flows copied, program swapped: before
/// the drop, with only the unit's capabilities, no CAP_SYS_ADMIN), the restarted lbd keeps only CAP_NET_RAW, the pin directory
/// stays locked against a second (fully privileged) lbd, and `lbctl shutdown --detach` removes the link and the
/// maps with CAP_NET_RAW alone.
#[test]
fn an_upgrade_at_restart_then_a_detach_work_with_the_units_capabilities() {
    if skip_unless_root("an_upgrade_at_restart_then_a_detach_work_with_the_units_capabilities") {
        return;
    }
    let granted = unit_capabilities();
    let lab = Lab::new(&LabOptions::default());
    let cfg = lab.write_config("lbd.toml", |_| {});
    let mut lbd = Lbd::start_with(&lab, &cfg, as_the_unit_starts_it(&granted));
    lbd.wait_all_backends_up(&lab, Duration::from_secs(20));
    let flows = lb_tests::harness::pinned::capacity(lab.pin_dir.path(), lb_common::maps::FLOWS);

    lbd.kill9();
    lab.write_config("lbd.toml", |cfg| {
        cfg["daemon"]
            .as_table_mut()
            .expect("[daemon]")
            .insert("flow_table_size".into(), i64::from(2 * flows).into());
    });
    lbd.restart();
    lbd.wait_all_backends_up(&lab, Duration::from_secs(20));
    assert!(
        lbd.log_text().contains("upgrade done"),
        "the restart with the unit's capabilities did not upgrade the pins; log:\n{}",
        lbd.log_text()
    );
    assert_eq!(
        lb_tests::harness::pinned::capacity(lab.pin_dir.path(), lb_common::maps::FLOWS),
        2 * flows,
        "lbd runs on a flow table of another size than configured"
    );
    let pid = lbd.pid().expect("lbd runs");
    assert_dropped(pid, "after the restart that upgraded the pins");
    let vip = SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::HTTP_PORT);
    let t = traffic::http_burst(&lab.client().ns, vip, 60, 8);
    assert_eq!(
        t.failures, 0,
        "forwarding after the upgrade: {:?}",
        t.errors
    );

    // The lock on the pin directory is a descriptor lbd holds: it outlives the drop.
    let text = std::fs::read_to_string(&cfg).expect("read config").replace(
        &lab.socket_path().display().to_string(),
        &lab.dir.path().join("second.sock").display().to_string(),
    );
    let text = text.replace(":9662", ":9663");
    let second = lab.dir.path().join("second.toml");
    std::fs::write(&second, text).expect("write second config");
    let lbd_bin = lb_tests::lab::target_binary("lbd");
    let out = lab
        .balancer
        .ns
        .nsenter_command(&[
            lbd_bin.to_str().expect("utf-8"),
            "--config",
            second.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run a second lbd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("in use by another lbd"),
        "a second lbd on the pins of one without capabilities was not refused by the lock: {:?}\n{stderr}",
        out.status
    );

    lbd.shutdown_detach();
    let log = std::fs::read_to_string(lab.dir.path().join("lbd.log")).unwrap_or_default();
    assert!(
        log.contains("detached; exiting"),
        "the detach without capabilities did not finish; log:\n{log}"
    );
    let left: Vec<String> = match std::fs::read_dir(lab.pin_dir.path()) {
        Ok(rd) => rd
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    assert!(
        left.is_empty(),
        "lbd without capabilities left pins behind after --detach: {left:?}"
    );
}

/// lbd's announcement routes (`[announce]`'s table 100, proto 250) in the balancer's namespace.
fn announced(lab: &Lab) -> BTreeSet<IpAddr> {
    ["-4", "-6"]
        .iter()
        .flat_map(|family| {
            let run = std::process::Command::new("ip")
                .args(["-n", lab.balancer.ns.name(), family, "-j", "route", "show"])
                .args(["table", "100", "proto", "250"])
                .output()
                .expect("run ip");
            // Before lbd's first route the kernel has no table 100 ("FIB table does not exist"): nothing announced.
            if !run.status.success() {
                let err = String::from_utf8_lossy(&run.stderr);
                assert!(
                    err.contains("does not exist"),
                    "ip route show table 100: {err}"
                );
                return Vec::new();
            }
            lb_tests::lab::ecmp::route_destinations(&String::from_utf8_lossy(&run.stdout))
        })
        .collect()
}

fn wait_announced(lab: &Lab, lbd: &Lbd, want: &BTreeSet<IpAddr>, what: &str) {
    let have = wait::until(
        &format!("{what}: routes {want:?}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let have = announced(lab);
            if &have == want { Ok(have) } else { Err(have) }
        },
        |have| format!("lbd's routes are {have:?}; lbd log:\n{}", lbd.log_text()),
    );
    println!("{what}: routes {have:?}");
}

/// With `[announce]` on, lbd started with exactly the unit's capabilities keeps CAP_NET_ADMIN alone once attached
/// (its announcement routes are rtnetlink writes for as long as it runs, see lb-userspace/src/privileges.rs), and
/// with only that it announces after the hold-down, withdraws and announces again on `lbctl announce drain` and
/// `undrain`, and withdraws when every backend fails at once (health changes applied as one batch) and announces
/// again when they return.
#[test]
fn with_announce_on_lbd_keeps_only_cap_net_admin_and_announces_with_it() {
    if skip_unless_root("with_announce_on_lbd_keeps_only_cap_net_admin_and_announces_with_it") {
        return;
    }
    let granted = unit_capabilities();
    assert!(
        granted.contains("CAP_NET_ADMIN"),
        "the unit grants no CAP_NET_ADMIN: {granted:?}"
    );
    let mut lab = Lab::new(&LabOptions::default());
    let drain_file = lab.dir.path().join("announce-drained");
    let cfg = lab.write_config("lbd.toml", |cfg| {
        let mut a = toml::Table::new();
        a.insert("enabled".into(), true.into());
        a.insert("hold_down_ms".into(), 500.into());
        a.insert("drain_file".into(), drain_file.display().to_string().into());
        cfg.insert("announce".into(), toml::Value::Table(a));
    });
    let lbd = Lbd::start_with(&lab, &cfg, as_the_unit_starts_it(&granted));
    lbd.wait_all_backends_up(&lab, Duration::from_secs(20));
    let pid = lbd.pid().expect("lbd runs");
    let keeps = names(RUNNING_ANNOUNCING);
    assert_eq!(keeps, BTreeSet::from(["CAP_NET_ADMIN".to_string()]));
    capabilities::assert_threads_hold(pid, &keeps, "after start with [announce] on");
    assert!(
        lbd.log_text().contains("kept=CAP_NET_ADMIN"),
        "lbd did not log what it kept:\n{}",
        lbd.log_text()
    );

    let both: BTreeSet<IpAddr> = [IpAddr::V4(lab::VIP_V4), IpAddr::V6(lab::VIP_V6)].into();
    let none = BTreeSet::new();
    wait_announced(&lab, &lbd, &both, "after the hold-down");
    lbd.lbctl(&["announce", "drain"]);
    wait_announced(&lab, &lbd, &none, "drained");
    assert!(drain_file.exists(), "the drain is not recorded");
    lbd.lbctl(&["announce", "undrain"]);
    wait_announced(&lab, &lbd, &both, "undrained");

    for i in 0..lab.backends.len() {
        lab.stop_server(i);
    }
    wait_announced(&lab, &lbd, &none, "every backend down");
    for i in 0..lab.backends.len() {
        lab.start_server(i);
    }
    wait_announced(&lab, &lbd, &both, "the backends back");
    let text = lbd.lbctl(&["announce"]);
    assert!(
        !text.contains("error") && !text.contains("Operation not permitted"),
        "lbctl announce reports a failure:\n{text}"
    );
    capabilities::assert_threads_hold(pid, &keeps, "after the drains and health changes");
}
