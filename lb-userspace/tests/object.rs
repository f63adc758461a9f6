//! The real object in the real kernel, from this package alone: every program passes the verifier, and a packet
//! through `lb_xdp` is counted. Needs root (BPF); without it the test says why and returns. Every forwarding path
//! is checked byte for byte by the fixture and differential tests of the `lb-tests` package (tests/tests/).

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{Counter, XDP_PASS, maps};
use lb_userspace::dataplane::{ALL_PROGRAMS, Dataplane, LoadOptions, MapSizes};

fn small() -> LoadOptions {
    LoadOptions {
        sizes: MapSizes {
            max_vips: 4,
            max_backends: 16,
            flow_table_size: 64,
            max_ring_size: 13,
        },
        pin_dir: None,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: loading BPF programs needs root");
        return false;
    }
    true
}

#[test]
fn every_program_passes_the_verifier() {
    if !is_root() {
        return;
    }
    let mut dp = Dataplane::load(&small()).unwrap_or_else(|e| panic!("loading the object: {e:?}"));
    for name in ALL_PROGRAMS {
        let prog = dp.xdp(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(prog.fd().is_ok(), "{name} is not loaded");
    }
    assert_eq!(dp.sizes().max_ring_size, 13);
}

#[test]
fn arp_frame_is_passed_and_counted() {
    if !is_root() {
        return;
    }
    let mut dp = Dataplane::load(&small()).unwrap_or_else(|e| panic!("loading the object: {e:?}"));
    // Broadcast ARP request: Ethernet (ethertype 0x0806) + 28 bytes of ARP.
    let mut frame = vec![0xff; 6];
    frame.extend([0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend([0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend([
        0x02, 0, 0, 0, 0, 1, 198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 198, 18, 0, 2,
    ]);
    let res = dp
        .xdp(maps::PROG_LB)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"));
    assert_eq!(res.return_value, XDP_PASS, "ARP must go to the kernel");
    let counters = dp.counters().unwrap();
    let get = |c: Counter| {
        counters
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| *v)
            .unwrap()
    };
    assert_eq!(get(Counter::PassNotIp), 1, "counters: {counters:?}");
    let total: u64 = counters.iter().map(|(_, v)| v).sum();
    assert_eq!(total, 1, "exactly one counter per packet: {counters:?}");
}
