//! Desired state: what the maps should hold for a config, with ids that survive reloads, and the diff between two
//! states so that a reload touches only the VIPs and backends that changed.
//!
//! Ids: a VIP keeps its id (`0..max_vips`, which also names its stats entry and ring slots) as long as its
//! `(address, port, protocol)` stays in the config. A backend id (`1..max_backends`) belongs to a (VIP, backend
//! address) pair, not to an address: health is checked per VIP (a backend may fail port 443 and pass port 80), and
//! `BACKEND_F_ACTIVE` cleared for one VIP must not break the flows of another. Freed backend ids are reused last
//! (allocation continues after the most recent one) because flow-table entries may still name a removed id for a
//! while; by the time the id comes round again those entries have long aged out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use lb_common::{BackendId, VIP_F_FRAG_HASH3, VIP_F_FRAG_ONLY, VIP_F_L2DSR};
use serde::Serialize;

use crate::config::{Config, FragmentPolicy, Mode, VipAddr, VipConfig};
use crate::maglev;

/// A (VIP, backend address) pair: what a backend id stands for.
pub type BackendKey = (VipAddr, IpAddr);

#[derive(Debug, Clone, Default)]
pub struct Ids {
    vips: BTreeMap<VipAddr, u32>,
    backends: BTreeMap<BackendKey, BackendId>,
    max_vips: u32,
    max_backends: u32,
    last_backend: BackendId,
}

impl Ids {
    pub fn new(max_vips: u32, max_backends: u32) -> Self {
        Ids {
            max_vips,
            max_backends,
            ..Default::default()
        }
    }

    /// Starts from ids already in use (read back from adopted maps), so a restarted daemon keeps them.
    pub fn seed(
        &mut self,
        vips: impl IntoIterator<Item = (VipAddr, u32)>,
        backends: impl IntoIterator<Item = (BackendKey, BackendId)>,
    ) {
        for (k, id) in vips {
            if id < self.max_vips && !self.vips.values().any(|&v| v == id) {
                self.vips.insert(k, id);
            }
        }
        for (k, id) in backends {
            if id != 0 && id < self.max_backends && !self.backends.values().any(|&v| v == id) {
                self.backends.insert(k, id);
                self.last_backend = self.last_backend.max(id);
            }
        }
    }

    pub fn vip(&self, k: &VipAddr) -> Option<u32> {
        self.vips.get(k).copied()
    }

    pub fn backend(&self, k: &BackendKey) -> Option<BackendId> {
        self.backends.get(k).copied()
    }

    /// Keeps the ids of keys still wanted, frees the rest, allocates for new keys.
    fn assign(
        &mut self,
        vips: &BTreeSet<VipAddr>,
        backends: &BTreeSet<BackendKey>,
    ) -> Result<(), String> {
        self.vips.retain(|k, _| vips.contains(k));
        self.backends.retain(|k, _| backends.contains(k));
        let used: BTreeSet<u32> = self.vips.values().copied().collect();
        let mut free = (0..self.max_vips).filter(|id| !used.contains(id));
        for k in vips {
            if !self.vips.contains_key(k) {
                let id = free.next().ok_or_else(|| {
                    format!("no free VIP id for {k} (max_vips {})", self.max_vips)
                })?;
                self.vips.insert(*k, id);
            }
        }
        let used: BTreeSet<BackendId> = self.backends.values().copied().collect();
        let n = self.max_backends.saturating_sub(1);
        for k in backends {
            if self.backends.contains_key(k) {
                continue;
            }
            let id = (1..=n)
                .map(|i| (self.last_backend + i - 1) % n + 1)
                .find(|id| !used.contains(id) && !self.backends.values().any(|v| v == id))
                .ok_or_else(|| {
                    format!(
                        "no free backend id for {} of {} (max_backends {})",
                        k.1, k.0, self.max_backends
                    )
                })?;
            self.backends.insert(*k, id);
            self.last_backend = id;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredBackend {
    pub id: BackendId,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredVip {
    pub id: u32,
    /// `VIP_F_*` of the VIP's own entry.
    pub flags: u32,
    pub ring_size: u32,
    pub config: VipConfig,
    pub backends: BTreeMap<IpAddr, DesiredBackend>,
}

/// A VIP's Maglev table and whether health was ignored to build it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    pub table: Vec<BackendId>,
    /// Fewer than `panic_threshold` percent of the weight was healthy: every backend not drained is in the table.
    pub panic: bool,
}

impl DesiredVip {
    /// The Maglev table for the backends `is_up` accepts (a down backend, like a drained one, gets no entry), unless
    /// their share of the weight is below the VIP's panic threshold: then for every backend that is not drained.
    pub fn ring(&self, is_up: impl Fn(IpAddr) -> bool) -> Ring {
        let input = self.ring_input(is_up);
        Ring {
            table: maglev::resolve(&input.turns.build(), &input.ids),
            panic: input.panic,
        }
    }

    /// Whether less than the panic threshold's share of the weight is healthy (the ring then ignores health).
    pub fn panics(&self, is_up: impl Fn(IpAddr) -> bool) -> bool {
        let total: u64 = self.backends.values().map(|b| b.weight as u64).sum();
        let healthy: u64 = self
            .backends
            .iter()
            .filter(|(addr, _)| is_up(**addr))
            .map(|(_, b)| b.weight as u64)
            .sum();
        total > 0 && healthy * 100 < total * self.config.panic_threshold as u64
    }

    /// What [`DesiredVip::ring`] builds, before it is built (VIPs with equal turns share a build).
    pub fn ring_input(&self, is_up: impl Fn(IpAddr) -> bool) -> RingInput {
        let panic = self.panics(&is_up);
        let names: Vec<(BackendId, u32, String)> = self
            .backends
            .iter()
            .map(|(addr, b)| {
                (
                    b.id,
                    if panic || is_up(*addr) { b.weight } else { 0 },
                    addr.to_string(),
                )
            })
            .collect();
        let input: Vec<(BackendId, u32, &str)> = names
            .iter()
            .map(|(id, w, n)| (*id, *w, n.as_str()))
            .collect();
        let (turns, ids) = maglev::Turns::of(&input, self.ring_size);
        RingInput { turns, ids, panic }
    }
}

/// A VIP's ring before the Maglev build: the turns (shared by VIPs with the same backends and weights), this VIP's
/// ids in turn order, and whether health is ignored.
#[derive(Debug, Clone)]
pub struct RingInput {
    pub turns: maglev::Turns,
    pub ids: Vec<BackendId>,
    pub panic: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DesiredState {
    pub vips: BTreeMap<VipAddr, DesiredVip>,
    /// Fragment-policy entries `(address, port 0, protocol)` with `VIP_F_FRAG_ONLY`, each mirroring the meta of the
    /// port-specific VIP named here (the first in config order), whose ring its hashed fragments use.
    pub frag_only: BTreeMap<VipAddr, VipAddr>,
}

impl DesiredState {
    pub fn build(config: &Config, ids: &mut Ids) -> Result<DesiredState, String> {
        let vip_keys: BTreeSet<VipAddr> = config.vips.iter().map(VipConfig::key).collect();
        let backend_keys: BTreeSet<BackendKey> = config
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (v.key(), b.address)))
            .collect();
        ids.assign(&vip_keys, &backend_keys)?;

        let mut state = DesiredState::default();
        for v in &config.vips {
            let key = v.key();
            let mut flags = 0;
            if v.mode == Mode::L2dsr {
                flags |= VIP_F_L2DSR;
            }
            if v.fragments == FragmentPolicy::Hash3 {
                flags |= VIP_F_FRAG_HASH3;
            }
            let backends = v
                .backends
                .iter()
                .map(|b| {
                    let id = ids.backend(&(key, b.address)).expect("assigned above");
                    (
                        b.address,
                        DesiredBackend {
                            id,
                            weight: b.weight,
                        },
                    )
                })
                .collect();
            let id = ids.vip(&key).expect("assigned above");
            state.vips.insert(
                key,
                DesiredVip {
                    id,
                    flags,
                    ring_size: v.ring_size,
                    config: v.clone(),
                    backends,
                },
            );
        }
        for v in &config.vips {
            let wild = VipAddr { port: 0, ..v.key() };
            if v.port != 0 && !state.vips.contains_key(&wild) {
                state.frag_only.entry(wild).or_insert(v.key());
            }
        }
        Ok(state)
    }

    /// The `VipMeta::flags` of a fragment-only entry.
    pub fn frag_only_flags(&self, owner: &VipAddr) -> u32 {
        self.vips.get(owner).map_or(0, |v| v.flags) | VIP_F_FRAG_ONLY
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VipChange {
    pub key: VipAddr,
    /// Flags or ring size changed: the VIP entry itself must be rewritten (with a new ring).
    pub meta: bool,
    pub backends_added: Vec<(IpAddr, BackendId)>,
    pub backends_removed: Vec<(IpAddr, BackendId)>,
    /// Weight changed (the ring must be rebuilt).
    pub backends_reweighted: Vec<(IpAddr, BackendId)>,
    /// The health check spec changed (restart that VIP's checkers; no map change by itself).
    pub health: bool,
}

impl VipChange {
    fn none(key: VipAddr) -> Self {
        VipChange {
            key,
            meta: false,
            backends_added: Vec::new(),
            backends_removed: Vec::new(),
            backends_reweighted: Vec::new(),
            health: false,
        }
    }

    pub fn needs_ring(&self) -> bool {
        self.meta
            || !self.backends_added.is_empty()
            || !self.backends_removed.is_empty()
            || !self.backends_reweighted.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diff {
    pub vips_added: Vec<VipAddr>,
    /// With the ids they held (stats entries and backend entries to clear).
    pub vips_removed: Vec<(VipAddr, u32, Vec<BackendId>)>,
    pub vips_changed: Vec<VipChange>,
    pub frag_only_set: Vec<VipAddr>,
    pub frag_only_removed: Vec<VipAddr>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} VIP(s) added, {} removed, {} changed",
            self.vips_added.len(),
            self.vips_removed.len(),
            self.vips_changed.len()
        )
    }
}

pub fn diff(old: &DesiredState, new: &DesiredState) -> Diff {
    let mut d = Diff::default();
    for (k, v) in &old.vips {
        if !new.vips.contains_key(k) {
            d.vips_removed
                .push((*k, v.id, v.backends.values().map(|b| b.id).collect()));
        }
    }
    for (k, nv) in &new.vips {
        let Some(ov) = old.vips.get(k) else {
            d.vips_added.push(*k);
            continue;
        };
        let mut c = VipChange {
            key: *k,
            meta: ov.flags != nv.flags || ov.ring_size != nv.ring_size || ov.id != nv.id,
            health: ov.config.health != nv.config.health,
            ..VipChange::none(*k)
        };
        for (addr, ob) in &ov.backends {
            match nv.backends.get(addr) {
                None => c.backends_removed.push((*addr, ob.id)),
                Some(nb) if nb.id != ob.id => {
                    c.backends_removed.push((*addr, ob.id));
                    c.backends_added.push((*addr, nb.id));
                }
                Some(nb) if nb.weight != ob.weight => c.backends_reweighted.push((*addr, nb.id)),
                Some(_) => {}
            }
        }
        for (addr, nb) in &nv.backends {
            if !ov.backends.contains_key(addr) {
                c.backends_added.push((*addr, nb.id));
            }
        }
        if c != VipChange::none(*k) {
            d.vips_changed.push(c);
        }
    }
    let changed_meta: BTreeSet<VipAddr> = d
        .vips_changed
        .iter()
        .filter(|c| c.meta)
        .map(|c| c.key)
        .collect();
    for (k, owner) in &new.frag_only {
        if old.frag_only.get(k) != Some(owner) || changed_meta.contains(owner) {
            d.frag_only_set.push(*k);
        }
    }
    for k in old.frag_only.keys() {
        // A wildcard VIP that replaced a fragment-only entry overwrites it; removing it would delete the new VIP.
        if !new.frag_only.contains_key(k) && !new.vips.contains_key(k) {
            d.frag_only_removed.push(*k);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(vips: &str) -> Config {
        let text = format!(
            "[daemon]\ninterface = \"lb0\"\nencap_src_v4 = \"198.18.0.1\"\nmax_vips = 4\nmax_backends = 8\n\
             max_ring_size = 251\n{vips}"
        );
        Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn vip(addr: &str, port: u16, backends: &[(&str, u32)]) -> String {
        let bs: Vec<String> = backends
            .iter()
            .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
            .collect();
        // Health checks are the checker's business; these tests are about ids and rings.
        format!(
            "[[vip]]\naddress = \"{addr}\"\nport = {port}\nprotocol = \"tcp\"\nring_size = 13\nbackends = [{}]\n\
             health = {{ kind = \"none\" }}\n",
            bs.join(", ")
        )
    }

    fn key(addr: &str, port: u16) -> VipAddr {
        VipAddr {
            address: addr.parse().unwrap(),
            port,
            protocol: 6,
        }
    }

    #[test]
    fn ids_are_stable_across_reloads() {
        let mut ids = Ids::new(4, 8);
        let a = vip(
            "198.18.0.100",
            80,
            &[("198.18.1.11", 1), ("198.18.1.12", 1)],
        );
        let b = vip("198.18.0.101", 80, &[("198.18.1.11", 1)]);
        let s1 = DesiredState::build(&config(&format!("{a}{b}")), &mut ids).unwrap();
        assert_eq!(s1.vips[&key("198.18.0.100", 80)].id, 0);
        assert_eq!(s1.vips[&key("198.18.0.101", 80)].id, 1);
        let b11 = s1.vips[&key("198.18.0.101", 80)].backends[&"198.18.1.11".parse().unwrap()].id;
        assert_ne!(
            b11,
            s1.vips[&key("198.18.0.100", 80)].backends[&"198.18.1.11".parse().unwrap()].id
        );

        // Drop the first VIP, add another: the second keeps its ids; the new VIP reuses VIP id 0, but gets a backend
        // id not just freed.
        let c = vip("198.18.0.102", 80, &[("198.18.1.13", 1)]);
        let s2 = DesiredState::build(&config(&format!("{b}{c}")), &mut ids).unwrap();
        assert_eq!(s2.vips[&key("198.18.0.101", 80)].id, 1);
        assert_eq!(
            s2.vips[&key("198.18.0.101", 80)].backends[&"198.18.1.11".parse().unwrap()].id,
            b11
        );
        assert_eq!(s2.vips[&key("198.18.0.102", 80)].id, 0);
        let new_id = s2.vips[&key("198.18.0.102", 80)].backends[&"198.18.1.13".parse().unwrap()].id;
        assert_eq!(
            new_id, 4,
            "allocation continues after the last id (1, 2, 3 were used)"
        );
    }

    #[test]
    fn seeded_ids_are_kept() {
        let mut ids = Ids::new(4, 8);
        ids.seed(
            [(key("198.18.0.100", 80), 3)],
            [((key("198.18.0.100", 80), "198.18.1.11".parse().unwrap()), 6)],
        );
        let s = DesiredState::build(
            &config(&vip(
                "198.18.0.100",
                80,
                &[("198.18.1.11", 1), ("198.18.1.12", 1)],
            )),
            &mut ids,
        )
        .unwrap();
        let v = &s.vips[&key("198.18.0.100", 80)];
        assert_eq!(v.id, 3);
        assert_eq!(v.backends[&"198.18.1.11".parse().unwrap()].id, 6);
        assert_eq!(v.backends[&"198.18.1.12".parse().unwrap()].id, 7);
    }

    #[test]
    fn diff_names_only_what_changed() {
        let mut ids = Ids::new(4, 8);
        let a = vip(
            "198.18.0.100",
            80,
            &[("198.18.1.11", 1), ("198.18.1.12", 1)],
        );
        let b = vip("198.18.0.101", 80, &[("198.18.1.11", 1)]);
        let s1 = DesiredState::build(&config(&format!("{a}{b}")), &mut ids).unwrap();
        assert!(diff(&s1, &s1).is_empty());

        let a2 = vip(
            "198.18.0.100",
            80,
            &[("198.18.1.11", 5), ("198.18.1.13", 1)],
        );
        let c = vip("198.18.0.102", 0, &[]);
        let s2 = DesiredState::build(&config(&format!("{a2}{c}")), &mut ids).unwrap();
        let d = diff(&s1, &s2);
        assert_eq!(d.vips_added, vec![key("198.18.0.102", 0)]);
        assert_eq!(d.vips_removed.len(), 1);
        assert_eq!(d.vips_removed[0].0, key("198.18.0.101", 80));
        assert_eq!(d.vips_changed.len(), 1, "{d:#?}");
        let ch = &d.vips_changed[0];
        assert!(!ch.meta && ch.needs_ring());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            ch.backends_removed.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![ip("198.18.1.12")]
        );
        assert_eq!(
            ch.backends_added.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![ip("198.18.1.13")]
        );
        assert_eq!(
            ch.backends_reweighted
                .iter()
                .map(|b| b.0)
                .collect::<Vec<_>>(),
            vec![ip("198.18.1.11")]
        );
    }

    #[test]
    fn fragment_only_entries() {
        let mut ids = Ids::new(4, 8);
        let a = vip("198.18.0.100", 80, &[("198.18.1.11", 1)]);
        let s1 = DesiredState::build(&config(&a), &mut ids).unwrap();
        assert_eq!(
            s1.frag_only.get(&key("198.18.0.100", 0)),
            Some(&key("198.18.0.100", 80))
        );
        assert_eq!(
            s1.frag_only_flags(&key("198.18.0.100", 80)),
            VIP_F_FRAG_ONLY
        );

        // A wildcard VIP on the same address takes the place of the fragment-only entry.
        let w = vip("198.18.0.100", 0, &[("198.18.1.12", 1)]);
        let s2 = DesiredState::build(&config(&format!("{a}{w}")), &mut ids).unwrap();
        assert!(s2.frag_only.is_empty());
        let d = diff(&s1, &s2);
        assert_eq!(d.vips_added, vec![key("198.18.0.100", 0)]);
        assert!(
            d.frag_only_removed.is_empty(),
            "must not delete the wildcard VIP: {d:#?}"
        );
    }

    #[test]
    fn down_and_drained_backends_leave_the_ring() {
        let mut ids = Ids::new(4, 8);
        let a = vip(
            "198.18.0.100",
            80,
            &[("198.18.1.11", 1), ("198.18.1.12", 0), ("198.18.1.13", 1)],
        );
        let s = DesiredState::build(&config(&a), &mut ids).unwrap();
        let v = &s.vips[&key("198.18.0.100", 80)];
        let id = |a: &str| v.backends[&a.parse().unwrap()].id;
        let all = v.ring(|_| true).table;
        assert!(all.contains(&id("198.18.1.11")) && all.contains(&id("198.18.1.13")));
        assert!(!all.contains(&id("198.18.1.12")), "drained backend in ring");
        let down: IpAddr = "198.18.1.13".parse().unwrap();
        let ring = v.ring(|a| a != down);
        assert!(
            !ring.panic,
            "half the weight is healthy, above the default threshold"
        );
        assert!(
            ring.table.iter().all(|&b| b == id("198.18.1.11")),
            "{ring:?}"
        );
    }

    #[test]
    fn below_the_panic_threshold_every_backend_not_drained_stays_in_the_ring() {
        // Four backends of weight 100 and a drained one: 25% healthy is one of the four.
        let backends = [
            ("198.18.1.11", 100),
            ("198.18.1.12", 100),
            ("198.18.1.13", 100),
            ("198.18.1.14", 100),
            ("198.18.1.15", 0),
        ];
        let addr = |i: usize| -> IpAddr { backends[i].0.parse().unwrap() };
        let members = |threshold: u32, up: &[usize]| {
            let a =
                vip("198.18.0.100", 80, &backends) + &format!("panic_threshold = {threshold}\n");
            let s = DesiredState::build(&config(&a), &mut Ids::new(4, 8)).unwrap();
            let v = &s.vips[&key("198.18.0.100", 80)];
            let ring = v.ring(|b| up.iter().any(|&i| addr(i) == b));
            let set: BTreeSet<usize> = (0..backends.len())
                .filter(|&i| ring.table.contains(&v.backends[&addr(i)].id))
                .collect();
            (ring.panic, set)
        };
        let set = |v: &[usize]| v.iter().copied().collect::<BTreeSet<_>>();
        // At the threshold: no panic, the healthy one takes everything.
        assert_eq!(members(25, &[2]), (false, set(&[2])));
        // Below it (nothing healthy): every backend but the drained one.
        assert_eq!(members(25, &[]), (true, set(&[0, 1, 2, 3])));
        assert_eq!(members(50, &[2]), (true, set(&[0, 1, 2, 3])));
        assert_eq!(members(50, &[1, 2]), (false, set(&[1, 2])));
        // 0 turns it off: nothing healthy, nothing in the ring.
        assert_eq!(members(0, &[]), (false, set(&[])));
        assert_eq!(members(100, &[0, 1, 2]), (true, set(&[0, 1, 2, 3])));
    }
}
