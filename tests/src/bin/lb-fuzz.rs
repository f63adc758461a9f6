//! `lb-fuzz [--packets N] [--seed S]`: what `cargo xtask fuzz` runs. The differential comparison of
//! `lb_tests::harness::differential` (the real program against the reference model) for as many packets as asked, printing
//! packets/s as it goes and stopping at the first divergence with a readable diff. Needs root.

use std::time::Duration;

use clap::Parser;
use lb_tests::harness::differential::{Options, run};

#[derive(Parser)]
#[command(about = "Kernel-vs-model differential fuzzing of lb_xdp and lb_decap")]
struct Cli {
    /// How many packets.
    #[arg(long, default_value_t = 1_000_000)]
    packets: usize,
    /// The generator's seed, in hex (default: from the clock; printed so a run can be replayed).
    #[arg(long, value_parser = parse_hex)]
    seed: Option<u64>,
}

fn parse_hex(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"))
}

fn main() {
    let cli = Cli::parse();
    if !lb_tests::harness::netns::is_root() {
        eprintln!("lb-fuzz: needs root (loads BPF programs, creates network namespaces)");
        std::process::exit(1);
    }
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!(
        "lb-fuzz: seed {seed:#x}, {} packets (replay: cargo xtask fuzz --seed {seed:x} --packets {})",
        cli.packets, cli.packets
    );
    let r = run(Options {
        seed,
        packets: cli.packets,
        max_mismatches: 1,
        progress: Some(Duration::from_secs(10)),
    });
    let secs = r.elapsed.as_secs_f64();
    println!(
        "lb-fuzz: {} packets ({} test runs, {} refused short frames) in {secs:.1} s = {:.0} packets/s, seed {seed:#x}",
        r.packets,
        r.kernel_runs,
        r.refused,
        r.packets as f64 / secs
    );
    println!("lb-fuzz: {}", r.histogram());
    match r.mismatches.first() {
        None => println!("lb-fuzz: kernel and model agreed on every packet"),
        Some(first) => {
            println!("lb-fuzz: FIRST DIVERGENCE\n{first}");
            std::process::exit(1);
        }
    }
}
