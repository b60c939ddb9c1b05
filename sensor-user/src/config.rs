//! Settings: a TOML file (`/etc/minerwatch/minerwatch.toml` when present, or `--config`),
//! then command-line flags over it. Validated once here, with errors that name the field.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// Used when `--config` is not given and this file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/minerwatch/minerwatch.toml";

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
    pub cpu_sample_hz: Option<u64>,
    pub stats_interval: Option<u64>,
    pub miner_ports: Option<Vec<u16>>,
    pub terminal: Option<bool>,
    pub min_severity: Option<String>,
    pub node: Option<String>,
    pub events: Option<bool>,
    pub bpf_stats: Option<bool>,
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
            cpu_sample_hz: over.cpu_sample_hz.or(self.cpu_sample_hz),
            stats_interval: over.stats_interval.or(self.stats_interval),
            miner_ports: over.miner_ports.or(self.miner_ports),
            terminal: over.terminal.or(self.terminal),
            min_severity: over.min_severity.or(self.min_severity),
            node: over.node.or(self.node),
            events: over.events.or(self.events),
            bpf_stats: over.bpf_stats.or(self.bpf_stats),
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
    pub cpu_sample_hz: u64,
    /// Zero disables the periodic `stats` record.
    pub stats_interval: Duration,
    pub miner_ports: Vec<u16>,
    /// Print alerts for people (to stdout, or stderr when JSON lines go to stdout).
    pub terminal: bool,
    /// Alerts below this are kept out of the outputs.
    pub min_severity: crate::detect::Severity,
    pub node: String,
    /// Also write `exec`, `exit` and `connect` records to the JSON-lines output.
    pub events: bool,
    /// Turn on kernel BPF run-time statistics and report each hook's cost in `stats`.
    pub bpf_stats: bool,
}

impl Config {
    pub fn from_file_config(f: FileConfig) -> Result<Self, ConfigError> {
        let window = f.saturation_window.unwrap_or(120);
        if !(1..=86_400).contains(&window) {
            return Err(ConfigError::Invalid {
                field: "saturation_window",
                reason: format!("{window} s is outside 1..=86400"),
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
            None => crate::detect::Severity::Info,
            Some(s) => crate::detect::Severity::parse(s).ok_or_else(|| ConfigError::Invalid {
                field: "min_severity",
                reason: format!("`{s}` is not one of info, low, medium, high, critical"),
            })?,
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
        Ok(Config {
            jsonl,
            saturation_window: Duration::from_secs(window),
            saturation_threshold: threshold,
            cpu_sample_hz: hz,
            stats_interval: Duration::from_secs(f.stats_interval.unwrap_or(60)),
            miner_ports: f
                .miner_ports
                .unwrap_or_else(|| DEFAULT_MINER_PORTS.to_vec()),
            terminal: f.terminal.unwrap_or(true),
            min_severity,
            node,
            events: f.events.unwrap_or(false),
            bpf_stats: f.bpf_stats.unwrap_or(false),
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
