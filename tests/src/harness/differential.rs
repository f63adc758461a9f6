//! The differential comparison: generated packets through the real program (BPF_PROG_TEST_RUN) and through the
//! reference model, which must agree on the verdict, the counters hit, the backend and the output bytes; the
//! program must never return `XDP_ABORTED`. The flow tables and the stats are compared at every checkpoint.
//!
//! The run cycles through segments, each with its own traffic and settings, while map changes (ring switches,
//! backend ids handed to another service, backends going inactive, new rate windows) happen between packets in
//! the kernel and the model alike:
//! - **mixed**: every mode and policy at once (the setup below), the MTU check with a small ICMP answer budget;
//! - **capped**: a new-flow cap, with a fresh window every few dozen packets;
//! - **churn**: many more flows than the flow table holds. The kernel's LRU then evicts entries in an order the
//!   model cannot know, so where the two disagree and the model used a flow entry, the model is run again without
//!   that entry: the kernel must match that ("the pinned backend or the ring's pick", and nothing else).
//!
//! Shared by tests/tests/differential.rs (a fixed seed, 100,000 packets, in CI) and `cargo xtask fuzz` (as many as
//! asked, reporting packets/s and the first divergence).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use lb_common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{case::*, oracle::*, rig::*, world::*};
use crate::harness::model::{FlowUse, ModelState, Outcome, action_name};
use crate::harness::packets::*;

/// The flow table: big enough that the mixed and capped segments (reset at every checkpoint) never evict, small
/// enough that a churn segment overflows it many times.
pub const FLOW_TABLE: u32 = 512;
/// Packets per segment.
const SEGMENT: usize = 6_000;
/// Mixed and capped segments compare the flow tables exactly and empty them this often.
const CHECKPOINT: usize = 1_000;
/// A map change happens with this probability before each packet.
const CHANGE_P: f64 = 0.004;
/// Capped segments open a fresh new-flow window this often, as the clock would.
const CAP_WINDOW: usize = 40;

const VIP6B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub seed: u64,
    pub packets: usize,
    /// Stop at the first divergence (the fuzzer) or collect up to a few (the test).
    pub max_mismatches: usize,
    /// Print a progress line this often.
    pub progress: Option<Duration>,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub packets: usize,
    pub kernel_runs: usize,
    /// Frames shorter than Ethernet: the model says `PassMalformed`, the kernel must refuse the test run.
    pub refused: usize,
    pub elapsed: Duration,
    /// (action, verdict counter) → packets, from the model (equal to the kernel's where nothing diverged).
    pub verdicts: BTreeMap<(u32, u32), usize>,
    /// Informational counters → packets.
    pub info: BTreeMap<u32, usize>,
    /// Step 7's flow-table paths → packets.
    pub flow_uses: BTreeMap<FlowUse, usize>,
    /// Churn packets where the kernel had evicted the entry the model used, and matched the model without it.
    pub evictions_accepted: usize,
    /// Entries the model still had at the end of a churn stretch and the kernel had evicted.
    pub evicted: usize,
    pub map_changes: usize,
    pub mismatches: Vec<String>,
}

impl Report {
    /// Packets that hit this verdict counter (any action).
    pub fn verdict(&self, c: Counter) -> usize {
        self.verdicts
            .iter()
            .filter(|((_, k), _)| *k == c as u32)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn info(&self, c: Counter) -> usize {
        self.info.get(&(c as u32)).copied().unwrap_or(0)
    }

    pub fn flow_use(&self, u: FlowUse) -> usize {
        self.flow_uses.get(&u).copied().unwrap_or(0)
    }

    /// One line per verdict and info counter, for the log.
    pub fn histogram(&self) -> String {
        let mut lines: Vec<String> = self
            .verdicts
            .iter()
            .map(|((a, c), n)| {
                format!(
                    "{}/{}={n}",
                    action_name(*a),
                    Counter::ALL[*c as usize].name()
                )
            })
            .collect();
        lines.extend(
            self.info
                .iter()
                .map(|(c, n)| format!("+{}={n}", Counter::ALL[*c as usize].name())),
        );
        lines.extend(
            self.flow_uses
                .iter()
                .map(|(u, n)| format!("flow {u:?}={n}")),
        );
        lines.push(format!("evictions accepted={}", self.evictions_accepted));
        lines.push(format!("evicted={}", self.evicted));
        lines.push(format!("map changes={}", self.map_changes));
        lines.join(", ")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Segment {
    Mixed,
    Capped,
    Churn,
}

const SCHEDULE: [Segment; 3] = [Segment::Mixed, Segment::Capped, Segment::Churn];

/// Every mode and policy at once; rings mix families, a gateway, an unroutable and an empty entry; some VIPs' rings
/// name backends another service owns (their flow entries are never usable).
pub fn setup() -> Setup {
    let s = |addr: IpAddr, port, proto, id, flags, ring: &[BackendId]| {
        VipSpec::new(addr, port, proto, id, flags, ring)
    };
    let mut st = Setup::new(vec![
        s(
            v4(VIP4),
            80,
            IPPROTO_TCP,
            0,
            0,
            &[1, 2, 3, 5, 6, 1, 2, 3, 5, 6, 1, 2, 7],
        ),
        s(
            v4(VIP4),
            53,
            IPPROTO_UDP,
            1,
            VIP_F_L2DSR,
            &[1, 2, 3, 1, 2, 3, 4],
        ),
        s(
            v4(VIP4),
            0,
            IPPROTO_UDP,
            2,
            VIP_F_FRAG_ONLY | VIP_F_FRAG_HASH3,
            &[1, 2, 3, 1, 2, 3, 1],
        ),
        s(v4(VIP4), 0, IPPROTO_TCP, 3, VIP_F_FRAG_ONLY, &[1]),
        s(v4(VIP4B), 0, IPPROTO_TCP, 4, 0, &[1, 2, 0, 8, 9, 4, 5]),
        s(v6(VIP6), 443, IPPROTO_TCP, 5, 0, &[4, 5, 10, 1, 4, 5, 10]),
        s(
            v6(VIP6),
            53,
            IPPROTO_UDP,
            6,
            VIP_F_FRAG_HASH3,
            &[4, 5, 4, 5, 4],
        ),
        s(
            v6(VIP6B),
            80,
            IPPROTO_TCP,
            7,
            VIP_F_L2DSR,
            &[4, 5, 1, 4, 5, 4, 5],
        ),
    ]);
    // An inactive backend that rings still name: flows on it move, ring picks still use it.
    st.set_backend(
        3,
        Backend {
            flags: 0,
            ..st.backend(3)
        },
    );
    st.config = config(Segment::Mixed);
    st
}

fn config(seg: Segment) -> GlobalConfig {
    let mut c = base_config();
    match seg {
        Segment::Mixed => {
            c.mtu = 1400;
            c.flags = CFG_F_ICMP_TOO_BIG;
            c.icmp_answer_cap = 8;
        }
        Segment::Capped => {
            c.new_flow_cap = 5;
            c.mtu = 1400;
        }
        Segment::Churn => {}
    }
    c
}

/// A non-VIP address whose filter bit is a VIP address's: it takes the hash-map lookups, which must miss.
fn filter_twin<A: Copy + PartialEq>(
    vip: A,
    candidates: impl Iterator<Item = A>,
    bit: impl Fn(A) -> u32,
) -> A {
    let want = bit(vip);
    candidates
        .filter(|a| *a != vip)
        .find(|a| bit(*a) == want)
        .expect("an address sharing the VIP's filter bit")
}

/// The packet generator.
pub struct Gen {
    rng: StdRng,
    twin4: Ipv4Addr,
    twin6: Ipv6Addr,
    churn: bool,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        let bit = |ip: IpAddr| hash::vip_filter_bit(&AddrKey::new(ip).addr);
        let twin4 = filter_twin(
            VIP4,
            (0..1u32 << 17).map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i)),
            |a| bit(v4(a)),
        );
        let twin6 = filter_twin(
            VIP6,
            (0..1u32 << 20)
                .map(|i| Ipv6Addr::new(0xfd00, 0x98, 0, 0, 0, 0, (i >> 16) as u16, i as u16)),
            |a| bit(v6(a)),
        );
        Gen {
            rng: StdRng::seed_from_u64(seed),
            twin4,
            twin6,
            churn: false,
        }
    }

    /// Which clients: a few (flows repeat and hit the flow table), now and then anyone (a first packet), and in
    /// churn segments a pool of 256 per service, more than the flow table holds over all services, so entries are
    /// evicted and then looked up again.
    fn pool(&mut self) -> Pool {
        if self.churn {
            Pool::Churn
        } else if self.rng.random_bool(0.1) {
            Pool::Anyone
        } else {
            Pool::Few
        }
    }
    fn client4(&mut self) -> Ipv4Addr {
        match self.pool() {
            Pool::Few => Ipv4Addr::new(198, 18, 100, self.rng.random_range(1..4)),
            Pool::Churn => Ipv4Addr::new(198, 18, 101, self.rng.random_range(0..32)),
            Pool::Anyone => Ipv4Addr::new(
                198,
                18,
                102 + self.rng.random_range(0..2),
                self.rng.random(),
            ),
        }
    }
    fn client6(&mut self) -> Ipv6Addr {
        match self.pool() {
            Pool::Few => Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, self.rng.random_range(1..4)),
            Pool::Churn => {
                Ipv6Addr::new(0xfd00, 0x101, 0, 0, 0, 0, 0, self.rng.random_range(0..32))
            }
            Pool::Anyone => Ipv6Addr::new(
                0xfd00,
                0x102,
                0,
                0,
                0,
                0,
                self.rng.random(),
                self.rng.random(),
            ),
        }
    }
    fn port(&mut self) -> u16 {
        match self.pool() {
            Pool::Few => 40000 + self.rng.random_range(0..4),
            Pool::Churn => 41000 + self.rng.random_range(0..8),
            Pool::Anyone => self.rng.random_range(1024..=65535),
        }
    }
    fn flags(&mut self) -> u8 {
        const COMMON: [u8; 11] = [
            TCP_SYN,
            TCP_ACK,
            TCP_SYN | TCP_ACK,
            TCP_ACK | TCP_PSH,
            TCP_RST,
            TCP_FIN | TCP_ACK,
            0,
            TCP_SYN | TCP_RST,
            TCP_SYN | TCP_FIN,
            TCP_SYN | TCP_FIN | TCP_ACK,
            TCP_SYN | TCP_PSH,
        ];
        if self.rng.random_bool(0.05) {
            self.rng.random()
        } else {
            COMMON[self.rng.random_range(0..COMMON.len())]
        }
    }
    fn payload(&mut self) -> Vec<u8> {
        let n = match self.rng.random_range(0..10) {
            0 => self.rng.random_range(1300..1480),
            1..=3 => 0,
            _ => self.rng.random_range(1..200),
        };
        (0..n).map(|_| self.rng.random()).collect()
    }
    fn l2(&mut self) -> L2 {
        let l2 = L2::new(CLIENT_MAC, LB0_MAC);
        if self.rng.random_bool(0.15) {
            l2.vlan(self.rng.random_range(1..4095))
        } else {
            l2
        }
    }
    fn vip4(&mut self) -> Ipv4Addr {
        match self.rng.random_range(0..10) {
            0..=6 => VIP4,
            7 | 8 => VIP4B,
            _ => self.twin4,
        }
    }
    fn vip6(&mut self) -> Ipv6Addr {
        match self.rng.random_range(0..10) {
            0..=5 => VIP6,
            6..=8 => VIP6B,
            _ => self.twin6,
        }
    }
    /// Mostly the VIP's own port, sometimes any of the others (port 0 among them).
    fn dport_or(&mut self, usual: u16) -> u16 {
        if self.rng.random_bool(0.7) {
            usual
        } else {
            self.dport()
        }
    }
    fn dport(&mut self) -> u16 {
        [80, 53, 443, 8080, 81, 0, 12345][self.rng.random_range(0..7)]
    }

    /// IPv6 extension headers: none mostly; otherwise up to five of hop-by-hop, destination options and routing
    /// (usually finished, sometimes with segments left), and now and then an atomic fragment header.
    fn ext6(&mut self, mut ip: Ip) -> Ip {
        if !self.rng.random_bool(0.25) {
            return ip;
        }
        for _ in 0..self.rng.random_range(1..=5) {
            let pad = self.rng.random_range(0..3) * 8;
            let mut body = vec![1, 4 + pad as u8, 0, 0, 0, 0];
            body.extend(std::iter::repeat_n(0, pad));
            ip = match self.rng.random_range(0..6) {
                0 | 1 => ip.with_ext(IPPROTO_HOPOPTS, &body),
                2 | 3 => ip.with_ext(IPPROTO_DSTOPTS, &body),
                4 => ip.with_ext(IPPROTO_ROUTING, &[4, 0, 0, 0, 0, 0]),
                _ => ip.with_ext(
                    IPPROTO_ROUTING,
                    &[4, self.rng.random_range(1..4), 0, 0, 0, 0],
                ),
            };
        }
        if ip.frag.is_none() && self.rng.random_bool(0.2) {
            ip = ip.with_frag(0, false);
        }
        ip
    }

    /// A valid IP packet of some kind.
    fn ip(&mut self) -> Ip {
        let r = self.rng.random_range(0..100);
        let mut ip = match r {
            0..=24 => {
                let (c, d, dp, f, p) = (
                    self.client4(),
                    self.vip4(),
                    self.dport_or(80),
                    self.flags(),
                    self.payload(),
                );
                Ip::tcp(v4(c), self.port(), v4(d), dp, f).payload(&p)
            }
            25..=34 => {
                let (c, d, dp, p) = (self.client4(), VIP4, self.dport_or(53), self.payload());
                Ip::udp(v4(c), self.port(), v4(d), dp, &p)
            }
            35..=54 => {
                let d = self.vip6();
                let (c, dp, f, p) = (
                    self.client6(),
                    self.dport_or(if d == VIP6 { 443 } else { 80 }),
                    self.flags(),
                    self.payload(),
                );
                let ip = Ip::tcp(v6(c), self.port(), v6(d), dp, f).payload(&p);
                self.ext6(ip)
            }
            55..=62 => {
                let (c, d, dp, p) = (self.client6(), VIP6, self.dport_or(53), self.payload());
                let ip = Ip::udp(v6(c), self.port(), v6(d), dp, &p);
                self.ext6(ip)
            }
            63..=70 => self.fragment(),
            71..=82 => self.icmp(),
            _ => {
                // Not for a VIP, or another protocol to a VIP address.
                let c = self.client4();
                let dst = match self.rng.random_range(0..4) {
                    0 | 1 => VIP4,
                    2 => self.twin4,
                    _ => Ipv4Addr::new(198, 18, 0, self.rng.random()),
                };
                let proto = [6, 17, 1, 47, 132][self.rng.random_range(0..5)];
                let bytes: Vec<u8> = (0..self.rng.random_range(0..60))
                    .map(|_| self.rng.random())
                    .collect();
                Ip::new(v4(c), v4(dst), L4::Raw { proto, bytes })
            }
        };
        if ip.is_v4() && self.rng.random_bool(0.1) {
            let n = self.rng.random_range(1..=40);
            ip = ip.with_options(&(0..n).map(|_| 1u8).collect::<Vec<_>>());
        }
        if ip.is_v4() && self.rng.random_bool(0.2) {
            ip = ip.no_df();
        }
        if self.rng.random_bool(0.1) {
            // A cut L4 header inside consistent IP lengths: reaches the L4 checks instead of failing at IP.
            let bytes = ip.l4.bytes(ip.src, ip.dst);
            let n = self.rng.random_range(0..bytes.len().clamp(1, 28));
            ip.l4 = L4::Raw {
                proto: ip.l4.proto(),
                bytes: bytes[..n].to_vec(),
            };
        }
        ip
    }

    fn fragment(&mut self) -> Ip {
        let p = self.payload();
        let (offset, more) = (self.rng.random_range(0..3) * 8, self.rng.random_bool(0.5));
        let ip = if self.rng.random_bool(0.5) {
            let (c, d, dp) = (self.client4(), self.vip4(), self.dport());
            if self.rng.random_bool(0.5) {
                Ip::udp(v4(c), self.port(), v4(d), dp, &p)
            } else {
                Ip::tcp(v4(c), self.port(), v4(d), dp, TCP_ACK).payload(&p)
            }
            .no_df()
        } else {
            let (c, d, dp) = (self.client6(), self.vip6(), self.dport());
            let ip = if self.rng.random_bool(0.5) {
                Ip::udp(v6(c), self.port(), v6(d), dp, &p)
            } else {
                Ip::tcp(v6(c), self.port(), v6(d), dp, TCP_ACK).payload(&p)
            };
            self.ext6(ip)
        };
        ip.with_frag(offset, more || offset == 0)
    }

    fn icmp(&mut self) -> Ip {
        let (sport, dport) = (self.dport(), self.port());
        let rest = [0, 1, 0, self.rng.random(), b'p', b'i', b'n', b'g'];
        if self.rng.random_bool(0.5) {
            let (vip, c) = (self.vip4(), self.client4());
            let reply = if self.rng.random_bool(0.7) {
                Ip::tcp(v4(vip), sport, v4(c), dport, TCP_ACK)
                    .payload(&[0; 100])
                    .bytes()
            } else {
                Ip::udp(v4(vip), sport, v4(c), dport, &[0; 100]).bytes()
            };
            let q = self.rng.random_range(20..reply.len());
            let dst = if self.rng.random_bool(0.9) {
                vip
            } else {
                VIP4B
            };
            match self.rng.random_range(0..6) {
                0 | 1 => icmp4(c, dst, 8, 0, &rest),
                2 => icmp4(c, dst, [3, 11, 0][self.rng.random_range(0..3)], 1, &[0; 4]),
                _ => icmp4_frag_needed("198.18.9.9".parse().unwrap(), dst, 1400, &reply[..q]),
            }
        } else {
            let (vip, c) = (self.vip6(), self.client6());
            let reply = if self.rng.random_bool(0.6) {
                Ip::tcp(v6(vip), sport, v6(c), dport, TCP_ACK)
                    .payload(&[0; 100])
                    .bytes()
            } else {
                // VIP6:53 is a FRAG_HASH3 VIP: its too-bigs take the 3-tuple path.
                let sport = if self.rng.random_bool(0.5) { 53 } else { sport };
                Ip::udp(v6(vip), sport, v6(c), dport, &[0; 100]).bytes()
            };
            let q = self.rng.random_range(40..reply.len());
            let ip = match self.rng.random_range(0..6) {
                0 | 1 => icmp6(c, vip, 128, 0, &rest),
                2 => icmp6(
                    c,
                    vip,
                    [1, 3, 135][self.rng.random_range(0..3)],
                    0,
                    &[0; 20],
                ),
                _ => icmp6_too_big("fd00:9::9".parse().unwrap(), vip, 1400, &reply[..q]),
            };
            self.ext6(ip)
        }
    }

    /// A frame: mostly IP, some encapsulated (for `lb_decap`), some other ethertypes; then maybe mutated.
    pub fn frame(&mut self) -> Vec<u8> {
        let l2 = self.l2();
        let mut f = match self.rng.random_range(0..100) {
            0..=79 => frame(&l2, &self.ip().bytes()),
            80..=91 => self.tunnel(&l2),
            92..=95 => arp_request(&l2, CLIENT4, VIP4),
            _ => {
                let et = [ETH_P_8021AD, ETH_P_8021Q, 0x88cc, 0x0800, 0x86dd]
                    [self.rng.random_range(0..5)];
                let body: Vec<u8> = (0..self.rng.random_range(0..80))
                    .map(|_| self.rng.random())
                    .collect();
                eth(&l2, et, &body)
            }
        };
        match self.rng.random_range(0..20) {
            0..=2 => {
                let n = self.rng.random_range(0..=f.len());
                f.truncate(n);
            }
            3..=8 => self.flip(&mut f),
            9 => {
                self.flip(&mut f);
                let n = self.rng.random_range(0..=f.len());
                f.truncate(n);
            }
            10 => {
                // Ethernet padding, sometimes looking like the headers it follows.
                let pad: Vec<u8> = (0..self.rng.random_range(1..30))
                    .map(|_| self.rng.random())
                    .collect();
                f.extend(pad);
            }
            _ => {}
        }
        f
    }

    /// A tunnel packet for `lb_decap`: from a balancer or a stranger, to this host or not, sometimes fragmented.
    fn tunnel(&mut self, l2: &L2) -> Vec<u8> {
        let inner = self.ip().bytes();
        let outer = if self.rng.random_bool(0.5) {
            let dst = if self.rng.random_bool(0.8) {
                ENCAP_SRC_V4
            } else {
                Ipv4Addr::new(198, 18, 0, 99)
            };
            let src = if self.rng.random_bool(0.85) {
                TUNNEL_FROM_V4
            } else {
                Ipv4Addr::new(198, 18, 66, 6)
            };
            let proto = if ethertype_of(&inner) == ETH_P_IPV4 {
                4
            } else {
                41
            };
            let mut ip = Ip::new(
                v4(src),
                v4(dst),
                L4::Raw {
                    proto,
                    bytes: inner,
                },
            );
            if self.rng.random_bool(0.05) {
                ip = ip.no_df().with_frag(self.rng.random_range(0..2), true);
            }
            ip.bytes()
        } else {
            let dst = if self.rng.random_bool(0.8) {
                ENCAP_SRC_V6
            } else {
                "fd00::99".parse().unwrap()
            };
            let src = if self.rng.random_bool(0.85) {
                TUNNEL_FROM_V6
            } else {
                "fd00:66::6".parse().unwrap()
            };
            let proto = if ethertype_of(&inner) == ETH_P_IPV4 {
                4
            } else {
                41
            };
            let mut ip = Ip::new(
                v6(src),
                v6(dst),
                L4::Raw {
                    proto,
                    bytes: inner,
                },
            );
            if self.rng.random_bool(0.05) {
                ip = ip.with_frag(0, true);
            }
            ip.bytes()
        };
        frame(l2, &outer)
    }

    /// Flips 1–3 bits, mostly in the headers.
    fn flip(&mut self, f: &mut [u8]) {
        if f.is_empty() {
            return;
        }
        for _ in 0..self.rng.random_range(1..=3) {
            let limit = if self.rng.random_bool(0.8) {
                f.len().min(100)
            } else {
                f.len()
            };
            let i = self.rng.random_range(0..limit);
            f[i] ^= 1 << self.rng.random_range(0..8);
        }
    }

    /// A map change between packets, as the daemon makes them: a ring switch, a backend entry rewritten (its id
    /// handed to another service, made inactive or active, cleared), or a fresh rate window.
    fn change(&mut self, setup: &Setup, seg: Segment) -> Change {
        match self.rng.random_range(0..10) {
            0..=2 => {
                let v = &setup.vips[self.rng.random_range(0..setup.vips.len())];
                let len = v.ring.len();
                let ring = (0..len)
                    .map(|_| {
                        if self.rng.random_bool(0.05) {
                            0
                        } else {
                            self.rng.random_range(1..=10)
                        }
                    })
                    .collect();
                Change::Step(Step::Ring(v.key, ring))
            }
            3..=6 => {
                let id = self.rng.random_range(1..=10);
                let owner = setup.vips[self.rng.random_range(0..setup.vips.len())].vip_id;
                let b = match self.rng.random_range(0..4) {
                    0 => Backend::default(),
                    1 => Backend::new(backend_ip(id), owner, 0),
                    _ => Backend::new(backend_ip(id), owner, BACKEND_F_ACTIVE),
                };
                Change::Step(Step::Backend(id, b))
            }
            _ => {
                let limit = if seg == Segment::Mixed {
                    RateLimit::IcmpAnswers
                } else {
                    RateLimit::NewFlows
                };
                Change::Window(limit, self.rng.random_range(0..4))
            }
        }
    }
}

enum Pool {
    Few,
    Churn,
    Anyone,
}

enum Change {
    Step(Step),
    Window(RateLimit, u64),
}

/// The model's effects of one packet that a re-run must undo: everything but the flow table, which the packet
/// changes in at most the one entry it looked up.
struct Undo {
    counters: std::collections::HashMap<u32, u64>,
    vip_stats: std::collections::HashMap<u32, VipStats>,
    backend_stats: std::collections::HashMap<BackendId, BackendStats>,
    window_count: [u64; RATE_LIMIT_COUNT as usize],
}

impl Undo {
    fn of(m: &ModelState) -> Undo {
        Undo {
            counters: m.counters.clone(),
            vip_stats: m.vip_stats.clone(),
            backend_stats: m.backend_stats.clone(),
            window_count: m.window_count,
        }
    }
    fn restore(self, m: &mut ModelState) {
        m.counters = self.counters;
        m.vip_stats = self.vip_stats;
        m.backend_stats = self.backend_stats;
        m.window_count = self.window_count;
    }
}

/// Runs the comparison; the rig is made here (the calling thread enters its namespace until the run ends).
pub fn run(opts: Options) -> Report {
    let mut rig = Rig::with_sizes(
        "diff",
        lb_userspace::dataplane::MapSizes {
            flow_table_size: FLOW_TABLE,
            ..SIZES
        },
    );
    let mut setup = setup();
    rig.apply(&setup);
    let mut gen_ = Gen::new(opts.seed);
    let mut report = Report::default();
    let start = Instant::now();
    let mut last_progress = start;
    let mut seg = Segment::Mixed;
    let mut stats0 = stats_snapshot(&rig, &setup);
    for i in 0..opts.packets {
        if i % SEGMENT == 0 {
            if i > 0 {
                checkpoint(&mut rig, &setup, seg, i, &stats0, &mut report);
            }
            seg = SCHEDULE[(i / SEGMENT) % SCHEDULE.len()];
            gen_.churn = seg == Segment::Churn;
            setup.config = config(seg);
            rig.step(&Step::Config(setup.config));
            for limit in [RateLimit::NewFlows, RateLimit::IcmpAnswers] {
                rig.set_window(limit, 0);
            }
            stats0 = stats_snapshot(&rig, &setup);
        } else if seg != Segment::Churn && i % CHECKPOINT == 0 {
            checkpoint(&mut rig, &setup, seg, i, &stats0, &mut report);
            stats0 = stats_snapshot(&rig, &setup);
        }
        if seg == Segment::Capped && i % CAP_WINDOW == 0 {
            rig.set_window(RateLimit::NewFlows, 0);
        }
        if gen_.rng.random_bool(CHANGE_P) {
            report.map_changes += 1;
            match gen_.change(&setup, seg) {
                Change::Step(s) => rig.step(&s),
                Change::Window(limit, n) => rig.set_window(limit, n),
            }
        }
        let f = gen_.frame();
        let prog = if i % 5 == 4 {
            programs::DECAP
        } else {
            programs::LB
        };
        report.packets += 1;
        if let Some(e) = one_packet(&mut rig, prog, &f, seg == Segment::Churn, &mut report) {
            report.mismatches.push(format!(
                "seed {:#x} packet {i} ({seg:?} segment) through {prog}:\n{e}",
                opts.seed
            ));
            if report.mismatches.len() >= opts.max_mismatches {
                break;
            }
            // Resynchronise so one divergence does not cascade through the flow table.
            rig.reset_flows();
        }
        if let Some(every) = opts.progress
            && last_progress.elapsed() >= every
        {
            last_progress = Instant::now();
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "fuzz: {} packets in {secs:.0} s ({:.0} packets/s), seed {:#x}, {} divergences",
                i + 1,
                (i + 1) as f64 / secs,
                opts.seed,
                report.mismatches.len()
            );
        }
    }
    if report.mismatches.is_empty() {
        checkpoint(&mut rig, &setup, seg, opts.packets, &stats0, &mut report);
        totals(&rig, &mut report);
    }
    report.elapsed = start.elapsed();
    report
}

/// One packet through the model and the kernel; `Some(description)` when they disagree.
fn one_packet(
    rig: &mut Rig,
    prog: &str,
    f: &[u8],
    churn: bool,
    report: &mut Report,
) -> Option<String> {
    let undo = churn.then(|| Undo::of(&rig.model));
    let (mut m, mc) = rig.model_run(prog, f);
    if f.len() < MIN_TEST_RUN_LEN {
        report.refused += 1;
        count(report, &m);
        return match rig.test_run(prog, f) {
            Err(_) => None,
            Ok((action, _)) => Some(format!(
                "the kernel ran a {}-byte frame ({}); it must refuse frames shorter than Ethernet\n{}",
                f.len(),
                action_name(action),
                hex(f)
            )),
        };
    }
    report.kernel_runs += 1;
    let k = match rig.kernel(prog, f) {
        Ok(k) => k,
        Err(e) => return Some(format!("kernel error {e}\n{}", hex(f))),
    };
    if !agree(&k, &m, &mc) {
        // The kernel may have evicted the entry the model used: then it matches the model without that entry.
        if let (Some(undo), Some((key, Some(entry)))) = (undo, m.looked_up) {
            undo.restore(&mut rig.model);
            rig.model.flows.remove(&key);
            let (m2, mc2) = rig.model_run(prog, f);
            if agree(&k, &m2, &mc2) {
                report.evictions_accepted += 1;
                m = m2;
            } else {
                rig.model.flows.insert(key, entry);
                return Some(describe(&k, &m, &mc, f));
            }
        } else {
            return Some(describe(&k, &m, &mc, f));
        }
    }
    count(report, &m);
    None
}

fn count(report: &mut Report, m: &Outcome) {
    *report
        .verdicts
        .entry((m.action, m.counter as u32))
        .or_default() += 1;
    for c in &m.info {
        *report.info.entry(*c as u32).or_default() += 1;
    }
    if let Some(u) = m.flow_use {
        *report.flow_uses.entry(u).or_default() += 1;
    }
}

fn agree(k: &KernelRun, m: &Outcome, mc: &[(Counter, u64)]) -> bool {
    let same_frame = m.action == XDP_DROP || k.frame == m.frame;
    let same_backend = m.action == XDP_PASS || k.backend == m.backend;
    k.action != XDP_ABORTED
        && k.action == m.action
        && k.counters == mc
        && same_frame
        && same_backend
}

fn describe(k: &KernelRun, m: &Outcome, mc: &[(Counter, u64)], f: &[u8]) -> String {
    let same_frame = m.action == XDP_DROP || k.frame == m.frame;
    let diff = if same_frame {
        String::new()
    } else {
        compare_frame("KERNEL vs MODEL", &Out::Bytes(m.frame.clone()), f, &k.frame)
            .unwrap_or_default()
    };
    format!(
        "  kernel {} counters {:?} backend {:?}\n  model  {} counters {:?} backend {:?}\n{diff}\ninput ({} bytes):\n{}",
        action_name(k.action),
        k.counters,
        k.backend,
        action_name(m.action),
        mc,
        m.backend,
        f.len(),
        hex(f)
    )
}

/// Kernel and model VIP stats of every VIP, for per-segment deltas.
fn stats_snapshot(rig: &Rig, setup: &Setup) -> Vec<(VipStats, VipStats)> {
    setup
        .vips
        .iter()
        .map(|v| {
            (
                rig.dp.vip_stats(v.vip_id).expect("vip stats"),
                rig.model
                    .vip_stats
                    .get(&v.vip_id)
                    .copied()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// End of a stretch: the flow tables (exactly; in churn every kernel entry must be the model's) and the VIP stats
/// since `stats0` (in churn packets and bytes only: an entry the kernel evicted early turns the model's "unusable"
/// into the kernel's "miss", which counts `lru_misses`), then both flow tables emptied.
fn checkpoint(
    rig: &mut Rig,
    setup: &Setup,
    seg: Segment,
    at: usize,
    stats0: &[(VipStats, VipStats)],
    report: &mut Report,
) {
    let churn = seg == Segment::Churn;
    let kernel = rig.dp.flows(1 << 20).expect("read flows");
    let bad: Vec<_> = kernel
        .iter()
        .filter(|(k, s)| rig.model.flows.get(k) != Some(s))
        .take(5)
        .collect();
    let model_only = rig
        .model
        .flows
        .keys()
        .filter(|k| !kernel.iter().any(|(kk, _)| kk == *k))
        .count();
    if churn {
        report.evicted += model_only;
    }
    if !bad.is_empty() || (!churn && model_only > 0) {
        report.mismatches.push(format!(
            "flow tables after packet {at} ({seg:?}): kernel {} entries, model {}; kernel entries the model has \
             otherwise: {bad:?}; model entries the kernel lacks: {model_only}",
            kernel.len(),
            rig.model.flows.len()
        ));
    }
    for (v, (k0, m0)) in setup.vips.iter().zip(stats0) {
        let k1 = rig.dp.vip_stats(v.vip_id).expect("vip stats");
        let m1 = rig
            .model
            .vip_stats
            .get(&v.vip_id)
            .copied()
            .unwrap_or_default();
        let d = |a: &VipStats, b: &VipStats| {
            let full = [
                b.packets - a.packets,
                b.bytes - a.bytes,
                b.new_flows - a.new_flows,
                b.lru_misses - a.lru_misses,
            ];
            if churn {
                [full[0], full[1], 0, 0]
            } else {
                full
            }
        };
        if d(k0, &k1) != d(m0, &m1) {
            report.mismatches.push(format!(
                "VIP_STATS[{}] over the {seg:?} stretch before packet {at}: kernel {:?}, model {:?} \
                 (packets, bytes, new flows, LRU misses)",
                v.vip_id,
                d(k0, &k1),
                d(m0, &m1)
            ));
        }
    }
    rig.reset_flows();
}

/// Per-backend totals over the whole run.
fn totals(rig: &Rig, report: &mut Report) {
    for id in LAB_BACKENDS {
        let k = rig.dp.backend_stats(id).expect("backend stats");
        let m = rig
            .model
            .backend_stats
            .get(&id)
            .copied()
            .unwrap_or_default();
        if k != m {
            report.mismatches.push(format!(
                "BACKEND_STATS[{id}] totals: kernel {k:?}, model {m:?}"
            ));
        }
    }
}
