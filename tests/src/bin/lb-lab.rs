//! `lb-lab demo`: the balancer's main job, end to end, on the embedded lab config — what `cargo xtask demo` runs.
//! `lb-lab demo ecmp`: three balancers behind a BGP router with ECMP — what `cargo xtask demo ecmp` runs.
//! `lb-lab serve`: the server process each lab backend runs.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use lb_tests::lab::churn::{self, ChurnOptions};
use lb_tests::lab::daemon::Lbd;
use lb_tests::lab::ecmp::{self, EcmpLab, EcmpOptions};
use lb_tests::lab::interrupt::Interrupt;
use lb_tests::lab::traffic;
use lb_tests::lab::{self, Lab, LabOptions};

#[derive(Clone, Copy, ValueEnum)]
enum DemoKind {
    /// One balancer (config/lab.toml).
    Single,
    /// Three balancers announcing the VIPs over BGP to a router with ECMP (config/ecmp-lab.toml).
    Ecmp,
}

#[derive(Parser)]
#[command(about = "The load balancer lab: namespaces, backends, real traffic")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab, start lbd with config/lab.toml, send traffic, take a backend down and back, tear down.
    /// `demo ecmp`: three balancers behind a BGP router; flows spread, one balancer removed and added back, one
    /// drained, while connections stay open; ends with `ecmp: N connections through B balancers, K broken` and
    /// fails if K > 0.
    Demo {
        #[arg(value_enum, default_value_t = DemoKind::Single)]
        kind: DemoKind,
        /// Requests per traffic round.
        #[arg(long, default_value_t = 600)]
        requests: usize,
        /// ecmp: long-lived connections kept open through the changes.
        #[arg(long, default_value_t = 240)]
        connections: usize,
    },
    /// Build the lab and start lbd, print how to reach it, and keep it up for a while (for exploring by hand).
    Up {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Serve HTTP and UDP as a lab backend (runs inside a backend namespace).
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = lab::HTTP_PORT)]
        http_port: u16,
        /// UDP address to answer on (repeatable).
        #[arg(long)]
        udp: Vec<SocketAddr>,
        /// Also serve HTTPS on this port (needs --tls-cert and --tls-key).
        #[arg(long, requires_all = ["tls_cert", "tls_key"])]
        https_port: Option<u16>,
        /// PEM certificate chain for HTTPS.
        #[arg(long)]
        tls_cert: Option<std::path::PathBuf>,
        /// PEM private key for HTTPS.
        #[arg(long)]
        tls_key: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Serve {
            name,
            http_port,
            udp,
            https_port,
            tls_cert,
            tls_key,
        } => {
            let https = match (https_port, tls_cert, tls_key) {
                (Some(port), Some(cert), Some(key)) => {
                    Some(lb_tests::lab::servers::Https { port, cert, key })
                }
                _ => None,
            };
            match lb_tests::lab::servers::serve(&name, http_port, &udp, https.as_ref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lb-lab serve: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Up { seconds } => {
            let interrupt = Interrupt::install();
            let lab = Lab::new(&LabOptions::default());
            let cfg = lab.write_config("lab.toml", |_| {});
            let _lbd = Lbd::start(&lab, &cfg);
            println!("lab up for {seconds} s: config {}", cfg.display());
            println!("  lbctl --socket {} stats", lab.socket_path().display());
            for ns in [&lab.client().ns, &lab.balancer.ns, &lab.switch] {
                println!("  ip netns exec {} ...", ns.name());
            }
            for b in &lab.backends {
                println!("  ip netns exec {} ...   ({})", b.host.ns.name(), b.name);
            }
            if let Some(sig) = interrupt.wait(std::time::Duration::from_secs(seconds)) {
                println!("{sig}: tearing the lab down");
            }
            // lbd, the servers, the pins and the namespaces go as `_lbd` and `lab` drop.
            ExitCode::SUCCESS
        }
        Cmd::Demo {
            kind,
            requests,
            connections,
        } => {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("lb-lab demo: needs root (network namespaces, XDP)");
                return ExitCode::FAILURE;
            }
            let interrupt = Interrupt::install();
            let done = match kind {
                DemoKind::Single => demo(requests, &interrupt).then_some(ExitCode::SUCCESS),
                DemoKind::Ecmp => ecmp_demo(requests, connections, &interrupt),
            };
            match done {
                Some(code) => code,
                // 128 + SIGINT, as a shell reports a command stopped by Ctrl-C.
                None => ExitCode::from(130),
            }
        }
    }
}

/// Prints the next step's title; false when a signal came since the last step, so the demo returns and tears its
/// lab down (a step in progress finishes first).
fn step(interrupt: &Interrupt, title: &str) -> bool {
    if let Some(sig) = interrupt.pending() {
        println!("\n{sig}: stopping the demo and tearing the lab down");
        return false;
    }
    println!("\n=== {title}");
    true
}

/// Returns false when a signal cut it short.
fn demo(requests: usize, interrupt: &Interrupt) -> bool {
    if !step(
        interrupt,
        "Building the lab: client, balancer, 3 backends on a bridge (private network namespaces)",
    ) {
        return false;
    }
    let mut lab = Lab::new(&LabOptions::default());
    println!(
        "  client {} | balancer {} (lb_xdp, native) | backends {} (VIPs on loopback, lb_decap)",
        lab::CLIENT_V4,
        lab::BALANCER_V4,
        lab.backends
            .iter()
            .map(|b| b.host.v4.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    if !step(interrupt, "Starting lbd with config/lab.toml") {
        return false;
    }
    let cfg = lab.write_config("lab.toml", |_| {});
    let lbd = Lbd::start(&lab, &cfg);
    lbd.wait_all_backends_up(&lab, std::time::Duration::from_secs(20));
    print!("{}", lbd.lbctl(&["vip", "list"]));

    let vip = SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::HTTP_PORT);
    if !step(
        interrupt,
        &format!("{requests} HTTP requests to {vip}, each on a new connection (a new source port)"),
    ) {
        return false;
    }
    let t = traffic::http_burst(&lab.client().ns, vip, requests, 16);
    print!("{}", t.render());

    let vip6 = SocketAddr::new(IpAddr::V6(lab::VIP_V6), lab::HTTP_PORT);
    if !step(
        interrupt,
        &format!("{} HTTP requests to the IPv6 VIP {vip6}", requests / 4),
    ) {
        return false;
    }
    print!(
        "{}",
        traffic::http_burst(&lab.client().ns, vip6, requests / 4, 8).render()
    );

    let uvip = SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::UDP_PORT);
    if !step(
        interrupt,
        &format!("{} UDP requests to {uvip}", requests / 6),
    ) {
        return false;
    }
    print!(
        "{}",
        traffic::udp_burst(&lab.client().ns, uvip, requests / 6).render()
    );

    if !step(interrupt, "lbctl stats") {
        return false;
    }
    print!("{}", lbd.lbctl(&["stats"]));

    if !step(
        interrupt,
        "Stopping backend-2's server: health checks take it out of the ring",
    ) {
        return false;
    }
    lab.stop_server(1);
    let took = lbd.wait_backend_state(
        lab::backend_v4(1),
        false,
        std::time::Duration::from_secs(20),
    );
    println!("  backend-2 marked down after {:.1} s", took.as_secs_f64());
    print!("{}", lbd.lbctl(&["health"]));
    if !step(
        interrupt,
        &format!("{requests} requests with backend-2 down"),
    ) {
        return false;
    }
    print!(
        "{}",
        traffic::http_burst(&lab.client().ns, vip, requests, 16).render()
    );

    if !step(
        interrupt,
        "Starting backend-2 again: back in the ring after `rise` successful checks",
    ) {
        return false;
    }
    lab.start_server(1);
    let took = lbd.wait_backend_state(lab::backend_v4(1), true, std::time::Duration::from_secs(20));
    println!("  backend-2 marked up after {:.1} s", took.as_secs_f64());
    if !step(
        interrupt,
        &format!("{requests} requests with backend-2 back"),
    ) {
        return false;
    }
    print!(
        "{}",
        traffic::http_burst(&lab.client().ns, vip, requests, 16).render()
    );

    let lost = format!("{}/32", lab::VIP_V4);
    if !step(
        interrupt,
        &format!(
            "Removing {} from backend-3's loopback: its server still answers on {}, but the health checks go along \
             the VIP path (to the VIP, tunnelled to backend-3 by lb_hc), so they fail and take it out of the ring",
            lab::VIP_V4,
            lab::backend_v4(2)
        ),
    ) {
        return false;
    }
    lab.backends[2]
        .host
        .ns
        .ip(&["addr", "del", &lost, "dev", "lo"]);
    let took = lbd.wait_backend_state(
        lab::backend_v4(2),
        false,
        std::time::Duration::from_secs(20),
    );
    println!("  backend-3 marked down after {:.1} s", took.as_secs_f64());
    print!("{}", lbd.lbctl(&["health"]));
    print!(
        "{}",
        traffic::http_burst(&lab.client().ns, vip, requests / 2, 16).render()
    );
    lab.backends[2]
        .host
        .ns
        .ip(&["addr", "add", &lost, "dev", "lo"]);
    let took = lbd.wait_backend_state(lab::backend_v4(2), true, std::time::Duration::from_secs(20));
    println!(
        "  {} back on backend-3's loopback: marked up after {:.1} s",
        lab::VIP_V4,
        took.as_secs_f64()
    );

    if !step(
        interrupt,
        "Tearing down (lbctl shutdown --detach, namespaces deleted)",
    ) {
        return false;
    }
    lbd.shutdown_detach();
    drop(lab);
    println!("  done");
    true
}

/// None when a signal cut it short.
fn ecmp_demo(requests: usize, connections: usize, interrupt: &Interrupt) -> Option<ExitCode> {
    if !step(
        interrupt,
        "Building the ECMP lab: clients -> router (BIRD, ECMP) -> 3 balancers (BIRD + lbd + lb_xdp) -> backends",
    ) {
        return None;
    }
    let mut lab = EcmpLab::new(&EcmpOptions::default());
    println!(
        "  clients on the edge segment; router {} / {}; balancers {}; backends {} (replies go back via the router)",
        ecmp::ROUTER_EDGE_V4,
        ecmp::ROUTER_FABRIC_V4,
        (0..lab.balancers.len())
            .map(|k| ecmp::balancer_v4(k).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        (0..lab.backends.len())
            .map(|i| ecmp::backend_v4(i).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  every lbd announces the VIPs through its BIRD; the router merged the paths:");
    for family in ["-4", "-6"] {
        print!(
            "{}",
            indent(&lab.router.ip(&[family, "route", "show", "proto", "bird"]))
        );
    }
    if !step(interrupt, "lbctl announce on lb1") {
        return None;
    }
    print!("{}", lab.balancers[0].lbd.lbctl(&["announce"]));

    if !step(
        interrupt,
        &format!(
            "{requests} HTTP requests to {}, each on a new connection: the router spreads them over the balancers",
            ecmp::vip4()
        ),
    ) {
        return None;
    }
    let before: Vec<u64> = lab.all().iter().map(|&k| lab.vip_packets(k)).collect();
    let mut tally = traffic::Tally::default();
    for c in &lab.clients {
        tally.merge(traffic::http_burst(
            &c.ns,
            ecmp::vip4(),
            requests / lab.clients.len(),
            16,
        ));
    }
    print!("{}", tally.render());
    for (k, b) in lab.balancers.iter().enumerate() {
        println!(
            "  {}: {} VIP packets",
            b.name,
            lab.vip_packets(k) - before[k]
        );
    }

    if !step(
        interrupt,
        "Every balancer's Maglev tables: the digests agree, so a flow gets the same backend on each",
    ) {
        return None;
    }
    for (k, b) in lab.balancers.iter().enumerate() {
        let d: Vec<String> = lab
            .digests(k)
            .iter()
            .map(|(vip, d)| format!("{vip} {d}"))
            .collect();
        println!("  {}: {}", b.name, d.join("  "));
    }

    if !step(
        interrupt,
        &format!(
            "{connections} long-lived connections, one request each 100 ms, while balancers leave and return"
        ),
    ) {
        return None;
    }
    let report = churn::churn(
        &mut lab,
        &ChurnOptions {
            connections,
            ..Default::default()
        },
    );
    if !step(interrupt, "Convergence") {
        return None;
    }
    print!("{}", report.render());
    if !step(
        interrupt,
        "Tearing down (namespaces, lbd and BIRD processes)",
    ) {
        return None;
    }
    drop(lab);
    println!("  done");
    println!("{}", report.summary());
    Some(if report.broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
