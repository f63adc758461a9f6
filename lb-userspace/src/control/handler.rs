//! The daemon's answers to lbctl: one named method per request, as sozu's `ConfigState` dispatches them. Reads
//! take the daemon's lock and report; edits change a copy of the running config with the typed operations of
//! `config::edit`, hold it to the same rules as the file, and apply it only if it passes. Every change asked for
//! is logged with who asked (the peer's uid and pid) and what came of it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use crate::config::{
    Config, VipAddr,
    raw::{RawBackend, RawVip},
};
use crate::control::api::{
    FLOWS_PER_PART, FiveTuple, FlowInfo, MAX_FLOWS, Request, Response, StatusInfo, VipSpec,
};
use crate::control::server::{Handler, Peer, Reply};
use crate::shared::Shared;
use crate::stats;

impl Handler for Shared {
    async fn handle(&self, peer: Peer, request: Request) -> Reply {
        let change = change_of(&request);
        if let Request::Flows { limit } = request {
            return self.flows(limit).await;
        }
        let response = self.answer(peer, request).await;
        if let Some(what) = change {
            match &response {
                Response::Error { message } => {
                    tracing::warn!(uid = peer.uid, pid = %peer.pid_text(), "control: {what}: refused: {message}")
                }
                Response::Ok { message } => {
                    tracing::info!(uid = peer.uid, pid = %peer.pid_text(), "control: {what}: {message}")
                }
                other => {
                    tracing::info!(uid = peer.uid, pid = %peer.pid_text(), "control: {what}: {other:?}")
                }
            }
        }
        response.into()
    }
}

/// What a request changes, in words for the audit log; `None` for the requests that only read.
fn change_of(request: &Request) -> Option<String> {
    Some(match request {
        Request::VipAdd { vip } => format!(
            "vip add {}",
            std::net::SocketAddr::new(vip.address, vip.port)
        ),
        Request::VipDel { vip } => format!("vip del {vip}"),
        Request::BackendAdd { vip, backend, .. } => format!("backend add {vip} {backend}"),
        Request::BackendDel { vip, backend } => format!("backend del {vip} {backend}"),
        Request::BackendDrain { vip, backend } => format!("backend drain {vip} {backend}"),
        Request::BackendWeight {
            vip,
            backend,
            weight,
        } => format!("backend weight {vip} {backend} {weight}"),
        Request::Reload => "reload".into(),
        Request::AnnounceDrain { drain } => {
            if *drain {
                "announce drain".into()
            } else {
                "announce undrain".into()
            }
        }
        Request::Shutdown { detach } => {
            format!("shutdown{}", if *detach { " --detach" } else { "" })
        }
        Request::Status
        | Request::VipList
        | Request::Health
        | Request::Stats
        | Request::Flows { .. }
        | Request::Simulate { .. }
        | Request::Announce
        | Request::ConfigCheck { .. } => return None,
    })
}

impl Shared {
    async fn answer(&self, peer: Peer, request: Request) -> Response {
        match request {
            Request::Status => self.status().await,
            Request::VipList => self.vip_list().await,
            Request::VipAdd { vip } => self.vip_add(peer, *vip).await,
            Request::VipDel { vip } => self.edit(peer, |c| c.remove_vip(&vip)).await,
            Request::BackendAdd {
                vip,
                backend,
                weight,
            } => {
                self.edit(peer, |c| c.add_backend(&vip, backend, weight))
                    .await
            }
            Request::BackendDel { vip, backend } => {
                self.edit(peer, |c| c.remove_backend(&vip, backend)).await
            }
            Request::BackendDrain { vip, backend } => {
                self.edit(peer, |c| {
                    c.set_weight(&vip, backend, 0)
                        .map(|_| format!("drain of {backend} in {vip} (weight 0)"))
                })
                .await
            }
            Request::BackendWeight {
                vip,
                backend,
                weight,
            } => {
                self.edit(peer, |c| c.set_weight(&vip, backend, weight))
                    .await
            }
            Request::Health => Response::Health(self.checker.lock().expect("checker lock").table()),
            Request::Stats => self.stats().await,
            // Streamed: answered in `handle`.
            Request::Flows { .. } => Response::error("flows are streamed"),
            Request::Simulate { flow } => self.simulate(flow).await,
            Request::Reload => match self.reload().await {
                Ok(m) => Response::ok(m),
                Err(e) => Response::error(e),
            },
            Request::ConfigCheck { toml } => config_check(&toml),
            Request::Shutdown { detach } => self.shutdown(detach),
            Request::Announce => self.announce().await,
            Request::AnnounceDrain { drain } => self.announce_drain(drain).await,
        }
    }
}

/// An internal error as a response: the message with its causes.
fn failed(e: anyhow::Error) -> Response {
    Response::error(format!("{e:#}"))
}

impl Shared {
    async fn status(&self) -> Response {
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
            announce: self.announcer.lock().expect("announcer lock").info(),
        })
    }

    async fn vip_list(&self) -> Response {
        match stats::vip_list(&*self.daemon.lock().await) {
            Ok(v) => Response::Vips(v),
            Err(e) => failed(e),
        }
    }

    /// `lbctl vip add`: the VIP's values parse as the file's would (named by the VIP, not a position), then it is
    /// added like any other edit.
    async fn vip_add(&self, peer: Peer, spec: VipSpec) -> Response {
        let label = format!(
            "vip[{}/{}]",
            std::net::SocketAddr::new(spec.address, spec.port),
            spec.protocol
        );
        let raw = RawVip {
            address: spec.address.to_string(),
            port: spec.port,
            protocol: spec.protocol,
            mode: spec.mode,
            ring_size: spec.ring_size,
            fragments: spec.fragments,
            backends: spec
                .backends
                .iter()
                .map(|b| RawBackend {
                    address: b.address.to_string(),
                    weight: b.weight,
                })
                .collect(),
            health: spec.health,
            min_healthy: spec.min_healthy,
            panic_threshold: spec.panic_threshold,
        };
        let mut errs = Vec::new();
        match raw.to_typed(&label, &mut errs) {
            Some(vip) => self.edit(peer, |c| c.add_vip(vip)).await,
            None => Response::error(errs.join("; ")),
        }
    }

    /// Applies an edit to a copy of the running config; the result must pass the rules, then it is diff-applied
    /// like a reload. A refused edit changes nothing. An applied one is recorded with who made it, so that the
    /// reload that drops it can name it.
    async fn edit(
        &self,
        peer: Peer,
        op: impl FnOnce(&mut Config) -> Result<String, String>,
    ) -> Response {
        let mut d = self.daemon.lock().await;
        let mut cfg = d.config().clone();
        let msg = match op(&mut cfg) {
            Ok(m) => m,
            Err(e) => return Response::error(e),
        };
        if let Err(e) = cfg.validate() {
            return Response::error(e.0.join("; "));
        }
        match d.apply_config(cfg) {
            Ok(diff) => {
                self.sync_checks(&d);
                self.sync_announcements(&d);
                d.record_edit(format!(
                    "{msg} (by uid {} pid {})",
                    peer.uid,
                    peer.pid_text()
                ));
                Response::ok(format!("{msg} ({})", diff.summary()))
            }
            Err(e) => failed(e),
        }
    }

    async fn stats(&self) -> Response {
        match stats::stats(&mut *self.daemon.lock().await) {
            Ok(s) => Response::Stats(s),
            Err(e) => failed(e),
        }
    }

    /// Up to `limit` flow-table entries, each with the VIP and backend address its backend id stands for,
    /// streamed [`FLOWS_PER_PART`] at a time. The daemon's lock is held only to copy the id table and take a handle
    /// on the map; the walk runs on a blocking thread and goes at the pace the client reads.
    async fn flows(&self, limit: usize) -> Reply {
        if !(1..=MAX_FLOWS).contains(&limit) {
            return Response::error(format!("flows: limit {limit} must be 1..={MAX_FLOWS}")).into();
        }
        let (ids, table) = {
            let d = self.daemon.lock().await;
            let ids: BTreeMap<u32, (VipAddr, IpAddr)> = d
                .state()
                .vips
                .iter()
                .flat_map(|(k, v)| v.backends.iter().map(move |(a, b)| (b.id, (*k, *a))))
                .collect();
            match d.flow_table() {
                Ok(t) => (ids, t),
                Err(e) => return failed(e).into(),
            }
        };
        let (tx, rx) = mpsc::channel(1);
        tokio::task::spawn_blocking(move || {
            let mut part = Vec::with_capacity(FLOWS_PER_PART);
            let walked = table.walk(limit, |k, s| {
                let (Some(src), Some(dst)) = (k.src_ip(), k.dst_ip()) else {
                    return true;
                };
                let owner = ids.get(&s.backend_id);
                part.push(FlowInfo {
                    flow: FiveTuple {
                        protocol: k.proto,
                        src: (src, u16::from_be(k.sport)).into(),
                        dst: (dst, u16::from_be(k.dport)).into(),
                    },
                    backend_id: s.backend_id,
                    backend: owner.map(|x| x.1),
                    vip: owner.map(|x| x.0),
                });
                // A client gone (or too slow: the server gave up on it) ends the walk.
                part.len() < FLOWS_PER_PART
                    || tx
                        .blocking_send(Response::FlowsPart(std::mem::take(&mut part)))
                        .is_ok()
            });
            let last = match walked {
                Ok(()) => Response::Flows(part),
                Err(e) => failed(e),
            };
            let _ = tx.blocking_send(last);
        });
        Reply::Stream(rx)
    }

    async fn simulate(&self, flow: FiveTuple) -> Response {
        match crate::simulate::simulate(self.daemon.lock().await.dataplane(), flow) {
            Ok(r) => Response::Simulate(r),
            Err(e) => failed(e),
        }
    }

    async fn announce(&self) -> Response {
        let d = self.daemon.lock().await;
        self.sync_announcements(&d);
        Response::Announce(self.announcer.lock().expect("announcer lock").info())
    }

    /// `lbctl announce drain|undrain`: the flag, then the routes at once; the answer says what is announced now.
    async fn announce_drain(&self, drain: bool) -> Response {
        let d = self.daemon.lock().await;
        let recorded = self
            .announcer
            .lock()
            .expect("announcer lock")
            .set_drained(drain);
        self.sync_announcements(&d);
        let info = self.announcer.lock().expect("announcer lock").info();
        match (recorded, &info.error) {
            (Err(e), _) => Response::error(e),
            (Ok(()), Some(e)) => Response::error(format!("the routes could not be written: {e}")),
            (Ok(()), None) => Response::ok(format!(
                "{}: {}",
                if drain { "drained" } else { "undrained" },
                info.summary()
            )),
        }
    }

    fn shutdown(&self, detach: bool) -> Response {
        self.detach.store(detach, Ordering::SeqCst);
        self.stop.send_replace(true);
        Response::ok(if detach {
            "shutting down and detaching"
        } else {
            "shutting down; forwarding continues"
        })
    }
}

/// `lbctl config check`: the text held to the file's rules; nothing runs on it.
fn config_check(toml: &str) -> Response {
    match Config::parse(toml) {
        Ok(c) => Response::ok(format!("config ok ({} VIPs)", c.vips.len())),
        Err(e) => Response::error(e.to_string()),
    }
}
