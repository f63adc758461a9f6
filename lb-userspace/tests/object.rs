//! The real object in the real kernel, from this package alone: every program passes the verifier, the kernel
//! creates each map with the configured number of entries, maps it pinned are adopted as they are, unusable sizes are refused before anything is created,
//! and a packet through `lb_xdp` is counted. Needs root (BPF); without it the kernel tests say why and return.
//! Every forwarding path is checked byte for byte by the fixture and differential tests of the `lb-tests` package
//! (tests/tests/).

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya::programs::{TestRun, TestRunOptions};
use lb_common::{Counter, XDP_PASS, maps, programs};
use lb_userspace::dataplane::{Dataplane, LoadOptions, MapSizes};
use lb_userspace::layout::{self, Plan};

fn small() -> LoadOptions {
    LoadOptions {
        sizes: MapSizes {
            max_vips: 4,
            max_backends: 16,
            flow_table_size: 64,
            max_ring_size: 13,
        },
        pin_dir: None,
        programs: programs::PRODUCTION,
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
    for name in [programs::LB, programs::DECAP] {
        let prog = dp.xdp(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(prog.fd().is_ok(), "{name} is not loaded");
    }
    let hc = dp
        .classifier(programs::HC)
        .unwrap_or_else(|e| panic!("lb_hc: {e:?}"));
    assert!(hc.fd().is_ok(), "lb_hc is not loaded");
}

/// The production object carries lb_xdp, lb_decap and lb_hc and nothing else (the calibration and lab programs live in the
/// lab object, which lbd never loads), and loading only some programs verifies only those.
#[test]
fn the_production_object_holds_only_the_balancer_decap_and_probe_sender() {
    if !is_root() {
        return;
    }
    let mut dp = Dataplane::load(&LoadOptions {
        programs: &[programs::DECAP],
        ..small()
    })
    .unwrap_or_else(|e| panic!("loading the object: {e:?}"));
    let mut names = dp.program_names();
    names.sort();
    assert_eq!(names, ["lb_decap", "lb_hc", "lb_xdp"]);
    assert!(dp.xdp(programs::DECAP).unwrap().fd().is_ok());
    assert!(
        dp.xdp(programs::LB).unwrap().fd().is_err(),
        "lb_xdp was loaded (verified) though only lb_decap was asked for"
    );
}

/// `/sys/fs/bpf/lbt-<tag>-<pid>-0` (the lab's naming, so a killed run's leftovers are removed by the next lab),
/// removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> PinDir {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        assert!(
            mounts.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1..3) == Some(&["/sys/fs/bpf", "bpf"][..])
            }),
            "no bpffs at /sys/fs/bpf (`cargo xtask setup` mounts it)"
        );
        PinDir(Path::new("/sys/fs/bpf").join(format!("lbt-{tag}-{}-0", std::process::id())))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_kernel_creates_each_map_with_the_configured_entries() {
    if !is_root() {
        return;
    }
    let pins = PinDir::new("object");
    let _dp = Dataplane::load(&LoadOptions {
        pin_dir: Some(pins.0.clone()),
        ..small()
    })
    .unwrap_or_else(|e| panic!("loading the object: {e:?}"));
    // Figures written out from `small()`, not read from the loader: LB_RING holds two slots per VIP (the ring and
    // the one being built) of max_ring_size entries each.
    for (map, want) in [
        (maps::VIPS, 4),
        (maps::VIP_ADDRS, 4),
        (maps::VIP_STATS, 4),
        (maps::DECAP_VIPS, 4),
        (maps::RING, 2 * 4 * 13),
        (maps::BACKENDS, 16),
        (maps::BACKEND_STATS, 16),
        (maps::NEXTHOP_CACHE, 16),
        (maps::FLOWS, 64),
    ] {
        let info = MapInfo::from_pin(pins.0.join(map))
            .unwrap_or_else(|e| panic!("{map}: no pinned map in {}: {e}", pins.0.display()));
        assert_eq!(info.max_entries(), want, "{map}: entries in the kernel");
    }
}

/// Maps this build made are adopted as they are at the next start, not replaced: the kernel adds flags of its own to
/// some (a devmap is made read-only to programs), and taking those for another build's would upgrade, copying every
/// flow, at every restart.
#[test]
fn maps_this_build_pinned_are_adopted_as_they_are() {
    if !is_root() {
        return;
    }
    let pins = PinDir::new("objadopt");
    let dir = lb_userspace::pins::PinDir::open(&pins.0).expect("open the pin dir");
    let sizes = small().sizes;
    assert_eq!(
        layout::plan(&dir, &sizes).expect("plan"),
        Plan::Fresh,
        "nothing pinned yet"
    );
    let _dp = Dataplane::load(&LoadOptions {
        pin_dir: Some(dir.maps_dir()),
        ..small()
    })
    .unwrap_or_else(|e| panic!("loading the object: {e:?}"));
    assert_eq!(layout::plan(&dir, &sizes).expect("plan"), Plan::Adopt);
    // Another size is still seen.
    let bigger = MapSizes {
        flow_table_size: 128,
        ..sizes
    };
    assert!(
        matches!(layout::plan(&dir, &bigger).expect("plan"), Plan::Upgrade { ref why, .. } if why.contains("LB_FLOWS")),
        "a flow table of another size must be carried over"
    );
    // An upgrade killed after its new maps were complete is finished by the next start, which compares them the
    // same way: a devmap's kernel flag there made every such start refuse.
    let _ready = Dataplane::load(&LoadOptions {
        pin_dir: Some(dir.ready_dir()),
        ..small()
    })
    .unwrap_or_else(|e| panic!("loading the object: {e:?}"));
    assert_eq!(layout::plan(&dir, &sizes).expect("plan"), Plan::Resume);
    let err =
        layout::plan(&dir, &bigger).expect_err("an unfinished upgrade of other sizes was accepted");
    assert!(
        format!("{err:#}").contains("unfinished upgrade"),
        "the refusal does not say why: {err:#}"
    );
}

#[test]
fn unusable_sizes_are_refused_before_anything_is_created() {
    // Not bpffs: the directory must not appear, whatever the kernel would have said.
    let pin_dir = std::env::temp_dir().join(format!("lbt-objrefused-{}-0", std::process::id()));
    let s = small().sizes;
    for (sizes, says) in [
        (
            MapSizes {
                flow_table_size: 0,
                ..s
            },
            "must be non-zero",
        ),
        (
            MapSizes {
                max_backends: 1,
                ..s
            },
            "max_backends ≥ 2",
        ),
        // 2 * 2^16 * 2^16 entries do not fit the u32 of a map's max_entries.
        (
            MapSizes {
                max_vips: 1 << 16,
                max_ring_size: 1 << 16,
                ..s
            },
            "LB_RING: 2 * max_vips * max_ring_size overflows u32",
        ),
    ] {
        let err = Dataplane::load(&LoadOptions {
            sizes,
            pin_dir: Some(pin_dir.clone()),
            programs: programs::PRODUCTION,
        })
        .expect_err(&format!("{sizes:?} accepted"));
        let msg = format!("{err:#}");
        assert!(
            msg.contains(says),
            "{sizes:?}: the error does not say {says:?}: {msg}"
        );
        assert!(
            !pin_dir.exists(),
            "{sizes:?} was refused after creating {}",
            pin_dir.display()
        );
    }
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
        .xdp(programs::LB)
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
