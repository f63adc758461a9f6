//! `lb-bench dataplane|maglev [--json]`: what `cargo xtask bench` runs. Needs root.

use lb_tests::perf::bench;

use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(about = "Dataplane and Maglev benchmarks")]
struct Cli {
    what: What,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    Dataplane,
    Maglev,
}

fn main() {
    let cli = Cli::parse();
    if !lb_tests::harness::netns::is_root() {
        eprintln!("lb-bench: needs root (loads BPF programs, creates network namespaces)");
        std::process::exit(1);
    }
    match cli.what {
        What::Dataplane => dataplane(cli.json),
        What::Maglev => maglev(cli.json),
    }
}

fn maglev(json: bool) {
    let opts = bench::maglev::Options::FULL;
    let r = bench::maglev::run(&opts);
    for n in &r.notes {
        eprintln!("lb-bench maglev: {n}");
    }
    if json {
        let build: serde_json::Map<String, serde_json::Value> = r
            .build_ms
            .iter()
            .map(|(n, ms)| (n.to_string(), serde_json::json!(ms)))
            .collect();
        let obj = serde_json::json!({
            "build_ms": build,
            "map_bytes": r.map_bytes,
            "lbd_rss_bytes": r.lbd_rss_bytes,
            "down_to_ring_ms": r.down_to_ring_ms,
            "down_to_maglev_ms": r.down_to_maglev_ms,
        });
        println!("{obj}");
        return;
    }
    println!("Maglev build, M = 65537 (median of several builds):");
    for (n, ms) in &r.build_ms {
        println!("  {n:>5} backends: {ms:8.2} ms");
    }
    println!("{} VIPs x {} backends:", opts.vips, opts.backends_per_vip);
    println!(
        "  BPF maps (kernel memlock): {:>12} bytes ({:.1} MiB)",
        r.map_bytes,
        r.map_bytes as f64 / 1048576.0
    );
    match r.lbd_rss_bytes {
        Some(b) => println!(
            "  lbd RSS:                   {b:>12} bytes ({:.1} MiB)",
            b as f64 / 1048576.0
        ),
        None => println!("  lbd RSS:                   not measured (see above)"),
    }
    match (r.down_to_ring_ms, r.down_to_maglev_ms) {
        (Some(ring), Some(maglev)) => {
            println!(
                "  a shared backend's failed check to every ring rid of it: {ring:.1} ms (down_to_ring_ms)"
            );
            println!(
                "  ... to every VIP's rebuilt Maglev table:                {maglev:.1} ms (down_to_maglev_ms)"
            );
        }
        _ => println!("  down_to_ring_ms:           not measured (see above)"),
    }
}

fn dataplane(json: bool) {
    let opts = bench::dataplane::Options::FULL;
    let r = bench::dataplane::run(&opts);
    if json {
        let paths: serde_json::Map<String, serde_json::Value> = r
            .paths
            .iter()
            .map(|(name, ns, _)| (name.to_string(), serde_json::json!(round(*ns))))
            .collect();
        let x_encap: serde_json::Map<String, serde_json::Value> = r
            .paths
            .iter()
            .map(|(name, ns, _)| {
                (
                    name.to_string(),
                    serde_json::json!(round2(ns / r.encap_floor_ns)),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "floor_ns": round(r.floor_ns),
                "encap_floor_ns": round(r.encap_floor_ns),
                "paths": paths,
                "x_encap_floor": x_encap,
            })
        );
        return;
    }
    println!(
        "lb_xdp, ns per packet: kernel BPF run-time statistics over single runs on fresh packets, minus the"
    );
    println!(
        "empty program's figure, median of {} interleaved rounds; the program's counters proved every run took",
        opts.rounds
    );
    println!(
        "its path. floor: parse + swap MACs + XDP_TX; encap floor: parse + a fixed IPIP header + XDP_TX. The"
    );
    println!(
        "_20k/_200k rows: that many flows in the table, each seen once in shuffled order (cold)."
    );
    println!(
        "  {:<20} {:>8} {:>8} {:>8}   {:>13}",
        "path", "ns/pkt", "x floor", "x encap", "timer ns/call"
    );
    println!(
        "  {:<20} {:>8.1} {:>8} {:>8}   {:>13.0}",
        "empty (subtr.)", r.empty_ns, "", "", r.empty_timer_ns
    );
    println!(
        "  {:<20} {:>8.1} {:>8.2} {:>8.2}   {:>13.0}",
        "floor",
        r.floor_ns,
        1.0,
        r.floor_ns / r.encap_floor_ns,
        r.floor_timer_ns
    );
    println!(
        "  {:<20} {:>8.1} {:>8.2} {:>8.2}   {:>13.0}",
        "encap_floor",
        r.encap_floor_ns,
        r.encap_floor_ns / r.floor_ns,
        1.0,
        r.encap_floor_timer_ns
    );
    for (name, ns, timer) in &r.paths {
        println!(
            "  {name:<20} {ns:>8.1} {:>8.2} {:>8.2}   {timer:>13.0}",
            ns / r.floor_ns,
            ns / r.encap_floor_ns
        );
    }
    println!(
        "warm (one packet, {} runs in one call, caches hot; only paths whose rewrite keeps them on their path):",
        opts.warm_repeat
    );
    let floor = r
        .warm
        .iter()
        .find(|(n, _)| *n == "floor")
        .map_or(f64::NAN, |(_, ns)| *ns);
    for (name, ns) in &r.warm {
        println!("  {name:<16} {ns:>8.1} {:>8.1}", ns / floor);
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
