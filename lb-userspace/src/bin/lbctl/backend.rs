//! `lbctl backend add|del|drain|weight`.

use lb_userspace::cli::lbctl::BackendCmd;
use lb_userspace::control::Request;
use lb_userspace::control::api::parse_vip;

use crate::Ctx;

pub fn run(ctx: &Ctx, cmd: BackendCmd) -> anyhow::Result<()> {
    let vip = |s: &str| parse_vip(s).map_err(anyhow::Error::msg);
    let request = match cmd {
        BackendCmd::Add {
            vip: v,
            backend,
            weight,
        } => Request::BackendAdd {
            vip: vip(&v)?,
            backend,
            weight,
        },
        BackendCmd::Del { vip: v, backend } => Request::BackendDel {
            vip: vip(&v)?,
            backend,
        },
        BackendCmd::Drain { vip: v, backend } => Request::BackendDrain {
            vip: vip(&v)?,
            backend,
        },
        BackendCmd::Weight {
            vip: v,
            backend,
            weight,
        } => Request::BackendWeight {
            vip: vip(&v)?,
            backend,
            weight,
        },
    };
    ctx.change(&request)
}
