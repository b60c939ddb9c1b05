//! Rebuild the eBPF object when the bpf-linker binary changes: it is an undeclared
//! dependency of the build (Cargo has no way to declare a tool dependency).
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask setup`"),
    }
}
