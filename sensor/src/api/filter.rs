//! `GetEvents` filters, compiled once per client: an event goes out when it matches any
//! allow filter (or there are none) and no deny filter.
use minerwatch_proto::v1::{EventFilter, EventKind, Severity, event::Body};
use regex::Regex;

use super::ApiError;

/// One [`EventFilter`] with its regex compiled.
#[derive(Debug)]
struct Compiled {
    kinds: Vec<EventKind>,
    min_severity: Severity,
    pids: Vec<u32>,
    exe: Option<Regex>,
    users: Vec<String>,
    jobs: Vec<u64>,
}

/// Longest `exe_regex` accepted: a filter is for people, not a place to ship a megabyte.
const MAX_REGEX: usize = 1024;

impl Compiled {
    fn new(f: &EventFilter) -> Result<Self, ApiError> {
        let exe = if f.exe_regex.is_empty() {
            None
        } else if f.exe_regex.len() > MAX_REGEX {
            return Err(ApiError::BadFilter {
                reason: format!("exe_regex is longer than {MAX_REGEX} bytes"),
            });
        } else {
            Some(
                regex::RegexBuilder::new(&f.exe_regex)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| ApiError::BadFilter {
                        // The regex crate's message is a multi-line picture; one line is enough.
                        reason: format!(
                            "exe_regex: {}",
                            e.to_string().lines().last().unwrap_or_default().trim()
                        ),
                    })?,
            )
        };
        let mut kinds = Vec::new();
        for &k in &f.kinds {
            match EventKind::try_from(k) {
                Ok(EventKind::Unspecified) | Err(_) => {
                    return Err(ApiError::BadFilter {
                        reason: format!("unknown event kind {k}"),
                    });
                }
                Ok(k) => kinds.push(k),
            }
        }
        let min_severity = Severity::try_from(f.min_severity).map_err(|_| ApiError::BadFilter {
            reason: format!("unknown severity {}", f.min_severity),
        })?;
        Ok(Self {
            kinds,
            min_severity,
            pids: f.pids.clone(),
            exe,
            users: f.users.clone(),
            jobs: f.slurm_jobs.clone(),
        })
    }

    fn matches(&self, ev: &minerwatch_proto::v1::Event) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&ev.kind()) {
            return false;
        }
        if self.min_severity != Severity::Unspecified
            && ev.severity().is_none_or(|s| s < self.min_severity)
        {
            return false;
        }
        if !self.pids.is_empty() && ev.pid().is_none_or(|p| !self.pids.contains(&p)) {
            return false;
        }
        let process = ev.process();
        if let Some(re) = &self.exe {
            let exe = match (process, ev.body.as_ref()) {
                (Some(p), _) => p.exe.as_str(),
                (None, Some(Body::Exit(e))) => e.exe.as_str(),
                _ => return false,
            };
            if !re.is_match(exe) {
                return false;
            }
        }
        if !self.users.is_empty() && process.is_none_or(|p| !self.users.contains(&p.user)) {
            return false;
        }
        if !self.jobs.is_empty()
            && process
                .and_then(|p| p.slurm_job)
                .is_none_or(|j| !self.jobs.contains(&j))
        {
            return false;
        }
        true
    }
}

#[derive(Debug)]
pub struct Filter {
    allow: Vec<Compiled>,
    deny: Vec<Compiled>,
}

impl Filter {
    pub fn new(allow: &[EventFilter], deny: &[EventFilter]) -> Result<Self, ApiError> {
        Ok(Self {
            allow: allow.iter().map(Compiled::new).collect::<Result<_, _>>()?,
            deny: deny.iter().map(Compiled::new).collect::<Result<_, _>>()?,
        })
    }

    pub fn matches(&self, ev: &minerwatch_proto::v1::Event) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|f| f.matches(ev)))
            && !self.deny.iter().any(|f| f.matches(ev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minerwatch_proto::v1::{Alert, Event, Process, ProcessExec, ProcessExit};

    fn exec(pid: u32, exe: &str, user: &str, job: Option<u64>) -> Event {
        Event {
            seq: 1,
            body: Some(Body::Exec(ProcessExec {
                process: Some(Process {
                    pid,
                    exe: exe.into(),
                    user: user.into(),
                    slurm_job: job,
                    ..Default::default()
                }),
            })),
            ..Default::default()
        }
    }

    fn alert(sev: Severity) -> Event {
        Event {
            body: Some(Body::Alert(Alert {
                severity: sev as i32,
                process: Some(Process {
                    pid: 9,
                    exe: "/tmp/xmrig".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn f(build: impl FnOnce(&mut EventFilter)) -> EventFilter {
        let mut x = EventFilter::default();
        build(&mut x);
        x
    }

    #[test]
    fn no_filters_pass_everything() {
        assert!(
            Filter::new(&[], &[])
                .unwrap()
                .matches(&exec(1, "/bin/sh", "a", None))
        );
    }

    #[test]
    fn fields_and_within_a_filter_or_across_filters() {
        let allow = [
            f(|x| {
                x.kinds = vec![EventKind::Exec as i32];
                x.users = vec!["alice".into()];
            }),
            f(|x| x.slurm_jobs = vec![77]),
        ];
        let flt = Filter::new(&allow, &[]).unwrap();
        assert!(flt.matches(&exec(1, "/bin/sh", "alice", None)));
        assert!(!flt.matches(&exec(1, "/bin/sh", "bob", None)));
        assert!(flt.matches(&exec(1, "/bin/sh", "bob", Some(77))));
    }

    #[test]
    fn deny_wins_and_exe_regex_applies() {
        let deny = [f(|x| x.exe_regex = "^/usr/".into())];
        let flt = Filter::new(&[], &deny).unwrap();
        assert!(!flt.matches(&exec(1, "/usr/bin/ls", "a", None)));
        assert!(flt.matches(&exec(1, "/dev/shm/x", "a", None)));
        let exit = Event {
            body: Some(Body::Exit(ProcessExit {
                pid: 3,
                exe: "/usr/bin/ls".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(!flt.matches(&exit));
    }

    #[test]
    fn min_severity_keeps_only_alerts_at_or_above() {
        let allow = [f(|x| x.min_severity = Severity::High as i32)];
        let flt = Filter::new(&allow, &[]).unwrap();
        assert!(flt.matches(&alert(Severity::High)));
        assert!(flt.matches(&alert(Severity::Critical)));
        assert!(!flt.matches(&alert(Severity::Medium)));
        assert!(!flt.matches(&exec(1, "/bin/sh", "a", None)));
    }

    #[test]
    fn bad_filters_are_errors_not_panics() {
        for bad in [
            f(|x| x.exe_regex = "(unclosed".into()),
            f(|x| x.exe_regex = "a".repeat(MAX_REGEX + 1)),
            f(|x| x.kinds = vec![999]),
            f(|x| x.min_severity = 42),
        ] {
            let e = Filter::new(&[bad], &[]).unwrap_err();
            assert!(matches!(e, ApiError::BadFilter { .. }), "{e}");
        }
    }
}
