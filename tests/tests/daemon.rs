//! The real `lbd` binary in a network namespace: config validation before anything is touched, SIGHUP diff
//! reloads, SIGKILL + restart adopting the pinned maps and link while the program keeps forwarding, and the program
//! attached again when its interface is re-created.
//!
//! Needs `target/<profile>/lbd`: build it first with `cargo build -p lb-userspace` (`cargo xtask test` does).

use std::time::{Duration, Instant};

use lb_tests::harness::netns::skip_unless_root;
use lb_tests::lab::bare::{Bare, VIP, VIP2, kill, wire};

#[test]
fn bad_config_exits_nonzero_naming_the_field_and_attaches_nothing() {
    if skip_unless_root("bad_config_exits_nonzero_naming_the_field_and_attaches_nothing") {
        return;
    }
    let b = Bare::new("lbdbad");
    let path = b.config(&[VIP]);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("198.18.0.11", "10.0.0.x", 1);
    std::fs::write(&path, text).unwrap();
    let out = b
        .lbd_command(&["--config", path.to_str().unwrap()])
        .output()
        .expect("run lbd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "lbd accepted a bad config; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("vip[0].backends[0].address: \"10.0.0.x\" is not an IP address"),
        "error does not name the field:\n{stderr}"
    );
    assert!(
        !b.xdp_attached(),
        "a program was attached: {}",
        b.lb.ip(&["link", "show", "dev", "eth0"])
    );
    assert!(
        !b.pins.path().exists(),
        "pins were created at {}",
        b.pins.path().display()
    );
}

#[test]
fn sighup_applies_only_the_diff() {
    if skip_unless_root("sighup_applies_only_the_diff") {
        return;
    }
    let b = Bare::new("lbdhup");
    let config = b.config(&[VIP]);
    let mut lbd = b.start(&config);
    assert!(
        b.xdp_attached(),
        "lb_xdp not attached; log:\n{}",
        b.log_text()
    );
    let before = b.vip_meta(VIP).expect("VIP programmed");
    let ring_before = b.ring(&before);
    assert!(
        ring_before.iter().all(|&id| id != 0),
        "ring has unset entries: {ring_before:?}"
    );
    assert_eq!(
        ring_before
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2,
        "two backends in the ring"
    );

    b.config(&[VIP, VIP2]);
    kill(&lbd, nix::sys::signal::Signal::SIGHUP);
    b.wait_for(&mut lbd, "the added VIP", || b.vip_meta(VIP2).is_some());

    let after = b.vip_meta(VIP).expect("unchanged VIP still there");
    assert_eq!(
        after, before,
        "the unchanged VIP's entry (and its active ring slot) was rewritten"
    );
    assert_eq!(
        b.ring(&after),
        ring_before,
        "the unchanged VIP's ring changed"
    );
    let added = b.vip_meta(VIP2).unwrap();
    assert_ne!(added.vip_id, before.vip_id);
    assert!(
        b.ring(&added).iter().all(|&id| id != 0),
        "added VIP's ring incomplete"
    );

    // An invalid file is rejected and the running state kept.
    std::fs::write(&config, "[daemon]\ninterface = 1\n").unwrap();
    kill(&lbd, nix::sys::signal::Signal::SIGHUP);
    b.wait_for(&mut lbd, "the reload rejection in the log", || {
        b.log_text().contains("reload rejected")
    });
    assert_eq!(
        b.vips().len(),
        2 + 2,
        "VIPs changed after a rejected reload (2 VIPs + 2 fragment entries)"
    );

    // SIGTERM: exits, the program stays attached.
    kill(&lbd, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lbd.alive() {
        assert!(
            Instant::now() < deadline,
            "lbd ignored SIGTERM; log:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(b.xdp_attached(), "SIGTERM detached the program");

    // --detach removes program and pins.
    let out = b
        .lbd_command(&["--config", b.config(&[VIP]).to_str().unwrap(), "--detach"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lbd --detach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!b.xdp_attached(), "still attached after --detach");
    assert!(!b.pins.path().exists(), "pins left after --detach");
}

#[test]
fn sigkill_and_restart_adopt_the_pinned_state() {
    if skip_unless_root("sigkill_and_restart_adopt_the_pinned_state") {
        return;
    }
    let b = Bare::new("lbdkill");
    let config = b.config(&[VIP]);
    let mut lbd = b.start(&config);
    let meta = b.vip_meta(VIP).expect("VIP programmed");
    let ring_before = b.ring(&meta);

    let c1 = b.passes_non_vip(0, "lb_xdp did not see the datagrams");

    kill(&lbd, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lbd.alive() {
        assert!(Instant::now() < deadline, "lbd survived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(b.xdp_attached(), "the program went away with the process");
    let c2 = b.passes_non_vip(c1, "not forwarding without the daemon");

    let lbd = b.start(&config);
    assert!(
        b.log_text().contains("adopted the pinned XDP link"),
        "link not adopted; log:\n{}",
        b.log_text()
    );
    assert!(
        b.log_text().contains("adopted the pinned maps' state"),
        "maps not adopted; log:\n{}",
        b.log_text()
    );
    let meta2 = b.vip_meta(VIP).expect("VIP still programmed");
    assert_eq!(
        meta2.vip_id, meta.vip_id,
        "VIP id changed across the restart"
    );
    assert_eq!(
        b.ring(&meta2),
        ring_before,
        "backend ids changed across the restart"
    );
    b.passes_non_vip(c2, "counters did not continue after the restart");
    drop(lbd);
}

#[test]
fn a_recreated_interface_gets_lb_xdp_again() {
    if skip_unless_root("a_recreated_interface_gets_lb_xdp_again") {
        return;
    }
    let b = Bare::new("lbdif");
    let mut lbd = b.start(&b.config(&[VIP]));
    let c1 = b.passes_non_vip(0, "lb_xdp did not see the datagrams");
    // The attach below happens after lbd gave up its capabilities: it must need none (privileges::RUNNING).
    for t in lb_tests::harness::capabilities::of_process(lbd.id()) {
        assert!(
            t.effective.is_empty() && t.permitted.is_empty(),
            "lbd thread {} still holds capabilities: {t:?}",
            t.tid
        );
    }

    // A driver reload or a rebuilt bond looks like this: the device goes away (the kernel detaches the program
    // with it) and a device of the same name comes back without one.
    b.lb.ip(&["link", "del", "eth0"]);
    b.wait_for(&mut lbd, "the interface loss in the log", || {
        b.log_text().contains("the interface is gone")
    });
    wire(&b.lb, &b.peer);
    b.wait_for(&mut lbd, "the re-attachment in the log", || {
        b.log_text().contains("lb_xdp attached to it again")
    });
    assert!(b.xdp_attached(), "no XDP program on the new eth0");
    b.passes_non_vip(
        c1,
        "the program on the new eth0 does not count into the same maps",
    );
    let status = lb_userspace::control::client::Client::connect(&b.socket())
        .and_then(|mut c| c.call(&lb_userspace::control::api::Request::Status))
        .expect("lbctl status");
    let lb_userspace::control::api::Response::Status(s) = status else {
        panic!("status answered {status:?}")
    };
    assert!(s.attached && s.reattachments == 1, "{s:?}");
    drop(lbd);
}
