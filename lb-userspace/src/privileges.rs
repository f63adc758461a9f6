//! Least privilege for the running daemon. Loading the object (map creation, BTF, the verifier) and the first
//! attach need CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN. Once `lb_xdp` is attached, everything lbd does works on
//! descriptors it already holds or on files it owns, and needs no capability:
//! - map updates, lookups and walks (reloads, lbctl edits, health flips, stats, flows, /metrics) go through the map
//!   descriptors of the loaded object;
//! - attaching `lb_xdp` again to a re-created interface (`Daemon::watch_interface`) is a BPF_LINK_CREATE with the
//!   program descriptor lbd holds, and pinning that link, removing pins (`lbctl shutdown --detach`) and the control
//!   socket are file operations in directories root owns (tried: all work with an empty capability set);
//! - health checks and /metrics are ordinary TCP/UDP sockets; the aya-log bridge reads a ring buffer it holds.
//!
//! So [`RUNNING`] is empty: every capability leaves the effective, permitted, inheritable, ambient and bounding
//! sets, and a flaw in the code that parses backends' HTTP and TLS answers or lbctl's requests cannot load
//! programs, touch other programs' maps or reconfigure the host. A restart or an upgrade is a new process, which
//! starts with the unit's capabilities again.

use anyhow::{Context, Result, bail};
use caps::{CapSet, Capability, CapsHashSet};
use tracing::{info, warn};

/// What the running daemon keeps: nothing (see above). A capability a future operation needs goes here, with why.
pub const RUNNING: &[Capability] = &[];

/// Drops every capability but [`RUNNING`] from all five sets of the process. Capabilities belong to threads, not
/// processes, so this must run while lbd is one thread: it refuses otherwise rather than leave a thread privileged.
/// Shrinking the bounding set needs CAP_SETPCAP; without it (lbd started with a reduced set and no CAP_SETPCAP) the
/// bounding set is left as it was, with a warning, and the other sets are still dropped.
pub fn drop_to_running() -> Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")
        .context("reading /proc/self/task")?
        .count();
    if threads != 1 {
        bail!(
            "dropping capabilities with {threads} threads running: capabilities are per thread, the others would \
             keep theirs"
        );
    }
    let keep: CapsHashSet = RUNNING.iter().copied().collect();
    let permitted = caps::read(None, CapSet::Permitted).context("reading the permitted set")?;
    let kept: CapsHashSet = keep.intersection(&permitted).copied().collect();
    let bounding = caps::read(None, CapSet::Bounding).context("reading the bounding set")?;
    let extra_bounding: Vec<Capability> = bounding.difference(&keep).copied().collect();
    if !extra_bounding.is_empty() {
        if permitted.contains(&Capability::CAP_SETPCAP) {
            // CAP_SETPCAP must stay effective until the last bounding drop; it leaves the other sets below.
            caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP)
                .context("raising CAP_SETPCAP to shrink the bounding set")?;
            for cap in &extra_bounding {
                caps::drop(None, CapSet::Bounding, *cap)
                    .with_context(|| format!("dropping {cap} from the bounding set"))?;
            }
        } else {
            warn!(
                kept = %names(&bounding),
                "no CAP_SETPCAP: the bounding set stays as lbd was started with (the unit's NoNewPrivileges= keeps \
                 them from being regained)"
            );
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable set")?;
    caps::set(None, CapSet::Effective, &kept).context("setting the effective set")?;
    caps::set(None, CapSet::Permitted, &kept).context("setting the permitted set")?;
    let missing: Vec<Capability> = keep.difference(&kept).copied().collect();
    if !missing.is_empty() {
        warn!(missing = %names(&missing.iter().copied().collect()), "lbd was started without capabilities it keeps");
    }
    info!(kept = %names(&kept), "dropped every other capability");
    Ok(())
}

fn names(set: &CapsHashSet) -> String {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(",")
    }
}
