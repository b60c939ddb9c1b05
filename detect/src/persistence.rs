//! Persistence and tampering: which writes to which files are how a miner stays on a node
//! (a cron job, a systemd unit, an `ld.so.preload` entry that hides it, an SSH key, a
//! replaced system binary, a new account), and which writers are the package manager, whose
//! writes there are its job.

/// What a changed file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cron,
    SystemdUnit,
    /// `/etc/ld.so.preload`: every program on the node loads what it names.
    Preload,
    AuthorizedKeys,
    SystemBinary,
    /// `/etc/passwd`, `shadow`, `group`, `gshadow`.
    Accounts,
    Sudoers,
}

impl Target {
    /// A stable name, for machines.
    pub fn code(self) -> &'static str {
        match self {
            Target::Cron => "cron",
            Target::SystemdUnit => "systemd_unit",
            Target::Preload => "ld_so_preload",
            Target::AuthorizedKeys => "authorized_keys",
            Target::SystemBinary => "system_binary",
            Target::Accounts => "accounts",
            Target::Sudoers => "sudoers",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Target::Cron => "a cron job",
            Target::SystemdUnit => "a systemd unit",
            Target::Preload => "the list of libraries every program loads first",
            Target::AuthorizedKeys => "the SSH keys that may log in",
            Target::SystemBinary => "a system binary",
            Target::Accounts => "the accounts of the node",
            Target::Sudoers => "who may use sudo",
        }
    }

    /// The weight of a change by anyone but the package manager. `ld.so.preload` is how
    /// miners hide from `top`; a replaced binary is how they hide from everything else.
    pub fn weight(self) -> u32 {
        match self {
            Target::Preload => 35,
            Target::SystemBinary => 25,
            _ => 20,
        }
    }
}

/// How the file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Written and closed.
    Wrote,
    Created,
    /// Renamed into the directory, possibly over a file that was there.
    MovedIn,
}

impl Change {
    pub fn verb(self) -> &'static str {
        match self {
            Change::Wrote => "wrote",
            Change::Created => "created",
            Change::MovedIn => "moved a file to",
        }
    }
}

/// Directories whose every entry is a [`Target`].
const DIRS: &[(&str, Target)] = &[
    ("/etc/cron.d", Target::Cron),
    ("/etc/cron.hourly", Target::Cron),
    ("/etc/cron.daily", Target::Cron),
    ("/etc/cron.weekly", Target::Cron),
    ("/etc/cron.monthly", Target::Cron),
    ("/var/spool/cron", Target::Cron),
    ("/var/spool/cron/crontabs", Target::Cron),
    ("/etc/systemd/system", Target::SystemdUnit),
    ("/etc/systemd/user", Target::SystemdUnit),
    ("/usr/lib/systemd/system", Target::SystemdUnit),
    ("/etc/sudoers.d", Target::Sudoers),
    ("/usr/bin", Target::SystemBinary),
    ("/usr/sbin", Target::SystemBinary),
    ("/bin", Target::SystemBinary),
    ("/sbin", Target::SystemBinary),
    ("/usr/local/bin", Target::SystemBinary),
    ("/usr/local/sbin", Target::SystemBinary),
];

/// Files of `/etc` that are [`Target`]s; the rest of `/etc` is not judged.
const ETC: &[(&str, Target)] = &[
    ("crontab", Target::Cron),
    ("ld.so.preload", Target::Preload),
    ("passwd", Target::Accounts),
    ("shadow", Target::Accounts),
    ("group", Target::Accounts),
    ("gshadow", Target::Accounts),
    ("sudoers", Target::Sudoers),
];

/// The directories to watch: every one in [`DIRS`], `/etc` for [`ETC`], and the `.ssh`
/// directories given (from the home directories that exist).
pub fn watched_dirs() -> impl Iterator<Item = &'static str> {
    DIRS.iter().map(|(d, _)| *d).chain(["/etc"])
}

/// What `name` in `dir` is, if it is a target. `dir` is a watched directory as given to
/// [`watched_dirs`], or an `.ssh` directory.
pub fn classify(dir: &str, name: &str) -> Option<Target> {
    // Editors and tools write a temporary file first and move it in: the move is judged.
    if name.starts_with('.') && !dir.ends_with("/.ssh")
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".dpkg-new")
        || name.ends_with(".dpkg-tmp")
    {
        return None;
    }
    if dir == "/etc" {
        return ETC.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
    }
    if dir.ends_with("/.ssh") {
        return name
            .starts_with("authorized_keys")
            .then_some(Target::AuthorizedKeys);
    }
    DIRS.iter().find(|(d, _)| *d == dir).map(|(_, t)| *t)
}

/// Programs that install and upgrade packages, and their helpers.
const PACKAGE_MANAGERS: &[&str] = &[
    "dpkg",
    "apt",
    "apt-get",
    "aptitude",
    "unattended-upgr",
    "unattended-upgrade",
    "rpm",
    "dnf",
    "yum",
    "zypper",
    "pacman",
    "snapd",
];

/// Whether the writer is the package manager, by its executable's name (a name a process
/// gives itself is not enough), or by its name when it runs on Python, as
/// `unattended-upgrade` does.
pub fn is_package_manager(comm: &str, exe: &str) -> bool {
    let base = exe.rsplit('/').next().unwrap_or(exe);
    PACKAGE_MANAGERS
        .iter()
        .any(|p| *p == base || (base.starts_with("python") && *p == comm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_by_directory_and_name() {
        assert_eq!(classify("/etc/cron.d", "mw"), Some(Target::Cron));
        assert_eq!(classify("/etc", "ld.so.preload"), Some(Target::Preload));
        assert_eq!(classify("/etc", "passwd"), Some(Target::Accounts));
        assert_eq!(classify("/etc", "resolv.conf"), None);
        assert_eq!(classify("/etc", "hosts"), None);
        assert_eq!(
            classify("/usr/local/bin", "kworker"),
            Some(Target::SystemBinary)
        );
        assert_eq!(
            classify("/root/.ssh", "authorized_keys2"),
            Some(Target::AuthorizedKeys)
        );
        assert_eq!(classify("/root/.ssh", "known_hosts"), None);
        // Temporaries are not judged; the move that installs them is.
        assert_eq!(classify("/etc/cron.d", ".placeholder"), None);
        assert_eq!(classify("/usr/bin", "ls.dpkg-new"), None);
        assert_eq!(classify("/etc", "sudoers~"), None);
        assert_eq!(classify("/srv", "x"), None);
    }

    #[test]
    fn package_managers_by_name_or_executable() {
        assert!(is_package_manager("dpkg", "/usr/bin/dpkg"));
        assert!(is_package_manager("unattended-upgr", "/usr/bin/python3.11"));
        assert!(is_package_manager("x", "/usr/bin/rpm"));
        assert!(!is_package_manager("bash", "/usr/bin/bash"));
        // A name taken with prctl is not the package manager.
        assert!(!is_package_manager("dpkg", "/tmp/x"));
        assert!(!is_package_manager("python3", "/usr/bin/python3.11"));
    }
}
