//! One short round of each benchmark (`cargo xtask bench dataplane|maglev` runs the full ones, outside the suite),
//! so that their set-up and their checks cannot rot between benchmark runs: every packet the dataplane bench
//! measures must take the path it is measured for (the bench panics otherwise, naming the path), and the maglev
//! bench must build every table and measure a real lbd. The figures are not asserted: one short round on a shared
//! machine says nothing about speed.

use lb_tests::harness::netns::skip_unless_root;
use lb_tests::perf::bench::{dataplane, maglev};

#[test]
fn dataplane_bench_one_round_takes_every_path() {
    if skip_unless_root("dataplane_bench_one_round_takes_every_path") {
        return;
    }
    let r = dataplane::run(&dataplane::Options::SMOKE);
    let paths: Vec<&str> = r.paths.iter().map(|(name, _, _)| *name).collect();
    // The keys `bench dataplane --json` prints (README).
    assert_eq!(
        paths,
        [
            "non_vip",
            "established_v4",
            "new_flow_v4",
            "established_v6",
            "l2dsr_v4",
            "established_v4_20k",
            "established_v4_200k",
            "established_v6_20k"
        ]
    );
    assert!(
        r.encap_floor_ns.is_finite() && r.encap_floor_timer_ns > 0.0,
        "the encapsulation floor was not measured"
    );
    let warm: Vec<&str> = r.warm.iter().map(|(name, _)| *name).collect();
    assert_eq!(warm, ["floor", "non_vip", "l2dsr_v4"]);
}

#[test]
fn maglev_bench_one_round_measures_every_figure() {
    if skip_unless_root("maglev_bench_one_round_measures_every_figure") {
        return;
    }
    let r = maglev::run(&maglev::Options::SMOKE);
    assert_eq!(
        r.build_ms.keys().copied().collect::<Vec<_>>(),
        [10, 100, 1000]
    );
    assert!(r.map_bytes > 0, "no map memory counted");
    assert!(
        r.lbd_rss_bytes.is_some_and(|b| b > 0),
        "lbd was not measured: {:?}",
        r.notes
    );
    assert!(
        r.down_to_ring_ms.is_some_and(|ms| ms >= 0.0),
        "down_to_ring_ms was not measured: {:?}",
        r.notes
    );
    // The hand-over comes before the build, in the same batch.
    assert!(
        r.down_to_maglev_ms >= r.down_to_ring_ms,
        "down_to_maglev_ms {:?} before down_to_ring_ms {:?}",
        r.down_to_maglev_ms,
        r.down_to_ring_ms
    );
}
