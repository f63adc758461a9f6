//! Shared test support: network namespaces, packet builders, the reference model of the dataplane and the fixture
//! table run against the real program.

pub mod bench;
pub mod daemon;
pub mod differential;
pub mod fixtures;
pub mod lab;
pub mod lab_programs;
pub mod loadtest;
pub mod model;
pub mod netns;
pub mod nft_counters;
pub mod packets;
pub mod pinned;
pub mod pki;
pub mod promql;
pub mod scrape;
pub mod servers;
pub mod traffic;
