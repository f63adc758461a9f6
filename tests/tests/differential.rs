//! Differential test: random and mutated packets through the real program (BPF_PROG_TEST_RUN) and through the
//! reference model; they must agree on the verdict, the counter hit and the output bytes, and the program must
//! never return `XDP_ABORTED`. The flow table and the stats are compared periodically.
//!
//! Seed: fixed by default (printed); set `LB_DIFF_SEED` to replay or explore, `LB_DIFF_PACKETS` for the count.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use lb_common::*;
use lb_tests::fixtures::*;
use lb_tests::model::action_name;
use lb_tests::netns::skip_unless_root;
use lb_tests::packets::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEFAULT_SEED: u64 = 0x4c42_d1ff;
const DEFAULT_PACKETS: usize = 100_000;
/// Both flow tables are emptied this often, so the kernel's LRU never has to evict (the model has no LRU).
const FLOW_RESET_EVERY: usize = 8_000;
const MAX_REPORTED: usize = 8;

const VIP6B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

/// Every mode and policy at once; rings mix families, a gateway, an unroutable and an empty entry.
fn setup() -> Setup {
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
    // An inactive backend that rings still name: pinned flows move, ring picks still use it.
    st.set_backend(
        3,
        Backend {
            flags: 0,
            ..st.backend(3)
        },
    );
    st.config.mtu = 1400;
    st.config.flags = CFG_F_ICMP_TOO_BIG;
    st
}

struct Gen {
    rng: StdRng,
}

impl Gen {
    fn client4(&mut self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 100, self.rng.random_range(1..5))
    }
    fn client6(&mut self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, self.rng.random_range(1..5))
    }
    fn port(&mut self) -> u16 {
        40000 + self.rng.random_range(0..48)
    }
    fn flags(&mut self) -> u8 {
        [
            TCP_SYN,
            TCP_ACK,
            TCP_SYN | TCP_ACK,
            TCP_ACK | TCP_PSH,
            TCP_RST,
            TCP_FIN | TCP_ACK,
            0,
        ][self.rng.random_range(0..7)]
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
        if self.rng.random_bool(0.7) {
            VIP4
        } else {
            VIP4B
        }
    }
    fn vip6(&mut self) -> Ipv6Addr {
        if self.rng.random_bool(0.7) {
            VIP6
        } else {
            VIP6B
        }
    }
    /// Mostly the VIP's own port, sometimes any of the others.
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
                Ip::tcp(v6(c), self.port(), v6(d), dp, f).payload(&p)
            }
            55..=62 => {
                let (c, d, dp, p) = (self.client6(), VIP6, self.dport_or(53), self.payload());
                Ip::udp(v6(c), self.port(), v6(d), dp, &p)
            }
            63..=70 => self.fragment(),
            71..=80 => self.icmp(),
            _ => {
                // Not for a VIP, or another protocol to a VIP address.
                let c = self.client4();
                let dst = if self.rng.random_bool(0.5) {
                    VIP4
                } else {
                    Ipv4Addr::new(198, 18, 0, self.rng.random())
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
            if self.rng.random_bool(0.5) {
                Ip::udp(v6(c), self.port(), v6(d), dp, &p)
            } else {
                Ip::tcp(v6(c), self.port(), v6(d), dp, TCP_ACK).payload(&p)
            }
        };
        ip.with_frag(offset, more || offset == 0)
    }

    fn icmp(&mut self) -> Ip {
        let (sport, dport) = (self.dport(), self.port());
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
            match self.rng.random_range(0..4) {
                0 => icmp4(c, dst, 8, 0, &[0, 1, 0, 2]),
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
            match self.rng.random_range(0..4) {
                0 => icmp6(c, vip, 128, 0, &[0, 1, 0, 2]),
                _ => icmp6_too_big("fd00:9::9".parse().unwrap(), vip, 1400, &reply[..q]),
            }
        }
    }

    /// A frame: mostly IP, some encapsulated (for `lb_decap`), some other ethertypes; then maybe mutated.
    fn frame(&mut self) -> Vec<u8> {
        let l2 = self.l2();
        let mut f = match self.rng.random_range(0..100) {
            0..=79 => frame(&l2, &self.ip().bytes()),
            80..=91 => {
                let inner = self.ip().bytes();
                let outer = if self.rng.random_bool(0.5) {
                    let dst = if self.rng.random_bool(0.8) {
                        ENCAP_SRC_V4
                    } else {
                        Ipv4Addr::new(198, 18, 0, 99)
                    };
                    encap4("198.18.50.1".parse().unwrap(), dst, &inner)
                } else {
                    let dst = if self.rng.random_bool(0.8) {
                        ENCAP_SRC_V6
                    } else {
                        "fd00::99".parse().unwrap()
                    };
                    encap6("fd00:50::1".parse().unwrap(), dst, 1, &inner)
                };
                frame(&l2, &outer)
            }
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
            _ => {}
        }
        f
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
}

#[test]
fn program_matches_model() {
    if skip_unless_root("program_matches_model") {
        return;
    }
    let seed = std::env::var("LB_DIFF_SEED")
        .ok()
        .map(|s| {
            let s = s.trim_start_matches("0x");
            u64::from_str_radix(s, 16)
                .unwrap_or_else(|e| panic!("LB_DIFF_SEED {s:?} is not hex: {e}"))
        })
        .unwrap_or(DEFAULT_SEED);
    let count: usize = std::env::var("LB_DIFF_PACKETS")
        .ok()
        .map(|s| s.parse().expect("LB_DIFF_PACKETS"))
        .unwrap_or(DEFAULT_PACKETS);
    eprintln!("differential: seed {seed:#x} (LB_DIFF_SEED to replay), {count} packets");

    let mut rig = Rig::with_sizes("diff", DIFF_SIZES);
    let st = setup();
    rig.apply(&st);
    let mut gen_ = Gen {
        rng: StdRng::seed_from_u64(seed),
    };
    let start = Instant::now();
    let mut mismatches: Vec<String> = Vec::new();
    let mut verdicts: HashMap<(u32, u32), usize> = HashMap::new();
    let (mut kernel_runs, mut refused) = (0usize, 0usize);
    for i in 0..count {
        if i % FLOW_RESET_EVERY == FLOW_RESET_EVERY - 1 {
            if let Some(e) = rig.compare_flow_tables() {
                mismatches.push(format!("after packet {i}: {e}"));
            }
            rig.reset_flows();
        }
        let f = gen_.frame();
        let prog = if i % 5 == 4 {
            maps::PROG_DECAP
        } else {
            maps::PROG_LB
        };
        let (m, mc) = rig.model_run(prog, &f);
        *verdicts.entry((m.action, m.counter as u32)).or_default() += 1;
        if f.len() < MIN_TEST_RUN_LEN {
            refused += 1;
            continue;
        }
        kernel_runs += 1;
        let k = match rig.kernel(prog, &f) {
            Ok(k) => k,
            Err(e) => {
                mismatches.push(format!(
                    "packet {i} ({prog}): kernel error {e}\n{}",
                    hex(&f)
                ));
                break;
            }
        };
        let same_frame = matches!(m.action, XDP_DROP) || k.frame == m.frame;
        let same_backend = m.action == XDP_PASS || k.backend == m.backend;
        if k.action == XDP_ABORTED
            || k.action != m.action
            || k.counters != mc
            || !same_frame
            || !same_backend
        {
            let diff = compare_frame(
                "KERNEL vs MODEL",
                &Out::Bytes(m.frame.clone()),
                &f,
                &k.frame,
            )
            .unwrap_or_default();
            mismatches.push(format!(
                "seed {seed:#x} packet {i} through {prog}:\n  kernel {} counters {:?} backend {:?}\n  model  {} counters {:?} backend {:?}\n{}\ninput ({} bytes):\n{}",
                action_name(k.action),
                k.counters,
                k.backend,
                action_name(m.action),
                mc,
                m.backend,
                if same_frame { String::new() } else { diff },
                f.len(),
                hex(&f)
            ));
            if mismatches.len() >= MAX_REPORTED {
                break;
            }
            // Resynchronise so one divergence does not cascade through the flow table.
            rig.reset_flows();
        }
    }
    if let Some(e) = rig.compare_flow_tables() {
        mismatches.push(format!("at the end: {e}"));
    }
    // Stats: only meaningful when every packet agreed (a resync above does not undo a divergent count).
    if mismatches.is_empty() {
        for v in &st.vips {
            let k = rig.dp.vip_stats(v.vip_id).expect("vip stats");
            let m = rig
                .model
                .vip_stats
                .get(&v.vip_id)
                .copied()
                .unwrap_or_default();
            if k != m {
                mismatches.push(format!(
                    "VIP_STATS[{}] totals: kernel {k:?}, model {m:?}",
                    v.vip_id
                ));
            }
        }
        for id in LAB_BACKENDS {
            let k = rig.dp.backend_stats(id).expect("backend stats");
            let m = rig
                .model
                .backend_stats
                .get(&id)
                .copied()
                .unwrap_or_default();
            if k != m {
                mismatches.push(format!(
                    "BACKEND_STATS[{id}] totals: kernel {k:?}, model {m:?}"
                ));
            }
        }
    }
    let elapsed = start.elapsed();
    let mut v: Vec<_> = verdicts.into_iter().collect();
    v.sort_by_key(|(k, _)| *k);
    eprintln!(
        "differential: {count} packets ({kernel_runs} test runs, {refused} shorter than Ethernet: model only) in {:.1}s; verdicts {:?}",
        elapsed.as_secs_f64(),
        v.iter()
            .map(|((a, c), n)| format!(
                "{}/{}={n}",
                action_name(*a),
                Counter::ALL[*c as usize].name()
            ))
            .collect::<Vec<_>>()
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches (seed {seed:#x}):\n\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
}
