//! `lb-lab up` as a real process, stopped the way people stop it (Ctrl-C is SIGINT to the process group; a service
//! manager or `kill` sends SIGTERM): it tears its lab down like a normal end, leaving no namespace, no bpffs pin
//! and no server or lbd process. Needs root and the built binaries (`cargo build -p lb-userspace -p lb-tests
//! --bins`); prints a skip reason without root.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lb_tests::harness::guards::ChildGuard;
use lb_tests::harness::netns::skip_unless_root;
use lb_tests::harness::wait;
use lb_tests::lab::target_binary;
use nix::sys::signal::Signal;

/// What a running `lb-lab up` made: its namespaces, pin directory, private directory and child processes.
struct Made {
    namespaces: Vec<String>,
    pin_dir: PathBuf,
    dir: PathBuf,
    children: Vec<u32>,
}

/// The pids whose parent is `pid` (lbd runs as `nsenter` → lbd, each server as `ip netns exec` → `lb-lab serve`,
/// both replacing themselves, so these are lbd and the servers).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // Fields after the command name, which is in parentheses and may hold spaces.
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Starts `lb-lab up` and waits until it says the lab is up; returns the process, what it made and its output so
/// far.
fn start_lab() -> (ChildGuard, Made, mpsc::Receiver<String>) {
    let mut cmd = Command::new(target_binary("lb-lab"));
    cmd.args(["up", "--seconds", "300"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut lab = ChildGuard::spawn(cmd, "lb-lab up");
    let stdout = lab.child_mut().stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("lb-lab | {line}");
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut config = None;
    let mut namespaces = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    // "lab up for N s: config PATH", the lbctl line, then "ip netns exec NAME ..." for the client, the balancer, the
    // switch and each of the 3 backends.
    while config.is_none() || namespaces.len() < 6 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("lb-lab up did not report its lab within 90 s ({e})"));
        if let Some(path) = line.split_once(": config ").map(|(_, p)| p) {
            config = Some(PathBuf::from(path.trim()));
        }
        if let Some(ns) = line.trim().strip_prefix("ip netns exec ") {
            namespaces.push(ns.split_whitespace().next().expect("a name").to_owned());
        }
    }
    let config = config.expect("config path");
    let text =
        std::fs::read_to_string(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let table: toml::Table = text.parse().expect("the lab's config parses");
    let pin_dir = PathBuf::from(table["daemon"]["pin_dir"].as_str().expect("daemon.pin_dir"));
    let children = children_of(lab.id());
    let made = Made {
        namespaces,
        pin_dir,
        dir: config.parent().expect("the lab's directory").to_path_buf(),
        children,
    };
    (lab, made, lines)
}

fn assert_all_there(made: &Made) {
    for ns in &made.namespaces {
        assert!(
            Path::new("/var/run/netns").join(ns).exists(),
            "namespace {ns} missing while the lab is up"
        );
    }
    assert!(
        made.pin_dir.exists(),
        "{} missing while the lab is up",
        made.pin_dir.display()
    );
    let names: Vec<String> = made.children.iter().map(|p| comm(*p)).collect();
    assert!(
        names.iter().filter(|n| *n == "lb-lab").count() == 3 && names.iter().any(|n| n == "lbd"),
        "expected lbd and 3 servers among lb-lab's children, found {names:?}"
    );
}

/// Sends `sig` to a running `lb-lab up` and checks that it exits on its own, successfully, having removed
/// everything it made.
fn interrupted_lab_leaves_nothing(sig: Signal) {
    let (mut lab, made, lines) = start_lab();
    assert_all_there(&made);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(lab.id() as i32), sig)
        .expect("signal lb-lab");
    let status = wait::until(
        &format!("lb-lab up to exit after {sig}"),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || lab.child_mut().try_wait().expect("wait lb-lab").ok_or(()),
        |()| String::new(),
    );
    for ns in &made.namespaces {
        assert!(
            !Path::new("/var/run/netns").join(ns).exists(),
            "namespace {ns} left behind after {sig}"
        );
    }
    assert!(
        !made.pin_dir.exists(),
        "pins left behind after {sig} at {}",
        made.pin_dir.display()
    );
    assert!(
        !made.dir.exists(),
        "lab directory left behind after {sig}: {}",
        made.dir.display()
    );
    for pid in &made.children {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} ({}) left running after {sig}",
            comm(*pid)
        );
    }
    // The rest of its output, until the pipe closes (bounded: a process left holding it must not hang the test).
    let mut said = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        said.push(line);
    }
    assert!(
        status.success(),
        "lb-lab up ended with {status} after {sig} (killed by it, not torn down); it said {said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l.contains(&format!("{sig}: tearing the lab down"))),
        "lb-lab up did not say it caught {sig}: {said:?}"
    );
}

#[test]
fn lab_up_interrupted_by_sigint_tears_everything_down() {
    if skip_unless_root("lab_up_interrupted_by_sigint_tears_everything_down") {
        return;
    }
    interrupted_lab_leaves_nothing(Signal::SIGINT);
}

#[test]
fn lab_up_stopped_by_sigterm_tears_everything_down() {
    if skip_unless_root("lab_up_stopped_by_sigterm_tears_everything_down") {
        return;
    }
    interrupted_lab_leaves_nothing(Signal::SIGTERM);
}
