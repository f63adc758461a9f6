//! Reading the maps a real `lbd` (or `lbd decap`) pinned, the way an operator's tool would: by path, no loader.

use std::path::Path;

use std::net::IpAddr;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use lb_common::hash::flow_hash;
use lb_common::{Backend, BackendId, Counter, FlowKey, VipKey, VipMeta, lookup::ring_index, maps};

/// The pinned map `name` of the pin directory `pins` (in its current layout's maps directory).
pub fn open_map(pins: &Path, name: &str) -> MapData {
    let path = lb_userspace::pins::maps_dir(pins).join(name);
    MapData::from_pin(&path).unwrap_or_else(|e| panic!("open pinned {}: {e}", path.display()))
}

/// A verdict counter summed over CPUs, from the pinned `LB_COUNTERS`.
pub fn counter(pins: &Path, c: Counter) -> u64 {
    let arr: PerCpuArray<_, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open_map(pins, maps::COUNTERS)))
            .expect("LB_COUNTERS per-cpu array");
    arr.get(&(c as u32), 0).expect("counter").iter().sum()
}

/// The active ring of a VIP from the pinned `LB_RING` (`stride`: the daemon's `max_ring_size`), entry by entry as
/// the program indexes it (`ring_index` of hash `i` is entry `i`).
pub fn ring(pins: &Path, meta: &VipMeta, stride: u32) -> Vec<BackendId> {
    let arr: Array<_, BackendId> =
        Array::try_from(Map::Array(open_map(pins, maps::RING))).expect("LB_RING array");
    (0..meta.ring_size)
        .map(|i| {
            let index = ring_index(i, meta.ring_slot, meta.ring_size, stride)
                .unwrap_or_else(|| panic!("unusable ring sizes {meta:?} with stride {stride}"));
            arr.get(&index, 0).expect("ring entry")
        })
        .collect()
}

/// The live entry of the pinned `LB_VIPS` for `key`.
pub fn vip_meta(pins: &Path, key: &VipKey) -> Option<VipMeta> {
    let map: HashMap<_, VipKey, VipMeta> =
        HashMap::try_from(Map::HashMap(open_map(pins, maps::VIPS))).expect("LB_VIPS hash map");
    map.get(key, 0).ok()
}

/// The backend address a VIP's active ring gives `flow`: where a new connection with that 5-tuple goes, whatever the
/// flow table says. Computed here from the pinned maps and lb-common's hash, not asked of lbd.
pub fn ring_pick(pins: &Path, vip: &VipKey, flow: &FlowKey, stride: u32) -> Option<IpAddr> {
    let meta = vip_meta(pins, vip)?;
    let index = ring_index(flow_hash(flow), meta.ring_slot, meta.ring_size, stride)?;
    let ring: Array<_, BackendId> =
        Array::try_from(Map::Array(open_map(pins, maps::RING))).expect("LB_RING array");
    let id = ring.get(&index, 0).ok()?;
    let backends: Array<_, Backend> =
        Array::try_from(Map::Array(open_map(pins, maps::BACKENDS))).expect("LB_BACKENDS array");
    backends.get(&id, 0).ok()?.ip()
}

/// How many entries the pinned map `name` was created with.
pub fn capacity(pins: &Path, name: &str) -> u32 {
    let path = lb_userspace::pins::maps_dir(pins).join(name);
    aya::maps::MapInfo::from_pin(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .max_entries()
}

/// A new map, pinned at `path`, as another tool (or an older build) would leave one; key and value sizes in bytes.
pub fn create(
    path: &Path,
    map_type: aya_obj::generated::bpf_map_type,
    key: usize,
    value: usize,
    entries: u32,
) -> MapData {
    let def = aya_obj::Map::new_from_params(map_type as u32, key as u32, value as u32, entries, 0);
    // Kernel map names are at most 15 bytes; the pin path carries the full name.
    let name: String = path
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default();
    let map = MapData::create(def, &name, None).unwrap_or_else(|e| panic!("create {name}: {e}"));
    map.pin(path)
        .unwrap_or_else(|e| panic!("pin {}: {e}", path.display()));
    MapData::from_pin(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}
