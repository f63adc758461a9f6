//! `cargo xtask dist [--output PATH]`: the Debian package, made by cargo-deb from lb-userspace's
//! `[package.metadata.deb]`: release lbd and lbctl, the man pages and completions lb-dist renders from their clap
//! definitions, the systemd unit, /etc/lbd/lbd.toml, the Grafana dashboard and the Prometheus alert rules.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::cmd::{self, exec, phase, probe};
use crate::setup;

#[derive(Args)]
pub struct DistArgs {
    /// Skip `cargo xtask setup` (it installs cargo-deb and dpkg-dev, among the rest of the toolchain).
    #[arg(long)]
    no_setup: bool,
    /// Where the .deb goes: a directory or a file name (default: cargo-deb's, <target>/debian/).
    #[arg(long)]
    output: Option<PathBuf>,
}

pub fn run(args: &DistArgs) -> Result<()> {
    if !args.no_setup {
        setup::run()?;
    }
    if probe(cmd::cargo().args(["deb", "--version"])).is_none() {
        bail!("cargo-deb is not installed; run `cargo xtask setup`");
    }
    let root = cmd::workspace_root();
    phase("build lbd, lbctl and lb-dist (release)");
    exec(&mut cmd::release_bins(&["lb-dist"]))?;

    phase("man pages and completions (lb-dist)");
    let release = cmd::target_dir().join("release");
    // lb-userspace's deb assets read this directory (target/release/lbd-dist).
    let generated = release.join("lbd-dist");
    exec(Command::new(release.join("lb-dist")).arg(&generated))?;
    // cargo-deb gzips man pages only when they are not under the target directory; Debian wants them gzipped.
    // -n: no name or time stamp inside, so the same pages make the same bytes.
    let man = generated.join("man");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)
        .with_context(|| format!("reading {}", man.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    pages.sort();
    exec(Command::new("gzip").args(["-9nf"]).args(&pages))?;

    phase("package (cargo deb)");
    let mut deb = cmd::cargo();
    deb.current_dir(&root)
        .args(["deb", "-p", "lb-userspace", "--no-build"]);
    if let Some(out) = &args.output {
        // Relative to where the command was typed, not to the workspace cargo-deb runs in.
        deb.arg("--output").arg(std::env::current_dir()?.join(out));
    }
    // cargo-deb prints the path of the package as its last line.
    exec(&mut deb)
}
