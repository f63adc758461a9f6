//! `lbctl config check FILE`: validates locally with the daemon's own config code (no daemon needed), or with
//! `--remote` asks the running daemon (useful when lbctl and lbd versions may differ). With `--json`, a local check
//! prints the effective configuration too, every default filled in (as `nginx -T` shows what will run).

use anyhow::Context;
use lb_userspace::cli::lbctl::ConfigCmd;
use lb_userspace::config::Config;
use lb_userspace::control::Request;

use crate::{Ctx, DaemonSaidNo, output};

pub fn run(ctx: &Ctx, cmd: ConfigCmd) -> anyhow::Result<()> {
    let ConfigCmd::Check { file, remote } = cmd;
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    if remote {
        return ctx.change(&Request::ConfigCheck { toml: text });
    }
    match Config::parse(&text) {
        Ok(c) if ctx.json => output::json(&serde_json::json!({ "ok": true, "effective": c })),
        Ok(c) => output::done(
            false,
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
