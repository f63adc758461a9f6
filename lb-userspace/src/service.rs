//! What names a service everywhere in userspace: its address, port and protocol (`VipAddr`, the dataplane's
//! `VipKey` in host terms).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use lb_common::{IPPROTO_TCP, IPPROTO_UDP, VipKey};
use serde::{Deserialize, Serialize};

use crate::names::named_enum;

named_enum! {
    /// The transport protocols a VIP balances.
    pub enum Protocol {
        Tcp = "tcp",
        Udp = "udp",
    }
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        Protocol::ALL.iter().copied().find(|p| p.number() == n)
    }
}

/// Identifies a VIP across reloads: what the dataplane keys it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VipAddr {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: u8,
}

impl VipAddr {
    /// The `LB_VIPS` key of this VIP.
    pub fn key(&self) -> VipKey {
        VipKey::new(self.address, self.port, self.protocol)
    }

    /// The VIP a map key names (`None` for a key of no known family).
    pub fn of_key(k: &VipKey) -> Option<VipAddr> {
        Some(VipAddr {
            address: k.ip()?,
            port: k.port(),
            protocol: k.proto,
        })
    }
}

impl fmt::Display for VipAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = Protocol::from_number(self.protocol)
            .map(|p| p.to_string())
            .unwrap_or(self.protocol.to_string());
        write!(f, "{}/{proto}", SocketAddr::new(self.address, self.port))
    }
}
