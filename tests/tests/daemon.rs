//! The real `lbd` binary in a network namespace: config validation before anything is touched, SIGHUP diff
//! reloads, SIGKILL + restart adopting the pinned maps and link while the program keeps forwarding, and the program
//! attached again when its interface is re-created.
//!
//! Needs `target/<profile>/lbd`: build it first with `cargo build -p lb-userspace` (`cargo xtask test` does).

use std::collections::{BTreeMap, BTreeSet, HashMap as StdMap, HashSet};
use std::net::{IpAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map};
use lb_common::{AddrKey, BackendId, VIP_F_FRAG_ONLY, VipKey, VipMeta};
use lb_tests::harness::netns::skip_unless_root;
use lb_tests::harness::pinned;
use lb_tests::lab::bare::{Bare, RING, VIP, VIP2, kill, wait_exit, wire};
use lb_userspace::control::api::{Request, Response};
use lb_userspace::control::client::Client;

#[test]
fn bad_config_exits_nonzero_naming_the_field_and_attaches_nothing() {
    if skip_unless_root("bad_config_exits_nonzero_naming_the_field_and_attaches_nothing") {
        return;
    }
    let b = Bare::new("lbdbad");
    let path = b.config(&[VIP]);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("198.18.0.11", "10.0.0.x", 1);
    std::fs::write(&path, text).unwrap();
    let out = b
        .lbd_command(&["--config", path.to_str().unwrap()])
        .output()
        .expect("run lbd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "lbd accepted a bad config; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("vip[0].backends[0].address: \"10.0.0.x\" is not an IP address"),
        "error does not name the field:\n{stderr}"
    );
    assert!(
        !b.xdp_attached(),
        "a program was attached: {}",
        b.lb.ip(&["link", "show", "dev", "eth0"])
    );
    assert!(
        !b.pins.path().exists(),
        "pins were created at {}",
        b.pins.path().display()
    );
}

#[test]
fn sighup_applies_only_the_diff() {
    if skip_unless_root("sighup_applies_only_the_diff") {
        return;
    }
    let b = Bare::new("lbdhup");
    let config = b.config(&[VIP]);
    let mut lbd = b.start(&config);
    assert!(
        b.xdp_attached(),
        "lb_xdp not attached; log:\n{}",
        b.log_text()
    );
    let before = b.vip_meta(VIP).expect("VIP programmed");
    let ring_before = b.ring(&before);
    assert!(
        ring_before.iter().all(|&id| id != 0),
        "ring has unset entries: {ring_before:?}"
    );
    assert_eq!(
        ring_before
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2,
        "two backends in the ring"
    );

    b.config(&[VIP, VIP2]);
    kill(&lbd, nix::sys::signal::Signal::SIGHUP);
    b.wait_for(&mut lbd, "the added VIP", || b.vip_meta(VIP2).is_some());

    let after = b.vip_meta(VIP).expect("unchanged VIP still there");
    assert_eq!(
        after, before,
        "the unchanged VIP's entry (and its active ring slot) was rewritten"
    );
    assert_eq!(
        b.ring(&after),
        ring_before,
        "the unchanged VIP's ring changed"
    );
    let added = b.vip_meta(VIP2).unwrap();
    assert_ne!(added.vip_id, before.vip_id);
    assert!(
        b.ring(&added).iter().all(|&id| id != 0),
        "added VIP's ring incomplete"
    );

    // An invalid file is rejected and the running state kept.
    std::fs::write(&config, "[daemon]\ninterface = 1\n").unwrap();
    kill(&lbd, nix::sys::signal::Signal::SIGHUP);
    b.wait_for(&mut lbd, "the reload rejection in the log", || {
        b.log_text().contains("reload rejected")
    });
    assert_eq!(
        b.vips().len(),
        2 + 2,
        "VIPs changed after a rejected reload (2 VIPs + 2 fragment entries)"
    );

    // SIGTERM: exits, the program stays attached.
    kill(&lbd, nix::sys::signal::Signal::SIGTERM);
    lbd.wait_exit(Duration::from_secs(10), || {
        format!("SIGTERM sent; log:\n{}", b.log_text())
    });
    assert!(b.xdp_attached(), "SIGTERM detached the program");

    // --detach removes program and pins.
    let out = b
        .lbd_command(&["--config", b.config(&[VIP]).to_str().unwrap(), "--detach"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lbd --detach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!b.xdp_attached(), "still attached after --detach");
    assert!(!b.pins.path().exists(), "pins left after --detach");
}

#[test]
fn sigkill_and_restart_adopt_the_pinned_state() {
    if skip_unless_root("sigkill_and_restart_adopt_the_pinned_state") {
        return;
    }
    let b = Bare::new("lbdkill");
    let config = b.config(&[VIP]);
    let mut lbd = b.start(&config);
    let meta = b.vip_meta(VIP).expect("VIP programmed");
    let ring_before = b.ring(&meta);

    let c1 = b.passes_non_vip(0, "lb_xdp did not see the datagrams");

    kill(&lbd, nix::sys::signal::Signal::SIGKILL);
    wait_exit(&mut lbd, "SIGKILL");
    assert!(b.xdp_attached(), "the program went away with the process");
    let c2 = b.passes_non_vip(c1, "not forwarding without the daemon");

    let lbd = b.start(&config);
    assert!(
        b.log_text().contains("adopted the pinned XDP link"),
        "link not adopted; log:\n{}",
        b.log_text()
    );
    assert!(
        b.log_text().contains("adopted the pinned maps' state"),
        "maps not adopted; log:\n{}",
        b.log_text()
    );
    let meta2 = b.vip_meta(VIP).expect("VIP still programmed");
    assert_eq!(
        meta2.vip_id, meta.vip_id,
        "VIP id changed across the restart"
    );
    assert_eq!(
        b.ring(&meta2),
        ring_before,
        "backend ids changed across the restart"
    );
    b.passes_non_vip(c2, "counters did not continue after the restart");
    drop(lbd);
}

#[test]
fn a_recreated_interface_gets_lb_xdp_again() {
    if skip_unless_root("a_recreated_interface_gets_lb_xdp_again") {
        return;
    }
    let b = Bare::new("lbdif");
    let mut lbd = b.start(&b.config(&[VIP]));
    let c1 = b.passes_non_vip(0, "lb_xdp did not see the datagrams");
    // The attach below happens after lbd gave up its capabilities: it needs none of them (it keeps only
    // privileges::RUNNING, CAP_NET_RAW, for probe marks).
    for t in lb_tests::harness::capabilities::of_process(lbd.id()) {
        let held: Vec<String> = t.effective.iter().cloned().collect();
        assert!(
            held == ["CAP_NET_RAW"] && t.permitted == t.effective,
            "lbd thread {} holds more than CAP_NET_RAW: {t:?}",
            t.tid
        );
    }

    // A driver reload or a rebuilt bond looks like this: the device goes away (the kernel detaches the program
    // with it) and a device of the same name comes back without one.
    b.lb.ip(&["link", "del", "eth0"]);
    b.wait_for(&mut lbd, "the interface loss in the log", || {
        b.log_text().contains("the interface is gone")
    });
    wire(&b.lb, &b.peer);
    b.wait_for(&mut lbd, "the re-attachment in the log", || {
        b.log_text().contains("lb_xdp attached to it again")
    });
    assert!(b.xdp_attached(), "no XDP program on the new eth0");
    b.passes_non_vip(
        c1,
        "the program on the new eth0 does not count into the same maps",
    );
    let status = lb_userspace::control::client::Client::connect(&b.socket())
        .and_then(|mut c| c.call(&lb_userspace::control::api::Request::Status))
        .expect("lbctl status");
    let lb_userspace::control::api::Response::Status(s) = status else {
        panic!("status answered {status:?}")
    };
    assert!(s.attached && s.reattachments == 1, "{s:?}");
    drop(lbd);
}

/// One checked VIP (TCP on port 80, rise 2 / fall 2) with `backends` (the last octets of 198.18.0.x).
fn checked_config(b: &Bare, backends: &[u8]) -> PathBuf {
    let list: Vec<String> = backends
        .iter()
        .map(|o| format!("{{ address = \"198.18.0.{o}\" }}"))
        .collect();
    b.write_config(&format!(
        "{}[[vip]]\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nring_size = {RING}\nbackends = [{}]\n\
         health = {{ kind = \"tcp\", target = \"direct\", interval_ms = 500, timeout_ms = 300, rise = 2, fall = 2 }}\n",
        b.daemon_section(8, 32, RING),
        list.join(", ")
    ))
}

/// A TCP check's server on the peer: connections to `addr` are accepted and closed, until the test process ends.
fn accept_on_peer(b: &Bare, addr: &str) {
    let listener = b
        .peer
        .run(|| TcpListener::bind(addr).expect("listen on the peer"));
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
}

/// The pinned backend id of `addr` in the bench's VIP.
fn backend_id(b: &Bare, addr: &str) -> Option<BackendId> {
    let ip: IpAddr = addr.parse().expect("address");
    b.backends()
        .into_iter()
        .find(|(_, be)| be.ip() == Some(ip))
        .map(|(id, _)| id)
}

fn ring_members(b: &Bare) -> BTreeSet<BackendId> {
    let meta = b.vip_meta(VIP).expect("VIP programmed");
    b.ring(&meta).into_iter().collect()
}

fn health_rows(b: &Bare) -> BTreeMap<IpAddr, bool> {
    match Client::connect(&b.socket()).and_then(|mut c| c.call(&Request::Health)) {
        Ok(Response::Health(rows)) => rows.into_iter().map(|r| (r.key.backend, r.up)).collect(),
        other => panic!("health: {other:?}"),
    }
}

#[test]
fn a_restart_keeps_down_backends_down_and_clears_stale_ones() {
    if skip_unless_root("a_restart_keeps_down_backends_down_and_clears_stale_ones") {
        return;
    }
    let b = Bare::new("lbdstate");
    // 198.18.0.12 answers TCP on the peer; .11 and .13 exist nowhere.
    b.peer.add_addr("eth0", "198.18.0.12/24");
    accept_on_peer(&b, "198.18.0.12:80");
    let mut lbd = b.start(&checked_config(&b, &[11, 12, 13]));
    let up_id = backend_id(&b, "198.18.0.12").expect("backend .12 programmed");
    b.wait_for(
        &mut lbd,
        "the unreachable backends to leave the ring",
        || ring_members(&b) == BTreeSet::from([up_id]),
    );
    let stale_id = backend_id(&b, "198.18.0.13").expect("backend .13 programmed");
    kill(&lbd, nix::sys::signal::Signal::SIGKILL);
    wait_exit(&mut lbd, "SIGKILL");

    // Restarted without .13. Right away, before any probe could change a state, the ring, the health table and
    // the backend map say what the maps said: .11 down, .12 up, .13 gone.
    let _lbd = b.start(&checked_config(&b, &[11, 12]));
    assert_eq!(
        ring_members(&b),
        BTreeSet::from([up_id]),
        "the restarted lbd put a down backend back into the ring (or took the up one out)"
    );
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        health_rows(&b),
        BTreeMap::from([(ip("198.18.0.11"), false), (ip("198.18.0.12"), true)]),
        "the checkers did not start in the state the maps show"
    );
    assert!(
        b.backends()
            .iter()
            .all(|(id, be)| *id != stale_id && be.ip() != Some(ip("198.18.0.13"))),
        "the backend the config no longer has is still in LB_BACKENDS: {:?}",
        b.backends()
    );
    // And it stays so while the probes run (a checker started in the wrong state flips within rise/fall probes).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(ring_members(&b), BTreeSet::from([up_id]));
    assert_eq!(
        health_rows(&b),
        BTreeMap::from([(ip("198.18.0.11"), false), (ip("198.18.0.12"), true)]),
        "a backend flipped after the restart; log:\n{}",
        b.log_text()
    );
}

#[test]
fn a_failed_backend_is_handed_over_at_once_and_the_maglev_table_follows() {
    if skip_unless_root("a_failed_backend_is_handed_over_at_once_and_the_maglev_table_follows") {
        return;
    }
    let b = Bare::new("lbdhand");
    for o in [11, 12, 13] {
        b.peer.add_addr("eth0", &format!("198.18.0.{o}/24"));
    }
    accept_on_peer(&b, "0.0.0.0:80");
    let mut lbd = b.start(&checked_config(&b, &[11, 12, 13]));
    let id = |o: u8| backend_id(&b, &format!("198.18.0.{o}")).expect("programmed");
    let ip = |o: u8| format!("198.18.0.{o}").parse::<IpAddr>().unwrap();
    b.wait_for(&mut lbd, "all three backends up and in the ring", || {
        ring_members(&b) == BTreeSet::from([id(11), id(12), id(13)])
            && health_rows(&b).values().all(|up| *up)
    });
    let before = b.ring(&b.vip_meta(VIP).expect("VIP programmed"));

    b.peer.ip(&["addr", "del", "198.18.0.12/24", "dev", "eth0"]);
    b.wait_for(&mut lbd, ".12 down and out of the ring", || {
        ring_members(&b) == BTreeSet::from([id(11), id(13)])
            && health_rows(&b).get(&ip(12)) == Some(&false)
    });
    // The active ring is the Maglev table of the two that stay...
    let meta = b.vip_meta(VIP).expect("VIP programmed");
    let names = [ip(11).to_string(), ip(13).to_string()];
    let exact =
        lb_userspace::maglev::build(&[(id(11), 100, &names[0]), (id(13), 100, &names[1])], RING);
    assert_eq!(
        b.ring(&meta),
        exact,
        "the final ring is not the Maglev table"
    );
    // ... and the other slot holds what served before it: the old table with .12's entries handed to the next ones.
    let spare = VipMeta {
        ring_slot: meta.ring_slot ^ 1,
        ..meta
    };
    let handed = lb_userspace::maglev::without(&before, &[id(12)]).expect("two stay");
    assert_eq!(
        b.ring(&spare),
        handed,
        "the ring before the rebuild was not the hand-over of the old one"
    );
    let log = b.log_text();
    let at = |what: &str| {
        log.lines()
            .position(|l| l.contains(what) && l.contains("198.18.0.12") && l.contains("up=false"))
            .unwrap_or_else(|| panic!("no {what:?} line for .12 in the log:\n{log}"))
    };
    assert!(
        at("ring entries handed") < at("ring rebuilt"),
        "the hand-over was not logged before the rebuild:\n{log}"
    );
}

#[test]
fn a_reload_that_fails_to_apply_changes_nothing() {
    if skip_unless_root("a_reload_that_fails_to_apply_changes_nothing") {
        return;
    }
    let b = Bare::new("lbdfail");
    let _lbd = b.start(&b.config(&[VIP]));
    let call = |r: &Request| {
        Client::connect(&b.socket())
            .and_then(|mut c| c.call(r))
            .unwrap_or_else(|e| panic!("{r:?}: {e}"))
    };
    let snapshot = || {
        let mut vips = b.vips();
        vips.sort_by_key(|(k, _)| (k.addr, k.port, k.proto));
        let ring = b.ring(&b.vip_meta(VIP).expect("VIP"));
        (vips, b.backends(), ring, call(&Request::VipList))
    };
    let before = snapshot();

    // Another writer fills the VIP map, so the VIP a reload adds cannot go in: the apply fails half-way (its
    // backends are written first).
    let mut map: HashMap<_, VipKey, VipMeta> = HashMap::try_from(Map::HashMap(pinned::open_map(
        b.pins.path(),
        lb_common::maps::VIPS,
    )))
    .expect("LB_VIPS");
    let mut foreign = Vec::new();
    for i in 1..=64u8 {
        let k = VipKey::new(IpAddr::from([198, 18, 9, i]), 9, 17);
        if map.insert(k, VipMeta::default(), 0).is_err() {
            break;
        }
        foreign.push(k);
    }
    assert!(!foreign.is_empty(), "the VIP map had no room at all");

    b.config(&[VIP, VIP2]);
    match call(&Request::Reload) {
        Response::Error { message } => println!("reload refused as expected: {message}"),
        other => panic!("a reload into a full VIP map answered {other:?}"),
    }
    // lbd owns its VIP map: writing back the state before the change removed the foreign entries too (an entry
    // lbd did not write is a stale one to it). Whatever is left goes now.
    for k in &foreign {
        let _ = map.remove(k);
    }
    assert_eq!(
        snapshot(),
        before,
        "the failed reload left the maps or lbd's view changed"
    );

    // Nothing of the failed attempt was recorded as applied: the same file now applies in full.
    match call(&Request::Reload) {
        Response::Ok { message } => println!("reload: {message}"),
        other => panic!("the reload after the room was made answered {other:?}"),
    }
    assert!(
        b.vip_meta(VIP2).is_some(),
        "VIP2 not added by the second reload"
    );
}

/// A config big enough that applying it takes a while: `vips` (indices into 198.19.7.x) of ring size
/// [`BIG_RING`], each with six backends starting at 198.18.2.(1 + `shift`).
#[derive(Clone)]
struct Big {
    vips: std::ops::Range<u8>,
    shift: u8,
    flow_table: u32,
}

const BIG_RING: u32 = 16381;

impl Big {
    fn addr(i: u8) -> IpAddr {
        IpAddr::from([198, 19, 7, i])
    }

    fn backends(&self, i: u8) -> Vec<IpAddr> {
        (0..6u8)
            .map(|j| IpAddr::from([198, 18, 2, 1 + self.shift + (i + j) % 8]))
            .collect()
    }

    fn write(&self, b: &Bare) -> PathBuf {
        let mut text = b.daemon_section(32, 256, BIG_RING).replace(
            "flow_table_size = 1024\n",
            &format!("flow_table_size = {}\n", self.flow_table),
        );
        for i in self.vips.clone() {
            let list: Vec<String> = self
                .backends(i)
                .iter()
                .map(|a| format!("{{ address = \"{a}\" }}"))
                .collect();
            text += &format!(
                "[[vip]]\naddress = \"{}\"\nport = 80\nprotocol = \"tcp\"\nring_size = {BIG_RING}\nbackends = [{}]\n\
                 health = {{ kind = \"none\" }}\n",
                Big::addr(i),
                list.join(", ")
            );
        }
        b.write_config(&text)
    }

    /// Every entry of the pinned maps is one this config implies, and every one it implies is there: the services
    /// and their fragment entries, the VIP addresses, each ring made of exactly its VIP's backends, the backend
    /// entries owned by their VIP, nothing stale. Also lbd's own view.
    fn assert_programmed(&self, b: &Bare, when: &str) {
        let entries = b.vips();
        let services: StdMap<VipKey, VipMeta> = entries
            .iter()
            .filter(|(_, m)| m.flags & VIP_F_FRAG_ONLY == 0)
            .copied()
            .collect();
        let fragments: StdMap<VipKey, VipMeta> = entries
            .iter()
            .filter(|(_, m)| m.flags & VIP_F_FRAG_ONLY != 0)
            .copied()
            .collect();
        let want: HashSet<VipKey> = self
            .vips
            .clone()
            .map(|i| VipKey::new(Big::addr(i), 80, 6))
            .collect();
        assert_eq!(
            services.keys().copied().collect::<HashSet<_>>(),
            want,
            "{when}: the services"
        );
        let want_frag: HashSet<VipKey> = self
            .vips
            .clone()
            .map(|i| VipKey::new(Big::addr(i), 0, 6))
            .collect();
        assert_eq!(
            fragments.keys().copied().collect::<HashSet<_>>(),
            want_frag,
            "{when}: the fragment entries"
        );
        let addrs: HashMap<_, AddrKey, u32> = HashMap::try_from(Map::HashMap(pinned::open_map(
            b.pins.path(),
            lb_common::maps::VIP_ADDRS,
        )))
        .expect("LB_VIP_ADDRS");
        let have_addrs: HashSet<AddrKey> = addrs.keys().map(|k| k.expect("key")).collect();
        let want_addrs: HashSet<AddrKey> = self
            .vips
            .clone()
            .map(|i| AddrKey::new(Big::addr(i)))
            .collect();
        assert_eq!(have_addrs, want_addrs, "{when}: LB_VIP_ADDRS");

        let backends: BTreeMap<BackendId, lb_common::Backend> = b.backends().into_iter().collect();
        let mut ids = BTreeSet::new();
        for (k, meta) in &services {
            assert!(
                ids.insert(meta.vip_id),
                "{when}: VIP id {} used twice",
                meta.vip_id
            );
            let frag = fragments[&VipKey::new(k.ip().expect("address"), 0, 6)];
            assert_eq!(
                (frag.vip_id, frag.ring_slot, frag.ring_size),
                (meta.vip_id, meta.ring_slot, meta.ring_size),
                "{when}: the fragment entry of {k:?} does not mirror its service"
            );
            let ring: BTreeSet<BackendId> = pinned::ring(b.pins.path(), meta, BIG_RING)
                .into_iter()
                .collect();
            let i = self
                .vips
                .clone()
                .find(|&i| Big::addr(i) == k.ip().expect("address"))
                .expect("configured");
            let owned: BTreeSet<BackendId> = backends
                .iter()
                .filter(|(_, be)| be.vip_id == meta.vip_id)
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(
                ring, owned,
                "{when}: the ring of {k:?} and the backends it owns"
            );
            let addrs: BTreeSet<IpAddr> = owned.iter().filter_map(|id| backends[id].ip()).collect();
            assert_eq!(
                addrs,
                self.backends(i).into_iter().collect(),
                "{when}: the backends of {k:?}"
            );
        }
        let pairs = self.vips.len() * 6;
        assert_eq!(
            backends.len(),
            pairs,
            "{when}: LB_BACKENDS holds {} entries for {pairs} (VIP, backend) pairs",
            backends.len()
        );
        match Client::connect(&b.socket()).and_then(|mut c| c.call(&Request::VipList)) {
            Ok(Response::Vips(list)) => {
                let have: BTreeSet<IpAddr> = list.iter().map(|v| v.vip.address).collect();
                assert_eq!(
                    have,
                    self.vips.clone().map(Big::addr).collect(),
                    "{when}: lbd's view"
                );
            }
            other => panic!("{when}: vip list: {other:?}"),
        }
    }
}

#[test]
fn sigkill_at_random_points_of_large_applies_then_a_restart_converges() {
    if skip_unless_root("sigkill_at_random_points_of_large_applies_then_a_restart_converges") {
        return;
    }
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("LB_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (LB_KILL_SEED={seed} repeats this run)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let b = Bare::new("lbdkill20");
    // Two configs that differ in every way an apply can: VIPs only in one, VIPs in both with other backends.
    let configs = [
        Big {
            vips: 1..13,
            shift: 0,
            flow_table: 1024,
        },
        Big {
            vips: 7..19,
            shift: 3,
            flow_table: 1024,
        },
    ];

    let started = Instant::now();
    let mut lbd = b.start(&configs[0].write(&b));
    let apply_time = started.elapsed();
    configs[0].assert_programmed(&b, "the first start");
    println!("a full start takes {apply_time:?}; kills fall within it");

    for round in 0..20 {
        let target = &configs[(round + 1) % 2];
        let delay = apply_time.mul_f64(rng.random::<f64>());
        let during_start = rng.random_bool(0.5);
        let path = target.write(&b);
        if during_start {
            kill(&lbd, nix::sys::signal::Signal::SIGKILL);
            wait_exit(&mut lbd, "SIGKILL");
            lbd = b.spawn(&path);
        } else {
            kill(&lbd, nix::sys::signal::Signal::SIGHUP);
        }
        std::thread::sleep(delay);
        kill(&lbd, nix::sys::signal::Signal::SIGKILL);
        wait_exit(&mut lbd, "SIGKILL");
        let what = format!(
            "round {round} (killed {delay:?} into a {})",
            if during_start { "start" } else { "reload" }
        );
        lbd = b.start(&path);
        target.assert_programmed(&b, &what);
        assert!(b.xdp_attached(), "{what}: lb_xdp not attached");
    }
    // Every start after the first found maps of its own sizes: each adopted them. An upgrade here would copy every
    // flow at every restart and open the kill windows of an upgrade for nothing.
    let log = b.log_text();
    assert!(
        !log.contains("upgrading the pinned maps"),
        "a restart with unchanged sizes upgraded instead of adopting; log:\n{log}"
    );

    // Now every start changes the flow table's size: an upgrade (new maps beside the old, the swap, the old
    // unpinned), killed anywhere in it, then finished or redone by the next start.
    for round in 20..30 {
        let target = Big {
            flow_table: if round % 2 == 0 { 2048 } else { 1024 },
            ..configs[round % 2].clone()
        };
        let delay = apply_time.mul_f64(2.0 * rng.random::<f64>());
        let path = target.write(&b);
        kill(&lbd, nix::sys::signal::Signal::SIGKILL);
        wait_exit(&mut lbd, "SIGKILL");
        lbd = b.spawn(&path);
        std::thread::sleep(delay);
        kill(&lbd, nix::sys::signal::Signal::SIGKILL);
        wait_exit(&mut lbd, "SIGKILL");
        let what = format!("round {round} (killed {delay:?} into an upgrade)");
        lbd = b.start(&path);
        target.assert_programmed(&b, &what);
        assert!(b.xdp_attached(), "{what}: lb_xdp not attached");
        assert_eq!(
            pinned::capacity(b.pins.path(), lb_common::maps::FLOWS),
            target.flow_table,
            "{what}: the flow table's size"
        );
        let mut dirs: Vec<String> = std::fs::read_dir(b.pins.path())
            .expect("read the pin dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("maps-"))
            .collect();
        dirs.sort();
        assert_eq!(
            dirs,
            [lb_userspace::pins::maps_dir(b.pins.path())
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned()],
            "{what}: maps directories left behind"
        );
    }
    drop(lbd);
}

/// GET /metrics from lbd's namespace.
fn scrape(b: &Bare) -> String {
    use std::io::{Read, Write};
    let mut s =
        b.lb.run(|| std::net::TcpStream::connect("127.0.0.1:9662"))
            .expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read /metrics");
    body
}

#[test]
fn below_the_panic_threshold_every_backend_stays_in_the_ring_and_lbd_says_so() {
    if skip_unless_root("below_the_panic_threshold_every_backend_stays_in_the_ring_and_lbd_says_so")
    {
        return;
    }
    let b = Bare::new("lbdpanic");
    // Only 198.18.0.12 answers (on any address of the peer, so it can come and go with its address); .11, .13 and
    // .14 exist nowhere. One of four is 25%: at the default threshold, not yet panic.
    b.peer.add_addr("eth0", "198.18.0.12/24");
    accept_on_peer(&b, "0.0.0.0:80");
    let mut lbd = b.start(&checked_config(&b, &[11, 12, 13, 14]));
    let id = |o: u8| backend_id(&b, &format!("198.18.0.{o}")).expect("programmed");
    let all: BTreeSet<BackendId> = [11, 12, 13, 14].into_iter().map(id).collect();
    b.wait_for(
        &mut lbd,
        "the three dead backends to leave the ring",
        || ring_members(&b) == BTreeSet::from([id(12)]),
    );
    let panic_line = format!("lb_vip_panic{{vip=\"{VIP}:80/tcp\"}}");
    let vip_panic =
        |b: &Bare| match Client::connect(&b.socket()).and_then(|mut c| c.call(&Request::VipList)) {
            Ok(Response::Vips(list)) => list[0].panic,
            other => panic!("vip list: {other:?}"),
        };
    assert!(!vip_panic(&b), "in panic mode with 25% healthy");
    assert!(
        scrape(&b).contains(&format!("{panic_line} 0")),
        "{}",
        scrape(&b)
    );

    // The last healthy one goes: every backend is back in the ring rather than none.
    b.peer.ip(&["addr", "del", "198.18.0.12/24", "dev", "eth0"]);
    b.wait_for(&mut lbd, "panic mode: all four in the ring", || {
        ring_members(&b) == all
    });
    assert!(vip_panic(&b), "lbctl vip list does not say panic");
    let metrics = scrape(&b);
    assert!(
        metrics.contains(&format!("{panic_line} 1")) && metrics.contains("lb_vip_panics_total 1"),
        "{metrics}"
    );
    assert!(
        b.log_text().contains("panic mode"),
        "not logged:\n{}",
        b.log_text()
    );
    // Active, so that their flows stick to them as any flow does (an inactive backend's flows re-pick).
    let active = |b: &Bare| -> BTreeSet<BackendId> {
        b.backends()
            .into_iter()
            .filter(|(_, be)| be.flags & lb_common::BACKEND_F_ACTIVE != 0)
            .map(|(id, _)| id)
            .collect()
    };
    assert_eq!(
        active(&b),
        all,
        "the backends of the panic ring are not all active"
    );

    // It comes back: out of panic, the ring is the healthy one alone again.
    b.peer.add_addr("eth0", "198.18.0.12/24");
    b.wait_for(&mut lbd, "the ring of the healthy backend alone", || {
        ring_members(&b) == BTreeSet::from([id(12)])
    });
    assert!(!vip_panic(&b), "still in panic mode");
    assert_eq!(
        active(&b),
        BTreeSet::from([id(12)]),
        "failing backends still active after panic mode"
    );
    assert!(b.log_text().contains("panic mode over"), "{}", b.log_text());
}
