//! Bounded polling: what a test waits for, how long at most, and what it saw when it gave up.

use std::time::{Duration, Instant};

/// Calls `check` every `every` until it returns `Ok`, and returns that value. After `limit` it panics with `what`
/// and `explain` of the last `Err` (the rows, counters or log seen instead), so that a timeout says why. `check` may
/// panic itself to fail early (a daemon that exited while it was awaited).
pub fn until<T, S>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, S>,
    explain: impl FnOnce(S) -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}; {}", explain(seen))
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// [`until`] for a condition with nothing to show but `explain()`.
pub fn until_true(
    what: &str,
    limit: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    until(
        what,
        limit,
        every,
        || if cond() { Ok(()) } else { Err(()) },
        |()| explain(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_ok() {
        let mut n = 0;
        let v = until(
            "three calls",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                if n == 3 { Ok(n) } else { Err(n) }
            },
            |n| format!("{n}"),
        );
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "never: not within 20ms; last seen 7")]
    fn panics_with_the_last_seen_state() {
        until(
            "never",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || Err::<(), _>(7),
            |n| format!("last seen {n}"),
        );
    }
}
