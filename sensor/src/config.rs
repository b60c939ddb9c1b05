//! Settings: a TOML file (`/etc/minerwatch/minerwatch.toml` when present, or `--config`),
//! then command-line flags over it. Validated once here, with errors that name the field.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// Used when `--config` is not given and this file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/minerwatch/minerwatch.toml";
/// The local gRPC API (`minerwatch events` talks to it).
pub const DEFAULT_SOCKET: &str = "/run/minerwatch/minerwatch.sock";
/// Where events wait for collectors, across restarts.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/minerwatch/spool";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("bad setting `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The file's contents; every key optional. Unknown keys are an error, so a typo is caught.
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub jsonl: Option<String>,
    pub saturation_window: Option<u64>,
    pub saturation_threshold: Option<f64>,
    /// How long a connection must be open before its shape counts (`flow_shape`).
    pub flow_window: Option<u64>,
    pub cpu_sample_hz: Option<u64>,
    pub stats_interval: Option<u64>,
    pub miner_ports: Option<Vec<u16>>,
    pub terminal: Option<bool>,
    pub min_severity: Option<String>,
    pub node: Option<String>,
    pub events: Option<bool>,
    /// Also push every exec, exit and connect to collectors (default: findings, alerts,
    /// losses, status and heartbeats only).
    pub push_activity: Option<bool>,
    pub bpf_stats: Option<bool>,
    /// Unix socket of the local gRPC API; `""` turns it off.
    pub socket: Option<String>,
    /// Also serve the gRPC API on this TCP address, with mutual TLS.
    pub listen: Option<String>,
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Collectors to push every event to: `http://host:port` or `https://host:port` (mTLS).
    pub collectors: Option<Vec<String>>,
    pub spool_dir: Option<String>,
    pub spool_max_mb: Option<u64>,
    pub heartbeat_interval: Option<u64>,
    /// Operator pool lists (domains, addresses, networks), reloaded on SIGHUP and change.
    pub pool_feeds: Option<Vec<String>>,
    /// Use the pool list that ships with minerwatch (default true).
    pub bundled_pools: Option<bool>,
    /// Folders (paths inside a cgroup hierarchy, e.g. `/system.slice/slurmstepd.scope`)
    /// that slurmstepd makes job cgroups in, besides those learned from slurmd's own cgroup.
    pub slurm_cgroup_anchors: Option<Vec<String>>,
    /// The `squeue` that answers for jobs (default: `squeue` on PATH; `""` asks nothing).
    pub slurm_squeue: Option<String>,
    /// What is allowed, each with its reason: `[[allow]]` tables.
    pub allow: Option<Vec<AllowEntry>>,
    /// NVML, loaded at run time (default `libnvidia-ml.so.1`; `""` looks at no GPU).
    pub nvml_library: Option<String>,
}

/// One allow-list entry: every selector given must match; `reason` is shown in the alert.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub user: Option<String>,
    pub account: Option<String>,
    pub partition: Option<String>,
    /// The executable's absolute path.
    pub exe: Option<String>,
    /// The executable's SHA-256, 64 hex digits.
    pub sha256: Option<String>,
    pub reason: String,
}

impl AllowEntry {
    fn check(&self) -> Result<(), String> {
        let selectors = [
            &self.user,
            &self.account,
            &self.partition,
            &self.exe,
            &self.sha256,
        ];
        if selectors.iter().all(|s| s.is_none()) {
            return Err(
                "names nothing to allow: give user, account, partition, exe or sha256".into(),
            );
        }
        if selectors
            .iter()
            .any(|s| s.as_deref().is_some_and(|v| v.trim().is_empty()))
        {
            return Err("has an empty selector".into());
        }
        if self.reason.trim().is_empty() {
            return Err("has no reason: say why it is allowed, the alert shows it".into());
        }
        if let Some(e) = &self.exe
            && !e.starts_with('/')
        {
            return Err(format!("exe {e:?} is not an absolute path"));
        }
        if let Some(h) = &self.sha256
            && !(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("sha256 {h:?} is not 64 hex digits"));
        }
        Ok(())
    }
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string()
                + &e.span().map(|s| line_of(text, s.start)).unwrap_or_default(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Later values win: `self` is the file, `over` the flags.
    pub fn merge(self, over: FileConfig) -> FileConfig {
        FileConfig {
            jsonl: over.jsonl.or(self.jsonl),
            saturation_window: over.saturation_window.or(self.saturation_window),
            saturation_threshold: over.saturation_threshold.or(self.saturation_threshold),
            flow_window: over.flow_window.or(self.flow_window),
            cpu_sample_hz: over.cpu_sample_hz.or(self.cpu_sample_hz),
            stats_interval: over.stats_interval.or(self.stats_interval),
            miner_ports: over.miner_ports.or(self.miner_ports),
            terminal: over.terminal.or(self.terminal),
            min_severity: over.min_severity.or(self.min_severity),
            node: over.node.or(self.node),
            events: over.events.or(self.events),
            push_activity: over.push_activity.or(self.push_activity),
            bpf_stats: over.bpf_stats.or(self.bpf_stats),
            socket: over.socket.or(self.socket),
            listen: over.listen.or(self.listen),
            tls_ca: over.tls_ca.or(self.tls_ca),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
            collectors: over.collectors.or(self.collectors),
            spool_dir: over.spool_dir.or(self.spool_dir),
            spool_max_mb: over.spool_max_mb.or(self.spool_max_mb),
            heartbeat_interval: over.heartbeat_interval.or(self.heartbeat_interval),
            pool_feeds: over.pool_feeds.or(self.pool_feeds),
            bundled_pools: over.bundled_pools.or(self.bundled_pools),
            slurm_cgroup_anchors: over.slurm_cgroup_anchors.or(self.slurm_cgroup_anchors),
            slurm_squeue: over.slurm_squeue.or(self.slurm_squeue),
            allow: over.allow.or(self.allow),
            nvml_library: over.nvml_library.or(self.nvml_library),
        }
    }
}

fn line_of(text: &str, offset: usize) -> String {
    format!(
        " (line {})",
        text[..offset.min(text.len())].matches('\n').count() + 1
    )
}

#[derive(Debug, Clone, PartialEq)]
pub enum JsonlTarget {
    Stdout,
    File(PathBuf),
}

/// Ports mining pools commonly listen on: weak evidence only.
pub const DEFAULT_MINER_PORTS: &[u16] = &[
    3333, 3334, 4444, 5555, 6666, 7777, 8888, 9999, 14433, 14444, 20535, 45560, 45700,
];

/// Validated settings the sensor runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub jsonl: Option<JsonlTarget>,
    pub saturation_window: Duration,
    pub saturation_threshold: f64,
    pub flow_window: Duration,
    pub cpu_sample_hz: u64,
    /// Zero disables the periodic `stats` record.
    pub stats_interval: Duration,
    pub miner_ports: Vec<u16>,
    /// Print alerts for people (to stdout, or stderr when JSON lines go to stdout).
    pub terminal: bool,
    /// Alerts below this are kept out of the outputs.
    pub min_severity: minerwatch_detect::Severity,
    pub node: String,
    /// Also write `exec`, `exit` and `connect` records to the JSON-lines output.
    pub events: bool,
    /// Push activity (exec, exit, connect) to collectors too, not only what is decisive.
    pub push_activity: bool,
    /// Turn on kernel BPF run-time statistics and report each hook's cost in `stats`.
    pub bpf_stats: bool,
    pub socket: Option<PathBuf>,
    pub listen: Option<std::net::SocketAddr>,
    /// Mutual TLS for `listen` and for `https://` collectors.
    pub tls: Option<minerwatch_proto::transport::TlsFiles>,
    pub collectors: Vec<String>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub heartbeat_interval: Duration,
    pub pool_feeds: Vec<PathBuf>,
    pub bundled_pools: bool,
    pub slurm_cgroup_anchors: Vec<String>,
    /// `None`: ask Slurm nothing about jobs.
    pub slurm_squeue: Option<PathBuf>,
    pub allow: Vec<AllowEntry>,
    /// `None`: GPUs are not looked at.
    pub nvml_library: Option<String>,
}

impl Config {
    pub fn from_file_config(f: FileConfig) -> Result<Self, ConfigError> {
        let allow = f.allow.clone().unwrap_or_default();
        for (i, a) in allow.iter().enumerate() {
            a.check().map_err(|why| ConfigError::Invalid {
                field: "allow",
                reason: format!("entry {} {why}", i + 1),
            })?;
        }
        let anchors = f.slurm_cgroup_anchors.clone().unwrap_or_default();
        if let Some(bad) = anchors.iter().find(|a| {
            !a.starts_with('/')
                || a.trim_end_matches('/').is_empty()
                || a.split('/').any(|s| s == ".." || s == ".")
        }) {
            return Err(ConfigError::Invalid {
                field: "slurm_cgroup_anchors",
                reason: format!(
                    "{bad:?} is not a folder inside a cgroup hierarchy (absolute, below the root, without . or ..)"
                ),
            });
        }
        let window = f.saturation_window.unwrap_or(120);
        if !(1..=86_400).contains(&window) {
            return Err(ConfigError::Invalid {
                field: "saturation_window",
                reason: format!("{window} s is outside 1..=86400"),
            });
        }
        let flow_window = f.flow_window.unwrap_or(60);
        if !(5..=86_400).contains(&flow_window) {
            return Err(ConfigError::Invalid {
                field: "flow_window",
                reason: format!("{flow_window} s is outside 5..=86400"),
            });
        }
        let threshold = f.saturation_threshold.unwrap_or(0.9);
        if !(threshold > 0.0 && threshold <= 256.0) {
            return Err(ConfigError::Invalid {
                field: "saturation_threshold",
                reason: format!(
                    "{threshold} must be a share of one core above 0 (1.0 = a whole core)"
                ),
            });
        }
        let hz = f.cpu_sample_hz.unwrap_or(99);
        if !(1..=1000).contains(&hz) {
            return Err(ConfigError::Invalid {
                field: "cpu_sample_hz",
                reason: format!("{hz} is outside 1..=1000"),
            });
        }
        let min_severity = match f.min_severity.as_deref() {
            None => minerwatch_detect::Severity::Info,
            Some(s) => {
                minerwatch_detect::Severity::parse(s).ok_or_else(|| ConfigError::Invalid {
                    field: "min_severity",
                    reason: format!("`{s}` is not one of info, low, medium, high, critical"),
                })?
            }
        };
        let jsonl = match f.jsonl.as_deref() {
            None | Some("") => None,
            Some("-") => Some(JsonlTarget::Stdout),
            Some(p) => Some(JsonlTarget::File(PathBuf::from(p))),
        };
        let node = match f.node {
            Some(n) if !n.trim().is_empty() => n,
            _ => hostname(),
        };
        let tls = match (f.tls_ca, f.tls_cert, f.tls_key) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(minerwatch_proto::transport::TlsFiles {
                ca: ca.into(),
                cert: cert.into(),
                key: key.into(),
            }),
            _ => {
                return Err(ConfigError::Invalid {
                    field: "tls_ca",
                    reason: "tls_ca, tls_cert and tls_key go together: give all three or none"
                        .into(),
                });
            }
        };
        let listen = match f.listen.as_deref() {
            None | Some("") => None,
            Some(a) => Some(a.parse().map_err(|_| ConfigError::Invalid {
                field: "listen",
                reason: format!("`{a}` is not an address like 0.0.0.0:50052"),
            })?),
        };
        if listen.is_some() && tls.is_none() {
            return Err(ConfigError::Invalid {
                field: "listen",
                reason:
                    "the TCP API is served with mutual TLS only: set tls_ca, tls_cert and tls_key"
                        .into(),
            });
        }
        let collectors = f.collectors.unwrap_or_default();
        for url in &collectors {
            let https = url.starts_with("https://");
            if !https && !url.starts_with("http://") {
                return Err(ConfigError::Invalid {
                    field: "collector",
                    reason: format!("`{url}` must start with http:// or https://"),
                });
            }
            if https && tls.is_none() {
                return Err(ConfigError::Invalid {
                    field: "collector",
                    reason: format!("`{url}` is https: set tls_ca, tls_cert and tls_key"),
                });
            }
        }
        let spool_mb = f.spool_max_mb.unwrap_or(256);
        if !(16..=1 << 20).contains(&spool_mb) {
            return Err(ConfigError::Invalid {
                field: "spool_max_mb",
                reason: format!("{spool_mb} is outside 16..=1048576"),
            });
        }
        let heartbeat = f.heartbeat_interval.unwrap_or(10);
        if !(1..=3600).contains(&heartbeat) {
            return Err(ConfigError::Invalid {
                field: "heartbeat_interval",
                reason: format!("{heartbeat} s is outside 1..=3600"),
            });
        }
        Ok(Config {
            jsonl,
            saturation_window: Duration::from_secs(window),
            saturation_threshold: threshold,
            flow_window: Duration::from_secs(flow_window),
            cpu_sample_hz: hz,
            stats_interval: Duration::from_secs(f.stats_interval.unwrap_or(60)),
            miner_ports: f
                .miner_ports
                .unwrap_or_else(|| DEFAULT_MINER_PORTS.to_vec()),
            terminal: f.terminal.unwrap_or(true),
            min_severity,
            node,
            events: f.events.unwrap_or(false),
            push_activity: f.push_activity.unwrap_or(false),
            bpf_stats: f.bpf_stats.unwrap_or(false),
            socket: match f.socket.as_deref() {
                None => Some(PathBuf::from(DEFAULT_SOCKET)),
                Some("") => None,
                Some(p) => Some(PathBuf::from(p)),
            },
            listen,
            tls,
            collectors,
            spool_dir: PathBuf::from(f.spool_dir.as_deref().unwrap_or(DEFAULT_SPOOL_DIR)),
            spool_max_bytes: spool_mb << 20,
            heartbeat_interval: Duration::from_secs(heartbeat),
            pool_feeds: f
                .pool_feeds
                .unwrap_or_default()
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            bundled_pools: f.bundled_pools.unwrap_or(true),
            slurm_cgroup_anchors: anchors,
            allow,
            nvml_library: match f.nvml_library.as_deref() {
                None => Some(crate::enrich::gpu::DEFAULT_LIBRARY.to_string()),
                Some("") => None,
                Some(p) => Some(p.to_string()),
            },
            slurm_squeue: match f.slurm_squeue.as_deref() {
                None => Some(PathBuf::from("squeue")),
                Some("") => None,
                Some(p) => Some(PathBuf::from(p)),
            },
        })
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(t, Path::new("test.toml"))
    }

    #[test]
    fn defaults() {
        let c = Config::from_file_config(FileConfig::default()).unwrap();
        assert_eq!(c.saturation_window, Duration::from_secs(120));
        assert_eq!((c.cpu_sample_hz, c.terminal, c.jsonl), (99, true, None));
        assert!(c.miner_ports.contains(&3333));
    }

    #[test]
    fn flags_override_file() {
        let file = parse("saturation_window = 600\njsonl = \"/var/log/mw.jsonl\"\n").unwrap();
        let flags = FileConfig {
            saturation_window: Some(5),
            ..Default::default()
        };
        let c = Config::from_file_config(file.merge(flags)).unwrap();
        assert_eq!(c.saturation_window, Duration::from_secs(5));
        assert_eq!(c.jsonl, Some(JsonlTarget::File("/var/log/mw.jsonl".into())));
    }

    #[test]
    fn clear_errors() {
        let e = parse("saturation_windw = 5\n").unwrap_err().to_string();
        assert!(
            e.contains("unknown field `saturation_windw`") && e.contains("line 1"),
            "{e}"
        );
        let e = parse("a = [\n").unwrap_err().to_string();
        assert!(e.starts_with("bad config test.toml"), "{e}");
        let e = parse("saturation_window = \"long\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type"), "{e}");
        for (t, field) in [
            ("saturation_window = 0", "saturation_window"),
            ("saturation_threshold = -1.0", "saturation_threshold"),
            ("cpu_sample_hz = 100000", "cpu_sample_hz"),
            ("min_severity = \"severe\"", "min_severity"),
            ("collectors = [\"collector:50051\"]", "collector"),
            ("collectors = [\"https://c:50051\"]", "collector"),
            ("tls_ca = \"/ca.pem\"", "tls_ca"),
            ("listen = \"0.0.0.0:50052\"", "listen"),
            ("listen = \"everywhere\"", "listen"),
            ("spool_max_mb = 1", "spool_max_mb"),
            ("heartbeat_interval = 0", "heartbeat_interval"),
            ("slurm_cgroup_anchors = [\"slurm\"]", "slurm_cgroup_anchors"),
            ("slurm_cgroup_anchors = [\"/\"]", "slurm_cgroup_anchors"),
            (
                "slurm_cgroup_anchors = [\"/a/../b\"]",
                "slurm_cgroup_anchors",
            ),
        ] {
            let e = Config::from_file_config(parse(t).unwrap()).unwrap_err();
            assert!(
                matches!(e, ConfigError::Invalid { field: f, .. } if f == field),
                "{t}: {e}"
            );
        }
        let e = FileConfig::load(Path::new("/nonexistent/mw.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read config /nonexistent/mw.toml"), "{e}");
    }
}
