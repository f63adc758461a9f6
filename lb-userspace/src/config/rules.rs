//! The rules a configuration must meet, checked on the typed values: the file (`raw.rs`) and every runtime edit
//! (`edit.rs`) pass through these, and nothing else decides whether a config may run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use super::{
    AnnounceConfig, Config, DaemonConfig, FragmentPolicy, MAX_WEIGHT, MIN_MTU, Mode, VipAddr,
    VipConfig,
};
use crate::health::TrustStores;
use crate::maglev::is_prime;
use lb_common::hc_mark::HC_MARK_ID_MASK;

impl Config {
    /// Adds an error for every rule broken; `labels[i]` names `self.vips[i]` in them.
    pub(super) fn check(&self, labels: &[String], errs: &mut Vec<String>) {
        check_daemon(&self.daemon, errs);
        check_announce(&self.announce, errs);
        let mut seen: HashMap<VipAddr, &str> = HashMap::new();
        for (v, label) in self.vips.iter().zip(labels) {
            if let Some(first) = seen.insert(v.key(), label) {
                errs.push(format!("{label}: {} duplicates {first}", v.key()));
            }
            check_vip(v, label, &self.daemon, &self.trust, errs);
        }
        check_totals(&self.daemon, &self.vips, labels, errs);
    }
}

fn check_daemon(d: &DaemonConfig, errs: &mut Vec<String>) {
    if d.interface.is_empty() {
        errs.push("daemon.interface: \"\" is empty".into());
    }
    let s = &d.sizes;
    for (name, v) in [
        ("max_vips", s.max_vips),
        ("max_backends", s.max_backends),
        ("flow_table_size", s.flow_table_size),
        ("max_ring_size", s.max_ring_size),
    ] {
        if v == 0 {
            errs.push(format!("daemon.{name}: 0 must be at least 1"));
        }
    }
    if s.max_backends > HC_MARK_ID_MASK + 1 {
        errs.push(format!(
            "daemon.max_backends: {} is over {}: a VIP-path probe's socket mark holds a backend id in 24 bits",
            s.max_backends,
            HC_MARK_ID_MASK + 1
        ));
    }
    if s.max_backends == 1 {
        errs.push("daemon.max_backends: 1 leaves no backend (id 0 is reserved)".into());
    }
    let ring_entries = 2u64 * s.max_vips as u64 * s.max_ring_size as u64;
    if ring_entries > u32::MAX as u64 / 4 {
        errs.push(format!(
            "daemon.max_ring_size: {} with max_vips {} needs {ring_entries} ring entries, too many for one map",
            s.max_ring_size, s.max_vips
        ));
    }
    // lbd's working directory is its service manager's choice: a relative path would move with it.
    for (name, path) in [
        ("pin_dir", &d.pin_dir),
        ("control_socket", &d.control_socket),
    ] {
        if !path.is_absolute() {
            errs.push(format!(
                "daemon.{name}: {:?} must be an absolute path",
                path.display().to_string()
            ));
        }
    }
    if d.mtu != 0 && d.mtu < MIN_MTU {
        errs.push(format!(
            "daemon.mtu: {} is below {MIN_MTU} (IPv6's 1280 plus a 40-byte outer header); 0 turns the check off",
            d.mtu
        ));
    }
}

/// The longest hold-down: beyond an hour it is a typo, and a withdrawn balancer would sit out for a day.
const MAX_HOLD_DOWN_MS: u64 = 3_600_000;

/// Route protocol numbers that already mean something (the kernel's own, and iproute2's rt_protos for routing
/// daemons): routes lbd writes with one of them would be taken for another owner's, BIRD's (12) above all, whose
/// kernel protocol removes the routes it thinks it wrote.
const TAKEN_PROTOCOLS: &[(u32, &str)] = &[
    (0, "unspec"),
    (1, "redirect"),
    (2, "kernel"),
    (3, "boot"),
    (4, "static"),
    (8, "gated"),
    (9, "ra"),
    (10, "mrt"),
    (11, "zebra"),
    (12, "bird"),
    (13, "dnrouted"),
    (14, "xorp"),
    (15, "ntk"),
    (16, "dhcp"),
    (18, "keepalived"),
    (42, "babel"),
    (99, "openr"),
    (186, "bgp"),
    (187, "isis"),
    (188, "ospf"),
    (189, "rip"),
    (192, "eigrp"),
];

fn check_announce(a: &AnnounceConfig, errs: &mut Vec<String>) {
    match a.table {
        0 => errs.push("announce.table: 0 is not a table number".into()),
        253..=255 => errs.push(format!(
            "announce.table: {} is the kernel's {} table; the announced addresses need a table of their own, which \
             only the BGP speaker reads",
            a.table,
            ["default", "main", "local"][(a.table - 253) as usize]
        )),
        _ => {}
    }
    if a.protocol > 255 {
        errs.push(format!(
            "announce.protocol: {} is out of range 0..=255",
            a.protocol
        ));
    } else if let Some((_, owner)) = TAKEN_PROTOCOLS.iter().find(|(n, _)| *n == a.protocol) {
        errs.push(format!(
            "announce.protocol: {} is the number of \"{owner}\" routes; pick one no routing daemon uses, such as 250",
            a.protocol
        ));
    }
    if a.hold_down_ms > MAX_HOLD_DOWN_MS {
        errs.push(format!(
            "announce.hold_down_ms: {} exceeds {MAX_HOLD_DOWN_MS} (an hour)",
            a.hold_down_ms
        ));
    }
    if !a.drain_file.is_absolute() {
        // lbd's working directory is whatever its service manager chose; a relative path would move with it.
        errs.push(format!(
            "announce.drain_file: {:?} must be an absolute path",
            a.drain_file.display().to_string()
        ));
    }
}

fn check_vip(
    v: &VipConfig,
    p: &str,
    daemon: &DaemonConfig,
    trust: &TrustStores,
    errs: &mut Vec<String>,
) {
    if let Some(why) = unusable(v.address) {
        errs.push(format!("{p}.address: \"{}\" {why}", v.address));
    }
    if v.panic_threshold > 100 {
        errs.push(format!(
            "{p}.panic_threshold: {} is not a percentage (0..=100; 0 turns panic mode off)",
            v.panic_threshold
        ));
    }
    if !is_prime(v.ring_size) {
        errs.push(format!("{p}.ring_size: {} is not prime", v.ring_size));
    }
    if v.ring_size > daemon.sizes.max_ring_size {
        errs.push(format!(
            "{p}.ring_size: {} exceeds daemon.max_ring_size = {}",
            v.ring_size, daemon.sizes.max_ring_size
        ));
    }
    let mut seen = HashSet::new();
    for (j, b) in v.backends.iter().enumerate() {
        let bp = format!("{p}.backends[{j}]");
        let addr = b.address;
        if b.weight > MAX_WEIGHT {
            errs.push(format!(
                "{bp}.weight: {} is out of range 0..={MAX_WEIGHT}",
                b.weight
            ));
        }
        if !seen.insert(addr) {
            errs.push(format!("{bp}.address: \"{addr}\" is listed twice"));
        }
        if let Some(why) = unusable(addr) {
            errs.push(format!("{bp}.address: \"{addr}\" {why}"));
        }
        if v.mode == Mode::L2dsr && v.address.is_ipv4() != addr.is_ipv4() {
            errs.push(format!(
                "{bp}.address: \"{addr}\" is {} but the l2dsr VIP {} is {} (L2 DSR cannot change the family)",
                family(addr),
                v.address,
                family(v.address)
            ));
        }
        if v.mode == Mode::Ipip {
            match addr {
                IpAddr::V4(_) if daemon.encap_src_v4.is_none() => errs.push(format!(
                    "{bp}.address: \"{addr}\" needs daemon.encap_src_v4 for IP-in-IP encapsulation"
                )),
                IpAddr::V6(_) if daemon.encap_src_v6.is_none() => errs.push(format!(
                    "{bp}.address: \"{addr}\" needs daemon.encap_src_v6 for IP-in-IP encapsulation"
                )),
                _ => {}
            }
        }
    }
    errs.extend(v.health.validate(&format!("{p}.health"), v.port, trust));
}

fn check_totals(
    daemon: &DaemonConfig,
    vips: &[VipConfig],
    labels: &[String],
    errs: &mut Vec<String>,
) {
    // LB_VIPS holds a service entry per VIP and a fragment entry per (address, protocol) of port-specific VIPs
    // that no port-0 VIP covers (see the fragment rule below); both count against max_vips.
    let wildcards: HashSet<(IpAddr, u8)> = vips
        .iter()
        .filter(|v| v.port == 0)
        .map(|v| (v.address, v.protocol.number()))
        .collect();
    let fragment_entries: HashSet<(IpAddr, u8)> = vips
        .iter()
        .map(|v| (v.address, v.protocol.number()))
        .filter(|k| !wildcards.contains(k))
        .collect();
    let entries = vips.len() + fragment_entries.len();
    if entries > daemon.sizes.max_vips as usize {
        errs.push(format!(
            "vip: {} VIPs need {entries} entries in the VIP map ({} for the VIPs, {} for the fragments of \
             port-specific VIPs, one per address and protocol), more than daemon.max_vips = {}",
            vips.len(),
            vips.len(),
            fragment_entries.len(),
            daemon.sizes.max_vips
        ));
    }
    // A backend id names a (VIP, backend) pair (see state.rs); id 0 is reserved, so max_backends - 1 are usable.
    let backends: usize = vips.iter().map(|v| v.backends.len()).sum();
    if backends >= daemon.sizes.max_backends as usize {
        errs.push(format!(
            "vip[*].backends: {} (VIP, backend) pairs exceed daemon.max_backends - 1 = {}",
            backends,
            daemon.sizes.max_backends.saturating_sub(1)
        ));
    }
    // Fragments of a port-specific VIP are matched by a (address, port 0) entry; VIPs sharing it must agree.
    let mut frag: BTreeMap<(IpAddr, u8), (&str, FragmentPolicy)> = BTreeMap::new();
    for (v, label) in vips.iter().zip(labels) {
        let k = (v.address, v.protocol.number());
        if v.port == 0 || wildcards.contains(&k) {
            continue;
        }
        match frag.get(&k) {
            Some(&(first, policy)) if policy != v.fragments => errs.push(format!(
                "{label}.fragments: {} conflicts with {first} on the same address and protocol ({policy}); \
                 fragments carry no port, so they share one policy",
                v.fragments
            )),
            Some(_) => {}
            None => {
                frag.insert(k, (label, v.fragments));
            }
        }
    }
}

/// Why `addr` can be neither a VIP nor a backend, if it cannot: no packet from the wire is ever addressed to it, or
/// the kernel never routes one to it (an IPv4-mapped IPv6 address is IPv4 on the wire, so the VIP would never match).
fn unusable(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        return Some("is the unspecified address");
    }
    if addr.is_multicast() {
        return Some("is a multicast address");
    }
    if addr.is_loopback() {
        return Some("is a loopback address");
    }
    match addr {
        IpAddr::V4(a) if a.is_broadcast() => Some("is the broadcast address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("is an IPv4-mapped IPv6 address; write the IPv4 address")
        }
        _ => None,
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}
