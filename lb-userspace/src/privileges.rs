//! Least privilege for the running daemon. Loading the object (map creation, BTF, the verifier) and the first
//! attach need CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN. Once `lb_xdp` is attached, everything lbd does works on
//! descriptors it already holds or on files it owns, and needs no capability:
//! - map updates, lookups and walks (reloads, lbctl edits, health flips, stats, flows, /metrics) go through the map
//!   descriptors of the loaded object;
//! - attaching `lb_xdp` again to a re-created interface (`Daemon::watch_interface`) is a BPF_LINK_CREATE with the
//!   program descriptor lbd holds, and pinning that link, removing pins (`lbctl shutdown --detach`) and the control
//!   socket are file operations in directories root owns (tried: all work with an empty capability set);
//! - the aya-log bridge reads a ring buffer it holds;
//!
//! - health checks and /metrics are ordinary TCP/UDP sockets, except for one option: a VIP-path probe's socket is
//!   marked (SO_MARK) so that the policy rule sends it to `lb_hc` (`probe_path`), and setting a mark needs
//!   CAP_NET_RAW (or CAP_NET_ADMIN) at every probe.
//!
//! So [`RUNNING`] is CAP_NET_RAW alone: every other capability leaves the effective, permitted, inheritable,
//! ambient and bounding sets, and a flaw in the code that parses backends' HTTP and TLS answers or lbctl's requests
//! cannot load programs, touch other programs' maps or reconfigure the host. CAP_NET_RAW lets it open raw IP
//! sockets (the unit's `RestrictAddressFamilies=` still refuses packet sockets) and mark its own sockets; it is kept
//! even when the starting config checks directly only, because checks target the VIP path by default and a
//! reload may add one, while a capability given up cannot be taken back. A restart or an upgrade is a new process,
//! which starts with the unit's capabilities again.
//!
//! One job is different: with `[announce]` enabled lbd announces its VIP addresses by writing routes into a kernel
//! table BIRD exports (`announce::routes`), and adding or deleting a route (RTM_NEWROUTE / RTM_DELROUTE over
//! rtnetlink) needs CAP_NET_ADMIN in the network namespace, at every health change, drain and reload for the whole
//! life of the daemon, not only at start. No descriptor opened before the drop can stand in for it: for each netlink
//! message the kernel checks the sending thread's capability, besides that of whoever opened the socket. So with
//! `[announce]` on lbd keeps exactly CAP_NET_ADMIN ([`RUNNING_ANNOUNCING`]), effective and permitted (and in the
//! bounding set), nothing inheritable or ambient (CAP_NET_ADMIN also allows SO_MARK); with it off it keeps
//! CAP_NET_RAW. CAP_NET_ADMIN still lets a flaw
//! reconfigure the host's network, but not load BPF programs or read kernel memory (CAP_BPF, CAP_PERFMON are gone),
//! and the unit's sandbox (system-call filter, address families, read-only system) still holds. The set is chosen
//! once, from the config lbd starts with: capabilities belong to each thread and are dropped while lbd is one thread,
//! so they cannot be taken back later from every thread at once. A reload that turns `[announce]` off withdraws the
//! routes but keeps the capability until the next restart; one that turns it on in a daemon that started without it
//! cannot write routes (`lbctl announce` and `lb_announce_failing` say so, with the fix: restart lbd).

use anyhow::{Context, Result, bail};
use caps::{CapSet, Capability, CapsHashSet};
use tracing::{info, warn};

/// What the running daemon keeps without `[announce]`: CAP_NET_RAW, to mark VIP-path probe sockets (see above). A
/// capability a future operation needs goes here, with why.
pub const RUNNING: &[Capability] = &[Capability::CAP_NET_RAW];

/// What it keeps with `[announce]` enabled: CAP_NET_ADMIN, to add and delete its announcement routes (and to mark
/// probe sockets: see above).
pub const RUNNING_ANNOUNCING: &[Capability] = &[Capability::CAP_NET_ADMIN];

/// The capabilities lbd keeps once attached, given whether it announces.
pub fn running(announcing: bool) -> &'static [Capability] {
    if announcing {
        RUNNING_ANNOUNCING
    } else {
        RUNNING
    }
}

/// Whether this thread may write announcement routes (CAP_NET_ADMIN effective).
pub fn can_announce() -> bool {
    caps::has_cap(None, CapSet::Effective, Capability::CAP_NET_ADMIN).unwrap_or(false)
}

/// Drops every capability but `keep` (one of [`RUNNING`], [`RUNNING_ANNOUNCING`]: see [`running`]) from all five sets
/// of the process. Capabilities belong to threads, not
/// processes, so this must run while lbd is one thread: it refuses otherwise rather than leave a thread privileged.
/// Shrinking the bounding set needs CAP_SETPCAP; without it (lbd started with a reduced set and no CAP_SETPCAP) the
/// bounding set is left as it was, with a warning, and the other sets are still dropped.
pub fn drop_to_running(keep: &[Capability]) -> Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")
        .context("reading /proc/self/task")?
        .count();
    if threads != 1 {
        bail!(
            "dropping capabilities with {threads} threads running: capabilities are per thread, the others would \
             keep theirs"
        );
    }
    let keep: CapsHashSet = keep.iter().copied().collect();
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
