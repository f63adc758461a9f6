//! `lbctl simulate`: which backend a client's packet would reach, answered from the live maps with the program's own
//! rules from `lb_common::lookup` (docs/dataplane.md, steps 5 and 7): the service lookup, a usable flow-table entry
//! for a packet that is not a new connection, else the VIP's active ring indexed by `lb_common::hash::flow_hash`.

use std::collections::HashMap;

use anyhow::Result;
use lb_common::hash::flow_hash;
use lb_common::lookup::{flow_entry_usable, ring_index, service};
use lb_common::{BACKEND_ID_NONE, FlowKey, VIP_F_FRAG_HASH3, VipKey, VipMeta, addr_words};

use crate::control::api::{FiveTuple, SimulateResult};
use crate::dataplane::Dataplane;
use crate::service::VipAddr;

/// The backend a non-SYN packet of `flow` would reach now (a TCP SYN skips the flow table; that case is the ring
/// answer, given in `note` when the flow table answered).
pub fn simulate(dp: &mut Dataplane, flow: FiveTuple) -> Result<SimulateResult> {
    let mut res = SimulateResult {
        flow,
        vip: None,
        backend: None,
        backend_id: None,
        hash: None,
        ring_index: None,
        from_flow_table: false,
        note: String::new(),
    };
    if flow.src.is_ipv4() != flow.dst.is_ipv4() {
        res.note = "source and destination are of different address families".into();
        return Ok(res);
    }
    let Some((key, meta)) = lookup_vip(dp, &flow)? else {
        let (addr, family) = addr_words(flow.dst.ip());
        let vip_address = dp
            .vips()?
            .iter()
            .any(|(k, _)| k.addr == addr && k.family == family);
        res.note = if vip_address {
            "a VIP address, but no service for this port and protocol: dropped (drop_not_served)"
                .into()
        } else {
            "not a VIP: passed to the kernel".into()
        };
        return Ok(res);
    };
    res.vip = key.ip().map(|address| VipAddr {
        address,
        port: key.port(),
        protocol: key.proto,
    });
    let fkey = FlowKey::new(
        flow.src.ip(),
        flow.src.port(),
        flow.dst.ip(),
        flow.dst.port(),
        flow.protocol,
    );
    let hash3 = meta.flags & VIP_F_FRAG_HASH3 != 0;
    let hkey = if hash3 { fkey.three_tuple() } else { fkey };

    if !hash3 && let Some(state) = dp.flow(&fkey)? {
        let b = dp.backend(state.backend_id)?;
        if flow_entry_usable(&b, &meta) {
            res.from_flow_table = true;
            res.backend_id = Some(state.backend_id);
            res.backend = b.ip();
            res.note = "flow table (a new TCP SYN would take the ring instead)".into();
            return Ok(res);
        }
    }

    let hash = flow_hash(&hkey);
    res.hash = Some(hash);
    let stride = dp.sizes().max_ring_size;
    let Some(idx) = ring_index(hash, meta.ring_slot, meta.ring_size, stride) else {
        res.note = "the VIP's ring size is unusable: dropped".into();
        return Ok(res);
    };
    let ring = dp.read_ring(&meta)?;
    let offset = (idx - meta.ring_slot * stride) as usize;
    res.ring_index = Some(offset as u32);
    let id = ring.get(offset).copied().unwrap_or(BACKEND_ID_NONE);
    if id == BACKEND_ID_NONE {
        res.note = "no backend in the ring (none up): dropped".into();
        return Ok(res);
    }
    res.backend_id = Some(id);
    res.backend = dp.backend(id)?.ip();
    res.note = if hash3 {
        "ring, 3-tuple hash (stateless VIP)".into()
    } else {
        "ring".into()
    };
    Ok(res)
}

fn lookup_vip(dp: &Dataplane, flow: &FiveTuple) -> Result<Option<(VipKey, VipMeta)>> {
    let vips: HashMap<VipKey, VipMeta> = dp.vips()?.into_iter().collect();
    let (addr, family) = addr_words(flow.dst.ip());
    let mut found = None;
    let meta = service(&addr, flow.dst.port().to_be(), flow.protocol, family, |k| {
        let m = vips.get(k).copied();
        if m.is_some() {
            found = Some(*k);
        }
        m
    });
    Ok(meta.and_then(|m| found.map(|k| (k, m))))
}
