//! The capability sets of a running process, read the way an operator would (`/proc/<pid>/task/<tid>/status`), for
//! every thread: capabilities belong to threads, so a process whose main thread dropped them may still have a
//! privileged thread.

use std::collections::BTreeSet;

use caps::Capability;

/// One thread's five sets, as the `Cap*` lines of its status file show them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadCaps {
    pub tid: u32,
    pub inheritable: BTreeSet<String>,
    pub permitted: BTreeSet<String>,
    pub effective: BTreeSet<String>,
    pub bounding: BTreeSet<String>,
    pub ambient: BTreeSet<String>,
}

/// Every thread of `pid`, with its sets; panics when the process is gone.
pub fn of_process(pid: u32) -> Vec<ThreadCaps> {
    let dir = format!("/proc/{pid}/task");
    let mut out: Vec<ThreadCaps> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .map(|tid| {
            let path = format!("{dir}/{tid}/status");
            let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let set = |field: &str| {
                let hex = status
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{field}:")))
                    .unwrap_or_else(|| panic!("{path} has no {field}"))
                    .trim();
                names(u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{field} {hex}: {e}")))
            };
            ThreadCaps {
                tid,
                inheritable: set("CapInh"),
                permitted: set("CapPrm"),
                effective: set("CapEff"),
                bounding: set("CapBnd"),
                ambient: set("CapAmb"),
            }
        })
        .collect();
    out.sort_by_key(|t| t.tid);
    out
}

/// The names (`CAP_BPF`, ...) of the bits in a capability mask; unknown bits as `cap_<n>`.
pub fn names(mask: u64) -> BTreeSet<String> {
    (0..64)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| {
            caps::all()
                .into_iter()
                .find(|c| c.index() == bit)
                .map_or_else(|| format!("cap_{bit}"), |c: Capability| c.to_string())
        })
        .collect()
}

/// The capabilities the shipped unit grants (config/lbd.service's `CapabilityBoundingSet=`; `AmbientCapabilities=`
/// must name the same).
pub fn unit_capabilities() -> BTreeSet<String> {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/lbd.service");
    let text = std::fs::read_to_string(&unit).unwrap_or_else(|e| panic!("{}: {e}", unit.display()));
    let set = |key: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(key))
            .flat_map(|v| v.split_whitespace().map(str::to_owned))
            .collect()
    };
    let bounding = set("CapabilityBoundingSet=");
    assert!(
        !bounding.is_empty(),
        "{} sets no CapabilityBoundingSet=",
        unit.display()
    );
    assert_eq!(
        set("AmbientCapabilities="),
        bounding,
        "the unit's AmbientCapabilities= and CapabilityBoundingSet= differ"
    );
    bounding
}

/// `setpriv` arguments that run a program as root with exactly `caps`: for root, exec makes the permitted and
/// effective sets equal to the bounding set, which is what systemd's CapabilityBoundingSet= gives a root service;
/// no_new_privs as the unit's NoNewPrivileges=.
pub fn setpriv_wrapper(caps: &BTreeSet<String>) -> Vec<String> {
    let list: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        "--no-new-privs".into(),
        "--inh-caps=-all".into(),
        format!("--bounding-set=-all,{}", list.join(",")),
    ]
}

/// Panics unless every thread of `pid` holds exactly `want` in its effective, permitted and bounding sets, and
/// nothing inheritable or ambient.
pub fn assert_threads_hold(pid: u32, want: &BTreeSet<String>, when: &str) {
    let threads = of_process(pid);
    assert!(!threads.is_empty(), "{when}: no threads for pid {pid}");
    for t in &threads {
        let expected = ThreadCaps {
            tid: t.tid,
            inheritable: BTreeSet::new(),
            permitted: want.clone(),
            effective: want.clone(),
            bounding: want.clone(),
            ambient: BTreeSet::new(),
        };
        assert_eq!(t, &expected, "{when}: thread {} of pid {pid}", t.tid);
    }
    println!(
        "{when}: {} thread(s) of pid {pid}, each with effective = permitted = bounding = {want:?}",
        threads.len()
    );
}
