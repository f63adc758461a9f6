//! lbd's descriptor limit. Service managers and shells start programs with a soft RLIMIT_NOFILE of 1024 (kept low
//! for select(2), which lbd does not use) under a much higher hard limit. lbd holds a descriptor per health probe
//! in flight, per metrics and control connection and per map, so at start it raises the soft limit to the hard one,
//! as systemd.exec(5) advises programs that can.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The descriptor limit before and after raising the soft limit to the hard one.
pub fn raise_nofile() -> nix::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, getrlimit(Resource::RLIMIT_NOFILE)?.0))
}
