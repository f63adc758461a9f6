//! RAII guards for what tests start or create outside the process: child processes, temp directories, bpffs pin
//! directories. Each is removed on drop, also after a panic, and what a killed run left behind is removed by the
//! next one ([`cleanup_stale`]; the namespaces have their own in `netns`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::netns;

/// A child process killed (SIGKILL) and reaped on drop; it also dies with this process (PR_SET_PDEATHSIG), so a
/// killed test never leaves servers behind.
pub struct ChildGuard {
    child: Child,
    what: String,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command, what: &str) -> ChildGuard {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what} ({cmd:?}): {e}"));
        ChildGuard {
            child,
            what: what.to_string(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the process has exited (after a signal or a shutdown request); panics after `limit` with
    /// `explain()`.
    pub fn wait_exit(&mut self, limit: Duration, explain: impl FnOnce() -> String) {
        let what = format!("{} to exit", self.what);
        super::wait::until_true(
            &what,
            limit,
            Duration::from_millis(20),
            || !self.alive(),
            explain,
        );
    }

    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = unique_path(&std::env::temp_dir(), tag);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const BPFFS: &str = "/sys/fs/bpf";

/// A directory on the host's bpffs for one run's pins; removing it unpins everything in it.
pub struct BpffsDir(PathBuf);

impl BpffsDir {
    pub fn new(tag: &str) -> BpffsDir {
        ensure_bpffs();
        BpffsDir(unique_path(Path::new(BPFFS), tag))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there (`cargo xtask setup` does it too).
pub fn ensure_bpffs() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(BPFFS) && l.contains(" bpf "))
    {
        return;
    }
    netns::run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]));
}

static UNIQUE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `<base>/lbt-<tag>-<pid>-<n>`: the same naming as the namespaces, so [`cleanup_stale`] can tell whose it is.
fn unique_path(base: &Path, tag: &str) -> PathBuf {
    let n = UNIQUE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    base.join(format!("lbt-{tag}-{}-{n}", std::process::id()))
}

/// Removes bpffs pin directories and temp directories left by lab runs whose process is gone.
pub fn cleanup_stale() {
    for base in [Path::new(BPFFS).to_path_buf(), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("lbt-") else {
                continue;
            };
            let mut parts = rest.rsplitn(3, '-');
            let (Some(_n), Some(pid), Some(_tag)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
