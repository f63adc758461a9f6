//! `lbd decap`: the backend side. Attaches `lb_decap` (pinned, so it outlives the command) and fills its three maps:
//! the VIPs this backend serves, its own tunnel endpoint addresses, and the balancers it accepts tunnels from.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use lb_common::{AddrKey, programs};
use tracing::info;

use crate::attach;
use crate::config::XdpMode;
use crate::dataplane::{Dataplane, LoadOptions, MapSizes};

pub const DEFAULT_DECAP_PIN_DIR: &str = "/sys/fs/bpf/lb-decap";

/// The decap program needs only its own small maps; the balancer maps (created with the object) get their minimum
/// size.
fn sizes() -> MapSizes {
    MapSizes {
        max_vips: 64,
        max_backends: 2,
        flow_table_size: 1,
        max_ring_size: 1,
    }
}

/// What `lbd decap` attaches with.
pub struct DecapSpec<'a> {
    pub iface: &'a str,
    /// VIP addresses this backend serves.
    pub vips: &'a [IpAddr],
    /// This host's tunnel endpoints (empty: the interface's addresses).
    pub locals: &'a [IpAddr],
    /// The balancers' encapsulation sources: tunnels from anyone else are dropped.
    pub from: &'a [IpAddr],
    pub pin_dir: &'a Path,
    pub mode: XdpMode,
}

pub fn attach(spec: &DecapSpec) -> Result<()> {
    let DecapSpec {
        iface,
        vips,
        locals,
        from,
        pin_dir,
        mode,
    } = *spec;
    if from.is_empty() {
        bail!("no balancer address given (--from): lb_decap would drop every tunnel packet");
    }
    let locals = if locals.is_empty() {
        interface_addresses(iface)?
    } else {
        locals.to_vec()
    };
    if locals.is_empty() {
        bail!("{iface} has no addresses; pass --local");
    }
    let mut dp = Dataplane::load(&LoadOptions {
        sizes: sizes(),
        pin_dir: Some(pin_dir.to_path_buf()),
        programs: &[programs::DECAP],
    })
    .context("loading the dataplane")?;
    for v in vips {
        dp.add_decap_vip(&AddrKey::new(*v))
            .with_context(|| format!("adding VIP {v}"))?;
    }
    for l in &locals {
        dp.add_decap_local(&AddrKey::new(*l))
            .with_context(|| format!("adding local address {l}"))?;
    }
    for f in from {
        dp.add_decap_from(&AddrKey::new(*f))
            .with_context(|| format!("adding balancer address {f}"))?;
    }
    let how = attach::attach_pinned(
        dp.xdp(programs::DECAP)?,
        programs::DECAP,
        iface,
        mode,
        pin_dir,
    )?;
    info!(iface, ?vips, ?locals, ?from, attachment = %how, "lb_decap attached");
    Ok(())
}

pub fn detach(iface: &str, pin_dir: &Path) -> Result<()> {
    attach::detach_pinned(programs::DECAP, iface, pin_dir)?;
    attach::remove_pins(pin_dir)
}

/// Addresses configured on `iface` (IPv6 link-local excluded: never a tunnel endpoint).
pub fn interface_addresses(iface: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
        if ifa.interface_name != iface {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let ip = v6.ip();
            if ip.segments()[0] & 0xffc0 != 0xfe80 {
                out.push(IpAddr::V6(ip));
            }
        }
    }
    Ok(out)
}
