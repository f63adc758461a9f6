//! The fixture runner: the real production and lab objects loaded once in the world's namespace, cases applied to
//! the kernel's maps and the model alike, each packet run through `BPF_PROG_TEST_RUN` and checked three ways by
//! the oracle (kernel against the expectation, model against the expectation, kernel against model).

use std::collections::HashMap;
use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use lb_common::*;
use lb_userspace::dataplane::{Dataplane, LoadOptions, MapSizes};

use super::case::*;
use super::lab_programs::LabPrograms;
use super::model::{ModelState, Outcome, action_name};
use super::netns::NsEnterGuard;
use super::oracle::{compare_frame, delta, model_errors, stats_delta};
use super::packets::{hex, verify_checksums};
use super::world::*;

/// What the kernel did with one packet, as far as the maps and `test_run` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRun {
    pub action: u32,
    pub frame: Vec<u8>,
    /// Counter deltas (non-zero only).
    pub counters: Vec<(Counter, u64)>,
    pub backend: Option<BackendId>,
}

/// The loaded objects inside the fixture network's namespace. Field order is drop order: the object goes first, then the thread
/// leaves the namespace, then the namespaces are deleted.
pub struct Rig {
    pub dp: Dataplane,
    /// The calibration programs, for benchmarks that time them beside `lb_xdp`.
    pub lab_programs: LabPrograms,
    _in_ns: NsEnterGuard,
    pub net: FixtureNet,
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
    /// Builds the fixture network and loads the objects in it. The current thread stays in its namespace until the rig
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
        let net = FixtureNet::new(tag);
        let in_ns = net.lb.enter();
        let mut dp = Dataplane::load(&LoadOptions {
            sizes,
            pin_dir: None,
            programs: programs::PRODUCTION,
        })
        .unwrap_or_else(|e| panic!("loading the dataplane object: {e:#}"));
        let lab_programs = LabPrograms::load().unwrap_or_else(|e| panic!("{e:#}"));
        dp.add_tx_port(net.if_other)
            .expect("add lb1 to LB_TX_PORTS");
        dp.add_tx_port(net.if_in).expect("add lb0 to LB_TX_PORTS");
        for ip in [IpAddr::V4(ENCAP_SRC_V4), IpAddr::V6(ENCAP_SRC_V6)] {
            dp.add_decap_local(&AddrKey::new(ip)).expect("decap local");
        }
        for ip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
            dp.add_decap_vip(&AddrKey::new(ip)).expect("decap vip");
        }
        for ip in [IpAddr::V4(TUNNEL_FROM_V4), IpAddr::V6(TUNNEL_FROM_V6)] {
            dp.add_decap_from(&AddrKey::new(ip)).expect("decap from");
        }
        let model = Setup::new(Vec::new()).model(net.if_in, net.if_other);
        Rig {
            dp,
            lab_programs,
            _in_ns: in_ns,
            net,
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
        let other = self.net.if_other;
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
                        self.net.if_in
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
        self.model = setup.model(self.net.if_in, other);
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
        let ctx = xdp_md(frame.len(), self.net.if_in);
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
        // Only the world's backends can be chosen (others are unset), and fewer reads keep the differential fast.
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
