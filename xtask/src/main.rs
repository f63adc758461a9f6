//! Project tasks. Orchestration only: xtask must compile before the eBPF toolchain exists, so it never links
//! lb-userspace or aya; it runs cargo and system tools instead.

mod bench;
mod cmd;
mod demo;
mod dist;
mod fuzz;
mod loadtest;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Project tasks for the XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain and runtime tools (idempotent; root).
    Setup,
    /// setup, build the binaries, fmt + clippy, then the whole test suite (ends with the runner's summary).
    Test(test::TestArgs),
    /// setup, then build and run the one-command lab demo (`demo ecmp`: three balancers behind BGP ECMP).
    Demo {
        /// Extra arguments for `lb-lab demo` (`ecmp` for the ECMP lab's demo).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks: dataplane ns/packet per path, or Maglev build time and memory.
    Bench(bench::BenchArgs),
    /// The kernel-vs-model differential comparison for as many packets as asked (packets/s, the seed, the first
    /// divergence with a readable diff).
    Fuzz(fuzz::FuzzArgs),
    /// Load tests on the lab: packet rate (trafgen, live frames), wrk through this balancer, HAProxy and nftables,
    /// iperf3; Markdown + JSON + PNG under target/loadtest/.
    Loadtest(loadtest::LoadtestArgs),
    /// The Debian package (cargo-deb): lbd, lbctl, systemd unit, /etc/lbd/lbd.toml, man pages, completions,
    /// Grafana dashboard and Prometheus alert rules.
    Dist(dist::DistArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.task {
        Task::Setup => setup::run(),
        Task::Test(args) => test::run(&args),
        Task::Demo { args } => demo::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Loadtest(args) => loadtest::run(&args),
        Task::Dist(args) => dist::run(&args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
