//! Which balancer each client flow crosses, as seen on the ECMP lab's switch: an nftables bridge table records every
//! (client address, client port, switch port) of VIP traffic the router forwards to a balancer. Observed, not
//! predicted: in the lab the router's ECMP hash is the one the client's TCP socket put on its packets (a veth hands
//! the skb over with its L4 hash, and the kernel's multipath selection uses a present L4 hash as it is), so
//! `ip route get` could not tell where a flow goes; the switch can.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::harness::netns::NetNs;

const TABLE: &str = "lbt_paths";

pub struct FlowPaths {
    switch: NetNs,
}

impl FlowPaths {
    /// Installs the recording table in `switch`; `router_port` is the router's port on the fabric bridge and
    /// `vips` the VIPs (TCP) whose flows are recorded. The table goes with the namespace.
    pub fn install(switch: &NetNs, router_port: &str, vips: &[SocketAddr]) -> FlowPaths {
        let rules: String = vips
            .iter()
            .map(|v| {
                let (family, set) = if v.is_ipv4() { ("ip", "paths4") } else { ("ip6", "paths6") };
                format!(
                    "    iifname \"{router_port}\" {family} daddr {} tcp dport {} add @{set} {{ {family} saddr . tcp sport . oifname }}\n",
                    v.ip(),
                    v.port()
                )
            })
            .collect();
        switch.exec(&[
            "nft",
            &format!(
                "table bridge {TABLE} {{
  set paths4 {{ type ipv4_addr . inet_service . ifname; flags dynamic; size 65536; }}
  set paths6 {{ type ipv6_addr . inet_service . ifname; flags dynamic; size 65536; }}
  chain paths {{ type filter hook forward priority 0;
{rules}  }}
}}"
            ),
        ]);
        FlowPaths {
            switch: switch.handle(),
        }
    }

    /// The switch ports each client flow `(address, port)` went out of during `window`, starting now.
    pub fn observe(&self, window: Duration) -> BTreeMap<SocketAddr, BTreeSet<String>> {
        for set in ["paths4", "paths6"] {
            self.switch
                .exec(&["nft", "flush", "set", "bridge", TABLE, set]);
        }
        std::thread::sleep(window);
        let mut seen: BTreeMap<SocketAddr, BTreeSet<String>> = BTreeMap::new();
        for set in ["paths4", "paths6"] {
            let out = self
                .switch
                .exec(&["nft", "-j", "list", "set", "bridge", TABLE, set]);
            let v: serde_json::Value = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("nft -j list set {set}: {e}: {out}"));
            let elems = v["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("set")?.get("elem")?.as_array())
                .flatten();
            for e in elems {
                let c = e
                    .get("concat")
                    .or_else(|| e.get("elem")?.get("val")?.get("concat"));
                let Some([addr, port, ifname]) = c.and_then(|c| c.as_array()).map(Vec::as_slice)
                else {
                    panic!("unexpected element of {set}: {e}");
                };
                let (Some(addr), Some(port), Some(ifname)) = (
                    addr.as_str().and_then(|a| a.parse::<IpAddr>().ok()),
                    port.as_u64().and_then(|p| u16::try_from(p).ok()),
                    ifname.as_str(),
                ) else {
                    panic!("unexpected element of {set}: {e}");
                };
                seen.entry(SocketAddr::new(addr, port))
                    .or_default()
                    .insert(ifname.to_string());
            }
        }
        seen
    }
}
