//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted the way Katran does it.
//!
//! Every backend walks its own permutation of the `m` table slots (`offset + j * skip mod m`, both derived from two
//! hashes of the backend's stable name) and takes the next free slot of its permutation on each of its turns. The
//! unweighted paper gives every backend one turn per round; here a backend accumulates its weight each round and
//! takes a turn per `max_weight` accumulated, so its share of the table is proportional to its weight while the
//! turns of different backends stay interleaved (which is what keeps the disruption of a change small).
//!
//! The result depends only on the set of `(id, weight, name)` triples and `m`: input order, host, process and Rust
//! version do not matter, so balancers with the same config build the same table.

use lb_common::{BACKEND_ID_NONE, BackendId};

/// Builds a table of `m` entries (`m` should be prime, or some permutations do not cover the table; the builder
/// still terminates and fills every slot). Backends with weight 0 get no entry; with no weighted backend every entry
/// is [`BACKEND_ID_NONE`].
pub fn build(backends: &[(BackendId, u32, &str)], m: u32) -> Vec<BackendId> {
    let (turns, ids) = Turns::of(backends, m);
    resolve(&turns.build(), &ids)
}

/// What a table is made of once the backend ids are set aside: `m` and each backend's weight and name, in turn
/// order. Ids only break ties between equal names, so two VIPs with equal `Turns` get tables equal slot for slot,
/// each with its own ids: when a backend that serves a hundred VIPs with the same backends fails, one build serves
/// all hundred (see `Daemon::build_rings`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Turns {
    m: u32,
    members: Vec<(u32, String)>,
}

impl Turns {
    /// The turns of `backends` and their ids in the same order.
    pub fn of(backends: &[(BackendId, u32, &str)], m: u32) -> (Turns, Vec<BackendId>) {
        let mut order: Vec<&(BackendId, u32, &str)> = backends.iter().collect();
        // Turn order decides ties, so fix it independently of how the caller listed the backends.
        order.sort_by(|a, b| a.2.cmp(b.2).then(a.0.cmp(&b.0)));
        let turns = Turns {
            m,
            members: order.iter().map(|b| (b.1, b.2.to_string())).collect(),
        };
        (turns, order.iter().map(|b| b.0).collect())
    }

    /// The table with each entry naming a member by its position plus one (0: no backend), for [`resolve`].
    pub fn build(&self) -> Vec<u32> {
        let positional: Vec<(BackendId, u32, &str)> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, (w, n))| (i as u32 + 1, *w, n.as_str()))
            .collect();
        build_with(&positional, self.m, true)
    }
}

/// A table built by [`Turns::build`] with the ids [`Turns::of`] returned for a VIP.
pub fn resolve(positions: &[u32], ids: &[BackendId]) -> Vec<BackendId> {
    positions
        .iter()
        .map(|&p| {
            if p == 0 {
                BACKEND_ID_NONE
            } else {
                ids[p as usize - 1]
            }
        })
        .collect()
}

/// Who takes entry `i` of a `len`-entry table (entry `j` is `at(j)`) over when the backends in `gone` fail: the
/// backend of the next entry, wrapping, that is set and not gone; `None` when no such entry is left. Entries are
/// interleaved across backends, so the next entry's owner is drawn in proportion to the shares and a failed
/// backend's load spreads as a rebuild would spread it, in the time of one pass over the table instead of a Maglev
/// build (see `Daemon::hand_over`).
pub fn heir(
    at: impl Fn(usize) -> BackendId,
    len: usize,
    i: usize,
    gone: &[BackendId],
) -> Option<BackendId> {
    (1..=len)
        .map(|d| at((i + d) % len))
        .find(|&id| id != BACKEND_ID_NONE && !gone.contains(&id))
}

/// `table` with every entry of a `gone` backend handed to its [`heir`]; `None` when there is none.
pub fn without(table: &[BackendId], gone: &[BackendId]) -> Option<Vec<BackendId>> {
    let mut out = table.to_vec();
    for (i, o) in out.iter_mut().enumerate() {
        if gone.contains(o) {
            *o = heir(|j| table[j], table.len(), i, gone)?;
        }
    }
    Some(out)
}

/// [`build`], with or without the [`EndGame`] (the tests compare both).
fn build_with(backends: &[(BackendId, u32, &str)], m: u32, endgame: bool) -> Vec<BackendId> {
    let m_usize = m as usize;
    let mut table = vec![BACKEND_ID_NONE; m_usize];
    if m == 0 {
        return table;
    }
    let mut live: Vec<&(BackendId, u32, &str)> = backends.iter().filter(|b| b.1 > 0).collect();
    if live.is_empty() {
        return table;
    }
    // Turn order decides ties, so fix it independently of how the caller listed the backends.
    live.sort_by(|a, b| a.2.cmp(b.2).then(a.0.cmp(&b.0)));

    let max_weight = live.iter().map(|b| b.1).max().unwrap_or(1) as u64;
    let m64 = m as u64;
    // The end game needs every permutation to be a bijection, which a prime `m` guarantees.
    let endgame_at = if endgame && is_prime(m) {
        m.isqrt() as usize
    } else {
        0
    };
    let mut walkers: Vec<Walker> = live
        .iter()
        .map(|b| {
            let offset = name_hash(b.2, OFFSET_SEED) % m64;
            let skip = if m > 1 {
                name_hash(b.2, SKIP_SEED) % (m64 - 1) + 1
            } else {
                1
            };
            Walker {
                id: b.0,
                weight: b.1 as u64,
                offset,
                skip,
                inverse: if endgame_at > 0 {
                    mod_inverse(skip, m64)
                } else {
                    0
                },
                cur: offset,
                next: 0,
                credit: 0,
            }
        })
        .collect();

    let mut filled = 0usize;
    // A free-slot cursor for the rare case where a permutation is exhausted (only possible with a non-prime `m`).
    let mut scan = 0usize;
    let mut endgame: Option<EndGame> = None;
    loop {
        for w in walkers.iter_mut() {
            w.credit += w.weight;
            while w.credit >= max_weight {
                w.credit -= max_weight;
                let slot = match endgame.as_mut() {
                    Some(e) => e.take(w),
                    None => w.walk(&table, &mut scan),
                };
                table[slot] = w.id;
                filled += 1;
                if filled == m_usize {
                    return table;
                }
                if endgame.is_none() && m_usize - filled <= endgame_at {
                    endgame = Some(EndGame::new(&table, m64));
                }
            }
        }
    }
}

/// One backend's walk through its permutation of the table: slot `offset + j * skip mod m` at step `j`.
struct Walker {
    id: BackendId,
    weight: u64,
    offset: u64,
    skip: u64,
    /// `skip^-1 mod m`, which turns a slot back into its step (`(slot - offset) * inverse mod m`) in the end game.
    inverse: u64,
    /// The slot at step `next`, advanced by addition (no division per probe).
    cur: u64,
    next: u64,
    credit: u64,
}

impl Walker {
    /// The next free slot of the permutation, probing the taken ones on the way.
    fn walk(&mut self, table: &[BackendId], scan: &mut usize) -> usize {
        let m = table.len() as u64;
        loop {
            if self.next >= m {
                while table[*scan] != BACKEND_ID_NONE {
                    *scan += 1;
                }
                return *scan;
            }
            let c = self.cur as usize;
            self.next += 1;
            self.cur += self.skip;
            if self.cur >= m {
                self.cur -= m;
            }
            if table[c] == BACKEND_ID_NONE {
                return c;
            }
        }
    }
}

/// The last `sqrt(m)` free slots, found without probing. With `F` slots free a walk probes about `m / F` taken
/// slots per turn, so the last few hundred turns of a 65,537-entry build made more than half of its probes (random
/// reads across the table). Instead each turn computes the permutation step of every free slot (`F`
/// multiplications) and takes the smallest: every free slot lies ahead of the walker (it would have taken one it
/// passed), so that is the slot the walk would have reached. Same table; for 100 backends and
/// m = 65,537, 1.6 instead of 2.0 ms here (what remains is mostly one mispredicted branch per turn).
struct EndGame {
    free: Vec<u64>,
    m: u64,
    /// `floor((2^64 - 1) / m)`, for Barrett reduction: a `%` by a runtime divisor per free slot would cost more
    /// than the probes it saves.
    barrett: u64,
}

impl EndGame {
    fn new(table: &[BackendId], m: u64) -> Self {
        let free = (0..table.len())
            .filter(|&s| table[s] == BACKEND_ID_NONE)
            .map(|s| s as u64)
            .collect();
        EndGame {
            free,
            m,
            barrett: u64::MAX / m,
        }
    }

    fn take(&mut self, w: &Walker) -> usize {
        let (mut best_step, mut best) = (u64::MAX, 0);
        for (i, &s) in self.free.iter().enumerate() {
            let from_offset = if s >= w.offset {
                s - w.offset
            } else {
                s + self.m - w.offset
            };
            let step = self.reduce(from_offset * w.inverse);
            if step < best_step {
                (best_step, best) = (step, i);
            }
        }
        self.free.swap_remove(best) as usize
    }

    /// `x mod m` for `x < m^2`.
    fn reduce(&self, x: u64) -> u64 {
        let q = ((x as u128 * self.barrett as u128) >> 64) as u64;
        let mut r = x - q * self.m;
        while r >= self.m {
            r -= self.m;
        }
        r
    }
}

/// `a^-1 mod m` for `a` coprime to `m` (extended Euclid).
fn mod_inverse(a: u64, m: u64) -> u64 {
    let (mut r0, mut r1) = (m as i64, a as i64);
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    debug_assert_eq!(r0, 1, "{a} is not invertible mod {m}");
    t0.rem_euclid(m as i64) as u64
}

const OFFSET_SEED: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SKIP_SEED: u64 = 0x6d61_676c_6576_3032; // "maglev02"

/// FNV-1a over the name, seeded, then a SplitMix64 finaliser: stable forever (unlike `std`'s hashers, whose output
/// may change between Rust releases), and the finaliser spreads nearby names (`10.0.0.1`, `10.0.0.2`) apart.
fn name_hash(name: &str, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `n` is prime (ring sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const M: u32 = 65537;

    fn names(n: u32) -> Vec<String> {
        (0..n)
            .map(|i| format!("198.18.{}.{}", i / 250, i % 250 + 1))
            .collect()
    }

    fn equal(names: &[String]) -> Vec<(BackendId, u32, &str)> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32 + 1, 100, n.as_str()))
            .collect()
    }

    fn counts(table: &[BackendId]) -> HashMap<BackendId, usize> {
        let mut c = HashMap::new();
        for &id in table {
            *c.entry(id).or_insert(0) += 1;
        }
        c
    }

    fn changed(a: &[BackendId], b: &[BackendId]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    #[test]
    fn empty_and_zero_weight_give_unset_entries() {
        assert!(build(&[], 7).iter().all(|&id| id == BACKEND_ID_NONE));
        assert!(
            build(&[(1, 0, "a"), (2, 0, "b")], 7)
                .iter()
                .all(|&id| id == BACKEND_ID_NONE)
        );
        assert_eq!(build(&[(1, 5, "a")], 0).len(), 0);
        assert_eq!(build(&[(9, 1, "a")], 1), vec![9]);
    }

    #[test]
    fn equal_backends_hold_floor_or_ceil_of_m_over_n() {
        for n in [1u32, 2, 3, 7, 100, 1000] {
            let names = names(n);
            let table = build(&equal(&names), M);
            let c = counts(&table);
            assert_eq!(c.len(), n as usize, "n={n}: every backend present");
            let (lo, hi) = ((M / n) as usize, M.div_ceil(n) as usize);
            for (id, k) in c {
                assert!(
                    k == lo || k == hi,
                    "n={n}: backend {id} holds {k}, want {lo} or {hi}"
                );
            }
        }
    }

    #[test]
    fn weighted_shares_follow_weights() {
        let names = names(6);
        let weights = [1000u32, 500, 250, 100, 10, 1];
        let bs: Vec<_> = names
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (n, w))| (i as u32 + 1, w, n.as_str()))
            .collect();
        let table = build(&bs, M);
        let c = counts(&table);
        let total: u32 = weights.iter().sum();
        for (id, w, _) in &bs {
            let want = M as f64 * *w as f64 / total as f64;
            let got = *c.get(id).unwrap_or(&0) as f64;
            if want >= 500.0 {
                let rel = (got - want).abs() / want;
                assert!(
                    rel <= 0.02,
                    "backend {id} weight {w}: {got} entries, want {want:.0} ({:.2}% off)",
                    rel * 100.0
                );
            } else {
                assert!(got > 0.0, "backend {id} weight {w} got no entry");
            }
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let names = names(10);
        let mut bs = equal(&names);
        let a = build(&bs, 251);
        bs.reverse();
        assert_eq!(a, build(&bs, 251));
    }

    /// Two VIPs with the same backends (names and weights) but their own ids, listed in other orders, share one
    /// build: each resolved table is the one `build` gives that VIP. Another weight is another build.
    #[test]
    fn vips_with_the_same_backends_share_one_build() {
        let names = names(20);
        let mut a: Vec<(BackendId, u32, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32 + 1, 1 + i as u32 % 3, n.as_str()))
            .collect();
        a[4].1 = 0;
        // The same backends under ids of another VIP, in another order.
        let b: Vec<(BackendId, u32, &str)> = a
            .iter()
            .rev()
            .map(|&(id, w, n)| (id * 7 + 100, w, n))
            .collect();
        let (ta, ida) = Turns::of(&a, 1009);
        let (tb, idb) = Turns::of(&b, 1009);
        assert_eq!(ta, tb, "equal backends must give equal turns");
        let shared = ta.build();
        assert_eq!(resolve(&shared, &ida), build_with(&a, 1009, true));
        assert_eq!(resolve(&shared, &idb), build_with(&b, 1009, true));
        assert_ne!(resolve(&shared, &ida), resolve(&shared, &idb));

        let mut c = a.clone();
        c[0].1 += 1;
        assert_ne!(Turns::of(&c, 1009).0, ta, "another weight, same turns");
        assert_ne!(Turns::of(&a, 1013).0, ta, "another size, same turns");
    }

    /// Pinned: a change here reshuffles every fleet's flows on upgrade, so it must be deliberate.
    #[test]
    fn pinned_prefix() {
        let names = names(3);
        let table = build(&equal(&names), 13);
        assert_eq!(table, PINNED, "maglev table changed: {table:?}");
    }
    const PINNED: [BackendId; 13] = [3, 2, 2, 1, 3, 1, 3, 2, 2, 1, 1, 1, 3];

    #[test]
    fn adding_or_removing_one_backend_moves_close_to_the_minimum() {
        for n in [10u32, 100] {
            let names = names(n + 1);
            let all = equal(&names);
            let before = build(&all[..n as usize], M);
            let after = build(&all, M);
            let frac = changed(&before, &after);
            let minimal = 1.0 / (n + 1) as f64;
            println!(
                "n={n}: adding one backend changed {:.4} of the table (minimal {minimal:.4})",
                frac
            );
            assert!(
                frac < minimal * 2.0,
                "n={n}: adding moved {frac:.4}, minimal {minimal:.4}"
            );

            let mut removed = all[..n as usize].to_vec();
            removed.remove(n as usize / 2);
            let after = build(&removed, M);
            let frac = changed(&before, &after);
            let minimal = 1.0 / n as f64;
            println!(
                "n={n}: removing one backend changed {:.4} of the table (minimal {minimal:.4})",
                frac
            );
            assert!(
                frac < minimal * 2.0,
                "n={n}: removing moved {frac:.4}, minimal {minimal:.4}"
            );
        }
    }

    #[test]
    fn a_failed_backends_entries_go_to_the_next_kept_entry_and_spread_like_the_shares() {
        let names = names(10);
        let mut bs = equal(&names);
        // Unequal shares, so "like the shares" is not "equal".
        bs[0].1 = 300;
        let table = build(&bs, M);
        let gone = bs[5].0;
        let out = without(&table, &[gone]).expect("nine backends stay");
        for i in 0..table.len() {
            if table[i] != gone {
                assert_eq!(out[i], table[i], "entry {i} was not the failed backend's");
            } else {
                let next = (1..table.len())
                    .map(|d| table[(i + d) % table.len()])
                    .find(|&id| id != gone)
                    .unwrap();
                assert_eq!(out[i], next, "entry {i}");
            }
        }
        // Each kept backend gains about its share of the freed entries.
        let (before, after) = (counts(&table), counts(&out));
        let freed = before[&gone] as f64;
        let kept_weight: u32 = bs.iter().filter(|b| b.0 != gone).map(|b| b.1).sum();
        for b in bs.iter().filter(|b| b.0 != gone) {
            let gained = (after[&b.0] - before[&b.0]) as f64;
            let expected = freed * b.1 as f64 / kept_weight as f64;
            assert!(
                (gained - expected).abs() < expected * 0.3 + 10.0,
                "backend {} gained {gained} of {freed} freed entries, its share is {expected:.0}",
                b.0
            );
        }
        // Several at once, the last entry among them (the hand-over wraps around the end).
        let last = *table.last().unwrap();
        let out = without(&table, &[gone, last]).unwrap();
        assert!(!out.contains(&gone) && !out.contains(&last));
        let first_kept = table.iter().find(|&&id| id != gone && id != last).unwrap();
        assert_eq!(out[table.len() - 1], *first_kept);
    }

    #[test]
    fn without_every_backend_there_is_nothing_to_hand_over() {
        let names = names(2);
        let bs = equal(&names);
        let table = build(&bs, 13);
        assert_eq!(without(&table, &[1, 2]), None);
        assert_eq!(heir(|j| table[j], table.len(), 0, &[1, 2]), None);
        // Nothing of theirs to hand over is no reason to fail.
        assert_eq!(
            without(&[BACKEND_ID_NONE; 5], &[1]),
            Some(vec![BACKEND_ID_NONE; 5])
        );
        assert_eq!(without(&table, &[]), Some(table.clone()));
    }

    #[test]
    fn non_prime_m_still_fills_every_slot() {
        let names = names(4);
        let table = build(&equal(&names), 1000);
        assert!(table.iter().all(|&id| id != BACKEND_ID_NONE));
    }

    #[test]
    fn primality() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537) && is_prime(251) && !is_prime(65536) && !is_prime(65535));
    }

    #[test]
    fn thousand_backends_fill_the_table() {
        let names = names(1000);
        let bs = equal(&names);
        let start = std::time::Instant::now();
        let table = build(&bs, M);
        let took = start.elapsed();
        // Printed, not asserted: speed is `cargo xtask bench maglev`'s figure (a shared machine makes any bound here
        // either loose enough to mean nothing or a flaky test).
        println!("1000 backends, M={M}: {took:?}");
        assert_eq!(table.len(), M as usize);
        assert_eq!(counts(&table).len(), 1000, "a backend got no entry");
    }

    #[test]
    fn the_end_game_builds_the_walks_table_for_a_full_ring() {
        for n in [1u32, 2, 3, 10, 100, 1000] {
            let names = names(n);
            let mut bs = equal(&names);
            assert_eq!(build_with(&bs, M, true), build_with(&bs, M, false), "n={n}");
            for (i, b) in bs.iter_mut().enumerate() {
                b.1 = 1 + (i as u32 * 37) % 500;
            }
            assert_eq!(
                build_with(&bs, M, true),
                build_with(&bs, M, false),
                "n={n} weighted"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn the_end_game_builds_the_walks_table(
            weights in proptest::collection::vec(0u32..=1000, 0..40),
            m in proptest::sample::select(vec![2u32, 3, 7, 13, 251, 1021, 4093]),
        ) {
            let names = names(weights.len() as u32);
            let bs: Vec<_> = names.iter().zip(&weights).enumerate()
                .map(|(i, (n, &w))| (i as u32 + 1, w, n.as_str())).collect();
            prop_assert_eq!(build_with(&bs, m, true), build_with(&bs, m, false));
        }

        #[test]
        fn reduction_and_inverse_are_exact(m in proptest::sample::select(vec![2u64, 3, 251, 65537, 4_294_967_291]),
                                           a in 1u64..u64::MAX, b in 0u64..u64::MAX) {
            let a = a % (m - 1) + 1;
            let inv = mod_inverse(a, m);
            prop_assert_eq!(a * inv % m, 1);
            let e = EndGame { free: Vec::new(), m, barrett: u64::MAX / m };
            let x = (b % m) * (a % m);
            prop_assert_eq!(e.reduce(x), x % m);
        }

        #[test]
        fn every_slot_holds_a_weighted_backend(
            weights in proptest::collection::vec(0u32..=1000, 0..20),
            m in proptest::sample::select(vec![7u32, 13, 251, 1021]),
        ) {
            let names = names(weights.len() as u32);
            let bs: Vec<_> = names.iter().zip(&weights).enumerate()
                .map(|(i, (n, &w))| (i as u32 + 1, w, n.as_str())).collect();
            let table = build(&bs, m);
            prop_assert_eq!(table.len(), m as usize);
            let weighted: Vec<BackendId> = bs.iter().filter(|b| b.1 > 0).map(|b| b.0).collect();
            for &id in &table {
                if weighted.is_empty() {
                    prop_assert_eq!(id, BACKEND_ID_NONE);
                } else {
                    prop_assert!(weighted.contains(&id), "slot holds {} not in {:?}", id, weighted);
                }
            }
            // Deterministic.
            prop_assert_eq!(table, build(&bs, m));
        }

        #[test]
        fn zero_weight_backend_is_like_absent(
            n in 1u32..15,
            drained in 0usize..15,
        ) {
            let names = names(n + 1);
            let mut bs = equal(&names);
            let drained = drained % bs.len();
            bs[drained].1 = 0;
            let with = build(&bs, 251);
            bs.remove(drained);
            prop_assert_eq!(with, build(&bs, 251));
        }
    }
}
