//! `lbctl backend add|del|drain|weight`.

use std::net::IpAddr;

use clap::Subcommand;
use lb_userspace::control::Request;
use lb_userspace::control::api::parse_vip;

use crate::Ctx;

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
    let r = ctx.call(&request)?;
    crate::vip::done(ctx, r)
}
