//! Fixture tests: the real `lb-ebpf` object under BPF_PROG_TEST_RUN, inside a private namespace with a real FIB,
//! against hand-written expectations per docs/dataplane.md (and against the reference model, see
//! `lb_tests::harness`: world, case, rig, oracle). One test function per area, so nextest runs them as separate processes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::hash::flow_hash;
use lb_common::*;
use lb_tests::harness::model::Route;
use lb_tests::harness::netns::skip_unless_root;
use lb_tests::harness::packets::*;
use lb_tests::harness::{case::*, oracle::*, rig::*, world::*};

fn l2in() -> L2 {
    L2::new(CLIENT_MAC, LB0_MAC)
}

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

fn tcp4(sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Ip {
    Ip::tcp(v4(CLIENT4), sport, v4(dst), dport, flags).payload(b"GET / HTTP/1.1\r\n\r\n")
}

fn tcp6(sport: u16, dport: u16, flags: u8) -> Ip {
    Ip::tcp(v6(CLIENT6), sport, v6(VIP6), dport, flags).payload(b"hello")
}

fn key_of(ip: &Ip) -> FlowKey {
    let (sport, dport) = match &ip.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => (*sport, *dport),
        L4::Raw { .. } => (0, 0),
    };
    FlowKey::new(ip.src, sport, ip.dst, dport, ip.l4.proto())
}

/// Where the lab's FIB sends a backend: (source MAC, destination MAC).
fn macs(be: BackendId) -> ([u8; 6], [u8; 6]) {
    match be {
        6 => (LB0_MAC, GW_MAC),
        10 => (LB0_MAC, GW6_MAC),
        7 => (LB1_MAC, be_mac(7)),
        n => (LB0_MAC, be_mac(n as u8)),
    }
}

/// The frame the balancer sends to backend `be` for an inbound IP packet (+ padding) `inner`.
fn encap_out(be: BackendId, hash: u32, inner: &[u8]) -> Vec<u8> {
    let (smac, dmac) = macs(be);
    let outer = match backend_ip(be) {
        IpAddr::V4(d) => encap4(ENCAP_SRC_V4, d, inner),
        IpAddr::V6(d) => encap6(ENCAP_SRC_V6, d, hash & 0xfffff, inner),
    };
    frame(&L2::new(smac, dmac), &outer)
}

fn ring_pick(ring: &[BackendId], hash: u32) -> BackendId {
    ring[(hash % ring.len() as u32) as usize]
}

const RING3: [BackendId; 7] = [1, 2, 3, 1, 2, 3, 1];

fn vip(addr: IpAddr, port: u16, proto: u8, id: u32, flags: u32, ring: &[BackendId]) -> VipSpec {
    VipSpec::new(addr, port, proto, id, flags, ring)
}

/// Checks every case against the model (always), then in a fresh rig against the kernel (as root); fails with
/// every mismatch.
fn run(tag: &str, cases: Vec<Case>) {
    let model_failures = check_model(&cases);
    assert!(
        model_failures.is_empty(),
        "the model misses {} expectations:\n\n{}",
        model_failures.len(),
        model_failures.join("\n\n")
    );
    if skip_unless_root(tag) {
        return;
    }
    let mut rig = Rig::new(tag);
    let mut failures = Vec::new();
    let mut packets = 0;
    for case in &cases {
        packets += case
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Packet(_)))
            .count();
        failures.extend(rig.run_case(case));
    }
    eprintln!(
        "{tag}: {} cases, {packets} packet fixtures, {} test runs",
        cases.len(),
        rig.packets_run
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases' steps failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn steering() {
    let mut cases = Vec::new();
    let web = vip(v4(VIP4), 80, IPPROTO_TCP, 1, 0, &RING3);

    // A new TCP flow goes to the ring's backend and is remembered; after the ring changes an established packet
    // stays, and a new SYN of the same 5-tuple re-picks from the new ring.
    let syn = tcp4(40000, VIP4, 80, TCP_SYN);
    let k = key_of(&syn);
    let h = flow_hash(&k);
    let first = ring_pick(&RING3, h);
    let other = if first == 1 { 2 } else { 1 };
    let ack = tcp4(40000, VIP4, 80, TCP_ACK | TCP_PSH);
    let syn_f = frame(&l2in(), &syn.bytes());
    let ack_f = frame(&l2in(), &ack.bytes());
    cases.push(Case::new(
        "flow table keeps a flow across a ring change; SYN re-picks",
        Setup::new(vec![web.clone()]),
        vec![
            Step::Packet(
                Pkt::tx(
                    "new SYN",
                    syn_f.clone(),
                    first,
                    encap_out(first, h, &syn.bytes()),
                )
                .flow(k, Some(first)),
            ),
            Step::Ring(web.key, vec![other; 7]),
            Step::Packet(Pkt::tx(
                "established after ring change",
                ack_f.clone(),
                first,
                encap_out(first, h, &ack.bytes()),
            )),
            Step::Packet(
                Pkt::tx(
                    "SYN again re-picks",
                    syn_f.clone(),
                    other,
                    encap_out(other, h, &syn.bytes()),
                )
                .flow(k, Some(other)),
            ),
        ],
    ));

    // Non-SYN miss: ring + insert (lru_misses counted, checked against the model).
    cases.push(Case::one(
        Setup::new(vec![web.clone()]),
        Pkt::tx(
            "established packet without flow entry",
            ack_f.clone(),
            first,
            encap_out(first, h, &ack.bytes()),
        )
        .flow(k, Some(first)),
    ));

    // Pinned to an inactive backend: re-picked from the ring, entry overwritten.
    let mut s = Setup::new(vec![vip(v4(VIP4), 80, IPPROTO_TCP, 1, 0, &[3; 7])]);
    s.flows.push((k, FlowState::new(&k, 2)));
    s.set_backend(
        2,
        Backend {
            flags: 0,
            ..s.backend(2)
        },
    );
    cases.push(Case::one(
        s,
        Pkt::tx(
            "flow on inactive backend re-picked",
            ack_f.clone(),
            3,
            encap_out(3, h, &ack.bytes()),
        )
        .flow(k, Some(3)),
    ));

    // Pinned to an active backend not in the ring: stays.
    let mut s = Setup::new(vec![vip(v4(VIP4), 80, IPPROTO_TCP, 1, 0, &[3; 7])]);
    s.flows.push((k, FlowState::new(&k, 6)));
    cases.push(Case::one(
        s,
        Pkt::tx(
            "flow via gateway backend",
            ack_f.clone(),
            6,
            encap_out(6, h, &ack.bytes()),
        )
        .flow(k, Some(6)),
    ));

    // A backend marked inactive mid-flow.
    cases.push(Case::new(
        "backend goes inactive",
        Setup::new(vec![vip(v4(VIP4), 80, IPPROTO_TCP, 1, 0, &[1; 7])]),
        vec![
            Step::Packet(Pkt::tx(
                "new",
                syn_f.clone(),
                1,
                encap_out(1, h, &syn.bytes()),
            )),
            Step::Backend(1, Backend::new(backend_ip(1), 1, 0)),
            Step::Ring(web.key, vec![2; 7]),
            Step::Packet(
                Pkt::tx("re-picked", ack_f.clone(), 2, encap_out(2, h, &ack.bytes()))
                    .flow(k, Some(2)),
            ),
        ],
    ));

    // UDP.
    let udp = Ip::udp(v4(CLIENT4), 5353, v4(VIP4), 53, b"dns query");
    let hu = flow_hash(&key_of(&udp));
    cases.push(Case::one(
        Setup::new(vec![vip(v4(VIP4), 53, IPPROTO_UDP, 2, 0, &[3; 7])]),
        Pkt::tx(
            "UDP",
            frame(&l2in(), &udp.bytes()),
            3,
            encap_out(3, hu, &udp.bytes()),
        )
        .flow(key_of(&udp), Some(3)),
    ));

    // IPv6 VIP to an IPv6 backend (IP6IP6, flow label from the hash).
    let s6 = tcp6(40001, 443, TCP_SYN);
    let h6 = flow_hash(&key_of(&s6));
    cases.push(Case::one(
        Setup::new(vec![vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[4; 7])]),
        Pkt::tx(
            "IPv6 VIP, IP6IP6",
            frame(&l2in(), &s6.bytes()),
            4,
            encap_out(4, h6, &s6.bytes()),
        )
        .flow(key_of(&s6), Some(4)),
    ));
    // An established flow's label is its entry's hash, not a hash of the packet: the program hashes nothing on an
    // established packet. (An entry lbd or the program wrote holds the flow's hash; this one is set apart on
    // purpose, so a recomputed label would show.)
    let a6 = tcp6(40001, 443, TCP_ACK);
    let mut s = Setup::new(vec![vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[5; 7])]);
    s.flows.push((
        key_of(&a6),
        FlowState {
            backend_id: 4,
            hash: 0xabcde,
        },
    ));
    cases.push(Case::one(
        s,
        Pkt::tx(
            "established IPv6 flow: label from the entry",
            frame(&l2in(), &a6.bytes()),
            4,
            encap_out(4, 0xabcde, &a6.bytes()),
        )
        .flow(key_of(&a6), Some(4)),
    ));
    cases.push(Case::one(
        Setup::new(vec![vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[10; 7])]),
        Pkt::tx(
            "IPv6 VIP, backend via v6 gateway",
            frame(&l2in(), &s6.bytes()),
            10,
            encap_out(10, h6, &s6.bytes()),
        ),
    ));
    // Cross-family encapsulation both ways.
    cases.push(Case::one(
        Setup::new(vec![web_with(&[5; 7])]),
        Pkt::tx(
            "IPv4 VIP to IPv6 backend",
            syn_f.clone(),
            5,
            encap_out(5, h, &syn.bytes()),
        ),
    ));
    cases.push(Case::one(
        Setup::new(vec![vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[2; 7])]),
        Pkt::tx(
            "IPv6 VIP to IPv4 backend",
            frame(&l2in(), &s6.bytes()),
            2,
            encap_out(2, h6, &s6.bytes()),
        ),
    ));

    // L2 DSR: only the MACs change (a VLAN tag stays).
    let dsr = vip(v4(VIP4), 80, IPPROTO_TCP, 1, VIP_F_L2DSR, &[2; 7]);
    let mut want = syn_f.clone();
    want[0..6].copy_from_slice(&be_mac(2));
    want[6..12].copy_from_slice(&LB0_MAC);
    cases.push(Case::one(
        Setup::new(vec![dsr.clone()]),
        Pkt::tx("L2 DSR", syn_f.clone(), 2, want),
    ));
    let tagged = frame(&l2in().vlan(42), &syn.bytes());
    let mut want = tagged.clone();
    want[0..6].copy_from_slice(&be_mac(2));
    want[6..12].copy_from_slice(&LB0_MAC);
    cases.push(Case::one(
        Setup::new(vec![dsr]),
        Pkt::tx("L2 DSR keeps the VLAN tag", tagged.clone(), 2, want),
    ));
    cases.push(Case::one(
        Setup::new(vec![vip(
            v4(VIP4),
            80,
            IPPROTO_TCP,
            1,
            VIP_F_L2DSR,
            &[4; 7],
        )]),
        Pkt::drop(
            "L2 DSR to a backend of the other family",
            syn_f.clone(),
            Counter::DropNoBackend,
        )
        .backend(4),
    ));

    // Port-0 VIP matches every port of its protocol only; a FRAG_ONLY port-0 entry matches none.
    let any = vip(v4(VIP4B), 0, IPPROTO_TCP, 4, 0, &[1; 7]);
    let p = tcp4(40002, VIP4B, 12345, TCP_SYN);
    let hp = flow_hash(&key_of(&p));
    cases.push(Case::one(
        Setup::new(vec![any.clone()]),
        Pkt::tx(
            "port-0 VIP",
            frame(&l2in(), &p.bytes()),
            1,
            encap_out(1, hp, &p.bytes()),
        ),
    ));
    let u = Ip::udp(v4(CLIENT4), 1, v4(VIP4B), 12345, b"x");
    cases.push(Case::one(
        Setup::new(vec![any]),
        Pkt::drop(
            "port-0 TCP VIP, UDP packet",
            frame(&l2in(), &u.bytes()),
            Counter::DropNotServed,
        ),
    ));
    cases.push(Case::one(
        Setup::new(vec![vip(
            v4(VIP4B),
            0,
            IPPROTO_TCP,
            4,
            VIP_F_FRAG_ONLY,
            &[1; 7],
        )]),
        Pkt::drop(
            "FRAG_ONLY entry is not a wildcard",
            frame(&l2in(), &p.bytes()),
            Counter::DropNotServed,
        ),
    ));

    // Not for a service: passed when the address is not a VIP's, dropped when it is (the kernel would route it
    // back upstream).
    let host = Ip::tcp(
        v4(CLIENT4),
        40000,
        "198.18.0.1".parse().unwrap(),
        22,
        TCP_SYN,
    );
    cases.push(Case::one(
        Setup::new(vec![web.clone()]),
        Pkt::pass(
            "non-VIP TCP",
            frame(&l2in(), &host.bytes()),
            Counter::PassNotVip,
        ),
    ));
    let other_port = tcp4(40000, VIP4, 81, TCP_SYN);
    cases.push(Case::one(
        Setup::new(vec![web.clone()]),
        Pkt::drop(
            "VIP address, other port",
            frame(&l2in(), &other_port.bytes()),
            Counter::DropNotServed,
        ),
    ));
    let arp = arp_request(&L2::new(CLIENT_MAC, [0xff; 6]), CLIENT4, VIP4);
    cases.push(Case::one(
        Setup::new(vec![web.clone()]),
        Pkt::pass("ARP", arp, Counter::PassNotIp),
    ));
    let gre = Ip::new(
        v4(CLIENT4),
        v4(VIP4),
        L4::Raw {
            proto: 47,
            bytes: vec![0; 8],
        },
    );
    cases.push(Case::one(
        Setup::new(vec![web.clone()]),
        Pkt::drop(
            "GRE to a VIP address",
            frame(&l2in(), &gre.bytes()),
            Counter::DropNotServed,
        ),
    ));

    // VLAN-tagged VIP packet: encapsulated untagged.
    cases.push(Case::one(
        Setup::new(vec![web_with(&[1; 7])]),
        Pkt::tx(
            "VLAN tag removed by encapsulation",
            tagged,
            1,
            encap_out(1, h, &syn.bytes()),
        ),
    ));

    // IPv4 options are carried inside the tunnel.
    let opt = tcp4(40000, VIP4, 80, TCP_SYN).with_options(&[1, 1, 7, 7, 4, 0, 0, 0, 0]);
    cases.push(Case::one(
        Setup::new(vec![web_with(&[1; 7])]),
        Pkt::tx(
            "IPv4 options",
            frame(&l2in(), &opt.bytes()),
            1,
            encap_out(1, h, &opt.bytes()),
        ),
    ));

    // Ethernet padding is carried along (inner length = frame length - L2).
    let small = Ip::udp(v4(CLIENT4), 5353, v4(VIP4), 53, b"");
    let mut padded = frame(&l2in(), &small.bytes());
    padded.resize(60, 0);
    let mut inner = padded[14..].to_vec();
    inner.truncate(46);
    cases.push(Case::one(
        Setup::new(vec![vip(v4(VIP4), 53, IPPROTO_UDP, 2, 0, &[1; 7])]),
        Pkt::tx(
            "Ethernet padding carried",
            padded,
            1,
            encap_out(1, flow_hash(&key_of(&small)), &inner),
        ),
    ));

    // Egress on another port: XDP_REDIRECT through the devmap.
    let mut red = Pkt::tx(
        "redirect to the second port",
        syn_f.clone(),
        7,
        encap_out(7, h, &syn.bytes()),
    );
    red.action = XDP_REDIRECT;
    red.counter = Counter::Redirect;
    cases.push(Case::one(Setup::new(vec![web_with(&[7; 7])]), red));

    let mut s = Setup::new(vec![web_with(&[7; 7])]);
    s.no_redirect_port = true;
    cases.push(Case::one(
        s,
        Pkt::drop(
            "egress port missing from LB_TX_PORTS",
            syn_f.clone(),
            Counter::DropNoRoute,
        )
        .backend(7),
    ));

    // No route, no neighbour, no backend.
    cases.push(Case::one(
        Setup::new(vec![web_with(&[8; 7])]),
        Pkt::drop("no route", syn_f.clone(), Counter::DropNoRoute).backend(8),
    ));
    cases.push(Case::one(
        Setup::new(vec![web_with(&[9; 7])]),
        Pkt::drop("no neighbour", syn_f.clone(), Counter::DropNoRoute).backend(9),
    ));
    cases.push(Case::one(
        Setup::new(vec![web_with(&[0; 7])]),
        Pkt::drop("empty ring", syn_f.clone(), Counter::DropNoBackend),
    ));
    cases.push(Case::one(
        Setup::new(vec![web_with(&[20; 7])]),
        Pkt::drop(
            "ring names an unset backend",
            syn_f.clone(),
            Counter::DropNoBackend,
        ),
    ));

    // The next-hop cache: an unexpired entry is used without asking the FIB (even for an unroutable backend),
    // an expired one is not.
    const CACHED: [u8; 6] = [0x02, 0, 0, 0, 0xca, 0xfe];
    let cached = Route {
        smac: LB0_MAC,
        dmac: CACHED,
        ifindex: 0,
    };
    let with_cache = |be: BackendId, valid_ns: u64| {
        let mut s = Setup::new(vec![web_with(&[be; 7])]);
        s.nexthop.push((be, Some(cached), valid_ns));
        s
    };
    let via_cache = |be: BackendId| {
        let mut f = encap_out(be, h, &syn.bytes());
        f[0..6].copy_from_slice(&CACHED);
        f
    };
    cases.push(Case::one(
        with_cache(1, 10_000_000_000),
        Pkt::tx("next hop from the cache", syn_f.clone(), 1, via_cache(1)),
    ));
    cases.push(Case::one(
        with_cache(8, 10_000_000_000),
        Pkt::tx(
            "cached next hop of an unroutable backend",
            syn_f.clone(),
            8,
            via_cache(8),
        ),
    ));
    cases.push(Case::one(
        with_cache(1, 0),
        Pkt::tx(
            "expired cache entry: FIB again",
            syn_f.clone(),
            1,
            encap_out(1, h, &syn.bytes()),
        ),
    ));

    // New-flow cap reached: forwarded by the ring, not inserted.
    let mut s = Setup::new(vec![web_with(&[1; 7])]);
    s.config.new_flow_cap = 3;
    s.windows.push(new_flows_taken(3, false));
    cases.push(Case::one(
        s,
        Pkt::tx(
            "new-flow cap reached",
            syn_f.clone(),
            1,
            encap_out(1, h, &syn.bytes()),
        )
        .info(Counter::NewFlowCapped)
        .flow(k, None),
    ));
    let mut s = Setup::new(vec![web_with(&[1; 7])]);
    s.config.new_flow_cap = 3;
    s.windows.push(new_flows_taken(2, false));
    cases.push(Case::one(
        s,
        Pkt::tx(
            "new-flow cap not yet reached",
            syn_f.clone(),
            1,
            encap_out(1, h, &syn.bytes()),
        )
        .flow(k, Some(1)),
    ));

    let mut s = Setup::new(vec![web_with(&[1; 7])]);
    s.config.new_flow_cap = 3;
    s.windows.push(new_flows_taken(3, true));
    cases.push(Case::one(
        s,
        Pkt::tx(
            "new-flow window over: a fresh one",
            syn_f.clone(),
            1,
            encap_out(1, h, &syn.bytes()),
        )
        .flow(k, Some(1)),
    ));
    let mut s = Setup::new(vec![
        web_with(&[1; 7]),
        vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[4; 7]),
    ]);
    s.config.new_flow_cap = 1;
    cases.push(Case::new(
        "second new flow in a window of cap 1",
        s,
        vec![
            Step::Packet(
                Pkt::tx(
                    "first new flow",
                    syn_f.clone(),
                    1,
                    encap_out(1, h, &syn.bytes()),
                )
                .flow(k, Some(1)),
            ),
            Step::Packet(
                Pkt::tx(
                    "second new flow capped",
                    frame(&l2in(), &s6.bytes()),
                    4,
                    encap_out(4, h6, &s6.bytes()),
                )
                .info(Counter::NewFlowCapped)
                .flow(key_of(&s6), None),
            ),
        ],
    ));

    // A FRAG_HASH3 VIP is stateless: every packet by the 3-tuple, no flow entry.
    let h3 = flow_hash(&k.three_tuple());
    let b3 = ring_pick(&RING3, h3);
    cases.push(Case::one(
        Setup::new(vec![vip(
            v4(VIP4),
            80,
            IPPROTO_TCP,
            1,
            VIP_F_FRAG_HASH3,
            &RING3,
        )]),
        Pkt::tx(
            "FRAG_HASH3 VIP, unfragmented",
            syn_f.clone(),
            b3,
            encap_out(b3, h3, &syn.bytes()),
        )
        .flow(k, None),
    ));

    // Port 0 of a VIP address is a service only where a port-0 service exists: the fragment-only entries that
    // port-specific services carry never match an unfragmented packet, not even one sent to port 0.
    let port0 = || {
        Setup::new(vec![
            web.clone(),
            vip(v4(VIP4), 0, IPPROTO_TCP, 2, VIP_F_FRAG_ONLY, &RING3),
            vip(v4(VIP4), 53, IPPROTO_UDP, 3, 0, &RING3),
            vip(v4(VIP4), 0, IPPROTO_UDP, 4, VIP_F_FRAG_ONLY, &RING3),
        ])
    };
    let syn0 = tcp4(40000, VIP4, 0, TCP_SYN);
    cases.push(Case::one(
        port0(),
        Pkt::drop(
            "SYN to port 0 of a port-80 service",
            frame(&l2in(), &syn0.bytes()),
            Counter::DropNotServed,
        )
        .flow(key_of(&syn0), None),
    ));
    let udp0 = Ip::udp(v4(CLIENT4), 5353, v4(VIP4), 0, b"q");
    cases.push(Case::one(
        port0(),
        Pkt::drop(
            "UDP to port 0 of a port-53 service",
            frame(&l2in(), &udp0.bytes()),
            Counter::DropNotServed,
        ),
    ));

    // A flow entry is used only while its backend belongs to the service: an id that was freed and handed to
    // another service does not carry this service's flow there.
    let other_service = vip(v4(VIP4B), 80, IPPROTO_TCP, 2, 0, &[2; 7]);
    let mut s = Setup::new(vec![web_with(&[1; 7]), other_service]);
    assert_eq!(
        s.backend(2).vip_id,
        2,
        "backend 2 belongs to the other service"
    );
    s.flows.push((k, FlowState::new(&k, 2)));
    cases.push(Case::one(
        s,
        Pkt::tx(
            "flow entry naming another service's backend: re-picked",
            ack_f.clone(),
            1,
            encap_out(1, h, &ack.bytes()),
        )
        .flow(k, Some(1)),
    ));
    cases.push(Case::new(
        "backend id reused by another service under an open flow",
        Setup::new(vec![web_with(&[1; 7])]),
        vec![
            Step::Packet(Pkt::tx(
                "new",
                syn_f.clone(),
                1,
                encap_out(1, h, &syn.bytes()),
            )),
            Step::Backend(1, Backend::new(backend_ip(3), 5, BACKEND_F_ACTIVE)),
            Step::Ring(web.key, vec![2; 7]),
            Step::Packet(
                Pkt::tx("re-picked", ack_f.clone(), 2, encap_out(2, h, &ack.bytes()))
                    .flow(k, Some(2)),
            ),
        ],
    ));

    // Only a SYN without ACK, RST and FIN opens a connection; SYN|RST and SYN|FIN keep the flow's backend.
    for (name, flags) in [
        ("SYN|RST keeps the flow's backend", TCP_SYN | TCP_RST),
        ("SYN|FIN keeps the flow's backend", TCP_SYN | TCP_FIN),
        ("SYN|ACK keeps the flow's backend", TCP_SYN | TCP_ACK),
    ] {
        let mut s = Setup::new(vec![web_with(&[2; 7])]);
        s.flows.push((k, FlowState::new(&k, 1)));
        let p = tcp4(40000, VIP4, 80, flags);
        cases.push(Case::one(
            s,
            Pkt::tx(
                name,
                frame(&l2in(), &p.bytes()),
                1,
                encap_out(1, h, &p.bytes()),
            )
            .flow(k, Some(1)),
        ));
    }
    let synfin = tcp4(40000, VIP4, 80, TCP_SYN | TCP_FIN);
    cases.push(Case::one(
        Setup::new(vec![web_with(&[2; 7])]),
        Pkt::tx(
            "SYN|FIN without a flow: a miss, ring and insert",
            frame(&l2in(), &synfin.bytes()),
            2,
            encap_out(2, h, &synfin.bytes()),
        )
        .flow(k, Some(2)),
    ));

    // Headers are read only before the IP end: Ethernet padding that happens to look like TCP is not a header.
    let padded = |ip: &[u8], fill: &[u8]| {
        let mut f = frame(&l2in(), ip);
        f.extend(fill);
        f
    };
    let hdr_only = Ip::new(
        v4(CLIENT4),
        v4(VIP4),
        L4::Raw {
            proto: 6,
            bytes: vec![],
        },
    )
    .bytes();
    let fake_tcp = &syn.bytes()[20..40];
    cases.push(Case::one(
        Setup::new(vec![web_with(&[1; 7])]),
        Pkt::drop(
            "TCP ports only in the Ethernet padding",
            padded(&hdr_only, fake_tcp),
            Counter::DropMalformed,
        ),
    ));
    let hdr6 = Ip::new(
        v6(CLIENT6),
        v6(VIP6),
        L4::Raw {
            proto: 6,
            bytes: vec![],
        },
    )
    .bytes();
    let fake_tcp6 = &tcp6(40001, 443, TCP_SYN).bytes()[40..60];
    cases.push(Case::one(
        Setup::new(vec![vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[4; 7])]),
        Pkt::drop(
            "IPv6 TCP header only after the payload length",
            padded(&hdr6, fake_tcp6),
            Counter::DropMalformed,
        ),
    ));
    let udp = Ip::udp(v4(CLIENT4), 5353, v4(VIP4), 53, b"");
    let mut udp_short = udp.bytes();
    udp_short[2..4].copy_from_slice(&26u16.to_be_bytes());
    let udp_short = {
        let mut ip = udp_short;
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip
    };
    cases.push(Case::one(
        Setup::new(vec![vip(v4(VIP4), 53, IPPROTO_UDP, 2, 0, &[3; 7])]),
        Pkt::drop(
            "UDP header cut by the IPv4 total length",
            frame(&l2in(), &udp_short),
            Counter::DropMalformed,
        ),
    ));
    cases.push(Case::one(
        Setup::new(vec![web_with(&[1; 7])]),
        Pkt::pass(
            "padding after a non-VIP header",
            padded(
                &Ip::new(
                    v4(CLIENT4),
                    "198.18.0.1".parse().unwrap(),
                    L4::Raw {
                        proto: 6,
                        bytes: vec![],
                    },
                )
                .bytes(),
                fake_tcp,
            ),
            Counter::PassNotVip,
        ),
    ));

    // IPv6 extension headers: hop-by-hop, destination options and a finished routing header are walked.
    let web6 = || Setup::new(vec![vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[4; 7])]);
    let ext_syn = |exts: &[(u8, &[u8])]| {
        let mut ip = tcp6(40001, 443, TCP_SYN);
        for (ty, body) in exts {
            ip = ip.with_ext(*ty, body);
        }
        ip
    };
    let h6 = flow_hash(&key_of(&tcp6(40001, 443, TCP_SYN)));
    let k6 = key_of(&tcp6(40001, 443, TCP_SYN));
    const PADN: &[u8] = &[1, 4, 0, 0, 0, 0];
    const ROUTING_DONE: &[u8] = &[4, 0, 0, 0, 0, 0];
    const ROUTING_LEFT: &[u8] = &[4, 2, 0, 0, 0, 0];
    for (name, exts) in [
        ("hop-by-hop, then TCP", vec![(0u8, PADN)]),
        (
            "destination options and a finished routing header, then TCP",
            vec![(60, PADN), (43, ROUTING_DONE)],
        ),
        (
            "four extension headers, then TCP",
            vec![(0, PADN), (60, PADN), (60, PADN), (60, PADN)],
        ),
    ] {
        let ip = ext_syn(&exts).bytes();
        cases.push(Case::one(
            web6(),
            Pkt::tx(name, frame(&l2in(), &ip), 4, encap_out(4, h6, &ip)).flow(k6, Some(4)),
        ));
    }
    for (name, exts, c) in [
        (
            "routing header with segments left",
            vec![(43u8, ROUTING_LEFT)],
            Counter::DropNotServed,
        ),
        (
            "five extension headers",
            vec![(0, PADN), (60, PADN), (60, PADN), (60, PADN), (60, PADN)],
            Counter::DropNotServed,
        ),
    ] {
        let ip = ext_syn(&exts).bytes();
        cases.push(Case::one(web6(), Pkt::drop(name, frame(&l2in(), &ip), c)));
    }
    let mut cut = ext_syn(&[(0, &[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])]).bytes();
    cut.truncate(40 + 8);
    cut[4..6].copy_from_slice(&8u16.to_be_bytes());
    cases.push(Case::one(
        web6(),
        Pkt::drop(
            "hop-by-hop header cut by the payload length",
            frame(&l2in(), &cut),
            Counter::DropMalformed,
        ),
    ));
    let to_host = Ip::tcp(
        v6(CLIENT6),
        40001,
        v6("fd00::1".parse().unwrap()),
        22,
        TCP_SYN,
    )
    .with_ext(0, PADN)
    .bytes();
    cases.push(Case::one(
        web6(),
        Pkt::pass(
            "hop-by-hop to the host",
            frame(&l2in(), &to_host),
            Counter::PassNotVip,
        ),
    ));

    // The next hop depends on the backend alone: a client whose source a policy rule routes elsewhere still sends
    // its L2 DSR packets to the backend's own MAC (the FIB is asked with the balancer's source).
    let policy = Ip::tcp(v4(POLICY_CLIENT4), 40000, v4(VIP4), 80, TCP_SYN);
    let pf = frame(&l2in(), &policy.bytes());
    let mut want = pf.clone();
    want[0..6].copy_from_slice(&be_mac(1));
    want[6..12].copy_from_slice(&LB0_MAC);
    cases.push(Case::one(
        Setup::new(vec![vip(
            v4(VIP4),
            80,
            IPPROTO_TCP,
            1,
            VIP_F_L2DSR,
            &[1; 7],
        )]),
        Pkt::tx("L2 DSR next hop is the client's too", pf, 1, want),
    ));

    run("steer", cases);
}

fn new_flows_taken(count: u64, expired: bool) -> WindowFill {
    WindowFill {
        limit: RateLimit::NewFlows,
        count,
        expired,
    }
}

fn web_with(ring: &[BackendId]) -> VipSpec {
    vip(v4(VIP4), 80, IPPROTO_TCP, 1, 0, ring)
}

#[test]
fn malformed_headers() {
    let setup = || {
        Setup::new(vec![
            web_with(&[1; 7]),
            vip(v4(VIP4), 53, IPPROTO_UDP, 2, 0, &[1; 7]),
            vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[4; 7]),
            vip(v6(VIP6), 53, IPPROTO_UDP, 5, 0, &[4; 7]),
        ])
    };
    let mut rows: Vec<Pkt> = Vec::new();
    let syn = tcp4(40000, VIP4, 80, TCP_SYN);
    let good = frame(&l2in(), &syn.bytes());

    // Ethernet and VLAN.
    rows.push(Pkt::pass(
        "13-byte frame",
        good[..13].to_vec(),
        Counter::PassMalformed,
    ));
    let mut vlan_short = eth(&l2in(), ETH_P_8021Q, &[0, 5]);
    rows.push(Pkt::pass(
        "VLAN tag cut",
        vlan_short.clone(),
        Counter::PassMalformed,
    ));
    vlan_short.extend([0x08]);
    rows.push(Pkt::pass(
        "VLAN tag cut (3 bytes)",
        vlan_short,
        Counter::PassMalformed,
    ));
    let mut qinq = eth(&l2in(), ETH_P_8021Q, &[0, 5]);
    qinq.extend(ETH_P_8021Q.to_be_bytes());
    qinq.extend(frame(&l2in().vlan(6), &syn.bytes())[14..].iter());
    rows.push(Pkt::pass("two 802.1Q tags", qinq, Counter::PassUnsupported));
    rows.push(Pkt::pass(
        "802.1ad outer tag",
        eth(
            &l2in(),
            ETH_P_8021AD,
            &frame(&l2in().vlan(6), &syn.bytes())[14..],
        ),
        Counter::PassUnsupported,
    ));
    let mut ad_in = eth(&l2in(), ETH_P_8021Q, &[0, 5]);
    ad_in.extend(ETH_P_8021AD.to_be_bytes());
    ad_in.extend(&syn.bytes());
    rows.push(Pkt::pass(
        "802.1Q then 802.1ad",
        ad_in,
        Counter::PassUnsupported,
    ));
    rows.push(Pkt::pass(
        "VLAN, then not IP",
        eth(&l2in().vlan(3), ETH_P_ARP, &[0; 28]),
        Counter::PassNotIp,
    ));

    // IPv4.
    let ip = syn.bytes();
    rows.push(Pkt::pass(
        "IPv4 header cut at 19",
        frame(&l2in(), &ip[..19]),
        Counter::PassMalformed,
    ));
    rows.push(Pkt::pass(
        "IPv4 header cut, VLAN",
        frame(&l2in().vlan(9), &ip[..10]),
        Counter::PassMalformed,
    ));
    let mut bad = ip.clone();
    bad[0] = 0x44;
    rows.push(Pkt::pass(
        "IPv4 IHL 4",
        frame(&l2in(), &bad),
        Counter::PassMalformed,
    ));
    bad[0] = 0x55;
    rows.push(Pkt::pass(
        "version 5 under 0x0800",
        eth(&l2in(), ETH_P_IPV4, &bad),
        Counter::PassMalformed,
    ));
    bad[0] = 0x4f;
    rows.push(Pkt::pass(
        "IPv4 IHL 15 beyond the frame",
        frame(&l2in(), &bad[..50]),
        Counter::PassMalformed,
    ));
    let mut bad = ip.clone();
    bad[2..4].copy_from_slice(&((ip.len() + 1) as u16).to_be_bytes());
    rows.push(Pkt::pass(
        "IPv4 total length beyond the frame",
        frame(&l2in(), &bad),
        Counter::PassMalformed,
    ));
    bad[2..4].copy_from_slice(&19u16.to_be_bytes());
    rows.push(Pkt::pass(
        "IPv4 total length below the header",
        frame(&l2in(), &bad),
        Counter::PassMalformed,
    ));
    let opt = syn.clone().with_options(&[1; 8]).bytes();
    rows.push(Pkt::pass(
        "IPv4 options cut",
        frame(&l2in(), &opt[..24]),
        Counter::PassMalformed,
    ));

    // IPv6.
    let s6 = tcp6(40001, 443, TCP_SYN).bytes();
    rows.push(Pkt::pass(
        "IPv6 header cut",
        frame(&l2in(), &s6[..39]),
        Counter::PassMalformed,
    ));
    let mut b6 = s6.clone();
    b6[0] = 0x40 | (b6[0] & 0x0f);
    rows.push(Pkt::pass(
        "version 4 under 0x86dd",
        eth(&l2in(), ETH_P_IPV6, &b6),
        Counter::PassMalformed,
    ));
    let mut b6 = s6.clone();
    b6[4..6].copy_from_slice(&((s6.len() - 39) as u16).to_be_bytes());
    rows.push(Pkt::pass(
        "IPv6 payload length beyond the frame",
        frame(&l2in(), &b6),
        Counter::PassMalformed,
    ));
    let hbh = Ip::new(
        v6(CLIENT6),
        v6(VIP6),
        L4::Raw {
            proto: 0,
            bytes: vec![6, 0, 1, 4, 0, 0, 0, 0],
        },
    );
    rows.push(Pkt::drop(
        "IPv6 hop-by-hop header, then TCP cut",
        frame(&l2in(), &hbh.bytes()),
        Counter::DropMalformed,
    ));
    let icmp_in_6 = Ip::new(
        v6(CLIENT6),
        v6(VIP6),
        L4::Raw {
            proto: 1,
            bytes: vec![8, 0, 0, 0, 0, 0, 0, 0],
        },
    );
    rows.push(Pkt::drop(
        "IPv4 ICMP in IPv6",
        frame(&l2in(), &icmp_in_6.bytes()),
        Counter::DropNotServed,
    ));
    let fr = Ip::new(
        v6(CLIENT6),
        v6(VIP6),
        L4::Raw {
            proto: 44,
            bytes: vec![17, 0, 0, 1],
        },
    );
    rows.push(Pkt::drop(
        "IPv6 fragment header cut",
        frame(&l2in(), &fr.bytes()),
        Counter::DropMalformed,
    ));

    // TCP / UDP: a VIP address's header cut anywhere → dropped (ports missing: no service known, yet it must not
    // reach the kernel); any other address → passed.
    let tcp_bytes = L4::Tcp {
        sport: 40000,
        dport: 80,
        flags: TCP_SYN,
        payload: vec![],
    }
    .bytes(v4(CLIENT4), v4(VIP4));
    let raw4 = |proto: u8, b: &[u8]| {
        frame(
            &l2in(),
            &Ip::new(
                v4(CLIENT4),
                v4(VIP4),
                L4::Raw {
                    proto,
                    bytes: b.to_vec(),
                },
            )
            .bytes(),
        )
    };
    rows.push(Pkt::drop(
        "TCP ports cut",
        raw4(6, &tcp_bytes[..3]),
        Counter::DropMalformed,
    ));
    rows.push(Pkt::drop(
        "TCP header cut at 4",
        raw4(6, &tcp_bytes[..4]),
        Counter::DropMalformed,
    ));
    rows.push(Pkt::drop(
        "TCP header cut at 19",
        raw4(6, &tcp_bytes[..19]),
        Counter::DropMalformed,
    ));
    let mut doff = tcp_bytes.clone();
    doff[12] = 4 << 4;
    rows.push(Pkt::drop(
        "TCP data offset 4",
        raw4(6, &doff),
        Counter::DropMalformed,
    ));
    doff[12] = 15 << 4;
    rows.push(Pkt::drop(
        "TCP data offset beyond the frame",
        raw4(6, &doff),
        Counter::DropMalformed,
    ));
    let other = |proto: u8, b: &[u8]| {
        frame(
            &l2in(),
            &Ip::new(
                v4(CLIENT4),
                "198.18.0.1".parse().unwrap(),
                L4::Raw {
                    proto,
                    bytes: b.to_vec(),
                },
            )
            .bytes(),
        )
    };
    rows.push(Pkt::pass(
        "non-VIP TCP cut at 10",
        other(6, &tcp_bytes[..10]),
        Counter::PassNotVip,
    ));
    let udp_bytes = L4::Udp {
        sport: 5353,
        dport: 53,
        payload: vec![],
    }
    .bytes(v4(CLIENT4), v4(VIP4));
    rows.push(Pkt::drop(
        "UDP header cut at 6",
        raw4(17, &udp_bytes[..6]),
        Counter::DropMalformed,
    ));
    rows.push(Pkt::drop(
        "UDP ports cut",
        raw4(17, &udp_bytes[..2]),
        Counter::DropMalformed,
    ));
    let t6 = L4::Tcp {
        sport: 40000,
        dport: 443,
        flags: TCP_SYN,
        payload: vec![],
    }
    .bytes(v6(CLIENT6), v6(VIP6));
    let raw6 = |b: &[u8]| {
        frame(
            &l2in(),
            &Ip::new(
                v6(CLIENT6),
                v6(VIP6),
                L4::Raw {
                    proto: 6,
                    bytes: b.to_vec(),
                },
            )
            .bytes(),
        )
    };
    rows.push(Pkt::drop(
        "IPv6 TCP header cut at 12",
        raw6(&t6[..12]),
        Counter::DropMalformed,
    ));
    rows.push(Pkt::drop(
        "IPv6 TCP ports cut",
        raw6(&t6[..1]),
        Counter::DropMalformed,
    ));

    // ICMP quotes.
    let reply = Ip::tcp(v4(VIP4), 80, v4(CLIENT4), 40000, TCP_ACK)
        .payload(&[0; 64])
        .bytes();
    let router: Ipv4Addr = "198.18.9.9".parse().unwrap();
    let tb = |q: &[u8]| frame(&l2in(), &icmp4_frag_needed(router, VIP4, 1400, q).bytes());
    rows.push(Pkt::drop(
        "ICMP quote: inner IPv4 header cut",
        tb(&reply[..19]),
        Counter::DropMalformed,
    ));
    rows.push(Pkt::drop(
        "ICMP quote: inner L4 cut",
        tb(&reply[..27]),
        Counter::DropMalformed,
    ));
    let icmp_short = Ip::new(
        router.into(),
        v4(VIP4),
        L4::Raw {
            proto: 1,
            bytes: vec![3, 4, 0, 0],
        },
    );
    rows.push(Pkt::drop(
        "ICMP header cut",
        frame(&l2in(), &icmp_short.bytes()),
        Counter::DropMalformed,
    ));
    let reply6 = Ip::tcp(v6(VIP6), 443, v6(CLIENT6), 40001, TCP_ACK)
        .payload(&[0; 64])
        .bytes();
    let r6: Ipv6Addr = "fd00:9::9".parse().unwrap();
    rows.push(Pkt::drop(
        "ICMPv6 quote: inner L4 cut",
        frame(
            &l2in(),
            &icmp6_too_big(r6, VIP6, 1400, &reply6[..47]).bytes(),
        ),
        Counter::DropMalformed,
    ));
    rows.push(Pkt::drop(
        "ICMPv6 quote: inner header cut",
        frame(
            &l2in(),
            &icmp6_too_big(r6, VIP6, 1400, &reply6[..30]).bytes(),
        ),
        Counter::DropMalformed,
    ));

    let cases = rows.into_iter().map(|p| Case::one(setup(), p)).collect();
    run("malformed", cases);
}

#[test]
fn icmp_too_big_steering() {
    let mut cases = Vec::new();
    let router: Ipv4Addr = "198.18.9.9".parse().unwrap();
    let k = FlowKey::new(v4(CLIENT4), 40000, v4(VIP4), 80, IPPROTO_TCP);
    let reply = Ip::tcp(v4(VIP4), 80, v4(CLIENT4), 40000, TCP_ACK)
        .payload(&[0; 64])
        .bytes();
    let icmp = icmp4_frag_needed(router, VIP4, 1400, &reply[..28]).bytes();
    let icmp_f = frame(&l2in(), &icmp);
    let h = flow_hash(&k);

    let mut s = Setup::new(vec![web_with(&[1; 7])]);
    s.flows.push((k, FlowState::new(&k, 2)));
    cases.push(Case::one(
        s,
        Pkt::tx(
            "frag-needed follows the flow table",
            icmp_f.clone(),
            2,
            encap_out(2, h, &icmp),
        )
        .info(Counter::IcmpSteered)
        .flow(k, Some(2)),
    ));
    cases.push(Case::one(
        Setup::new(vec![web_with(&[3; 7])]),
        Pkt::tx(
            "frag-needed without flow: ring, no insert",
            icmp_f.clone(),
            3,
            encap_out(3, h, &icmp),
        )
        .info(Counter::IcmpSteered)
        .flow(k, None),
    ));
    let mut s = Setup::new(vec![web_with(&[3; 7])]);
    s.flows.push((k, FlowState::new(&k, 2)));
    s.backends.retain(|(id, _)| *id != 2);
    cases.push(Case::one(
        s,
        Pkt::tx(
            "frag-needed, flow on unset backend: ring",
            icmp_f.clone(),
            3,
            encap_out(3, h, &icmp),
        )
        .info(Counter::IcmpSteered),
    ));
    // Whole quote (options in the inner header).
    let reply_opt = Ip::tcp(v4(VIP4), 80, v4(CLIENT4), 40000, TCP_ACK)
        .with_options(&[1; 4])
        .bytes();
    let icmp2 = icmp4_frag_needed(router, VIP4, 1400, &reply_opt).bytes();
    cases.push(Case::one(
        Setup::new(vec![web_with(&[1; 7])]),
        Pkt::tx(
            "frag-needed quoting options",
            frame(&l2in(), &icmp2),
            1,
            encap_out(1, h, &icmp2),
        )
        .info(Counter::IcmpSteered),
    ));
    // Port-0 VIP.
    cases.push(Case::one(
        Setup::new(vec![vip(v4(VIP4), 0, IPPROTO_TCP, 1, 0, &[2; 7])]),
        Pkt::tx(
            "frag-needed for a port-0 VIP",
            icmp_f.clone(),
            2,
            encap_out(2, h, &icmp),
        )
        .info(Counter::IcmpSteered),
    ));

    // ICMPv6 packet too big.
    let k6 = FlowKey::new(v6(CLIENT6), 40001, v6(VIP6), 443, IPPROTO_TCP);
    let reply6 = Ip::tcp(v6(VIP6), 443, v6(CLIENT6), 40001, TCP_ACK)
        .payload(&[0; 64])
        .bytes();
    let ptb = icmp6_too_big("fd00:9::9".parse().unwrap(), VIP6, 1400, &reply6).bytes();
    let mut s = Setup::new(vec![vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[5; 7])]);
    s.flows.push((k6, FlowState::new(&k6, 4)));
    cases.push(Case::one(
        s,
        Pkt::tx(
            "packet-too-big follows the flow table",
            frame(&l2in(), &ptb),
            4,
            encap_out(4, flow_hash(&k6), &ptb),
        )
        .info(Counter::IcmpSteered),
    ));

    // A FRAG_HASH3 VIP's too-big goes where the flow's packets go: the 3-tuple hash.
    let ring45 = [4, 5, 4, 5, 4, 5, 5];
    let dns_reply = Ip::udp(v6(VIP6), 53, v6(CLIENT6), 5353, &[0; 40]).bytes();
    let ptb_dns = icmp6_too_big("fd00:9::9".parse().unwrap(), VIP6, 1400, &dns_reply).bytes();
    let h3 = flow_hash(&FlowKey::new(v6(CLIENT6), 0, v6(VIP6), 0, IPPROTO_UDP));
    let b3 = ring_pick(&ring45, h3);
    cases.push(Case::one(
        Setup::new(vec![vip(
            v6(VIP6),
            53,
            IPPROTO_UDP,
            5,
            VIP_F_FRAG_HASH3,
            &ring45,
        )]),
        Pkt::tx(
            "packet-too-big for a hash3 VIP",
            frame(&l2in(), &ptb_dns),
            b3,
            encap_out(b3, h3, &ptb_dns),
        )
        .info(Counter::IcmpSteered),
    ));

    // Echo requests to a VIP address are answered from XDP; to any other address they are the host's.
    let rest = [0x12, 0x34, 0, 7, b'p', b'i', b'n', b'g'];
    let mut req = icmp4(CLIENT4, VIP4, 8, 0, &rest);
    req.ttl = 57;
    let reply4 = icmp4(VIP4, CLIENT4, 0, 0, &rest);
    cases.push(Case::one(
        Setup::new(vec![web_with(&[1; 7])]),
        Pkt::new(
            "echo request to a VIP address",
            frame(&l2in(), &req.bytes()),
            XDP_TX,
            Counter::IcmpEchoReply,
        )
        .out(frame(&l2in().swapped(), &reply4.bytes())),
    ));
    cases.push(Case::one(
        Setup::new(vec![web_with(&[1; 7])]),
        Pkt::new(
            "echo request to a VIP address, VLAN tag kept",
            frame(&l2in().vlan(12), &req.bytes()),
            XDP_TX,
            Counter::IcmpEchoReply,
        )
        .out(frame(&l2in().vlan(12).swapped(), &reply4.bytes())),
    ));
    let mut req6 = icmp6(CLIENT6, VIP6, 128, 0, &rest);
    req6.ttl = 9;
    let reply6 = icmp6(VIP6, CLIENT6, 129, 0, &rest);
    cases.push(Case::one(
        Setup::new(vec![vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[4; 7])]),
        Pkt::new(
            "ICMPv6 echo request to a VIP address",
            frame(&l2in(), &req6.bytes()),
            XDP_TX,
            Counter::IcmpEchoReply,
        )
        .out(frame(&l2in().swapped(), &reply6.bytes())),
    ));
    let host_echo = icmp4(CLIENT4, "198.18.0.1".parse().unwrap(), 8, 0, &rest).bytes();
    cases.push(Case::one(
        Setup::new(vec![web_with(&[1; 7])]),
        Pkt::pass(
            "echo request to the host",
            frame(&l2in(), &host_echo),
            Counter::PassNotVip,
        ),
    ));

    // Other ICMP to a VIP address: dropped (the kernel would route it back upstream).
    let unreach = icmp4(router, VIP4, 3, 1, &[0, 0, 0, 0]).bytes();
    cases.push(Case::one(
        Setup::new(vec![web_with(&[1; 7])]),
        Pkt::drop(
            "host unreachable to a VIP address",
            frame(&l2in(), &unreach),
            Counter::DropNotServed,
        ),
    ));
    let wrong_src = icmp4_frag_needed(router, VIP4B, 1400, &reply[..28]).bytes();
    cases.push(Case::one(
        Setup::new(vec![web_with(&[1; 7])]),
        Pkt::pass(
            "quote source is not the outer destination",
            frame(&l2in(), &wrong_src),
            Counter::PassNotVip,
        ),
    ));
    let other = Ip::tcp(v4(VIP4), 81, v4(CLIENT4), 40000, TCP_ACK).bytes();
    let not_vip = icmp4_frag_needed(router, VIP4, 1400, &other[..28]).bytes();
    cases.push(Case::one(
        Setup::new(vec![web_with(&[1; 7])]),
        Pkt::drop(
            "quote of a flow of no service",
            frame(&l2in(), &not_vip),
            Counter::DropNotServed,
        ),
    ));
    let ns = icmp6("fd00::2".parse().unwrap(), VIP6, 135, 0, &[0; 20]).bytes();
    cases.push(Case::one(
        Setup::new(vec![vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[4; 7])]),
        Pkt::drop(
            "neighbour solicitation to a VIP address",
            frame(&l2in(), &ns),
            Counter::DropNotServed,
        ),
    ));

    run("icmp", cases);
}

#[test]
fn fragments() {
    let mut cases = Vec::new();
    let dgram = Ip::udp(v4(CLIENT4), 5353, v4(VIP4), 53, &[0xab; 64]);
    let first = dgram.clone().no_df().with_frag(0, true).bytes();
    let later = dgram.clone().no_df().with_frag(3, false).bytes();
    let port_vip = vip(v4(VIP4), 53, IPPROTO_UDP, 2, 0, &RING3);

    // Default policy: a port-0 FRAG_ONLY entry without HASH3 → drop.
    let drop_policy = vip(v4(VIP4), 0, IPPROTO_UDP, 6, VIP_F_FRAG_ONLY, &[1]);
    for (name, f) in [
        ("first fragment, drop policy", &first),
        ("later fragment, drop policy", &later),
    ] {
        cases.push(Case::one(
            Setup::new(vec![port_vip.clone(), drop_policy.clone()]),
            Pkt::drop(name, frame(&l2in(), f), Counter::DropFragment),
        ));
    }
    cases.push(Case::one(
        Setup::new(vec![port_vip.clone()]),
        Pkt::drop(
            "fragment without a policy entry",
            frame(&l2in(), &first),
            Counter::DropNotServed,
        ),
    ));

    // hash3: every piece of the datagram to the same backend.
    let hash3 = vip(
        v4(VIP4),
        0,
        IPPROTO_UDP,
        6,
        VIP_F_FRAG_ONLY | VIP_F_FRAG_HASH3,
        &RING3,
    );
    let h3 = flow_hash(&FlowKey::new(v4(CLIENT4), 0, v4(VIP4), 0, IPPROTO_UDP));
    let b = ring_pick(&RING3, h3);
    cases.push(Case::new(
        "fragments, hash3 policy",
        Setup::new(vec![port_vip.clone(), hash3.clone()]),
        vec![
            Step::Packet(
                Pkt::tx(
                    "first fragment",
                    frame(&l2in(), &first),
                    b,
                    encap_out(b, h3, &first),
                )
                .info(Counter::FragmentHashed),
            ),
            Step::Packet(
                Pkt::tx(
                    "later fragment",
                    frame(&l2in(), &later),
                    b,
                    encap_out(b, h3, &later),
                )
                .info(Counter::FragmentHashed),
            ),
        ],
    ));

    // IPv6 Fragment header.
    let d6 = Ip::udp(v6(CLIENT6), 5353, v6(VIP6), 53, &[0xcd; 64]);
    let f6 = d6.clone().with_frag(0, true).bytes();
    let l6 = d6.clone().with_frag(4, false).bytes();
    let h36 = flow_hash(&FlowKey::new(v6(CLIENT6), 0, v6(VIP6), 0, IPPROTO_UDP));
    let b6 = ring_pick(&[4, 5, 4, 5, 4, 5, 4], h36);
    cases.push(Case::new(
        "IPv6 fragments, hash3 policy",
        Setup::new(vec![vip(
            v6(VIP6),
            0,
            IPPROTO_UDP,
            7,
            VIP_F_FRAG_ONLY | VIP_F_FRAG_HASH3,
            &[4, 5, 4, 5, 4, 5, 4],
        )]),
        vec![
            Step::Packet(
                Pkt::tx(
                    "first v6 fragment",
                    frame(&l2in(), &f6),
                    b6,
                    encap_out(b6, h36, &f6),
                )
                .info(Counter::FragmentHashed),
            ),
            Step::Packet(
                Pkt::tx(
                    "later v6 fragment",
                    frame(&l2in(), &l6),
                    b6,
                    encap_out(b6, h36, &l6),
                )
                .info(Counter::FragmentHashed),
            ),
        ],
    ));
    cases.push(Case::one(
        Setup::new(vec![vip(
            v6(VIP6),
            0,
            IPPROTO_UDP,
            7,
            VIP_F_FRAG_ONLY,
            &[1],
        )]),
        Pkt::drop(
            "IPv6 fragment, drop policy",
            frame(&l2in(), &f6),
            Counter::DropFragment,
        ),
    ));
    // A port-0 VIP (not FRAG_ONLY) is also the policy entry for its fragments.
    cases.push(Case::one(
        Setup::new(vec![vip(v4(VIP4), 0, IPPROTO_UDP, 6, 0, &RING3)]),
        Pkt::drop(
            "fragment of a port-0 VIP without hash3",
            frame(&l2in(), &later),
            Counter::DropFragment,
        ),
    ));
    // An IPv6 atomic fragment (offset 0, M = 0; RFC 6946) is a whole packet: balanced like one, header and all.
    let v6_policy = || {
        Setup::new(vec![
            vip(v6(VIP6), 53, IPPROTO_UDP, 5, 0, &[4; 7]),
            vip(v6(VIP6), 0, IPPROTO_UDP, 7, VIP_F_FRAG_ONLY, &[1]),
        ])
    };
    let atomic = d6.clone().with_frag(0, false).bytes();
    let ha = flow_hash(&key_of(&d6));
    cases.push(Case::one(
        v6_policy(),
        Pkt::tx(
            "IPv6 atomic fragment is not a fragment",
            frame(&l2in(), &atomic),
            4,
            encap_out(4, ha, &atomic),
        )
        .flow(key_of(&d6), Some(4)),
    ));
    // A real fragment behind other extension headers is still a fragment.
    let behind = d6
        .clone()
        .with_ext(0, &[1, 4, 0, 0, 0, 0])
        .with_frag(4, false)
        .bytes();
    cases.push(Case::one(
        v6_policy(),
        Pkt::drop(
            "IPv6 fragment behind a hop-by-hop header",
            frame(&l2in(), &behind),
            Counter::DropFragment,
        ),
    ));
    run("frag", cases);
}

#[test]
fn over_mtu() {
    let mut cases = Vec::new();
    let cfg = |mtu: u32, flags: u32| {
        let mut s = Setup::new(vec![
            web_with(&[1; 7]),
            vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[4; 7]),
        ]);
        s.config.mtu = mtu;
        s.config.flags = flags;
        s
    };
    // 600 bytes of IP + 20 of outer IPv4 > 600.
    let big = tcp4(40000, VIP4, 80, TCP_ACK).payload(&[7; 560]);
    let big_ip = big.bytes();
    assert_eq!(big_ip.len(), 600);
    let f = frame(&l2in(), &big_ip);
    let answer = frame(
        &l2in().swapped(),
        &icmp4_frag_needed(VIP4, CLIENT4, 580, &big_ip[..548]).bytes(),
    );
    cases.push(Case::one(
        cfg(600, CFG_F_ICMP_TOO_BIG),
        Pkt {
            out: Out::Bytes(answer),
            ..Pkt::new(
                "IPv4 DF over MTU → frag-needed",
                f.clone(),
                XDP_TX,
                Counter::IcmpTooBigSent,
            )
            .backend(1)
        },
    ));
    let tagged = frame(&l2in().vlan(77), &big_ip);
    let answer_t = frame(
        &l2in().swapped().vlan(77),
        &icmp4_frag_needed(VIP4, CLIENT4, 580, &big_ip[..548]).bytes(),
    );
    cases.push(Case::one(
        cfg(600, CFG_F_ICMP_TOO_BIG),
        Pkt {
            out: Out::Bytes(answer_t),
            ..Pkt::new(
                "answer keeps the VLAN tag",
                tagged,
                XDP_TX,
                Counter::IcmpTooBigSent,
            )
            .backend(1)
        },
    ));
    let nodf = frame(&l2in(), &big.clone().no_df().bytes());
    cases.push(Case::one(
        cfg(600, CFG_F_ICMP_TOO_BIG),
        Pkt::drop("IPv4 without DF over MTU", nodf, Counter::DropOverMtu).backend(1),
    ));
    cases.push(Case::one(
        cfg(600, 0),
        Pkt::drop("answers disabled", f.clone(), Counter::DropOverMtu).backend(1),
    ));
    let h = flow_hash(&key_of(&big));
    cases.push(Case::one(
        cfg(620, CFG_F_ICMP_TOO_BIG),
        Pkt::tx("exactly the MTU", f.clone(), 1, encap_out(1, h, &big_ip)),
    ));

    // IPv6: MTU 1400 - 40 = 1360 announced; the answer fits in 1280 bytes.
    let big6 = tcp6(40001, 443, TCP_ACK).payload(&[9; 1340]);
    let b6 = big6.bytes();
    let answer6 = frame(
        &l2in().swapped(),
        &icmp6_too_big(VIP6, CLIENT6, 1360, &b6[..1232]).bytes(),
    );
    cases.push(Case::one(
        cfg(1400, CFG_F_ICMP_TOO_BIG),
        Pkt {
            out: Out::Bytes(answer6),
            ..Pkt::new(
                "IPv6 over MTU → packet too big",
                frame(&l2in(), &b6),
                XDP_TX,
                Counter::IcmpTooBigSent,
            )
            .backend(4)
        },
    ));
    // The announced MTU never goes below 1280.
    let mid6 = tcp6(40001, 443, TCP_ACK).payload(&[9; 1200]).bytes();
    let answer_min = frame(
        &l2in().swapped(),
        &icmp6_too_big(VIP6, CLIENT6, 1280, &mid6[..1232]).bytes(),
    );
    cases.push(Case::one(
        cfg(1260, CFG_F_ICMP_TOO_BIG),
        Pkt {
            out: Out::Bytes(answer_min),
            ..Pkt::new(
                "IPv6 answer announces at least 1280",
                frame(&l2in(), &mid6),
                XDP_TX,
                Counter::IcmpTooBigSent,
            )
            .backend(4)
        },
    ));
    // An ICMP packet over the MTU is never answered.
    let reply = Ip::tcp(v4(VIP4), 80, v4(CLIENT4), 40000, TCP_ACK)
        .payload(&[0; 600])
        .bytes();
    let icmp = icmp4_frag_needed("198.18.9.9".parse().unwrap(), VIP4, 1400, &reply).bytes();
    cases.push(Case::one(
        cfg(600, CFG_F_ICMP_TOO_BIG),
        Pkt::drop("ICMP over MTU", frame(&l2in(), &icmp), Counter::DropOverMtu)
            .backend(1)
            .info(Counter::IcmpSteered),
    ));
    // An MTU below the outer header's size (refused by lbd's config, but the program must not underflow): every
    // packet is over it, and the answer advertises the family's minimum MTU.
    let small = tcp4(40000, VIP4, 80, TCP_ACK).payload(b"hi").bytes();
    cases.push(Case::one(
        cfg(30, CFG_F_ICMP_TOO_BIG),
        Pkt::new(
            "MTU below the IPv4 outer header: advertises 68",
            frame(&l2in(), &small),
            XDP_TX,
            Counter::IcmpTooBigSent,
        )
        .backend(1)
        .out(frame(
            &l2in().swapped(),
            &icmp4_frag_needed(VIP4, CLIENT4, 68, &small).bytes(),
        )),
    ));
    let small6 = tcp6(40001, 443, TCP_ACK).bytes();
    cases.push(Case::one(
        cfg(30, CFG_F_ICMP_TOO_BIG),
        Pkt::new(
            "MTU below the IPv6 outer header: advertises 1280",
            frame(&l2in(), &small6),
            XDP_TX,
            Counter::IcmpTooBigSent,
        )
        .backend(4)
        .out(frame(
            &l2in().swapped(),
            &icmp6_too_big(VIP6, CLIENT6, 1280, &small6).bytes(),
        )),
    ));

    // Answers come out of a per-CPU budget: over it, the packet is dropped and counted.
    let budget = |cap: u32, taken: u64| {
        let mut s = cfg(600, CFG_F_ICMP_TOO_BIG);
        s.config.icmp_answer_cap = cap;
        s.windows.push(WindowFill {
            limit: RateLimit::IcmpAnswers,
            count: taken,
            expired: false,
        });
        s
    };
    let answer = frame(
        &l2in().swapped(),
        &icmp4_frag_needed(VIP4, CLIENT4, 580, &big_ip[..548]).bytes(),
    );
    cases.push(Case::new(
        "answer budget of 2, one left",
        budget(2, 1),
        vec![
            Step::Packet(
                Pkt::new("last answer", f.clone(), XDP_TX, Counter::IcmpTooBigSent)
                    .backend(1)
                    .out(answer.clone()),
            ),
            Step::Packet(
                Pkt::drop("budget spent", f.clone(), Counter::DropIcmpRateLimited).backend(1),
            ),
        ],
    ));
    let mut s = budget(2, 2);
    s.windows[0].expired = true;
    cases.push(Case::one(
        s,
        Pkt::new(
            "a new window refills the budget",
            f.clone(),
            XDP_TX,
            Counter::IcmpTooBigSent,
        )
        .backend(1)
        .out(answer.clone()),
    ));
    cases.push(Case::one(
        budget(0, 1_000_000),
        Pkt::new(
            "cap 0: no limit",
            f.clone(),
            XDP_TX,
            Counter::IcmpTooBigSent,
        )
        .backend(1)
        .out(answer),
    ));

    // L2 DSR never checks the MTU.
    let mut s = cfg(600, CFG_F_ICMP_TOO_BIG);
    s.vips[0].flags = VIP_F_L2DSR;
    let mut want = f.clone();
    want[0..6].copy_from_slice(&be_mac(1));
    want[6..12].copy_from_slice(&LB0_MAC);
    cases.push(Case::one(s, Pkt::tx("L2 DSR ignores the MTU", f, 1, want)));
    run("mtu", cases);
}

#[test]
fn decap() {
    let setup = || Setup::new(vec![]);
    let mut rows = Vec::new();
    let inner4 = tcp4(40000, VIP4, 80, TCP_ACK).bytes();
    let inner6 = tcp6(40001, 443, TCP_ACK).bytes();
    let lb = L2::new(LB0_MAC, be_mac(1));
    let decapped = |inner: &[u8]| frame(&lb, inner);
    let o44 = frame(
        &lb,
        &encap4("198.18.50.1".parse().unwrap(), ENCAP_SRC_V4, &inner4),
    );
    rows.push(
        Pkt::pass("IPIP", o44.clone(), Counter::DecapOk)
            .decap()
            .out(decapped(&inner4)),
    );
    let o66 = frame(
        &lb,
        &encap6("fd00:50::1".parse().unwrap(), ENCAP_SRC_V6, 7, &inner6),
    );
    rows.push(
        Pkt::pass("IP6IP6", o66, Counter::DecapOk)
            .decap()
            .out(decapped(&inner6)),
    );
    let o64 = frame(
        &lb,
        &encap6("fd00:50::1".parse().unwrap(), ENCAP_SRC_V6, 7, &inner4),
    );
    rows.push(
        Pkt::pass("IPv4 in IPv6", o64, Counter::DecapOk)
            .decap()
            .out(decapped(&inner4)),
    );
    let o46 = frame(
        &lb,
        &encap4("198.18.50.1".parse().unwrap(), ENCAP_SRC_V4, &inner6),
    );
    rows.push(
        Pkt::pass("IPv6 in IPv4", o46, Counter::DecapOk)
            .decap()
            .out(decapped(&inner6)),
    );
    let opt_outer = Ip::new(
        v4("198.18.50.1".parse().unwrap()),
        v4(ENCAP_SRC_V4),
        L4::Raw {
            proto: 4,
            bytes: inner4.clone(),
        },
    )
    .with_options(&[1; 4]);
    rows.push(
        Pkt::pass(
            "IPIP with outer options",
            frame(&lb, &opt_outer.bytes()),
            Counter::DecapOk,
        )
        .decap()
        .out(decapped(&inner4)),
    );

    let not_vip = tcp4(40000, "198.18.0.77".parse().unwrap(), 80, TCP_ACK).bytes();
    rows.push(
        Pkt::pass(
            "inner destination not a VIP",
            frame(
                &lb,
                &encap4("198.18.50.1".parse().unwrap(), ENCAP_SRC_V4, &not_vip),
            ),
            Counter::DecapPassNotVip,
        )
        .decap(),
    );
    rows.push(
        Pkt::pass(
            "outer destination not local",
            frame(
                &lb,
                &encap4(
                    "198.18.50.1".parse().unwrap(),
                    "198.18.0.99".parse().unwrap(),
                    &inner4,
                ),
            ),
            Counter::DecapPassNotTunnel,
        )
        .decap(),
    );
    let cut4 = Ip::new(
        v4("198.18.50.1".parse().unwrap()),
        v4(ENCAP_SRC_V4),
        L4::Raw {
            proto: 4,
            bytes: inner4[..19].to_vec(),
        },
    );
    rows.push(
        Pkt::drop(
            "inner header cut",
            frame(&lb, &cut4.bytes()),
            Counter::DecapDropMalformed,
        )
        .decap(),
    );
    let cut6 = Ip::new(
        v6("fd00:50::1".parse().unwrap()),
        v6(ENCAP_SRC_V6),
        L4::Raw {
            proto: 41,
            bytes: inner6[..39].to_vec(),
        },
    );
    rows.push(
        Pkt::drop(
            "inner IPv6 header cut",
            frame(&lb, &cut6.bytes()),
            Counter::DecapDropMalformed,
        )
        .decap(),
    );
    rows.push(
        Pkt::pass(
            "plain TCP",
            frame(&lb, &inner4),
            Counter::DecapPassNotTunnel,
        )
        .decap(),
    );
    rows.push(
        Pkt::pass(
            "VLAN-tagged IPIP",
            frame(
                &lb.vlan(5),
                &encap4("198.18.50.1".parse().unwrap(), ENCAP_SRC_V4, &inner4),
            ),
            Counter::DecapPassNotTunnel,
        )
        .decap(),
    );
    rows.push(
        Pkt::pass(
            "ARP",
            arp_request(&lb, CLIENT4, VIP4),
            Counter::DecapPassNotTunnel,
        )
        .decap(),
    );
    rows.push(
        Pkt::pass(
            "outer IPv4 header cut",
            o44[..14 + 12].to_vec(),
            Counter::DecapPassNotTunnel,
        )
        .decap(),
    );
    // Only the balancers' sources are accepted, and a fragmented tunnel packet is never decapsulated.
    rows.push(
        Pkt::drop(
            "IPIP from an unknown source",
            frame(
                &lb,
                &encap4("198.18.66.6".parse().unwrap(), ENCAP_SRC_V4, &inner4),
            ),
            Counter::DecapDropSource,
        )
        .decap(),
    );
    rows.push(
        Pkt::drop(
            "IP6IP6 from an unknown source",
            frame(
                &lb,
                &encap6("fd00:66::6".parse().unwrap(), ENCAP_SRC_V6, 7, &inner6),
            ),
            Counter::DecapDropSource,
        )
        .decap(),
    );
    let frag_outer = |offset, more| {
        Ip::new(
            v4(TUNNEL_FROM_V4),
            v4(ENCAP_SRC_V4),
            L4::Raw {
                proto: 4,
                bytes: inner4.clone(),
            },
        )
        .no_df()
        .with_frag(offset, more)
        .bytes()
    };
    rows.push(
        Pkt::drop(
            "first fragment of an IPIP packet",
            frame(&lb, &frag_outer(0, true)),
            Counter::DecapDropFragment,
        )
        .decap(),
    );
    rows.push(
        Pkt::drop(
            "later fragment of an IPIP packet",
            frame(&lb, &frag_outer(2, false)),
            Counter::DecapDropFragment,
        )
        .decap(),
    );
    let frag6 = Ip::new(
        v6(TUNNEL_FROM_V6),
        v6(ENCAP_SRC_V6),
        L4::Raw {
            proto: 41,
            bytes: inner6.clone(),
        },
    )
    .with_frag(0, true)
    .bytes();
    rows.push(
        Pkt::drop(
            "IP6IP6 with a Fragment header",
            frame(&lb, &frag6),
            Counter::DecapDropFragment,
        )
        .decap(),
    );
    let cases = rows.into_iter().map(|p| Case::one(setup(), p)).collect();
    run("decap", cases);
}

/// `LB_VIP_FILTER` (docs/dataplane.md, before step 1): userspace keeps it covering exactly the VIP addresses; the
/// program consults it (a hidden VIP goes to the kernel); a colliding non-VIP address still takes the lookups and
/// is passed.
#[test]
fn vip_filter() {
    if skip_unless_root("vip_filter") {
        return;
    }
    let mut rig = Rig::new("vipfilter");
    let web = vip(v4(VIP4), 80, IPPROTO_TCP, 1, 0, &RING3);
    let web6 = vip(v6(VIP6), 443, IPPROTO_TCP, 2, 0, &RING3);
    let setup = Setup::new(vec![web.clone(), web6]);
    rig.apply(&setup);
    let bit_of = |ip: IpAddr| hash::vip_filter_bit(&AddrKey::new(ip).addr);
    let words_for = |ips: &[IpAddr]| {
        let mut w = vec![0u64; VIP_FILTER_WORDS as usize];
        for ip in ips {
            let b = bit_of(*ip);
            w[(b / 64) as usize] |= 1 << (b % 64);
        }
        w
    };
    assert_eq!(
        rig.dp.vip_filter().unwrap(),
        words_for(&[v4(VIP4), v6(VIP6)]),
        "the filter does not cover exactly the two VIP addresses"
    );
    let addresses = |rig: &Rig| {
        let mut a: Vec<IpAddr> = rig
            .dp
            .vip_addresses()
            .unwrap()
            .iter()
            .filter_map(|k| words_addr(&k.addr, k.family))
            .collect();
        a.sort();
        a
    };
    assert_eq!(
        addresses(&rig),
        vec![v4(VIP4), v6(VIP6)],
        "LB_VIP_ADDRS holds exactly the VIP addresses"
    );

    let verdict = |rig: &mut Rig, ip: &Ip| {
        let c0 = rig.dp.counters().unwrap();
        let (action, _) = rig
            .test_run(programs::LB, &frame(&l2in(), &ip.bytes()))
            .unwrap();
        let c1 = rig.dp.counters().unwrap();
        let moved: Vec<Counter> = c0
            .iter()
            .zip(&c1)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect();
        (action, moved)
    };
    let to_vip = tcp4(40000, VIP4, 80, TCP_ACK);
    assert_eq!(
        verdict(&mut rig, &to_vip),
        (XDP_TX, vec![Counter::Tx]),
        "VIP packet with the filter in place"
    );

    // A non-VIP address sharing VIP4's bit: the filter lets it through to the lookups, which miss.
    let twin = (0..1u32 << 17)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i))
        .find(|a| *a != VIP4 && bit_of(v4(*a)) == bit_of(v4(VIP4)))
        .expect("198.18.0.0/15 has an address sharing VIP4's filter bit");
    assert_eq!(
        verdict(&mut rig, &tcp4(40000, twin, 80, TCP_ACK)),
        (XDP_PASS, vec![Counter::PassNotVip]),
        "{twin} shares VIP4's filter bit but is no VIP"
    );
    let gre = |dst: Ipv4Addr| {
        Ip::new(
            v4(CLIENT4),
            v4(dst),
            L4::Raw {
                proto: 47,
                bytes: vec![0; 8],
            },
        )
    };
    assert_eq!(
        verdict(&mut rig, &gre(twin)),
        (XDP_PASS, vec![Counter::PassNotVip]),
        "GRE to {twin}, which shares VIP4's filter bit: the address lookup misses"
    );
    assert_eq!(
        verdict(&mut rig, &gre(VIP4)),
        (XDP_DROP, vec![Counter::DropNotServed]),
        "GRE to VIP4 itself"
    );

    // The program reads the filter: with VIP4's word cleared behind userspace's back, its packets are not seen.
    let index = bit_of(v4(VIP4)) / 64;
    rig.dp.overwrite_filter_word(index, 0).unwrap();
    assert_eq!(
        verdict(&mut rig, &to_vip),
        (XDP_PASS, vec![Counter::PassNotVip]),
        "VIP packet with its filter bit cleared"
    );

    // Removing one VIP clears only its address's bit, and only once no service of that address is left; removing
    // all leaves the filter empty.
    let web443 = vip(v4(VIP4), 443, IPPROTO_TCP, 3, 0, &RING3);
    rig.apply(&Setup::new(vec![web.clone(), web443]));
    let (_, meta80) = rig
        .dp
        .vips()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == web.key)
        .unwrap();
    rig.dp.remove_vip(&web.key).unwrap();
    assert_eq!(
        rig.dp.vip_filter().unwrap(),
        words_for(&[v4(VIP4)]),
        "VIP4:443 still needs the bit VIP4:80 had"
    );
    assert_eq!(
        addresses(&rig),
        vec![v4(VIP4)],
        "VIP4:443 still needs its address"
    );
    // Back as the rig installed it, so the rig can remove it again.
    rig.dp.upsert_vip(&web.key, &meta80).unwrap();
    rig.apply(&Setup::new(vec![web]));
    assert_eq!(rig.dp.vip_filter().unwrap(), words_for(&[v4(VIP4)]));
    assert_eq!(
        verdict(&mut rig, &to_vip),
        (XDP_TX, vec![Counter::Tx]),
        "VIP packet after the filter was rewritten"
    );
    rig.apply(&Setup::new(vec![]));
    assert!(
        rig.dp.vip_filter().unwrap().iter().all(|&w| w == 0),
        "filter bits left after every VIP was removed"
    );
    assert_eq!(
        addresses(&rig),
        Vec::<IpAddr>::new(),
        "addresses left after every VIP was removed"
    );
}

/// The next-hop cache remembers failures (docs/dataplane.md, step 8): a lookup towards a backend whose neighbour is
/// unresolved is cached as a failure for `NEXTHOP_NEG_TTL_NS`, the program honours that entry even once the FIB
/// could answer, and asks the FIB again when it expires. Kernel only: the model has a static FIB.
#[test]
fn nexthop_cache_remembers_failures() {
    if skip_unless_root("nexthop_cache_remembers_failures") {
        return;
    }
    let mut rig = Rig::new("nhneg");
    // Backend 9 is on-link with no neighbour entry.
    rig.apply(&Setup::new(vec![web_with(&[9; 7])]));
    let syn = frame(&l2in(), &tcp4(40000, VIP4, 80, TCP_SYN).bytes());
    let before = monotonic_ns();
    let k = rig.kernel(programs::LB, &syn).expect("test run");
    assert_eq!(
        (k.action, k.counters.clone()),
        (XDP_DROP, vec![(Counter::DropNoRoute, 1)]),
        "unresolved neighbour"
    );
    let nh = rig.nexthop(9);
    assert_eq!(nh.ifindex, 0, "the failure is cached as ifindex 0: {nh:?}");
    assert!(
        nh.expires_ns <= monotonic_ns() + NEXTHOP_NEG_TTL_NS
            && nh.expires_ns + 50_000_000 > before + NEXTHOP_NEG_TTL_NS,
        "a failure is remembered for NEXTHOP_NEG_TTL_NS: expires {} at now {}",
        nh.expires_ns,
        monotonic_ns()
    );

    // The neighbour appears; a remembered failure (made to last) still decides.
    rig.net
        .lb
        .add_neigh("lb0", &backend_ip(9).to_string(), be_mac(9));
    rig.dp
        .set_nexthop(
            9,
            &NextHop {
                expires_ns: monotonic_ns() + 3_600_000_000_000,
                ..nh
            },
        )
        .unwrap();
    let k = rig.kernel(programs::LB, &syn).expect("test run");
    assert_eq!(
        (k.action, k.counters.clone()),
        (XDP_DROP, vec![(Counter::DropNoRoute, 1)]),
        "the remembered failure is used while it lasts"
    );

    // Expired: the FIB is asked again and now answers.
    rig.dp
        .set_nexthop(
            9,
            &NextHop {
                expires_ns: 1,
                ..nh
            },
        )
        .unwrap();
    let k = rig.kernel(programs::LB, &syn).expect("test run");
    assert_eq!(
        (k.action, k.counters.clone(), k.backend),
        (XDP_TX, vec![(Counter::Tx, 1)], Some(9)),
        "after the failure expired"
    );
    assert_eq!(&k.frame[0..6], &be_mac(9), "sent to the resolved neighbour");
    assert_eq!(
        rig.nexthop(9).ifindex,
        rig.net.if_in,
        "the answer is cached"
    );
}

/// Bytes from hex, spaces ignored.
fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// One encapsulated frame per outer family pinned as literal bytes, computed by hand from RFC 791 / 8200 / 2003 /
/// 2473 (and the flow label from lb-common's hash, which has pinned values of its own), not by the test's packet
/// builder: the model builds its expected frames with that builder, so a builder bug would otherwise be shared.
#[test]
fn encapsulated_frames_match_literal_bytes() {
    // TCP SYN 198.18.100.7:40000 → 198.19.0.1:80, seq 1, window 0x7210; checksums valid.
    let in4 = unhex(
        "020000000001 0200000000c1 0800
         45000028 00004000 40064aa2 c6126407 c6130001
         9c400050 00000001 00000000 50027210 b1120000",
    );
    // To backend 1 (198.18.0.10, MAC 02:00:00:00:10:01) from 198.18.0.1: IPv4, protocol 4, DF, TTL 64, id 0.
    let out4 = unhex(
        "020000001001 020000000001 0800
         4500003c 00004000 4004ae8e c6120001 c612000a
         45000028 00004000 40064aa2 c6126407 c6130001
         9c400050 00000001 00000000 50027210 b1120000",
    );
    // TCP SYN [fd00:100::7]:40001 → [fd00:99::1]:443.
    let in6 = unhex(
        "020000000001 0200000000c1 86dd
         60000000 00140640 fd000100000000000000000000000007 fd000099000000000000000000000001
         9c4101bb 00000001 00000000 50027210 a4320000",
    );
    // To backend 4 (fd00::10, MAC 02:00:00:00:10:04) from fd00::1: next header 41, hop limit 64, flow label
    // 0x7a01d (flow_hash = 0x3f47a01d).
    let out6 = unhex(
        "020000001004 020000000001 86dd
         6007a01d 003c2940 fd000000000000000000000000000001 fd000000000000000000000000000010
         60000000 00140640 fd000100000000000000000000000007 fd000099000000000000000000000001
         9c4101bb 00000001 00000000 50027210 a4320000",
    );
    let k6 = FlowKey::new(v6(CLIENT6), 40001, v6(VIP6), 443, IPPROTO_TCP);
    assert_eq!(
        flow_hash(&k6),
        0x3f47_a01d,
        "the flow hash the IPv6 literal was computed with"
    );
    let cases = vec![
        Case::one(
            Setup::new(vec![web_with(&[1; 7])]),
            Pkt::tx("IPIP, literal bytes", in4, 1, out4),
        ),
        Case::one(
            Setup::new(vec![vip(v6(VIP6), 443, IPPROTO_TCP, 3, 0, &[4; 7])]),
            Pkt::tx("IP6IP6, literal bytes", in6, 4, out6),
        ),
    ];
    run("literal", cases);
}
