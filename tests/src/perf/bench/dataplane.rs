//! `bench dataplane`: what one packet costs on each path of `lb_xdp`, next to a floor program, in the same run.
//!
//! BPF_PROG_TEST_RUN with `repeat > 1` reruns the program on the buffer it already rewrote (an encapsulated packet
//! is no longer for a VIP), and a packet is a new flow only once. So every iteration here is its own
//! `repeat = 1` run over a fresh copy of a packet chosen for the path. The figure is the kernel's own BPF run-time
//! statistics (BPF_ENABLE_STATS: time inside the program, per run), minus the same figure for an empty program,
//! which is what the statistics themselves cost; the paths are measured in interleaved rounds (see
//! [`Options::rounds`]).
//! After each round of a path the program's own counters must show that every iteration took the measured path. The test-run timer's per-call duration is reported beside it: it includes
//! the harness's fixed cost (timer, cold caches after the syscall) and dominates for short programs.

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_common::{Counter, IPPROTO_TCP, VIP_F_L2DSR, XDP_PASS, XDP_TX, programs};
use lb_userspace::dataplane::MapSizes;

use crate::harness::case::{Setup, VipSpec};
use crate::harness::packets::{Ip, L2, TCP_ACK, TCP_SYN, frame};
use crate::harness::rig::{Rig, xdp_md};
use crate::harness::world::{CLIENT_MAC, LB0_MAC, SIZES, VIP4, VIP4B, VIP6};

use super::median;

/// How much to measure.
pub struct Options {
    /// Iterations per path.
    pub runs: usize,
    /// The runs of every path are split into this many rounds; each round measures the empty program, the floor
    /// and every path back to back, and a figure is the median over rounds of (path − empty of the same round). A
    /// burst of load on this shared machine then moves one round of every figure, not every round of one figure.
    pub rounds: usize,
    /// Distinct established flows the established paths cycle through.
    pub flows: usize,
    /// Runs per call of the warm measurement.
    pub warm_repeat: u32,
    /// Flows of the cold established rows (`established_v4_20k`, `established_v6_20k`; `established_v4_200k`):
    /// the table is filled with them, then each is seen once, in shuffled order, across the rounds.
    pub cold_flows: [usize; 2],
}

impl Options {
    /// What `cargo xtask bench dataplane` measures.
    pub const FULL: Options = Options {
        runs: 20_000,
        rounds: 5,
        flows: 1_000,
        warm_repeat: 100_000,
        cold_flows: [20_000, 200_000],
    };
    /// One short round through every path and its checks, for the test suite: the figures mean nothing.
    pub const SMOKE: Options = Options {
        runs: 200,
        rounds: 1,
        flows: 50,
        warm_repeat: 1_000,
        cold_flows: [200, 2_000],
    };
}

pub struct Report {
    pub empty_ns: f64,
    pub floor_ns: f64,
    /// `lb_encap_floor`: parse, a fixed IPIP header, `XDP_TX` (the least any IPIP balancer does).
    pub encap_floor_ns: f64,
    /// (path, in-program ns per packet, median test-timer ns per call).
    pub paths: Vec<(&'static str, f64, f64)>,
    pub empty_timer_ns: f64,
    pub floor_timer_ns: f64,
    pub encap_floor_timer_ns: f64,
    /// Warm figures (one packet, `repeat` runs in one call, caches hot) for the paths whose rewrite leaves the
    /// packet on the same path (nothing, or only MACs): (path, in-program ns per run minus the empty program's).
    pub warm: Vec<(&'static str, f64)>,
}

/// In-program ns per run of `prog` over `repeat` runs of one packet (kernel run-time statistics).
fn warm_ns(rig: &mut Rig, prog: &str, frame: &[u8], repeat: u32, want: u32) -> f64 {
    let ifindex = rig.net.if_in;
    let xdp = rig.xdp(prog).expect("program");
    let mut out = vec![0u8; 2048];
    let (ns, ()) = program_ns(xdp, prog, u64::from(repeat), |xdp| {
        run_checked(xdp, prog, frame, ifindex, repeat, want, &mut out);
    });
    ns
}

/// One BPF_PROG_TEST_RUN of `frame` (`repeat` times); panics unless the verdict is `want`, naming `what` was
/// measured. Returns the test timer's ns per run.
fn run_checked(
    xdp: &mut Xdp,
    what: &str,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    want: u32,
    out: &mut [u8],
) -> f64 {
    let ctx = xdp_md(frame.len(), ifindex);
    let r = xdp
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("{what}: test_run: {e:?}"));
    assert_eq!(
        r.return_value, want,
        "{what}: verdict {} where {want} was measured",
        r.return_value
    );
    r.duration.as_nanos() as f64
}

/// Runs `f` and returns the program's mean in-program ns per run over it (kernel run-time statistics), checking
/// that the statistics counted exactly `runs` runs.
fn program_ns<T>(xdp: &mut Xdp, prog: &str, runs: u64, f: impl FnOnce(&mut Xdp) -> T) -> (f64, T) {
    let info0 = xdp.info().expect("program info");
    let value = f(xdp);
    let info1 = xdp.info().expect("program info");
    let counted = info1.run_count() - info0.run_count();
    assert_eq!(
        counted, runs,
        "{prog}: the run-time statistics counted {counted} runs, not {runs} (are they enabled?)"
    );
    let ns = (info1.run_time() - info0.run_time()).as_nanos() as f64 / counted as f64;
    (ns, value)
}

fn client4(i: usize) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(
        198,
        18,
        100 + (i / 60_000) as u8,
        (i % 250) as u8 + 1,
    ))
}

fn client6(i: usize) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::new(
        0xfd00,
        0x100,
        0,
        0,
        0,
        0,
        (i / 60_000) as u16,
        (i % 250) as u16 + 1,
    ))
}

fn sport(i: usize) -> u16 {
    1024 + (i % 60_000) as u16
}

fn pkt(src: IpAddr, sport: u16, dst: IpAddr, flags: u8) -> Vec<u8> {
    let ip = Ip::tcp(src, sport, dst, 80, flags)
        .payload(&[0u8; 10])
        .bytes();
    frame(&L2::new(CLIENT_MAC, LB0_MAC), &ip)
}

/// Runs `prog` once on each of `frames`; panics when a run gives another verdict than `want`, naming `what` was
/// measured. Returns the mean in-program ns per run from the kernel's run-time statistics, and each run's
/// test-timer duration.
fn time_runs(
    rig: &mut Rig,
    what: &str,
    prog: &str,
    frames: &[Vec<u8>],
    want: u32,
) -> (f64, Vec<f64>) {
    let ifindex = rig.net.if_in;
    let xdp = rig.xdp(prog).expect("program");
    let mut out = vec![0u8; 2048];
    program_ns(xdp, prog, frames.len() as u64, |xdp| {
        frames
            .iter()
            .map(|f| run_checked(xdp, what, f, ifindex, 1, want, &mut out))
            .collect()
    })
}

fn counter(rig: &Rig, c: Counter) -> u64 {
    rig.dp
        .counters()
        .expect("counters")
        .into_iter()
        .find(|(k, _)| *k == c)
        .map_or(0, |(_, v)| v)
}

/// What a path's runs must show in the program's own counters.
struct Proof {
    verdict_counter: Counter,
    vip_id: Option<u32>,
    expect_new: bool,
}

/// One measured program on one kind of packet.
struct Item<'a> {
    name: &'static str,
    prog: &'static str,
    frames: &'a [Vec<u8>],
    verdict: u32,
    proof: Option<Proof>,
}

/// Runs `frames` and proves the path: the verdict counter must grow by exactly the number of runs, and so must
/// `new_flows` (for `expect_new`) or not at all; `lru_misses` never. Returns the in-program ns per run and each
/// run's test-timer duration.
fn proven_runs(
    rig: &mut Rig,
    name: &str,
    frames: &[Vec<u8>],
    verdict: u32,
    proof: &Proof,
) -> (f64, Vec<f64>) {
    let c0 = counter(rig, proof.verdict_counter);
    let v0 = proof
        .vip_id
        .map(|id| rig.dp.vip_stats(id).expect("vip stats"));
    let measured = time_runs(rig, name, programs::LB, frames, verdict);
    let n = frames.len() as u64;
    let dc = counter(rig, proof.verdict_counter) - c0;
    assert_eq!(
        dc,
        n,
        "{name}: {} grew by {dc}, not by the {n} runs",
        proof.verdict_counter.name()
    );
    if let (Some(id), Some(v0)) = (proof.vip_id, v0) {
        let v1 = rig.dp.vip_stats(id).expect("vip stats");
        let new = v1.new_flows - v0.new_flows;
        assert_eq!(
            new,
            if proof.expect_new { n } else { 0 },
            "{name}: {new} flow-table inserts in {n} runs"
        );
        assert_eq!(
            v1.lru_misses, v0.lru_misses,
            "{name}: flow-table misses on an established path"
        );
        assert_eq!(
            v1.packets - v0.packets,
            n,
            "{name}: not every run was counted on the VIP"
        );
    }
    measured
}

/// Measures every item in `rounds` rounds, each round running a slice of every item's packets back to back.
/// Returns per item: the in-program ns of each round, and all test-timer durations.
fn interleaved(rig: &mut Rig, items: &[Item], rounds: usize) -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut out: Vec<(Vec<f64>, Vec<f64>)> = items.iter().map(|_| Default::default()).collect();
    for round in 0..rounds {
        for (item, (ns, timer)) in items.iter().zip(out.iter_mut()) {
            let per = item.frames.len() / rounds;
            let slice = &item.frames[round * per..(round + 1) * per];
            let (n, t) = match &item.proof {
                Some(proof) => proven_runs(rig, item.name, slice, item.verdict, proof),
                None => time_runs(rig, item.name, item.prog, slice, item.verdict),
            };
            ns.push(n);
            timer.extend(t);
        }
    }
    out
}

/// Median over rounds of `item - empty` of the same round.
fn net_median(item: &[f64], empty: &[f64]) -> f64 {
    let mut d: Vec<f64> = item.iter().zip(empty).map(|(a, e)| a - e).collect();
    median(&mut d)
}

pub fn run(opts: &Options) -> Report {
    let (runs, flows, warm_repeat) = (opts.runs, opts.flows, opts.warm_repeat);
    // Room for every flow the rows make (the cold rows' 220k, 20k more of IPv6, the cycled and new ones) with no
    // eviction: an evicted flow would be a miss, which the proof refuses.
    let sizes = MapSizes {
        flow_table_size: 1 << 19,
        ..SIZES
    };
    let mut rig = Rig::with_sizes("bench", sizes);
    // Ring: on-link backends of the fixture lab (1-3 IPv4, 4-5 IPv6); every backend's next hop resolves. Each VIP
    // has backends of its own: a flow entry is used only when its backend belongs to the packet's service.
    let setup = Setup::new(vec![
        VipSpec::new(
            IpAddr::V4(VIP4),
            80,
            IPPROTO_TCP,
            0,
            0,
            &[1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1],
        ),
        VipSpec::new(
            IpAddr::V6(VIP6),
            80,
            IPPROTO_TCP,
            1,
            0,
            &[4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4],
        ),
        VipSpec::new(IpAddr::V4(VIP4B), 80, IPPROTO_TCP, 2, VIP_F_L2DSR, &[3; 13]),
    ]);
    rig.apply(&setup);

    let non_vip: Vec<Vec<u8>> = (0..runs)
        .map(|i| {
            pkt(
                client4(i),
                sport(i),
                "198.18.50.1".parse().expect("ip"),
                TCP_ACK,
            )
        })
        .collect();
    let cycle = |make: &dyn Fn(usize) -> Vec<u8>| -> Vec<Vec<u8>> {
        (0..runs).map(|i| make(i % flows)).collect()
    };
    let est4 = |i: usize| pkt(client4(i), sport(i), IpAddr::V4(VIP4), TCP_ACK);
    let est6 = |i: usize| pkt(client6(i), sport(i), IpAddr::V6(VIP6), TCP_ACK);
    // Clients of their own for the 200k row (past the 20k row's), same VIP.
    let est4_large = |i: usize| est4(i + 200_000);
    let l2 = |i: usize| pkt(client4(i), sport(i), IpAddr::V4(VIP4B), TCP_ACK);
    // The run-time statistics are on while this descriptor is open, and only then.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    // Warm the flow table (and the next-hop cache) with one packet of each established flow.
    for (what, make) in [
        ("established_v4 warm-up", &est4 as &dyn Fn(usize) -> Vec<u8>),
        ("established_v6 warm-up", &est6),
        ("l2dsr_v4 warm-up", &l2),
    ] {
        let warm: Vec<Vec<u8>> = (0..flows).map(make).collect();
        time_runs(&mut rig, what, programs::LB, &warm, lb_common::XDP_TX);
    }
    // Cold rows: flows of their own (clients from index 100,000 on, apart from the cycled ones), each in the table
    // before it is measured, then seen once in shuffled order: a flow's entry is not in any cache when its packet
    // comes, as with real traffic over a large table.
    let [small, large] = opts.cold_flows;
    let mut cold_rows = Vec::new();
    for (seed, (make, n)) in [
        (&est4 as &dyn Fn(usize) -> Vec<u8>, small),
        (&est4_large, large),
        (&est6, small),
    ]
    .into_iter()
    .enumerate()
    {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let fill: Vec<Vec<u8>> = (0..n).map(|i| make(100_000 + i)).collect();
        time_runs(
            &mut rig,
            "cold fill",
            programs::LB,
            &fill,
            lb_common::XDP_TX,
        );
        let mut pass = fill;
        pass.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed as u64));
        cold_rows.push(pass);
    }
    let new4: Vec<Vec<u8>> = (0..runs)
        .map(|i| pkt(client4(i + 7 * flows), sport(i), IpAddr::V4(VIP4), TCP_SYN))
        .collect();
    let (est4_frames, est6_frames, l2_frames) = (cycle(&est4), cycle(&est6), cycle(&l2));
    let lb = |name, frames, verdict, verdict_counter, vip_id, expect_new| Item {
        name,
        prog: programs::LB,
        frames,
        verdict,
        proof: Some(Proof {
            verdict_counter,
            vip_id,
            expect_new,
        }),
    };
    let (tx, pass) = (lb_common::XDP_TX, lb_common::XDP_PASS);
    let items = [
        Item {
            name: "empty",
            prog: programs::EMPTY,
            frames: &non_vip,
            verdict: pass,
            proof: None,
        },
        Item {
            name: "floor",
            prog: programs::FLOOR,
            frames: &non_vip,
            verdict: tx,
            proof: None,
        },
        Item {
            name: "encap_floor",
            prog: programs::ENCAP_FLOOR,
            frames: &non_vip,
            verdict: tx,
            proof: None,
        },
        lb("non_vip", &non_vip, pass, Counter::PassNotVip, None, false),
        lb(
            "established_v4",
            &est4_frames,
            tx,
            Counter::Tx,
            Some(0),
            false,
        ),
        lb("new_flow_v4", &new4, tx, Counter::Tx, Some(0), true),
        lb(
            "established_v6",
            &est6_frames,
            tx,
            Counter::Tx,
            Some(1),
            false,
        ),
        lb("l2dsr_v4", &l2_frames, tx, Counter::Tx, Some(2), false),
        lb(
            "established_v4_20k",
            &cold_rows[0],
            tx,
            Counter::Tx,
            Some(0),
            false,
        ),
        lb(
            "established_v4_200k",
            &cold_rows[1],
            tx,
            Counter::Tx,
            Some(0),
            false,
        ),
        lb(
            "established_v6_20k",
            &cold_rows[2],
            tx,
            Counter::Tx,
            Some(1),
            false,
        ),
    ];
    let mut measured = interleaved(&mut rig, &items, opts.rounds);
    let empty_rounds = measured[0].0.clone();
    let mut timer_median = |i: usize| median(&mut measured[i].1);
    let (empty_timer, floor_timer, encap_floor_timer) =
        (timer_median(0), timer_median(1), timer_median(2));
    let paths: Vec<(&'static str, f64, f64)> = (3..items.len())
        .map(|i| {
            (
                items[i].name,
                net_median(&measured[i].0, &empty_rounds),
                median(&mut measured[i].1),
            )
        })
        .collect();
    let floor = net_median(&measured[1].0, &empty_rounds);
    let encap_floor = net_median(&measured[2].0, &empty_rounds);
    let empty = median(&mut measured[0].0.clone());

    // Warm: the same packet again and again. The L2 DSR packet's rewrite (MACs only) keeps it on its path, so the
    // counters must again grow by exactly the number of runs.
    let warm_empty = warm_ns(
        &mut rig,
        programs::EMPTY,
        &non_vip[0],
        warm_repeat,
        XDP_PASS,
    );
    let warm_floor =
        warm_ns(&mut rig, programs::FLOOR, &non_vip[0], warm_repeat, XDP_TX) - warm_empty;
    let tx0 = counter(&rig, Counter::Tx);
    let pass0 = counter(&rig, Counter::PassNotVip);
    let warm_non_vip =
        warm_ns(&mut rig, programs::LB, &non_vip[0], warm_repeat, XDP_PASS) - warm_empty;
    let warm_l2 = warm_ns(&mut rig, programs::LB, &l2(0), warm_repeat, XDP_TX) - warm_empty;
    assert_eq!(
        counter(&rig, Counter::PassNotVip) - pass0,
        u64::from(warm_repeat),
        "warm non_vip path"
    );
    assert_eq!(
        counter(&rig, Counter::Tx) - tx0,
        u64::from(warm_repeat),
        "warm l2dsr path"
    );
    let warm = vec![
        ("floor", warm_floor),
        ("non_vip", warm_non_vip),
        ("l2dsr_v4", warm_l2),
    ];

    Report {
        empty_ns: empty,
        floor_ns: floor,
        encap_floor_ns: encap_floor,
        paths,
        empty_timer_ns: empty_timer,
        floor_timer_ns: floor_timer,
        encap_floor_timer_ns: encap_floor_timer,
        warm,
    }
}
