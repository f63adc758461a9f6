//! lbd's announcement routes in the kernel, over rtnetlink: one host route per announced address (`ADDR/32` or
//! `ADDR/128`, `dev lo`) in the configured table, tagged with the configured protocol number. The same route
//! `ip route add 198.19.0.10/32 dev lo table 100 proto 250` makes; the table is read by no `ip rule`, so the routes
//! never steer a packet: they only tell the BGP speaker (BIRD's `kernel` protocol with `learn`) what to announce.
//!
//! The kernel holds the truth: lbd reads the table back rather than trusting its memory, so a restarted lbd knows
//! what is announced and a route removed by hand is put back at the next sync.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use crate::netlink::{Netlink, attr, attrs};

/// Where lbd's routes live: `table` and `protocol` of `[announce]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTable {
    pub table: u32,
    pub protocol: u8,
}

/// The loopback device is ifindex 1 in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
const RTMSG_LEN: usize = 12;

impl RouteTable {
    /// The addresses lbd's routes in the table announce now (other routes there are not lbd's and are left alone).
    pub fn list(&self) -> io::Result<BTreeSet<IpAddr>> {
        let sock = Netlink::open()?;
        let mut rtm = [0u8; RTMSG_LEN];
        rtm[0] = libc::AF_UNSPEC as u8;
        let mut found = BTreeSet::new();
        sock.request(
            libc::RTM_GETROUTE,
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            &rtm,
            |msg| {
                if let Some(ip) = self.ours(msg) {
                    found.insert(ip);
                }
            },
        )?;
        Ok(found)
    }

    /// Adds (or replaces) the route announcing `ip`.
    pub fn add(&self, ip: IpAddr) -> io::Result<()> {
        let flags =
            libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
        // As `ip route add ... dev lo` does: an IPv4 route without a gateway is link-scoped, IPv6 routes are global.
        let scope = match ip {
            IpAddr::V4(_) => libc::RT_SCOPE_LINK,
            IpAddr::V6(_) => libc::RT_SCOPE_UNIVERSE,
        };
        let mut body = self.rtmsg(ip, scope, libc::RTN_UNICAST);
        attr(&mut body, libc::RTA_OIF, &LOOPBACK_IFINDEX.to_ne_bytes());
        Netlink::open()?.request(libc::RTM_NEWROUTE, flags as u16, &body, |_| {})
    }

    /// Removes the route announcing `ip`; a route already gone is fine.
    pub fn remove(&self, ip: IpAddr) -> io::Result<()> {
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK;
        // Scope "nowhere" matches a route of any scope, as `ip route del` asks.
        let body = self.rtmsg(ip, libc::RT_SCOPE_NOWHERE, libc::RTN_UNSPEC);
        match Netlink::open()?.request(libc::RTM_DELROUTE, flags as u16, &body, |_| {}) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
            other => other,
        }
    }

    /// Removes every route of lbd's in the table.
    pub fn clear(&self) -> io::Result<usize> {
        let all = self.list()?;
        for ip in &all {
            self.remove(*ip)?;
        }
        Ok(all.len())
    }

    /// The header of a route message for `ip`'s host route in this table with this protocol, with its table and
    /// destination attributes.
    fn rtmsg(&self, ip: IpAddr, scope: u8, kind: u8) -> Vec<u8> {
        let (family, dst): (u8, Vec<u8>) = match ip {
            IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
        };
        let mut m = vec![
            family,
            (dst.len() * 8) as u8, // dst_len: a host route
            0,                     // src_len
            0,                     // tos
            self.table_byte(),
            self.protocol,
            scope,
            kind,
            0,
            0,
            0,
            0, // flags
        ];
        attr(&mut m, libc::RTA_TABLE, &self.table.to_ne_bytes());
        attr(&mut m, libc::RTA_DST, &dst);
        m
    }

    /// `rtm_table` holds tables up to 255; larger ones are named by `RTA_TABLE` alone.
    fn table_byte(&self) -> u8 {
        u8::try_from(self.table).unwrap_or(libc::RT_TABLE_UNSPEC)
    }

    /// The address a dumped route announces, if it is one of lbd's: in this table, with this protocol, a unicast
    /// host route.
    fn ours(&self, msg: &[u8]) -> Option<IpAddr> {
        let rtm = msg.get(..RTMSG_LEN)?;
        let (family, dst_len, table, protocol, kind) = (rtm[0], rtm[1], rtm[4], rtm[5], rtm[7]);
        if protocol != self.protocol || kind != libc::RTN_UNICAST {
            return None;
        }
        let mut table = u32::from(table);
        let mut dst = None;
        for (ty, data) in attrs(&msg[RTMSG_LEN..]) {
            match ty {
                libc::RTA_TABLE => table = u32::from_ne_bytes(data.get(..4)?.try_into().ok()?),
                libc::RTA_DST => dst = Some(data),
                _ => {}
            }
        }
        if table != self.table {
            return None;
        }
        match (i32::from(family), dst_len, dst?) {
            (libc::AF_INET, 32, d) => Some(IpAddr::from(<[u8; 4]>::try_from(d).ok()?)),
            (libc::AF_INET6, 128, d) => Some(IpAddr::from(<[u8; 16]>::try_from(d).ok()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_message_is_recognised_by_table_and_protocol() {
        let t = RouteTable {
            table: 1000,
            protocol: 250,
        };
        let ip: IpAddr = "fd00:19::10".parse().unwrap();
        let m = t.rtmsg(ip, libc::RT_SCOPE_UNIVERSE, libc::RTN_UNICAST);
        assert_eq!(m[4], libc::RT_TABLE_UNSPEC, "table 1000 needs RTA_TABLE");
        assert_eq!(t.ours(&m), Some(ip));
        let other_table = RouteTable { table: 100, ..t };
        assert_eq!(other_table.ours(&m), None);
        let other_proto = RouteTable { protocol: 12, ..t };
        assert_eq!(other_proto.ours(&m), None);
        let blackhole = t.rtmsg(ip, libc::RT_SCOPE_UNIVERSE, libc::RTN_BLACKHOLE);
        assert_eq!(t.ours(&blackhole), None);
    }
}
