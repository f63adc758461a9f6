//! `lbd`: the balancer daemon (see `lb_userspace::daemon`) and the backend-side decapsulation attach (`lbd decap`).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use lb_userspace::cli::lbd::{Cli, Command};
use lb_userspace::config::Config;
use lb_userspace::{daemon, decap, rlimit, runtime};
use tracing::{error, info, warn};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: in the journal or a log file, escape codes would split `uid=0` (the audit
        // fields of control changes) from anything that searches for it.
        .with_ansi(std::io::stderr().is_terminal())
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
        return decap::attach(&decap::DecapSpec {
            iface: &iface,
            vips: &vips,
            locals: &locals,
            from: &from,
            pin_dir: &pin_dir,
            mode: xdp_mode,
        });
    }
    let config =
        Config::load(&cli.config).map_err(|e| anyhow::anyhow!("{}: {e}", cli.config.display()))?;
    if cli.check {
        println!("{}: ok ({} VIPs)", cli.config.display(), config.vips.len());
        return Ok(());
    }
    if cli.detach {
        return daemon::detach_all(
            &config.daemon.interface,
            &config.daemon.pin_dir,
            &config.announce,
        );
    }
    match rlimit::raise_nofile() {
        Ok((before, after)) if after > before => {
            info!("descriptor limit raised from {before} to {after} (the hard limit)")
        }
        Ok((_, now)) => info!("descriptor limit {now} (the hard limit)"),
        Err(e) => warn!("cannot raise the descriptor limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(runtime::run(cli.config, config))
}
