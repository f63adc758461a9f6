//! `lbd`'s command line.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::XdpMode;
use crate::decap;

#[derive(Parser)]
#[command(
    name = "lbd",
    version,
    about = "XDP L4 load balancer daemon",
    long_about = "XDP L4 load balancer daemon.\n\n\
        lbd validates the whole config before it touches anything, loads lb_xdp and attaches it to daemon.interface, \
        pins the program link and the maps under daemon.pin_dir, installs each VIP's Maglev ring, health-checks the \
        backends, answers lbctl on daemon.control_socket and serves Prometheus metrics on daemon.metrics_addr. \
        With [announce] on, it keeps each VIP address that deserves announcing as a route in its kernel table, which \
        the host's BGP speaker (BIRD) learns and announces.\n\n\
        SIGHUP (systemctl reload lbd) re-reads the config and applies only what changed; an invalid file is \
        reported and the running state kept. SIGTERM, a crash or an upgrade leave lb_xdp forwarding on the pinned \
        state (and the announcements), which the next lbd adopts; --detach removes it and withdraws them.\n\n\
        Files: /etc/lbd/lbd.toml (the config), /run/lbd/lbd.sock (lbctl's socket), /sys/fs/bpf/lb (the pins). \
        See lbctl(8)."
)]
pub struct Cli {
    /// The TOML config.
    #[arg(long, short, default_value = "/etc/lbd/lbd.toml")]
    pub config: PathBuf,
    /// Validate the config and exit.
    #[arg(long)]
    pub check: bool,
    /// Withdraw the BGP announcements (with [announce] on), remove the program, its pinned link and the pinned maps
    /// of the config's interface and pin_dir, then exit.
    #[arg(long)]
    pub detach: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Attach lb_decap on a backend: IP-in-IP packets for the VIPs are decapsulated before the stack sees them.
    /// The program stays attached (pinned) after this command exits.
    Decap {
        #[arg(long)]
        iface: String,
        /// VIP addresses this backend serves.
        #[arg(long = "vip", required_unless_present = "detach", num_args = 1..)]
        vips: Vec<IpAddr>,
        /// This host's tunnel endpoint addresses (default: the interface's addresses).
        #[arg(long = "local", num_args = 1..)]
        locals: Vec<IpAddr>,
        /// The balancers' encapsulation sources (their `encap_src_v4`/`encap_src_v6`): tunnel packets from any
        /// other source are dropped, so nobody else can inject VIP traffic with a forged inner source.
        #[arg(long = "from", required_unless_present = "detach", num_args = 1..)]
        from: Vec<IpAddr>,
        #[arg(long, default_value = decap::DEFAULT_DECAP_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpMode,
        /// Remove lb_decap from the interface instead.
        #[arg(long)]
        detach: bool,
    },
}
