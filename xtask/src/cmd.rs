//! Running commands with a visible trace, so a CI log shows exactly what was executed.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Prints a phase header; `.ci/run` and humans grep for these.
pub fn phase(name: &str) {
    println!("==> {name}");
}

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio and fails if it does not exit 0.
pub fn exec(c: &mut Command) -> Result<()> {
    let d = describe(c);
    println!("+ {d}");
    let status = c.status().with_context(|| format!("cannot start `{d}`"))?;
    if !status.success() {
        bail!("`{d}` failed ({status})");
    }
    Ok(())
}

/// Runs a step of a task that may print JSON. Traced like [`exec`] normally; with `json`, untraced and with its
/// stdout silenced unless it is the step that prints the JSON (`prints_json`), so stdout carries exactly one object.
pub fn exec_for(c: &mut Command, json: bool, prints_json: bool) -> Result<()> {
    if !json {
        return exec(c);
    }
    if !prints_json {
        c.stdout(Stdio::null());
    }
    let d = describe(c);
    let status = c.status().with_context(|| format!("cannot start `{d}`"))?;
    if !status.success() {
        bail!("`{d}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns trimmed stdout if it exited 0, None otherwise (also if it is missing).
pub fn probe(c: &mut Command) -> Option<String> {
    let out = c.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The cargo that invoked us (rustup's proxy when run as `cargo xtask`).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Where cargo puts build products: `CARGO_TARGET_DIR`, else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `cargo build --release --bins -p lb-userspace [-p PACKAGE...]` in the workspace: lbd and lbctl, which the demo,
/// the benchmarks, the load tests and the package take from target/release.
pub fn release_bins(more: &[&str]) -> Command {
    let mut c = cargo();
    c.current_dir(workspace_root())
        .args(["build", "--release", "--bins", "-p", "lb-userspace"]);
    for p in more {
        c.args(["-p", p]);
    }
    c
}

/// `cargo run --release -p lb-tests --bin NAME --`: the lab, benchmark, load-test and fuzz binaries, which link the
/// eBPF objects and the netns helpers that xtask itself must not. Arguments for the binary follow.
pub fn lb_tests_bin(name: &str) -> Command {
    let mut c = cargo();
    c.current_dir(workspace_root()).args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "lb-tests",
        "--bin",
        name,
        "--",
    ]);
    c
}
