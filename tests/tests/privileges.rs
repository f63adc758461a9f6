//! Least privilege, on a real lbd in the lab: started with exactly the capabilities config/lbd.service grants, it
//! loads and attaches, then keeps none of them (every thread, all five sets, read from /proc as an operator would),
//! and still does every job of the running daemon: forwarding, a SIGHUP reload that adds a VIP, an lbctl drain and
//! undrain, a health flip that rebuilds a ring, /metrics. Needs root; prints a skip reason otherwise.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use lb_tests::harness::capabilities::{self, ThreadCaps};
use lb_tests::harness::netns::skip_unless_root;
use lb_tests::lab::daemon::{Launch, Lbd};
use lb_tests::lab::{self, Lab, LabOptions, traffic};
use lb_userspace::control::api::{Request, Response, VipInfo};
use lb_userspace::privileges::RUNNING;

/// The capabilities the shipped unit grants (`CapabilityBoundingSet=`; `AmbientCapabilities=` must name the same).
fn unit_capabilities() -> BTreeSet<String> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/lbd.service");
    let text = std::fs::read_to_string(&unit).unwrap_or_else(|e| panic!("{}: {e}", unit.display()));
    let set = |key: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(key))
            .flat_map(|v| v.split_whitespace().map(str::to_owned))
            .collect()
    };
    let bounding = set("CapabilityBoundingSet=");
    assert!(
        !bounding.is_empty(),
        "{} sets no CapabilityBoundingSet=",
        unit.display()
    );
    assert_eq!(
        set("AmbientCapabilities="),
        bounding,
        "the unit's AmbientCapabilities= and CapabilityBoundingSet= differ"
    );
    bounding
}

/// `setpriv` runs lbd as root with exactly `caps`: for root, exec makes the permitted and effective sets equal to
/// the bounding set, which is what systemd's CapabilityBoundingSet= gives a root service; no_new_privs as the
/// unit's NoNewPrivileges=.
fn as_the_unit_starts_it(caps: &BTreeSet<String>) -> Launch {
    let list: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    Launch {
        wrapper: vec![
            "setpriv".into(),
            "--no-new-privs".into(),
            "--inh-caps=-all".into(),
            format!("--bounding-set=-all,{}", list.join(",")),
        ],
        ..Launch::default()
    }
}

fn running_names() -> BTreeSet<String> {
    RUNNING.iter().map(|c| c.to_string()).collect()
}

/// Panics unless every thread of `pid` holds exactly [`RUNNING`] in its effective and permitted sets and in its
/// bounding set, and nothing inheritable or ambient.
fn assert_dropped(pid: u32, when: &str) {
    let want = running_names();
    let threads = capabilities::of_process(pid);
    assert!(!threads.is_empty(), "{when}: no threads for pid {pid}");
    for t in &threads {
        let expected = ThreadCaps {
            tid: t.tid,
            inheritable: BTreeSet::new(),
            permitted: want.clone(),
            effective: want.clone(),
            bounding: want.clone(),
            ambient: BTreeSet::new(),
        };
        assert_eq!(t, &expected, "{when}: thread {} of lbd (pid {pid})", t.tid);
    }
    println!(
        "{when}: {} thread(s) of lbd, each with effective = permitted = bounding = {want:?}",
        threads.len()
    );
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; lbd log:\n{}",
            lbd.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn lbd_started_with_the_units_capabilities_keeps_none_and_still_does_its_jobs() {
    if skip_unless_root(
        "lbd_started_with_the_units_capabilities_keeps_none_and_still_does_its_jobs",
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
/// the drop, with only the unit's capabilities, no CAP_SYS_ADMIN), the restarted lbd keeps none, the pin directory
/// stays locked against a second (fully privileged) lbd, and `lbctl shutdown --detach` removes the link and the
/// maps with no capability left.
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
