//! Shared test support in three parts: the packet harness (`harness`: packet builders, the reference model, the
//! fixtures and the differential comparison), the lab of network namespaces with a real lbd (`lab`), and
//! performance (`perf`: benchmarks and load tests). The binaries in `src/bin` are their command-line faces.

pub mod harness;
pub mod lab;
pub mod perf;
