//! Builds the eBPF object (crate `minerwatch-ebpf`) for the BPF target, so the daemon embeds
//! exactly the programs it was compiled against.
//!
//! The inner build runs with the toolchain named in the workspace's `[workspace.metadata.ebpf]`
//! and one target directory (`target/ebpf`) whatever the outer profile, so a `cargo clippy`
//! or `cargo test` after a `cargo build` finds it built; it prints the eBPF crate's compiler
//! warnings and, when it fails, its whole log, and nothing else.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Message, MetadataCommand};

fn main() -> anyhow::Result<()> {
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "minerwatch-ebpf")
        .ok_or_else(|| anyhow!("minerwatch-ebpf package not found"))?;
    let ebpf_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let toolchain = metadata.workspace_metadata["ebpf"]["toolchain"]
        .as_str()
        .ok_or_else(|| anyhow!("[workspace.metadata.ebpf] toolchain missing from Cargo.toml"))?
        .to_string();
    let root = metadata.workspace_root.as_std_path();
    for dir in [ebpf_dir.as_std_path(), &root.join("common")] {
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    let target_dir = metadata.target_directory.as_std_path().join("ebpf");
    build(&toolchain, &target_dir, &out_dir.join("minerwatch"), root)
}

fn build(toolchain: &str, target_dir: &Path, dst: &Path, root: &Path) -> anyhow::Result<()> {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, "cargo", "build", "--quiet", "--release"])
        .args(["--package", "minerwatch-ebpf", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(root)
        // The outer build's compiler is not the one for this build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd.output().with_context(|| {
        format!("cannot run {cmd:?} (is rustup installed? `cargo xtask setup`)")
    })?;
    let mut object = None;
    for msg in Message::parse_stream(&out.stdout[..]).flatten() {
        match msg {
            Message::CompilerArtifact(a) if a.target.name == "minerwatch" => {
                object = a.executable.map(|p| p.into_std_path_buf());
            }
            Message::CompilerMessage(m) => {
                for line in m.message.rendered.unwrap_or_default().lines() {
                    println!("cargo:warning={line}");
                }
            }
            _ => {}
        }
    }
    if !out.status.success() {
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the eBPF object with the `{toolchain}` toolchain failed ({}); \
             `cargo xtask setup` installs what it needs",
            out.status
        );
    }
    let object = object.ok_or_else(|| anyhow!("the eBPF build produced no `minerwatch` object"))?;
    std::fs::copy(&object, dst)
        .with_context(|| format!("cannot copy {} to {}", object.display(), dst.display()))?;
    Ok(())
}
