//! `cargo xtask loadtest [--quick] [--json]`: setup (it installs trafgen, wrk, iperf3, HAProxy, nftables), release
//! builds, then the lb-loadtest binary of lb-tests. The report lands in `<target>/loadtest/`.

use anyhow::Result;
use clap::Args;

use crate::cmd::{self, phase};
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
    let out_dir = cmd::target_dir().join("loadtest");
    let json = args.json;
    if json {
        // setup prints its progress on stdout, which --json keeps for the JSON: run it as a child with stdout muted.
        cmd::exec_for(
            std::process::Command::new(std::env::current_exe()?).arg("setup"),
            true,
            false,
        )?;
    } else {
        setup::run()?;
        phase("build lbd, lbctl, lb-lab, lb-loadtest (release)");
    }
    cmd::exec_for(&mut cmd::release_bins(&["lb-tests"]), json, false)?;
    if !json {
        phase("loadtest");
    }
    let mut c = cmd::lb_tests_bin("lb-loadtest");
    c.arg("--out").arg(&out_dir);
    if args.quick {
        c.arg("--quick");
    }
    if json {
        c.arg("--json");
    }
    cmd::exec_for(&mut c, json, true)
}
