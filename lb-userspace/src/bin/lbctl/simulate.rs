//! `lbctl simulate <proto> <src> <sport> <dst> <dport>`.

use std::net::SocketAddr;

use lb_userspace::cli::lbctl::SimulateArgs;
use lb_userspace::control::api::{FiveTuple, parse_proto};
use lb_userspace::control::{Request, Response};

use crate::{Ctx, output, unexpected};

pub fn proto_name(p: u8) -> String {
    lb_userspace::config::Protocol::from_number(p)
        .map(|p| p.to_string())
        .unwrap_or_else(|| p.to_string())
}

pub fn run(ctx: &Ctx, a: SimulateArgs) -> anyhow::Result<()> {
    let flow = FiveTuple {
        protocol: parse_proto(&a.proto).map_err(anyhow::Error::msg)?,
        src: SocketAddr::new(a.src, a.sport),
        dst: SocketAddr::new(a.dst, a.dport),
    };
    let r = match ctx.call(&Request::Simulate { flow })? {
        Response::Simulate(r) => r,
        other => return Err(unexpected(other)),
    };
    if ctx.json {
        return output::json(&r);
    }
    let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    output::table(
        &["vip", "backend", "id", "hash", "index", "source"],
        &[vec![
            show(r.vip.map(|v| v.to_string())),
            show(r.backend.map(|b| b.to_string())),
            show(r.backend_id.map(|b| b.to_string())),
            show(r.hash.map(|h| format!("{h:#010x}"))),
            show(r.ring_index.map(|i| i.to_string())),
            r.note.clone(),
        ]],
    );
    Ok(())
}
