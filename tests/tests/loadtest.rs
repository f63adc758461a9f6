//! Smoke run of the load-test harness (`cargo xtask loadtest --quick`): the real lab, lbd, trafgen, the live-frames
//! generator, wrk through lb_xdp, HAProxy and nftables, iperf3, and the report files. It proves that every
//! measurement saw real traffic and that the report is written; the figures themselves are not asserted (this
//! machine is shared and noisy).

use lb_tests::lab::TempDir;
use lb_tests::loadtest::{self, Options, results::Results};
use lb_tests::netns::skip_unless_root;

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
        assert!((0.0..=1.0).contains(&run.loss), "{name}: loss {}", run.loss);
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
    ] {
        for (mode, run) in [("keep-alive", &b.keepalive), ("new-conn", &b.new_conn)] {
            assert!(
                run.requests > 0 && run.req_per_s > 0.0 && run.p99_ms >= run.p50_ms,
                "wrk {name} {mode}: {run:?}"
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
    let png = std::fs::read(out.path().join("loadtest.png")).expect("loadtest.png");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "loadtest.png is not a PNG"
    );
    println!("{}", loadtest::report::markdown(&r));
}
