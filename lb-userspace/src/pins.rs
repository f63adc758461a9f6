//! What lbd keeps on bpffs, and how it guards it. One pin directory per dataplane (`daemon.pin_dir`, or `lbd
//! decap --pin-dir`):
//!
//! ```text
//! <pin_dir>/link_<program>_<interface>   the XDP link (what keeps the program attached after lbd exits)
//! <pin_dir>/maps-v<LAYOUT_VERSION>/      the maps, laid out as this build lays them out
//! <pin_dir>/maps-v<N>-staging/           maps being filled by an upgrade (incomplete: removed on sight)
//! <pin_dir>/maps-v<N>-ready/             maps an upgrade filled completely (the next step is the program swap)
//! ```
//! (`-`, not `.`: bpffs refuses names with a dot, it keeps them for itself.)
//!
//! While lbd works on a pin directory it holds an exclusive lock on it (two daemons on one dataplane would undo
//! each other's writes). It removes only its own pins, never anything else another tool pinned beside them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use lb_common::{LAYOUT_VERSION, maps};
use tracing::info;

/// `statfs` type of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A pin directory, locked for this process while the value lives.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    /// The directory, flocked exclusively; the lock goes with the descriptor.
    _lock: File,
}

impl PinDir {
    /// Creates (if needed) and locks `path`. It must be absolute and on bpffs: a pin anywhere else is not a pin,
    /// and a relative path would depend on where lbd was started.
    pub fn open(path: &Path) -> Result<PinDir> {
        ensure!(
            path.is_absolute(),
            "pin directory {}: must be an absolute path on bpffs",
            path.display()
        );
        // The file system is asked of the deepest directory that exists, so nothing is created where it is not bpffs.
        let existing = path
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        let statfs = nix::sys::statfs::statfs(existing)
            .with_context(|| format!("statfs {}", existing.display()))?;
        ensure!(
            statfs.filesystem_type().0 as i64 == BPF_FS_MAGIC,
            "pin directory {}: not on bpffs (mount -t bpf bpf /sys/fs/bpf; `lbd` must see the host's bpffs: \
             run it with `nsenter --net`, not `ip netns exec`)",
            path.display()
        );
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let lock = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                bail!(
                    "pin directory {} is in use by another lbd (it holds the directory's lock); two daemons must \
                     not drive one dataplane",
                    path.display()
                );
            }
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
        Ok(PinDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where this build's maps are pinned.
    pub fn maps_dir(&self) -> PathBuf {
        maps_dir(&self.path)
    }

    /// Where an upgrade fills new maps before they are complete.
    pub fn staging_dir(&self) -> PathBuf {
        self.versioned(LAYOUT_VERSION, "-staging")
    }

    /// Where an upgrade's maps wait, complete, for the program swap.
    pub fn ready_dir(&self) -> PathBuf {
        self.versioned(LAYOUT_VERSION, "-ready")
    }

    fn versioned(&self, version: u32, suffix: &str) -> PathBuf {
        self.path.join(format!("maps-v{version}{suffix}"))
    }

    /// The maps directories present, by layout version, complete ones only (`maps-v<N>`), plus version 1 when a
    /// build before the layout stamp pinned its maps directly in the pin directory.
    pub fn layouts(&self) -> Result<Vec<u32>> {
        let mut found = Vec::new();
        for entry in read_dir(&self.path)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(v) = name
                .strip_prefix("maps-v")
                .and_then(|v| v.parse::<u32>().ok())
            {
                found.push(v);
            }
        }
        if maps::ALL.iter().any(|m| self.path.join(m).exists()) {
            found.push(1);
        }
        found.sort_unstable();
        Ok(found)
    }

    /// The directory holding the maps of `layout` (version 1: the pin directory itself).
    pub fn layout_dir(&self, layout: u32) -> PathBuf {
        if layout == 1 {
            self.path.clone()
        } else {
            self.versioned(layout, "")
        }
    }

    /// Unpins the maps of `layout` (only the names this project uses) and removes its directory. Maps stay alive
    /// while a program or a process still holds them.
    pub fn remove_layout(&self, layout: u32) -> Result<()> {
        let dir = self.layout_dir(layout);
        remove_maps(&dir)?;
        if layout != 1 {
            remove_dir_if_there(&dir)?;
        }
        Ok(())
    }

    /// Unpins an upgrade's unfinished staging maps, if any.
    pub fn remove_staging(&self) -> Result<()> {
        let dir = self.staging_dir();
        remove_maps(&dir)?;
        remove_dir_if_there(&dir)
    }

    /// Makes `from` (a staging or ready directory) this build's maps directory.
    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        std::fs::rename(from, to)
            .with_context(|| format!("renaming {} to {}", from.display(), to.display()))
    }

    /// The pinned XDP links in the directory, as (program, interface).
    pub fn links(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for entry in read_dir(&self.path)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("link_") {
                for program in lb_common::programs::PRODUCTION {
                    if let Some(iface) = rest.strip_prefix(&format!("{program}_")) {
                        out.push((program.to_string(), iface.to_string()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes every map pin of this project (all layouts, staging included) and the pin directory when nothing
    /// else is left in it. Links are the caller's to remove first.
    pub fn remove_all_maps(&self) -> Result<()> {
        for layout in self.layouts()? {
            self.remove_layout(layout)?;
        }
        for dir in [self.staging_dir(), self.ready_dir()] {
            remove_maps(&dir)?;
            remove_dir_if_there(&dir)?;
        }
        let left = read_dir(&self.path)?.len();
        if left == 0 {
            std::fs::remove_dir(&self.path)
                .with_context(|| format!("removing {}", self.path.display()))?;
            info!(pin_dir = %self.path.display(), "removed the pin directory");
        } else {
            info!(pin_dir = %self.path.display(), left, "kept the pin directory: it holds pins of others");
        }
        Ok(())
    }
}

/// Where this build's maps are pinned under `pin_dir` (for tools that read them without taking the lock).
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("maps-v{LAYOUT_VERSION}"))
}

fn read_dir(path: &Path) -> Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Unpins the project's maps (by name) in `dir`.
fn remove_maps(dir: &Path) -> Result<()> {
    for name in maps::ALL {
        let path = dir.join(name);
        // bpffs answers EPERM, not ENOENT, for a name under a directory that does not exist.
        if !path.exists() {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

fn remove_dir_if_there(dir: &Path) -> Result<()> {
    // bpffs answers EPERM, not ENOENT, for a directory that does not exist.
    if !dir.exists() {
        return Ok(());
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "removing {} (something other than lbd's maps is pinned in it)",
                dir.display()
            )
        }),
    }
}
