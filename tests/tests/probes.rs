//! How the real lbd probes the lab's backends, seen from the backends and the files: a backend that several VIPs
//! check the same way is probed once; a config's probes start spread over their interval, not all at once; the CA
//! bundle of HTTPS checks is read once per config (at start and at each reload), not per VIP or per check.
//! Needs root; prints a skip reason otherwise.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lb_tests::harness::netns::{NetNs, skip_unless_root};
use lb_tests::harness::wait;
use lb_tests::lab::daemon::Lbd;
use lb_tests::lab::{self, Lab, LabOptions};
use lb_userspace::control::api::{Request, Response};
use lb_userspace::health::BackendHealth;

/// A TCP listener in a backend's namespace that notes when each connection (a TCP probe) arrives. Stops on drop.
struct ProbeCounter {
    arrivals: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProbeCounter {
    fn listen(ns: &NetNs, addr: SocketAddr) -> ProbeCounter {
        let listener =
            ns.run(|| TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")));
        listener.set_nonblocking(true).expect("nonblocking");
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (arrivals.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => a.lock().unwrap().push(Instant::now()),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        ProbeCounter {
            arrivals,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    fn first(&self) -> Option<Instant> {
        self.arrivals.lock().unwrap().first().copied()
    }
}

impl Drop for ProbeCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn health(lbd: &Lbd) -> Vec<BackendHealth> {
    match lbd.call(&Request::Health) {
        Response::Health(rows) => rows,
        other => panic!("Health: {other:?}"),
    }
}

/// Waits until `cond` holds for every health row (and there are `rows` of them).
fn wait_rows(lbd: &Lbd, rows: usize, what: &str, cond: impl Fn(&BackendHealth) -> bool) {
    wait::until(
        what,
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let h = health(lbd);
            if h.len() == rows && h.iter().all(&cond) {
                Ok(())
            } else {
                Err(h)
            }
        },
        |h| format!("{h:#?}\nlbd log:\n{}", lbd.log_text()),
    )
}

/// The lab config with its VIPs replaced by `vips` (TOML tables) and room for them.
fn with_vips(vips: Vec<String>) -> impl FnOnce(&mut toml::Table) {
    move |cfg| {
        cfg["daemon"]
            .as_table_mut()
            .expect("[daemon]")
            .insert("max_vips".into(), 64.into());
        let vips = vips
            .iter()
            .map(|t| toml::Value::Table(t.parse().unwrap_or_else(|e| panic!("{t}: {e}"))))
            .collect();
        cfg.insert("vip".into(), toml::Value::Array(vips));
    }
}

/// A TCP VIP with one backend, checked directly: these tests count probes at a listener on the backend's own
/// address (VIP-path probes are one per VIP and backend, by design: see tests/vip_path.rs).
fn tcp_vip(
    address: impl std::fmt::Display,
    port: u16,
    backend: impl std::fmt::Display,
    health: &str,
) -> String {
    format!(
        "address = \"{address}\"\nport = {port}\nprotocol = \"tcp\"\nring_size = 251\n\
         backends = [{{ address = \"{backend}\" }}]\nhealth = {{ target = \"direct\", {health} }}\n"
    )
}

/// Three VIPs check backend-1's port 8080 the same way (one with its own rise/fall): the backend sees one probe per
/// interval, not three, and every VIP's view counts each of them.
#[test]
fn a_backend_checked_the_same_way_by_several_vips_is_probed_once() {
    if skip_unless_root("a_backend_checked_the_same_way_by_several_vips_is_probed_once") {
        return;
    }
    let lab = Lab::new(&LabOptions::default());
    let backend = lab::backend_v4(0);
    let probes = ProbeCounter::listen(&lab.backends[0].host.ns, (backend, 8080).into());
    let check = "kind = \"tcp\", port = 8080, interval_ms = 200, timeout_ms = 150";
    let cfg = lab.write_config(
        "lbd.toml",
        with_vips(vec![
            tcp_vip(
                lab::VIP_V4,
                80,
                backend,
                &format!("{check}, rise = 1, fall = 2"),
            ),
            tcp_vip(
                lab::VIP2_V4,
                80,
                backend,
                &format!("{check}, rise = 1, fall = 2"),
            ),
            tcp_vip(
                lab::VIP_V4,
                81,
                backend,
                &format!("{check}, rise = 3, fall = 3"),
            ),
        ]),
    );
    let lbd = Lbd::start(&lab, &cfg);
    wait_rows(&lbd, 3, "probed", |r| r.checks >= 2);

    let (rows0, seen0) = (health(&lbd), probes.count());
    std::thread::sleep(Duration::from_secs(3));
    let (rows1, seen1) = (health(&lbd), probes.count());
    let counted: Vec<u64> = rows0
        .iter()
        .zip(&rows1)
        .map(|(a, b)| b.checks - a.checks)
        .collect();
    let seen = (seen1 - seen0) as u64;
    println!("in 3 s: the backend saw {seen} probes, the VIPs' views counted {counted:?}");
    assert!(
        counted.iter().all(|&n| n >= 5),
        "the views were hardly probed: {counted:?}"
    );
    // Probes in flight at either end of the window may be seen by one side only.
    assert!(
        seen <= counted.iter().max().unwrap() + 2,
        "the backend saw {seen} probes for views that counted {counted:?}: probed once per VIP"
    );
    let metrics = lbd.metrics();
    assert!(
        metrics.lines().any(|l| l == "lb_health_probes 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("probes"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Twelve checks of twelve ports, every 2 s, all configured at once: their first probes arrive spread over the
/// interval, not in one burst. (Uniformly spread, twelve first probes all fall within a quarter of the interval
/// with a chance of about 3 in a million; without the spread they all come within milliseconds.)
#[test]
fn a_configs_probes_start_spread_over_their_interval() {
    if skip_unless_root("a_configs_probes_start_spread_over_their_interval") {
        return;
    }
    const CHECKS: u16 = 12;
    let interval = Duration::from_millis(2000);
    let lab = Lab::new(&LabOptions::default());
    let backend = lab::backend_v4(0);
    let counters: Vec<ProbeCounter> = (0..CHECKS)
        .map(|i| ProbeCounter::listen(&lab.backends[0].host.ns, (backend, 9001 + i).into()))
        .collect();
    let vips = (0..CHECKS)
        .map(|i| {
            tcp_vip(
                lab::VIP_V4,
                1001 + i,
                backend,
                &format!(
                    "kind = \"tcp\", port = {}, interval_ms = {}, timeout_ms = 500",
                    9001 + i,
                    interval.as_millis()
                ),
            )
        })
        .collect();
    let cfg = lab.write_config("lbd.toml", with_vips(vips));
    let lbd = Lbd::start(&lab, &cfg);
    wait::until_true(
        "every port probed",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || counters.iter().all(|c| c.first().is_some()),
        || format!("lbd log:\n{}", lbd.log_text()),
    );
    let firsts: Vec<Instant> = counters.iter().filter_map(ProbeCounter::first).collect();
    let (min, max) = (firsts.iter().min().unwrap(), firsts.iter().max().unwrap());
    let mut offsets: Vec<u128> = firsts.iter().map(|t| (*t - *min).as_millis()).collect();
    offsets.sort();
    println!("first probes, ms after the earliest: {offsets:?}");
    assert!(
        *max - *min >= interval / 4,
        "the first probes came within {:?} of each other: {offsets:?} ms",
        *max - *min
    );
}

/// Opens of a file, by any process, seen through inotify. Closes are watched too: inotify merges an event into the
/// previous one when both are the same and the first is still unread, so back-to-back opens would count as one,
/// while open, close, open, close are all kept.
struct Opens(nix::sys::inotify::Inotify, usize);

impl Opens {
    fn watch(path: &std::path::Path) -> Opens {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let ino = Inotify::init(InitFlags::IN_NONBLOCK).expect("inotify");
        ino.add_watch(
            path,
            AddWatchFlags::IN_OPEN | AddWatchFlags::IN_CLOSE_NOWRITE,
        )
        .unwrap_or_else(|e| panic!("watch {}: {e}", path.display()));
        Opens(ino, 0)
    }

    fn count(&mut self) -> usize {
        use nix::sys::inotify::AddWatchFlags;
        while let Ok(events) = self.0.read_events() {
            self.1 += events
                .iter()
                .filter(|e| e.mask.contains(AddWatchFlags::IN_OPEN))
                .count();
        }
        self.1
    }
}

/// Two VIPs check three backends over HTTPS trusting the lab's CA file: lbd reads that file once when it starts
/// (the config's validation loads it, every check uses that store), not again for an lbctl edit, and once more per
/// reload. Before, it was read once per VIP at validation and once per check task.
#[test]
fn the_ca_file_is_read_once_per_config() {
    if skip_unless_root("the_ca_file_is_read_once_per_config") {
        return;
    }
    let lab = Lab::new(&LabOptions::default());
    let ca = lab.pki.ca.to_str().expect("utf-8 path").to_owned();
    let https = |address: std::net::Ipv4Addr| {
        format!(
            "address = \"{address}\"\nport = {port}\nprotocol = \"tcp\"\n\
             backends = [{{ address = \"{b0}\" }}, {{ address = \"{b1}\" }}, {{ address = \"{b2}\" }}]\n\
             health = {{ kind = \"https\", path = \"/healthz\", tls_server_name = \"{name}\", tls_ca_file = \"{ca}\", \
             interval_ms = 300, timeout_ms = 300 }}\n",
            port = lab::HTTPS_PORT,
            b0 = lab::backend_v4(0),
            b1 = lab::backend_v4(1),
            b2 = lab::backend_v4(2),
            name = lb_tests::lab::pki::BACKEND_TLS_NAME,
        )
    };
    let cfg = lab.write_config(
        "lbd.toml",
        with_vips(vec![https(lab::VIP_V4), https(lab::VIP2_V4)]),
    );
    let mut opens = Opens::watch(&lab.pki.ca);
    let lbd = Lbd::start(&lab, &cfg);
    wait_rows(&lbd, 6, "passing HTTPS checks", |r| {
        r.up && r.last_ok == Some(true) && r.checks >= 3
    });
    assert_eq!(opens.count(), 1, "CA file opens at start");

    let vip = format!("{}:{}/tcp", lab::VIP_V4, lab::HTTPS_PORT);
    lbd.lbctl(&[
        "backend",
        "weight",
        &vip,
        &lab::backend_v4(0).to_string(),
        "50",
    ]);
    lbd.lbctl(&["backend", "del", &vip, &lab::backend_v4(1).to_string()]);
    lbd.lbctl(&["backend", "add", &vip, &lab::backend_v4(1).to_string()]);
    wait_rows(&lbd, 6, "passing HTTPS checks after the edits", |r| {
        r.up && r.last_ok == Some(true) && r.checks >= 2
    });
    assert_eq!(opens.count(), 1, "CA file opens after three lbctl edits");

    lbd.lbctl(&["reload"]);
    std::thread::sleep(Duration::from_secs(1));
    wait_rows(&lbd, 6, "passing HTTPS checks after the reload", |r| {
        r.up && r.last_ok == Some(true)
    });
    assert_eq!(opens.count(), 2, "CA file opens after a reload");
}

/// Probes go on while lbd's own runtime is busy. A reload that changes eight 65,537-entry rings keeps lbd's main
/// loop writing maps for a long while; probes used to wait for it on the same runtime, so none was sent meanwhile
/// and those in flight reported the wait as the backend's latency (the demo's 190 ms). Counted at the backend:
/// during the reloads, probes keep arriving at about their interval.
#[test]
fn probes_go_on_while_lbd_rebuilds_rings() {
    if skip_unless_root("probes_go_on_while_lbd_rebuilds_rings") {
        return;
    }
    const RINGS: u16 = 8;
    let interval = Duration::from_millis(100);
    let lab = Lab::new(&LabOptions::default());
    let probed = lab::backend_v4(0);
    let probes = ProbeCounter::listen(&lab.backends[0].host.ns, (probed, 8081).into());
    let config = |weight: u32| {
        let mut vips: Vec<String> = (0..RINGS)
            .map(|i| {
                format!(
                    "address = \"{}\"\nport = {}\nprotocol = \"tcp\"\nbackends = [{{ address = \"{}\", weight = {weight} }}, \
                     {{ address = \"{}\" }}, {{ address = \"{}\" }}]\nhealth = {{ kind = \"none\" }}\n",
                    lab::VIP_V4,
                    2001 + i,
                    lab::backend_v4(0),
                    lab::backend_v4(1),
                    lab::backend_v4(2),
                )
            })
            .collect();
        vips.push(tcp_vip(
            lab::VIP2_V4,
            80,
            probed,
            &format!(
                "kind = \"tcp\", port = 8081, interval_ms = {0}, timeout_ms = {0}",
                interval.as_millis()
            ),
        ));
        lab.write_config("lbd.toml", with_vips(vips))
    };
    let cfg = config(100);
    let lbd = Lbd::start(&lab, &cfg);
    wait_rows(&lbd, 1, "probed", |r| r.checks >= 3);

    // Reloads flipping every ring's weights, until they have kept lbd busy for 3 s in all.
    let (mut busy, mut during, mut reloads) = (Duration::ZERO, 0, 0);
    while busy < Duration::from_secs(3) && reloads < 40 {
        config(if reloads % 2 == 0 { 300 } else { 100 });
        let (seen, started) = (probes.count(), Instant::now());
        lbd.lbctl(&["reload"]);
        busy += started.elapsed();
        during += probes.count() - seen;
        reloads += 1;
    }
    let expected = busy.as_millis() / interval.as_millis();
    println!(
        "{reloads} reloads kept lbd busy for {busy:?}: {during} probes arrived meanwhile (about {expected} due)"
    );
    assert!(
        during as u128 >= expected / 3,
        "{during} probes during {busy:?} of reloads, with a {interval:?} interval; lbd log:\n{}",
        lbd.log_text()
    );
    let rows = health(&lbd);
    assert!(
        rows.iter().all(|r| r.up && r.failures == 0),
        "a probe failed during the reloads: {rows:#?}"
    );
}
