//! `lbctl vip list|add|del`.

use lb_userspace::cli::lbctl::VipCmd;
use lb_userspace::control::api::{BackendSpec, VipSpec, parse_vip};
use lb_userspace::control::{Request, Response};
use lb_userspace::health::CheckSpec;

use crate::{Ctx, output, unexpected};

pub fn run(ctx: &Ctx, cmd: VipCmd) -> anyhow::Result<()> {
    match cmd {
        VipCmd::List => list(ctx),
        VipCmd::Add {
            vip,
            mode,
            ring_size,
            fragments,
            backends,
            health,
            min_healthy,
            panic_threshold,
        } => {
            let key = parse_vip(&vip).map_err(anyhow::Error::msg)?;
            let protocol = lb_userspace::config::Protocol::from_number(key.protocol)
                .map(|p| p.to_string())
                .unwrap_or_else(|| key.protocol.to_string());
            let spec = VipSpec {
                address: key.address,
                port: key.port,
                protocol,
                mode,
                ring_size,
                fragments,
                backends: backends
                    .iter()
                    .map(|b| parse_backend(b))
                    .collect::<anyhow::Result<_>>()?,
                health: health.map(|h| parse_health(&h)).transpose()?,
                min_healthy,
                panic_threshold,
            };
            ctx.change(&Request::VipAdd {
                vip: Box::new(spec),
            })
        }
        VipCmd::Del { vip } => {
            let vip = parse_vip(&vip).map_err(anyhow::Error::msg)?;
            ctx.change(&Request::VipDel { vip })
        }
    }
}

fn parse_backend(s: &str) -> anyhow::Result<BackendSpec> {
    let (addr, weight) = match s.split_once('=') {
        Some((a, w)) => (
            a,
            Some(
                w.parse()
                    .map_err(|_| anyhow::anyhow!("backend {s:?}: weight {w:?} is not a number"))?,
            ),
        ),
        None => (s, None),
    };
    Ok(BackendSpec {
        address: addr
            .parse()
            .map_err(|_| anyhow::anyhow!("backend {s:?}: {addr:?} is not an IP address"))?,
        weight,
    })
}

fn parse_health(s: &str) -> anyhow::Result<CheckSpec> {
    #[derive(serde::Deserialize)]
    struct Wrap {
        health: CheckSpec,
    }
    let w: Wrap = toml::from_str(&format!("health = {{ {s} }}"))
        .map_err(|e| anyhow::anyhow!("--health {s:?}: {e}"))?;
    Ok(w.health)
}

fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let vips = match ctx.call(&Request::VipList)? {
        Response::Vips(v) => v,
        other => return Err(unexpected(other)),
    };
    if ctx.json {
        return output::json(&vips);
    }
    let mut rows = Vec::new();
    for v in &vips {
        rows.push(vec![
            v.vip.to_string(),
            v.id.to_string(),
            v.mode.to_string(),
            v.ring_size.to_string(),
            v.fragments.to_string(),
            v.table_digest.clone(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        for b in &v.backends {
            rows.push(vec![
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                format!("{} (#{})", b.address, b.id),
                b.weight.to_string(),
                if b.up { "up" } else { "down" }.to_string(),
                b.ring_entries.to_string(),
            ]);
        }
    }
    output::table(
        &[
            "vip", "id", "mode", "ring", "frags", "table", "backend", "weight", "health", "entries",
        ],
        &rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_flag_parses_as_a_check_spec() {
        let h = parse_health(r#"kind = "http", path = "/healthz", rise = 1"#).unwrap();
        assert_eq!(h.kind, lb_userspace::health::CheckKind::Http);
        assert_eq!(
            (h.path.as_deref(), h.rise, h.fall),
            (Some("/healthz"), 1, 3)
        );
        assert!(
            parse_health("colour = 1").is_err(),
            "unknown fields rejected"
        );
        assert_eq!(parse_backend("198.18.1.1=5").unwrap().weight, Some(5));
        assert!(parse_backend("nope").is_err());
    }
}
