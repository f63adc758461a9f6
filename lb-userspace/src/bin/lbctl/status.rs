//! `lbctl status`: what the daemon runs, since when, and how its program is attached.

use lb_userspace::control::{Request, Response};

use crate::{Ctx, output, unexpected};

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let s = match ctx.call(&Request::Status)? {
        Response::Status(s) => s,
        other => return Err(unexpected(other)),
    };
    if ctx.json {
        return output::json(&s);
    }
    let rows = [
        ("version", s.version.clone()),
        ("pid", s.pid.to_string()),
        ("interface", s.interface.clone()),
        ("xdp mode", s.xdp_mode.clone()),
        (
            "attached",
            if s.attached {
                format!("yes (attached again {} times)", s.reattachments)
            } else {
                "no: the interface is gone; lb_xdp is attached again when it returns".to_owned()
            },
        ),
        ("config", s.config_path.clone()),
        ("uptime", format!("{}s", s.uptime_secs)),
        ("vips", s.vips.to_string()),
        ("backends", s.backends.to_string()),
        ("adopted pinned state", s.adopted.to_string()),
        (
            "reloads ok/failed",
            format!("{}/{}", s.reloads_ok, s.reloads_failed),
        ),
        ("announce", s.announce.summary()),
    ];
    for (k, v) in rows {
        println!("{k:<22}{v}");
    }
    Ok(())
}
