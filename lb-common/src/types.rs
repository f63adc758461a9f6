//! Map keys and values. All `#[repr(C)]` with explicit padding (zeroed by constructors) so that hash-map keys
//! compare byte-for-byte the same on both sides, and no `bool` (its invalid bit patterns are UB when read back).

/// Index into `LB_BACKENDS`. 0 is "unset".
pub type BackendId = u32;

/// An IP address as stored in maps: the wire bytes of the address, IPv4 in the first 4 bytes and the rest zero.
/// Words are raw memory (network order), loaded from the packet without swapping.
pub type AddrWords = [u32; 4];

/// `LB_VIPS` key: a virtual service. `port == 0` is a wildcard matching every port of `(addr, proto)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: AddrWords,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// `LB_VIPS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into `LB_VIP_STATS`; also names the VIP's two ring slots (`2 * vip_id` and `2 * vip_id + 1`).
    pub vip_id: u32,
    /// `VIP_F_*`.
    pub flags: u32,
    /// The ring slot packets use now.
    pub ring_slot: u32,
    /// Maglev table size M of this VIP (prime, ≤ `GlobalConfig::ring_stride`).
    pub ring_size: u32,
}

/// `LB_BACKENDS` value. A backend id stands for one (service, address) pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: AddrWords,
    /// The service (`VipMeta::vip_id`) this backend belongs to: a flow-table entry naming this backend is used only
    /// by packets of that service, so an entry that outlived a reuse of the id never crosses into another service.
    pub vip_id: u32,
    pub family: u8,
    /// `BACKEND_F_*`.
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// `LB_FLOWS` key: a flow as the client sent it (client → VIP), whatever direction the packet that carries it
/// (an ICMP error quotes the reverse direction and is turned around before lookup).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: AddrWords,
    pub dst: AddrWords,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// `LB_FLOWS` value. Which service the flow belongs to is not stored: the backend entry names its owner, and that
/// is what a hit is checked against (docs/dataplane.md, step 7).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub backend_id: BackendId,
    /// The flow's [`crate::hash::flow_hash`], from which an IPv6 outer header takes its flow label: kept here so an
    /// established packet hashes nothing (the entry's element is as large with it as without: values are rounded
    /// up to 8 bytes in the kernel's hash maps).
    pub hash: u32,
}

/// `LB_CONFIG[0]`: settings of the whole dataplane.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalConfig {
    /// Outer source of IPIP packets (raw wire bytes).
    pub encap_src_v4: u32,
    /// Outer source of IPv6 encapsulation.
    pub encap_src_v6: AddrWords,
    /// Entries reserved per ring slot in `LB_RING` (the maximum ring size).
    pub ring_stride: u32,
    /// New flows per second per CPU that may be inserted into the flow table; 0 = no cap.
    pub new_flow_cap: u32,
    /// Egress MTU an encapsulated packet must fit (IP packet length, without Ethernet); 0 = no check.
    pub mtu: u32,
    /// `CFG_F_*`.
    pub flags: u32,
    /// ICMP too-big answers per second per CPU; 0 = no limit.
    pub icmp_answer_cap: u32,
}

/// `LB_VIP_STATS` value (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    pub packets: u64,
    pub bytes: u64,
    /// Flow-table inserts (a TCP SYN, or a first packet that missed).
    pub new_flows: u64,
    /// Non-SYN packets that found no flow entry (a flow older than the table's memory, or from another balancer).
    pub lru_misses: u64,
}

/// `LB_BACKEND_STATS` value (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
}

/// `LB_RATE_WINDOWS[RateLimit]` (per CPU): what was taken from a one-second budget since `window_start_ns`
/// (`bpf_ktime_get_ns()`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub window_start_ns: u64,
    pub count: u64,
}

/// `LB_NEXTHOP_CACHE[backend_id]` (per CPU): where `bpf_fib_lookup` said to send packets for this backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// Egress interface; 0 remembers a failed lookup (no interface has index 0).
    pub ifindex: u32,
    /// `bpf_ktime_get_coarse_ns()` after which the entry must be looked up again; 0 = empty.
    pub expires_ns: u64,
}

/// `LB_DECAP_VIPS` / `LB_DECAP_LOCAL` key: an address alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: AddrWords,
    pub family: u8,
    pub _pad: [u8; 3],
}

const _: () = {
    assert!(core::mem::size_of::<VipKey>() == 20);
    assert!(core::mem::size_of::<VipMeta>() == 16);
    assert!(core::mem::size_of::<Backend>() == 24);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowState>() == 8);
    assert!(core::mem::size_of::<GlobalConfig>() == 40);
    assert!(core::mem::size_of::<VipStats>() == 32);
    assert!(core::mem::size_of::<BackendStats>() == 16);
    assert!(core::mem::size_of::<RateWindow>() == 16);
    assert!(core::mem::size_of::<NextHop>() == 24);
    assert!(core::mem::size_of::<AddrKey>() == 20);
};

impl FlowKey {
    /// The key with ports cleared: what the 3-tuple hash of a `VIP_F_FRAG_HASH3` VIP covers.
    #[inline(always)]
    pub const fn three_tuple(&self) -> FlowKey {
        FlowKey {
            sport: 0,
            dport: 0,
            ..*self
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    use crate::consts::{FAMILY_V4, FAMILY_V6};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    macro_rules! pod {
        ($($t:ty),+) => { $( unsafe impl aya::Pod for $t {} )+ };
    }
    // SAFETY: all are repr(C), Copy, with explicit padding fields and no bool/enum/pointer fields.
    pod!(
        VipKey,
        VipMeta,
        Backend,
        FlowKey,
        FlowState,
        GlobalConfig,
        VipStats,
        BackendStats,
        RateWindow,
        NextHop,
        AddrKey
    );

    /// The wire bytes of `ip` as map words, and its family tag.
    pub fn addr_words(ip: IpAddr) -> (AddrWords, u8) {
        let mut bytes = [0u8; 16];
        let family = match ip {
            IpAddr::V4(v4) => {
                bytes[..4].copy_from_slice(&v4.octets());
                FAMILY_V4
            }
            IpAddr::V6(v6) => {
                bytes.copy_from_slice(&v6.octets());
                FAMILY_V6
            }
        };
        let mut words = [0u32; 4];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        (words, family)
    }

    /// Inverse of [`addr_words`]; `None` for an unknown family tag.
    pub fn words_addr(words: &AddrWords, family: u8) -> Option<IpAddr> {
        let mut bytes = [0u8; 16];
        for (chunk, w) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        match family {
            FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(bytes))),
            _ => None,
        }
    }

    impl VipKey {
        /// `port` in host order.
        pub fn new(addr: IpAddr, port: u16, proto: u8) -> Self {
            let (addr, family) = addr_words(addr);
            VipKey {
                addr,
                port: port.to_be(),
                proto,
                family,
            }
        }
        pub fn ip(&self) -> Option<IpAddr> {
            words_addr(&self.addr, self.family)
        }
        /// Host-order port.
        pub fn port(&self) -> u16 {
            u16::from_be(self.port)
        }
    }

    impl Backend {
        /// Backend `addr` of service `vip_id`.
        pub fn new(addr: IpAddr, vip_id: u32, flags: u8) -> Self {
            let (addr, family) = addr_words(addr);
            Backend {
                addr,
                vip_id,
                family,
                flags,
                _pad: [0; 2],
            }
        }
        pub fn ip(&self) -> Option<IpAddr> {
            words_addr(&self.addr, self.family)
        }
    }

    impl AddrKey {
        pub fn new(addr: IpAddr) -> Self {
            let (addr, family) = addr_words(addr);
            AddrKey {
                addr,
                family,
                _pad: [0; 3],
            }
        }
    }

    impl FlowKey {
        /// A client → VIP flow; ports in host order. Panics if the two addresses are of different families.
        pub fn new(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> Self {
            let (src, sf) = addr_words(src);
            let (dst, df) = addr_words(dst);
            assert_eq!(sf, df, "flow endpoints of different address families");
            FlowKey {
                src,
                dst,
                sport: sport.to_be(),
                dport: dport.to_be(),
                proto,
                family: sf,
                _pad: [0; 2],
            }
        }
        pub fn src_ip(&self) -> Option<IpAddr> {
            words_addr(&self.src, self.family)
        }
        pub fn dst_ip(&self) -> Option<IpAddr> {
            words_addr(&self.dst, self.family)
        }
    }
}

#[cfg(feature = "user")]
pub use user::{addr_words, words_addr};
