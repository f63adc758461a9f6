//! The userspace of the balancer: everything `lbd` and `lbctl` are made of, as a library so that the tests, the
//! lab and the benchmarks drive exactly the code operators run.

pub mod dataplane;

pub mod announce;
pub mod attach;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decap;
pub mod digest;
pub mod health;
pub mod layout;
pub mod maglev;
pub mod metrics;
mod names;
pub mod netlink;
pub mod notify;
pub mod pins;
pub mod privileges;
pub mod probe_path;
pub mod ring_map;
pub mod rlimit;
pub mod runtime;
pub mod service;
mod shared;
pub mod simulate;
pub mod state;
pub mod stats;
pub mod upgrade;
