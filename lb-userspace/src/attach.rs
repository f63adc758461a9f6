//! Attaching an XDP program so that it outlives the daemon: through a BPF link pinned on bpffs. A later daemon finds
//! the pin, adopts the link and atomically swaps its freshly loaded program in (`bpf_link_update`), so the interface
//! is never without a program, not even for one packet, across restarts and upgrades.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::programs::Xdp;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use tracing::{info, warn};

use crate::config::XdpMode;

/// The pinned link of `program` on `interface` (one per interface and program, so `lb_xdp` and `lb_decap` on
/// different interfaces can share a pin directory).
pub fn link_pin_path(pin_dir: &Path, program: &str, interface: &str) -> PathBuf {
    pin_dir.join(format!("link_{program}_{interface}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// A pinned link was found and now runs the new program.
    Adopted,
    Native,
    Generic,
}

impl std::fmt::Display for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attachment::Adopted => "adopted pinned link",
            Attachment::Native => "native",
            Attachment::Generic => "generic",
        })
    }
}

/// Makes `prog` (loaded) the XDP program of `interface`, through a link pinned at `link_pin_path`.
pub fn attach_pinned(
    prog: &mut Xdp,
    program: &str,
    interface: &str,
    mode: XdpMode,
    pin_dir: &Path,
) -> Result<Attachment> {
    std::fs::create_dir_all(pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let path = link_pin_path(pin_dir, program, interface);
    if path.exists() {
        let pinned = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening pinned link {}", path.display()))?;
        let fd_link: FdLink = pinned.into();
        let link = XdpLink::try_from(fd_link)
            .with_context(|| format!("{} is not an XDP link", path.display()))?;
        match prog.attach_to_link(link) {
            Ok(_) => {
                info!(interface, link = %path.display(),
                    "adopted the pinned XDP link; the new program replaced the old atomically");
                return Ok(Attachment::Adopted);
            }
            // A link whose interface went away (ENOLINK, "severed") forwards nothing; replace it.
            Err(e) => {
                warn!(interface, link = %path.display(), error = %e, "pinned XDP link is defunct; attaching afresh");
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }

    let (id, how) = match mode {
        XdpMode::Native => (
            prog.attach(interface, aya::programs::XdpMode::Driver)
                .context("native XDP attach")?,
            Attachment::Native,
        ),
        XdpMode::Generic => (
            prog.attach(interface, aya::programs::XdpMode::Skb)
                .context("generic XDP attach")?,
            Attachment::Generic,
        ),
        XdpMode::Auto => match prog.attach(interface, aya::programs::XdpMode::Driver) {
            Ok(id) => (id, Attachment::Native),
            Err(e) => {
                warn!(interface, error = %e, "native XDP attach failed; falling back to generic (slower) mode");
                (
                    prog.attach(interface, aya::programs::XdpMode::Skb)
                        .context("generic XDP attach")?,
                    Attachment::Generic,
                )
            }
        },
    };
    let link = prog
        .take_link(id)
        .context("taking ownership of the XDP link")?;
    let fd_link = match FdLink::try_from(link) {
        Ok(l) => l,
        // Only kernels without BPF links for XDP (< 5.9) attach through netlink; such an attachment cannot be
        // pinned, and dropping it would detach the program.
        Err(e) => {
            bail!("the kernel attached {program} through netlink, which cannot be pinned: {e}")
        }
    };
    fd_link
        .pin(&path)
        .with_context(|| format!("pinning the XDP link at {}", path.display()))?;
    info!(interface, mode = %how, link = %path.display(), "attached {program}");
    Ok(how)
}

/// Detaches by removing the pin (the link dies with its last reference). Returns whether a pin existed.
pub fn detach_pinned(program: &str, interface: &str, pin_dir: &Path) -> Result<bool> {
    let path = link_pin_path(pin_dir, program, interface);
    if !path.exists() {
        return Ok(false);
    }
    let pinned = PinnedLink::from_pin(&path)
        .with_context(|| format!("opening pinned link {}", path.display()))?;
    drop(
        pinned
            .unpin()
            .with_context(|| format!("removing {}", path.display()))?,
    );
    info!(interface, "detached {program}");
    Ok(true)
}

/// Removes every pin in `pin_dir` (maps and links) and the directory itself.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pin_dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    info!(pin_dir = %pin_dir.display(), "removed pins");
    Ok(())
}

/// The interface's index, or an error naming it.
pub fn ifindex(interface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(interface).context("interface name contains NUL")?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!(
            "no interface named {interface:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(idx)
}

/// The forwarding sysctls of `interface` that are off (`bpf_fib_lookup` needs them on, per family). Read through
/// /proc/sys/net, which shows the calling process's network namespace.
pub fn forwarding_disabled(interface: &str) -> Vec<String> {
    [
        format!("net/ipv4/conf/{interface}/forwarding"),
        format!("net/ipv6/conf/{interface}/forwarding"),
    ]
    .into_iter()
    .filter(|key| {
        std::fs::read_to_string(format!("/proc/sys/{key}")).is_ok_and(|v| v.trim() == "0")
    })
    .map(|key| key.replace('/', "."))
    .collect()
}
