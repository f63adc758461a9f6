//! The fixture world: one balancer namespace with a real FIB (routes, permanent neighbours, a policy rule), the
//! backends it can reach and how, the addresses of clients and VIPs, and the map sizes the cases are written for.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::*;
use lb_userspace::dataplane::MapSizes;

use super::model::Route;
use super::netns::{NetNs, veth_pair};

pub const LB0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x01];
pub const GW6_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x06];

pub fn be_mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x10, n]
}

pub const ENCAP_SRC_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const ENCAP_SRC_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const VIP4B: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 7);
/// A client whose source address a policy rule in the fixture network routes differently (backend 1 via the gateway): an
/// answer that depended on the client would show here.
pub const POLICY_CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 9);
/// The balancers `lb_decap` accepts tunnels from (`LB_DECAP_FROM`) in this world; `ENCAP_SRC_*` are the
/// backend's own tunnel endpoints (`LB_DECAP_LOCAL`).
pub const TUNNEL_FROM_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 1);
pub const TUNNEL_FROM_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);

/// Backend ids of the fixture world and where they sit. Ids 1–3 on-link v4, 4–5 on-link v6, 6 behind a v4 gateway,
/// 7 on the second interface (redirect), 8 unroutable, 9 on-link without a neighbour entry, 10 behind a v6 gateway.
pub fn backend_ip(id: BackendId) -> IpAddr {
    match id {
        1..=3 => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9 + id as u8)),
        4 => "fd00::10".parse().unwrap(),
        5 => "fd00::11".parse().unwrap(),
        6 => "198.18.5.10".parse().unwrap(),
        7 => "198.18.2.10".parse().unwrap(),
        8 => "198.18.3.10".parse().unwrap(),
        9 => "198.18.0.13".parse().unwrap(),
        10 => "fd00:5::10".parse().unwrap(),
        _ => panic!("no backend {id} in the fixture world"),
    }
}

pub const LAB_BACKENDS: std::ops::RangeInclusive<BackendId> = 1..=10;

/// Lab backend `id`, active, belonging to service `owner`.
pub fn backend(id: BackendId, owner: u32) -> Backend {
    Backend::new(backend_ip(id), owner, BACKEND_F_ACTIVE)
}

/// Small maps: small rings make expectations easy to reason about, and loading stays fast.
pub const SIZES: MapSizes = MapSizes {
    max_vips: 8,
    max_backends: 32,
    flow_table_size: 4096,
    max_ring_size: 13,
};

/// The fixture network: namespace `lb` (where the program runs) with `lb0` (ingress) and `lb1` (a second port) to
/// a peer namespace; routes and PERMANENT neighbours so `bpf_fib_lookup` answers from a known table. (Not the lab
/// of `crate::lab`, which runs a whole balancer with real traffic.)
pub struct FixtureNet {
    pub lb: NetNs,
    pub peer: NetNs,
    pub if_in: u32,
    pub if_other: u32,
}

impl FixtureNet {
    pub fn new(tag: &str) -> FixtureNet {
        super::netns::cleanup_stale();
        let lb = NetNs::new(tag);
        let peer = NetNs::new(tag);
        veth_pair(&lb, "lb0", &peer, "pr0");
        veth_pair(&lb, "lb1", &peer, "pr1");
        lb.set_mac("lb0", LB0_MAC);
        lb.set_mac("lb1", LB1_MAC);
        // bpf_fib_lookup answers "forwarding disabled" unless the ingress device forwards.
        lb.sysctl("net.ipv4.ip_forward", "1");
        lb.sysctl("net.ipv6.conf.all.forwarding", "1");
        lb.add_addr("lb0", "198.18.0.1/24");
        lb.add_addr("lb0", "fd00::1/64");
        lb.add_addr("lb1", "198.18.2.1/24");
        lb.add_addr("lb1", "fd00:2::1/64");
        for id in 1..=5 {
            lb.add_neigh("lb0", &backend_ip(id).to_string(), be_mac(id as u8));
        }
        lb.add_neigh("lb0", "198.18.0.254", GW_MAC);
        lb.add_neigh("lb0", "fd00::fe", GW6_MAC);
        lb.add_route("198.18.5.0/24", Some("198.18.0.254"), "lb0");
        lb.add_route("fd00:5::/64", Some("fd00::fe"), "lb0");
        lb.add_neigh("lb1", "198.18.2.10", be_mac(7));
        lb.ip(&[
            "route",
            "add",
            "198.18.0.10/32",
            "via",
            "198.18.0.254",
            "dev",
            "lb0",
            "table",
            "100",
        ]);
        lb.ip(&[
            "rule",
            "add",
            "from",
            &POLICY_CLIENT4.to_string(),
            "lookup",
            "100",
        ]);
        let if_in = lb.ifindex("lb0");
        let if_other = lb.ifindex("lb1");
        FixtureNet {
            lb,
            peer,
            if_in,
            if_other,
        }
    }
}

/// What the fixture network's FIB answers for each backend (absent: no route or no neighbour), with `lb0` at `if_in` and
/// `lb1` at `if_other`.
pub fn lab_routes(if_in: u32, if_other: u32) -> HashMap<IpAddr, Route> {
    let on = |smac, dmac, ifindex| Route {
        smac,
        dmac,
        ifindex,
    };
    let mut r: HashMap<IpAddr, Route> = (1..=5)
        .map(|id| (backend_ip(id), on(LB0_MAC, be_mac(id as u8), if_in)))
        .collect();
    r.insert(backend_ip(6), on(LB0_MAC, GW_MAC, if_in));
    r.insert(backend_ip(10), on(LB0_MAC, GW6_MAC, if_in));
    r.insert(backend_ip(7), on(LB1_MAC, be_mac(7), if_other));
    r
}

pub fn base_config() -> GlobalConfig {
    GlobalConfig {
        encap_src_v4: u32::from_ne_bytes(ENCAP_SRC_V4.octets()),
        encap_src_v6: addr_words(IpAddr::V6(ENCAP_SRC_V6)).0,
        ring_stride: SIZES.max_ring_size,
        new_flow_cap: 0,
        mtu: 0,
        flags: 0,
        icmp_answer_cap: 0,
    }
}
