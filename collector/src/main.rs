//! `minerwatch-collector`: receives event streams from many sensors, stores them in SQLite,
//! answers queries, raises `sensor_silent`, and forwards alerts to the SOC.
mod certs;
mod query;
mod service;
mod sinks;
mod store;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use minerwatch_proto::transport::TlsFiles;
use tokio::sync::Notify;

const DEFAULT_DB: &str = "/var/lib/minerwatch-collector/collector.db";

#[derive(Parser)]
#[command(
    name = "minerwatch-collector",
    version,
    about = "Receives minerwatch sensors' events, stores them, forwards alerts to the SOC"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Receive events from sensors until stopped (SIGINT/SIGTERM).
    Serve(ServeArgs),
    /// Alerts in the database, oldest first (the most recent --limit).
    Alerts(QueryArgs),
    /// Events in the database, oldest first (the most recent --limit).
    Events {
        #[command(flatten)]
        q: QueryArgs,
        /// Only this kind: exec, exit, connect, stratum, saturation, alert, loss, status, heartbeat.
        #[arg(long)]
        kind: Option<String>,
    },
    /// The sensors this collector knows: last contact, last sequence number, state.
    Nodes {
        #[arg(long, value_name = "PATH", default_value = DEFAULT_DB)]
        db: PathBuf,
        #[arg(long)]
        json: bool,
        /// A node quiet this long shows as quiet [default: 60s].
        #[arg(long, value_name = "DURATION", default_value = "60s")]
        silent_after: humantime::Duration,
    },
    /// Make a test CA and certificates for mutual TLS (quick start; not for production).
    Certs {
        /// Directory to write the PEM files to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Names the collector is reached by (besides localhost and 127.0.0.1); repeatable.
        #[arg(long = "collector-name", value_name = "NAME")]
        collector_names: Vec<String>,
        /// A sensor node to make a certificate for; repeatable.
        #[arg(long = "node", value_name = "NAME")]
        nodes: Vec<String>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to receive sensors on. Without TLS only a loopback address is accepted.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// SQLite database.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_DB)]
    db: PathBuf,
    /// Keep events and alerts this long.
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    retention: humantime::Duration,
    /// Raise `sensor_silent` for a node not heard from this long (sensors send a heartbeat
    /// every 10 s by default).
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    silent_after: humantime::Duration,
    /// Append every alert as one JSON object per line to this file.
    #[arg(long, value_name = "PATH")]
    jsonl_sink: Option<PathBuf>,
    /// Send every alert to syslog: udp://IP:PORT or tcp://IP:PORT (RFC 5424); repeatable.
    #[arg(long, value_name = "URL")]
    syslog: Vec<String>,
    /// CA certificate (PEM) that signs the sensors' certificates: turns on mutual TLS.
    #[arg(long, value_name = "PATH", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// The collector's certificate (PEM).
    #[arg(long, value_name = "PATH", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The collector's private key (PEM).
    #[arg(long, value_name = "PATH", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// Accept plaintext on a non-loopback address (a trusted, isolated network only).
    #[arg(long)]
    insecure_plaintext: bool,
}

#[derive(Args)]
struct QueryArgs {
    #[arg(long, value_name = "PATH", default_value = DEFAULT_DB)]
    db: PathBuf,
    /// Only since then: a duration ago (1h, 2d) or a time (2026-11-24T10:00:00Z).
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    node: Option<String>,
    /// Only alerts of at least this severity.
    #[arg(long, value_name = "SEVERITY")]
    min_severity: Option<String>,
    #[arg(long)]
    user: Option<String>,
    /// Slurm job id.
    #[arg(long)]
    job: Option<u64>,
    /// Slurm account (as the sensor's `squeue` reported it).
    #[arg(long)]
    account: Option<String>,
    /// Slurm partition.
    #[arg(long)]
    partition: Option<String>,
    /// At most this many, the most recent.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

impl QueryArgs {
    fn filter(&self, kind: Option<String>) -> query::Filter {
        query::Filter {
            since: self.since.clone(),
            node: self.node.clone(),
            min_severity: self.min_severity.clone(),
            user: self.user.clone(),
            job: self.job,
            account: self.account.clone(),
            partition: self.partition.clone(),
            kind,
            limit: self.limit,
            json: self.json,
        }
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let tls = match (a.tls_ca, a.tls_cert, a.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca, cert, key }),
        _ => None,
    };
    if tls.is_none() && !a.listen.ip().is_loopback() && !a.insecure_plaintext {
        bail!(
            "refusing plaintext on {}: give --tls-ca/--tls-cert/--tls-key (mutual TLS), or --insecure-plaintext on an isolated network",
            a.listen
        );
    }
    let mut sinks = Vec::new();
    if let Some(p) = &a.jsonl_sink {
        // Opened once here so a bad path is a start-up error, not a silent sink.
        sinks::open_append(p)?;
        sinks.push(sinks::Sink::Jsonl(p.clone()));
    }
    for url in &a.syslog {
        sinks.push(sinks::Sink::syslog(url)?);
    }
    let wake = Arc::new(Notify::new());
    let store = store::Store::open(
        &a.db,
        store::Settings {
            silent_after: a.silent_after.into(),
            retention: a.retention.into(),
        },
        wake.clone(),
    )?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .concurrency_limit_per_connection(8);
    let mode = match &tls {
        Some(t) => {
            builder = builder.tls_config(t.server()?)?;
            "mutual TLS"
        }
        None => "plaintext",
    };
    for s in sinks.clone() {
        tokio::spawn(sinks::run(s, a.db.clone(), wake.clone()));
    }
    // The one line a person (or a test) waits for: where, how, and into which database.
    println!(
        "minerwatch-collector listening on {addr} ({mode}), database {}, {} sink(s)",
        a.db.display(),
        sinks.len()
    );
    let stop = async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    };
    builder
        .add_service(service::server(store))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        )
        .await?;
    Ok(())
}

fn query(
    db: &Path,
    f: impl FnOnce(&rusqlite::Connection, &mut std::io::StdoutLock) -> Result<(), query::QueryError>,
) -> anyhow::Result<()> {
    let conn = store::open_read(db)?;
    let mut out = std::io::stdout().lock();
    match f(&conn, &mut out) {
        Err(query::QueryError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MINERWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(a) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("tokio runtime")
            .and_then(|rt| rt.block_on(serve(a))),
        Cmd::Alerts(q) => query(&q.db.clone(), |c, o| query::alerts(c, &q.filter(None), o)),
        Cmd::Events { q, kind } => {
            query(&q.db.clone(), |c, o| query::events(c, &q.filter(kind), o))
        }
        Cmd::Nodes {
            db,
            json,
            silent_after,
        } => query(&db, |c, o| query::nodes(c, json, silent_after.into(), o)),
        Cmd::Certs {
            out,
            collector_names,
            nodes,
        } => certs::make(&out, &collector_names, &nodes)
            .map(|files| {
                for f in files {
                    println!("{}", f.display());
                }
            })
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("minerwatch-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}
