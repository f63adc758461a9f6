//! What lbd may and may not do with the files it is given: the pin directory (absolute, on bpffs, locked for one
//! daemon, of a layout this build knows, and only lbd's own pins removed) and the control socket path (never a
//! file lbd did not make). Each refusal is checked to leave what runs as it was.

use std::path::Path;

use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY;
use lb_tests::harness::netns::skip_unless_root;
use lb_tests::harness::pinned;
use lb_tests::lab::bare::{Bare, VIP, kill, wait_exit};
use lb_userspace::control::api::{Request, Response};
use lb_userspace::control::client::Client;

/// Every path under `dir`, sorted (what is pinned).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(
                p.strip_prefix(dir)
                    .expect("under dir")
                    .display()
                    .to_string(),
            );
        }
    }
    out.sort();
    out
}

fn assert_refused(out: &std::process::Output, needle: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: lbd started; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{what}: the error does not say {needle:?}:\n{stderr}"
    );
}

#[test]
fn a_newer_layout_is_refused_and_the_running_program_is_untouched() {
    if skip_unless_root("a_newer_layout_is_refused_and_the_running_program_is_untouched") {
        return;
    }
    let b = Bare::new("pinnew");
    let cfg = b.config(&[VIP]);
    let mut lbd = b.start(&cfg);
    let c = b.passes_non_vip(0, "lb_xdp did not see the datagrams");
    kill(&lbd, nix::sys::signal::Signal::SIGKILL);
    wait_exit(&mut lbd, "SIGKILL");

    // What a later build would leave: its own maps directory beside ours.
    std::fs::create_dir(b.pins.path().join("maps-v99")).expect("mkdir maps-v99");
    let before = tree(b.pins.path());
    let out = b.run_to_exit(&cfg, &[]);
    assert_refused(&out, "newer than this build", "maps of layout 99");
    assert_eq!(
        tree(b.pins.path()),
        before,
        "the refused start changed the pins"
    );
    assert!(b.xdp_attached(), "the refused start detached the program");
    b.passes_non_vip(c, "the program stopped forwarding after the refused start");
}

#[test]
fn a_second_lbd_on_the_same_pins_is_refused() {
    if skip_unless_root("a_second_lbd_on_the_same_pins_is_refused") {
        return;
    }
    let b = Bare::new("pintwo");
    let cfg = b.config(&[VIP]);
    let mut first = b.start(&cfg);
    // Another socket and metrics port: only the pin directory is shared, so its lock is what must refuse.
    let text = std::fs::read_to_string(&cfg)
        .expect("read config")
        .replace("lbd.sock", "second.sock")
        .replace("127.0.0.1:9662", "127.0.0.1:9663");
    let second = b.dir.path().join("second.toml");
    std::fs::write(&second, text).expect("write second config");
    let out = b.run_to_exit(&second, &[]);
    assert_refused(
        &out,
        "in use by another lbd",
        "a second daemon on one pin directory",
    );
    assert!(first.alive(), "the first lbd died");
    let status = Client::connect(&b.socket()).and_then(|mut c| c.call(&Request::Status));
    assert!(
        matches!(status, Ok(Response::Status(ref s)) if s.attached),
        "the first lbd does not answer as before: {status:?}"
    );
    assert!(
        !b.dir.path().join("second.sock").exists(),
        "the refused daemon left its socket behind"
    );
}

#[test]
fn detach_removes_only_lbds_own_pins() {
    if skip_unless_root("detach_removes_only_lbds_own_pins") {
        return;
    }
    let b = Bare::new("pinown");
    let cfg = b.config(&[VIP]);
    let mut lbd = b.start(&cfg);
    kill(&lbd, nix::sys::signal::Signal::SIGTERM);
    wait_exit(&mut lbd, "SIGTERM");
    // Another tool's pins: one beside lbd's, named like nothing of lbd's.
    let foreign = b.pins.path().join("other_tool_map");
    let _map = pinned::create(&foreign, BPF_MAP_TYPE_ARRAY, 4, 8, 4);

    let out = b.run_to_exit(&cfg, &["--detach"]);
    assert!(
        out.status.success(),
        "lbd --detach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!b.xdp_attached(), "still attached after --detach");
    assert_eq!(
        tree(b.pins.path()),
        vec!["other_tool_map".to_string()],
        "--detach must remove lbd's pins (link, maps) and nothing else"
    );
}

#[test]
fn a_pin_dir_that_is_relative_or_not_on_bpffs_is_refused() {
    if skip_unless_root("a_pin_dir_that_is_relative_or_not_on_bpffs_is_refused") {
        return;
    }
    let b = Bare::new("pinfs");
    let pins = b.pins.path().display().to_string();
    let text = std::fs::read_to_string(b.config(&[VIP])).expect("read config");
    let not_bpffs = b.dir.path().join("pins");
    // A relative path is wrong anywhere, so the config check refuses it; the file system is a fact of the host lbd
    // runs on, so only the start can refuse that.
    for (pin_dir, needle, check_refuses) in [
        (
            "relative/pins".to_string(),
            "must be an absolute path",
            true,
        ),
        (not_bpffs.display().to_string(), "not on bpffs", false),
    ] {
        let cfg = b.write_config(&text.replace(&pins, &pin_dir));
        let out = b.run_to_exit(&cfg, &[]);
        assert_refused(&out, needle, &format!("pin_dir = {pin_dir:?}"));
        assert!(
            !b.xdp_attached(),
            "pin_dir = {pin_dir:?}: a program was attached"
        );
        let check = b.run_to_exit(&cfg, &["--check"]);
        if check_refuses {
            assert_refused(
                &check,
                needle,
                &format!("--check with pin_dir = {pin_dir:?}"),
            );
        }
    }
    assert!(
        !not_bpffs.exists() && !Path::new("relative").exists(),
        "a pin directory was created where it is refused"
    );
}

#[test]
fn a_file_at_the_control_socket_path_is_refused_and_kept() {
    if skip_unless_root("a_file_at_the_control_socket_path_is_refused_and_kept") {
        return;
    }
    let b = Bare::new("pinsock");
    let cfg = b.config(&[VIP]);
    std::fs::write(b.socket(), "an operator's notes").expect("write the file");
    let out = b.run_to_exit(&cfg, &[]);
    assert_refused(&out, "is not a socket", "a regular file at the socket path");
    assert_eq!(
        std::fs::read_to_string(b.socket()).expect("the file is still there"),
        "an operator's notes",
        "lbd changed a file it did not make"
    );
    assert!(!b.xdp_attached(), "a program was attached");
}
