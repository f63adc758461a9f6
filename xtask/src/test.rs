//! `cargo xtask test`: the project's one test command. Lints run first so that the log ENDS with the test
//! runner's summary, which CI reads.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;

use crate::cmd::{self, exec, phase, probe};
use crate::setup;

#[derive(Args)]
pub struct TestArgs {
    /// Skip `cargo xtask setup` (it is idempotent but runs apt/rustup probes).
    #[arg(long)]
    no_setup: bool,
    /// Skip fmt and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Extra arguments passed to the test runner (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    runner_args: Vec<String>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    if !args.no_setup {
        setup::run()?;
    }
    let root = cmd::workspace_root();
    // Tests spawn lbd/lbctl from the target dir, so they must exist before the suite starts.
    phase("build binaries");
    exec(
        cmd::cargo()
            .current_dir(&root)
            .args(["build", "-p", "lb-userspace", "--bins"]),
    )?;
    // Lint failures do not stop the suite (test results matter more), but they fail the run.
    let lint_failures = if args.no_lint {
        Vec::new()
    } else {
        lint(&root)
    };
    if !lint_failures.is_empty() {
        println!(
            "xtask: lint FAILED: {}; running the tests anyway, the run will exit 1",
            lint_failures.join(", ")
        );
    }
    let nextest = setup::has_nextest();
    phase(if nextest {
        "tests (cargo nextest)"
    } else {
        "tests (cargo test)"
    });
    let mut c = cmd::cargo();
    c.current_dir(&root);
    if nextest {
        c.args([
            "nextest",
            "run",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--no-fail-fast",
        ]);
    } else {
        c.args([
            "test",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--no-fail-fast",
        ]);
    }
    if !args.runner_args.is_empty() {
        if !nextest {
            c.arg("--");
        }
        c.args(&args.runner_args);
    }
    println!("+ {c:?}");
    let status = c.status().context("cannot start the test runner")?;
    // Exit with the runner's code and print nothing after it: its summary must be the last lines of the log.
    let code = status.code().unwrap_or(1);
    std::process::exit(if code == 0 && !lint_failures.is_empty() {
        1
    } else {
        code
    });
}

/// Runs every lint and returns the names of those that failed.
fn lint(root: &Path) -> Vec<&'static str> {
    let mut failed = Vec::new();
    let mut check = |name: &'static str, c: &mut Command| {
        phase(name);
        if let Err(e) = exec(c) {
            println!("xtask: {e:#}");
            failed.push(name);
        }
    };
    let mut fmt = cmd::cargo();
    check(
        "cargo fmt --check",
        fmt.current_dir(root).args(["fmt", "--all", "--check"]),
    );
    let mut clippy = cmd::cargo();
    clippy.current_dir(root).args([
        "clippy",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
    ]);
    check(
        "clippy (userspace crates, -D warnings)",
        clippy.args(["--", "-D", "warnings"]),
    );
    // lb-ebpf only compiles with Debian's rustc for bpfel (its rust-toolchain.toml and .cargo/config.toml select
    // both), so it is linted from inside its directory with that toolchain's clippy (apt: rust-web-clippy).
    let dir = root.join("lb-ebpf");
    if probe(
        Command::new("cargo")
            .current_dir(&dir)
            .args(["clippy", "--version"]),
    )
    .is_none()
    {
        phase(
            "clippy (lb-ebpf): skipped, the debian-rustc toolchain has no clippy (apt: rust-web-clippy)",
        );
    } else {
        let mut c = Command::new("cargo");
        // A rustup proxy sets RUSTUP_TOOLCHAIN for its children; clear it so lb-ebpf's rust-toolchain.toml wins.
        c.current_dir(&dir)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC");
        check(
            "clippy (lb-ebpf, debian-rustc, bpfel, -D warnings)",
            c.args(["clippy", "--release", "--", "-D", "warnings"]),
        );
    }
    failed
}
