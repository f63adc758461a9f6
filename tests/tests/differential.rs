//! Differential test: generated packets through the real program and the reference model (see
//! `lb_tests::harness::differential`), 100,000 of them from a fixed seed. Besides every packet agreeing, the run must have
//! exercised what it claims to compare: each verdict, drop reason and flow-table path a minimum number of times,
//! so a setup change that made (say) every VIP unreachable in both kernel and model turns this red instead of
//! comparing passes.
//!
//! `LB_DIFF_SEED` (hex) replays or explores another seed, `LB_DIFF_PACKETS` sets the count; `cargo xtask fuzz` runs
//! the same comparison for as long as asked.

use lb_common::Counter;
use lb_tests::harness::differential::{Options, run};
use lb_tests::harness::model::FlowUse;
use lb_tests::harness::netns::skip_unless_root;

const DEFAULT_SEED: u64 = 0x4c42_d1ff;
const DEFAULT_PACKETS: usize = 100_000;
/// The least of each verdict a run of the default size must show (the rarest lands well above it).
const MIN_EACH: usize = 10;

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
    let packets: usize = std::env::var("LB_DIFF_PACKETS")
        .ok()
        .map(|s| s.parse().expect("LB_DIFF_PACKETS"))
        .unwrap_or(DEFAULT_PACKETS);
    eprintln!("differential: seed {seed:#x} (LB_DIFF_SEED to replay), {packets} packets");
    let r = run(Options {
        seed,
        packets,
        max_mismatches: 8,
        progress: None,
    });
    eprintln!(
        "differential: {} packets ({} test runs, {} shorter than Ethernet and refused by the kernel) in {:.1} s; {}",
        r.packets,
        r.kernel_runs,
        r.refused,
        r.elapsed.as_secs_f64(),
        r.histogram()
    );
    assert!(
        r.mismatches.is_empty(),
        "{} mismatches (seed {seed:#x}):\n\n{}",
        r.mismatches.len(),
        r.mismatches.join("\n\n")
    );
    if packets < DEFAULT_PACKETS {
        eprintln!(
            "differential: coverage minimums not checked for a run shorter than {DEFAULT_PACKETS}"
        );
        return;
    }
    use Counter::*;
    let mut thin: Vec<String> = [
        Tx,
        Redirect,
        PassNotIp,
        PassNotVip,
        PassMalformed,
        PassUnsupported,
        DropMalformed,
        DropNotServed,
        DropFragment,
        DropNoBackend,
        DropNoRoute,
        DropOverMtu,
        DropIcmpRateLimited,
        IcmpTooBigSent,
        IcmpEchoReply,
        DecapOk,
        DecapPassNotTunnel,
        DecapPassNotVip,
        DecapDropMalformed,
        DecapDropSource,
        DecapDropFragment,
    ]
    .into_iter()
    .map(|c| (c.name().to_string(), r.verdict(c)))
    .chain(
        [IcmpSteered, FragmentHashed, NewFlowCapped]
            .into_iter()
            .map(|c| (format!("+{}", c.name()), r.info(c))),
    )
    .chain(
        [
            FlowUse::NewConnection,
            FlowUse::Hit,
            FlowUse::Unusable,
            FlowUse::Miss,
        ]
        .into_iter()
        .map(|u| (format!("flow {u:?}"), r.flow_use(u))),
    )
    .chain([
        ("entries evicted in churn".to_string(), r.evicted),
        ("frames refused by the kernel".to_string(), r.refused),
        ("map changes".to_string(), r.map_changes),
    ])
    .filter(|(_, n)| *n < MIN_EACH)
    .map(|(name, n)| format!("{name}: {n}"))
    .collect();
    thin.sort();
    assert!(
        thin.is_empty(),
        "the run compared too little of these (each needs {MIN_EACH}): {}",
        thin.join(", ")
    );
}
