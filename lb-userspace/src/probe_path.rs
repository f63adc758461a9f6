//! The host side of VIP-path health checks: how a marked probe reaches `lb_hc`.
//!
//! ```text
//!  probe socket (SO_MARK = hc_mark, bound to encap_src) ── connect(VIP:port)
//!    └─ ip rule  fwmark 0x4c000000/0xfe000000 lookup 19528   (pref 100, IPv4 and IPv6)
//!         table 19528: default dev lbhc0  |  blackhole default metric 4294967295
//!           └─ lbhc0 (ifb, no ARP)  ── TC egress: lb_hc ── encapsulated, redirected to the backend's interface
//! ```
//! An interface of its own, because a route out of a real one would have the kernel resolve the VIP with ARP/ND on
//! that link and hold the packet until it gives up. `lbhc0` is an IFB device: it needs no neighbour (IFF_NOARP), its
//! TC egress hook sees the packet first, and its driver discards anything a TC action did not redirect, so nothing
//! leaves by it if `lb_hc` is missing. (A dummy device would do the same, but kernels built without CONFIG_DUMMY, as
//! this project's CI kernel is, still have IFB, which tc's ingress shaping needs.) The blackhole fallback keeps a marked probe from leaking to the main table (and
//! from there to whatever serves the VIP) when `lbhc0` is gone: such a probe fails on this host, counted as unknown.
//!
//! Everything here is idempotent (a restarted lbd finds it in place) and lbd's alone: `remove` takes exactly it away.

use std::ffi::CString;
use std::io;

use anyhow::{Context, Result, bail};
use aya::programs::{SchedClassifier, TcAttachType, tc};
use lb_common::hc_mark::{HC_MARK_TAG, HC_MARK_TAG_MASK};
use tracing::{info, warn};

use crate::netlink::{Netlink, attr, attrs};

/// lbd's probe interface (an IFB device in lbd's network namespace).
pub const INTERFACE: &str = "lbhc0";
/// The routing table that sends marked probes to [`INTERFACE`] ("LH" in ASCII).
pub const TABLE: u32 = 0x4c48;
/// The policy rules' priority: ahead of the main table (32766) and of most rules an operator adds.
pub const RULE_PRIORITY: u32 = 100;

// linux/fib_rules.h
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FR_ACT_TO_TBL: u8 = 1;
const IFINFOMSG_LEN: usize = 16;

const FAMILIES: [u8; 2] = [libc::AF_INET as u8, libc::AF_INET6 as u8];

/// Creates the probe interface, its rules and routes (what is there already stays), and attaches `lb_hc` to its
/// egress. `prog` must be loaded; the attachment lives as long as lbd holds the program.
pub fn setup(prog: &mut SchedClassifier) -> Result<()> {
    let ifindex = ensure_link().context("creating the probe interface")?;
    for family in FAMILIES {
        route(family, ifindex).with_context(|| format!("the probe route (family {family})"))?;
        blackhole_fallback(family)
            .with_context(|| format!("the probe table's fallback (family {family})"))?;
        rule(family, libc::RTM_NEWRULE)
            .with_context(|| format!("the probe rule (family {family})"))?;
    }
    // Kernels before 6.6 attach TC programs through the clsact qdisc (aya uses tcx links from 6.6 on).
    let tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    if !tcx && let Err(e) = tc::qdisc_add_clsact(INTERFACE) {
        warn!(error = %e, "adding clsact to {INTERFACE} (already there?)");
    }
    prog.attach(INTERFACE, TcAttachType::Egress)
        .with_context(|| format!("attaching lb_hc to {INTERFACE} egress"))?;
    for sysctl in crate::attach::forwarding_disabled(INTERFACE) {
        // lb_hc asks the FIB for the backend's route as lb_xdp does, as if the probe arrived on lbhc0; the kernel
        // answers only for an interface that forwards (new interfaces take `default.forwarding`).
        warn!(
            sysctl,
            "forwarding is disabled on the probe interface: VIP-path probes will be dropped (hc_drop_no_route)"
        );
    }
    info!(
        interface = INTERFACE,
        table = TABLE,
        "VIP-path probes: marked sockets are routed to lb_hc"
    );
    Ok(())
}

/// Takes the probe path away: the rules, the interface (its routes go with it) and the table's fallback routes.
/// Whatever is already gone is fine.
pub fn remove() -> Result<()> {
    for family in FAMILIES {
        gone_ok(rule(family, libc::RTM_DELRULE))
            .with_context(|| format!("removing the probe rule (family {family})"))?;
        gone_ok(delete_blackhole(family))
            .with_context(|| format!("removing the probe table's fallback (family {family})"))?;
    }
    if let Some(ifindex) = ifindex(INTERFACE) {
        let mut body = ifinfomsg(ifindex, 0, 0);
        body.truncate(IFINFOMSG_LEN);
        gone_ok(Netlink::open()?.request(
            libc::RTM_DELLINK,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            &body,
            |_| {},
        ))
        .with_context(|| format!("deleting {INTERFACE}"))?;
    }
    Ok(())
}

fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// The IFB interface, created if missing, and up.
fn ensure_link() -> Result<u32> {
    if ifindex(INTERFACE).is_none() {
        let mut body = ifinfomsg(0, 0, 0);
        let name = CString::new(INTERFACE).expect("no NUL");
        attr(&mut body, libc::IFLA_IFNAME, name.as_bytes_with_nul());
        let mut info = Vec::new();
        attr(&mut info, libc::IFLA_INFO_KIND, b"ifb\0");
        attr(&mut body, libc::IFLA_LINKINFO, &info);
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        exists_ok(Netlink::open()?.request(libc::RTM_NEWLINK, flags as u16, &body, |_| {}))
            .with_context(|| {
                format!("creating the IFB interface {INTERFACE} (is CONFIG_IFB built?)")
            })?;
    }
    let index = ifindex(INTERFACE).with_context(|| format!("{INTERFACE} vanished"))?;
    // An interface of that name that is not lbd's (another kind) is left alone: lbd would route into it.
    match link_kind(index).with_context(|| format!("reading {INTERFACE}'s kind"))? {
        Some(kind) if kind == "ifb" => {}
        other => bail!(
            "{INTERFACE} exists and is not an IFB device (kind {other:?}): it is not lbd's probe interface; \
             rename or remove it"
        ),
    }
    let up = libc::IFF_UP as u32;
    Netlink::open()?
        .request(
            libc::RTM_NEWLINK,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            &ifinfomsg(index, up, up),
            |_| {},
        )
        .with_context(|| format!("setting {INTERFACE} up"))?;
    Ok(index)
}

/// The `kind` of link `index` (`ifb`, `veth`, ...; `None` for a device without one, like a physical NIC).
fn link_kind(index: u32) -> io::Result<Option<String>> {
    let mut body = ifinfomsg(index, 0, 0);
    body.truncate(IFINFOMSG_LEN);
    let mut kind = None;
    Netlink::open()?.request(
        libc::RTM_GETLINK,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
        &body,
        |msg| {
            let Some(link_attrs) = msg.get(IFINFOMSG_LEN..) else {
                return;
            };
            for (ty, data) in attrs(link_attrs) {
                if ty == libc::IFLA_LINKINFO {
                    for (ty, data) in attrs(data) {
                        if ty == libc::IFLA_INFO_KIND {
                            let name = data.split(|&b| b == 0).next().unwrap_or_default();
                            kind = Some(String::from_utf8_lossy(name).into_owned());
                        }
                    }
                }
            }
        },
    )?;
    Ok(kind)
}

/// `struct ifinfomsg` for interface `index`, with `flags` changed under `change`.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut m = vec![0u8; IFINFOMSG_LEN];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// `struct rtmsg` for the default route of `family` in [`TABLE`].
fn rtmsg(family: u8, scope: u8, kind: u8) -> Vec<u8> {
    let mut m = vec![
        family,
        0, // dst_len: the default route
        0,
        0,
        libc::RT_TABLE_UNSPEC, // the table goes in RTA_TABLE (it is above 255)
        libc::RTPROT_STATIC,
        scope,
        kind,
        0,
        0,
        0,
        0,
    ];
    attr(&mut m, libc::RTA_TABLE, &TABLE.to_ne_bytes());
    m
}

/// `default dev lbhc0 table 19528`.
fn route(family: u8, ifindex: u32) -> io::Result<()> {
    let scope = if family == libc::AF_INET as u8 {
        libc::RT_SCOPE_LINK
    } else {
        libc::RT_SCOPE_UNIVERSE
    };
    let mut body = rtmsg(family, scope, libc::RTN_UNICAST);
    attr(&mut body, libc::RTA_OIF, &ifindex.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
    Netlink::open()?.request(libc::RTM_NEWROUTE, flags as u16, &body, |_| {})
}

fn blackhole_body(family: u8) -> Vec<u8> {
    let mut body = rtmsg(family, libc::RT_SCOPE_UNIVERSE, libc::RTN_BLACKHOLE);
    attr(&mut body, libc::RTA_PRIORITY, &u32::MAX.to_ne_bytes());
    body
}

/// `blackhole default metric 4294967295 table 19528`: a connect through it fails with EINVAL, which no answer from
/// the network ever gives (unreachable routes give EHOSTUNREACH / ENETUNREACH, as ICMP errors from a backend do).
fn blackhole_fallback(family: u8) -> io::Result<()> {
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
    Netlink::open()?.request(
        libc::RTM_NEWROUTE,
        flags as u16,
        &blackhole_body(family),
        |_| {},
    )
}

fn delete_blackhole(family: u8) -> io::Result<()> {
    Netlink::open()?.request(
        libc::RTM_DELROUTE,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
        &blackhole_body(family),
        |_| {},
    )
}

/// Adds (`RTM_NEWRULE`, an existing one is kept) or deletes the rule `fwmark TAG/MASK lookup 19528 pref 100`.
fn rule(family: u8, ty: u16) -> io::Result<()> {
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags (u32).
    let mut body = vec![
        family,
        0,
        0,
        0,
        libc::RT_TABLE_UNSPEC,
        0,
        0,
        FR_ACT_TO_TBL,
        0,
        0,
        0,
        0,
    ];
    attr(&mut body, FRA_PRIORITY, &RULE_PRIORITY.to_ne_bytes());
    attr(&mut body, FRA_FWMARK, &HC_MARK_TAG.to_ne_bytes());
    attr(&mut body, FRA_FWMASK, &HC_MARK_TAG_MASK.to_ne_bytes());
    attr(&mut body, FRA_TABLE, &TABLE.to_ne_bytes());
    let flags = if ty == libc::RTM_NEWRULE {
        // Without EXCL the kernel would add the same rule again at every start.
        libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL
    } else {
        libc::NLM_F_REQUEST | libc::NLM_F_ACK
    };
    exists_ok(Netlink::open()?.request(ty, flags as u16, &body, |_| {}))
}

fn exists_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

fn gone_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_matches_every_probe_mark_and_no_other() {
        use lb_common::hc_mark::ProbeMark;
        let m = ProbeMark {
            backend: 77,
            l2dsr: true,
        }
        .encode()
        .unwrap();
        assert_eq!(m & HC_MARK_TAG_MASK, HC_MARK_TAG);
        assert_ne!(0x0100_0000 & HC_MARK_TAG_MASK, HC_MARK_TAG);
    }
}
