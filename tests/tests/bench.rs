//! One short round of the dataplane benchmark (`cargo xtask bench dataplane` runs the full one, outside the suite),
//! so that its set-up and its checks cannot rot between benchmark runs: every packet it measures must take the path
//! it is measured for (the bench panics otherwise, naming the path). The figures are not asserted: one short round
//! on a shared machine says nothing about speed.

use lb_tests::bench::dataplane;
use lb_tests::netns::skip_unless_root;

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
            "l2dsr_v4"
        ]
    );
    let warm: Vec<&str> = r.warm.iter().map(|(name, _)| *name).collect();
    assert_eq!(warm, ["floor", "non_vip", "l2dsr_v4"]);
}
