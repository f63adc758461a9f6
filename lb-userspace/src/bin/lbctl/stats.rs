//! `lbctl stats`: cumulative counters sampled twice, `--interval` apart, to print packet and bit rates.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lb_userspace::cli::lbctl::StatsArgs;
use lb_userspace::control::api::Stats;
use lb_userspace::control::{Request, Response};
use serde::Serialize;

use crate::{Ctx, output, unexpected};

#[derive(Serialize)]
struct Rate {
    name: String,
    packets: u64,
    bytes: u64,
    pps: f64,
    bps: f64,
}

#[derive(Serialize)]
struct Report {
    interval_secs: f64,
    stats: Stats,
    vip_rates: Vec<Rate>,
    backend_rates: Vec<Rate>,
    counter_rates: Vec<(String, f64)>,
}

fn sample(ctx: &Ctx) -> anyhow::Result<Stats> {
    match ctx.call(&Request::Stats)? {
        Response::Stats(s) => Ok(s),
        other => Err(unexpected(other)),
    }
}

pub fn run(ctx: &Ctx, a: StatsArgs) -> anyhow::Result<()> {
    if !(0.0..=3600.0).contains(&a.interval) {
        anyhow::bail!("--interval {} must be 0..=3600 seconds", a.interval);
    }
    let first = sample(ctx)?;
    let t0 = Instant::now();
    let second = if a.interval > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(a.interval));
        sample(ctx)?
    } else {
        first.clone()
    };
    let secs = t0.elapsed().as_secs_f64();
    let report = rates(&first, second, if a.interval > 0.0 { secs } else { 0.0 });
    if ctx.json {
        return output::json(&report);
    }
    let rows = |rates: &[Rate]| -> Vec<Vec<String>> {
        rates
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.packets.to_string(),
                    r.bytes.to_string(),
                    output::si(r.pps),
                    output::si(r.bps),
                ]
            })
            .collect()
    };
    output::table(
        &["vip", "packets", "bytes", "pps", "bps"],
        &rows(&report.vip_rates),
    );
    println!();
    output::table(
        &["backend", "packets", "bytes", "pps", "bps"],
        &rows(&report.backend_rates),
    );
    println!();
    let counters: Vec<Vec<String>> = report
        .stats
        .counters
        .iter()
        .zip(&report.counter_rates)
        .map(|((name, v), (_, rate))| vec![name.clone(), v.to_string(), output::si(*rate)])
        .collect();
    output::table(&["counter", "total", "per_sec"], &counters);
    Ok(())
}

fn rates(first: &Stats, second: Stats, secs: f64) -> Report {
    let per_sec = |new: u64, old: u64| {
        if secs > 0.0 {
            new.saturating_sub(old) as f64 / secs
        } else {
            0.0
        }
    };
    let old_vips: HashMap<_, _> = first.vips.iter().map(|v| (v.vip, v)).collect();
    let vip_rates = second
        .vips
        .iter()
        .map(|v| {
            let (op, ob) = old_vips
                .get(&v.vip)
                .map_or((v.packets, v.bytes), |o| (o.packets, o.bytes));
            Rate {
                name: v.vip.to_string(),
                packets: v.packets,
                bytes: v.bytes,
                pps: per_sec(v.packets, op),
                bps: per_sec(v.bytes, ob) * 8.0,
            }
        })
        .collect();
    let old_be: HashMap<_, _> = first
        .backends
        .iter()
        .map(|b| ((b.vip, b.backend), b))
        .collect();
    let backend_rates = second
        .backends
        .iter()
        .map(|b| {
            let (op, ob) = old_be
                .get(&(b.vip, b.backend))
                .map_or((b.packets, b.bytes), |o| (o.packets, o.bytes));
            Rate {
                name: format!("{} {}", b.vip, b.backend),
                packets: b.packets,
                bytes: b.bytes,
                pps: per_sec(b.packets, op),
                bps: per_sec(b.bytes, ob) * 8.0,
            }
        })
        .collect();
    let counter_rates = second
        .counters
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                per_sec(*v, first.counters.get(k).copied().unwrap_or(*v)),
            )
        })
        .collect();
    Report {
        interval_secs: secs,
        stats: second,
        vip_rates,
        backend_rates,
        counter_rates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_userspace::control::api::{VipStats, parse_vip};

    #[test]
    fn rates_are_deltas_over_the_interval() {
        let vip = parse_vip("198.18.0.10:80/tcp").unwrap();
        let s = |packets, bytes| Stats {
            counters: [("tx".to_string(), packets)].into(),
            vips: vec![VipStats {
                vip,
                packets,
                bytes,
                new_flows: 0,
                flow_misses: 0,
            }],
            backends: vec![],
        };
        let r = rates(&s(100, 10_000), s(300, 30_000), 2.0);
        assert_eq!(r.vip_rates[0].pps, 100.0);
        assert_eq!(r.vip_rates[0].bps, 80_000.0);
        assert_eq!(r.counter_rates[0].1, 100.0);
    }
}
