//! Benchmarks run by `cargo xtask bench`. They live in lb-tests because they need the eBPF object (through
//! lb-userspace) and the netns helpers.

pub mod dataplane;
pub mod maglev;

/// Median of a non-empty sample (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "median of an empty sample");
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
