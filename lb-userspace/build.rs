//! Builds the XDP object (`lb-ebpf`) into `OUT_DIR/lb-ebpf`, where `dataplane.rs` embeds it.

use std::{env, process::Command};

use anyhow::{Context as _, anyhow, bail};

/// The rustup name under which Debian's rustc (the one with a matching `core` source) is linked.
const EBPF_TOOLCHAIN: &str = "debian-rustc";

fn main() -> anyhow::Result<()> {
    check_toolchain()?;

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf package not found in the workspace"))?;
    let root_dir = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("lb-ebpf manifest has no parent directory"))?
        .as_str()
        .to_owned();

    // lb-common is compiled into the object too; aya-build only watches the eBPF crate itself (and cargo only
    // rebuilds us for lb-ebpf's *lib* through the build-dependency), so watch the shared crate's sources as well.
    let common = std::path::Path::new(&root_dir).join("../lb-common");
    println!("cargo:rerun-if-changed={}", common.display());

    // bpfel-unknown-none is a tier-3 target without a prebuilt `core`: it must be compiled with
    // `-Z build-std=core`. aya-build only passes that flag when the compiler is nightly or RUSTC_BOOTSTRAP=1 is
    // set in *its* environment; Debian's rustc is a stable build, so unlock unstable flags here. The variable is
    // inherited by the nested cargo, which needs it to accept `-Z` as well.
    // SAFETY: the build script is single-threaded at this point; nothing else reads the environment concurrently.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };

    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}

/// Fails early with a pointer to the setup command instead of a wall of linker or `core` errors.
fn check_toolchain() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    const HINT: &str = "run `cargo xtask setup`";
    if which_on_path("bpf-linker").is_none() {
        bail!("bpf-linker is not on PATH; {HINT}");
    }
    let linked = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "-V"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !linked {
        bail!("the `{EBPF_TOOLCHAIN}` rustup toolchain is not linked; {HINT}");
    }
    Ok(())
}

fn which_on_path(bin: &str) -> Option<std::path::PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}
