//! `lbd`'s event loop around [`Daemon`]: signals (SIGHUP reload, SIGTERM/SIGINT exit leaving the program
//! forwarding), health events turned into ring rebuilds and announcements, the interface watch, the announcement
//! tick, the systemd watchdog, and starting the control socket, the metrics endpoint and the aya-log bridge; the
//! capability drop once the program is attached (`privileges`) and the readiness notification once everything
//! serves (`notify`). The answers to lbctl are `control::handler`'s; what is shared between the tasks is
//! `shared::Shared`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lb_common::programs;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::announce::Announcer;
use crate::config::Config;
use crate::control::server::Server;
use crate::daemon::Daemon;
use crate::dataplane::Dataplane;
use crate::health::{Checker, HealthEvent};
use crate::metrics::{self, Snapshot};
use crate::notify;
use crate::privileges;
use crate::shared::Shared;
use crate::stats::stats;

/// Bridges `aya-log` records of the loaded programs into `log` (received by the tracing subscriber). An object
/// built without log calls has no log map: said at debug level, nothing to bridge.
fn start_ebpf_logger(dp: &mut Dataplane) {
    let logger = match dp.logger() {
        Ok(l) => l,
        Err(e) => {
            debug!("the programs have no aya-log output ({e}); nothing to bridge");
            return;
        }
    };
    // SAFETY: the logger owns the ring buffer fd and moves into the AsyncFd, which deregisters it before dropping it.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match fd {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot poll the aya-log ring buffer: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// How often lbd checks that its interface is still the device it attached `lb_xdp` to.
const INTERFACE_WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the announcements are synced without a health event: ends hold-downs on time (to this resolution) and
/// puts back a route someone removed by hand.
const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(250);

pub async fn run(config_path: PathBuf, config: Config) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let metrics_listener = metrics::bind(config.daemon.metrics_addr)
        .await
        .with_context(|| format!("binding metrics on {}", config.daemon.metrics_addr))?;
    let server = Server::bind(&config.daemon.control_socket).with_context(|| {
        format!(
            "binding the control socket {}",
            config.daemon.control_socket.display()
        )
    })?;
    let announcer = Announcer::start(&config.announce)?;
    let config_announces = config.announce.enabled;
    let mut daemon = Daemon::start(&config_path, config)?;
    start_ebpf_logger(daemon.dataplane());
    // Loaded and attached: from here on lbd parses what backends and clients send it, so it gives up what it no
    // longer needs before any of that starts (the health checks, the control and metrics servers).
    // With [announce] on, it keeps CAP_NET_ADMIN for its route writes (see privileges).
    privileges::drop_to_running(privileges::running(config_announces))
        .context("dropping capabilities")?;

    let (tx, mut events) = mpsc::channel::<Vec<HealthEvent>>(1024);
    let checker = Checker::new(tx).context("starting the health-check thread")?;
    let shared = Arc::new(Shared::new(daemon, checker, announcer));
    shared.sync_checks(&*shared.daemon.lock().await);

    let h = shared.clone();
    let stop_ctl = shared.clone();
    tokio::spawn(async move { server.serve(h, stopped(stop_ctl.stop.subscribe())).await });
    let m = shared.clone();
    let stop_m = shared.clone();
    tokio::spawn(async move {
        metrics::serve(
            metrics_listener,
            move || snapshot(m.clone()),
            stopped(stop_m.stop.subscribe()),
        )
        .await
    });

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut stop = shared.stop.subscribe();
    // The watchdog pings come from this loop, so a loop that stops turning stops them.
    let mut watchdog = notify::watchdog_interval().map(|every| {
        info!(
            every_ms = every.as_millis() as u64,
            "systemd watchdog enabled"
        );
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let status = {
        let d = shared.daemon.lock().await;
        format!(
            "serving {} VIPs on {}",
            d.state().vips.len(),
            d.config().daemon.interface
        )
    };
    notify::ready(&status);
    let mut interface_watch = tokio::time::interval(INTERFACE_WATCH_INTERVAL);
    interface_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announce_tick = tokio::time::interval(ANNOUNCE_INTERVAL);
    announce_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(_) = tick(&mut watchdog) => notify::watchdog(),
            _ = interface_watch.tick() => {
                if let Err(e) = shared.daemon.lock().await.watch_interface() {
                    warn!("following the interface: {e:#}");
                }
            }
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                // Daemon::reload logs the outcome either way.
                let _ = shared.reload().await;
            }
            Some(batch) = events.recv() => {
                // Several probes' batches may be queued: take them together, each VIP is rebuilt once.
                let mut changes: Vec<_> = batch.iter().map(|ev| (ev.key, ev.up)).collect();
                while let Ok(batch) = events.try_recv() {
                    changes.extend(batch.iter().map(|ev| (ev.key, ev.up)));
                }
                // Announcements follow inside set_health, at once.
                shared.set_health(changes).await;
            }
            _ = announce_tick.tick() => {
                shared.sync_announcements(&*shared.daemon.lock().await);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = stop.wait_for(|&s| s) => break,
        }
    }
    notify::stopping();
    shared.stop.send_replace(true);
    let detach = shared.detach.load(std::sync::atomic::Ordering::SeqCst);
    let sock = shared
        .daemon
        .lock()
        .await
        .config()
        .daemon
        .control_socket
        .clone();
    crate::control::server::remove_socket(&sock);
    if detach {
        // The control and metrics tasks may still hold the daemon; removing the pins is enough: the link and maps
        // die with their last file descriptor, which this process closes on exit.
        // Withdrawn first: the routers stop sending before the program stops forwarding.
        shared
            .announcer
            .lock()
            .expect("announcer lock")
            .withdraw_all()?;
        shared.daemon.lock().await.detach()?;
        info!("detached; exiting");
    } else {
        info!(
            "exiting; {} stays attached and keeps forwarding with the current maps",
            programs::LB
        );
    }
    Ok(())
}

/// The next tick of `interval`, or never when there is none (no watchdog).
async fn tick(interval: &mut Option<tokio::time::Interval>) -> Option<tokio::time::Instant> {
    match interval {
        Some(i) => Some(i.tick().await),
        None => std::future::pending().await,
    }
}

/// Completes once `stop` holds true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

async fn snapshot(shared: Arc<Shared>) -> Snapshot {
    let mut d = shared.daemon.lock().await;
    let stats = stats(&mut d).unwrap_or_else(|e| {
        warn!("reading stats: {e:#}");
        Default::default()
    });
    let (health, probes, probe_local_errors) = {
        let checker = shared.checker.lock().expect("checker lock");
        (checker.table(), checker.probes(), checker.local_errors())
    };
    Snapshot {
        stats,
        health,
        probes,
        probe_local_errors,
        ring_rebuilds: d.ring_builds,
        reloads_ok: d.reloads_ok,
        reloads_failed: d.reloads_failed,
        attached: d.attached(),
        reattachments: d.reattachments,
        table_digests: shared.table_digests(&d),
        announce: shared.announcer.lock().expect("announcer lock").info(),
        panicking: d.panicking().iter().map(ToString::to_string).collect(),
        panics: d.panics,
        // Counted by the endpoint itself (metrics::serve).
        metrics_refused: 0,
    }
}
