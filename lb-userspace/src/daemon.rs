//! The running balancer: owns the loaded dataplane and keeps the maps equal to the desired state of the config,
//! adjusted by health. Every ring change is an atomic switch (`Dataplane::install_ring`); a reload touches only the
//! VIPs the diff names.
//!
//! Lifecycle: `start` validates nothing itself (the caller passes a validated [`Config`]). It locks the pin
//! directory, decides from the pinned maps what it may do with them (`layout::plan`: adopt maps that are exactly
//! what it would create, carry the state of others into new maps, or refuse before touching anything), programs
//! the maps, and attaches `lb_xdp` through a pinned link (adopting the link: one atomic program swap). Dropping the
//! daemon leaves all of it in place: the program keeps forwarding with the last state.
//!
//! Every change is all or nothing: when a reload or an edit fails part-way, the maps are written back to the state
//! before it, and the daemon's view with them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lb_common::{
    BACKEND_F_ACTIVE, BACKEND_F_DRAINED, BACKEND_F_UNHEALTHY, Backend, BackendId,
    CFG_F_ICMP_TOO_BIG, GlobalConfig, LAYOUT_VERSION, VIP_F_FRAG_ONLY, VipMeta, addr_words,
    hc_mark::ProbeMark, programs,
};
use tracing::{debug, info, warn};

use crate::announce::{self, VipHealth};
use crate::attach::{self, Attachment};
use crate::config::{AnnounceConfig, Config, Mode, VipAddr};
use crate::dataplane::{Dataplane, FlowTable, LoadOptions};
use crate::health::{CheckKind, HealthKey};
use crate::layout::{self, Plan};
use crate::maglev;
use crate::pins::PinDir;
use crate::probe_path;
use crate::state::{BackendKey, DesiredState, DesiredVip, Diff, Ids, Ring, RingInput, diff};
use crate::upgrade::{self, FlowCopy, OldState};

pub struct Daemon {
    pub config_path: PathBuf,
    config: Config,
    dp: Dataplane,
    ids: Ids,
    state: DesiredState,
    /// The meta now in `LB_VIPS` per VIP (its active ring slot).
    metas: BTreeMap<VipAddr, VipMeta>,
    /// Backends health reports down. Absent = up (the checkers start every backend in the state the maps show).
    down: BTreeSet<BackendKey>,
    /// Runtime edits in effect since the file was last read, in words: a reload from the file drops them and names
    /// them.
    edits: Vec<String>,
    /// The locked pin directory.
    pins: PinDir,
    pub attachment: Attachment,
    /// The interface's ifindex when `lb_xdp` was attached to it; 0 while the interface is gone.
    ifindex: u32,
    /// Times `lb_xdp` was attached again to a re-created interface.
    pub reattachments: u64,
    pub ring_builds: u64,
    /// VIPs whose ring ignores health (below their panic threshold), and how often one entered that mode.
    panicking: BTreeSet<VipAddr>,
    pub panics: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_reload_error: Option<String>,
    /// Why lbd's VIP-path probe route could not be set up at start (`None`: it was). Capabilities are gone by the
    /// time a reload or an edit asks for VIP-path checks, so it cannot be set up later.
    probe_path_error: Option<String>,
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
        let d = config.daemon.clone();
        let ifindex = attach::ifindex(&d.interface)?;
        let pins = PinDir::open(&d.pin_dir)?;
        let plan = layout::plan(&pins, &d.sizes)?;
        info!(pin_dir = %pins.path().display(), "{plan}");
        let (maps_dir, old) = match &plan {
            Plan::Fresh => (pins.maps_dir(), None),
            Plan::Adopt => (
                pins.maps_dir(),
                Some(OldState::read(&pins.maps_dir(), LAYOUT_VERSION)?),
            ),
            Plan::Resume => (
                pins.ready_dir(),
                Some(OldState::read(&pins.ready_dir(), LAYOUT_VERSION)?),
            ),
            Plan::Upgrade { from, .. } => {
                pins.remove_staging()?;
                (
                    pins.staging_dir(),
                    Some(OldState::read(&pins.layout_dir(*from), *from)?),
                )
            }
        };
        let dp = Dataplane::load(&LoadOptions {
            sizes: d.sizes,
            pin_dir: Some(maps_dir),
            programs: &[programs::LB, programs::HC],
        })
        .context("loading the dataplane")?;
        let mut daemon = Daemon {
            config_path: config_path.to_path_buf(),
            ids: Ids::new(d.sizes.max_vips, d.sizes.max_backends),
            config: config.clone(),
            dp,
            state: DesiredState::default(),
            metas: BTreeMap::new(),
            down: BTreeSet::new(),
            edits: Vec::new(),
            pins,
            attachment: Attachment::Native,
            ifindex,
            reattachments: 0,
            ring_builds: 0,
            panicking: BTreeSet::new(),
            panics: 0,
            reloads_ok: 0,
            reloads_failed: 0,
            last_reload_error: None,
            probe_path_error: None,
        };
        let adopted = matches!(plan, Plan::Adopt | Plan::Resume);
        if let Some(old) = &old {
            daemon.config = daemon.recover(old, adopted, config);
        }
        daemon.keep_down_of_checked_vips();
        let new =
            DesiredState::build(&daemon.config, &mut daemon.ids).map_err(anyhow::Error::msg)?;
        // Stale entries go first, so the new ones fit in maps sized for the config alone.
        daemon.remove_stale(&new)?;
        // What the adopted maps hold is not known as a DesiredState; every VIP is written as new (an atomic ring
        // switch to what is most likely the same table).
        let d_all = diff(&DesiredState::default(), &new);
        daemon.apply(new, &d_all)?;
        if let Plan::Upgrade { from, .. } = &plan {
            let from_dir = daemon.pins.layout_dir(*from);
            let copied = daemon.carry_flows(&from_dir, *from, FlowCopy::All)?;
            if upgrade::stats_carry_over(*from) {
                upgrade::copy_stats(&from_dir, &mut daemon.dp)?;
            }
            info!(flows = copied, "carried the established flows over");
            daemon
                .pins
                .rename(&daemon.pins.staging_dir(), &daemon.pins.ready_dir())?;
        }
        // Before the swap: a start refused here leaves the interface as it was.
        match probe_path::setup(daemon.dp.classifier(programs::HC)?) {
            Ok(()) => {}
            // Without it a VIP-path probe would leave by the main table, towards whatever serves the VIP: refuse
            // to run such checks rather than run them wrong. A config with direct checks only does not need it.
            Err(e) if daemon.config.uses_vip_path_checks() => {
                return Err(e.context(
                    "VIP-path health checks (health.target = \"vip\", the default) need it",
                ));
            }
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    "no VIP-path probe route; the config checks directly only"
                );
                daemon.probe_path_error = Some(format!("{e:#}"));
            }
        }
        // The swap: from here on the pinned link runs the program of these maps.
        daemon.attachment = attach::attach_pinned(
            daemon.dp.xdp(programs::LB)?,
            programs::LB,
            &d.interface,
            d.xdp_mode,
            daemon.pins.path(),
        )
        .with_context(|| format!("attaching {} to {}", programs::LB, d.interface))?;
        daemon
            .dp
            .add_tx_port(ifindex)
            .context("adding the interface to LB_TX_PORTS")?;
        if matches!(plan, Plan::Upgrade { .. } | Plan::Resume) {
            for layout in daemon.pins.layouts()? {
                // Until the swap the old program kept making flows (after the first copy, or, resuming, since the
                // new maps were filled): the old maps are final now.
                let late = daemon.carry_flows(
                    &daemon.pins.layout_dir(layout),
                    layout,
                    FlowCopy::Missing,
                )?;
                info!(
                    flows = late,
                    layout, "carried the flows made during the swap over"
                );
                daemon.pins.remove_layout(layout)?;
            }
            daemon
                .pins
                .rename(&daemon.pins.ready_dir(), &daemon.pins.maps_dir())?;
            info!("upgrade done: the old maps are unpinned");
        }
        for sysctl in attach::forwarding_disabled(&d.interface) {
            // bpf_fib_lookup refuses to answer for an interface that does not forward: every VIP packet would be
            // dropped as drop_no_route. Changing host sysctls is the operator's call, so say it loudly.
            warn!(
                sysctl,
                "forwarding is disabled: VIP packets will be dropped (drop_no_route) until it is set to 1"
            );
        }
        info!(vips = daemon.state.vips.len(), attachment = %daemon.attachment, "lbd running");
        Ok(daemon)
    }

    /// Copies the established flows of the old maps in `dir` into the new ones (see [`upgrade::copy_flows`]),
    /// those of backends the new state still has.
    fn carry_flows(&mut self, dir: &Path, layout: u32, how: FlowCopy) -> Result<usize> {
        let known: BTreeSet<BackendId> = self
            .state
            .vips
            .values()
            .flat_map(|v| v.backends.values().map(|b| b.id))
            .collect();
        upgrade::copy_flows(dir, layout, &mut self.dp, how, |id| known.contains(&id))
    }

    /// What the pinned maps say carries over: VIP and backend ids (so flow entries and stats keep their meaning),
    /// the ring slots of adopted maps, which backends are down, and drains an operator made at run time (kept as
    /// runtime edits on top of `config`, which is returned with them).
    fn recover(&mut self, old: &OldState, adopted: bool, mut config: Config) -> Config {
        let keys = old.backend_keys();
        self.ids.seed(
            old.vips.iter().map(|(va, m)| (*va, m.vip_id)),
            keys.iter().copied(),
        );
        if adopted {
            self.metas = old.vips.iter().copied().collect();
        }
        for ((va, addr), id) in keys {
            let b = old.backends[&id];
            if !b.active {
                self.down.insert((va, addr));
            }
            if b.drained
                && let Some(be) = config
                    .vips
                    .iter_mut()
                    .find(|v| v.key() == va)
                    .and_then(|v| v.backends.iter_mut().find(|x| x.address == addr))
                && be.weight > 0
            {
                be.weight = 0;
                let edit = format!("drain of {addr} in {va} (kept from the running dataplane)");
                info!(
                    "{edit}: a drain made at run time outlives restarts; a reload from the file drops it"
                );
                self.edits.push(edit);
            }
        }
        info!(
            layout = old.layout,
            vips = old.vips.len(),
            backends = old.backends.len(),
            down = self.down.len(),
            drained = self.edits.len(),
            "adopted the pinned maps' state"
        );
        config
    }

    /// A VIP without a health check has no down backends: `kind = "none"` (or a check removed) clears its set.
    fn keep_down_of_checked_vips(&mut self) {
        let checked: BTreeSet<VipAddr> = self
            .config
            .vips
            .iter()
            .filter(|v| v.health.kind != CheckKind::None)
            .map(|v| v.key())
            .collect();
        self.down.retain(|(va, _)| checked.contains(va));
    }

    /// Removes what the maps hold and `new` does not: VIP entries (services and fragment-only ones) and backend
    /// entries (an adopted map may name backends of a config long gone).
    fn remove_stale(&mut self, new: &DesiredState) -> Result<()> {
        for (k, meta) in self.dp.vips()? {
            let Some(va) = VipAddr::of_key(&k) else {
                continue;
            };
            let wanted = if meta.flags & VIP_F_FRAG_ONLY != 0 {
                new.frag_only.contains_key(&va)
            } else {
                new.vips.contains_key(&va)
            };
            if !wanted {
                info!(vip = %va, "removing a VIP the config no longer has");
                self.dp.remove_vip(&k)?;
                self.metas.remove(&va);
            }
        }
        let wanted: BTreeSet<BackendId> = new
            .vips
            .values()
            .flat_map(|v| v.backends.values().map(|b| b.id))
            .collect();
        for id in 1..self.config.daemon.sizes.max_backends {
            if !wanted.contains(&id) && self.dp.backend(id)?.family != 0 {
                self.dp.clear_backend(id)?;
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
            self.pins.path(),
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

    /// The flow table on a descriptor of its own, to walk without holding the daemon.
    pub fn flow_table(&self) -> Result<FlowTable> {
        self.dp.flow_table()
    }

    /// The ring packets of `vip` use now, from the map.
    pub fn live_ring(&self, vip: &VipAddr) -> Result<Vec<BackendId>> {
        match self.metas.get(vip) {
            Some(meta) => self.dp.read_ring(meta),
            None => Ok(Vec::new()),
        }
    }

    /// The socket mark of a VIP-path probe of `backend` of `vip`: its backend id, and the VIP's forwarding mode.
    /// `None` while the pair has no id (not applied yet).
    pub fn probe_mark(&self, vip: &VipAddr, backend: IpAddr, mode: Mode) -> Option<u32> {
        let id = self.ids.backend(&(*vip, backend))?;
        ProbeMark {
            backend: id,
            l2dsr: mode == Mode::L2dsr,
        }
        .encode()
    }

    /// Each VIP's serving backends as the daemon sees them (up and weighted: the members of its ring), for the
    /// announcement policy.
    pub fn vip_health(&self) -> Vec<VipHealth> {
        self.state
            .vips
            .iter()
            .map(|(k, v)| VipHealth {
                vip: *k,
                serving: v
                    .backends
                    .iter()
                    .filter(|(addr, b)| b.weight > 0 && self.is_up(k, **addr))
                    .count() as u32,
                backends: v.backends.len() as u32,
                min_healthy: v.config.min_healthy,
            })
            .collect()
    }

    pub fn is_up(&self, vip: &VipAddr, backend: IpAddr) -> bool {
        !self.down.contains(&(*vip, backend))
    }

    /// Re-reads the config file and applies the difference. On any error the running state is kept. The file is
    /// the source of truth: runtime edits made since it was last read are dropped, and named in the log.
    pub fn reload(&mut self) -> Result<Diff> {
        let res = Config::load(&self.config_path)
            .map_err(anyhow::Error::from)
            .and_then(|c| self.apply_config(c));
        match &res {
            Ok(d) => {
                self.reloads_ok += 1;
                self.last_reload_error = None;
                let dropped = std::mem::take(&mut self.edits);
                if !dropped.is_empty() {
                    warn!(edits = %dropped.join("; "), "the reload dropped these runtime edits (the file is the source of truth)");
                }
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
        if let Some(why) = &self.probe_path_error
            && config.uses_vip_path_checks()
        {
            // Marked probes without the rule would leave by the main table, towards whatever serves the VIP.
            bail!(
                "health.target = \"vip\" (the default) needs lbd's probe route, which could not be set up at start \
                 ({why}): use target = \"direct\", or fix that and restart lbd"
            );
        }
        if !fixed.is_empty() {
            bail!(
                "{} cannot change while running (restart lbd: it carries the state into maps of the new sizes, without \
                 --detach): {}",
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
        let d = diff(&self.state, &new);
        let before = Snapshot {
            config: std::mem::replace(&mut self.config, config),
            ids: std::mem::replace(&mut self.ids, ids),
            state: self.state.clone(),
            down: self.down.clone(),
        };
        self.down.retain(|k| {
            new.vips
                .get(&k.0)
                .is_some_and(|v| v.backends.contains_key(&k.1))
        });
        self.keep_down_of_checked_vips();
        if let Err(e) = self.apply(new, &d) {
            let restored = self.restore(before);
            return Err(match restored {
                Ok(()) => e.context("the change failed part-way; the maps and lbd's view are as they were before it"),
                Err(r) => e.context(format!(
                    "the change failed part-way, and writing the state before it back failed too ({r:#}): the maps \
                     may mix both; a reload retries"
                )),
            });
        }
        Ok(d)
    }

    /// Writes `before` back after a failed apply: the view restored, every entry `before` does not have removed, and
    /// the change undone VIP by VIP (the diff from what was being applied back to `before`). Writes and removals
    /// are idempotent, so this undoes any prefix of the change; a VIP the change never reached is left as it is,
    /// one it may have reached is written again with its old ring.
    fn restore(&mut self, before: Snapshot) -> Result<()> {
        let partial = std::mem::take(&mut self.state);
        self.config = before.config;
        self.ids = before.ids;
        self.down = before.down;
        let state = before.state;
        self.remove_stale(&state)?;
        let undo = diff(&partial, &state);
        self.apply(state, &undo)
    }

    /// Records a runtime edit (an lbctl change on top of the file), so a reload can name it when it drops it.
    pub fn record_edit(&mut self, what: String) {
        self.edits.push(what);
    }

    /// The `LB_BACKENDS` entry of backend `addr` of `vip` as the state and health say now: owned by the VIP's id
    /// (so flow entries of another service never use it), active unless down, drained when its weight is 0.
    fn backend_entry(&self, vip: &VipAddr, addr: IpAddr) -> Backend {
        let v = &self.state.vips[vip];
        let mut flags = 0;
        let up = self.is_up(vip, addr);
        // In panic mode a failing backend is in the ring, so its flows must stick to it like any other's.
        if up || self.panicking.contains(vip) {
            flags |= BACKEND_F_ACTIVE;
        }
        if !up {
            flags |= BACKEND_F_UNHEALTHY;
        }
        if v.backends.get(&addr).is_some_and(|b| b.weight == 0) {
            flags |= BACKEND_F_DRAINED;
        }
        Backend::new(addr, v.id, flags)
    }

    fn apply(&mut self, new: DesiredState, d: &Diff) -> Result<()> {
        self.dp.set_config(&global_config(&self.config))?;
        self.state = new;
        let rebuilt: Vec<VipAddr> = d
            .vips_added
            .iter()
            .chain(
                d.vips_changed
                    .iter()
                    .filter(|c| c.needs_ring())
                    .map(|c| &c.key),
            )
            .copied()
            .collect();
        let mut rings = self.build_rings(&rebuilt);
        for (k, _, backend_ids) in &d.vips_removed {
            self.dp
                .remove_vip(&k.key())
                .with_context(|| format!("removing VIP {k}"))?;
            self.metas.remove(k);
            self.panicking.remove(k);
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
            self.install_built(k, rings.remove(k).expect("built above"))?;
            info!(vip = %k, id = v.id, backends = v.backends.len(), "VIP added");
        }
        for c in &d.vips_changed {
            if !c.needs_ring() {
                continue;
            }
            // New backends, and reweighted ones (a drain is recorded in the entry).
            for (addr, id) in c.backends_added.iter().chain(&c.backends_reweighted) {
                self.dp
                    .set_backend(*id, &self.backend_entry(&c.key, *addr))?;
            }
            self.install_built(&c.key, rings.remove(&c.key).expect("built above"))?;
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

    /// The rings of `keys` for the current health. A Maglev build of a 65,537-entry table takes a few milliseconds,
    /// and a backend that serves a hundred VIPs needs a hundred of them when it fails; VIPs with the same backends
    /// and weights share one build (their tables differ only in ids), and the distinct builds run on every CPU.
    fn build_rings(&self, keys: &[VipAddr]) -> BTreeMap<VipAddr, Ring> {
        let inputs: Vec<(VipAddr, RingInput)> = keys
            .iter()
            .map(|k| {
                let input = self.state.vips[k].ring_input(|a| !self.down.contains(&(*k, a)));
                (*k, input)
            })
            .collect();
        let mut distinct: Vec<&maglev::Turns> = Vec::new();
        let mut which: HashMap<&maglev::Turns, usize> = HashMap::new();
        let of: Vec<usize> = inputs
            .iter()
            .map(|(_, i)| {
                *which.entry(&i.turns).or_insert_with(|| {
                    distinct.push(&i.turns);
                    distinct.len() - 1
                })
            })
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let built: Vec<Vec<u32>> = if distinct.len() < 2 || threads < 2 {
            distinct.iter().map(|t| t.build()).collect()
        } else {
            std::thread::scope(|s| {
                let workers: Vec<_> = distinct
                    .chunks(distinct.len().div_ceil(threads))
                    .map(|part| s.spawn(move || part.iter().map(|t| t.build()).collect::<Vec<_>>()))
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().expect("a ring build panicked"))
                    .collect()
            })
        };
        inputs
            .iter()
            .zip(of)
            .map(|((k, input), b)| {
                let ring = Ring {
                    table: maglev::resolve(&built[b], &input.ids),
                    panic: input.panic,
                };
                (*k, ring)
            })
            .collect()
    }

    /// Rewrites the entries of `k`'s failing backends (active or not depends on panic mode).
    fn write_failing_entries(&mut self, k: &VipAddr) -> Result<()> {
        let failing: Vec<(IpAddr, BackendId)> = self.state.vips[k]
            .backends
            .iter()
            .filter(|(addr, _)| !self.is_up(k, **addr))
            .map(|(addr, b)| (*addr, b.id))
            .collect();
        for (addr, id) in failing {
            self.dp.set_backend(id, &self.backend_entry(k, addr))?;
        }
        Ok(())
    }

    /// VIPs whose rings ignore health now (below their panic threshold).
    pub fn panicking(&self) -> &BTreeSet<VipAddr> {
        &self.panicking
    }

    /// Switches `k` to `ring` (built for the current health by [`Daemon::build_rings`]).
    fn install_built(&mut self, k: &VipAddr, ring: Ring) -> Result<()> {
        let leaving = !ring.panic && self.panicking.contains(k);
        if ring.panic && self.panicking.insert(*k) {
            self.panics += 1;
            warn!(vip = %k, threshold = self.state.vips[k].config.panic_threshold,
                "panic mode: less than the threshold's percent of the weight is healthy, so every backend that is \
                 not drained is in the ring");
            // Active before the ring sends flows there, as for a backend coming up.
            self.write_failing_entries(k)?;
        }
        let v: &DesiredVip = &self.state.vips[k];
        let meta = VipMeta {
            vip_id: v.id,
            flags: v.flags,
            ring_slot: self.metas.get(k).map_or(2 * v.id, |m| m.ring_slot),
            ring_size: v.ring_size,
        };
        let new_meta = self
            .dp
            .install_ring(&k.key(), meta, &ring.table)
            .with_context(|| format!("installing the ring of {k}"))?;
        self.metas.insert(*k, new_meta);
        self.ring_builds += 1;
        if leaving {
            self.panicking.remove(k);
            // Only after the switch: the failing backends' flows re-pick from the healthy ring.
            self.write_failing_entries(k)?;
            info!(vip = %k, "panic mode over: the ring holds the healthy backends again");
        }
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

    /// Health transitions, applied together: a down backend leaves the ring and loses `BACKEND_F_ACTIVE` (its flows
    /// re-pick); an up one becomes active and returns to the ring. Each VIP they touch is rebuilt once.
    pub fn set_health(&mut self, changes: &[(HealthKey, bool)]) -> Result<()> {
        let mut coming_up = Vec::new();
        let mut going_down = Vec::new();
        for (key, up) in changes {
            let (vip, backend) = (&key.vip, key.backend);
            let Some(id) = self
                .state
                .vips
                .get(vip)
                .and_then(|v| v.backends.get(&backend))
                .map(|b| b.id)
            else {
                debug!(%vip, %backend, "health event for a backend no longer configured");
                continue;
            };
            if self.is_up(vip, backend) == *up {
                continue;
            }
            if *up {
                self.down.remove(&(*vip, backend));
                coming_up.push((*vip, backend, id));
            } else {
                self.down.insert((*vip, backend));
                going_down.push((*vip, backend, id));
            }
        }
        // Active first, so a flow a new ring sends there is not bounced back to the ring.
        for (vip, backend, id) in &coming_up {
            self.dp
                .set_backend(*id, &self.backend_entry(vip, *backend))?;
        }
        let handed_over = self.hand_over(&going_down)?;
        // Rings first: a flow re-picking after the flag clears must not find the backend in a ring.
        let (now, after_build): (Vec<_>, Vec<_>) = going_down
            .iter()
            .partition(|(vip, _, _)| handed_over.contains(vip));
        for &(vip, backend, id) in now {
            self.dp
                .set_backend(id, &self.backend_entry(&vip, backend))?;
            info!(%vip, %backend, up = false, "backend health changed; its ring entries handed to the next ones");
        }
        let vips: Vec<VipAddr> = coming_up
            .iter()
            .chain(&going_down)
            .map(|(vip, _, _)| *vip)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for (vip, ring) in self.build_rings(&vips) {
            self.install_built(&vip, ring)?;
        }
        for &(vip, backend, id) in after_build {
            self.dp
                .set_backend(id, &self.backend_entry(&vip, backend))?;
        }
        for (vip, backend, _) in &coming_up {
            info!(%vip, %backend, up = true, "backend health changed; ring rebuilt");
        }
        for (vip, backend, _) in &going_down {
            info!(%vip, %backend, up = false, "backend health changed; ring rebuilt");
        }
        Ok(())
    }

    /// Takes the failed backends out of their VIPs' active rings without a Maglev build: each of their entries goes
    /// to its heir, the backend of the next entry (`maglev::heir`). A build takes milliseconds per VIP, so a backend
    /// that serves a hundred VIPs would receive new flows for a few hundred of them; the hand-over takes one pass
    /// over each ring, and the Maglev tables replace these when built. VIPs whose rings ignore health (panic mode,
    /// before or after) wait for the build. Returns the VIPs handed over.
    fn hand_over(
        &mut self,
        going_down: &[(VipAddr, IpAddr, BackendId)],
    ) -> Result<BTreeSet<VipAddr>> {
        let mut gone: BTreeMap<VipAddr, Vec<BackendId>> = BTreeMap::new();
        for (vip, _, id) in going_down {
            gone.entry(*vip).or_default().push(*id);
        }
        let mut done = BTreeSet::new();
        for (vip, ids) in gone {
            if self.panicking.contains(&vip)
                || self.state.vips[&vip].panics(|a| self.is_up(&vip, a))
            {
                continue;
            }
            let Some(meta) = self.metas.get(&vip) else {
                continue;
            };
            let handed = self
                .dp
                .hand_over(meta, &ids)
                .with_context(|| format!("handing over ring entries of {vip}"))?;
            if handed.is_some() {
                done.insert(vip);
            }
        }
        Ok(done)
    }

    /// Removes the program's link and lbd's map pins (the pin directory too when nothing else is left in it): the
    /// program goes when this process exits and closes the last references.
    pub fn detach(&self) -> Result<()> {
        detach_pins(&self.pins, &self.config.daemon.interface)
    }
}

/// What the daemon's state was before a change, to write back if the change fails part-way.
struct Snapshot {
    config: Config,
    ids: Ids,
    state: DesiredState,
    down: BTreeSet<BackendKey>,
}

/// `lbd --detach`: works without a running daemon (and without loading anything); refused while one runs (it
/// holds the pin directory: `lbctl shutdown --detach` is the way then). The lock is taken before anything is
/// withdrawn: a refused detach must not withdraw the announcements of the lbd that runs (its next sync would put
/// them back, a flap every router sees). Withdrawn before detaching: the routers stop sending before the program
/// stops forwarding.
pub fn detach_all(interface: &str, pin_dir: &Path, announce: &AnnounceConfig) -> Result<()> {
    let pins = PinDir::open(pin_dir)?;
    announce::withdraw(announce)?;
    detach_pins(&pins, interface)
}

fn detach_pins(pins: &PinDir, interface: &str) -> Result<()> {
    if !attach::detach_pinned(programs::LB, interface, pins.path())? {
        warn!(interface, pin_dir = %pins.path().display(), "no pinned link found; nothing was attached by lbd");
    }
    pins.remove_all_maps()?;
    if let Err(e) = probe_path::remove() {
        // A running lbd gave CAP_NET_ADMIN up (unless it announces): the interface and its rules stay, harmless without
        // lb_hc (a marked packet is dropped there), until `lbd --detach` (run as root) removes them.
        warn!(
            error = format!("{e:#}"),
            "the VIP-path probe interface and rules are left in place; `lbd --detach` removes them"
        );
    }
    Ok(())
}
