//! Changes through the control socket, seen by an operator: each is logged with the uid and pid of the process
//! that asked; a drain set with lbctl outlives restarts of lbd (it is kept in the pinned backend map) and lasts
//! until a reload from the file, which drops it and every other runtime edit and names each one in the log.
//! The real lbd and lbctl in the lab. Needs root; prints a skip reason otherwise.

use std::time::Duration;

use lb_tests::harness::netns::skip_unless_root;
use lb_tests::harness::wait;
use lb_tests::lab::daemon::Lbd;
use lb_tests::lab::{self, Lab, LabOptions};

/// (weight, ring entries) of `backend` in the IPv4 HTTP VIP, from `lbctl vip list --json`.
fn weight_and_share(lbd: &Lbd, backend: std::net::Ipv4Addr) -> (u64, u64) {
    let out = lbd.lbctl(&["--json", "vip", "list"]);
    let vips: serde_json::Value = serde_json::from_str(&out).expect("vip list JSON");
    let vip = vips
        .as_array()
        .expect("a list")
        .iter()
        .find(|v| v["vip"]["address"] == lab::VIP_V4.to_string() && v["vip"]["port"] == 80)
        .unwrap_or_else(|| panic!("no {}:80 in {vips}", lab::VIP_V4));
    let b = vip["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == backend.to_string())
        .unwrap_or_else(|| panic!("no {backend} in {vip}"));
    (
        b["weight"].as_u64().expect("weight"),
        b["ring_entries"].as_u64().expect("ring_entries"),
    )
}

/// The log line that contains every one of `parts`; panics with the log when none does (after up to 5 s: lbd may
/// not have written it yet).
fn log_line(lbd: &Lbd, parts: &[&str]) -> String {
    wait::until(
        &format!("a log line with all of {parts:?}"),
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let log = lbd.log_text();
            match log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                Some(l) => Ok(l.to_owned()),
                None => Err(log),
            }
        },
        |log| format!("lbd log:\n{log}"),
    )
}

#[test]
fn drains_outlive_restarts_until_a_reload_which_names_what_it_drops() {
    if skip_unless_root("drains_outlive_restarts_until_a_reload_which_names_what_it_drops") {
        return;
    }
    let lab = Lab::new(&LabOptions::default());
    let cfg = lab.write_config("lbd.toml", |_| {});
    let mut lbd = Lbd::start(&lab, &cfg);
    lbd.wait_all_backends_up(&lab, Duration::from_secs(20));
    let vip = format!("{}:80/tcp", lab::VIP_V4);
    let (drained, reweighted) = (lab::backend_v4(0), lab::backend_v4(1));
    let drain = format!("drain of {drained} in {vip}");

    // Who changed what: uid and pid of the lbctl process, in the line that says what was done.
    let (_, pid) = lbd.lbctl_with_pid(&["backend", "drain", &vip, &drained.to_string()]);
    let line = log_line(
        &lbd,
        &[
            "control: backend drain",
            &drain,
            "uid=0",
            &format!("pid={pid}"),
        ],
    );
    println!("{line}");
    let (_, pid) = lbd.lbctl_with_pid(&["backend", "weight", &vip, &reweighted.to_string(), "300"]);
    log_line(
        &lbd,
        &[
            "control: backend weight",
            &format!("{reweighted} weight 300"),
            &format!("pid={pid}"),
        ],
    );
    // A refused change is logged with its asker too.
    let out = lbd.lbctl_output(&["backend", "del", &vip, "198.18.0.99"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    log_line(
        &lbd,
        &["control: backend del", "198.18.0.99: refused", "uid=0"],
    );
    assert_eq!(weight_and_share(&lbd, drained), (0, 0), "drained");
    assert_eq!(weight_and_share(&lbd, reweighted).0, 300);

    // A restart (here a crash) keeps the drain, from the pinned backend map; other runtime edits are not kept: the
    // weight is the file's again.
    lbd.kill9();
    lbd.restart();
    lbd.wait_all_backends_up(&lab, Duration::from_secs(20));
    assert_eq!(
        weight_and_share(&lbd, drained),
        (0, 0),
        "the drain did not survive the restart; lbd log:\n{}",
        lbd.log_text()
    );
    assert_eq!(weight_and_share(&lbd, reweighted).0, 100);
    log_line(
        &lbd,
        &[
            &drain,
            "kept from the running dataplane",
            "a reload from the file drops it",
        ],
    );

    // A reload from the file drops it, and says so, naming it; the reload itself is logged with its asker.
    let (_, pid) = lbd.lbctl_with_pid(&["reload"]);
    log_line(
        &lbd,
        &["control: reload", "reloaded", &format!("pid={pid}")],
    );
    let dropped = log_line(&lbd, &["the reload dropped these runtime edits", &drain]);
    println!("{dropped}");
    let (weight, share) = weight_and_share(&lbd, drained);
    assert!(
        weight == 100 && share > 0,
        "still drained after the reload: {weight}, {share}"
    );

    // The same through SIGHUP, for a drain made by this lbd: the dropped edit names who made it.
    let (_, pid) = lbd.lbctl_with_pid(&["backend", "drain", &vip, &drained.to_string()]);
    assert_eq!(weight_and_share(&lbd, drained), (0, 0));
    let reloads = lbd
        .log_text()
        .matches("the reload dropped these runtime edits")
        .count();
    lbd.signal(nix::sys::signal::Signal::SIGHUP);
    wait::until_true(
        "a reload after SIGHUP",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            lbd.log_text()
                .matches("the reload dropped these runtime edits")
                .count()
                > reloads
        },
        || format!("lbd log:\n{}", lbd.log_text()),
    );
    let dropped = lbd
        .log_text()
        .lines()
        .rfind(|l| l.contains("the reload dropped these runtime edits"))
        .expect("the line")
        .to_owned();
    assert!(
        dropped.contains(&format!("{drain} (weight 0) (by uid 0 pid {pid})")),
        "{dropped}"
    );
    let (weight, share) = weight_and_share(&lbd, drained);
    assert!(
        weight == 100 && share > 0,
        "still drained after SIGHUP: {weight}, {share}"
    );
}
