//! `lbctl announce [drain|undrain]`: what this balancer announces over BGP, and maintenance.

use lb_userspace::cli::lbctl::{AnnounceArgs, AnnounceCmd};
use lb_userspace::control::{Request, Response};

use crate::{Ctx, output, unexpected};

pub fn run(ctx: &Ctx, a: AnnounceArgs) -> anyhow::Result<()> {
    match a.command {
        Some(AnnounceCmd::Drain) => ctx.change(&Request::AnnounceDrain { drain: true }),
        Some(AnnounceCmd::Undrain) => ctx.change(&Request::AnnounceDrain { drain: false }),
        None => show(ctx),
    }
}

fn show(ctx: &Ctx) -> anyhow::Result<()> {
    let info = match ctx.call(&Request::Announce)? {
        Response::Announce(i) => i,
        other => return Err(unexpected(other)),
    };
    if ctx.json {
        return output::json(&info);
    }
    if !info.enabled {
        println!(
            "announcing is off ([announce] enabled = false): this balancer announces nothing itself"
        );
        return Ok(());
    }
    println!(
        "routes in kernel table {} with protocol {}; hold-down {} ms{}",
        info.table,
        info.protocol,
        info.hold_down_ms,
        if info.drained {
            "; DRAINED (lbctl announce undrain)"
        } else {
            ""
        }
    );
    if let Some(e) = &info.error {
        println!("ERROR: {e}");
    }
    let rows: Vec<Vec<String>> = info
        .addresses
        .iter()
        .map(|a| {
            vec![
                a.address.to_string(),
                a.state.to_string(),
                a.changes.to_string(),
                a.reason(),
            ]
        })
        .collect();
    output::table(&["address", "state", "changes", "why"], &rows);
    Ok(())
}
