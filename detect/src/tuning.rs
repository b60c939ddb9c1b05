//! Miner tuning: what a RandomX miner does to the node to go faster. XMRig's MSR mod loads
//! the `msr` module with writes allowed (`modprobe msr allow_writes=on`) and writes prefetcher
//! registers; RandomX wants huge pages, reserved through `vm.nr_hugepages` or the 1 GB pages'
//! `nr_hugepages` in sysfs. Read from command lines (the tool run, or the shell line that
//! writes the file) and from sysctl writes the kernel reports.

/// What was tuned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tuning {
    /// Model-specific registers made writable or written: what XMRig's MSR mod needs.
    Msr(String),
    /// Huge pages reserved.
    HugePages(String),
}

impl Tuning {
    pub fn what(&self) -> &str {
        match self {
            Tuning::Msr(s) | Tuning::HugePages(s) => s,
        }
    }
}

/// Interpreters a script of the same name as a tool runs under.
const INTERPRETERS: &[&str] = &["sh", "bash", "dash", "ash", "busybox", "python3", "perl"];

/// The msr module's parameter that allows writes from user space.
const MSR_ALLOW: &str = "/sys/module/msr/parameters/allow_writes";

/// Up to this many bytes of a command line are quoted in evidence.
const QUOTE: usize = 120;

fn quote(argv: &[String]) -> String {
    let s = argv.join(" ");
    if s.chars().count() <= QUOTE {
        s
    } else {
        s.chars().take(QUOTE).collect::<String>() + "…"
    }
}

/// A huge-page count being set to more than zero (`vm.nr_hugepages=1280`).
fn reserves_pages(value: &str) -> bool {
    value.trim().parse::<u64>().is_ok_and(|n| n > 0)
}

/// Tuning a command line does: loading `msr` (`modprobe`, `insmod`), `wrmsr`, a `sysctl`
/// that reserves huge pages, or a shell line that writes the msr parameter or a huge-page
/// count.
pub fn from_argv(argv: &[String]) -> Option<Tuning> {
    let base = |a: &str| a.rsplit('/').next().unwrap_or("").to_string();
    let mut argv = argv;
    // A script runs as its interpreter, with the script's path next: judge the script's name.
    if argv.len() > 1
        && INTERPRETERS.contains(&base(&argv[0]).as_str())
        && !argv[1].starts_with('-')
    {
        argv = &argv[1..];
    }
    let tool = base(argv.first()?);
    let tool = tool.as_str();
    let args = &argv[1..];
    match tool {
        "modprobe" | "insmod" if args.iter().any(|a| a == "msr" || a.ends_with("/msr.ko")) => {
            return Some(Tuning::Msr(format!("ran `{}`", quote(argv))));
        }
        "wrmsr" => return Some(Tuning::Msr(format!("ran `{}`", quote(argv)))),
        "sysctl" => {
            for a in args {
                let Some((name, value)) = a.split_once('=') else {
                    continue;
                };
                let name = name.replace('/', ".");
                if matches!(
                    name.as_str(),
                    "vm.nr_hugepages" | "vm.nr_overcommit_hugepages"
                ) && reserves_pages(value)
                {
                    return Some(Tuning::HugePages(format!("ran `{}`", quote(argv))));
                }
            }
        }
        _ => {}
    }
    // `sh -c 'echo on > /sys/module/msr/parameters/allow_writes'` and the like.
    let line = args.join(" ");
    if line.contains(MSR_ALLOW) {
        return Some(Tuning::Msr(format!("ran `{}`", quote(argv))));
    }
    if line.contains("hugepages-1048576kB/nr_hugepages") && !tool.starts_with("cat") {
        return Some(Tuning::HugePages(format!("ran `{}`", quote(argv))));
    }
    None
}

/// Tuning a sysctl write does (`name` as /proc/sys spells it: `vm/nr_hugepages`).
pub fn from_sysctl(name: &str, value: &str) -> Option<Tuning> {
    let dotted = name.replace('/', ".");
    (matches!(
        dotted.as_str(),
        "vm.nr_hugepages" | "vm.nr_hugepages_mempolicy" | "vm.nr_overcommit_hugepages"
    ) && reserves_pages(value))
    .then(|| Tuning::HugePages(format!("wrote {dotted} = {}", value.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn msr_tuning_is_seen_on_command_lines() {
        assert_eq!(
            from_argv(&argv("/sbin/modprobe msr allow_writes=on")),
            Some(Tuning::Msr(
                "ran `/sbin/modprobe msr allow_writes=on`".into()
            ))
        );
        assert!(matches!(
            from_argv(&argv(
                "insmod /lib/modules/6.1/kernel/arch/x86/kernel/msr.ko"
            )),
            Some(Tuning::Msr(_))
        ));
        assert!(matches!(
            from_argv(&argv("wrmsr -a 0x1a4 0xf")),
            Some(Tuning::Msr(_))
        ));
        let sh = vec![
            "sh".to_string(),
            "-c".into(),
            "echo on > /sys/module/msr/parameters/allow_writes".into(),
        ];
        assert!(matches!(from_argv(&sh), Some(Tuning::Msr(_))));
        // Other modules, and reading a parameter, are not tuning.
        // A script named like the tool runs as its interpreter.
        assert!(matches!(
            from_argv(&argv("/bin/sh /tmp/x/modprobe msr allow_writes=on")),
            Some(Tuning::Msr(_))
        ));
        assert_eq!(from_argv(&argv("/bin/sh -c true")), None);
        assert_eq!(from_argv(&argv("modprobe nvidia")), None);
        assert_eq!(from_argv(&argv("modprobe -r msr2")), None);
    }

    #[test]
    fn huge_page_reservations_count_when_above_zero() {
        assert!(matches!(
            from_argv(&argv("sysctl -w vm.nr_hugepages=1280")),
            Some(Tuning::HugePages(_))
        ));
        assert!(matches!(
            from_argv(&argv("sysctl vm/nr_hugepages=64")),
            Some(Tuning::HugePages(_))
        ));
        assert_eq!(from_argv(&argv("sysctl -w vm.nr_hugepages=0")), None);
        assert_eq!(from_argv(&argv("sysctl vm.swappiness=10")), None);
        assert_eq!(from_argv(&argv("sysctl -a")), None);
        assert_eq!(
            from_sysctl("vm/nr_hugepages", "1280\n"),
            Some(Tuning::HugePages("wrote vm.nr_hugepages = 1280".into()))
        );
        assert_eq!(from_sysctl("vm/nr_hugepages", "0"), None);
        assert_eq!(from_sysctl("vm/nr_hugepages", ""), None);
        assert_eq!(from_sysctl("vm/nr_pdflush_threads", "4"), None);
    }
}
