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
    if name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
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
    let target = DIRS.iter().find(|(d, _)| *d == dir).map(|(_, t)| *t)?;
    // cron, systemd and sudo ignore names with a leading dot, so those are temporaries; a
    // program directory runs them like any other (`/usr/local/bin/.x` is a hidden binary).
    (!name.starts_with('.') || target == Target::SystemBinary).then_some(target)
}

/// Programs that install and upgrade packages, and their helpers.
const PACKAGE_MANAGERS: &[&str] = &[
    "dpkg",
    "apt",
    "apt-get",
    "aptitude",
    "unattended-upgrade",
    "rpm",
    "dnf",
    "yum",
    "zypper",
    "pacman",
    "snapd",
];

/// Where the package manager's programs and scripts are installed: directories only root
/// can write, so a copy or a link elsewhere is not the package manager.
const SYSTEM_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/bin", "/sbin"];

/// Package managers installed outside [`SYSTEM_DIRS`], by their full path.
const PACKAGE_MANAGER_PATHS: &[&str] = &["/usr/lib/snapd/snapd"];

/// Python interpreters of the system's own tools outside [`SYSTEM_DIRS`] (RHEL 8's dnf and
/// yum run on this one).
const SYSTEM_PYTHONS: &[&str] = &["/usr/libexec/platform-python"];

/// `path` if it is a file directly in one of [`SYSTEM_DIRS`], by its base name.
fn system_program(path: &str) -> Option<&str> {
    let (dir, base) = path.rsplit_once('/')?;
    SYSTEM_DIRS.contains(&dir).then_some(base)
}

/// `exe` is a Python interpreter the system installed.
fn system_python(exe: &str) -> bool {
    system_program(exe).is_some_and(|b| b.starts_with("python"))
        || SYSTEM_PYTHONS.iter().any(|p| {
            exe.strip_prefix(p)
                .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        })
}

/// Whether the writer is the package manager: its executable is one of
/// [`PACKAGE_MANAGERS`] in a system directory, or it is Python running such a script from
/// one (as `unattended-upgrade` does). The name a process gives itself (`comm`, argv\[0\])
/// never counts, and neither does a copy of `dpkg` in a home or scratch directory.
pub fn is_package_manager(exe: &str, argv: &[String]) -> bool {
    let listed = |name: &str| PACKAGE_MANAGERS.contains(&name);
    if PACKAGE_MANAGER_PATHS.contains(&exe) || system_program(exe).is_some_and(listed) {
        return true;
    }
    system_python(exe)
        && argv
            .get(1)
            .and_then(|script| system_program(script))
            .is_some_and(listed)
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
        assert_eq!(classify("/etc/systemd/system", ".x.service"), None);
        // A hidden program is still a program; an editor's swap file is not.
        assert_eq!(
            classify("/usr/local/bin", ".kworker"),
            Some(Target::SystemBinary)
        );
        assert_eq!(classify("/usr/local/bin", ".deploy.sh.swp"), None);
        assert_eq!(classify("/etc", "sudoers~"), None);
        assert_eq!(classify("/srv", "x"), None);
    }

    #[test]
    fn package_managers_by_installed_executable() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_package_manager("/usr/bin/dpkg", &argv(&["dpkg", "-i"])));
        assert!(is_package_manager("/usr/bin/rpm", &[]));
        assert!(is_package_manager("/usr/lib/snapd/snapd", &[]));
        assert!(is_package_manager(
            "/usr/libexec/platform-python3.6",
            &argv(&["/usr/libexec/platform-python", "/usr/bin/dnf"])
        ));
        assert!(!is_package_manager("/tmp/snapd", &[]));
        assert!(!is_package_manager(
            "/usr/libexec/platform-pythonx",
            &argv(&["python", "/usr/bin/dnf"])
        ));
        assert!(is_package_manager(
            "/usr/bin/python3.11",
            &argv(&["/usr/bin/python3", "/usr/bin/unattended-upgrade"])
        ));
        assert!(!is_package_manager("/usr/bin/bash", &argv(&["dpkg"])));
        // A copy named dpkg outside the system directories, or below one, is not.
        assert!(!is_package_manager("/tmp/dpkg", &argv(&["dpkg"])));
        assert!(!is_package_manager("/usr/bin/x/dpkg", &[]));
        assert!(!is_package_manager("/home/u/usr/bin/dpkg", &[]));
        // Python with a name, or running a script of that name from elsewhere, is not.
        assert!(!is_package_manager(
            "/usr/bin/python3.11",
            &argv(&["unattended-upgr"])
        ));
        assert!(!is_package_manager(
            "/usr/bin/python3.11",
            &argv(&["python3", "/tmp/unattended-upgrade"])
        ));
        assert!(!is_package_manager(
            "/usr/bin/python3.11",
            &argv(&["python3", "-c", "/usr/bin/unattended-upgrade"])
        ));
    }
}
