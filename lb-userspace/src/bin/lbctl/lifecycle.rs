//! `lbctl reload` and `lbctl shutdown`: the daemon's lifecycle.

use lb_userspace::cli::lbctl::ShutdownArgs;
use lb_userspace::control::Request;

use crate::Ctx;

pub fn reload(ctx: &Ctx) -> anyhow::Result<()> {
    ctx.change(&Request::Reload)
}

pub fn shutdown(ctx: &Ctx, a: ShutdownArgs) -> anyhow::Result<()> {
    ctx.change(&Request::Shutdown { detach: a.detach })
}
