//! The `minerwatch` command: parses flags and hands over to the library.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use minerwatch::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_SOCKET, FileConfig};

#[derive(Parser)]
#[command(
    name = "minerwatch",
    version,
    about = "Finds cryptocurrency miners on Linux nodes with eBPF"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the sensor in the foreground; alerts are printed as they are raised.
    Run(Box<RunArgs>),
    /// Check kernel, BTF, privileges and which hooks can attach, then exit.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the local sensor's events: alerts and findings by default, newest last.
    Events(EventsArgs),
    /// Show the local sensor's status: hooks, counters, collectors.
    Status {
        /// The sensor's API socket.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct EventsArgs {
    /// The sensor's API socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Keep printing new events as they happen.
    #[arg(short, long)]
    follow: bool,
    /// How many recent events to print first [default: 100, or 0 with --follow].
    #[arg(long, value_name = "N")]
    backlog: Option<u32>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Only these kinds (repeatable): exec, exit, connect, stratum, saturation, alert, loss,
    /// status, heartbeat.
    #[arg(long, value_name = "KIND")]
    kind: Vec<String>,
    /// Every kind, including each exec, exit and connect.
    #[arg(long)]
    all: bool,
    /// Only alerts of at least this severity.
    #[arg(long, value_name = "SEVERITY")]
    min_severity: Option<String>,
    /// Only events about this process (repeatable).
    #[arg(long)]
    pid: Vec<u32>,
    /// Only processes whose executable matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    exe: Option<String>,
    /// Only processes of this user (repeatable).
    #[arg(long)]
    user: Vec<String>,
    /// Only processes in this Slurm job (repeatable).
    #[arg(long)]
    job: Vec<u64>,
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file [default: /etc/minerwatch/minerwatch.toml when it exists].
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Write one JSON object per line to PATH (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    jsonl: Option<String>,
    /// How long CPU saturation must last to count [default: 120].
    #[arg(long, value_name = "SECONDS")]
    saturation_window: Option<u64>,
    /// Share of one core that counts as saturated, 1.0 = a whole core [default: 0.9].
    #[arg(long, value_name = "SHARE")]
    saturation_threshold: Option<f64>,
    /// How long a connection must be open before its shape counts as a pool's [default: 60].
    #[arg(long, value_name = "SECONDS")]
    flow_window: Option<u64>,
    /// cpu-clock sampling rate per CPU [default: 99].
    #[arg(long, value_name = "HZ")]
    cpu_sample_hz: Option<u64>,
    /// Seconds between `stats` records, 0 for none [default: 60].
    #[arg(long, value_name = "SECONDS")]
    stats_interval: Option<u64>,
    /// Leave alerts below this severity out of the outputs [default: info].
    #[arg(long, value_name = "SEVERITY")]
    min_severity: Option<String>,
    /// Node name in records [default: the hostname].
    #[arg(long)]
    node: Option<String>,
    /// Do not print alerts for people (JSON lines only).
    #[arg(long)]
    no_terminal: bool,
    /// Also write every exec, exit and connect as a JSON-lines record (an audit trail).
    #[arg(long)]
    events: bool,
    /// Also push every exec, exit and connect to collectors; by default they get findings,
    /// alerts, losses, status and heartbeats (config key `push_activity`).
    #[arg(long)]
    push_activity: bool,
    /// Measure each hook's in-kernel cost (kernel BPF statistics) and report it in `stats`.
    #[arg(long)]
    bpf_stats: bool,
    /// Unix socket for the gRPC API, `""` for none [default: /run/minerwatch/minerwatch.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<String>,
    /// Also serve the gRPC API on this TCP address, with mutual TLS (needs --tls-*).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Push events to this collector, http://host:port or https://host:port (mTLS);
    /// repeatable.
    #[arg(long = "collector", value_name = "URL")]
    collectors: Vec<String>,
    /// Where events wait for collectors, across restarts [default: /var/lib/minerwatch/spool].
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<String>,
    /// Most the spool may hold; past it the oldest events go, recorded as a loss [default: 256].
    #[arg(long, value_name = "MIB")]
    spool_max_mb: Option<u64>,
    /// Seconds between heartbeats to collectors [default: 10].
    #[arg(long, value_name = "SECONDS")]
    heartbeat_interval: Option<u64>,
    /// CA certificate (PEM) that signs the other side, for mutual TLS.
    #[arg(long, value_name = "PATH")]
    tls_ca: Option<String>,
    /// This sensor's certificate (PEM).
    #[arg(long, value_name = "PATH")]
    tls_cert: Option<String>,
    /// This sensor's private key (PEM).
    #[arg(long, value_name = "PATH")]
    tls_key: Option<String>,
    /// A pool list of the operator's: domains, addresses, networks, one per line (plain or
    /// committee-style `address,port,...`); repeatable. Reloaded on SIGHUP and on change.
    #[arg(long = "pool-feed", value_name = "PATH")]
    pool_feeds: Vec<String>,
    /// Do not use the pool list that ships with minerwatch.
    #[arg(long)]
    no_bundled_pools: bool,
}

impl RunArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
                FileConfig::load(DEFAULT_CONFIG_PATH.as_ref())?
            }
            None => FileConfig::default(),
        };
        let flags = FileConfig {
            jsonl: self.jsonl.clone(),
            saturation_window: self.saturation_window,
            saturation_threshold: self.saturation_threshold,
            flow_window: self.flow_window,
            cpu_sample_hz: self.cpu_sample_hz,
            stats_interval: self.stats_interval,
            miner_ports: None,
            terminal: self.no_terminal.then_some(false),
            min_severity: self.min_severity.clone(),
            node: self.node.clone(),
            events: self.events.then_some(true),
            push_activity: self.push_activity.then_some(true),
            bpf_stats: self.bpf_stats.then_some(true),
            socket: self.socket.clone(),
            listen: self.listen.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            collectors: (!self.collectors.is_empty()).then(|| self.collectors.clone()),
            spool_dir: self.spool_dir.clone(),
            spool_max_mb: self.spool_max_mb,
            heartbeat_interval: self.heartbeat_interval,
            pool_feeds: (!self.pool_feeds.is_empty()).then(|| self.pool_feeds.clone()),
            bundled_pools: self.no_bundled_pools.then_some(false),
            slurm_cgroup_anchors: None,
            slurm_squeue: None,
            allow: None,
            nvml_library: None,
        };
        Ok(Config::from_file_config(file.merge(flags))?)
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let cfg = args.config().context("cannot start")?;
    // One thread: the sensor task never blocks, so the API and the collector pushes fit
    // between its drains, and an idle node pays for one thread, not a pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start: tokio runtime")?;
    rt.block_on(async {
        // Registered before anything else, so a signal that arrives during start-up or right
        // after `ready` still stops the sensor cleanly instead of killing it.
        let mut int = signal(SignalKind::interrupt()).context("cannot start: SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("cannot start: SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = int.recv() => "SIGINT".to_string(),
                _ = term.recv() => "SIGTERM".to_string(),
            }
        };
        minerwatch::run(cfg, shutdown)
            .await
            .map_err(|e| anyhow::anyhow!(e))
    })
}

/// Runs a client command; errors are one line on stderr.
fn client_cmd(
    fut: impl std::future::Future<Output = Result<(), minerwatch::api::client::ClientError>>,
) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(fut).map_err(|e| e.to_string()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("minerwatch: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MINERWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => match run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("minerwatch: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Events(a) => client_cmd(minerwatch::api::client::events(
            minerwatch::api::client::EventsQuery {
                socket: a.socket,
                follow: a.follow,
                backlog: a.backlog,
                json: a.json,
                kinds: a.kind,
                all: a.all,
                min_severity: a.min_severity,
                pids: a.pid,
                exe: a.exe,
                users: a.user,
                jobs: a.job,
            },
        )),
        Cmd::Status { socket, json } => {
            client_cmd(async move { minerwatch::api::client::status(&socket, json).await })
        }
        Cmd::Check { json } => {
            let report = minerwatch::check::run(99);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", minerwatch::check::render(&report));
            }
            if report.ready() {
                ExitCode::SUCCESS
            } else if report.runnable() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
