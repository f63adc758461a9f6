//! `lbctl`'s command line: one subcommand family per file of the binary (`src/bin/lbctl/`), defined here.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::control::api::{DEFAULT_FLOWS, MAX_FLOWS};

#[derive(Parser)]
#[command(
    name = "lbctl",
    version,
    about = "Control the lbd XDP load balancer",
    long_about = "Control the lbd XDP load balancer.\n\n\
        A thin client of lbd's control socket (--socket, default /run/lbd/lbd.sock, mode 0600: run it as root). \
        Human tables by default; --json prints the daemon's typed answers. Runtime edits (vip add, backend ...) \
        last until the next reload from the config file.\n\n\
        Exit status: 0 ok, 1 refused by the daemon or an invalid config, 2 usage, 3 the daemon is not reachable. \
        See lbd(8)."
)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, default_value = DEFAULT_CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Daemon status: interface, XDP mode, uptime, counts.
    Status,
    /// List, add or delete VIPs.
    #[command(subcommand)]
    Vip(VipCmd),
    /// Add, delete, drain or reweight a VIP's backends.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Health-check table: state, last result, latency, consecutive counts.
    Health,
    /// Per-VIP and per-backend counters with rates (sampled twice over --interval).
    Stats(StatsArgs),
    /// Entries of the live flow table.
    Flows(FlowsArgs),
    /// Which backend a flow would reach, from the live maps.
    Simulate(SimulateArgs),
    /// Re-read the daemon's config file and apply the difference.
    Reload,
    /// Config file tools.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Stop lbd (the XDP program keeps forwarding unless --detach).
    Shutdown(ShutdownArgs),
    /// What this balancer announces over BGP and why not; drain or undrain it.
    Announce(AnnounceArgs),
}

#[derive(Subcommand)]
pub enum VipCmd {
    /// VIPs with their backends, weights, health and ring shares.
    List,
    /// Add a VIP (validated like a `[[vip]]` config entry).
    Add {
        /// ADDR:PORT/PROTO, e.g. 198.18.0.10:80/tcp or [fd00::10]:53/udp (port 0 = every port).
        vip: String,
        /// Forwarding mode: ipip (default) or l2dsr.
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        ring_size: Option<u32>,
        /// Fragment policy: drop (default) or hash3.
        #[arg(long)]
        fragments: Option<String>,
        /// A backend as ADDR or ADDR=WEIGHT; repeat for more.
        #[arg(long = "backend")]
        backends: Vec<String>,
        /// Health check as TOML inline-table fields, e.g. 'kind = "http", path = "/healthz"'.
        #[arg(long)]
        health: Option<String>,
        /// With announcing on: serving backends the VIP needs to keep its address announced (default 1).
        #[arg(long)]
        min_healthy: Option<u32>,
        /// Percent of the weight that must be healthy; below it every backend stays in the ring (default 25, 0 =
        /// never).
        #[arg(long)]
        panic_threshold: Option<u32>,
    },
    /// Delete a VIP (its flows stop being balanced at once).
    Del { vip: String },
}

#[derive(Subcommand)]
pub enum BackendCmd {
    /// Add a backend to a VIP.
    Add {
        /// ADDR:PORT/PROTO of the VIP.
        vip: String,
        backend: IpAddr,
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Remove a backend (its flows move to other backends).
    Del { vip: String, backend: IpAddr },
    /// Weight 0: no new flows, existing flows stay.
    Drain { vip: String, backend: IpAddr },
    /// Change a backend's weight (0 drains).
    Weight {
        vip: String,
        backend: IpAddr,
        weight: u32,
    },
}

#[derive(Args)]
pub struct StatsArgs {
    /// Seconds between the two samples (0: totals only, no rates).
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
}

#[derive(Args)]
pub struct FlowsArgs {
    /// At most this many entries, 1..=100000 (the table can hold millions; lbd streams them as it reads).
    #[arg(long, default_value_t = DEFAULT_FLOWS, value_parser = flows_limit)]
    pub limit: usize,
}

fn flows_limit(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_FLOWS).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} must be a number 1..={MAX_FLOWS}")),
    }
}

#[derive(Args)]
pub struct SimulateArgs {
    /// tcp or udp
    pub proto: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Validate a config file; every problem is reported with its field path.
    Check {
        file: PathBuf,
        /// Ask the running daemon instead of checking locally.
        #[arg(long)]
        remote: bool,
    },
}

#[derive(Args)]
pub struct ShutdownArgs {
    /// Also detach the XDP program (otherwise it keeps forwarding with the pinned maps).
    #[arg(long)]
    pub detach: bool,
}

#[derive(Args)]
pub struct AnnounceArgs {
    /// Without one: each VIP address, whether it is announced and why (not).
    #[command(subcommand)]
    pub command: Option<AnnounceCmd>,
}

#[derive(Subcommand)]
pub enum AnnounceCmd {
    /// Withdraw every address of this balancer for maintenance: the routers move its flows to the other balancers
    /// (which pick the same backends), while it keeps forwarding what still arrives. Survives an lbd restart.
    Drain,
    /// Let health decide again: each address that deserves it is announced after the hold-down.
    Undrain,
}
