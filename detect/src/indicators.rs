//! Process-shape indicators: where the executable lives, names that imitate kernel threads,
//! and command lines that carry miner options. Plain string functions.

/// Why an executable's location is suspicious, if it is.
pub fn exe_location(exe: &str) -> Option<&'static str> {
    if exe.starts_with("/memfd:") {
        return Some("runs from memory (memfd), with no file on disk");
    }
    if exe.ends_with(" (deleted)") {
        return Some("was deleted from disk after it started");
    }
    for (dir, why) in [
        ("/tmp/", "is in /tmp, a world-writable directory"),
        ("/var/tmp/", "is in /var/tmp, a world-writable directory"),
        (
            "/dev/shm/",
            "is in /dev/shm, a memory-backed world-writable directory",
        ),
    ] {
        if exe.starts_with(dir) {
            return Some(why);
        }
    }
    None
}

/// Prefixes of real kernel thread names.
const KTHREADS: &[&str] = &[
    "kworker/",
    "kthreadd",
    "ksoftirqd/",
    "migration/",
    "rcu_",
    "kswapd",
    "watchdog/",
    "khugepaged",
    "kcompactd",
    "kdevtmpfs",
    "kauditd",
    "jbd2/",
    "irq/",
    "cpuhp/",
    "idle_inject/",
];

/// A user-space process whose name or argv[0] imitates a kernel thread (`[kworker/0:1]`).
/// Real kernel threads have no executable, so any `exe` here means an imitation.
pub fn imitates_kernel_thread(comm: &str, argv0: Option<&str>, exe: &str) -> Option<String> {
    if exe.is_empty() {
        return None;
    }
    for name in std::iter::once(comm).chain(argv0) {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        let bracketed = name.starts_with('[') && name.ends_with(']');
        if bracketed || KTHREADS.iter().any(|k| bare.starts_with(k)) {
            return Some(name.to_string());
        }
    }
    None
}

/// Option names that only miners use.
const MINER_FLAGS: &[&str] = &[
    "--donate-level",
    "--nicehash",
    "--randomx-mode",
    "--randomx-1gb-pages",
    "--randomx-wrmsr",
    "--cpu-max-threads-hint",
    "--cpu-priority",
    "--coin",
];

/// Algorithms miners are told to run (`-a rx/0`, `--algo=ethash`).
const ALGOS: &[&str] = &[
    "rx/",
    "cn/",
    "cn-lite",
    "cn-heavy",
    "cn-pico",
    "argon2/",
    "ghostrider",
    "ethash",
    "etchash",
    "kawpow",
    "autolykos",
    "randomx",
    "cryptonight",
    "sha256d",
    "scrypt",
];

/// Words that mark a URL or host as a mining pool.
const POOL_WORDS: &[&str] = &[
    "pool", "xmr", "monero", "nicehash", "nanopool", "2miners", "mine",
];

/// `host:port`, `scheme://…`: what a miner's `-o` takes. A path is not one.
fn looks_like_endpoint(u: &str) -> bool {
    if u.contains("://") {
        return true;
    }
    u.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
    })
}

fn is_monero_address(s: &str) -> bool {
    // Standard (95) and integrated (106) addresses, base58, starting with 4 or 8.
    matches!(s.len(), 95 | 106)
        && matches!(s.as_bytes()[0], b'4' | b'8')
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() && !matches!(c, b'0' | b'O' | b'I' | b'l'))
}

fn is_eth_address(s: &str) -> bool {
    let s = s.split(['.', '/']).next().unwrap_or(s);
    s.len() == 42 && s.starts_with("0x") && s[2..].bytes().all(|c| c.is_ascii_hexdigit())
}

/// Each miner indicator found in `argv`, described for a person.
pub fn miner_cmdline(argv: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut add = |s: String| {
        if !found.contains(&s) {
            found.push(s);
        }
    };
    let mut prev: Option<&str> = None;
    for arg in argv.iter().skip(1) {
        let lower = arg.to_ascii_lowercase();
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v)),
            _ => (arg.as_str(), None),
        };
        if let Some(scheme) = [
            "stratum+tcp://",
            "stratum+ssl://",
            "stratum+tls://",
            "stratum2+tcp://",
        ]
        .iter()
        .find(|s| lower.contains(*s))
        {
            add(format!("a Stratum URL ({scheme}…)"));
        }
        if let Some(f) = MINER_FLAGS.iter().find(|f| flag == **f) {
            add(format!("the miner option {f}"));
        }
        // The value of -a/--algo, whether attached or the next argument.
        let algo = match (prev, flag, value) {
            (_, "-a" | "--algo", Some(v)) => Some(v),
            (Some("-a" | "--algo"), _, _) => Some(arg.as_str()),
            _ => None,
        };
        if let Some(a) = algo
            && ALGOS.iter().any(|p| a.to_ascii_lowercase().starts_with(p))
        {
            add(format!("a mining algorithm ({a})"));
        }
        let url = match (prev, flag, value) {
            (_, "-o" | "--url", Some(v)) => Some(v),
            (Some("-o" | "--url"), _, _) => Some(arg.as_str()),
            _ => None,
        };
        // A pool is `host:port` or a URL; `-o` is also every compiler's output file, and
        // `gcc -o threadpool` or `-o target/minerwatch` is no pool.
        if let Some(u) = url
            && looks_like_endpoint(u)
            && POOL_WORDS
                .iter()
                .any(|w| u.to_ascii_lowercase().contains(w))
        {
            add(format!("a pool address ({u})"));
        }
        let bare = value.unwrap_or(arg);
        if is_monero_address(bare) {
            add(format!("a Monero wallet address ({}…)", &bare[..12]));
        } else if is_eth_address(bare) {
            add(format!("an Ethereum wallet address ({}…)", &bare[..12]));
        }
        prev = Some(flag);
    }
    found
}

/// Programs that run a command given on their own command line: a miner started through one
/// of them shows its command line twice, in the launcher and in the miner.
const LAUNCHERS: &[&str] = &[
    "timeout", "nohup", "sudo", "doas", "runuser", "srun", "env", "nice", "ionice", "taskset",
    "numactl", "chrt", "setsid", "stdbuf", "flock", "time", "unbuffer", "xargs",
];

/// Launchers whose command runs elsewhere than in their own process tree: `srun` has
/// slurmstepd start the task, so the task does not descend from it.
pub fn launches_remotely(argv: &[String]) -> bool {
    argv.first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .is_some_and(|name| name == "srun")
}

/// Shells, and `su`: they launch a command only when given one with `-c`.
const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "mksh", "busybox", "su"];

/// The words of the command a launcher in `argv[0]` runs (`timeout 60 ./x -o p` gives
/// `60 ./x -o p`; `bash -c "cd /tmp; ./x -o p"` gives `cd /tmp ./x -o p`), or `None` when
/// `argv` is not a launcher running something.
pub fn launched(argv: &[String]) -> Option<Vec<String>> {
    let name = argv.first()?.rsplit('/').next()?;
    if LAUNCHERS.contains(&name) {
        return (argv.len() > 1).then(|| argv[1..].to_vec());
    }
    if !SHELLS.contains(&name) {
        return None;
    }
    // `-c STRING`, also as part of a cluster of options (`-lc`, `-ec`).
    let at = argv.iter().skip(1).position(|a| {
        a == "--command" || (a.starts_with('-') && !a.starts_with("--") && a.contains('c'))
    })?;
    let script = argv.get(at + 2)?;
    let words: Vec<String> = script
        .split(|c: char| c.is_whitespace() || ";&|()`".contains(c))
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_matches(['"', '\'']).to_string())
        .collect();
    (!words.is_empty()).then_some(words)
}

/// Whether `argv` is the command a launcher with `words` ([`launched`]) runs: it appears in
/// them as one unbroken run, its program compared by name (`./x` and `/tmp/x` are one).
pub fn runs_within(words: &[String], argv: &[String]) -> bool {
    let Some((prog, rest)) = argv.split_first() else {
        return false;
    };
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let prog = base(prog);
    if words.len() < argv.len() {
        return false;
    }
    (0..=words.len() - argv.len())
        .any(|i| base(&words[i]) == prog && words[i + 1..i + argv.len()] == *rest)
}

/// Names of mining programs, and of the mining malware that fights over nodes (Kinsing,
/// kdevtmpfsi, and the like), as their executables and processes are called.
const MINER_NAMES: &[&str] = &[
    "xmrig",
    "xmr-stak",
    "xmr-stak-rx",
    "kinsing",
    "kdevtmpfsi",
    "minerd",
    "cpuminer",
    "cpuminer-opt",
    "ccminer",
    "ethminer",
    "nbminer",
    "t-rex",
    "phoenixminer",
    "lolminer",
    "srbminer",
    "srbminer-multi",
    "teamredminer",
    "gminer",
    "nanominer",
    "bminer",
    "xmrigdaemon",
    "moneroocean",
    "kthreaddi",
    "xmr",
];

/// The miner's name `comm` or the executable `exe` has, if either is one.
pub fn miner_name<'a>(comm: &'a str, exe: &'a str) -> Option<&'a str> {
    let base = exe.rsplit('/').next().unwrap_or(exe);
    [comm, base]
        .into_iter()
        .find(|n| MINER_NAMES.contains(&n.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn exe_locations() {
        assert!(exe_location("/tmp/.x/xmrig").is_some());
        assert!(exe_location("/dev/shm/kworker").is_some());
        assert!(exe_location("/var/tmp/a").is_some());
        assert!(
            exe_location("/memfd:payload (deleted)")
                .unwrap()
                .contains("memfd")
        );
        assert!(
            exe_location("/home/u/miner (deleted)")
                .unwrap()
                .contains("deleted")
        );
        assert_eq!(exe_location("/usr/bin/python3"), None);
        assert_eq!(exe_location("/home/tmp/x"), None);
    }

    #[test]
    fn kernel_thread_imitation() {
        assert!(imitates_kernel_thread("kworker/0:1", None, "/tmp/k").is_some());
        assert!(imitates_kernel_thread("bash", Some("[kthreadd]"), "/usr/bin/bash").is_some());
        assert_eq!(
            imitates_kernel_thread("kworker/0:1", None, ""),
            None,
            "a real kthread"
        );
        assert_eq!(
            imitates_kernel_thread("python3", Some("python3"), "/usr/bin/python3"),
            None
        );
    }

    #[test]
    fn xmrig_style_command_line() {
        let w = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
        let found = miner_cmdline(&argv(&format!(
            "./xmrig -o pool.supportxmr.com:443 -u {w} -a rx/0 --donate-level=1 --nicehash"
        )));
        assert_eq!(
            found,
            [
                "a pool address (pool.supportxmr.com:443)",
                "a Monero wallet address (44AFFq5kSiGB…)",
                "a mining algorithm (rx/0)",
                "the miner option --donate-level",
                "the miner option --nicehash",
            ]
        );
        let found = miner_cmdline(&argv("t-rex --algo=ethash -o stratum+tcp://10.0.0.1:4444"));
        assert_eq!(
            found,
            [
                "a mining algorithm (ethash)",
                "a Stratum URL (stratum+tcp://…)"
            ]
        );
    }

    #[test]
    fn ordinary_command_lines_are_clean() {
        for a in [
            "gcc -o main main.c -O2",
            "gcc -o threadpool threadpool.c",
            "ld.lld -o /work/target/release/build/minerwatch-proto-e9/build_script_build-e9",
            "cc -o mempool:v2 x.c -O2",
            "ssh -o StrictHostKeyChecking=no host",
            "tar -a -cf x.tar.gz dir",
            "srun -n 64 ./lammps -in in.lj",
            "python3 train.py --lr 0.1",
        ] {
            assert!(miner_cmdline(&argv(a)).is_empty(), "{a}");
        }
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn launchers_and_what_they_run() {
        let t = v(&["/usr/bin/timeout", "60", "./xmrig", "-o", "p:443"]);
        let words = launched(&t).unwrap();
        assert!(runs_within(&words, &v(&["/tmp/xmrig", "-o", "p:443"])));
        assert!(!runs_within(&words, &v(&["/tmp/xmrig", "-o", "q:443"])));
        assert!(!runs_within(&words, &v(&["sleep", "60"])));
        let b = v(&["bash", "-lc", "cd /tmp; ./x --donate-level 1 &"]);
        let words = launched(&b).unwrap();
        assert!(runs_within(&words, &v(&["./x", "--donate-level", "1"])));
        assert!(runs_within(&words, &v(&["/tmp/x", "--donate-level", "1"])));
        // A shell running a script, or a launcher with nothing to run, launches nothing.
        assert_eq!(launched(&v(&["bash", "job.sh"])), None);
        assert_eq!(launched(&v(&["env"])), None);
        assert_eq!(launched(&v(&["bash", "-c"])), None);
        assert_eq!(launched(&v(&["/usr/bin/xmrig", "-o", "p"])), None);
        assert!(!runs_within(&words, &[]));
    }

    #[test]
    fn miner_names_by_comm_or_executable() {
        assert_eq!(miner_name("xmrig", "/tmp/xmrig"), Some("xmrig"));
        assert_eq!(miner_name("dbus-helper", "/opt/x/Kinsing"), Some("Kinsing"));
        assert_eq!(miner_name("bash", "/usr/bin/bash"), None);
        assert_eq!(miner_name("xmrig-notes", "/usr/bin/vim"), None);
    }
}
