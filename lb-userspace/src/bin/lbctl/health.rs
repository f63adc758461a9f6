//! `lbctl health`.

use lb_userspace::control::{Request, Response};

use crate::{Ctx, output, unexpected};

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let rows = match ctx.call(&Request::Health)? {
        Response::Health(rows) => rows,
        other => return Err(unexpected(other)),
    };
    if ctx.json {
        return output::json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|h| {
            vec![
                h.key.vip.to_string(),
                h.key.backend.to_string(),
                format!("{:?}", h.kind).to_lowercase(),
                format!("{} ({})", h.target, h.path),
                match (h.up, h.pending) {
                    (true, false) => "up",
                    (false, false) => "down",
                    // Said by the checks, not yet in the rings.
                    (true, true) => "up (applying)",
                    (false, true) => "down (applying)",
                }
                .into(),
                match h.last_ok {
                    // Not run yet, or failed on lbd's host (then the reason says so).
                    None if h.last_reason.is_empty() => "-".into(),
                    None => h.last_reason.clone(),
                    Some(true) => "ok".into(),
                    Some(false) => h.last_reason.clone(),
                },
                h.last_latency_us
                    .map(|us| format!("{:.1}", us as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                h.consecutive_ok.to_string(),
                h.consecutive_fail.to_string(),
                format!("{}/{}", h.failures, h.checks),
                h.unknown.to_string(),
                h.transitions.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "vip", "backend", "check", "target", "state", "last", "ms", "ok_run", "fail_run",
            "failed", "unknown", "flips",
        ],
        &table,
    );
    Ok(())
}
