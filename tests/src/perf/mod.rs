//! Performance: the benchmarks (`cargo xtask bench`) and the load tests (`cargo xtask loadtest`), each with a
//! smoke run in the suite.

pub mod bench;
pub mod loadtest;
