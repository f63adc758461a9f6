//! `cargo xtask loadtest [--quick] [--json]`: setup (it installs trafgen, wrk, iperf3, HAProxy, nftables), release
//! builds, then the lb-loadtest binary of lb-tests. The report lands in `<target>/loadtest/`.

use anyhow::Result;
use clap::Args;

use crate::cmd::{self, exec, phase};
use crate::setup;

#[derive(Args)]
pub struct LoadtestArgs {
    /// 1 s runs (each phase within about 10 s) instead of 7 s runs.
    #[arg(long)]
    quick: bool,
    /// Print the figures as one JSON object on stdout; everything else goes to stderr.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &LoadtestArgs) -> Result<()> {
    let root = cmd::workspace_root();
    let out_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("loadtest");
    let quiet = args.json;
    // With --json, stdout must be exactly the JSON object: set-up and build chatter go to stderr.
    let run_step = |c: &mut std::process::Command| -> Result<()> {
        if quiet {
            let status = c.stdout(std::process::Stdio::null()).status()?;
            anyhow::ensure!(status.success(), "{c:?} failed ({status})");
            Ok(())
        } else {
            exec(c)
        }
    };
    if quiet {
        let status = std::process::Command::new(std::env::current_exe()?)
            .arg("setup")
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "cargo xtask setup failed ({status})");
    } else {
        setup::run()?;
        phase("build lbd, lbctl, lb-lab, lb-loadtest (release)");
    }
    run_step(cmd::cargo().current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "-p",
        "lb-tests",
        "--bins",
    ]))?;
    if !quiet {
        phase("loadtest");
    }
    let mut c = cmd::cargo();
    c.current_dir(&root).args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "lb-tests",
        "--bin",
        "lb-loadtest",
        "--",
        "--out",
    ]);
    c.arg(&out_dir);
    if args.quick {
        c.arg("--quick");
    }
    if args.json {
        c.arg("--json");
        let status = c.status()?;
        anyhow::ensure!(status.success(), "lb-loadtest failed ({status})");
        return Ok(());
    }
    exec(&mut c)
}
