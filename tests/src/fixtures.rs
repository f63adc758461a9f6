//! The fixture runner: a private namespace with a real FIB, the real object loaded once, and cases of
//! {map contents, packets, expectations} run through BPF_PROG_TEST_RUN and through the reference model.
//!
//! Each packet step is checked three ways: the kernel against the hand-written expectation, the model against the
//! same expectation, and the kernel against the model on everything observable (verdict, exact counter deltas,
//! backend, VIP stats deltas, the whole flow table). A mismatch names the case and step and shows both frames.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use lb_common::*;
use lb_userspace::dataplane::{Dataplane, LoadOptions, MapSizes};

use crate::lab_programs::LabPrograms;
use crate::model::{ModelState, Outcome, Route, action_name};
use crate::netns::{NetNs, NsEnterGuard, veth_pair};
use crate::packets::{field_at, hex, verify_checksums};

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
/// A client whose source address a policy rule in the lab routes differently (backend 1 via the gateway): an
/// answer that depended on the client would show here.
pub const POLICY_CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 9);
/// The balancers `lb_decap` accepts tunnels from (`LB_DECAP_FROM`) in this world; `ENCAP_SRC_*` are the
/// backend's own tunnel endpoints (`LB_DECAP_LOCAL`).
pub const TUNNEL_FROM_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 1);
pub const TUNNEL_FROM_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);

/// Backend ids of the lab and where they sit. Ids 1–3 on-link v4, 4–5 on-link v6, 6 behind a v4 gateway,
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
        _ => panic!("no lab backend {id}"),
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

/// The lab: namespace `lb` (where the program runs) with `lb0` (ingress) and `lb1` (a second port) to a peer
/// namespace; routes and PERMANENT neighbours so `bpf_fib_lookup` answers from a known table.
pub struct Lab {
    pub lb: NetNs,
    pub peer: NetNs,
    pub if_in: u32,
    pub if_other: u32,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        crate::netns::cleanup_stale();
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
        Lab {
            lb,
            peer,
            if_in,
            if_other,
        }
    }
}

/// What the lab's FIB answers for each lab backend (absent: no route or no neighbour), with `lb0` at `if_in` and
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

/// A VIP and its ring as a case sets it up.
#[derive(Clone, Debug)]
pub struct VipSpec {
    pub key: VipKey,
    pub vip_id: u32,
    pub flags: u32,
    pub ring: Vec<BackendId>,
}

impl VipSpec {
    pub fn new(
        addr: IpAddr,
        port: u16,
        proto: u8,
        vip_id: u32,
        flags: u32,
        ring: &[BackendId],
    ) -> VipSpec {
        VipSpec {
            key: VipKey::new(addr, port, proto),
            vip_id,
            flags,
            ring: ring.to_vec(),
        }
    }
}

/// A rate window a case starts with (`LB_RATE_WINDOWS[limit]` on the test CPU).
#[derive(Clone, Copy, Debug)]
pub struct WindowFill {
    pub limit: RateLimit,
    /// Already taken from it.
    pub count: u64,
    /// Started two windows ago, so the next take opens a fresh one; otherwise frozen (started in the future, so it
    /// never rolls over however long the case takes).
    pub expired: bool,
}

/// Map contents at the start of a case.
#[derive(Clone, Debug)]
pub struct Setup {
    pub config: GlobalConfig,
    pub vips: Vec<VipSpec>,
    /// Backends written to `LB_BACKENDS`: the lab's 10, each owned by the first VIP whose ring names it (the first
    /// VIP when none does); a case may mark some inactive or hand them to another service.
    pub backends: Vec<(BackendId, Backend)>,
    pub flows: Vec<(FlowKey, FlowState)>,
    pub windows: Vec<WindowFill>,
    /// Leave the second port out of `LB_TX_PORTS` (redirects to it must fail).
    pub no_redirect_port: bool,
    /// `LB_NEXTHOP_CACHE` entries planted before the packets: (backend, answer or `None` for a remembered failure,
    /// valid for how long from now; 0 = already expired). An `ifindex` of 0 stands for the ingress interface.
    pub nexthop: Vec<(BackendId, Option<Route>, u64)>,
}

impl Setup {
    pub fn new(vips: Vec<VipSpec>) -> Setup {
        let owner = |id: BackendId| {
            vips.iter()
                .find(|v| v.ring.contains(&id))
                .or(vips.first())
                .map_or(0, |v| v.vip_id)
        };
        let backends = LAB_BACKENDS
            .map(|id| (id, backend(id, owner(id))))
            .collect();
        Setup {
            config: base_config(),
            vips,
            backends,
            flows: Vec::new(),
            windows: Vec::new(),
            no_redirect_port: false,
            nexthop: Vec::new(),
        }
    }

    /// Replaces backend `id`'s entry.
    pub fn set_backend(&mut self, id: BackendId, b: Backend) {
        self.backends.retain(|(i, _)| *i != id);
        self.backends.push((id, b));
    }

    /// The reference model's state for this setup, in a world whose ingress interface is `if_in` and whose second
    /// port is `if_other`: the one place a setup becomes model state (the rig and the model-only runner share it).
    pub fn model(&self, if_in: u32, if_other: u32) -> ModelState {
        let mut m = ModelState {
            routes: lab_routes(if_in, if_other),
            ingress_ifindex: if_in,
            config: self.config,
            backends: self.backends.iter().copied().collect(),
            flows: self.flows.iter().copied().collect(),
            ..Default::default()
        };
        for ip in [IpAddr::V4(ENCAP_SRC_V4), IpAddr::V6(ENCAP_SRC_V6)] {
            m.decap_local.insert(AddrKey::new(ip));
        }
        for ip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
            m.decap_vips.insert(AddrKey::new(ip));
        }
        for ip in [IpAddr::V4(TUNNEL_FROM_V4), IpAddr::V6(TUNNEL_FROM_V6)] {
            m.decap_from.insert(AddrKey::new(ip));
        }
        if !self.no_redirect_port {
            m.tx_ports.insert(if_other);
        }
        for w in &self.windows {
            m.window_count[w.limit as usize] = if w.expired { 0 } else { w.count };
        }
        for (id, r, valid_ns) in &self.nexthop {
            if *valid_ns > 0 {
                let r = r.map(|r| Route {
                    ifindex: if r.ifindex == 0 { if_in } else { r.ifindex },
                    ..r
                });
                m.nexthop_cache.insert(*id, r);
            }
        }
        for v in &self.vips {
            // A VIP new to `LB_VIPS` gets its ring in slot `2 * vip_id` (`Dataplane::install_ring`).
            let meta = VipMeta {
                vip_id: v.vip_id,
                flags: v.flags,
                ring_slot: 2 * v.vip_id,
                ring_size: v.ring.len() as u32,
            };
            model_ring(&mut m, &v.key, meta, &v.ring);
        }
        m
    }

    /// Backend `id`'s entry as the setup has it.
    pub fn backend(&self, id: BackendId) -> Backend {
        self.backends
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, b)| *b)
            .unwrap_or_else(|| panic!("no backend {id} in the setup"))
    }
}

/// What the output frame must be.
#[derive(Clone, Debug)]
pub enum Out {
    /// The input, byte for byte.
    Unchanged,
    /// Not compared (drops).
    Ignore,
    Bytes(Vec<u8>),
}

/// One packet through one program, and what must happen.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub name: String,
    pub prog: &'static str,
    pub input: Vec<u8>,
    pub action: u32,
    pub counter: Counter,
    pub info: Vec<Counter>,
    pub backend: Option<BackendId>,
    pub out: Out,
    /// After the step, this flow must map to this backend (`None`: must be absent).
    pub flow: Option<(FlowKey, Option<BackendId>)>,
}

impl Pkt {
    pub fn new(name: &str, input: Vec<u8>, action: u32, counter: Counter) -> Pkt {
        let out = if action == XDP_DROP {
            Out::Ignore
        } else {
            Out::Unchanged
        };
        Pkt {
            name: name.into(),
            prog: programs::LB,
            input,
            action,
            counter,
            info: Vec::new(),
            backend: None,
            out,
            flow: None,
        }
    }
    pub fn pass(name: &str, input: Vec<u8>, counter: Counter) -> Pkt {
        Pkt::new(name, input, XDP_PASS, counter)
    }
    pub fn drop(name: &str, input: Vec<u8>, counter: Counter) -> Pkt {
        Pkt::new(name, input, XDP_DROP, counter)
    }
    /// Forwarded with `XDP_TX` to `backend` as `out`.
    pub fn tx(name: &str, input: Vec<u8>, backend: BackendId, out: Vec<u8>) -> Pkt {
        Pkt {
            backend: Some(backend),
            out: Out::Bytes(out),
            ..Pkt::new(name, input, XDP_TX, Counter::Tx)
        }
    }
    pub fn decap(mut self) -> Pkt {
        self.prog = programs::DECAP;
        self
    }
    pub fn info(mut self, c: Counter) -> Pkt {
        self.info.push(c);
        self
    }
    pub fn backend(mut self, id: BackendId) -> Pkt {
        self.backend = Some(id);
        self
    }
    pub fn out(mut self, out: Vec<u8>) -> Pkt {
        self.out = Out::Bytes(out);
        self
    }
    pub fn flow(mut self, key: FlowKey, backend: Option<BackendId>) -> Pkt {
        self.flow = Some((key, backend));
        self
    }
    /// The exact counter deltas this step must cause.
    pub fn want_counters(&self) -> Vec<(Counter, u64)> {
        let mut want = vec![(self.counter, 1)];
        want.extend(self.info.iter().map(|c| (*c, 1)));
        want.sort_by_key(|(c, _)| *c as u32);
        want
    }
}

#[derive(Clone, Debug)]
pub enum Step {
    Packet(Pkt),
    /// Atomically switch a VIP's ring (as the daemon does on a backend change).
    Ring(VipKey, Vec<BackendId>),
    /// Rewrite a backend entry (e.g. mark it inactive, or hand its id to another service).
    Backend(BackendId, Backend),
    /// Rewrite `LB_CONFIG`.
    Config(GlobalConfig),
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub setup: Setup,
    pub steps: Vec<Step>,
}

impl Case {
    pub fn new(name: &str, setup: Setup, steps: Vec<Step>) -> Case {
        Case {
            name: name.into(),
            setup,
            steps,
        }
    }
    /// A case of one packet.
    pub fn one(setup: Setup, pkt: Pkt) -> Case {
        Case {
            name: pkt.name.clone(),
            setup,
            steps: vec![Step::Packet(pkt)],
        }
    }
}

/// What the kernel did with one packet, as far as the maps and `test_run` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRun {
    pub action: u32,
    pub frame: Vec<u8>,
    /// Counter deltas (non-zero only).
    pub counters: Vec<(Counter, u64)>,
    pub backend: Option<BackendId>,
}

/// The loaded object inside the lab namespace. Field order is drop order: the object goes first, then the thread
/// leaves the namespace, then the namespaces are deleted.
pub struct Rig {
    pub dp: Dataplane,
    /// The calibration programs, for benchmarks that time them beside `lb_xdp`.
    pub lab_programs: LabPrograms,
    _in_ns: NsEnterGuard,
    pub lab: Lab,
    pub model: ModelState,
    /// Vip keys currently installed, to remove between cases.
    installed: Vec<VipKey>,
    pub packets_run: usize,
    /// Counters and backend packet counts after the last [`Rig::kernel`] run: the next run's "before", so each
    /// packet costs one read of them, not two. Anything else that runs the program forgets it.
    last_seen: Option<(HashMap<u32, u64>, Vec<u64>)>,
}

/// The `xdp_md` a test run starts with: `data` = 0 (no metadata), `data_end` = length, the ingress ifindex,
/// queue 0; the kernel rejects anything else (net/bpf/test_run.c, `xdp_convert_md_to_buff`).
pub fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    b[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    b
}

/// The kernel refuses test runs of frames shorter than an Ethernet header.
pub const MIN_TEST_RUN_LEN: usize = 14;

impl Rig {
    /// Builds the lab and loads the object in it. The current thread stays in the lab namespace until the rig
    /// drops, so test runs resolve `ingress_ifindex` there.
    pub fn new(tag: &str) -> Rig {
        Rig::with_sizes(tag, SIZES)
    }

    /// `sizes` must keep `SIZES`' VIP count, backend count and ring size (the cases and configs assume them).
    pub fn with_sizes(tag: &str, sizes: MapSizes) -> Rig {
        assert_eq!(
            (sizes.max_vips, sizes.max_backends, sizes.max_ring_size),
            (SIZES.max_vips, SIZES.max_backends, SIZES.max_ring_size),
            "only the flow table size may differ"
        );
        // Per-CPU state (the new-flow window, the next-hop cache) must be the same CPU's from run to run.
        let mut cpus = nix::sched::CpuSet::new();
        cpus.set(0).expect("cpu 0");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)
            .expect("pin the test thread to cpu 0");
        let lab = Lab::new(tag);
        let in_ns = lab.lb.enter();
        let mut dp = Dataplane::load(&LoadOptions {
            sizes,
            pin_dir: None,
            programs: programs::PRODUCTION,
        })
        .unwrap_or_else(|e| panic!("loading the dataplane object: {e:#}"));
        let lab_programs = LabPrograms::load().unwrap_or_else(|e| panic!("{e:#}"));
        dp.add_tx_port(lab.if_other)
            .expect("add lb1 to LB_TX_PORTS");
        dp.add_tx_port(lab.if_in).expect("add lb0 to LB_TX_PORTS");
        for ip in [IpAddr::V4(ENCAP_SRC_V4), IpAddr::V6(ENCAP_SRC_V6)] {
            dp.add_decap_local(&AddrKey::new(ip)).expect("decap local");
        }
        for ip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
            dp.add_decap_vip(&AddrKey::new(ip)).expect("decap vip");
        }
        for ip in [IpAddr::V4(TUNNEL_FROM_V4), IpAddr::V6(TUNNEL_FROM_V6)] {
            dp.add_decap_from(&AddrKey::new(ip)).expect("decap from");
        }
        let model = Setup::new(Vec::new()).model(lab.if_in, lab.if_other);
        Rig {
            dp,
            lab_programs,
            _in_ns: in_ns,
            lab,
            model,
            installed: Vec::new(),
            packets_run: 0,
            last_seen: None,
        }
    }

    /// Replaces all balancing state (kernel and model) with `setup`.
    pub fn apply(&mut self, setup: &Setup) {
        self.last_seen = None;
        for key in std::mem::take(&mut self.installed) {
            self.dp.remove_vip(&key).expect("remove vip");
        }
        self.dp.clear_flows().expect("clear flows");
        for id in 1..SIZES.max_backends {
            self.dp.clear_backend(id).expect("clear backend");
        }
        self.reset_percpu();
        self.dp.set_config(&setup.config).expect("set config");
        for (id, b) in &setup.backends {
            self.dp.set_backend(*id, b).expect("set backend");
        }
        for v in &setup.vips {
            let meta = VipMeta {
                vip_id: v.vip_id,
                flags: v.flags,
                ring_slot: 0,
                ring_size: v.ring.len() as u32,
            };
            self.dp
                .install_ring(&v.key, meta, &v.ring)
                .expect("install ring");
            self.installed.push(v.key);
        }
        for (k, st) in &setup.flows {
            self.dp.insert_flow(k, st).expect("insert flow");
        }
        let other = self.lab.if_other;
        if setup.no_redirect_port {
            self.dp
                .remove_tx_port(other)
                .expect("remove lb1 from LB_TX_PORTS");
        } else {
            self.dp.add_tx_port(other).expect("add lb1 to LB_TX_PORTS");
        }
        for (id, r, valid_ns) in &setup.nexthop {
            let nh = match r {
                Some(r) => NextHop {
                    smac: r.smac,
                    dmac: r.dmac,
                    ifindex: if r.ifindex == 0 {
                        self.lab.if_in
                    } else {
                        r.ifindex
                    },
                    expires_ns: 0,
                },
                None => NextHop::default(),
            };
            let expires_ns = if *valid_ns == 0 {
                1
            } else {
                monotonic_ns() + valid_ns
            };
            self.dp
                .set_nexthop(*id, &NextHop { expires_ns, ..nh })
                .expect("plant a next hop");
        }
        for w in &setup.windows {
            let now = monotonic_ns();
            let window_start_ns = if w.expired {
                now - 2 * RATE_WINDOW_NS
            } else {
                now + FROZEN_NS
            };
            let window = RateWindow {
                window_start_ns,
                count: w.count,
            };
            self.dp
                .set_rate_window(w.limit, &window)
                .expect("set a rate window");
        }
        self.model = setup.model(self.lab.if_in, other);
    }

    /// Empties the flow table of both the kernel and the model.
    pub fn reset_flows(&mut self) {
        self.dp.clear_flows().expect("clear flows");
        self.model.flows.clear();
    }

    /// `None` when the kernel's flow table equals the model's, else a description of the difference.
    pub fn compare_flow_tables(&self) -> Option<String> {
        let kernel: HashMap<FlowKey, FlowState> = self
            .dp
            .flows(1 << 20)
            .expect("read flows")
            .into_iter()
            .collect();
        if kernel == self.model.flows {
            return None;
        }
        let only_k: Vec<_> = kernel
            .iter()
            .filter(|(k, v)| self.model.flows.get(k) != Some(v))
            .take(5)
            .collect();
        let only_m: Vec<_> = self
            .model
            .flows
            .iter()
            .filter(|(k, v)| kernel.get(k) != Some(v))
            .take(5)
            .collect();
        Some(format!(
            "flow tables differ: kernel {} entries, model {}; kernel-only/different {only_k:?}; model-only/different {only_m:?}",
            kernel.len(),
            self.model.flows.len()
        ))
    }

    /// Zeroes the next-hop cache (so a case never sees a previous case's answer) and the rate windows.
    fn reset_percpu(&mut self) {
        for id in 1..SIZES.max_backends {
            self.dp
                .set_nexthop(id, &NextHop::default())
                .expect("clear a next hop");
        }
        for limit in [RateLimit::NewFlows, RateLimit::IcmpAnswers] {
            self.dp
                .set_rate_window(limit, &RateWindow::default())
                .expect("clear a rate window");
        }
    }

    /// Sets rate window `limit` to `count`, frozen (as [`WindowFill`] does), in the kernel and the model: the
    /// differential test opens a new window this way without waiting for the clock.
    pub fn set_window(&mut self, limit: RateLimit, count: u64) {
        let window = RateWindow {
            window_start_ns: monotonic_ns() + FROZEN_NS,
            count,
        };
        self.dp
            .set_rate_window(limit, &window)
            .expect("set a rate window");
        self.model.window_count[limit as usize] = count;
    }

    /// This CPU's `LB_NEXTHOP_CACHE[id]` (the test thread is pinned to CPU 0).
    pub fn nexthop(&self, id: BackendId) -> NextHop {
        self.dp.nexthops(id).expect("read LB_NEXTHOP_CACHE")[0]
    }

    /// A program of either object by name.
    pub fn xdp(&mut self, prog: &str) -> anyhow::Result<&mut aya::programs::Xdp> {
        if programs::PRODUCTION.contains(&prog) {
            self.dp.xdp(prog)
        } else {
            self.lab_programs.xdp(prog)
        }
    }

    /// Runs `frame` through program `prog` with BPF_PROG_TEST_RUN; `Err` when the kernel refuses the run.
    pub fn test_run(&mut self, prog: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
        self.last_seen = None;
        self.run_program(prog, frame)
    }

    fn run_program(&mut self, prog: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
        let ctx = xdp_md(frame.len(), self.lab.if_in);
        let mut out = vec![0u8; frame.len() + 1024];
        let xdp = self.xdp(prog).map_err(|e| format!("{e:#}"))?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        };
        let r = xdp.test_run(opts).map_err(|e| format!("test_run: {e:?}"))?;
        out.truncate(r.data_size_out as usize);
        self.packets_run += 1;
        Ok((r.return_value, out))
    }

    fn counters(&self) -> HashMap<u32, u64> {
        self.dp
            .counters()
            .expect("read counters")
            .into_iter()
            .map(|(c, v)| (c as u32, v))
            .collect()
    }

    fn backend_packets(&self) -> Vec<u64> {
        // Only the lab's backends can be chosen (others are unset), and fewer reads keep the differential fast.
        LAB_BACKENDS
            .map(|id| self.dp.backend_stats(id).expect("backend stats").packets)
            .collect()
    }

    /// One packet through the kernel, with the deltas it caused.
    pub fn kernel(&mut self, prog: &str, frame: &[u8]) -> Result<KernelRun, String> {
        let (c0, b0) = match self.last_seen.take() {
            Some(seen) => seen,
            None => (self.counters(), self.backend_packets()),
        };
        let (action, out) = self.run_program(prog, frame)?;
        let (c1, b1) = (self.counters(), self.backend_packets());
        let counters = delta(&c0, &c1);
        let chosen: Vec<BackendId> = LAB_BACKENDS
            .zip(b0.iter().zip(&b1))
            .filter(|(_, (a, b))| a != b)
            .map(|(id, _)| id)
            .collect();
        self.last_seen = Some((c1, b1));
        if chosen.len() > 1 {
            return Err(format!(
                "backend stats of several backends moved: {chosen:?}"
            ));
        }
        Ok(KernelRun {
            action,
            frame: out,
            counters,
            backend: chosen.first().copied(),
        })
    }

    /// The model on one packet, with its counter deltas.
    pub fn model_run(&mut self, prog: &str, frame: &[u8]) -> (Outcome, Vec<(Counter, u64)>) {
        let c0 = self.model.counters.clone();
        let o = if prog == programs::DECAP {
            self.model.lb_decap(frame)
        } else {
            self.model.lb_xdp(frame)
        };
        let d = delta(&c0, &self.model.counters);
        (o, d)
    }

    /// Runs a case; returns the failures (empty = passed).
    pub fn run_case(&mut self, case: &Case) -> Vec<String> {
        self.apply(&case.setup);
        let mut failures = Vec::new();
        for (i, step) in case.steps.iter().enumerate() {
            match step {
                Step::Packet(p) => {
                    let errs = self.check_packet(p);
                    if !errs.is_empty() {
                        failures.push(format!(
                            "case {:?}, step {i} {:?}:\n  {}\ninput:\n{}",
                            case.name,
                            p.name,
                            errs.join("\n  "),
                            hex(&p.input)
                        ));
                    }
                }
                other => self.step(other),
            }
        }
        failures
    }

    /// A map change of a case (not a packet), in the kernel and the model alike.
    pub fn step(&mut self, step: &Step) {
        match step {
            Step::Ring(key, ring) => {
                let meta = *self
                    .model
                    .vips
                    .get(key)
                    .expect("ring change of a VIP the case set up");
                let meta = self.dp.install_ring(key, meta, ring).expect("install ring");
                model_ring(&mut self.model, key, meta, ring);
            }
            Step::Backend(id, b) => {
                self.dp.set_backend(*id, b).expect("set backend");
                self.model.backends.insert(*id, *b);
            }
            Step::Config(cfg) => {
                self.dp.set_config(cfg).expect("set config");
                self.model.config = *cfg;
            }
            Step::Packet(_) => panic!("Rig::step takes map changes; packets go through run_case"),
        }
    }

    fn check_packet(&mut self, p: &Pkt) -> Vec<String> {
        let mut errs = Vec::new();
        let vip_ids: Vec<u32> = self.model.vips.values().map(|m| m.vip_id).collect();
        let vs0: Vec<VipStats> = vip_ids
            .iter()
            .map(|&v| self.dp.vip_stats(v).expect("vip stats"))
            .collect();
        let mv0: Vec<VipStats> = vip_ids
            .iter()
            .map(|v| self.model.vip_stats.get(v).copied().unwrap_or_default())
            .collect();
        let (mut model, model_counters) = self.model_run(p.prog, &p.input);
        model.flows_after = self.model.flows.clone();
        let want_counters = p.want_counters();

        errs.extend(model_errors(p, &model, &model_counters, &want_counters));

        if p.input.len() < MIN_TEST_RUN_LEN {
            // The kernel never runs the program on such a frame; check that it refuses, the model covered the rest.
            if self.test_run(p.prog, &p.input).is_ok() {
                errs.push(format!(
                    "KERNEL: accepted a test run of {} bytes",
                    p.input.len()
                ));
            }
            return errs;
        }
        let k = match self.kernel(p.prog, &p.input) {
            Ok(k) => k,
            Err(e) => {
                errs.push(format!("KERNEL: {e}"));
                return errs;
            }
        };
        if k.action != p.action || k.counters != want_counters {
            errs.push(format!(
                "KERNEL: {} counters {:?}, expected {} counters {:?}",
                action_name(k.action),
                k.counters,
                action_name(p.action),
                want_counters
            ));
        }
        if p.action != XDP_PASS && k.backend != p.backend {
            errs.push(format!(
                "KERNEL: backend {:?}, expected {:?}",
                k.backend, p.backend
            ));
        }
        if k.action != XDP_DROP {
            if let Some(e) = compare_frame("KERNEL", &p.out, &p.input, &k.frame) {
                errs.push(e);
            }
            if let (Out::Bytes(_), Err(e)) = (&p.out, verify_checksums(&k.frame)) {
                errs.push(format!("KERNEL: output checksum: {e}"));
            }
        }
        // Kernel and model agree on the state they changed.
        let vs1: Vec<VipStats> = vip_ids
            .iter()
            .map(|&v| self.dp.vip_stats(v).expect("vip stats"))
            .collect();
        for (j, v) in vip_ids.iter().enumerate() {
            let kd = stats_delta(&vs0[j], &vs1[j]);
            let m1 = self.model.vip_stats.get(v).copied().unwrap_or_default();
            let md = stats_delta(&mv0[j], &m1);
            if kd != md {
                errs.push(format!("VIP_STATS[{v}] delta: kernel {kd:?}, model {md:?}"));
            }
        }
        let mut kflows: Vec<(FlowKey, FlowState)> = self.dp.flows(100_000).expect("read flows");
        let mut mflows: Vec<(FlowKey, FlowState)> =
            self.model.flows.iter().map(|(k, v)| (*k, *v)).collect();
        kflows.sort_by_key(|(k, _)| format!("{k:?}"));
        mflows.sort_by_key(|(k, _)| format!("{k:?}"));
        if kflows != mflows {
            errs.push(format!(
                "flow table: kernel {kflows:?}\n  model  {mflows:?}"
            ));
        }
        if let Some((key, want)) = &p.flow {
            let got = kflows
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, s)| s.backend_id);
            if got != *want {
                errs.push(format!(
                    "flow {key:?}: kernel has backend {got:?}, expected {want:?}"
                ));
            }
        }
        errs
    }
}

/// The model's answer against a step's expectation.
fn model_errors(
    p: &Pkt,
    model: &Outcome,
    counters: &[(Counter, u64)],
    want: &[(Counter, u64)],
) -> Vec<String> {
    let mut errs = Vec::new();
    if model.action != p.action || model.counter != p.counter || counters != want {
        errs.push(format!(
            "MODEL: {} {:?} counters {:?}, expected {} {:?} counters {:?}",
            action_name(model.action),
            model.counter,
            counters,
            action_name(p.action),
            p.counter,
            want
        ));
    }
    if model.backend != p.backend && p.action != XDP_PASS {
        errs.push(format!(
            "MODEL: backend {:?}, expected {:?}",
            model.backend, p.backend
        ));
    }
    if let Some(e) = compare_frame("MODEL", &p.out, &p.input, &model.frame) {
        errs.push(e);
    }
    if let Some((key, want)) = &p.flow {
        let got = model.flows_after.get(key).map(|s| s.backend_id);
        if got != *want {
            errs.push(format!(
                "MODEL: flow {key:?} has backend {got:?}, expected {want:?}"
            ));
        }
    }
    errs
}

/// Runs the cases through the model alone (no kernel, no root): the model must meet every hand-written
/// expectation. Returns the failures.
pub fn check_model(cases: &[Case]) -> Vec<String> {
    const IF_IN: u32 = 2;
    let mut failures = Vec::new();
    for case in cases {
        let mut m = case.setup.model(IF_IN, IF_IN + 1);
        for (i, step) in case.steps.iter().enumerate() {
            match step {
                Step::Ring(key, ring) => {
                    let mut meta = m.vips[key];
                    meta.ring_slot ^= 1;
                    meta.ring_size = ring.len() as u32;
                    model_ring(&mut m, key, meta, ring);
                }
                Step::Backend(id, b) => {
                    m.backends.insert(*id, *b);
                }
                Step::Config(cfg) => m.config = *cfg,
                Step::Packet(p) => {
                    let c0 = m.counters.clone();
                    let mut o = if p.prog == programs::DECAP {
                        m.lb_decap(&p.input)
                    } else {
                        m.lb_xdp(&p.input)
                    };
                    o.flows_after = m.flows.clone();
                    let d = delta(&c0, &m.counters);
                    let errs = model_errors(p, &o, &d, &p.want_counters());
                    if !errs.is_empty() {
                        failures.push(format!(
                            "case {:?}, step {i} {:?}:\n  {}",
                            case.name,
                            p.name,
                            errs.join("\n  ")
                        ));
                    }
                }
            }
        }
    }
    failures
}

fn model_ring(m: &mut ModelState, key: &VipKey, meta: VipMeta, ring: &[BackendId]) {
    for (i, id) in ring.iter().enumerate() {
        m.ring
            .insert(meta.ring_slot * SIZES.max_ring_size + i as u32, *id);
    }
    m.vips.insert(*key, meta);
}

/// How far in the future a frozen rate window starts: it does not roll over before the case ends.
const FROZEN_NS: u64 = 3600 * 1_000_000_000;

/// `bpf_ktime_get_ns()`'s clock.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn delta(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> Vec<(Counter, u64)> {
    let mut d: Vec<(Counter, u64)> = Counter::ALL
        .iter()
        .filter_map(|c| {
            let (a, b) = (
                before.get(&(*c as u32)).copied().unwrap_or(0),
                after.get(&(*c as u32)).copied().unwrap_or(0),
            );
            (a != b).then(|| (*c, b.wrapping_sub(a)))
        })
        .collect();
    d.sort_by_key(|(c, _)| *c as u32);
    d
}

fn stats_delta(a: &VipStats, b: &VipStats) -> [u64; 4] {
    [
        b.packets - a.packets,
        b.bytes - a.bytes,
        b.new_flows - a.new_flows,
        b.lru_misses - a.lru_misses,
    ]
}

/// `None` when `got` is what `want` says; else a readable diff.
pub fn compare_frame(who: &str, want: &Out, input: &[u8], got: &[u8]) -> Option<String> {
    let want: &[u8] = match want {
        Out::Ignore => return None,
        Out::Unchanged => input,
        Out::Bytes(b) => b,
    };
    if want == got {
        return None;
    }
    let first = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    Some(format!(
        "{who}: output differs at byte {first} ({}), lengths want {} got {}\n--- want\n{}\n--- got\n{}",
        field_at(want, first),
        want.len(),
        got.len(),
        hex(want),
        hex(got)
    ))
}
