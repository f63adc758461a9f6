//! Names of the maps in the production object (`lb-ebpf`). Userspace looks maps up, sizes and pins them by these.

/// `HashMap<VipKey, VipMeta>`: the virtual services.
pub const VIPS: &str = "LB_VIPS";
/// `HashMap<AddrKey, u32>`: every address that has an `LB_VIPS` entry (the value is unused). Tells an unbalanced
/// packet for a VIP address (dropped) from one for any other address (passed).
pub const VIP_ADDRS: &str = "LB_VIP_ADDRS";
/// `Array<u64>` of `VIP_FILTER_WORDS` words: bit [`crate::hash::vip_filter_bit`] is set for every address that
/// /// has an `LB_VIPS` entry. A clear bit proves "not a VIP address" (no entry in `LB_VIPS` nor `LB_VIP_ADDRS`);
/// userspace sets a bit before the first entry of its address goes in and clears it after the last one goes out.
pub const VIP_FILTER: &str = "LB_VIP_FILTER";
/// `Array<u32>` of `2 * max_vips * max_ring_size` backend ids: two Maglev ring slots per VIP (double buffer).
pub const RING: &str = "LB_RING";
/// `Array<Backend>` indexed by [`crate::BackendId`]; id 0 is never used.
pub const BACKENDS: &str = "LB_BACKENDS";
/// `LruHashMap<FlowKey, FlowState>`: connection tracking.
pub const FLOWS: &str = "LB_FLOWS";
/// `Array<GlobalConfig>` with one entry.
pub const CONFIG: &str = "LB_CONFIG";
/// `PerCpuArray<u64>` indexed by [`crate::Counter`].
pub const COUNTERS: &str = "LB_COUNTERS";
/// `PerCpuArray<VipStats>` indexed by `VipMeta::vip_id`.
pub const VIP_STATS: &str = "LB_VIP_STATS";
/// `PerCpuArray<BackendStats>` indexed by backend id.
pub const BACKEND_STATS: &str = "LB_BACKEND_STATS";
/// `PerCpuArray<RateWindow>` indexed by [`crate::RateLimit`]: this CPU's one-second budgets.
pub const RATE_WINDOWS: &str = "LB_RATE_WINDOWS";
/// `PerCpuArray<NextHop>` indexed by backend id: a short-lived cache of `bpf_fib_lookup` results.
pub const NEXTHOP_CACHE: &str = "LB_NEXTHOP_CACHE";
/// `DevMapHash` keyed by ifindex: the interfaces `XDP_REDIRECT` may send to.
pub const TX_PORTS: &str = "LB_TX_PORTS";
/// `HashMap<AddrKey, u32>` for `lb_decap`: VIP addresses this backend serves.
pub const DECAP_VIPS: &str = "LB_DECAP_VIPS";
/// `HashMap<AddrKey, u32>` for `lb_decap`: this host's own tunnel endpoint addresses.
pub const DECAP_LOCAL: &str = "LB_DECAP_LOCAL";
/// `HashMap<AddrKey, u32>` for `lb_decap`: the balancers' encapsulation sources, the only senders it accepts.
pub const DECAP_FROM: &str = "LB_DECAP_FROM";

/// Every map of the production object, in the order they are pinned.
pub const ALL: &[&str] = &[
    VIPS,
    VIP_ADDRS,
    VIP_FILTER,
    RING,
    BACKENDS,
    FLOWS,
    CONFIG,
    COUNTERS,
    VIP_STATS,
    BACKEND_STATS,
    RATE_WINDOWS,
    NEXTHOP_CACHE,
    TX_PORTS,
    DECAP_VIPS,
    DECAP_LOCAL,
    DECAP_FROM,
];
