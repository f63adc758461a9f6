//! `cargo xtask fuzz [--packets N] [--seed S]`: the kernel-vs-model differential comparison for as long as asked
//! (the suite runs 100,000 packets of it). Runs the lb-fuzz binary of lb-tests, built in release.

use anyhow::Result;
use clap::Args;

use crate::cmd::{self, phase};

#[derive(Args)]
pub struct FuzzArgs {
    /// How many packets.
    #[arg(long, default_value_t = 1_000_000)]
    packets: usize,
    /// The generator's seed in hex (default: from the clock; printed for replay).
    #[arg(long)]
    seed: Option<String>,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    phase(&format!("fuzz: {} packets", args.packets));
    let mut c = cmd::lb_tests_bin("lb-fuzz");
    c.args(["--packets", &args.packets.to_string()]);
    if let Some(seed) = &args.seed {
        c.args(["--seed", seed]);
    }
    cmd::exec(&mut c)
}
