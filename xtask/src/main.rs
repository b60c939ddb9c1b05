//! `cargo xtask …`: what Cargo cannot do by itself. Bootstrap the eBPF toolchain (nightly
//! rust-src, bpf-linker built against nightly's own LLVM), install the Debian packages the
//! tests need, then build, run the sensor, or run every test.
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod delivery;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need; quick when everything is there.
    Setup,
    /// Set up, then build the release binary (target/release/minerwatch).
    Build,
    /// Set up, build, and run the sensor in the foreground. Arguments after `--` go to
    /// `minerwatch run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and measure the sensor's own cost (needs root).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Set up, build, and run every test (unit and end-to-end; needs root).
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Everything: overhead against auditd and bpftrace, the sensor's own cost, throughput,
    /// detection latency and per-hook BPF cost, into results/bench.md and results/overhead.svg.
    All {
        /// Seconds instead of minutes: what CI runs so the bench cannot rot.
        #[arg(long)]
        smoke: bool,
    },
    /// Idle CPU and RSS, and CPU, RSS and drops in an exec storm paced at 5,000/s.
    Sensor {
        #[arg(long)]
        smoke: bool,
    },
    /// Events per second from one sensor to the collector, and alert delivery latency.
    Delivery {
        #[arg(long)]
        smoke: bool,
    },
}

/// Debian packages the tests use, with a command each provides.
const DEBIAN: &[(&str, &str)] = &[
    ("iproute2", "ip"),       // network namespaces for the real-miner test
    ("npm", "npm"),           // `npm pack` fetches the XMRig the real-miner test runs
    ("auditd", "auditctl"),   // the benchmark compares against auditd...
    ("bpftrace", "bpftrace"), // ...and against a bpftrace script
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub(crate) fn step(what: &str) {
    eprintln!("==> {what}");
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.stderr(Stdio::null()).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn have(cmd: &str) -> bool {
    output(Command::new("sh").args(["-c", &format!("command -v {cmd}")])).is_some()
}

fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn setup() -> Result<()> {
    step("checking the nightly toolchain and rust-src");
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !comps.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    step("checking bpf-linker");
    let linker = cargo_bin_dir().join("bpf-linker");
    if !linker.exists() && !have("bpf-linker") {
        install_bpf_linker()?;
    }

    step("checking Debian packages the tests need");
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(_, cmd)| !have(cmd))
        .map(|(p, _)| *p)
        .collect();
    if !missing.is_empty() {
        eprintln!("    installing {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

/// bpf-linker must use the LLVM of the nightly that compiles the eBPF crate. No LLVM of that
/// version is packaged here, but nightly ships `libLLVM.so.<ver>-rust-*` exporting the C API:
/// point bpf-linker's build at it through a stub `llvm-config`.
fn install_bpf_linker() -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    // libLLVM.so.22.1-rust-1.97.0-nightly -> 22.1
    let name = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let version = name
        .trim_start_matches("libLLVM.so.")
        .split('-')
        .next()
        .unwrap_or_default()
        .to_string();
    let major = version.split('.').next().unwrap_or_default().to_string();
    if major.parse::<u32>().is_err() {
        bail!("cannot tell the LLVM version of {name}");
    }
    let shim = root().join("target").join("llvm-shim");
    std::fs::create_dir_all(shim.join("bin"))?;
    std::fs::create_dir_all(shim.join("lib"))?;
    let config = shim.join("bin").join("llvm-config");
    std::fs::write(&config, format!("#!/bin/sh\necho {version}\n"))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o755))?;
    let link = shim.join("lib").join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    step(&format!(
        "building bpf-linker against nightly's LLVM {version} (a few minutes, once)"
    ));
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &shim))
}

fn build() -> Result<()> {
    setup()?;
    // Every binary at once: the sensor, the collector and the test clients share one
    // feature resolution, so the test run that follows rebuilds nothing.
    step("building minerwatch and minerwatch-collector (release)");
    run(Command::new("cargo")
        .args(["build", "--release", "--bins"])
        .current_dir(root()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Build => build(),
        Cmd::Run { args } => build().and_then(|()| {
            step("starting the sensor (Ctrl-C stops it)");
            let bin = root().join("target/release/minerwatch");
            let err =
                std::os::unix::process::CommandExt::exec(Command::new(bin).arg("run").args(args));
            Err(err).context("cannot exec target/release/minerwatch")
        }),
        Cmd::Bench { what } => build().and_then(|()| {
            let sizes = |smoke| {
                if smoke {
                    bench::Sizes::smoke()
                } else {
                    bench::Sizes::full()
                }
            };
            match what {
                BenchCmd::All { smoke } => bench::all(&root(), &sizes(smoke)),
                BenchCmd::Sensor { smoke } => bench::sensor(&root(), &sizes(smoke)),
                BenchCmd::Delivery { smoke } => bench::delivery(&root(), &sizes(smoke)),
            }
        }),
        Cmd::Test { filter } => build().and_then(|()| {
            step("checking formatting and lints");
            run(Command::new("cargo")
                .args(["fmt", "--all", "--", "--check"])
                .current_dir(root()))?;
            run(Command::new("cargo")
                .args([
                    "clippy",
                    "--release",
                    "--workspace",
                    "--exclude",
                    "sensor-ebpf",
                    "--all-targets",
                ])
                .args(["--", "-D", "warnings"])
                .current_dir(root()))?;
            step("running every test");
            let mut cmd = Command::new("cargo");
            cmd.args(["test", "--release"]).current_dir(root());
            cmd.env("MINERWATCH_BIN", root().join("target/release/minerwatch"));
            // Every end-to-end test must run: a missing root is a failure, not a skip.
            cmd.env("MINERWATCH_E2E", "required");
            cmd.arg("--").arg("--test-threads=1");
            let filtered = filter.is_some();
            if let Some(f) = filter {
                cmd.arg(f);
            }
            run(&mut cmd)?;
            if filtered {
                return Ok(());
            }
            step("benchmark smoke run (seconds; the full run is `cargo xtask bench all`)");
            bench::all(&root(), &bench::Sizes::smoke())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
