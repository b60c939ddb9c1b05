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
    ("iproute2", "ip"),         // network namespaces for the real-miner test
    ("npm", "npm"),             // `npm pack` fetches the XMRig the real-miner test runs
    ("auditd", "auditctl"),     // the benchmark compares against auditd...
    ("bpftrace", "bpftrace"),   // ...and against a bpftrace script
    ("procps", "sysctl"),       // the tuning test reserves huge pages through sysctl(8)
    ("stress-ng", "stress-ng"), // benign workloads that must stay below medium...
    ("openssl", "openssl"),
    ("python3-numpy", "f2py3"),  // ...NumPy on a BLAS
    ("dnsmasq-base", "dnsmasq"), // the name server the DNS test's lookups go to
    ("slurm-wlm", "slurmctld"),  // a one-node Slurm cluster for the job tests...
    ("munge", "munged"),         // ...and its authentication
    ("gcc", "cc"),               // builds the NVML stand-in the GPU test loads
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

/// The eBPF toolchain as the workspace's `[workspace.metadata.ebpf]` names it: the channel,
/// and the compiler the project was last built and tested with.
pub(crate) fn ebpf_toolchain() -> Result<(String, String)> {
    let text = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let doc: toml::Table = text.parse().context("Cargo.toml")?;
    let ebpf = &doc["workspace"]["metadata"]["ebpf"];
    let get = |k: &str| {
        ebpf.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .with_context(|| format!("[workspace.metadata.ebpf] {k} missing from Cargo.toml"))
    };
    Ok((get("toolchain")?, get("tested")?))
}

fn setup() -> Result<()> {
    let (nightly, tested) = ebpf_toolchain()?;
    step(&format!("checking the {nightly} toolchain and rust-src"));
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with(&nightly)) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &nightly,
            "--profile",
            "minimal",
        ]))?;
    }
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        &nightly,
        "--installed",
    ]))
    .unwrap_or_default();
    if !comps.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &nightly,
        ]))?;
    }
    let found = output(
        Command::new("rustc")
            .arg(format!("+{nightly}"))
            .arg("--version"),
    )
    .unwrap_or_default();
    if found.trim() != tested {
        eprintln!(
            "    note: the eBPF crate was last built and tested with {tested}; this machine's \
             {nightly} is {}. Building with it; if the eBPF build or the verifier fails, this \
             is what changed.",
            found.trim()
        );
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
    let (nightly, _) = ebpf_toolchain()?;
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{nightly}"))
            .args(["--print", "sysroot"]),
    )
    .with_context(|| format!("rustc +{nightly} --print sysroot"))?;
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

/// Set-up and build, formatting and lints, every test, the benchmark smoke run; a table of
/// what each phase cost at the end, whether it passed or not.
fn test(filter: Option<String>) -> Result<()> {
    let mut phases: Vec<(&str, std::time::Duration, bool)> = Vec::new();
    let mut phase = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| {
        let t = std::time::Instant::now();
        let r = f();
        phases.push((name, t.elapsed(), r.is_ok()));
        r
    };
    let filtered = filter.is_some();
    let result = (|| {
        phase("set-up and build", &mut build)?;
        phase("formatting", &mut || {
            step("checking formatting");
            run(Command::new("cargo")
                .args(["fmt", "--all", "--", "--check"])
                .current_dir(root()))
        })?;
        phase("clippy", &mut || {
            step("clippy on the workspace");
            run(Command::new("cargo")
                .args([
                    "clippy",
                    "--release",
                    "--workspace",
                    "--exclude",
                    "minerwatch-ebpf",
                ])
                .args(["--all-targets", "--", "-D", "warnings"])
                .current_dir(root()))
        })?;
        phase("clippy (eBPF)", &mut || {
            step("clippy on the eBPF crate, for the BPF target");
            let (nightly, _) = ebpf_toolchain()?;
            run(Command::new("rustup")
                .args(["run", &nightly, "cargo", "clippy", "--quiet", "--release"])
                .args([
                    "--package",
                    "minerwatch-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                ])
                .args(["-Z", "build-std=core", "--target-dir"])
                .arg(root().join("target/ebpf"))
                .args(["--", "-D", "warnings"])
                .env_remove("RUSTC")
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .current_dir(root()))
        })?;
        phase("tests", &mut || {
            step("running every test");
            let mut cmd = Command::new("cargo");
            cmd.args(["test", "--release"]).current_dir(root());
            cmd.env("MINERWATCH_BIN", root().join("target/release/minerwatch"));
            // Every end-to-end test must run: a missing root is a failure, not a skip.
            cmd.env("MINERWATCH_E2E", "required");
            cmd.arg("--").arg("--test-threads=1");
            if let Some(f) = &filter {
                cmd.arg(f);
            }
            run(&mut cmd)
        })?;
        if !filtered {
            phase("benchmark smoke run", &mut || {
                step("benchmark smoke run (seconds; the full run is `cargo xtask bench all`)");
                bench::all(&root(), &bench::Sizes::smoke())
            })?;
        }
        Ok(())
    })();
    eprintln!("\n==> time per phase");
    let mut total = std::time::Duration::ZERO;
    for (name, took, ok) in &phases {
        total += *took;
        let mark = if *ok { "ok" } else { "FAILED" };
        eprintln!("    {name:<22} {:>7.1} s  {mark}", took.as_secs_f64());
    }
    eprintln!("    {:<22} {:>7.1} s", "total", total.as_secs_f64());
    result
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
        Cmd::Test { filter } => test(filter),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
