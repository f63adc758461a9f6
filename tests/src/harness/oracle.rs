//! Judging a packet's outcome: the model against a case's hand-written expectation, frames compared with a
//! readable diff naming the field, counter deltas. The model-only runner checks every case without a kernel.

use std::collections::HashMap;

use lb_common::*;

use super::case::*;
use super::model::{Outcome, action_name};
use super::packets::{field_at, hex};

/// The model's answer against a step's expectation.
pub(super) fn model_errors(
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

pub(super) fn delta(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> Vec<(Counter, u64)> {
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

pub(super) fn stats_delta(a: &VipStats, b: &VipStats) -> [u64; 4] {
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
