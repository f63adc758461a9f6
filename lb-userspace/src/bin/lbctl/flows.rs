//! `lbctl flows`.

use lb_userspace::cli::lbctl::FlowsArgs;
use lb_userspace::control::{Request, Response};

use crate::{Ctx, output, unexpected};

pub fn run(ctx: &Ctx, args: FlowsArgs) -> anyhow::Result<()> {
    let flows = match ctx.call(&Request::Flows { limit: args.limit })? {
        Response::Flows(f) => f,
        other => return Err(unexpected(other)),
    };
    if ctx.json {
        return output::json(&flows);
    }
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            vec![
                crate::simulate::proto_name(f.flow.protocol),
                f.flow.src.to_string(),
                f.flow.dst.to_string(),
                f.backend
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "?".into()),
                f.backend_id.to_string(),
            ]
        })
        .collect();
    output::table(&["proto", "source", "destination", "backend", "id"], &rows);
    Ok(())
}
