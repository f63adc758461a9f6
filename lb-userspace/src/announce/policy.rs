//! Which VIP addresses deserve to be announced, and when: the decision alone, on explicit time, so that it is
//! tested without a kernel or a clock.
//!
//! An address deserves it while this balancer is not drained and at least one VIP on it has `min_healthy` serving
//! backends (up and weighted: what its ring holds). Withdrawal is immediate: a balancer that cannot serve an address
//! must stop attracting its traffic at once, the other balancers serve it. Announcing waits for the hold-down: an
//! address is announced once it has deserved it without a break for `hold_down`, so a flapping backend cannot make
//! the address flap in BGP, and a starting balancer attracts traffic only after its health checks had time to
//! speak. Addresses found announced (by a previous lbd) stay announced while they deserve it: a restart does not
//! flap.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::names::named_enum;
use crate::service::VipAddr;

/// What one VIP says about its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipHealth {
    pub vip: VipAddr,
    /// Backends up and weighted: the members of its ring.
    pub serving: u32,
    pub backends: u32,
    pub min_healthy: u32,
}

impl VipHealth {
    pub fn deserves(&self) -> bool {
        self.serving >= self.min_healthy
    }
}

named_enum! {
    /// Where an address stands.
    pub enum AddressState {
        /// Its route is in the table: BGP announces it.
        Announced = "announced",
        /// It deserves announcing and waits out the hold-down.
        HoldDown = "hold-down",
        /// No VIP on it has `min_healthy` serving backends.
        Unhealthy = "unhealthy",
        /// `lbctl announce drain` is in force.
        Drained = "drained",
    }
}

/// One address's standing after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub address: IpAddr,
    pub state: AddressState,
    /// How long the hold-down still runs (`HoldDown` only).
    pub announce_in: Option<Duration>,
    /// Times it was announced or withdrawn by this process.
    pub changes: u64,
    pub vips: Vec<VipHealth>,
}

#[derive(Debug, Clone, Default)]
struct Track {
    announced: bool,
    /// Since when it deserves announcing without a break.
    deserving_since: Option<Instant>,
    changes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    hold_down: Duration,
    tracks: BTreeMap<IpAddr, Track>,
}

impl Policy {
    /// Starts from the addresses announced now (read back from the kernel).
    pub fn new(hold_down: Duration, announced: &BTreeSet<IpAddr>) -> Policy {
        let tracks = announced
            .iter()
            .map(|ip| {
                (
                    *ip,
                    Track {
                        announced: true,
                        ..Track::default()
                    },
                )
            })
            .collect();
        Policy { hold_down, tracks }
    }

    pub fn set_hold_down(&mut self, hold_down: Duration) {
        self.hold_down = hold_down;
    }

    /// The addresses to announce now.
    pub fn announced(&self) -> BTreeSet<IpAddr> {
        self.tracks
            .iter()
            .filter(|(_, t)| t.announced)
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// Advances to `now` with the VIPs' health as it is; returns each configured address's standing. An address no
    /// VIP has any more is withdrawn and forgotten.
    pub fn step(&mut self, now: Instant, drained: bool, vips: &[VipHealth]) -> Vec<Standing> {
        let mut by_address: BTreeMap<IpAddr, Vec<VipHealth>> = BTreeMap::new();
        for v in vips {
            by_address.entry(v.vip.address).or_default().push(v.clone());
        }
        self.tracks.retain(|ip, _| by_address.contains_key(ip));
        let mut out = Vec::new();
        for (address, vips) in by_address {
            let t = self.tracks.entry(address).or_default();
            let deserves = !drained && vips.iter().any(VipHealth::deserves);
            let mut announce_in = None;
            if !deserves {
                t.deserving_since = None;
                if t.announced {
                    t.announced = false;
                    t.changes += 1;
                }
            } else if !t.announced {
                let since = *t.deserving_since.get_or_insert(now);
                let waited = now.saturating_duration_since(since);
                if waited >= self.hold_down {
                    t.announced = true;
                    t.changes += 1;
                } else {
                    announce_in = Some(self.hold_down - waited);
                }
            }
            let state = if t.announced {
                AddressState::Announced
            } else if drained {
                AddressState::Drained
            } else if deserves {
                AddressState::HoldDown
            } else {
                AddressState::Unhealthy
            };
            out.push(Standing {
                address,
                state,
                announce_in,
                changes: t.changes,
                vips,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(5);

    fn vip(addr: &str, port: u16, serving: u32, min_healthy: u32) -> VipHealth {
        VipHealth {
            vip: VipAddr {
                address: addr.parse().unwrap(),
                port,
                protocol: 6,
            },
            serving,
            backends: 3,
            min_healthy,
        }
    }

    fn states(s: &[Standing]) -> Vec<(String, AddressState)> {
        s.iter().map(|x| (x.address.to_string(), x.state)).collect()
    }

    #[test]
    fn a_new_address_waits_for_the_hold_down_then_is_announced() {
        let t0 = Instant::now();
        let mut p = Policy::new(HOLD, &BTreeSet::new());
        let vips = [vip("198.19.0.10", 80, 3, 1)];
        let s = p.step(t0, false, &vips);
        assert_eq!(s[0].state, AddressState::HoldDown);
        assert_eq!(s[0].announce_in, Some(HOLD));
        let s = p.step(t0 + Duration::from_secs(4), false, &vips);
        assert_eq!(s[0].announce_in, Some(Duration::from_secs(1)));
        assert!(p.announced().is_empty());
        let s = p.step(t0 + HOLD, false, &vips);
        assert_eq!(s[0].state, AddressState::Announced);
        assert_eq!(s[0].changes, 1);
        assert_eq!(p.announced().len(), 1);
    }

    #[test]
    fn addresses_found_announced_stay_announced_across_a_restart() {
        let t0 = Instant::now();
        let ip: IpAddr = "198.19.0.10".parse().unwrap();
        let mut p = Policy::new(HOLD, &[ip].into());
        let s = p.step(t0, false, &[vip("198.19.0.10", 80, 3, 1)]);
        assert_eq!(s[0].state, AddressState::Announced);
        assert_eq!(s[0].changes, 0, "nothing changed");
    }

    #[test]
    fn withdrawal_is_immediate_and_a_flap_restarts_the_hold_down() {
        let t0 = Instant::now();
        let ip: IpAddr = "198.19.0.10".parse().unwrap();
        let mut p = Policy::new(HOLD, &[ip].into());
        let s = p.step(t0, false, &[vip("198.19.0.10", 80, 0, 1)]);
        assert_eq!(s[0].state, AddressState::Unhealthy);
        assert!(p.announced().is_empty());
        // Healthy for 3 s, down again, healthy again: the hold-down counts from the last recovery.
        p.step(
            t0 + Duration::from_secs(1),
            false,
            &[vip("198.19.0.10", 80, 1, 1)],
        );
        p.step(
            t0 + Duration::from_secs(4),
            false,
            &[vip("198.19.0.10", 80, 0, 1)],
        );
        p.step(
            t0 + Duration::from_secs(5),
            false,
            &[vip("198.19.0.10", 80, 1, 1)],
        );
        let s = p.step(
            t0 + Duration::from_secs(9),
            false,
            &[vip("198.19.0.10", 80, 1, 1)],
        );
        assert_eq!(s[0].state, AddressState::HoldDown);
        let s = p.step(
            t0 + Duration::from_secs(10),
            false,
            &[vip("198.19.0.10", 80, 1, 1)],
        );
        assert_eq!(s[0].state, AddressState::Announced);
        assert_eq!(s[0].changes, 2, "one withdrawal, one announcement");
    }

    #[test]
    fn one_deserving_vip_is_enough_for_its_address() {
        let t0 = Instant::now();
        let mut p = Policy::new(Duration::ZERO, &BTreeSet::new());
        let s = p.step(
            t0,
            false,
            &[
                vip("198.19.0.10", 80, 1, 2),
                vip("198.19.0.10", 443, 2, 2),
                vip("198.19.0.11", 80, 1, 2),
                vip("198.19.0.12", 80, 0, 0),
            ],
        );
        assert_eq!(
            states(&s),
            [
                ("198.19.0.10".into(), AddressState::Announced),
                ("198.19.0.11".into(), AddressState::Unhealthy),
                ("198.19.0.12".into(), AddressState::Announced),
            ],
            "min_healthy 0 announces whatever the health"
        );
        assert_eq!(s[0].vips.len(), 2);
    }

    #[test]
    fn drain_withdraws_everything_and_removed_addresses_are_forgotten() {
        let t0 = Instant::now();
        let mut p = Policy::new(Duration::ZERO, &BTreeSet::new());
        let vips = [vip("198.19.0.10", 80, 3, 1), vip("fd00:19::10", 80, 3, 1)];
        p.step(t0, false, &vips);
        assert_eq!(p.announced().len(), 2);
        let s = p.step(t0, true, &vips);
        assert!(s.iter().all(|x| x.state == AddressState::Drained));
        assert!(p.announced().is_empty());
        p.step(t0, false, &vips);
        assert_eq!(p.announced().len(), 2);
        let s = p.step(t0, false, &vips[..1]);
        assert_eq!(s.len(), 1);
        assert_eq!(p.announced().len(), 1, "fd00:19::10 has no VIP any more");
    }
}
