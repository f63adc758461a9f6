//! `lbctl config check FILE`: validates locally with the daemon's own config code (no daemon needed), or with
//! `--remote` asks the running daemon (useful when lbctl and lbd versions may differ).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use lb_userspace::config::Config;
use lb_userspace::control::Request;

use crate::{Ctx, DaemonSaidNo, output};

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

pub fn run(ctx: &Ctx, cmd: ConfigCmd) -> anyhow::Result<()> {
    let ConfigCmd::Check { file, remote } = cmd;
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    if remote {
        let r = ctx.call(&Request::ConfigCheck { toml: text })?;
        return crate::vip::done(ctx, r);
    }
    match Config::parse(&text) {
        Ok(c) => output::done(
            ctx.json,
            &format!("{}: ok ({} VIPs)", file.display(), c.vips.len()),
        ),
        Err(e) => {
            if ctx.json {
                output::json(&serde_json::json!({ "ok": false, "errors": e.0 }))?;
            }
            Err(DaemonSaidNo(format!("{}: {e}", file.display())).into())
        }
    }
}
