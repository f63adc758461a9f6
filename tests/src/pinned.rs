//! Reading the maps a real `lbd` (or `lbd decap`) pinned, the way an operator's tool would: by path, no loader.

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use lb_common::{Counter, maps};

/// The pinned map `name` under `pins`.
pub fn open_map(pins: &Path, name: &str) -> MapData {
    let path = pins.join(name);
    MapData::from_pin(&path).unwrap_or_else(|e| panic!("open pinned {}: {e}", path.display()))
}

/// A verdict counter summed over CPUs, from the pinned `LB_COUNTERS`.
pub fn counter(pins: &Path, c: Counter) -> u64 {
    let arr: PerCpuArray<_, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open_map(pins, maps::COUNTERS)))
            .expect("LB_COUNTERS per-cpu array");
    arr.get(&(c as u32), 0).expect("counter").iter().sum()
}
