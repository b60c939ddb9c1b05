//! `minerwatch check`: can this machine run the sensor, and what would be missing? Answers
//! plainly, by trying what the sensor does (load, attach) rather than guessing.
use std::fmt::Write as _;

use crate::kernel::{btf, loader};

/// The offsets found in the kernel's BTF, and the members that were not.
#[derive(Debug, serde::Serialize)]
pub struct BtfReport {
    pub offsets: Vec<(&'static str, u32)>,
    pub missing: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub kernel: String,
    pub root: bool,
    pub btf: Result<BtfReport, String>,
    pub cgroup2: Option<String>,
    pub hooks: Result<Vec<loader::HookStatus>, String>,
    pub hardware_counters: Result<(), String>,
}

impl Report {
    /// Every hook that is not optional attaches.
    pub fn ready(&self) -> bool {
        matches!(&self.hooks, Ok(h) if h.iter().all(|h| h.attached || h.optional))
    }

    /// The sensor would start (at least one hook attaches).
    pub fn runnable(&self) -> bool {
        matches!(&self.hooks, Ok(h) if h.iter().any(|h| h.attached))
    }
}

fn kernel() -> String {
    let read = |f: &str| {
        std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} ({})",
        read("/proc/sys/kernel/osrelease"),
        std::env::consts::ARCH
    )
}

/// Opens a hardware cycles counter on CPU 0 to learn whether the PMU is exposed.
fn hardware_counters() -> Result<(), String> {
    #[repr(C)]
    struct Attr {
        type_: u32,
        size: u32,
        config: u64,
        rest: [u64; 14],
    }
    let attr = Attr {
        type_: 0, /* PERF_TYPE_HARDWARE */
        size: size_of::<Attr>() as u32,
        config: 0,
        rest: [0; 14],
    };
    // SAFETY: perf_event_open with a zeroed attr of the declared size; the fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, &attr, -1, 0, -1, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: fd was just opened by us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

pub fn run(sample_hz: u64) -> Report {
    let root = loader::is_root();
    let hooks = if root {
        loader::load(sample_hz)
            .map(|l| l.hooks)
            .map_err(|e| e.to_string())
    } else {
        Err("not checked: needs root".into())
    };
    Report {
        kernel: kernel(),
        root,
        btf: loader::btf_offsets()
            .map(|(o, missing)| BtfReport {
                offsets: loader::offset_table(&o),
                missing,
            })
            .map_err(|e| e.to_string()),
        cgroup2: loader::cgroup2_root(),
        hooks,
        hardware_counters: hardware_counters(),
    }
}

/// The oldest kernel every hook loads on in full, and why: `net_egress` scans leading
/// whitespace with `bpf_loop` (5.17; before it, its simpler form attaches); the rings need
/// 5.8, BTF tracepoints 5.5.
pub const MIN_KERNEL: (u32, u32) = (5, 17);

/// `major.minor` of a `uname -r` string.
fn version_of(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "kernel      {}", r.kernel);
    let (maj, min) = MIN_KERNEL;
    let _ = match version_of(&r.kernel) {
        Some(v) if v >= MIN_KERNEL => writeln!(s, "needs       Linux {maj}.{min} or later: met"),
        Some(_) => writeln!(
            s,
            "needs       Linux {maj}.{min} or later for every hook in full (bpf_loop, ring \
             buffers, BTF tracepoints): this version is older, so see below what attaches \
             (distribution kernels often carry the features anyway)"
        ),
        None => writeln!(s, "needs       Linux {maj}.{min} or later"),
    };
    let _ = writeln!(
        s,
        "root        {}",
        if r.root {
            "yes"
        } else {
            "NO: run as root (sudo minerwatch check)"
        }
    );
    let _ = match &r.btf {
        Ok(BtfReport { offsets, missing }) => {
            let found: Vec<String> = offsets
                .iter()
                .filter(|(_, off)| *off != 0)
                .map(|(name, off)| format!("{name} at {off}"))
                .collect();
            let _ = writeln!(s, "BTF         {}: {}", btf::VMLINUX, found.join(", "));
            for m in missing {
                let _ = writeln!(s, "  MISSING  {m}");
            }
            Ok(())
        }
        Err(e) => writeln!(
            s,
            "BTF         MISSING: {e}; exec events lose argv (taken from /proc), file name and \
             parent pid, fork events are off, exits are reported for leaders only"
        ),
    };
    let _ = writeln!(
        s,
        "cgroup v2   {}",
        r.cgroup2
            .as_deref()
            .unwrap_or("not mounted: cgroup paths come from v1 hierarchies only")
    );
    let _ = match &r.hardware_counters {
        Ok(()) => writeln!(s, "hw counters available"),
        Err(e) => writeln!(
            s,
            "hw counters not available ({e}); CPU evidence uses cpu-clock sampling only"
        ),
    };
    match &r.hooks {
        Err(e) => {
            let _ = writeln!(s, "hooks       {e}");
        }
        Ok(hooks) => {
            let required: Vec<_> = hooks.iter().filter(|h| !h.optional).collect();
            let ok = required.iter().filter(|h| h.attached).count();
            let opt_ok = hooks.iter().filter(|h| h.optional && h.attached).count();
            let _ = writeln!(
                s,
                "hooks       {ok} of {} attach, and {opt_ok} of {} optional",
                required.len(),
                hooks.len() - required.len()
            );
            for h in hooks {
                if let Some(lost) = h.degraded.as_ref().filter(|_| h.attached) {
                    let _ = writeln!(
                        s,
                        "  simpler  {:<16} {}\n           lost: {lost}",
                        h.program, h.attach_point
                    );
                } else if h.attached {
                    let _ = writeln!(s, "  ok       {:<16} {}", h.program, h.attach_point);
                } else {
                    let _ = writeln!(
                        s,
                        "  {}  {:<16} {}: {}\n           lost: {}",
                        if h.optional { "n/a    " } else { "MISSING" },
                        h.program,
                        h.attach_point,
                        h.error.as_deref().unwrap_or("?"),
                        h.lost
                    );
                }
            }
        }
    }
    let verdict = if r.ready() {
        "ready: every required hook attaches"
    } else if r.runnable() {
        "degraded: the sensor runs, without what the missing hooks give"
    } else {
        "cannot run here"
    };
    let _ = writeln!(s, "verdict     {verdict}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_from_uname() {
        assert_eq!(version_of("6.18.44-fc-v1098 (x86_64)"), Some((6, 18)));
        assert_eq!(version_of("5.14.0-427.el9.x86_64"), Some((5, 14)));
        assert!(version_of("5.14.0").unwrap() < MIN_KERNEL);
        assert_eq!(version_of("weird"), None);
    }
}
