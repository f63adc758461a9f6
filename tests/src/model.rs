//! The reference model: docs/dataplane.md written as plain userspace Rust, the oracle of the fixture and
//! differential tests.
//!
//! Deliberately independent of `lb-ebpf`: it shares only `lb-common`'s types, constants and the flow hash (which are
//! the contract itself). It parses with ordinary slices, keeps its maps in `HashMap`s and mutates its flow table
//! and counters the way the kernel program must.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::hash::{flow_hash, ring_index};
use lb_common::*;

use crate::packets::{self, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6};

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
    /// Unexpired `LB_NEXTHOP_CACHE` entries a test planted: they win over the FIB until they expire (the model
    /// assumes they outlive the test; the FIB answers it caches itself are the same as `routes`).
    pub nexthop_cache: HashMap<BackendId, Route>,
    pub ingress_ifindex: u32,
    /// `LB_TX_PORTS`: the interfaces other than the ingress one the program may redirect to.
    pub tx_ports: HashSet<u32>,
    /// Inserts counted in the current new-flow window. The model assumes the window does not roll over during a
    /// test (tests that use the cap set the kernel's window explicitly).
    pub window_count: u64,
    pub decap_vips: HashSet<AddrKey>,
    pub decap_local: HashSet<AddrKey>,
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
    /// Left empty by the model; the fixture runner fills it with the flow table after the packet.
    pub flows_after: HashMap<FlowKey, FlowState>,
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

fn get(b: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    b.get(off..off.checked_add(len)?)
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

/// Wire bytes of an address as map words (IPv4 in the first word).
fn words(addr: &[u8]) -> AddrWords {
    let mut w = [0u32; 4];
    for (i, c) in addr.chunks_exact(4).enumerate() {
        w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

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

/// The parsed network layer of a frame.
struct L3<'a> {
    family: u8,
    /// Offset of the IP header in the frame.
    off: usize,
    src: &'a [u8],
    dst: &'a [u8],
    /// TCP/UDP/ICMP protocol (after an IPv6 fragment header).
    proto: u8,
    /// Offset of the L4 header in the frame.
    l4: usize,
    fragment: bool,
    /// IPv4 DF bit.
    df: bool,
}

enum Parsed<'a> {
    Done(Counter),
    Ip(L3<'a>),
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
            flows_after: HashMap::new(),
        }
    }

    fn pass(&mut self, counter: Counter, frame: &[u8]) -> Outcome {
        self.outcome(XDP_PASS, counter, Vec::new(), None, frame)
    }

    /// `lb_xdp` on one frame.
    pub fn lb_xdp(&mut self, frame: &[u8]) -> Outcome {
        let l3 = match parse(frame) {
            Parsed::Done(c) => return self.pass(c, frame),
            Parsed::Ip(l3) => l3,
        };
        let family = l3.family;
        if l3.fragment {
            let key = VipKey {
                addr: words(l3.dst),
                port: 0,
                proto: l3.proto,
                family,
            };
            let Some(meta) = self.vips.get(&key).copied() else {
                return self.pass(Counter::PassNotVip, frame);
            };
            self.vip_packet(&meta, frame.len());
            if meta.flags & VIP_F_FRAG_HASH3 == 0 {
                return self.outcome(XDP_DROP, Counter::DropFragment, Vec::new(), None, frame);
            }
            let fk = FlowKey {
                src: words(l3.src),
                dst: words(l3.dst),
                sport: 0,
                dport: 0,
                proto: l3.proto,
                family,
                _pad: [0; 2],
            };
            let hash = flow_hash(&fk);
            return match self.ring_pick(&meta, hash) {
                None => self.outcome(
                    XDP_DROP,
                    Counter::DropNoBackend,
                    vec![Counter::FragmentHashed],
                    None,
                    frame,
                ),
                Some(id) => {
                    self.forward(frame, &l3, &meta, id, hash, vec![Counter::FragmentHashed])
                }
            };
        }
        let is_icmp = (family == FAMILY_V4 && l3.proto == IPPROTO_ICMP)
            || (family == FAMILY_V6 && l3.proto == IPPROTO_ICMPV6);
        if is_icmp {
            return self.icmp(frame, &l3);
        }
        if l3.proto != IPPROTO_TCP && l3.proto != IPPROTO_UDP {
            return self.pass(Counter::PassNotVip, frame);
        }
        let Some(ports) = get(frame, l3.l4, 4) else {
            return self.pass(Counter::PassMalformed, frame);
        };
        let (sport, dport) = (raw16(ports, 0), raw16(ports, 2));
        let Some(meta) = self.find_vip(words(l3.dst), dport, l3.proto, family) else {
            return self.pass(Counter::PassNotVip, frame);
        };
        let l4_ok = match l3.proto {
            IPPROTO_TCP => get(frame, l3.l4, 20)
                .map(|t| t[12] >> 4)
                .is_some_and(|doff| doff >= 5 && get(frame, l3.l4, doff as usize * 4).is_some()),
            _ => get(frame, l3.l4, 8).is_some(),
        };
        if !l4_ok {
            return self.outcome(XDP_DROP, Counter::DropMalformed, Vec::new(), None, frame);
        }
        self.vip_packet(&meta, frame.len());
        let key = FlowKey {
            src: words(l3.src),
            dst: words(l3.dst),
            sport,
            dport,
            proto: l3.proto,
            family,
            _pad: [0; 2],
        };
        let mut info = Vec::new();
        let (id, hash) = if meta.flags & VIP_F_FRAG_HASH3 != 0 {
            let hash = flow_hash(&key.three_tuple());
            match self.ring_pick(&meta, hash) {
                Some(id) => (id, hash),
                None => return self.outcome(XDP_DROP, Counter::DropNoBackend, info, None, frame),
            }
        } else {
            let hash = flow_hash(&key);
            let syn = l3.proto == IPPROTO_TCP && frame[l3.l4 + 13] & 0x12 == 0x02;
            let hit = if syn {
                None
            } else {
                self.flows.get(&key).copied()
            };
            match hit {
                Some(st) if self.backend_active(st.backend_id) => (st.backend_id, hash),
                _ => {
                    if !syn && hit.is_none() {
                        self.vip_stats.entry(meta.vip_id).or_default().lru_misses += 1;
                    }
                    let Some(id) = self.ring_pick(&meta, hash) else {
                        return self.outcome(XDP_DROP, Counter::DropNoBackend, info, None, frame);
                    };
                    let cap = self.config.new_flow_cap as u64;
                    if cap > 0 && self.window_count >= cap {
                        info.push(Counter::NewFlowCapped);
                    } else {
                        self.window_count += 1;
                        self.flows.insert(
                            key,
                            FlowState {
                                backend_id: id,
                                vip_id: meta.vip_id,
                            },
                        );
                        self.vip_stats.entry(meta.vip_id).or_default().new_flows += 1;
                    }
                    (id, hash)
                }
            }
        };
        self.forward(frame, &l3, &meta, id, hash, info)
    }

    fn find_vip(&self, addr: AddrWords, port: u16, proto: u8, family: u8) -> Option<VipMeta> {
        if let Some(m) = self.vips.get(&VipKey {
            addr,
            port,
            proto,
            family,
        }) {
            return Some(*m);
        }
        self.vips
            .get(&VipKey {
                addr,
                port: 0,
                proto,
                family,
            })
            .filter(|m| m.flags & VIP_F_FRAG_ONLY == 0)
            .copied()
    }

    fn vip_packet(&mut self, meta: &VipMeta, len: usize) {
        let s = self.vip_stats.entry(meta.vip_id).or_default();
        s.packets += 1;
        s.bytes += len as u64;
    }

    fn backend_active(&self, id: BackendId) -> bool {
        self.backends
            .get(&id)
            .is_some_and(|b| b.flags & BACKEND_F_ACTIVE != 0)
    }

    /// `ring[hash]`: a usable backend id, or `None` for "no backend".
    fn ring_pick(&self, meta: &VipMeta, hash: u32) -> Option<BackendId> {
        let idx = ring_index(
            hash,
            meta.ring_slot,
            meta.ring_size,
            self.config.ring_stride,
        )?;
        let id = self.ring.get(&idx).copied().unwrap_or(BACKEND_ID_NONE);
        if id == BACKEND_ID_NONE {
            return None;
        }
        self.backends.get(&id).filter(|b| b.family != 0).map(|_| id)
    }

    fn icmp(&mut self, frame: &[u8], l3: &L3) -> Outcome {
        let Some(hdr) = get(frame, l3.l4, 8) else {
            return self.pass(Counter::PassMalformed, frame);
        };
        let too_big = match l3.family {
            FAMILY_V4 => hdr[0] == 3 && hdr[1] == 4,
            _ => hdr[0] == 2,
        };
        if !too_big {
            return self.pass(Counter::PassNotVip, frame);
        }
        let q = l3.l4 + 8;
        let (isrc, idst, iproto, il4) = match l3.family {
            FAMILY_V4 => {
                let Some(h) = get(frame, q, 20) else {
                    return self.pass(Counter::PassMalformed, frame);
                };
                let ihl = (h[0] & 0x0f) as usize * 4;
                if h[0] >> 4 != 4 || ihl < 20 || get(frame, q, ihl + 8).is_none() {
                    return self.pass(Counter::PassMalformed, frame);
                }
                (
                    &frame[q + 12..q + 16],
                    &frame[q + 16..q + 20],
                    h[9],
                    q + ihl,
                )
            }
            _ => {
                let Some(h) = get(frame, q, 48) else {
                    return self.pass(Counter::PassMalformed, frame);
                };
                if h[0] >> 4 != 6 {
                    return self.pass(Counter::PassMalformed, frame);
                }
                (&frame[q + 8..q + 24], &frame[q + 24..q + 40], h[6], q + 40)
            }
        };
        if isrc != l3.dst {
            return self.pass(Counter::PassNotVip, frame);
        }
        let (isport, idport) = (raw16(frame, il4), raw16(frame, il4 + 2));
        let Some(meta) = self.find_vip(words(isrc), isport, iproto, l3.family) else {
            return self.pass(Counter::PassNotVip, frame);
        };
        self.vip_packet(&meta, frame.len());
        let key = FlowKey {
            src: words(idst),
            dst: words(isrc),
            sport: idport,
            dport: isport,
            proto: iproto,
            family: l3.family,
            _pad: [0; 2],
        };
        let info = vec![Counter::IcmpSteered];
        let (id, hash) = if meta.flags & VIP_F_FRAG_HASH3 != 0 {
            let hash = flow_hash(&key.three_tuple());
            (self.ring_pick(&meta, hash), hash)
        } else {
            let hash = flow_hash(&key);
            match self.flows.get(&key).copied() {
                Some(st) if self.backend_active(st.backend_id) => (Some(st.backend_id), hash),
                _ => (self.ring_pick(&meta, hash), hash),
            }
        };
        match id {
            None => self.outcome(XDP_DROP, Counter::DropNoBackend, info, None, frame),
            Some(id) => self.forward(frame, l3, &meta, id, hash, info),
        }
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
        let l2_len = l3.off;
        if meta.flags & VIP_F_L2DSR != 0 {
            if be.family != l3.family {
                return self.outcome(XDP_DROP, Counter::DropNoBackend, info, Some(id), frame);
            }
            let Some(r) = self.next_hop(id, be_ip) else {
                return self.outcome(XDP_DROP, Counter::DropNoRoute, info, Some(id), frame);
            };
            let mut out = frame.to_vec();
            out[0..6].copy_from_slice(&r.dmac);
            out[6..12].copy_from_slice(&r.smac);
            return self.emit(out, r, info, id);
        }
        let inner_len = frame.len() - l2_len;
        let overhead = if be.family == FAMILY_V4 { 20 } else { 40 };
        let mtu = self.config.mtu as usize;
        if mtu > 0 && inner_len + overhead > mtu {
            let l4_proto = l3.proto == IPPROTO_TCP || l3.proto == IPPROTO_UDP;
            let answer = self.config.flags & CFG_F_ICMP_TOO_BIG != 0
                && l4_proto
                && (l3.family == FAMILY_V6 || l3.df);
            if !answer {
                return self.outcome(XDP_DROP, Counter::DropOverMtu, info, Some(id), frame);
            }
            let out = too_big_answer(frame, l3, (mtu - overhead) as u32);
            return self.outcome(XDP_TX, Counter::IcmpTooBigSent, info, Some(id), &out);
        }
        let Some(r) = self.next_hop(id, be_ip) else {
            return self.outcome(XDP_DROP, Counter::DropNoRoute, info, Some(id), frame);
        };
        let inner = &frame[l2_len..];
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

    fn next_hop(&self, id: BackendId, addr: IpAddr) -> Option<Route> {
        self.nexthop_cache
            .get(&id)
            .or_else(|| self.routes.get(&addr))
            .copied()
    }

    fn emit(&mut self, out: Vec<u8>, r: Route, info: Vec<Counter>, id: BackendId) -> Outcome {
        if r.ifindex == self.ingress_ifindex {
            self.outcome(XDP_TX, Counter::Tx, info, Some(id), &out)
        } else if !self.tx_ports.contains(&r.ifindex) {
            self.outcome(XDP_DROP, Counter::DropNoRoute, info, Some(id), &out)
        } else {
            self.outcome(XDP_REDIRECT, Counter::Redirect, info, Some(id), &out)
        }
    }

    /// `lb_decap` on one frame.
    pub fn lb_decap(&mut self, frame: &[u8]) -> Outcome {
        let not_tunnel = |s: &mut Self| {
            s.outcome(
                XDP_PASS,
                Counter::DecapPassNotTunnel,
                Vec::new(),
                None,
                frame,
            )
        };
        let Some(eth) = get(frame, 0, 14) else {
            return not_tunnel(self);
        };
        let (ohl, proto, odst): (usize, u8, &[u8]) = match be16(eth, 12) {
            ETH_P_IPV4 => {
                let Some(h) = get(frame, 14, 20) else {
                    return not_tunnel(self);
                };
                let ihl = (h[0] & 0x0f) as usize * 4;
                if h[0] >> 4 != 4 || ihl < 20 || get(frame, 14, ihl).is_none() {
                    return not_tunnel(self);
                }
                (ihl, h[9], &h[16..20])
            }
            ETH_P_IPV6 => {
                let Some(h) = get(frame, 14, 40) else {
                    return not_tunnel(self);
                };
                if h[0] >> 4 != 6 {
                    return not_tunnel(self);
                }
                (40, h[6], &h[24..40])
            }
            _ => return not_tunnel(self),
        };
        if proto != IPPROTO_IPIP && proto != IPPROTO_IPV6 {
            return not_tunnel(self);
        }
        let local = AddrKey {
            addr: words(odst),
            family: if odst.len() == 4 {
                FAMILY_V4
            } else {
                FAMILY_V6
            },
            _pad: [0; 3],
        };
        if !self.decap_local.contains(&local) {
            return not_tunnel(self);
        }
        let inner_off = 14 + ohl;
        let (ilen, ifam, et) = if proto == IPPROTO_IPIP {
            (20, FAMILY_V4, ETH_P_IPV4)
        } else {
            (40, FAMILY_V6, ETH_P_IPV6)
        };
        let Some(inner) = get(frame, inner_off, ilen) else {
            return self.outcome(
                XDP_DROP,
                Counter::DecapDropMalformed,
                Vec::new(),
                None,
                frame,
            );
        };
        let idst = if ifam == FAMILY_V4 {
            &inner[16..20]
        } else {
            &inner[24..40]
        };
        let vip = AddrKey {
            addr: words(idst),
            family: ifam,
            _pad: [0; 3],
        };
        if !self.decap_vips.contains(&vip) {
            return self.outcome(XDP_PASS, Counter::DecapPassNotVip, Vec::new(), None, frame);
        }
        let mut out = frame[..12].to_vec();
        out.extend(et.to_be_bytes());
        out.extend(&frame[inner_off..]);
        self.outcome(XDP_PASS, Counter::DecapOk, Vec::new(), None, &out)
    }
}

/// Steps 1–2: Ethernet, VLAN, IP headers.
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
                src: &frame[off + 12..off + 16],
                dst: &frame[off + 16..off + 20],
                proto: h[9],
                l4: off + ihl,
                fragment: fo & 0x3fff != 0,
                df: fo & 0x4000 != 0,
            })
        }
        ETH_P_IPV6 => {
            let Some(h) = get(frame, off, 40) else {
                return Parsed::Done(Counter::PassMalformed);
            };
            if h[0] >> 4 != 6 || be16(h, 4) as usize + 40 > avail {
                return Parsed::Done(Counter::PassMalformed);
            }
            let (mut proto, mut l4, mut fragment) = (h[6], off + 40, false);
            match proto {
                IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => {}
                IPPROTO_IPV6_FRAG => {
                    let Some(fh) = get(frame, l4, 8) else {
                        return Parsed::Done(Counter::PassMalformed);
                    };
                    proto = fh[0];
                    l4 += 8;
                    fragment = true;
                }
                _ => return Parsed::Done(Counter::PassUnsupported),
            }
            Parsed::Ip(L3 {
                family: FAMILY_V6,
                off,
                src: &frame[off + 8..off + 24],
                dst: &frame[off + 24..off + 40],
                proto,
                l4,
                fragment,
                df: false,
            })
        }
        _ => Parsed::Done(Counter::PassNotIp),
    }
}

/// The ICMP fragmentation-needed / ICMPv6 packet-too-big answer to an over-MTU packet, as a whole frame.
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
            packets::icmp4_frag_needed(vip, client, mtu as u16, q)
        }
        (IpAddr::V6(vip), IpAddr::V6(client)) => {
            let q = &orig[..orig.len().min(1280 - 48)];
            packets::icmp6_too_big(vip, client, mtu.max(1280), q)
        }
        _ => unreachable!("one family"),
    };
    let mut out = packets::frame(&l2, &ip.bytes());
    // `eth` writes the VLAN id only; the original tag's priority bits stay too.
    if vlan.is_some() {
        out[14..16].copy_from_slice(&frame[14..16]);
    }
    out
}
