//! `cargo xtask setup`: the toolchain recipe of TOOLCHAIN.md as an idempotent program. Every step checks first
//! and says whether it acts or skips, so a second run changes nothing and CI logs show what was installed.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{self, exec, probe};

/// Debian's compiler and its library source: the only pair that builds `core` for bpfel here (TOOLCHAIN.md);
/// its clippy lints lb-ebpf.
const RUST_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "rust-web-clippy"];
/// Tools the tests and the lab call: `ip` (netns, veth, neigh), `sysctl`, `nsenter`/`mount`/`setpriv`, `ethtool` (the
/// lab's clients checksum in software), `ss`, `strace` (what lbd calls, against the unit's SystemCallFilter).
const RUNTIME_PACKAGES: &[&str] = &["iproute2", "procps", "util-linux", "ethtool", "strace"];
/// What `cargo xtask loadtest` (and its smoke test in the suite) runs: trafgen, wrk, iperf3, HAProxy, nginx (the
/// backends of the wrk phase), nft, and the font its PNG chart is drawn with.
const LOADTEST_PACKAGES: &[&str] = &[
    "netsniff-ng",
    "wrk",
    "iperf3",
    "haproxy",
    "nginx",
    "nftables",
    "fonts-dejavu-core",
];
/// What `cargo xtask dist` and its test use: dpkg-shlibdeps (cargo-deb's `$auto` dependencies), systemd-analyze (to
/// verify the packaged unit), and zsh and fish (to check the packaged completions; bash is always there).
const PACKAGING_PACKAGES: &[&str] = &["dpkg-dev", "systemd", "zsh", "fish"];
/// The BGP speaker of the ECMP lab and its tests (`cargo xtask demo ecmp`, tests/ecmp.rs): every balancer and the
/// router run their own `bird` inside a namespace.
const BGP_PACKAGES: &[&str] = &["bird2"];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-deb builds the .deb (`cargo xtask dist`); 3.8 needs rustc 1.85.
const CARGO_DEB_VERSION: &str = "3.8.0";
/// aya-build runs `rustup run <this>`; lb-userspace/build.rs names it.
const TOOLCHAIN_NAME: &str = "debian-rustc";
const BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> Result<()> {
    cmd::phase("setup");
    require_root()?;
    let mut apt = Apt::default();
    apt.ensure(RUST_PACKAGES.iter().chain(RUNTIME_PACKAGES))?;
    // HAProxy and iperf3 ship services; the load test runs its own instances in namespaces, never these.
    no_service_starts(|| apt.ensure(LOADTEST_PACKAGES))?;
    no_service_starts(|| apt.ensure(PACKAGING_PACKAGES))?;
    // bird2's own service would run a BIRD in the host's namespace; the lab's run only inside its namespaces.
    no_service_starts(|| apt.ensure(BGP_PACKAGES))?;
    // The LLVM that bpf-linker links must be the one Debian's rustc emits bitcode for; ask the compiler.
    let llvm = llvm_major()?;
    println!("setup: Debian rustc uses LLVM {llvm}");
    apt.ensure(&[format!("llvm-{llvm}-dev")])?;
    link_toolchain()?;
    bpf_linker(llvm)?;
    cargo_deb()?;
    nextest();
    bpffs()?;
    println!("setup: done");
    Ok(())
}

fn require_root() -> Result<()> {
    // The euid owns /proc/self; this needs no libc binding.
    let uid = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    if uid != 0 {
        bail!(
            "setup must run as root (uid 0, not {uid}): it installs packages, mounts bpffs, and the tests load \
             XDP programs and create network namespaces. Re-run with sudo or as root."
        );
    }
    Ok(())
}

#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn ensure<S: AsRef<str>>(&mut self, pkgs: impl IntoIterator<Item = S>) -> Result<()> {
        let missing: Vec<String> = pkgs
            .into_iter()
            .map(|p| p.as_ref().to_string())
            .filter(|p| !installed(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        println!("setup: installing {}", missing.join(" "));
        if !self.updated {
            exec(apt_get().args(["update", "-qq"]))?;
            self.updated = true;
        }
        exec(
            apt_get()
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing),
        )
    }
}

/// Runs `f` with Debian's policy-rc.d hook refusing every service start (exit 101), unless the machine already
/// has a policy of its own (containers usually do), which is left as it is.
fn no_service_starts(f: impl FnOnce() -> Result<()>) -> Result<()> {
    const POLICY: &str = "/usr/sbin/policy-rc.d";
    if std::path::Path::new(POLICY).exists() {
        return f();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(
        POLICY,
        "#!/bin/sh\n# cargo xtask setup: no service starts while it installs\nexit 101\n",
    )
    .with_context(|| format!("writing {POLICY}"))?;
    std::fs::set_permissions(POLICY, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {POLICY}"))?;
    let result = f();
    let removed = std::fs::remove_file(POLICY).with_context(|| format!("removing {POLICY}"));
    result.and(removed)
}

fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn installed(pkg: &str) -> bool {
    let ok = probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.ends_with("install ok installed"));
    if ok {
        println!("setup: {pkg} present");
    }
    ok
}

fn llvm_major() -> Result<u32> {
    let out = probe(Command::new("/usr/bin/rustc").arg("-vV"))
        .context("/usr/bin/rustc -vV failed although rustc-web is installed")?;
    out.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no `LLVM version: N` line in /usr/bin/rustc -vV:\n{out}"))
}

fn link_toolchain() -> Result<()> {
    if let Some(v) = probe(Command::new("rustup").args(["run", TOOLCHAIN_NAME, "rustc", "-V"])) {
        println!("setup: rustup toolchain {TOOLCHAIN_NAME} present ({v})");
        return Ok(());
    }
    if probe(Command::new("rustup").arg("--version")).is_none() {
        bail!("rustup is required (the userspace crates build with rustup's stable toolchain)");
    }
    println!("setup: registering Debian's rustc with rustup as {TOOLCHAIN_NAME}");
    exec(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN_NAME, "/usr"]))
}

fn bpf_linker(llvm: u32) -> Result<()> {
    cargo_tool(
        "bpf-linker",
        BPF_LINKER_VERSION,
        Command::new("bpf-linker").arg("--version"),
        |c| {
            println!(
                "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (about 75 s on 2 cores)"
            );
            c.env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}")).args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm}"),
            ]);
        },
    )
}

fn cargo_deb() -> Result<()> {
    cargo_tool(
        "cargo-deb",
        CARGO_DEB_VERSION,
        cmd::cargo().args(["deb", "--version"]),
        |_| {
            println!("setup: building cargo-deb {CARGO_DEB_VERSION} (about a minute on 2 cores)");
        },
    )
}

/// `cargo install --locked NAME@VERSION`, adjusted by `adjust`, unless `probe` prints exactly `NAME VERSION`.
fn cargo_tool(
    name: &str,
    version: &str,
    probe_cmd: &mut Command,
    adjust: impl FnOnce(&mut Command),
) -> Result<()> {
    let want = format!("{name} {version}");
    if let Some(v) = probe(probe_cmd) {
        if v == want {
            println!("setup: {v} present");
            return Ok(());
        }
        println!("setup: found `{v}`, need {want}");
    }
    let mut install = cmd::cargo();
    install.args(["install", "--locked", &format!("{name}@{version}")]);
    adjust(&mut install);
    exec(&mut install)
}

fn nextest() {
    match probe(cmd::cargo().args(["nextest", "--version"])) {
        Some(v) => println!(
            "setup: {} present",
            v.lines().next().unwrap_or("cargo-nextest")
        ),
        None => println!(
            "setup: cargo-nextest absent; `cargo xtask test` will fall back to `cargo test`"
        ),
    }
}

pub fn has_nextest() -> bool {
    probe(cmd::cargo().args(["nextest", "--version"])).is_some()
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == BPFFS && f[2] == "bpf"
    });
    if mounted {
        println!("setup: bpffs mounted at {BPFFS}");
        return Ok(());
    }
    println!("setup: mounting bpffs at {BPFFS} (lbd pins its maps and link there)");
    exec(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}
