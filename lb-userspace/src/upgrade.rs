//! Reading the state of pinned maps, in this build's layout or an older one it knows, so that a daemon can adopt it
//! (ids, health, drains) or carry it into new maps (an upgrade: the same ids, the established flows, the counters
//! where their layout allows).
//!
//! Layouts this build reads: 1, the maps pinned directly in the pin directory by builds before the layout stamp
//! (a backend entry without its owner, a flow entry with a VIP id beside the backend); 2 (a flow entry holding only
//! its backend, without the flow's hash); and [`LAYOUT_VERSION`] itself. A flow carried over from an older layout
//! gets the hash the program would have computed for it, so its IPv6 flow label does not change.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use lb_common::{
    AddrWords, BACKEND_F_ACTIVE, BACKEND_F_DRAINED, BACKEND_F_UNHEALTHY, Backend, BackendId,
    BackendStats, FlowKey, FlowState, LAYOUT_VERSION, VIP_F_FRAG_ONLY, VipKey, VipMeta, VipStats,
    maps, words_addr,
};
use tracing::{info, warn};

use crate::dataplane::Dataplane;
use crate::service::VipAddr;

/// The layouts this build can read.
pub const KNOWN_LAYOUTS: &[u32] = &[1, 2, LAYOUT_VERSION];

/// Layout 1's entries that differ from today's.
mod v1 {
    use lb_common::AddrWords;

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Backend {
        pub addr: AddrWords,
        pub family: u8,
        pub flags: u8,
        pub _pad: [u8; 2],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct FlowState {
        pub backend_id: u32,
        pub vip_id: u32,
    }

    // SAFETY: repr(C), Copy, explicit padding, no bool/enum/pointer fields (layout 1's definitions).
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowState {}
}

/// Layout 2's entries that differ from today's (its backend entries are today's).
mod v2 {
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct FlowState {
        pub backend_id: u32,
    }

    // SAFETY: repr(C), Copy, one u32 (layout 2's definition).
    unsafe impl aya::Pod for FlowState {}
}

/// Whether the counters and stats of maps of `layout` mean what this build's do (same indices, same values).
pub fn stats_carry_over(layout: u32) -> bool {
    layout >= 2
}

/// A backend as pinned maps describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldBackend {
    pub addr: IpAddr,
    /// The service it belongs to (unknown in layout 1).
    pub owner: Option<u32>,
    pub active: bool,
    pub drained: bool,
}

/// What a set of pinned maps says about the balancer.
#[derive(Debug, Default)]
pub struct OldState {
    pub layout: u32,
    /// Services (fragment-only entries left out) with their live meta.
    pub vips: Vec<(VipAddr, VipMeta)>,
    /// Each service's active ring, by VIP id.
    pub rings: BTreeMap<u32, Vec<BackendId>>,
    pub backends: BTreeMap<BackendId, OldBackend>,
}

impl OldState {
    /// Reads the maps of `layout` pinned in `dir`.
    pub fn read(dir: &Path, layout: u32) -> Result<OldState> {
        let vips: Vec<(VipKey, VipMeta)> = hash(dir, maps::VIPS)?
            .iter()
            .collect::<Result<_, _>>()
            .context("reading the pinned LB_VIPS")?;
        let max_vips = map_info(dir, maps::VIPS)?.max_entries();
        let ring_entries = map_info(dir, maps::RING)?.max_entries();
        // LB_RING holds two slots of max_ring_size entries per VIP.
        let stride = ring_entries / (2 * max_vips.max(1));
        let ring: Array<MapData, BackendId> =
            Array::try_from(Map::Array(open(dir, maps::RING)?)).context("LB_RING")?;
        let mut state = OldState {
            layout,
            ..Default::default()
        };
        for (key, meta) in vips {
            if meta.flags & VIP_F_FRAG_ONLY != 0 {
                continue;
            }
            let Some(va) = VipAddr::of_key(&key) else {
                continue;
            };
            let base = meta.ring_slot as u64 * stride as u64;
            let members: Vec<BackendId> = (0..meta.ring_size.min(stride))
                .map(|i| ring.get(&((base + i as u64) as u32), 0))
                .collect::<Result<_, _>>()
                .with_context(|| format!("reading the pinned ring of {va}"))?;
            state.rings.insert(meta.vip_id, members);
            state.vips.push((va, meta));
        }
        state.backends = backends(dir, layout)?;
        Ok(state)
    }

    /// The VIP a VIP id named.
    pub fn vip(&self, id: u32) -> Option<VipAddr> {
        self.vips
            .iter()
            .find(|(_, m)| m.vip_id == id)
            .map(|(va, _)| *va)
    }

    /// Every backend id with the (VIP, address) pair it stood for: from the entry's owner, or (layout 1, where
    /// entries name no owner) from the rings that hold it.
    pub fn backend_keys(&self) -> Vec<((VipAddr, IpAddr), BackendId)> {
        let mut out = Vec::new();
        for (&id, b) in &self.backends {
            match b.owner {
                Some(owner) => {
                    if let Some(va) = self.vip(owner) {
                        out.push(((va, b.addr), id));
                    }
                }
                None => {
                    for (vip_id, ring) in &self.rings {
                        if ring.contains(&id)
                            && let Some(va) = self.vip(*vip_id)
                        {
                            out.push(((va, b.addr), id));
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// How [`copy_flows`] treats a flow the new table already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowCopy {
    /// Before the program swap: the new table is lbd's alone, every flow is written.
    All,
    /// After the swap: the old program may have made flows after the first copy, and the new one may have chosen
    /// for some flows since; only flows the new table does not have are written.
    Missing,
}

/// Copies the flows of the maps of `layout` in `dir` into `dp`, keeping their backend ids (the caller seeded the
/// same ids); flows of a backend id `keep` refuses are left behind (they re-pick from the ring). Returns how many
/// were written.
pub fn copy_flows(
    dir: &Path,
    layout: u32,
    dp: &mut Dataplane,
    how: FlowCopy,
    keep: impl Fn(BackendId) -> bool,
) -> Result<usize> {
    let capacity = dp.sizes().flow_table_size as usize;
    let flows: Vec<(FlowKey, BackendId)> = match layout {
        1 => read_flows::<v1::FlowState>(dir)?
            .map(|(k, s)| (k, s.backend_id))
            .collect(),
        2 => read_flows::<v2::FlowState>(dir)?
            .map(|(k, s)| (k, s.backend_id))
            .collect(),
        _ => read_flows::<FlowState>(dir)?
            .map(|(k, s)| (k, s.backend_id))
            .collect(),
    };
    if how == FlowCopy::All && flows.len() > capacity {
        warn!(
            flows = flows.len(),
            capacity,
            "the new flow table is smaller than the flows to carry over; the oldest are evicted"
        );
    }
    let mut copied = 0;
    for (key, backend_id) in flows {
        if !keep(backend_id) {
            continue;
        }
        // What the program writes: the same hash, so the flow keeps its IPv6 flow label.
        let state = FlowState::new(&key, backend_id);
        let written = match how {
            FlowCopy::All => dp.insert_flow(&key, &state).map(|()| true)?,
            FlowCopy::Missing => dp.insert_flow_if_absent(&key, &state)?,
        };
        copied += usize::from(written);
    }
    Ok(copied)
}

/// Copies the verdict counters and the per-VIP and per-backend stats of the maps in `dir` (this build's layout:
/// the indices mean the same) into `dp`, so metrics do not restart at zero across an upgrade.
pub fn copy_stats(dir: &Path, dp: &mut Dataplane) -> Result<()> {
    copy_percpu::<u64>(dir, maps::COUNTERS, dp)?;
    copy_percpu::<VipStats>(dir, maps::VIP_STATS, dp)?;
    copy_percpu::<BackendStats>(dir, maps::BACKEND_STATS, dp)?;
    info!("carried the counters over");
    Ok(())
}

fn copy_percpu<V: aya::Pod>(dir: &Path, name: &str, dp: &mut Dataplane) -> Result<()> {
    let old: PerCpuArray<MapData, V> = PerCpuArray::try_from(Map::PerCpuArray(open(dir, name)?))
        .with_context(|| name.to_string())?;
    let n = old.len().min(map_entries(dp, name)?);
    for i in 0..n {
        let values: PerCpuValues<V> = old
            .get(&i, 0)
            .with_context(|| format!("reading {name}[{i}]"))?;
        dp.set_percpu_values(name, i, values)?;
    }
    Ok(())
}

fn map_entries(dp: &Dataplane, name: &str) -> Result<u32> {
    Ok(dp
        .sizes()
        .entries_of(name)?
        .unwrap_or(lb_common::counters::COUNTER_COUNT))
}

fn backends(dir: &Path, layout: u32) -> Result<BTreeMap<BackendId, OldBackend>> {
    let data = open(dir, maps::BACKENDS)?;
    let mut out = BTreeMap::new();
    let mut add = |id: BackendId, addr: &AddrWords, family: u8, owner: Option<u32>, flags: u8| {
        if let Some(addr) = words_addr(addr, family) {
            out.insert(
                id,
                OldBackend {
                    addr,
                    owner,
                    active: flags & BACKEND_F_ACTIVE != 0 && flags & BACKEND_F_UNHEALTHY == 0,
                    drained: flags & BACKEND_F_DRAINED != 0,
                },
            );
        }
    };
    if layout == 1 {
        let arr: Array<MapData, v1::Backend> =
            Array::try_from(Map::Array(data)).context("layout 1 LB_BACKENDS")?;
        for id in 1..arr.len() {
            let b = arr.get(&id, 0).context("reading LB_BACKENDS")?;
            add(id, &b.addr, b.family, None, b.flags);
        }
    } else {
        let arr: Array<MapData, Backend> =
            Array::try_from(Map::Array(data)).context("LB_BACKENDS")?;
        for id in 1..arr.len() {
            let b = arr.get(&id, 0).context("reading LB_BACKENDS")?;
            add(id, &b.addr, b.family, Some(b.vip_id), b.flags);
        }
    }
    Ok(out)
}

/// The entries of the flow table pinned in `dir`, with values of `V` (one layout's flow entry).
fn read_flows<V: aya::Pod>(dir: &Path) -> Result<impl Iterator<Item = (FlowKey, V)>> {
    let m: HashMap<MapData, FlowKey, V> =
        HashMap::try_from(Map::LruHashMap(open(dir, maps::FLOWS)?)).context("LB_FLOWS")?;
    let entries: Vec<(FlowKey, V)> = m.iter().filter_map(Result::ok).collect();
    Ok(entries.into_iter())
}

fn open(dir: &Path, name: &str) -> Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

fn map_info(dir: &Path, name: &str) -> Result<aya::maps::MapInfo> {
    let path = dir.join(name);
    aya::maps::MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))
}

fn hash<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    HashMap::try_from(Map::HashMap(open(dir, name)?)).with_context(|| name.to_string())
}
