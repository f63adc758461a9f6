//! Every map of the production object, named exactly as `lb_common::maps`. The sizes here are defaults only: the loader
//! overrides `max_entries` from the daemon's config before the maps are created.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    AddrKey, Backend, BackendId, BackendStats, DEFAULT_FLOW_TABLE_SIZE, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_RING_SIZE, DEFAULT_MAX_VIPS, FlowKey, FlowState, GlobalConfig, NextHop,
    RATE_LIMIT_COUNT, RING_SLOTS_PER_VIP, RateWindow, VIP_FILTER_WORDS, VipKey, VipMeta, VipStats,
    counters::COUNTER_COUNT,
};

/// Interfaces a redirect may target; small because a balancer has a handful of NICs.
const MAX_TX_PORTS: u32 = 64;

#[map]
pub static LB_VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map]
pub static LB_VIP_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map]
pub static LB_VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// Mmap-able: lbd writes a 65,537-entry ring with plain stores (lb-userspace's `ring_map`), not one syscall per
/// entry.
#[map]
pub static LB_RING: Array<BackendId> = Array::with_max_entries(
    RING_SLOTS_PER_VIP * DEFAULT_MAX_VIPS * DEFAULT_MAX_RING_SIZE,
    BPF_F_MMAPABLE,
);

#[map]
pub static LB_BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[map]
pub static LB_FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

#[map]
pub static LB_CONFIG: Array<GlobalConfig> = Array::with_max_entries(1, 0);

#[map]
pub static LB_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map]
pub static LB_VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map]
pub static LB_BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[map]
pub static LB_RATE_WINDOWS: PerCpuArray<RateWindow> =
    PerCpuArray::with_max_entries(RATE_LIMIT_COUNT, 0);

#[map]
pub static LB_NEXTHOP_CACHE: PerCpuArray<NextHop> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[map]
pub static LB_TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

#[map]
pub static LB_DECAP_VIPS: HashMap<AddrKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map]
pub static LB_DECAP_LOCAL: HashMap<AddrKey, u32> = HashMap::with_max_entries(16, 0);

/// Balancers a backend accepts tunnels from: a fleet's worth.
#[map]
pub static LB_DECAP_FROM: HashMap<AddrKey, u32> = HashMap::with_max_entries(256, 0);
