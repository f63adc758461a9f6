//! Rebuild the object when bpf-linker changes (a new linker can emit different BTF/relocations); cargo does not
//! track the linker binary by itself.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        // build.rs of lb-userspace reports the missing linker with the setup hint.
        Err(_) => println!("cargo:rerun-if-env-changed=PATH"),
    }
}
