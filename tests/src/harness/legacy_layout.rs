//! Turns a running balancer's pins into what a build of an older layout would have left. Layout 1 (before the layout
//! stamp): the maps pinned directly in the pin directory, a backend entry without its owner (20 bytes), a flow entry
//! naming its VIP beside the backend (8 bytes). Layout 2: `maps-v2/`, a flow entry holding only its backend (4
//! bytes), every other map as today's. The program keeps running on its own maps (it holds them; only their pins
//! go), exactly as a layout-1 program would keep running until an upgraded lbd swaps it. The bytes are written
//! here from the layout-1 definitions, not through lbd's reader, so a mistake in that reader shows.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, MapInfo};
use aya_obj::generated::bpf_map_type::{
    BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH,
};
use lb_common::lookup::ring_index;

use super::pinned;
use lb_common::{Backend, BackendId, FlowKey, FlowState, VIP_F_FRAG_ONLY, VipKey, VipMeta, maps};

/// Layout 1's `LB_BACKENDS` value: address words, family, flags, two bytes of padding.
type V1Backend = [u8; 20];
/// Layout 1's `LB_FLOWS` value: backend id, then the VIP id.
type V1Flow = [u8; 8];

/// Layout 2's `LB_FLOWS` value: the backend id alone.
type V2Flow = u32;

/// Rewrites the maps of layout [`lb_common::LAYOUT_VERSION`] under `pins` as layout 2's: the flow table in 4-byte
/// entries, every other map pinned again under `maps-v2/` as it is. Returns how many flows were written.
pub fn rewrite_as_layout_2(pins: &Path) -> usize {
    let from = lb_userspace::pins::maps_dir(pins);
    let to = pins.join("maps-v2");
    std::fs::create_dir(&to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    let open = |name: &str| {
        let path = from.join(name);
        MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
    };
    for name in maps::ALL.iter().filter(|&&n| n != maps::FLOWS) {
        open(name)
            .pin(to.join(name))
            .unwrap_or_else(|e| panic!("pin {name} under {}: {e}", to.display()));
    }
    let flows = flow_entries(open(maps::FLOWS));
    let entries = MapInfo::from_pin(from.join(maps::FLOWS))
        .unwrap_or_else(|e| panic!("LB_FLOWS: {e}"))
        .max_entries();
    let mut v2_flows = flow_table::<V2Flow>(&to.join(maps::FLOWS), entries);
    for (k, s) in &flows {
        v2_flows
            .insert(k, s.backend_id, 0)
            .expect("write layout 2 LB_FLOWS");
    }
    unpin_all(&from);
    flows.len()
}

/// Every entry of this layout's flow table.
fn flow_entries(map: MapData) -> Vec<(FlowKey, FlowState)> {
    HashMap::<_, FlowKey, FlowState>::try_from(Map::LruHashMap(map))
        .expect("LB_FLOWS")
        .iter()
        .filter_map(Result::ok)
        .collect()
}

/// A new flow table pinned at `path` whose values are an older layout's `V`.
fn flow_table<V: aya::Pod>(path: &Path, entries: u32) -> HashMap<MapData, FlowKey, V> {
    HashMap::try_from(Map::LruHashMap(pinned::create(
        path,
        BPF_MAP_TYPE_LRU_HASH,
        size_of::<FlowKey>(),
        size_of::<V>(),
        entries,
    )))
    .unwrap_or_else(|e| panic!("an older layout's LB_FLOWS at {}: {e}", path.display()))
}

/// Unpins every map in `dir` and removes it (the maps live on while a program holds them).
fn unpin_all(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read the maps directory") {
        let path = entry.expect("dir entry").path();
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("unpin {}: {e}", path.display()));
    }
    std::fs::remove_dir(dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
}

/// Rewrites the maps of layout [`lb_common::LAYOUT_VERSION`] under `pins` as layout 1's, then unpins the originals.
/// Returns how many flows were written.
pub fn rewrite_as_layout_1(pins: &Path) -> usize {
    let from = lb_userspace::pins::maps_dir(pins);
    let open = |name: &str| {
        let path = from.join(name);
        MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
    };
    let entries = |name: &str| {
        MapInfo::from_pin(from.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .max_entries()
    };

    let vips: Vec<(VipKey, VipMeta)> =
        HashMap::<_, VipKey, VipMeta>::try_from(Map::HashMap(open(maps::VIPS)))
            .expect("LB_VIPS")
            .iter()
            .map(|r| r.expect("LB_VIPS entry"))
            .collect();
    let mut v1_vips: HashMap<_, VipKey, VipMeta> = HashMap::try_from(Map::HashMap(pinned::create(
        &pins.join(maps::VIPS),
        BPF_MAP_TYPE_HASH,
        size_of::<VipKey>(),
        size_of::<VipMeta>(),
        entries(maps::VIPS),
    )))
    .expect("layout 1 LB_VIPS");
    for (k, m) in &vips {
        v1_vips.insert(k, m, 0).expect("write layout 1 LB_VIPS");
    }

    let ring: Array<_, BackendId> = Array::try_from(Map::Array(open(maps::RING))).expect("LB_RING");
    let ring_entries = entries(maps::RING);
    let mut v1_ring: Array<_, BackendId> = Array::try_from(Map::Array(pinned::create(
        &pins.join(maps::RING),
        BPF_MAP_TYPE_ARRAY,
        4,
        4,
        ring_entries,
    )))
    .expect("layout 1 LB_RING");
    let stride = ring_entries / (2 * entries(maps::VIPS));
    for (_, m) in vips.iter().filter(|(_, m)| m.flags & VIP_F_FRAG_ONLY == 0) {
        for i in 0..m.ring_size {
            let idx = ring_index(i, m.ring_slot, m.ring_size, stride).expect("ring index");
            let id = ring.get(&idx, 0).expect("ring entry");
            v1_ring.set(idx, id, 0).expect("write layout 1 LB_RING");
        }
    }

    let backends: Array<_, Backend> =
        Array::try_from(Map::Array(open(maps::BACKENDS))).expect("LB_BACKENDS");
    let mut v1_backends: Array<_, V1Backend> = Array::try_from(Map::Array(pinned::create(
        &pins.join(maps::BACKENDS),
        BPF_MAP_TYPE_ARRAY,
        4,
        size_of::<V1Backend>(),
        backends.len(),
    )))
    .expect("layout 1 LB_BACKENDS");
    let mut owner = std::collections::HashMap::new();
    for id in 0..backends.len() {
        let b = backends.get(&id, 0).expect("backend entry");
        if b.family == 0 {
            continue;
        }
        owner.insert(id, b.vip_id);
        let mut v = [0u8; 20];
        for (w, word) in b.addr.iter().enumerate() {
            v[w * 4..w * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        v[16] = b.family;
        v[17] = b.flags;
        v1_backends
            .set(id, v, 0)
            .expect("write layout 1 LB_BACKENDS");
    }

    let flows = flow_entries(open(maps::FLOWS));
    let mut v1_flows = flow_table::<V1Flow>(&pins.join(maps::FLOWS), entries(maps::FLOWS));
    for (k, s) in &flows {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&s.backend_id.to_ne_bytes());
        let vip_id = owner.get(&s.backend_id).copied().unwrap_or(0);
        v[4..].copy_from_slice(&vip_id.to_ne_bytes());
        v1_flows.insert(k, v, 0).expect("write layout 1 LB_FLOWS");
    }

    unpin_all(&from);
    flows.len()
}
