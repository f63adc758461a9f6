//! `lbd decap`: the backend side. Attaches `lb_decap` (pinned, so it outlives the command) and fills its three maps:
//! the VIPs this backend serves, its own tunnel endpoint addresses, and the balancers it accepts tunnels from.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use lb_common::{AddrKey, programs};
use tracing::{info, warn};

use crate::attach;
use crate::config::XdpMode;
use crate::dataplane::{Dataplane, LoadOptions, MapSizes};
use crate::layout::{self, Plan};
use crate::pins::PinDir;

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
    let pins = PinDir::open(pin_dir)?;
    // lb_decap's maps hold only what these commands give (VIPs, local and balancer addresses): maps of another
    // layout or size are replaced, not carried over. Interfaces attached with them keep their programs and old
    // maps until `lbd decap` runs for them again.
    if !matches!(layout::plan(&pins, &sizes()), Ok(Plan::Fresh | Plan::Adopt)) {
        let others: Vec<String> = pins
            .links()?
            .into_iter()
            .filter(|(p, i)| p == programs::DECAP && i != iface)
            .map(|(_, i)| i)
            .collect();
        warn!(
            ?others,
            "replacing lb_decap's pinned maps (another layout or size); run lbd decap again for the other interfaces"
        );
        pins.remove_all_maps()?;
    }
    let mut dp = Dataplane::load(&LoadOptions {
        sizes: sizes(),
        pin_dir: Some(pins.maps_dir()),
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
        pins.path(),
    )?;
    info!(iface, ?vips, ?locals, ?from, attachment = %how, "lb_decap attached");
    Ok(())
}

/// Removes lb_decap from `iface` only; the maps go with the last interface's link.
pub fn detach(iface: &str, pin_dir: &Path) -> Result<()> {
    let pins = PinDir::open(pin_dir)?;
    if !attach::detach_pinned(programs::DECAP, iface, pins.path())? {
        warn!(iface, pin_dir = %pin_dir.display(), "no pinned lb_decap link for this interface");
    }
    let others = pins
        .links()?
        .into_iter()
        .filter(|(p, _)| p == programs::DECAP)
        .count();
    if others == 0 {
        pins.remove_all_maps()?;
    } else {
        info!(
            others,
            "lb_decap stays attached elsewhere: its maps are kept"
        );
    }
    Ok(())
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
