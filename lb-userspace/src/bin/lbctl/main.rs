//! `lbctl`: the operator's CLI for `lbd`, a thin client of the control socket. Human tables by default, `--json`
//! prints the typed responses. Exit codes: 0 ok, 1 the daemon (or the config) said no, 2 usage, 3 the daemon is not
//! reachable (not running, or permission denied).

mod announce;
mod backend;
mod config;
mod flows;
mod health;
mod lifecycle;
mod output;
mod simulate;
mod stats;
mod status;
mod vip;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lb_userspace::cli::lbctl::{Cli, Command};
use lb_userspace::control::{Client, ClientError, Request, Response};

/// What every subcommand needs: where the daemon is and how to print.
pub struct Ctx {
    pub socket: PathBuf,
    pub json: bool,
}

impl Ctx {
    /// Sends one request; a daemon-side error becomes `Err` (exit code 1).
    pub fn call(&self, request: &Request) -> anyhow::Result<Response> {
        let mut client = Client::connect(&self.socket)?;
        match client.call(request)? {
            Response::Error { message } => Err(DaemonSaidNo(message).into()),
            other => Ok(other),
        }
    }

    /// Sends a request answered with "ok, this changed" and prints the message.
    pub fn change(&self, request: &Request) -> anyhow::Result<()> {
        match self.call(request)? {
            Response::Ok { message } => output::done(self.json, &message),
            other => Err(unexpected(other)),
        }
    }
}

/// The daemon (or the config check) rejected the request.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DaemonSaidNo(pub String);

/// A response of the wrong kind: a version mismatch between lbctl and lbd.
pub fn unexpected(response: Response) -> anyhow::Error {
    anyhow::anyhow!("unexpected response from lbd (version mismatch?): {response:?}")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Ctx {
        socket: cli.socket,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Status => status::run(&ctx),
        Command::Vip(c) => vip::run(&ctx, c),
        Command::Backend(c) => backend::run(&ctx, c),
        Command::Health => health::run(&ctx),
        Command::Stats(a) => stats::run(&ctx, a),
        Command::Flows(a) => flows::run(&ctx, a),
        Command::Simulate(a) => simulate::run(&ctx, a),
        Command::Reload => lifecycle::reload(&ctx),
        Command::Config(c) => config::run(&ctx, c),
        Command::Shutdown(a) => lifecycle::shutdown(&ctx, a),
        Command::Announce(a) => announce::run(&ctx, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            if e.downcast_ref::<ClientError>().is_some_and(|c| {
                matches!(
                    c,
                    ClientError::NotRunning(_) | ClientError::PermissionDenied(_)
                )
            }) {
                ExitCode::from(3)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
