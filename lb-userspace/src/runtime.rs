//! `lbd`'s async shell around [`Daemon`]: signals (SIGHUP reload, SIGTERM/SIGINT exit leaving the program
//! forwarding), the control socket's [`Handler`], health checkers feeding ring rebuilds, the metrics endpoint, and
//! the aya-log bridge.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lb_common::{Counter, programs};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::{Config, FragmentPolicy, Mode, RawBackend, RawVip, VipAddr};
use crate::control::api::{
    self, BackendInfo, FiveTuple, FlowInfo, Request, Response, StatusInfo, VipInfo,
};
use crate::control::server::{Handler, Server};
use crate::daemon::Daemon;
use crate::dataplane::Dataplane;
use crate::health::{CheckKind, Checker, HealthEvent, HealthKey};
use crate::metrics::{self, Snapshot};

struct Shared {
    daemon: Mutex<Daemon>,
    checker: std::sync::Mutex<Checker>,
    started: Instant,
    /// Becomes true once, on `lbctl shutdown`; the main loop, the control server and the metrics server all wait
    /// for it. A watch, not a Notify: a Notify permit goes to one waiter only, and the main loop re-registers its
    /// wait on every event, so under a stream of health events the permit could land elsewhere and the daemon never
    /// stop.
    stop: watch::Sender<bool>,
    detach: std::sync::atomic::AtomicBool,
}

/// Health checks wanted by the current config: every backend of every VIP with a check other than `none`.
fn sync_checks(daemon: &Daemon, checker: &std::sync::Mutex<Checker>) {
    let wanted: Vec<_> = daemon
        .config()
        .vips
        .iter()
        .filter_map(|v| {
            v.health
                .clone()
                .filter(|h| h.kind != CheckKind::None)
                .map(|h| (v, h))
        })
        .flat_map(|(v, h)| {
            v.backends.iter().map(move |b| {
                (
                    HealthKey {
                        vip: v.key(),
                        backend: b.address,
                    },
                    h.target(b.address, v.port),
                    h.clone(),
                )
            })
        })
        .collect();
    checker.lock().expect("checker lock").sync(wanted);
}

/// Bridges `aya-log` records of the loaded programs into `log` (received by the tracing subscriber). An object
/// built without log calls has no log map: said at debug level, nothing to bridge.
fn start_ebpf_logger(dp: &mut Dataplane) {
    let logger = match aya_log::EbpfLogger::init(dp.ebpf_mut()) {
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
    let mut daemon = Daemon::start(&config_path, config)?;
    start_ebpf_logger(daemon.dataplane());

    let (tx, mut events) = mpsc::channel::<HealthEvent>(1024);
    let shared = Arc::new(Shared {
        checker: std::sync::Mutex::new(Checker::new(tx)),
        daemon: Mutex::new(daemon),
        started: Instant::now(),
        stop: watch::Sender::new(false),
        detach: false.into(),
    });
    sync_checks(&*shared.daemon.lock().await, &shared.checker);

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
    let mut interface_watch = tokio::time::interval(INTERFACE_WATCH_INTERVAL);
    interface_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interface_watch.tick() => {
                if let Err(e) = shared.daemon.lock().await.watch_interface() {
                    warn!("following the interface: {e:#}");
                }
            }
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                reload(&shared).await;
            }
            Some(ev) = events.recv() => {
                let mut d = shared.daemon.lock().await;
                if let Err(e) = d.set_health(&ev.key.vip, ev.key.backend, ev.up) {
                    warn!(vip = %ev.key.vip, backend = %ev.key.backend, "applying a health change failed: {e:#}");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = stop.wait_for(|&s| s) => break,
        }
    }
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
    let _ = std::fs::remove_file(&sock);
    if detach {
        // The control and metrics tasks may still hold the daemon; removing the pins is enough: the link and maps
        // die with their last file descriptor, which this process closes on exit.
        let (interface, pin_dir) = {
            let d = shared.daemon.lock().await;
            (
                d.config().daemon.interface.clone(),
                d.config().daemon.pin_dir.clone(),
            )
        };
        crate::daemon::detach_all(&interface, &pin_dir)?;
        info!("detached; exiting");
    } else {
        info!(
            "exiting; {} stays attached and keeps forwarding with the current maps",
            programs::LB
        );
    }
    Ok(())
}

/// Completes once `stop` holds true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

async fn reload(shared: &Shared) -> Response {
    let mut d = shared.daemon.lock().await;
    match d.reload() {
        Ok(diff) => {
            sync_checks(&d, &shared.checker);
            Response::ok(format!("reloaded: {}", diff.summary()))
        }
        Err(e) => Response::error(format!("reload rejected, running state kept: {e:#}")),
    }
}

async fn snapshot(shared: Arc<Shared>) -> Snapshot {
    let mut d = shared.daemon.lock().await;
    let stats = stats(&mut d).unwrap_or_else(|e| {
        warn!("reading stats: {e:#}");
        Default::default()
    });
    Snapshot {
        stats,
        health: shared.checker.lock().expect("checker lock").table(),
        ring_rebuilds: d.ring_builds,
        reloads_ok: d.reloads_ok,
        reloads_failed: d.reloads_failed,
        attached: d.attached(),
        reattachments: d.reattachments,
    }
}

fn stats(d: &mut Daemon) -> Result<api::Stats> {
    let counters: BTreeMap<String, u64> = d
        .dataplane()
        .counters()?
        .into_iter()
        .map(|(c, v): (Counter, u64)| (c.name().to_string(), v))
        .collect();
    let mut vips = Vec::new();
    let mut backends = Vec::new();
    let state = d.state().clone();
    for (k, v) in &state.vips {
        let s = d.dataplane().vip_stats(v.id)?;
        vips.push(api::VipStats {
            vip: *k,
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            flow_misses: s.lru_misses,
        });
        for (addr, b) in &v.backends {
            let s = d.dataplane().backend_stats(b.id)?;
            backends.push(api::BackendStats {
                vip: *k,
                backend: *addr,
                packets: s.packets,
                bytes: s.bytes,
            });
        }
    }
    Ok(api::Stats {
        counters,
        vips,
        backends,
    })
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Ipip => "ipip",
        Mode::L2dsr => "l2dsr",
    }
}

fn frag_name(f: FragmentPolicy) -> &'static str {
    match f {
        FragmentPolicy::Drop => "drop",
        FragmentPolicy::Hash3 => "hash3",
    }
}

fn vip_list(d: &Daemon) -> Result<Vec<VipInfo>> {
    let mut out = Vec::new();
    for (k, v) in &d.state().vips {
        let ring = d.live_ring(k)?;
        let backends = v
            .backends
            .iter()
            .map(|(addr, b)| BackendInfo {
                address: *addr,
                id: b.id,
                weight: b.weight,
                up: d.is_up(k, *addr),
                ring_entries: ring.iter().filter(|&&id| id == b.id).count() as u32,
            })
            .collect();
        out.push(VipInfo {
            vip: *k,
            id: v.id,
            mode: mode_name(v.config.mode).into(),
            ring_size: v.ring_size,
            fragments: frag_name(v.config.fragments).into(),
            backends,
        });
    }
    Ok(out)
}

/// Applies a runtime edit to a copy of the running config (validated like the file) — lost on the next reload
/// from the file, by design: the file stays the source of truth.
async fn edit(shared: &Shared, f: impl FnOnce(&mut Config) -> Result<String, String>) -> Response {
    let mut d = shared.daemon.lock().await;
    let mut cfg = d.config().clone();
    let msg = match f(&mut cfg) {
        Ok(m) => m,
        Err(e) => return Response::error(e),
    };
    if let Err(e) = revalidate(&cfg) {
        return Response::error(e);
    }
    match d.apply_config(cfg) {
        Ok(diff) => {
            sync_checks(&d, &shared.checker);
            Response::ok(format!("{msg} ({})", diff.summary()))
        }
        Err(e) => Response::error(format!("{e:#}")),
    }
}

/// The `[daemon]` section as the file would give it, for running validated settings through the file rules again.
fn raw_daemon(d: &crate::config::DaemonConfig) -> crate::config::RawDaemon {
    crate::config::RawDaemon {
        interface: d.interface.clone(),
        xdp_mode: Some(format!("{:?}", d.xdp_mode).to_lowercase()),
        pin_dir: Some(d.pin_dir.clone()),
        control_socket: Some(d.control_socket.clone()),
        metrics_addr: Some(d.metrics_addr.to_string()),
        max_vips: Some(d.sizes.max_vips),
        max_backends: Some(d.sizes.max_backends),
        flow_table_size: Some(d.sizes.flow_table_size),
        max_ring_size: Some(d.sizes.max_ring_size),
        encap_src_v4: d.encap_src_v4.map(|a| a.to_string()),
        encap_src_v6: d.encap_src_v6.map(|a| a.to_string()),
        mtu: Some(d.mtu),
        new_flow_cap: Some(d.new_flow_cap),
        icmp_too_big: Some(d.icmp_too_big),
        icmp_answer_cap: Some(d.icmp_answer_cap),
    }
}

/// Runs the file validation over an edited config (so runtime edits meet the same rules as the file).
fn revalidate(cfg: &Config) -> Result<(), String> {
    let raw = crate::config::RawConfig {
        daemon: raw_daemon(&cfg.daemon),
        vips: cfg
            .vips
            .iter()
            .map(|v| RawVip {
                address: v.address.to_string(),
                port: v.port,
                protocol: v.protocol.to_string(),
                mode: Some(mode_name(v.mode).into()),
                ring_size: Some(v.ring_size),
                fragments: Some(frag_name(v.fragments).into()),
                backends: v
                    .backends
                    .iter()
                    .map(|b| RawBackend {
                        address: b.address.to_string(),
                        weight: Some(b.weight),
                    })
                    .collect(),
                health: v.health.clone(),
            })
            .collect(),
    };
    raw.validate().map(|_| ()).map_err(|e| e.to_string())
}

fn find_vip<'a>(
    cfg: &'a mut Config,
    vip: &VipAddr,
) -> Result<&'a mut crate::config::VipConfig, String> {
    cfg.vips
        .iter_mut()
        .find(|v| v.key() == *vip)
        .ok_or_else(|| format!("no VIP {vip}"))
}

fn set_weight(
    cfg: &mut Config,
    vip: &VipAddr,
    backend: std::net::IpAddr,
    weight: u32,
) -> Result<String, String> {
    let v = find_vip(cfg, vip)?;
    let b = v
        .backends
        .iter_mut()
        .find(|b| b.address == backend)
        .ok_or_else(|| format!("{vip} has no backend {backend}"))?;
    b.weight = weight;
    Ok(format!("{vip}: {backend} weight {weight}"))
}

impl Handler for Shared {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => {
                let d = self.daemon.lock().await;
                let c = d.config();
                Response::Status(StatusInfo {
                    version: env!("CARGO_PKG_VERSION").into(),
                    pid: std::process::id(),
                    interface: c.daemon.interface.clone(),
                    xdp_mode: d.attachment.to_string(),
                    config_path: d.config_path.display().to_string(),
                    uptime_secs: self.started.elapsed().as_secs(),
                    vips: d.state().vips.len(),
                    backends: d.state().vips.values().map(|v| v.backends.len()).sum(),
                    adopted: d.attachment == crate::attach::Attachment::Adopted,
                    reloads_ok: d.reloads_ok,
                    reloads_failed: d.reloads_failed,
                    attached: d.attached(),
                    reattachments: d.reattachments,
                })
            }
            Request::VipList => match vip_list(&*self.daemon.lock().await) {
                Ok(v) => Response::Vips(v),
                Err(e) => Response::error(format!("{e:#}")),
            },
            Request::VipAdd { vip } => {
                let raw = RawVip {
                    address: vip.address.to_string(),
                    port: vip.port,
                    protocol: vip.protocol.clone(),
                    mode: vip.mode.clone(),
                    ring_size: vip.ring_size,
                    fragments: vip.fragments.clone(),
                    backends: vip
                        .backends
                        .iter()
                        .map(|b| RawBackend {
                            address: b.address.to_string(),
                            weight: b.weight,
                        })
                        .collect(),
                    health: vip.health.clone(),
                };
                edit(self, move |cfg| {
                    // The new VIP alone through the file rules, under the running daemon settings (the whole
                    // config is validated again after the edit).
                    let probe = crate::config::RawConfig {
                        daemon: raw_daemon(&cfg.daemon),
                        vips: vec![raw],
                    };
                    match probe.validate() {
                        Ok(c) => {
                            let v = c.vips.into_iter().next().ok_or("no VIP")?;
                            let msg = format!("added VIP {}", v.key());
                            cfg.vips.push(v);
                            Ok(msg)
                        }
                        Err(e) => Err(e.0.join("; ")),
                    }
                })
                .await
            }
            Request::VipDel { vip } => {
                edit(self, |cfg| {
                    let n = cfg.vips.len();
                    cfg.vips.retain(|v| v.key() != vip);
                    if cfg.vips.len() == n {
                        Err(format!("no VIP {vip}"))
                    } else {
                        Ok(format!("removed VIP {vip}"))
                    }
                })
                .await
            }
            Request::BackendAdd {
                vip,
                backend,
                weight,
            } => {
                edit(self, |cfg| {
                    let v = find_vip(cfg, &vip)?;
                    if v.backends.iter().any(|b| b.address == backend) {
                        return Err(format!("{vip} already has backend {backend}"));
                    }
                    let weight = weight.unwrap_or(crate::config::DEFAULT_WEIGHT);
                    v.backends.push(crate::config::BackendConfig {
                        address: backend,
                        weight,
                    });
                    Ok(format!("{vip}: added backend {backend} weight {weight}"))
                })
                .await
            }
            Request::BackendDel { vip, backend } => {
                edit(self, |cfg| {
                    let v = find_vip(cfg, &vip)?;
                    let n = v.backends.len();
                    v.backends.retain(|b| b.address != backend);
                    if v.backends.len() == n {
                        Err(format!("{vip} has no backend {backend}"))
                    } else {
                        Ok(format!("{vip}: removed backend {backend}"))
                    }
                })
                .await
            }
            Request::BackendDrain { vip, backend } => {
                edit(self, |cfg| set_weight(cfg, &vip, backend, 0)).await
            }
            Request::BackendWeight {
                vip,
                backend,
                weight,
            } => edit(self, |cfg| set_weight(cfg, &vip, backend, weight)).await,
            Request::Health => Response::Health(self.checker.lock().expect("checker lock").table()),
            Request::Stats => match stats(&mut *self.daemon.lock().await) {
                Ok(s) => Response::Stats(s),
                Err(e) => Response::error(format!("{e:#}")),
            },
            Request::Flows { limit } => {
                let mut d = self.daemon.lock().await;
                let ids: BTreeMap<u32, (VipAddr, std::net::IpAddr)> = d
                    .state()
                    .vips
                    .iter()
                    .flat_map(|(k, v)| v.backends.iter().map(move |(a, b)| (b.id, (*k, *a))))
                    .collect();
                match d.dataplane().flows(limit) {
                    Ok(flows) => Response::Flows(
                        flows
                            .into_iter()
                            .filter_map(|(k, s)| {
                                let (src, dst) = (k.src_ip()?, k.dst_ip()?);
                                Some(FlowInfo {
                                    flow: FiveTuple {
                                        protocol: k.proto,
                                        src: (src, u16::from_be(k.sport)).into(),
                                        dst: (dst, u16::from_be(k.dport)).into(),
                                    },
                                    backend_id: s.backend_id,
                                    backend: ids.get(&s.backend_id).map(|x| x.1),
                                    vip: ids.get(&s.backend_id).map(|x| x.0),
                                })
                            })
                            .collect(),
                    ),
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
            Request::Simulate { flow } => {
                match crate::simulate::simulate(self.daemon.lock().await.dataplane(), flow) {
                    Ok(r) => Response::Simulate(r),
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
            Request::Reload => reload(self).await,
            Request::ConfigCheck { toml } => match Config::parse(&toml) {
                Ok(c) => Response::ok(format!("config ok ({} VIPs)", c.vips.len())),
                Err(e) => Response::error(e.to_string()),
            },
            Request::Shutdown { detach } => {
                self.detach
                    .store(detach, std::sync::atomic::Ordering::SeqCst);
                self.stop.send_replace(true);
                Response::ok(if detach {
                    "shutting down and detaching"
                } else {
                    "shutting down; forwarding continues"
                })
            }
        }
    }
}
