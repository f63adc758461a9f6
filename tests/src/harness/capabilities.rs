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
