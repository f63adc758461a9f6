//! `lb-loadtest`: what `cargo xtask loadtest` runs. Builds the lab, measures packet rate, HTTP requests (this
//! balancer, HAProxy, nftables) and throughput, writes the report under `--out`, prints the table or `--json`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use lb_tests::perf::loadtest::{self, Options, report};

#[derive(Parser)]
#[command(
    about = "Load tests on the lab: trafgen/live frames, wrk vs HAProxy and nftables, iperf3"
)]
struct Cli {
    /// 1 s runs instead of 7 s (each phase within about 10 s; noisier figures).
    #[arg(long)]
    quick: bool,
    /// Print the figures as one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Directory for loadtest.md, loadtest.json and loadtest.png.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("lb-loadtest: needs root (network namespaces, XDP, nftables)");
        return ExitCode::FAILURE;
    }
    let mut opts = if cli.quick {
        Options::quick(&cli.out)
    } else {
        Options::full(&cli.out)
    };
    opts.progress_to_stderr = cli.json;
    match loadtest::run(&opts) {
        Ok(r) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("results serialize")
                );
            } else {
                println!("\n{}", report::markdown(&r));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lb-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
