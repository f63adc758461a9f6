//! Smoke run of the load-test harness (`cargo xtask loadtest --quick`): the real lab, lbd, trafgen, the live-frames
//! generator, wrk through lb_xdp, HAProxy and nftables, iperf3, and the report files. It proves that every
//! measurement saw real traffic, that no request through lb_xdp failed, that the floor program's path carries most
//! of what is offered, and that the report is written with the keys it documents. Speeds are not asserted (this
//! machine is shared and noisy).

use lb_tests::harness::guards::TempDir;
use lb_tests::harness::netns::skip_unless_root;
use lb_tests::perf::loadtest::{self, Options, results::Results};

#[test]
fn quick_loadtest_measures_every_phase_and_writes_the_report() {
    if skip_unless_root("quick_loadtest_measures_every_phase_and_writes_the_report") {
        return;
    }
    let out = TempDir::new("loadtest");
    let r =
        loadtest::run(&Options::quick(out.path())).unwrap_or_else(|e| panic!("loadtest: {e:#}"));

    for (name, run) in r.pps.named() {
        assert!(
            run.offered_pps > 0.0 && run.balancer_pps > 0.0 && run.forwarded_pps > 0.0,
            "{name}: no traffic went through: {run:?}"
        );
        assert!(
            run.prog_ns_per_packet > 0.0,
            "{name}: no program run time: {run:?}"
        );
    }
    // lb_floor only swaps MACs and sends each frame back, so most of what is offered comes back even on a busy
    // machine; losing half means the path the lb_xdp runs are compared with is broken (a missing peer program, a
    // sink that does not count).
    for (name, run) in [
        ("floor_trafgen_syn", &r.pps.floor_trafgen_syn),
        ("floor_live_syn", &r.pps.floor_live_syn),
        ("floor_trafgen_syn_v6", &r.pps.floor_trafgen_syn_v6),
    ] {
        assert!(
            run.loss < 0.5,
            "{name}: {:.0}% of the offered frames did not come back through lb_floor: {run:?}",
            run.loss * 100.0
        );
    }
    assert!(
        r.pps
            .live_syn
            .generator_ns_per_packet
            .is_some_and(|ns| ns > 0.0)
    );
    for (name, b) in [
        ("xdp", &r.wrk.xdp),
        ("haproxy", &r.wrk.haproxy),
        ("nftables", &r.wrk.nftables),
        ("ecmp", &r.wrk.ecmp),
    ] {
        for (mode, run) in [("keep-alive", &b.keepalive), ("new-conn", &b.new_conn)] {
            assert!(
                run.requests > 0 && run.req_per_s > 0.0 && run.p99_ms >= run.p50_ms,
                "wrk {name} {mode}: {run:?}"
            );
            // The backends (nginx for the three balancers on the one-host lab) were measured: a figure of 0 would
            // mean the requests went to some other server.
            assert!(
                name == "ecmp" || run.busiest_backend_cpu.is_some_and(|c| c > 0.0),
                "wrk {name} {mode}: the backends' CPU was not measured: {run:?}"
            );
            // Through lb_xdp a failed connect, write or timeout, or a non-2xx answer, is a fault of the balancer.
            assert!(
                !["xdp", "ecmp"].contains(&name) || run.errors == 0,
                "wrk {name} {mode}: {} errors through lb_xdp: {run:?}",
                run.errors
            );
        }
    }
    assert!(
        r.wrk
            .xdp
            .keepalive
            .balancer_cpu_us_per_req
            .is_some_and(|us| us > 0.0)
    );
    assert!(
        r.wrk
            .haproxy
            .keepalive
            .balancer_cpu_us_per_req
            .is_some_and(|us| us > 0.0)
    );
    for (name, run) in [
        ("xdp_one_flow", &r.iperf3.xdp_one_flow),
        ("xdp_many_flows", &r.iperf3.xdp_many_flows),
        ("direct_one_flow", &r.iperf3.direct_one_flow),
        ("direct_many_flows", &r.iperf3.direct_many_flows),
    ] {
        assert!(run.gbit_per_s > 0.0, "iperf3 {name}: {run:?}");
    }

    let md = std::fs::read_to_string(out.path().join("loadtest.md")).expect("loadtest.md");
    for section in [
        "## Packet rate",
        "## Requests (wrk)",
        "## Throughput (iperf3)",
    ] {
        assert!(md.contains(section), "loadtest.md lacks {section}:\n{md}");
    }
    let json = std::fs::read_to_string(out.path().join("loadtest.json")).expect("loadtest.json");
    let back: Results = serde_json::from_str(&json).expect("loadtest.json reads back");
    assert_eq!(
        back.wrk.xdp.keepalive.requests,
        r.wrk.xdp.keepalive.requests
    );
    assert_documented_keys(&serde_json::from_str(&json).expect("loadtest.json is JSON"));
    let png = std::fs::read(out.path().join("loadtest.png")).expect("loadtest.png");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "loadtest.png is not a PNG"
    );
    println!("{}", loadtest::report::markdown(&r));
}

/// The keys of loadtest.json (and of `--json`, the same serialization) that the README documents and readers of
/// the file use, each with a number where a figure belongs. Reading the file back through `Results` cannot see a
/// renamed key: both sides would change together.
fn assert_documented_keys(json: &serde_json::Value) {
    const PPS_RUNS: [&str; 7] = [
        "trafgen_syn",
        "trafgen_udp",
        "live_syn",
        "trafgen_syn_v6",
        "floor_trafgen_syn",
        "floor_live_syn",
        "floor_trafgen_syn_v6",
    ];
    const PPS_FIGURES: [&str; 6] = [
        "seconds",
        "offered_pps",
        "balancer_pps",
        "forwarded_pps",
        "loss",
        "prog_ns_per_packet",
    ];
    const WRK_FIGURES: [&str; 8] = [
        "connections",
        "seconds",
        "requests",
        "req_per_s",
        "p50_ms",
        "p99_ms",
        "errors",
        "lab_cpu_us_per_req",
    ];
    const IPERF_RUNS: [&str; 4] = [
        "xdp_one_flow",
        "xdp_many_flows",
        "direct_one_flow",
        "direct_many_flows",
    ];
    const IPERF_FIGURES: [&str; 5] = [
        "flows",
        "seconds",
        "gbit_per_s",
        "retransmits",
        "ring_drops",
    ];
    let mut numbers: Vec<String> = Vec::new();
    for run in PPS_RUNS {
        numbers.extend(PPS_FIGURES.map(|f| format!("/pps/{run}/{f}")));
    }
    for balancer in ["xdp", "haproxy", "nftables", "ecmp"] {
        for mode in ["keepalive", "new_conn"] {
            numbers.extend(WRK_FIGURES.map(|f| format!("/wrk/{balancer}/{mode}/{f}")));
        }
    }
    for run in IPERF_RUNS {
        numbers.extend(IPERF_FIGURES.map(|f| format!("/iperf3/{run}/{f}")));
    }
    numbers.extend(
        [
            "/phase_seconds/pps",
            "/phase_seconds/wrk",
            "/phase_seconds/iperf3",
        ]
        .map(String::from),
    );
    let missing: Vec<&String> = numbers
        .iter()
        .filter(|p| !json.pointer(p).is_some_and(serde_json::Value::is_number))
        .collect();
    assert!(
        missing.is_empty(),
        "loadtest.json: no number at {missing:?}:\n{json:#}"
    );
    assert!(
        json["notes"].is_array() && json["machine"]["cpus"].is_number(),
        "loadtest.json: notes or machine missing:\n{json:#}"
    );
}
