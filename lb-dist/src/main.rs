//! `lb-dist OUT_DIR`: writes the generated files of the Debian package, from the same clap types the binaries
//! parse, so a man page or a completion never describes an option that is not there:
//!
//! ```text
//! OUT_DIR/man/lbd.8, lbd-decap.8, lbctl.8, lbctl-vip-add.8, ...     every command and subcommand
//! OUT_DIR/completions/bash/{lbd,lbctl}                              names bash-completion loads on demand
//! OUT_DIR/completions/zsh/{_lbd,_lbctl}
//! OUT_DIR/completions/fish/{lbd,lbctl}.fish
//! ```
//! lb-userspace's `[package.metadata.deb]` assets name these paths.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use lb_userspace::cli::{lbctl, lbd};

/// Both commands need root (BPF, XDP, the root-only control socket): system administration.
const MAN_SECTION: &str = "8";

fn main() -> Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: lb-dist OUT_DIR")?;
    // Start empty, so a renamed or removed subcommand leaves no stale page for the package to pick up.
    for sub in ["man", "completions"] {
        let dir = out.join(sub);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    for cmd in [lbd::Cli::command(), lbctl::Cli::command()] {
        man_pages(cmd.clone(), &out.join("man"))?;
        completions(cmd, &out.join("completions"))?;
    }
    println!("lb-dist: wrote {}", out.display());
    Ok(())
}

/// One page per command and subcommand, like clap_mangen::generate_to but in section 8 and with the package's
/// name and version as the source on every page (subcommands carry no version of their own).
fn man_pages(cmd: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    let mut stack = vec![cmd];
    while let Some(cmd) = stack.pop() {
        stack.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let path = clap_mangen::Man::new(cmd)
            .section(MAN_SECTION)
            .source(&source)
            .generate_to(dir)
            .with_context(|| format!("writing a man page into {}", dir.display()))?;
        println!("lb-dist: {}", path.display());
    }
    Ok(())
}

fn completions(mut cmd: clap::Command, dir: &Path) -> Result<()> {
    let name = cmd.get_name().to_owned();
    for (shell, file) in [
        (Shell::Bash, name.clone()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let dir = dir.join(shell.to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(file);
        let mut f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        clap_complete::generate(shell, &mut cmd, &name, &mut f);
        println!("lb-dist: {}", path.display());
    }
    Ok(())
}
