//! The contract between the XDP dataplane (`lb-ebpf`) and its userspace (`lb-userspace`, `tests`, `xtask`).
//!
//! Everything both sides must agree on lives here and only here: the layout of every map key and value, the map
//! names, limits and flag bits, the counter indices, and the flow hash. The Maglev builder, the reference model, the
//! simulator and the kernel program all compute the backend of a flow with [`hash::flow_hash`], so they cannot drift.
//!
//! Byte order: addresses and ports are stored exactly as they appear on the wire (network order), as raw memory.
//! The program never swaps bytes per packet; userspace converts once with the helpers behind the `user` feature.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod consts;
pub mod counters;
pub mod csum;
pub mod hash;
pub mod hc_mark;
pub mod lookup;
pub mod maps;
pub mod programs;
pub mod types;

pub use consts::*;
pub use counters::Counter;
pub use types::*;
