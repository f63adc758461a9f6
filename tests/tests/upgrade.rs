//! Upgrades of the pinned state with traffic flowing: lbd restarted with a bigger flow table, and lbd finding the
//! maps of an older layout (layouts 1 and 2, rewritten from the running maps by `harness::legacy_layout`). Either way it
//! must build new maps beside the old ones, carry the established flows over, swap the program in one step and
//! remove the old pins, and no request may fail.
//!
//! What makes a lost flow table visible: once the upgrade is done a fourth backend joins the VIP, so the ring now
//! sends part of the open connections' 5-tuples elsewhere; only their flow-table entries keep them on their
//! backend. The test checks that some connections are in that position, and that every one of them still answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_common::{Counter, FlowKey, LAYOUT_VERSION, VipKey, maps};
use lb_tests::harness::legacy_layout;
use lb_tests::harness::netns::skip_unless_root;
use lb_tests::harness::pinned;
use lb_tests::lab::daemon::Lbd;
use lb_tests::lab::traffic::{self, Tally};
use lb_tests::lab::{self, Lab, LabOptions, with_http_backends};

/// config/lab.toml's `max_ring_size`.
const STRIDE: u32 = 65537;
/// config/lab.toml's `flow_table_size`.
const LAB_FLOW_TABLE: u32 = 65536;
/// Long-lived connections held across the upgrade. A quarter of the ring moves to the fourth backend, so the chance
/// that none of them is affected is (3/4)^40, about 1e-5.
const HELD: usize = 40;

fn vip4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::VIP_V4), lab::HTTP_PORT)
}

/// Four backends in the lab; the IPv4 HTTP VIP is served by the first three.
fn lab_with_spare(flow_table: u32) -> Lab {
    let lab = Lab::new(&LabOptions {
        backends: 4,
        clients: 1,
    });
    write_config(&lab, flow_table);
    lab
}

fn write_config(lab: &Lab, flow_table: u32) -> std::path::PathBuf {
    lab.write_config("lbd.toml", |cfg| {
        with_http_backends(&[(0, 100), (1, 100), (2, 100)])(cfg);
        cfg["daemon"]
            .as_table_mut()
            .expect("[daemon]")
            .insert("flow_table_size".into(), i64::from(flow_table).into());
    })
}

fn forwarded(lab: &Lab) -> u64 {
    pinned::counter(lab.pin_dir.path(), Counter::Tx)
        + pinned::counter(lab.pin_dir.path(), Counter::Redirect)
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts lbd on `lab`, holds [`HELD`] connections open and keeps new ones coming while `upgrade` restarts lbd on
/// changed pins or config; then adds the fourth backend and checks every held connection and every request.
fn upgrade_under_traffic(lab: &Lab, upgrade: impl FnOnce(&mut Lbd)) {
    let cfg = lab.dir.path().join("lbd.toml");
    let mut lbd = Lbd::start(lab, &cfg);
    for i in 0..3 {
        lbd.wait_backend_state(lab::backend_v4(i), true, Duration::from_secs(20));
    }
    let client = &lab.client().ns;
    let mut held = traffic::open_connections(client, vip4(), HELD);
    let stop = AtomicBool::new(false);
    let burst = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            let mut t = Tally::default();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                t.merge(traffic::http_burst(client, vip4(), 20, 4));
            }
            t
        });
        // A failed assertion below must not leave the scope waiting for the traffic deadline.
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(500));
        upgrade(&mut lbd);
        assert!(
            lbd.log_text().contains("upgrade done"),
            "lbd did not upgrade the pins; log:\n{}",
            lbd.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));

        let spare = lab::backend_v4(3);
        let vip = format!("{}:{}/tcp", lab::VIP_V4, lab::HTTP_PORT);
        lbd.lbctl(&["backend", "add", &vip, &spare.to_string()]);
        lbd.wait_backend_state(spare, true, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(500));
        drop(_stop);
        traffic.join().expect("traffic thread")
    });

    let key = VipKey::new(IpAddr::V4(lab::VIP_V4), lab::HTTP_PORT, 6);
    let mut moved = 0;
    let mut broken = Vec::new();
    for (conn, who) in &mut held {
        let flow = FlowKey::new(
            conn.local.ip(),
            conn.local.port(),
            vip4().ip(),
            vip4().port(),
            6,
        );
        let ring_says = pinned::ring_pick(lab.pin_dir.path(), &key, &flow, STRIDE);
        let home = lab
            .backends
            .iter()
            .find(|b| b.name == *who)
            .map(|b| IpAddr::V4(b.host.v4));
        if ring_says != home {
            moved += 1;
        }
        match conn.get() {
            Ok(now) if now == *who => {}
            Ok(now) => broken.push(format!("{}: {who} -> {now}", conn.local)),
            Err(e) => broken.push(format!("{}: {e}", conn.local)),
        }
    }
    println!(
        "new connections during the upgrade:\n{}held connections: {HELD}, {moved} of them now off the ring's pick, \
         {} lost",
        burst.render(),
        broken.len()
    );
    assert!(
        moved > 0,
        "no held connection depends on its flow-table entry: the test would pass without the flows carried over"
    );
    assert!(
        broken.is_empty(),
        "held connections lost across the upgrade: {broken:?}"
    );
    assert!(
        burst.total_ok() > 50,
        "too little traffic to mean anything: {}",
        burst.total_ok()
    );
    assert_eq!(
        burst.failures, 0,
        "requests failed across the upgrade (lost: {}): {:?}",
        burst.failures, burst.errors
    );
}

#[test]
fn a_bigger_flow_table_is_an_upgrade_that_loses_no_flow() {
    if skip_unless_root("a_bigger_flow_table_is_an_upgrade_that_loses_no_flow") {
        return;
    }
    let lab = lab_with_spare(LAB_FLOW_TABLE);
    upgrade_under_traffic(&lab, |lbd| {
        let counted = forwarded(&lab);
        lbd.kill9();
        write_config(&lab, 2 * LAB_FLOW_TABLE);
        lbd.restart();
        // Same layout: the counters mean the same and are carried over (from layout 1 they are not, its counter
        // indices differ).
        assert!(
            forwarded(&lab) >= counted,
            "the forwarding counters went back from {counted} to {}: not carried over",
            forwarded(&lab)
        );
    });
    assert_eq!(
        pinned::capacity(lab.pin_dir.path(), maps::FLOWS),
        2 * LAB_FLOW_TABLE,
        "lbd runs on a flow table of another size than configured"
    );
}

#[test]
fn maps_of_an_older_layout_are_carried_over_without_losing_a_flow() {
    if skip_unless_root("maps_of_an_older_layout_are_carried_over_without_losing_a_flow") {
        return;
    }
    let lab = lab_with_spare(LAB_FLOW_TABLE);
    upgrade_under_traffic(&lab, |lbd| {
        lbd.kill9();
        let flows = legacy_layout::rewrite_as_layout_1(lab.pin_dir.path());
        println!("pins rewritten as layout 1 with {flows} flows");
        lbd.restart();
        assert!(
            lbd.log_text().contains("(layout 1)"),
            "lbd did not see layout 1; log:\n{}",
            lbd.log_text()
        );
    });
    let left: Vec<_> = maps::ALL
        .iter()
        .filter(|m| lab.pin_dir.path().join(m).exists())
        .collect();
    assert!(left.is_empty(), "layout 1 pins left behind: {left:?}");
    assert!(
        lab.pin_dir
            .path()
            .join(format!("maps-v{LAYOUT_VERSION}"))
            .is_dir(),
        "no maps-v{LAYOUT_VERSION} after the upgrade"
    );
}

/// Layout 2's flow entries hold no hash: carried over, each gets the flow's hash, the one the program would have
/// computed, so an established flow keeps its IPv6 flow label across the upgrade.
#[test]
fn maps_of_layout_2_are_carried_over_with_each_flows_hash() {
    if skip_unless_root("maps_of_layout_2_are_carried_over_with_each_flows_hash") {
        return;
    }
    let lab = lab_with_spare(LAB_FLOW_TABLE);
    upgrade_under_traffic(&lab, |lbd| {
        lbd.kill9();
        let flows = legacy_layout::rewrite_as_layout_2(lab.pin_dir.path());
        println!("pins rewritten as layout 2 with {flows} flows");
        lbd.restart();
        assert!(
            lbd.log_text().contains("(layout 2)"),
            "lbd did not see layout 2; log:\n{}",
            lbd.log_text()
        );
    });
    assert!(
        !lab.pin_dir.path().join("maps-v2").exists(),
        "layout 2 pins left behind"
    );
    let table: aya::maps::HashMap<_, FlowKey, lb_common::FlowState> = aya::maps::HashMap::try_from(
        aya::maps::Map::LruHashMap(pinned::open_map(lab.pin_dir.path(), maps::FLOWS)),
    )
    .expect("LB_FLOWS");
    let entries: Vec<(FlowKey, lb_common::FlowState)> =
        table.iter().filter_map(Result::ok).collect();
    assert!(!entries.is_empty(), "no flow in the new table");
    for (k, s) in &entries {
        assert_eq!(
            s.hash,
            lb_common::hash::flow_hash(k),
            "flow {k:?} carried over without its hash"
        );
    }
}
