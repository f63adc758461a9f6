//! Reading the maps a real `lbd` (or `lbd decap`) pinned, the way an operator's tool would: by path, no loader.

use std::path::Path;

use aya::maps::{Array, Map, MapData, PerCpuArray};
use lb_common::{BackendId, Counter, VipMeta, lookup::ring_index, maps};

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
