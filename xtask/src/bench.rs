//! `cargo xtask bench dataplane|maglev [--json]`: runs the lb-bench binary of lb-tests (it needs the eBPF object
//! and the netns helpers, which xtask must not link).

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::cmd::{self, phase};

#[derive(Args)]
pub struct BenchArgs {
    what: What,
    /// Print one JSON object instead of the human table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    /// ns/packet per XDP path next to a floor program (BPF_PROG_TEST_RUN).
    Dataplane,
    /// Maglev build time, map memory and lbd RSS.
    Maglev,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let what = match args.what {
        What::Dataplane => "dataplane",
        What::Maglev => "maglev",
    };
    if !args.json {
        phase(&format!("bench {what}"));
    }
    // The maglev bench measures a real lbd, found next to lb-bench in target/release.
    cmd::exec_for(cmd::release_bins(&[]).arg("--quiet"), args.json, false)?;
    let mut c = cmd::lb_tests_bin("lb-bench");
    c.arg(what);
    if args.json {
        c.arg("--json");
    }
    cmd::exec_for(&mut c, args.json, true)
}
