//! Limits, defaults, protocol numbers and flag bits.

/// Address family tags used in keys (not the kernel's AF_* values, which differ between the two sides' headers).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IPv6 Hop-by-Hop Options header (a next-header value, not a protocol of its own).
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
/// IPv6 Routing header.
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_IPV6_FRAG: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 Destination Options header.
pub const IPPROTO_DSTOPTS: u8 = 60;

/// IPv6 extension headers `lb_xdp` walks before it gives up on finding TCP/UDP/ICMPv6 (hop-by-hop, destination
/// options, routing with no segments left, atomic fragment): real traffic carries one or two; the bound keeps the
/// verifier's view of the walk small.
pub const IPV6_MAX_EXT_HEADERS: usize = 4;

pub const IPV4_HDR_LEN: usize = 20;
pub const IPV6_HDR_LEN: usize = 40;

/// The layout of the pinned maps: bumped whenever a map's key or value layout, or the meaning of an entry, changes,
/// so that a daemon never adopts maps another build laid out differently. Pins live in `maps-v<LAYOUT_VERSION>/`
/// under the pin directory; layout 1 is the maps pinned directly in it by builds before this stamp.
pub const LAYOUT_VERSION: u32 = 3;

/// Backend id 0 means "unset": a ring entry of 0 has no backend, and id 0 is never allocated.
pub const BACKEND_ID_NONE: u32 = 0;

/// Each VIP owns two ring slots; userspace writes the inactive one, then flips `VipMeta::ring_slot` (one 4-byte
/// map write), so a packet sees either the whole old table or the whole new one.
pub const RING_SLOTS_PER_VIP: u32 = 2;

/// Maglev table size M. A prime, per the paper; 65537 keeps the per-backend share error under 1% for 100 backends.
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Upper bound of a VIP's ring size; the ring map reserves `2 * max_vips * max_ring_size` entries.
pub const DEFAULT_MAX_RING_SIZE: u32 = 65537;
pub const DEFAULT_MAX_VIPS: u32 = 64;
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 20;
/// New flows per second per CPU before the flow table stops taking inserts (0 = no cap).
pub const DEFAULT_NEW_FLOW_CAP: u32 = 0;
/// `LB_VIP_FILTER` words (`u64`): a one-hash Bloom filter of VIP addresses, 65,536 bits in 8 KiB (fits L1), so a
/// packet for no VIP costs one array read instead of two hash-map misses. With `n` VIP addresses a non-VIP
/// address still takes the hash lookups with probability about `n / 65536`.
pub const VIP_FILTER_WORDS: u32 = 1024;
/// How long a cached `bpf_fib_lookup` answer for a backend is trusted.
pub const NEXTHOP_CACHE_TTL_NS: u64 = 1_000_000_000;
/// How long a failed `bpf_fib_lookup` (no route, unresolved neighbour) is remembered: a burst towards a backend
/// whose neighbour is not resolved yet costs one lookup per CPU, not one per packet, and the backend is tried again
/// soon after its neighbour entry appears (the health checks' own traffic resolves it).
pub const NEXTHOP_NEG_TTL_NS: u64 = 100_000_000;
/// Length of a rate window (`LB_RATE_WINDOWS`).
pub const RATE_WINDOW_NS: u64 = 1_000_000_000;
/// ICMP too-big answers per second per CPU (0 = no limit). Each answer costs a checksum over up to 1,232 quoted
/// bytes and can be triggered by spoofed packets; 1,000 per second is Linux's own global default for ICMP errors
/// (`net.ipv4.icmp_msgs_per_sec`).
pub const DEFAULT_ICMP_ANSWER_CAP: u32 = 1000;

/// `VipMeta::flags`: forward by rewriting the destination MAC only (L2 DSR) instead of IP-in-IP encapsulation.
pub const VIP_F_L2DSR: u32 = 1 << 0;
/// `VipMeta::flags`: fragments are forwarded by the 3-tuple hash (src, dst, proto). Such a VIP is stateless: every
/// packet, fragment or not, is hashed on the 3-tuple so all pieces of a datagram reach the same backend.
pub const VIP_F_FRAG_HASH3: u32 = 1 << 1;
/// `VipMeta::flags`: this `(addr, port 0, proto)` entry exists only to give fragments of a port-specific VIP a
/// policy; it is not a wildcard VIP and never matches an unfragmented packet.
pub const VIP_F_FRAG_ONLY: u32 = 1 << 2;

/// `Backend::flags`: the backend is healthy. Flows pinned to an inactive backend are re-chosen from the ring.
pub const BACKEND_F_ACTIVE: u8 = 1 << 0;
/// `Backend::flags`: the backend is drained (weight 0: no new flows, open flows stay). The program does not read
/// it; it records the drain in the map so that a restarted daemon keeps a drain an operator made at run time.
pub const BACKEND_F_DRAINED: u8 = 1 << 1;
/// `Backend::flags`: the backend fails its checks. Usually it is then inactive too; a VIP in panic mode keeps its
/// failing backends active and in its ring, and this bit alone tells a restarted daemon which ones they are. The
/// program does not read it.
pub const BACKEND_F_UNHEALTHY: u8 = 1 << 2;

/// `GlobalConfig::flags`: answer over-MTU packets with ICMP too-big (else counted drop).
pub const CFG_F_ICMP_TOO_BIG: u32 = 1 << 0;

/// Indices of `LB_RATE_WINDOWS`: what each per-CPU one-second budget limits.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimit {
    /// Flow-table inserts (`GlobalConfig::new_flow_cap`).
    NewFlows = 0,
    /// ICMP too-big answers to over-MTU packets (`GlobalConfig::icmp_answer_cap`).
    IcmpAnswers = 1,
}

/// Length of `LB_RATE_WINDOWS`.
pub const RATE_LIMIT_COUNT: u32 = 2;

/// `lb_loadgen` gives frame `n` the source port `LOADGEN_PORT_BASE + n % LOADGEN_PORTS`: that many distinct flows.
pub const LOADGEN_PORT_BASE: u16 = 1024;
pub const LOADGEN_PORTS: u32 = 60_000;

/// XDP verdicts, as the kernel numbers them.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
