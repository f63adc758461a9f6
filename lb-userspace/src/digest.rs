//! A digest of a VIP's active Maglev table, for checking that every balancer of a tier agrees.
//!
//! Balancers share no state: a flow that ECMP moves to another balancer keeps its backend only because that
//! balancer's table sends it to the same address. The Maglev builder depends only on the backends' addresses and
//! weights (`maglev::build`), but backend ids are each lbd's own (allocation order, restarts, edits), so the digest
//! is taken over what each slot means, the backend's *address*, never over its id. Equal digests on all balancers
//! (`lbctl vip list --json`, metric `lb_vip_table_info`) mean every flow of that VIP reaches the same backend
//! whichever balancer it crosses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::{BACKEND_ID_NONE, BackendId};

use crate::state::DesiredBackend;

/// 64-bit FNV-1a (stable across Rust releases and hosts, unlike `std`'s hashers) of the table's size and, slot by
/// slot, the address the slot sends to; 16 hex digits.
pub fn table_digest(ring: &[BackendId], backends: &BTreeMap<IpAddr, DesiredBackend>) -> String {
    let by_id: BTreeMap<BackendId, IpAddr> = backends.iter().map(|(a, b)| (b.id, *a)).collect();
    let mut h = Fnv::default();
    h.write(&(ring.len() as u32).to_le_bytes());
    for &id in ring {
        match (id, by_id.get(&id)) {
            (BACKEND_ID_NONE, _) => h.write(&[0]),
            (_, Some(IpAddr::V4(a))) => {
                h.write(&[4]);
                h.write(&a.octets());
            }
            (_, Some(IpAddr::V6(a))) => {
                h.write(&[6]);
                h.write(&a.octets());
            }
            // An id the state does not know (never expected): it makes the digest this balancer's own, which is
            // the truth, since no other balancer can hold the same unknown entry.
            (_, None) => {
                h.write(&[0xff]);
                h.write(&id.to_le_bytes());
            }
        }
    }
    format!("{:016x}", h.0)
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::service::VipAddr;
    use crate::state::{DesiredState, Ids};

    fn config(vips: &[(&str, &[&str])]) -> Config {
        let mut text = String::from(
            "[daemon]\ninterface = \"lb0\"\nencap_src_v4 = \"198.18.0.1\"\nmax_vips = 8\nmax_backends = 64\n\
             max_ring_size = 251\n",
        );
        for (addr, backends) in vips {
            let bs: Vec<String> = backends
                .iter()
                .map(|b| format!("{{ address = \"{b}\" }}"))
                .collect();
            text += &format!(
                "[[vip]]\naddress = \"{addr}\"\nport = 80\nprotocol = \"tcp\"\nring_size = 251\nbackends = [{}]\n",
                bs.join(", ")
            );
        }
        Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn key(addr: &str) -> VipAddr {
        VipAddr {
            address: addr.parse().unwrap(),
            port: 80,
            protocol: 6,
        }
    }

    /// The digest of `vip` in `state` with `down` backends out of its ring.
    fn digest(state: &DesiredState, vip: &str, down: &[&str]) -> String {
        let v = &state.vips[&key(vip)];
        let ring = v.ring(|a| !down.iter().any(|d| d.parse::<IpAddr>().unwrap() == a));
        table_digest(&ring.table, &v.backends)
    }

    const VIP: &str = "198.19.0.10";
    const B: [&str; 4] = ["198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"];

    #[test]
    fn the_table_depends_on_the_config_and_health_only() {
        // Balancer 1: a fresh start with the backends in file order.
        let mut ids1 = Ids::new(8, 64);
        let s1 = DesiredState::build(&config(&[(VIP, &B[..3])]), &mut ids1).unwrap();

        // Balancer 2: another VIP came and went first (other ids), the file lists the backends in another order,
        // and the fourth backend was added and removed again at run time.
        let mut ids2 = Ids::new(8, 64);
        DesiredState::build(&config(&[("198.19.0.99", &B), (VIP, &B[..1])]), &mut ids2).unwrap();
        DesiredState::build(&config(&[(VIP, &[B[3], B[2], B[1], B[0]])]), &mut ids2).unwrap();
        let s2 = DesiredState::build(&config(&[(VIP, &[B[2], B[0], B[1]])]), &mut ids2).unwrap();
        assert_ne!(
            s1.vips[&key(VIP)].backends,
            s2.vips[&key(VIP)].backends,
            "the balancers' backend ids differ"
        );
        assert_eq!(digest(&s1, VIP, &[]), digest(&s2, VIP, &[]));
        assert_eq!(digest(&s1, VIP, &[B[1]]), digest(&s2, VIP, &[B[1]]));
        assert_ne!(
            digest(&s1, VIP, &[]),
            digest(&s1, VIP, &[B[1]]),
            "a health change is a table change"
        );
        let s3 = DesiredState::build(&config(&[(VIP, &[B[0], B[2]])]), &mut ids1).unwrap();
        assert_eq!(
            digest(&s3, VIP, &[]),
            digest(&s1, VIP, &[B[1]]),
            "a removed backend and a down one leave the same table"
        );
    }

    #[test]
    fn edits_in_any_order_reach_the_same_table() {
        let mut ids1 = Ids::new(8, 64);
        let mut ids2 = Ids::new(8, 64);
        let mut c1 = config(&[(VIP, &B[..2])]);
        let mut c2 = c1.clone();
        let (b3, b4) = (B[2].parse().unwrap(), B[3].parse().unwrap());
        c1.add_backend(&key(VIP), b3, None).unwrap();
        DesiredState::build(&c1, &mut ids1).unwrap();
        c1.add_backend(&key(VIP), b4, None).unwrap();
        c2.add_backend(&key(VIP), b4, None).unwrap();
        DesiredState::build(&c2, &mut ids2).unwrap();
        c2.add_backend(&key(VIP), b3, None).unwrap();
        let s1 = DesiredState::build(&c1, &mut ids1).unwrap();
        let s2 = DesiredState::build(&c2, &mut ids2).unwrap();
        assert_eq!(digest(&s1, VIP, &[]), digest(&s2, VIP, &[]));
    }

    #[test]
    fn digest_is_pinned() {
        // A change here means every fleet's operators see new digests after an upgrade: it must be deliberate.
        let mut ids = Ids::new(8, 64);
        let s = DesiredState::build(&config(&[(VIP, &B[..3])]), &mut ids).unwrap();
        assert_eq!(digest(&s, VIP, &[]), PINNED);
        assert_eq!(table_digest(&[], &BTreeMap::new()), "4d25767f9dce13f5");
    }
    const PINNED: &str = "957d00eb4077c27d";
}
