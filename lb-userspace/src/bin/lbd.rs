//! `lbd`: the balancer daemon (see `lb_userspace::daemon`) and the backend-side decapsulation attach (`lbd decap`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lb_userspace::config::{Config, XdpMode};
use lb_userspace::{daemon, decap, runtime};
use tracing::error;

#[derive(Parser)]
#[command(version, about = "XDP L4 load balancer daemon")]
struct Cli {
    /// The TOML config.
    #[arg(long, short, default_value = "/etc/lbd/lbd.toml")]
    config: PathBuf,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
    /// Remove the program, its pinned link and the pinned maps of the config's interface and pin_dir, then exit.
    #[arg(long)]
    detach: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
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
        xdp_mode: Mode,
        /// Remove lb_decap from the interface instead.
        #[arg(long)]
        detach: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Native,
    Generic,
    Auto,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("lbd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(Command::Decap {
        iface,
        vips,
        locals,
        from,
        pin_dir,
        xdp_mode,
        detach,
    }) = cli.command
    {
        if detach {
            return decap::detach(&iface, &pin_dir);
        }
        let mode = match xdp_mode {
            Mode::Native => XdpMode::Native,
            Mode::Generic => XdpMode::Generic,
            Mode::Auto => XdpMode::Auto,
        };
        return decap::attach(&decap::DecapSpec {
            iface: &iface,
            vips: &vips,
            locals: &locals,
            from: &from,
            pin_dir: &pin_dir,
            mode,
        });
    }
    let config =
        Config::load(&cli.config).map_err(|e| anyhow::anyhow!("{}: {e}", cli.config.display()))?;
    if cli.check {
        println!("{}: ok ({} VIPs)", cli.config.display(), config.vips.len());
        return Ok(());
    }
    if cli.detach {
        return daemon::detach_all(&config.daemon.interface, &config.daemon.pin_dir);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(runtime::run(cli.config, config))
}
