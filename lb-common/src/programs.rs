//! The programs and the objects that hold them. The production object holds what lbd attaches; the lab object
//! holds calibration and test programs, which lbd never loads.

/// The balancer (production object).
pub const LB: &str = "lb_xdp";
/// The backend-side decapsulation program (production object).
pub const DECAP: &str = "lb_decap";
/// The VIP-path health-probe sender (production object, TC egress of lbd's probe interface): sends each packet
/// whose mark names a backend (`hc_mark`) to that backend as `lb_xdp` would send a client's.
pub const HC: &str = "lb_hc";
/// Every program of the production object.
pub const PRODUCTION: &[&str] = &[LB, DECAP, HC];

/// A bare `XDP_PASS`, for the peer of a veth that receives native `XDP_TX`/`XDP_REDIRECT` frames (lab object).
pub const PASS: &str = "lb_pass";
/// Benchmark calibration: returns `XDP_PASS` without touching the packet (lab object).
pub const EMPTY: &str = "lb_empty";
/// Benchmark floor: parse Ethernet + IPv4, swap MACs, `XDP_TX` (lab object).
pub const FLOOR: &str = "lb_floor";
/// Benchmark floor of an IPIP balancer: parse Ethernet + IPv4, push a fixed outer IPv4 header, `XDP_TX` (lab
/// object).
pub const ENCAP_FLOOR: &str = "lb_encap_floor";
/// Load-test packet generator, run with BPF_PROG_TEST_RUN in live-frames mode (lab object).
pub const LOADGEN: &str = "lb_loadgen";
/// Every program of the lab object.
pub const LAB: &[&str] = &[PASS, EMPTY, FLOOR, ENCAP_FLOOR, LOADGEN];

/// `lb_loadgen`'s frame counter (`PerCpuArray<u32>`, one entry), the lab object's only map.
pub const LOADGEN_SEQ: &str = "LB_LOADGEN_SEQ";
