//! The running balancer: owns the loaded dataplane and keeps the maps equal to the desired state of the config,
//! adjusted by health. Every ring change is an atomic switch (`Dataplane::install_ring`); a reload touches only the
//! VIPs the diff names.
//!
//! Lifecycle: `start` validates nothing itself (the caller passes a validated [`Config`]), loads the object with
//! maps pinned under `pin_dir` (adopting pins a previous daemon left), attaches `lb_xdp` through a pinned link
//! (adopting a pinned link), and programs the maps. Dropping the daemon leaves all of it in place: the program keeps
//! forwarding with the last state. [`Daemon::detach`] removes program, link and pins.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lb_common::{
    BACKEND_F_ACTIVE, Backend, BackendId, CFG_F_ICMP_TOO_BIG, GlobalConfig, VIP_F_FRAG_ONLY,
    VipMeta, addr_words, programs,
};
use tracing::{debug, info, warn};

use crate::attach::{self, Attachment};
use crate::config::{Config, VipAddr};
use crate::dataplane::{Dataplane, LoadOptions};
use crate::state::{BackendKey, DesiredState, DesiredVip, Diff, Ids, diff};

pub struct Daemon {
    pub config_path: PathBuf,
    config: Config,
    dp: Dataplane,
    ids: Ids,
    state: DesiredState,
    /// The meta now in `LB_VIPS` per VIP (its active ring slot).
    metas: BTreeMap<VipAddr, VipMeta>,
    /// Backends health reports down. Absent = up (the checkers start every backend up).
    down: BTreeSet<BackendKey>,
    pub attachment: Attachment,
    /// The interface's ifindex when `lb_xdp` was attached to it; 0 while the interface is gone.
    ifindex: u32,
    /// Times `lb_xdp` was attached again to a re-created interface.
    pub reattachments: u64,
    pub ring_builds: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_reload_error: Option<String>,
}

fn global_config(c: &Config) -> GlobalConfig {
    let d = &c.daemon;
    GlobalConfig {
        encap_src_v4: d
            .encap_src_v4
            .map_or(0, |ip| u32::from_ne_bytes(ip.octets())),
        encap_src_v6: d
            .encap_src_v6
            .map_or([0; 4], |ip| addr_words(IpAddr::V6(ip)).0),
        ring_stride: d.sizes.max_ring_size,
        new_flow_cap: d.new_flow_cap,
        mtu: d.mtu,
        flags: if d.icmp_too_big {
            CFG_F_ICMP_TOO_BIG
        } else {
            0
        },
        icmp_answer_cap: d.icmp_answer_cap,
    }
}

impl Daemon {
    pub fn start(config_path: &Path, config: Config) -> Result<Daemon> {
        let d = &config.daemon;
        let ifindex = attach::ifindex(&d.interface)?;
        let mut dp = Dataplane::load(&LoadOptions {
            sizes: config.daemon.sizes,
            pin_dir: Some(d.pin_dir.clone()),
            programs: &[programs::LB],
        })
        .context("loading the dataplane")?;
        let attachment = attach::attach_pinned(
            dp.xdp(programs::LB)?,
            programs::LB,
            &d.interface,
            d.xdp_mode,
            &d.pin_dir,
        )
        .with_context(|| format!("attaching {} to {}", programs::LB, d.interface))?;
        dp.add_tx_port(ifindex)
            .context("adding the interface to LB_TX_PORTS")?;
        for sysctl in attach::forwarding_disabled(&d.interface) {
            // bpf_fib_lookup refuses to answer for an interface that does not forward: every VIP packet would be
            // dropped as drop_no_route. Changing host sysctls is the operator's call, so say it loudly.
            warn!(
                sysctl,
                "forwarding is disabled: VIP packets will be dropped (drop_no_route) until it is set to 1"
            );
        }

        let mut daemon = Daemon {
            config_path: config_path.to_path_buf(),
            ids: Ids::new(d.sizes.max_vips, d.sizes.max_backends),
            config: config.clone(),
            dp,
            state: DesiredState::default(),
            metas: BTreeMap::new(),
            down: BTreeSet::new(),
            attachment,
            ifindex,
            reattachments: 0,
            ring_builds: 0,
            reloads_ok: 0,
            reloads_failed: 0,
            last_reload_error: None,
        };
        daemon.adopt_existing()?;
        let new = DesiredState::build(&config, &mut daemon.ids).map_err(anyhow::Error::msg)?;
        // What the adopted maps hold is not known as a DesiredState; treat every VIP as new (an atomic ring
        // switch to what is most likely the same table) and remove what the config no longer has.
        let old = DesiredState::default();
        let d = diff(&old, &new);
        daemon.apply(new, &d)?;
        daemon.remove_stale()?;
        info!(vips = daemon.state.vips.len(), attachment = %daemon.attachment, "lbd running");
        Ok(daemon)
    }

    /// Reads back VIP ids, ring slots and ring members from adopted maps so ids (and therefore flow-table entries
    /// and stats) survive a restart.
    fn adopt_existing(&mut self) -> Result<()> {
        let vips = self.dp.vips()?;
        if vips.is_empty() {
            return Ok(());
        }
        let mut vip_ids = Vec::new();
        let mut backend_ids = Vec::new();
        for (k, meta) in &vips {
            if meta.flags & VIP_F_FRAG_ONLY != 0 {
                continue;
            }
            let Some(address) = k.ip() else { continue };
            let va = VipAddr {
                address,
                port: k.port(),
                protocol: k.proto,
            };
            vip_ids.push((va, meta.vip_id));
            self.metas.insert(va, *meta);
            let ring = match self.dp.read_ring(meta) {
                Ok(r) => r,
                Err(e) => {
                    warn!(vip = %va, error = %e, "cannot read the adopted ring; its backend ids are re-assigned");
                    continue;
                }
            };
            let members: BTreeSet<BackendId> = ring.into_iter().filter(|&id| id != 0).collect();
            for id in members {
                if let Some(ip) = self.dp.backend(id)?.ip() {
                    backend_ids.push(((va, ip), id));
                }
            }
        }
        info!(
            vips = vip_ids.len(),
            backends = backend_ids.len(),
            "adopted the pinned maps' state"
        );
        self.ids.seed(vip_ids, backend_ids);
        Ok(())
    }

    fn remove_stale(&mut self) -> Result<()> {
        for (k, meta) in self.dp.vips()? {
            let Some(address) = k.ip() else { continue };
            let va = VipAddr {
                address,
                port: k.port(),
                protocol: k.proto,
            };
            let wanted = if meta.flags & VIP_F_FRAG_ONLY != 0 {
                self.state.frag_only.contains_key(&va)
            } else {
                self.state.vips.contains_key(&va)
            };
            if !wanted {
                info!(vip = %va, "removing a VIP the config no longer has");
                self.dp.remove_vip(&k)?;
                self.metas.remove(&va);
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether `lb_xdp` runs on the interface now (false while the interface is gone).
    pub fn attached(&self) -> bool {
        self.ifindex != 0
    }

    /// Follows the interface: when it was re-created (a driver reload, a bond or VLAN built again), the kernel
    /// detached `lb_xdp` from the old device and the new one starts without a program, so it is attached again, with
    /// the maps as they are. Called periodically; cheap when nothing changed (one ifindex lookup).
    pub fn watch_interface(&mut self) -> Result<()> {
        let d = &self.config.daemon;
        let now = attach::ifindex(&d.interface).unwrap_or(0);
        if now == self.ifindex {
            return Ok(());
        }
        if now == 0 {
            warn!(interface = %d.interface, "the interface is gone and lb_xdp with it; it is attached again when the interface returns");
            self.ifindex = 0;
            return Ok(());
        }
        // The pinned link still names the old device: attach_pinned finds it defunct and attaches afresh.
        self.attachment = attach::attach_pinned(
            self.dp.xdp(programs::LB)?,
            programs::LB,
            &d.interface,
            d.xdp_mode,
            &d.pin_dir,
        )
        .with_context(|| format!("attaching {} to {} again", programs::LB, d.interface))?;
        self.dp
            .add_tx_port(now)
            .context("adding the interface to LB_TX_PORTS")?;
        self.ifindex = now;
        self.reattachments += 1;
        info!(interface = %d.interface, ifindex = now, mode = %self.attachment, "the interface was re-created; lb_xdp attached to it again");
        Ok(())
    }

    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    pub fn dataplane(&mut self) -> &mut Dataplane {
        &mut self.dp
    }

    /// The ring packets of `vip` use now, from the map.
    pub fn live_ring(&self, vip: &VipAddr) -> Result<Vec<BackendId>> {
        match self.metas.get(vip) {
            Some(meta) => self.dp.read_ring(meta),
            None => Ok(Vec::new()),
        }
    }

    pub fn is_up(&self, vip: &VipAddr, backend: IpAddr) -> bool {
        !self.down.contains(&(*vip, backend))
    }

    /// Re-reads the config file and applies the difference. On any error the running state is kept.
    pub fn reload(&mut self) -> Result<Diff> {
        let res = Config::load(&self.config_path)
            .map_err(anyhow::Error::from)
            .and_then(|c| self.apply_config(c));
        match &res {
            Ok(d) => {
                self.reloads_ok += 1;
                self.last_reload_error = None;
                info!(changes = %d.summary(), "reloaded {}", self.config_path.display());
            }
            Err(e) => {
                self.reloads_failed += 1;
                self.last_reload_error = Some(format!("{e:#}"));
                warn!("reload rejected, running state kept: {e:#}");
            }
        }
        res
    }

    /// Applies a validated config. Settings fixed at load time (interface, pin_dir, map sizes) cannot change.
    pub fn apply_config(&mut self, config: Config) -> Result<Diff> {
        let (a, b) = (&self.config.daemon, &config.daemon);
        let mut fixed = Vec::new();
        if a.interface != b.interface {
            fixed.push(format!(
                "daemon.interface ({:?} -> {:?})",
                a.interface, b.interface
            ));
        }
        if a.pin_dir != b.pin_dir {
            fixed.push(format!(
                "daemon.pin_dir ({} -> {})",
                a.pin_dir.display(),
                b.pin_dir.display()
            ));
        }
        if a.sizes != b.sizes {
            fixed.push(format!("daemon map sizes ({:?} -> {:?})", a.sizes, b.sizes));
        }
        if !fixed.is_empty() {
            bail!(
                "{} cannot change while running (restart with --detach first): {}",
                fixed.len(),
                fixed.join(", ")
            );
        }
        if a.control_socket != b.control_socket
            || a.metrics_addr != b.metrics_addr
            || a.xdp_mode != b.xdp_mode
        {
            warn!("daemon.control_socket, metrics_addr and xdp_mode take effect on restart only");
        }
        // Allocate on a copy so a failure leaves the ids as they were.
        let mut ids = self.ids.clone();
        let new = DesiredState::build(&config, &mut ids).map_err(anyhow::Error::msg)?;
        let old = std::mem::take(&mut self.state);
        let d = diff(&old, &new);
        self.ids = ids;
        self.config = config;
        self.down.retain(|k| {
            new.vips
                .get(&k.0)
                .is_some_and(|v| v.backends.contains_key(&k.1))
        });
        if let Err(e) = self.apply(new, &d) {
            bail!("applying the reload failed part-way (maps may mix old and new state): {e:#}");
        }
        Ok(d)
    }

    /// The `LB_BACKENDS` entry of backend `addr` of `vip` as the state and health say now: owned by the VIP's id
    /// (so flow entries of another service never use it), active unless down.
    fn backend_entry(&self, vip: &VipAddr, addr: IpAddr) -> Backend {
        let flags = if self.is_up(vip, addr) {
            BACKEND_F_ACTIVE
        } else {
            0
        };
        Backend::new(addr, self.state.vips[vip].id, flags)
    }

    fn apply(&mut self, new: DesiredState, d: &Diff) -> Result<()> {
        self.dp.set_config(&global_config(&self.config))?;
        self.state = new;
        for (k, _, backend_ids) in &d.vips_removed {
            self.dp
                .remove_vip(&k.key())
                .with_context(|| format!("removing VIP {k}"))?;
            self.metas.remove(k);
            for id in backend_ids {
                self.dp.clear_backend(*id)?;
            }
            info!(vip = %k, "VIP removed");
        }
        for k in &d.frag_only_removed {
            self.dp.remove_vip(&k.key())?;
        }
        for k in &d.vips_added {
            let v = self.state.vips[k].clone();
            for (addr, b) in &v.backends {
                self.dp.set_backend(b.id, &self.backend_entry(k, *addr))?;
            }
            self.install(k)?;
            info!(vip = %k, id = v.id, backends = v.backends.len(), "VIP added");
        }
        for c in &d.vips_changed {
            if !c.needs_ring() {
                continue;
            }
            for (addr, id) in &c.backends_added {
                self.dp
                    .set_backend(*id, &self.backend_entry(&c.key, *addr))?;
            }
            self.install(&c.key)?;
            // Only after the switch: flows pinned to a removed backend then re-pick from the new ring.
            for (_, id) in &c.backends_removed {
                if !self.state.vips[&c.key]
                    .backends
                    .values()
                    .any(|b| b.id == *id)
                {
                    self.dp.clear_backend(*id)?;
                }
            }
            info!(vip = %c.key, added = c.backends_added.len(), removed = c.backends_removed.len(),
                reweighted = c.backends_reweighted.len(), "VIP changed");
        }
        for k in &d.frag_only_set {
            self.write_frag_only(k)?;
        }
        Ok(())
    }

    /// Builds and atomically installs a VIP's ring, then refreshes the fragment-only entries that mirror it.
    fn install(&mut self, k: &VipAddr) -> Result<()> {
        let v: &DesiredVip = &self.state.vips[k];
        let ring = v.ring(|addr| !self.down.contains(&(*k, addr)));
        let meta = VipMeta {
            vip_id: v.id,
            flags: v.flags,
            ring_slot: self.metas.get(k).map_or(2 * v.id, |m| m.ring_slot),
            ring_size: v.ring_size,
        };
        let new_meta = self
            .dp
            .install_ring(&k.key(), meta, &ring)
            .with_context(|| format!("installing the ring of {k}"))?;
        self.metas.insert(*k, new_meta);
        self.ring_builds += 1;
        debug!(vip = %k, slot = new_meta.ring_slot, "ring switched");
        let mirrors: Vec<VipAddr> = self
            .state
            .frag_only
            .iter()
            .filter(|(_, owner)| *owner == k)
            .map(|(w, _)| *w)
            .collect();
        for w in mirrors {
            self.write_frag_only(&w)?;
        }
        Ok(())
    }

    fn write_frag_only(&mut self, wild: &VipAddr) -> Result<()> {
        let owner = self.state.frag_only[wild];
        let Some(meta) = self.metas.get(&owner) else {
            return Ok(());
        };
        let meta = VipMeta {
            flags: self.state.frag_only_flags(&owner),
            ..*meta
        };
        self.dp
            .upsert_vip(&wild.key(), &meta)
            .with_context(|| format!("writing the fragment entry {wild}"))
    }

    /// A health transition: a down backend leaves the ring and loses `BACKEND_F_ACTIVE` (its flows re-pick); an up
    /// one becomes active and returns to the ring.
    pub fn set_health(&mut self, vip: &VipAddr, backend: IpAddr, up: bool) -> Result<()> {
        let Some(id) = self
            .state
            .vips
            .get(vip)
            .and_then(|v| v.backends.get(&backend))
            .map(|b| b.id)
        else {
            debug!(%vip, %backend, "health event for a backend no longer configured");
            return Ok(());
        };
        let was_up = self.is_up(vip, backend);
        if was_up == up {
            return Ok(());
        }
        if up {
            self.down.remove(&(*vip, backend));
            // Active first, so a flow the new ring sends there is not bounced back to the ring.
            self.dp.set_backend(id, &self.backend_entry(vip, backend))?;
            self.install(vip)?;
        } else {
            self.down.insert((*vip, backend));
            // Ring first: a flow re-picking after the flag clears must not find the backend in the ring.
            self.install(vip)?;
            self.dp.set_backend(id, &self.backend_entry(vip, backend))?;
        }
        info!(%vip, %backend, up, "backend health changed; ring rebuilt");
        Ok(())
    }

    /// Removes the program, its link and every pin.
    pub fn detach(self) -> Result<()> {
        let d = self.config.daemon.clone();
        drop(self);
        detach_all(&d.interface, &d.pin_dir)
    }
}

/// `lbd --detach`: works without a running daemon (and without loading anything).
pub fn detach_all(interface: &str, pin_dir: &Path) -> Result<()> {
    if !attach::detach_pinned(programs::LB, interface, pin_dir)? {
        warn!(interface, pin_dir = %pin_dir.display(), "no pinned link found; nothing was attached by lbd");
    }
    attach::remove_pins(pin_dir)
}
