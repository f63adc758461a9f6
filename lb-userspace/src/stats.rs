//! What `lbctl stats`, `lbctl vip list` and the metrics read: the daemon's view joined with the dataplane's
//! counters, in the control API's terms.

use std::collections::BTreeMap;

use anyhow::Result;
use lb_common::Counter;

use crate::control::api::{self, BackendInfo, VipInfo};
use crate::daemon::Daemon;

/// Verdict counters and every VIP's and backend's traffic, summed over CPUs.
pub fn stats(d: &mut Daemon) -> Result<api::Stats> {
    let counters: BTreeMap<String, u64> = d
        .dataplane()
        .counters()?
        .into_iter()
        .map(|(c, v): (Counter, u64)| (c.name().to_string(), v))
        .collect();
    let mut vips = Vec::new();
    let mut backends = Vec::new();
    let state = d.state().clone();
    for (k, v) in &state.vips {
        let s = d.dataplane().vip_stats(v.id)?;
        vips.push(api::VipStats {
            vip: *k,
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            flow_misses: s.lru_misses,
        });
        for (addr, b) in &v.backends {
            let s = d.dataplane().backend_stats(b.id)?;
            backends.push(api::BackendStats {
                vip: *k,
                backend: *addr,
                packets: s.packets,
                bytes: s.bytes,
            });
        }
    }
    Ok(api::Stats {
        counters,
        vips,
        backends,
    })
}

/// Every VIP with its backends: weight, health, how many entries of the live ring each holds, and the ring's digest.
pub fn vip_list(d: &Daemon) -> Result<Vec<VipInfo>> {
    let mut out = Vec::new();
    for (k, v) in &d.state().vips {
        let ring = d.live_ring(k)?;
        let backends = v
            .backends
            .iter()
            .map(|(addr, b)| BackendInfo {
                address: *addr,
                id: b.id,
                weight: b.weight,
                up: d.is_up(k, *addr),
                ring_entries: ring.iter().filter(|&&id| id == b.id).count() as u32,
            })
            .collect();
        out.push(VipInfo {
            vip: *k,
            id: v.id,
            mode: v.config.mode,
            ring_size: v.ring_size,
            fragments: v.config.fragments,
            min_healthy: v.config.min_healthy,
            table_digest: crate::digest::table_digest(&ring, &v.backends),
            backends,
            panic: d.panicking().contains(k),
        });
    }
    Ok(out)
}
