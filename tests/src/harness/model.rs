//! The reference model: docs/dataplane.md as plain userspace Rust, the oracle of the fixture and differential tests.
//!
//! Written from the specification, step by step and term by term (the doc comments quote the rule each function
//! implements), not from `lb-ebpf`: a reviewer should find the spec here, not the program. It shares only what is
//! the contract itself: lb-common's map types and constants, the flow hash and the checksum fold. Everything else
//! (parsing with slices, the service lookup, the ring index, which flow entries are usable, the ICMP answers) is its
//! own. Its maps are `HashMap`s it reads and mutates the way the kernel program must.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::csum::fold;
use lb_common::hash::flow_hash;
use lb_common::*;

use crate::harness::packets::{self, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6};

/// What `bpf_fib_lookup` answers for a backend address (the test namespace's routes + permanent neighbours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub ifindex: u32,
}

/// Everything the program reads, plus what it writes (flows, stats, counters).
#[derive(Clone, Debug, Default)]
pub struct ModelState {
    pub vips: HashMap<VipKey, VipMeta>,
    /// `LB_RING`, sparse: index → backend id (absent = 0).
    pub ring: HashMap<u32, BackendId>,
    pub backends: HashMap<BackendId, Backend>,
    pub flows: HashMap<FlowKey, FlowState>,
    pub config: GlobalConfig,
    /// Backend address → FIB answer; absent = no route/neighbour.
    pub routes: HashMap<IpAddr, Route>,
    /// Unexpired `LB_NEXTHOP_CACHE` entries a test planted (`None`: a remembered failure). They win over the FIB
    /// until they expire; the model assumes they outlive the test. The answers the program caches itself are the
    /// FIB's, which does not change during a test, so the model need not remember them.
    pub nexthop_cache: HashMap<BackendId, Option<Route>>,
    pub ingress_ifindex: u32,
    /// `LB_TX_PORTS`: the interfaces other than the ingress one the program may redirect to.
    pub tx_ports: HashSet<u32>,
    /// Taken from the current window of each `RateLimit` (new flows, ICMP answers). The model assumes a window does
    /// not roll over during a test: tests that set a cap freeze the kernel's windows (a start in the future).
    pub window_count: [u64; RATE_LIMIT_COUNT as usize],
    pub decap_vips: HashSet<AddrKey>,
    pub decap_local: HashSet<AddrKey>,
    pub decap_from: HashSet<AddrKey>,
    pub counters: HashMap<u32, u64>,
    pub vip_stats: HashMap<u32, VipStats>,
    pub backend_stats: HashMap<BackendId, BackendStats>,
}

/// The model's answer for one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `XDP_*`.
    pub action: u32,
    /// The one verdict-reason counter the packet hits.
    pub counter: Counter,
    /// Informational counters also hit (`IcmpSteered`, `FragmentHashed`, `NewFlowCapped`).
    pub info: Vec<Counter>,
    /// The backend chosen, when the program got that far.
    pub backend: Option<BackendId>,
    /// The frame as the program leaves it (meaningful for `XDP_TX`/`XDP_REDIRECT`/`XDP_PASS`).
    pub frame: Vec<u8>,
    /// What step 7 did with the flow table, when the packet got there.
    pub flow_use: Option<FlowUse>,
    /// The flow-table key the packet looked up, and the entry it found (before any insert).
    pub looked_up: Option<(FlowKey, Option<FlowState>)>,
    /// Left empty by the model; the fixture runner fills it with the flow table after the packet.
    pub flows_after: HashMap<FlowKey, FlowState>,
}

/// The flow-table paths of step 7 (and the lookup of a steered too-big), for coverage counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlowUse {
    /// A new connection: no lookup.
    NewConnection,
    /// A usable entry decided the backend.
    Hit,
    /// An entry whose backend is inactive or belongs to another service.
    Unusable,
    Miss,
}

pub fn action_name(a: u32) -> &'static str {
    match a {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "XDP_?",
    }
}

/// `len` bytes at `off`, if the slice holds them.
fn get(b: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    b.get(off..off.checked_add(len)?)
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

/// Wire bytes of an address as map words (IPv4 in the first word), as lb-common stores them.
fn words(addr: &[u8]) -> AddrWords {
    let mut w = [0u32; 4];
    for (i, c) in addr.chunks_exact(4).enumerate() {
        w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

/// A 16-bit field as the program stores ports: the wire bytes read as a native integer.
fn raw16(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn ip_of(addr: &[u8]) -> IpAddr {
    match addr.len() {
        4 => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        _ => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(addr).expect("16-byte address"),
        )),
    }
}

fn family_of(addr: &[u8]) -> u8 {
    if addr.len() == 4 {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

/// RFC 1624, eqn. 3: the checksum `hc` of data in which the 16-bit word `m` became `m2`, all three as they sit in
/// memory (big-endian on the wire). The one's-complement sum does not depend on the byte order the words are read in.
fn rfc1624(hc: [u8; 2], m: [u8; 2], m2: [u8; 2]) -> [u8; 2] {
    let (hc, m, m2) = (
        u16::from_be_bytes(hc),
        u16::from_be_bytes(m),
        u16::from_be_bytes(m2),
    );
    (!fold((!hc) as u64 + (!m) as u64 + m2 as u64)).to_be_bytes()
}

/// The IP layer as steps 1 and 2 leave it.
struct L3<'a> {
    family: u8,
    /// Offset of the IP header: the L2 header's length.
    off: usize,
    /// The IP end: the IP header's offset plus the packet's own IP length.
    end: usize,
    src: &'a [u8],
    dst: &'a [u8],
    /// The protocol where the extension header walk stopped.
    proto: u8,
    /// Where that protocol's header starts.
    l4: usize,
    fragment: bool,
    /// An IPv6 extension header was cut short by the IP end.
    chain_cut: bool,
    /// IPv4 DF bit.
    df: bool,
}

impl L3<'_> {
    /// `len` bytes at `off` that lie before the IP end.
    fn within<'f>(&self, frame: &'f [u8], off: usize, len: usize) -> Option<&'f [u8]> {
        if off.checked_add(len)? > self.end {
            return None;
        }
        get(frame, off, len)
    }

    fn flow_key(&self, sport: u16, dport: u16) -> FlowKey {
        FlowKey {
            src: words(self.src),
            dst: words(self.dst),
            sport,
            dport,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

enum Parsed<'a> {
    Done(Counter),
    Ip(L3<'a>),
}

/// "Unbalanced": why a packet with a valid IP header was not balanced.
#[derive(Clone, Copy)]
enum Why {
    Malformed,
    NotServed,
}

impl ModelState {
    fn count(&mut self, c: Counter) {
        *self.counters.entry(c as u32).or_default() += 1;
    }

    fn outcome(
        &mut self,
        action: u32,
        counter: Counter,
        info: Vec<Counter>,
        backend: Option<u32>,
        frame: &[u8],
    ) -> Outcome {
        self.count(counter);
        for c in &info {
            self.count(*c);
        }
        Outcome {
            action,
            counter,
            info,
            backend,
            frame: frame.to_vec(),
            flow_use: None,
            looked_up: None,
            flows_after: HashMap::new(),
        }
    }

    fn pass(&mut self, counter: Counter, frame: &[u8]) -> Outcome {
        self.outcome(XDP_PASS, counter, Vec::new(), None, frame)
    }

    fn drop(
        &mut self,
        counter: Counter,
        info: Vec<Counter>,
        backend: Option<u32>,
        frame: &[u8],
    ) -> Outcome {
        self.outcome(XDP_DROP, counter, info, backend, frame)
    }

    /// "VIP address: the address of any `LB_VIPS` entry (`VIP_F_FRAG_ONLY` entries included)."
    fn is_vip_address(&self, addr: &[u8]) -> bool {
        let (a, f) = (words(addr), family_of(addr));
        self.vips.keys().any(|k| k.addr == a && k.family == f)
    }

    /// "Service: the first of the entries `(addr, port, proto)`, `(addr, 0, proto)` that exists and is not
    /// `VIP_F_FRAG_ONLY`."
    fn service(&self, addr: &[u8], port: u16, proto: u8) -> Option<VipMeta> {
        [port, 0].into_iter().find_map(|p| {
            let key = VipKey {
                addr: words(addr),
                port: p,
                proto,
                family: family_of(addr),
            };
            self.vips
                .get(&key)
                .filter(|m| m.flags & VIP_F_FRAG_ONLY == 0)
                .copied()
        })
    }

    /// "Unbalanced: if its destination is a VIP address it is dropped, `DropMalformed` when a header after the IP
    /// header is cut short or invalid, else `DropNotServed`. Otherwise it is `XDP_PASS`, `PassNotVip`."
    fn unbalanced(&mut self, l3: &L3, why: Why, frame: &[u8]) -> Outcome {
        if !self.is_vip_address(l3.dst) {
            return self.pass(Counter::PassNotVip, frame);
        }
        let c = match why {
            Why::Malformed => Counter::DropMalformed,
            Why::NotServed => Counter::DropNotServed,
        };
        self.drop(c, Vec::new(), None, frame)
    }

    /// `lb_xdp` on one frame.
    pub fn lb_xdp(&mut self, frame: &[u8]) -> Outcome {
        let l3 = match parse(frame) {
            Parsed::Done(c) => return self.pass(c, frame),
            Parsed::Ip(l3) => l3,
        };
        if l3.chain_cut {
            return self.unbalanced(&l3, Why::Malformed, frame);
        }
        if l3.fragment {
            return self.fragment(frame, &l3);
        }
        let icmp = if l3.family == FAMILY_V4 {
            IPPROTO_ICMP
        } else {
            IPPROTO_ICMPV6
        };
        match l3.proto {
            p if p == icmp => self.icmp(frame, &l3),
            IPPROTO_TCP | IPPROTO_UDP => self.transport(frame, &l3),
            _ => self.unbalanced(&l3, Why::NotServed, frame),
        }
    }

    /// Step 3: "The fragment policy entry is `LB_VIPS[(dst, 0, proto)]`. None → unbalanced, not served. Found
    /// without `VIP_F_FRAG_HASH3` → `DropFragment`. Found with it → `ring[hash(three_tuple)]`, `FragmentHashed`."
    fn fragment(&mut self, frame: &[u8], l3: &L3) -> Outcome {
        let key = VipKey {
            addr: words(l3.dst),
            port: 0,
            proto: l3.proto,
            family: l3.family,
        };
        let Some(meta) = self.vips.get(&key).copied() else {
            return self.unbalanced(l3, Why::NotServed, frame);
        };
        self.vip_packet(&meta, frame.len());
        if meta.flags & VIP_F_FRAG_HASH3 == 0 {
            return self.drop(Counter::DropFragment, Vec::new(), None, frame);
        }
        let info = vec![Counter::FragmentHashed];
        let hash = flow_hash(&l3.flow_key(0, 0));
        match self.ring_pick(&meta, hash) {
            None => self.drop(Counter::DropNoBackend, info, None, frame),
            Some(id) => self.forward(frame, l3, &meta, id, hash, info),
        }
    }

    /// Step 4.
    fn icmp(&mut self, frame: &[u8], l3: &L3) -> Outcome {
        let Some(hdr) = l3.within(frame, l3.l4, 8) else {
            return self.unbalanced(l3, Why::Malformed, frame);
        };
        let (ty, code) = (hdr[0], hdr[1]);
        let v4 = l3.family == FAMILY_V4;
        let echo = if v4 { ty == 8 } else { ty == 128 };
        let too_big = if v4 { ty == 3 && code == 4 } else { ty == 2 };
        if echo {
            if !self.is_vip_address(l3.dst) {
                return self.pass(Counter::PassNotVip, frame);
            }
            let reply = echo_reply(frame, l3);
            return self.outcome(XDP_TX, Counter::IcmpEchoReply, Vec::new(), None, &reply);
        }
        if !too_big {
            return self.unbalanced(l3, Why::NotServed, frame);
        }
        // "The quoted IP header must lie before the IP end in full (IPv4: 20 bytes and its IHL·4 with options,
        // version 4, IHL ≥ 5; IPv6: 40 bytes, version 6), followed by 8 bytes of its L4 header."
        let q = l3.l4 + 8;
        let quote = if v4 {
            l3.within(frame, q, 20).and_then(|h| {
                let ihl = (h[0] & 0x0f) as usize * 4;
                (h[0] >> 4 == 4 && ihl >= 20 && l3.within(frame, q + ihl, 8).is_some()).then(|| {
                    (
                        &frame[q + 12..q + 16],
                        &frame[q + 16..q + 20],
                        h[9],
                        q + ihl,
                    )
                })
            })
        } else {
            l3.within(frame, q, 40).and_then(|h| {
                (h[0] >> 4 == 6 && l3.within(frame, q + 40, 8).is_some())
                    .then(|| (&frame[q + 8..q + 24], &frame[q + 24..q + 40], h[6], q + 40))
            })
        };
        let Some((isrc, idst, iproto, il4)) = quote else {
            return self.unbalanced(l3, Why::Malformed, frame);
        };
        // "The quoted source must equal the outer destination and the quoted (src, sport, proto) must have a
        // service."
        let (isport, idport) = (raw16(frame, il4), raw16(frame, il4 + 2));
        let meta = if isrc == l3.dst {
            self.service(isrc, isport, iproto)
        } else {
            None
        };
        let Some(meta) = meta else {
            return self.unbalanced(l3, Why::NotServed, frame);
        };
        self.vip_packet(&meta, frame.len());
        let flow = FlowKey {
            src: words(idst),
            dst: words(isrc),
            sport: idport,
            dport: isport,
            proto: iproto,
            family: l3.family,
            _pad: [0; 2],
        };
        let info = vec![Counter::IcmpSteered];
        let mut lookup = None;
        let (id, hash) = if meta.flags & VIP_F_FRAG_HASH3 != 0 {
            let hash = flow_hash(&three_tuple(&flow));
            (self.ring_pick(&meta, hash), hash)
        } else {
            let hash = flow_hash(&flow);
            let entry = self.flows.get(&flow).copied();
            let used = self.usable_entry(&flow, &meta);
            lookup = Some((flow, entry, used_how(entry, used)));
            match used {
                Some(id) => (Some(id), hash),
                None => (self.ring_pick(&meta, hash), hash),
            }
        };
        let o = match id {
            None => self.drop(Counter::DropNoBackend, info, None, frame),
            Some(id) => self.forward(frame, l3, &meta, id, hash, info),
        };
        with_lookup(o, lookup)
    }

    /// Steps 5 to 8 for TCP and UDP.
    fn transport(&mut self, frame: &[u8], l3: &L3) -> Outcome {
        let Some(ports) = l3.within(frame, l3.l4, 4) else {
            return self.unbalanced(l3, Why::Malformed, frame);
        };
        let (sport, dport) = (raw16(ports, 0), raw16(ports, 2));
        let Some(meta) = self.service(l3.dst, dport, l3.proto) else {
            return self.unbalanced(l3, Why::NotServed, frame);
        };
        // "Then the whole L4 header must lie before the IP end (TCP: 20 bytes, data offset ≥ 5 and data offset · 4
        // bytes; UDP: 8 bytes), else `DropMalformed`."
        let header_ok = match l3.proto {
            IPPROTO_TCP => l3.within(frame, l3.l4, 20).is_some_and(|t| {
                let doff = (t[12] >> 4) as usize;
                doff >= 5 && l3.within(frame, l3.l4, doff * 4).is_some()
            }),
            _ => l3.within(frame, l3.l4, 8).is_some(),
        };
        if !header_ok {
            return self.drop(Counter::DropMalformed, Vec::new(), None, frame);
        }
        self.vip_packet(&meta, frame.len());
        let key = l3.flow_key(sport, dport);
        // "A new connection is a TCP segment whose SYN is set and ACK, RST and FIN are clear."
        let new_connection =
            l3.proto == IPPROTO_TCP && frame[l3.l4 + 13] & (0x02 | 0x10 | 0x04 | 0x01) == 0x02;
        let mut info = Vec::new();
        let mut lookup = None;
        let (id, hash) = if meta.flags & VIP_F_FRAG_HASH3 != 0 {
            let hash = flow_hash(&three_tuple(&key));
            match self.ring_pick(&meta, hash) {
                Some(id) => (id, hash),
                None => return self.drop(Counter::DropNoBackend, info, None, frame),
            }
        } else {
            let hash = flow_hash(&key);
            let entry = (!new_connection).then(|| self.flows.get(&key).copied());
            let used = entry.flatten().and(self.usable_entry(&key, &meta));
            lookup = Some((
                key,
                entry.flatten(),
                match entry {
                    None => FlowUse::NewConnection,
                    Some(e) => used_how(e, used),
                },
            ));
            match used {
                // "An established flow's outer flow label comes from its entry's hash."
                Some(id) => (id, entry.flatten().map_or(hash, |e| e.hash)),
                None => {
                    // "A miss (not an unusable entry) counts `lru_misses`."
                    if entry == Some(None) {
                        self.vip_stats.entry(meta.vip_id).or_default().lru_misses += 1;
                    }
                    let Some(id) = self.ring_pick(&meta, hash) else {
                        let o = self.drop(Counter::DropNoBackend, info, None, frame);
                        return with_lookup(o, lookup);
                    };
                    if self.take(RateLimit::NewFlows, self.config.new_flow_cap) {
                        self.flows.insert(
                            key,
                            FlowState {
                                backend_id: id,
                                hash,
                            },
                        );
                        self.vip_stats.entry(meta.vip_id).or_default().new_flows += 1;
                    } else {
                        info.push(Counter::NewFlowCapped);
                    }
                    (id, hash)
                }
            }
        };
        let o = self.forward(frame, l3, &meta, id, hash, info);
        with_lookup(o, lookup)
    }

    /// Step 6: "`VIP_STATS[vip_id]` packets += 1, bytes += frame length."
    fn vip_packet(&mut self, meta: &VipMeta, len: usize) {
        let s = self.vip_stats.entry(meta.vip_id).or_default();
        s.packets += 1;
        s.bytes += len as u64;
    }

    /// Step 7: "An entry is usable when the backend it names is active (`BACKEND_F_ACTIVE`) and belongs to this
    /// service (`Backend::vip_id == VipMeta::vip_id`)."
    fn usable_entry(&self, key: &FlowKey, meta: &VipMeta) -> Option<BackendId> {
        let id = self.flows.get(key)?.backend_id;
        let be = self.backends.get(&id)?;
        (be.flags & BACKEND_F_ACTIVE != 0 && be.vip_id == meta.vip_id).then_some(id)
    }

    /// "Taking one from a window: ... the take succeeds if the count is below the cap, and increments it." A cap of
    /// 0 is no limit.
    fn take(&mut self, limit: RateLimit, cap: u32) -> bool {
        let n = &mut self.window_count[limit as usize];
        if cap > 0 && *n >= cap as u64 {
            return false;
        }
        *n += 1;
        true
    }

    /// "`ring[hash]` = `LB_RING[meta.ring_slot · cfg.ring_stride + hash mod meta.ring_size]`, where `ring_size` must
    /// be in `1..=ring_stride`; an index beyond the map, a 0 entry, or a backend entry with family 0 → no backend."
    fn ring_pick(&self, meta: &VipMeta, hash: u32) -> Option<BackendId> {
        let stride = self.config.ring_stride;
        if meta.ring_size == 0 || meta.ring_size > stride {
            return None;
        }
        let index = meta.ring_slot as u64 * stride as u64 + (hash % meta.ring_size) as u64;
        let id = *self.ring.get(&u32::try_from(index).ok()?)?;
        let be = self.backends.get(&id)?;
        (id != BACKEND_ID_NONE && be.family != 0).then_some(id)
    }

    /// Step 8: encapsulate or rewrite, route, and pick `XDP_TX` or `XDP_REDIRECT`.
    fn forward(
        &mut self,
        frame: &[u8],
        l3: &L3,
        meta: &VipMeta,
        id: BackendId,
        hash: u32,
        info: Vec<Counter>,
    ) -> Outcome {
        {
            let s = self.backend_stats.entry(id).or_default();
            s.packets += 1;
            s.bytes += frame.len() as u64;
        }
        let be = self.backends[&id];
        let be_ip = words_addr(&be.addr, be.family).expect("ring_pick checked the family");
        if meta.flags & VIP_F_L2DSR != 0 {
            if be.family != l3.family {
                return self.drop(Counter::DropNoBackend, info, Some(id), frame);
            }
            let Some(r) = self.next_hop(id, be_ip) else {
                return self.drop(Counter::DropNoRoute, info, Some(id), frame);
            };
            let mut out = frame.to_vec();
            out[0..6].copy_from_slice(&r.dmac);
            out[6..12].copy_from_slice(&r.smac);
            return self.emit(out, r, info, id);
        }
        let inner_len = frame.len() - l3.off;
        let overhead: u32 = if be.family == FAMILY_V4 { 20 } else { 40 };
        let mtu = self.config.mtu;
        if mtu > 0 && inner_len as u64 + overhead as u64 > mtu as u64 {
            let answerable = self.config.flags & CFG_F_ICMP_TOO_BIG != 0
                && (l3.proto == IPPROTO_TCP || l3.proto == IPPROTO_UDP)
                && (l3.family == FAMILY_V6 || l3.df);
            if !answerable {
                return self.drop(Counter::DropOverMtu, info, Some(id), frame);
            }
            if !self.take(RateLimit::IcmpAnswers, self.config.icmp_answer_cap) {
                return self.drop(Counter::DropIcmpRateLimited, info, Some(id), frame);
            }
            // "The advertised MTU is `cfg.mtu − overhead`, computed without underflow and at least the family's
            // minimum (68 for IPv4, 1280 for IPv6); a 16-bit field for IPv4."
            let floor = if l3.family == FAMILY_V4 { 68 } else { 1280 };
            let advertised = mtu.saturating_sub(overhead).max(floor);
            let out = too_big_answer(frame, l3, advertised);
            return self.outcome(XDP_TX, Counter::IcmpTooBigSent, info, Some(id), &out);
        }
        let Some(r) = self.next_hop(id, be_ip) else {
            return self.drop(Counter::DropNoRoute, info, Some(id), frame);
        };
        let inner = &frame[l3.off..];
        let outer = match be_ip {
            IpAddr::V4(dst) => {
                let src = Ipv4Addr::from(self.config.encap_src_v4.to_ne_bytes());
                packets::encap4(src, dst, inner)
            }
            IpAddr::V6(dst) => {
                let src = words_addr(&self.config.encap_src_v6, FAMILY_V6).expect("v6");
                let IpAddr::V6(src) = src else { unreachable!() };
                packets::encap6(src, dst, hash & 0xfffff, inner)
            }
        };
        let out = packets::frame(&packets::L2::new(r.smac, r.dmac), &outer);
        self.emit(out, r, info, id)
    }

    /// "Next hop: a property of the backend alone": a planted cache entry (a remembered failure included) wins, else
    /// the FIB.
    fn next_hop(&self, id: BackendId, addr: IpAddr) -> Option<Route> {
        match self.nexthop_cache.get(&id) {
            Some(planted) => *planted,
            None => self.routes.get(&addr).copied(),
        }
    }

    fn emit(&mut self, out: Vec<u8>, r: Route, info: Vec<Counter>, id: BackendId) -> Outcome {
        if r.ifindex == self.ingress_ifindex {
            self.outcome(XDP_TX, Counter::Tx, info, Some(id), &out)
        } else if !self.tx_ports.contains(&r.ifindex) {
            self.drop(Counter::DropNoRoute, info, Some(id), &out)
        } else {
            self.outcome(XDP_REDIRECT, Counter::Redirect, info, Some(id), &out)
        }
    }

    /// `lb_decap` on one frame, step by step.
    pub fn lb_decap(&mut self, frame: &[u8]) -> Outcome {
        let not_tunnel = |s: &mut Self| s.pass(Counter::DecapPassNotTunnel, frame);
        // Step 1: an untagged IPv4/IPv6 outer header carrying protocol 4 or 41.
        let Some(eth) = get(frame, 0, 14) else {
            return not_tunnel(self);
        };
        let (olen, proto, fragment, osrc, odst) = match be16(eth, 12) {
            ETH_P_IPV4 => {
                let Some(h) = get(frame, 14, 20) else {
                    return not_tunnel(self);
                };
                let ihl = (h[0] & 0x0f) as usize * 4;
                if h[0] >> 4 != 4 || ihl < 20 || get(frame, 14, ihl).is_none() {
                    return not_tunnel(self);
                }
                (ihl, h[9], be16(h, 6) & 0x3fff != 0, &h[12..16], &h[16..20])
            }
            ETH_P_IPV6 => {
                let Some(h) = get(frame, 14, 40) else {
                    return not_tunnel(self);
                };
                if h[0] >> 4 != 6 {
                    return not_tunnel(self);
                }
                if h[6] == IPPROTO_IPV6_FRAG {
                    let Some(fh) = get(frame, 54, 8) else {
                        return not_tunnel(self);
                    };
                    (48, fh[0], true, &h[8..24], &h[24..40])
                } else {
                    (40, h[6], false, &h[8..24], &h[24..40])
                }
            }
            _ => return not_tunnel(self),
        };
        if proto != IPPROTO_IPIP && proto != IPPROTO_IPV6 {
            return not_tunnel(self);
        }
        let addr = |a: &[u8]| AddrKey {
            addr: words(a),
            family: family_of(a),
            _pad: [0; 3],
        };
        // Step 2: for this host.
        if !self.decap_local.contains(&addr(odst)) {
            return not_tunnel(self);
        }
        // Step 3: not a fragment; step 4: from a balancer.
        if fragment {
            return self.drop(Counter::DecapDropFragment, Vec::new(), None, frame);
        }
        if !self.decap_from.contains(&addr(osrc)) {
            return self.drop(Counter::DecapDropSource, Vec::new(), None, frame);
        }
        // Step 5: the inner header, and a VIP this backend serves.
        let inner_off = 14 + olen;
        let (ilen, dst_at, et) = if proto == IPPROTO_IPIP {
            (20, 16..20, ETH_P_IPV4)
        } else {
            (40, 24..40, ETH_P_IPV6)
        };
        let Some(inner) = get(frame, inner_off, ilen) else {
            return self.drop(Counter::DecapDropMalformed, Vec::new(), None, frame);
        };
        if !self.decap_vips.contains(&addr(&inner[dst_at])) {
            return self.pass(Counter::DecapPassNotVip, frame);
        }
        // Step 6: the outer header removed, the Ethernet addresses kept, the type set to the inner family.
        let mut out = frame[..12].to_vec();
        out.extend(et.to_be_bytes());
        out.extend(&frame[inner_off..]);
        self.pass(Counter::DecapOk, &out)
    }
}

/// Which step-7 path an entry (or its absence) and the usable backend it gave mean.
fn used_how(entry: Option<FlowState>, used: Option<BackendId>) -> FlowUse {
    match (entry, used) {
        (None, _) => FlowUse::Miss,
        (Some(_), Some(_)) => FlowUse::Hit,
        (Some(_), None) => FlowUse::Unusable,
    }
}

fn with_lookup(mut o: Outcome, lookup: Option<(FlowKey, Option<FlowState>, FlowUse)>) -> Outcome {
    if let Some((key, entry, how)) = lookup {
        o.looked_up = Some((key, entry));
        o.flow_use = Some(how);
    }
    o
}

/// The 3-tuple key: the flow key with its ports cleared.
fn three_tuple(k: &FlowKey) -> FlowKey {
    FlowKey {
        sport: 0,
        dport: 0,
        ..*k
    }
}

/// Steps 1 and 2: Ethernet, VLAN, the IP header, the IPv6 extension header walk.
fn parse(frame: &[u8]) -> Parsed<'_> {
    let Some(eth) = get(frame, 0, 14) else {
        return Parsed::Done(Counter::PassMalformed);
    };
    let mut et = be16(eth, 12);
    let mut off = 14;
    if et == ETH_P_8021AD {
        return Parsed::Done(Counter::PassUnsupported);
    }
    if et == ETH_P_8021Q {
        let Some(tag) = get(frame, 14, 4) else {
            return Parsed::Done(Counter::PassMalformed);
        };
        et = be16(tag, 2);
        off = 18;
        if et == ETH_P_8021Q || et == ETH_P_8021AD {
            return Parsed::Done(Counter::PassUnsupported);
        }
    }
    let avail = frame.len() - off;
    match et {
        ETH_P_IPV4 => {
            let Some(h) = get(frame, off, 20) else {
                return Parsed::Done(Counter::PassMalformed);
            };
            let ihl = (h[0] & 0x0f) as usize * 4;
            let total = be16(h, 2) as usize;
            if h[0] >> 4 != 4 || ihl < 20 || ihl > avail || total < ihl || total > avail {
                return Parsed::Done(Counter::PassMalformed);
            }
            let fo = be16(h, 6);
            Parsed::Ip(L3 {
                family: FAMILY_V4,
                off,
                end: off + total,
                src: &frame[off + 12..off + 16],
                dst: &frame[off + 16..off + 20],
                proto: h[9],
                l4: off + ihl,
                fragment: fo & 0x3fff != 0,
                chain_cut: false,
                df: fo & 0x4000 != 0,
            })
        }
        ETH_P_IPV6 => {
            let Some(h) = get(frame, off, 40) else {
                return Parsed::Done(Counter::PassMalformed);
            };
            let payload = be16(h, 4) as usize;
            if h[0] >> 4 != 6 || payload + 40 > avail {
                return Parsed::Done(Counter::PassMalformed);
            }
            let mut l3 = L3 {
                family: FAMILY_V6,
                off,
                end: off + 40 + payload,
                src: &frame[off + 8..off + 24],
                dst: &frame[off + 24..off + 40],
                proto: h[6],
                l4: off + 40,
                fragment: false,
                chain_cut: false,
                df: false,
            };
            walk_ipv6_extension_headers(frame, &mut l3);
            Parsed::Ip(l3)
        }
        _ => Parsed::Done(Counter::PassNotIp),
    }
}

/// Step 2's walk: "at most `IPV6_MAX_EXT_HEADERS` of them, each of which must lie before the IP end".
fn walk_ipv6_extension_headers(frame: &[u8], l3: &mut L3) {
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match l3.proto {
            IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING => {
                let len = match l3.within(frame, l3.l4, 2) {
                    Some(h) => (h[1] as usize + 1) * 8,
                    None => 8,
                };
                let Some(h) = l3.within(frame, l3.l4, len) else {
                    l3.chain_cut = true;
                    return;
                };
                // "Routing (43) with Segments Left ≠ 0: the walk stops there."
                if l3.proto == IPPROTO_ROUTING && h[3] != 0 {
                    return;
                }
                l3.proto = h[0];
                l3.l4 += len;
            }
            IPPROTO_IPV6_FRAG => {
                let Some(h) = l3.within(frame, l3.l4, 8) else {
                    l3.chain_cut = true;
                    return;
                };
                l3.proto = h[0];
                l3.l4 += 8;
                // "Offset 0 with M = 0 is an atomic fragment, which is not a fragment."
                if be16(h, 2) & 0xfff9 != 0 {
                    l3.fragment = true;
                    return;
                }
            }
            _ => return,
        }
    }
}

/// The echo reply of step 4: "Ethernet addresses swapped, IP source and destination swapped, TTL / hop limit 64
/// (the IPv4 header checksum updated), type 0 / 129 (the ICMP checksum updated incrementally). Everything else is
/// kept."
fn echo_reply(frame: &[u8], l3: &L3) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&frame[0..6]);
    let ip = l3.off;
    let (src, dst) = (l3.src.to_vec(), l3.dst.to_vec());
    let n = src.len();
    let (src_at, dst_at) = if l3.family == FAMILY_V4 {
        (ip + 12, ip + 16)
    } else {
        (ip + 8, ip + 24)
    };
    out[src_at..src_at + n].copy_from_slice(&dst);
    out[dst_at..dst_at + n].copy_from_slice(&src);
    let reply_type = if l3.family == FAMILY_V4 {
        // TTL and protocol form the header's fifth 16-bit word.
        let old = [out[ip + 8], out[ip + 9]];
        out[ip + 8] = 64;
        let check = rfc1624(
            [out[ip + 10], out[ip + 11]],
            old,
            [out[ip + 8], out[ip + 9]],
        );
        out[ip + 10..ip + 12].copy_from_slice(&check);
        0
    } else {
        out[ip + 7] = 64;
        129
    };
    let icmp = l3.l4;
    let old = [out[icmp], out[icmp + 1]];
    out[icmp] = reply_type;
    let check = rfc1624(
        [out[icmp + 2], out[icmp + 3]],
        old,
        [out[icmp], out[icmp + 1]],
    );
    out[icmp + 2..icmp + 4].copy_from_slice(&check);
    out
}

/// The ICMP fragmentation-needed / ICMPv6 packet-too-big answer to an over-MTU packet, as a whole frame: "source
/// the VIP, destination the client, Ethernet addresses swapped, VLAN tag kept, quoting as much of the original IP
/// packet (frame after the L2 header) as fits in 576 (IPv4) / 1280 (IPv6) bytes."
fn too_big_answer(frame: &[u8], l3: &L3, mtu: u32) -> Vec<u8> {
    let eth_dst: [u8; 6] = frame[6..12].try_into().unwrap();
    let eth_src: [u8; 6] = frame[0..6].try_into().unwrap();
    let vlan = (l3.off == 18).then(|| be16(frame, 14) & 0x0fff);
    let l2 = packets::L2 {
        src: eth_src,
        dst: eth_dst,
        vlan,
    };
    let orig = &frame[l3.off..];
    let ip = match (ip_of(l3.dst), ip_of(l3.src)) {
        (IpAddr::V4(vip), IpAddr::V4(client)) => {
            let q = &orig[..orig.len().min(576 - 28)];
            packets::icmp4_frag_needed(vip, client, mtu.min(u16::MAX as u32) as u16, q)
        }
        (IpAddr::V6(vip), IpAddr::V6(client)) => {
            let q = &orig[..orig.len().min(1280 - 48)];
            packets::icmp6_too_big(vip, client, mtu, q)
        }
        _ => unreachable!("one family"),
    };
    let mut out = packets::frame(&l2, &ip.bytes());
    // `packets::frame` writes the VLAN id only; the original tag's priority bits stay too.
    if vlan.is_some() {
        out[14..16].copy_from_slice(&frame[14..16]);
    }
    out
}
