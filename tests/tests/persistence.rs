//! Persistence, the way a miner sets it up: a cron job written by a shell, a binary moved
//! into /usr/local/bin, a hidden one written there, each attributed to the process that did
//! it; the same by the real dpkg installing a package the test built and by its maintainer
//! script, weighing little, and by a copy named dpkg, weighing full; an ordinary file in
//! /etc, nothing. The files and the package are the test's own,
//! under names no package uses, and removed afterwards.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use minerwatch_tests::{
    Proc, Sensor, has_reason, reason_detail, root_or_skip, scratch, severity_rank,
};

/// Files the test creates outside its scratch directory, removed when dropped.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Puts root's SSH keys back as they were: the file's old bytes, or no file (and no
/// `.ssh`) when the test made them.
struct RestoreKeys {
    keys: PathBuf,
    old: Option<Vec<u8>>,
    made_dir: bool,
}

impl RestoreKeys {
    fn new() -> Self {
        let dir = PathBuf::from("/root/.ssh");
        let made_dir = !dir.exists();
        if made_dir {
            fs::create_dir_all(&dir).expect("make /root/.ssh");
            fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .expect("chmod /root/.ssh");
        }
        let keys = dir.join("authorized_keys");
        RestoreKeys {
            old: fs::read(&keys).ok(),
            keys,
            made_dir,
        }
    }
}

impl Drop for RestoreKeys {
    fn drop(&mut self) {
        match &self.old {
            Some(bytes) => {
                let _ = fs::write(&self.keys, bytes);
            }
            None => {
                let _ = fs::remove_file(&self.keys);
            }
        }
        if self.made_dir {
            let _ = fs::remove_dir(self.keys.parent().expect("parent"));
        }
    }
}

/// The stand-in package the real dpkg installs.
const PACKAGE: &str = "minerwatch-test-pm";

/// Builds `PACKAGE`, holding one script at `bin` and a maintainer script that writes the
/// cron job `cron` when the package is configured, with `dpkg-deb`; returns the .deb.
fn build_package(dir: &std::path::Path, bin: &std::path::Path, cron: &std::path::Path) -> PathBuf {
    let root = dir.join("pkg");
    let file = root.join(bin.strip_prefix("/").expect("absolute"));
    fs::create_dir_all(root.join("DEBIAN")).expect("make the package tree");
    fs::create_dir_all(file.parent().expect("parent")).expect("make the package tree");
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {PACKAGE}\nVersion: 1.0\nArchitecture: all\n\
             Maintainer: minerwatch tests <tests@minerwatch.invalid>\n\
             Description: stand-in package for the minerwatch persistence test\n"
        ),
    )
    .expect("write the control file");
    fs::write(&file, "#!/bin/sh\n").expect("write the packaged script");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).expect("chmod the script");
    let postinst = root.join("DEBIAN/postinst");
    fs::write(
        &postinst,
        format!(
            "#!/bin/sh\nset -e\nprintf '# minerwatch test\\n' > {}\n",
            cron.display()
        ),
    )
    .expect("write the postinst");
    fs::set_permissions(&postinst, fs::Permissions::from_mode(0o755)).expect("chmod postinst");
    let deb = dir.join(format!("{PACKAGE}.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .expect("run dpkg-deb");
    assert!(out.status.success(), "dpkg-deb: {out:?}");
    deb
}

/// Removes `PACKAGE` from the system when dropped.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", PACKAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn sh(line: &str) -> Proc {
    Proc::spawn(
        Command::new("/bin/sh")
            .args(["-c", line])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
}

#[test]
fn persistence_is_attributed_to_its_writer() {
    if !root_or_skip("persistence_is_attributed_to_its_writer") {
        return;
    }
    let tag = std::process::id();
    let cron = PathBuf::from(format!("/etc/cron.d/minerwatch-test-{tag}"));
    let bin = PathBuf::from(format!("/usr/local/bin/minerwatch-test-{tag}"));
    let pm_bin = PathBuf::from(format!("/usr/local/bin/minerwatch-test-pm-{tag}"));
    let pm_cron = PathBuf::from(format!("/etc/cron.d/minerwatch-test-pm-{tag}"));
    let fake_bin = PathBuf::from(format!("/usr/local/bin/minerwatch-test-fake-{tag}"));
    let hidden_bin = PathBuf::from(format!("/usr/local/bin/.minerwatch-test-hidden-{tag}"));
    let etc = PathBuf::from(format!("/etc/minerwatch-test-{tag}.conf"));
    fs::create_dir_all("/etc/cron.d").unwrap();
    fs::create_dir_all("/usr/local/bin").unwrap();
    let _cleanup = Cleanup(vec![
        cron.clone(),
        bin.clone(),
        pm_bin.clone(),
        pm_cron.clone(),
        fake_bin.clone(),
        hidden_bin.clone(),
        etc.clone(),
    ]);
    let dir = scratch("persistence");
    // Before the start: the watch marks the .ssh directories that exist then.
    let keys = RestoreKeys::new();
    let mut s = Sensor::start("persistence", &["--stats-interval", "1"]);
    assert!(
        s.status()["counters"]["files_watched"].as_u64() >= Some(5),
        "the watch is up: {}",
        s.status()
    );

    // A cron job, written by a shell.
    let p = sh(&format!(
        "printf '* * * * * root /tmp/.x/kworker\\n' > {}",
        cron.display()
    ));
    let a = s
        .wait_alert(p.pid(), "persistence", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("a cron job not attributed:\n{}", s.stderr_text()));
    let d = reason_detail(&a, "persistence");
    assert!(
        d.contains(&cron.display().to_string()) && d.contains("a cron job"),
        "{d}"
    );
    assert_eq!(a["severity"], "low", "{a}");
    assert_eq!(a["argv"][0], "/bin/sh", "the writer, as it exec'd: {a}");
    // The same evidence as a finding record, with its facts for a SIEM.
    let pid = p.pid();
    let f = s
        .records()
        .into_iter()
        .find(|r| r["kind"] == "finding" && r["pid"] == pid && r["code"] == "persistence")
        .unwrap_or_else(|| panic!("no finding record for the cron job"));
    assert_eq!(f["facts"]["path"], cron.display().to_string(), "{f}");
    assert_eq!(f["facts"]["target"], "cron", "{f}");
    assert_eq!(f["facts"]["package_manager"], "false", "{f}");
    drop(p);

    // A key appended to root's authorized_keys (restored afterwards).
    let p = sh(&format!(
        "echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMWtestkeyminerwatch x@y' >> {}",
        keys.keys.display()
    ));
    let a = s
        .wait_alert(p.pid(), "persistence", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("an SSH key not attributed:\n{}", s.stderr_text()));
    let d = reason_detail(&a, "persistence");
    assert!(
        d.contains("/root/.ssh/authorized_keys") && d.contains("the SSH keys that may log in"),
        "{d}"
    );
    drop(p);

    // A binary moved into /usr/local/bin.
    let staged = dir.join("kworker");
    fs::write(&staged, "#!/bin/sh\n").unwrap();
    let p = Proc::spawn(Command::new("mv").arg(&staged).arg(&bin));
    let pid = p.pid();
    let a = s
        .wait_alert(pid, "persistence", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("a binary moved in not attributed:\n{}", s.stderr_text()));
    let d = reason_detail(&a, "persistence");
    assert!(
        d.contains(&bin.display().to_string()) && d.contains("a system binary"),
        "{d}"
    );
    // mv is gone by the time the change is read; its record is not.
    assert_eq!(a["comm"], "mv", "{a}");
    p.wait();

    // A hidden program written straight into /usr/local/bin: a dot-name there is not a
    // temporary.
    let p = sh(&format!("printf '#!/bin/sh\\n' > {}", hidden_bin.display()));
    let a = s
        .wait_alert(p.pid(), "persistence", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("a hidden binary not attributed:\n{}", s.stderr_text()));
    let d = reason_detail(&a, "persistence");
    assert!(
        d.contains(&hidden_bin.display().to_string()) && d.contains("a system binary"),
        "{d}"
    );
    drop(p);

    // The package manager: the real dpkg installing a package the test built, which puts a
    // binary in /usr/local/bin. Told apart, and weighs little.
    let pkg = build_package(&dir, &pm_bin, &pm_cron);
    let _purge = Purge;
    let p = Proc::spawn(
        Command::new("/usr/bin/dpkg")
            .arg("-i")
            .arg(&pkg)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    let a = s
        .wait_alert(p.pid(), "persistence", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the package manager's write not seen:\n{}", s.stderr_text()));
    let d = reason_detail(&a, "persistence");
    assert!(
        d.contains(&pm_bin.display().to_string()) && d.contains("as the package manager"),
        "{a}"
    );
    assert!(severity_rank(&a["severity"]) < 2, "weighs little: {a}");
    assert_eq!(a["exe"], "/usr/bin/dpkg", "{a}");
    let package_manager_score = a["score"].as_u64().unwrap();
    // Its maintainer script, a shell dpkg started, writes a cron job: the package
    // manager's too.
    let dpkg_pid = p.pid();
    let a = s
        .wait_for(Duration::from_secs(20), |r| {
            r["kind"] == "alert"
                && has_reason(r, "persistence")
                && reason_detail(r, "persistence").contains(&pm_cron.display().to_string())
        })
        .unwrap_or_else(|| panic!("the postinst's cron job not seen:\n{}", s.stderr_text()));
    assert!(
        reason_detail(&a, "persistence").contains("as the package manager"),
        "{a}"
    );
    assert!(severity_rank(&a["severity"]) < 2, "weighs little: {a}");
    assert_ne!(a["pid"], dpkg_pid, "the script, not dpkg itself: {a}");
    assert_eq!(a["ppid"], dpkg_pid, "started by dpkg: {a}");
    p.wait();

    // A copy of a shell named dpkg, outside the system directories: not the package
    // manager, whatever it calls itself.
    let dpkg = dir.join("dpkg");
    fs::copy("/bin/sh", &dpkg).unwrap();
    fs::set_permissions(&dpkg, fs::Permissions::from_mode(0o755)).unwrap();
    let p = Proc::spawn(
        Command::new(&dpkg)
            .arg("-c")
            .arg(format!("printf x > {}; sleep 1", fake_bin.display()))
            .stdout(Stdio::null()),
    );
    let a = s
        .wait_alert(p.pid(), "persistence", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the fake dpkg's write not seen:\n{}", s.stderr_text()));
    assert!(
        !reason_detail(&a, "persistence").contains("as the package manager"),
        "{a}"
    );
    assert!(
        a["score"].as_u64().unwrap() > package_manager_score,
        "a system binary, full weight: {a}"
    );
    drop(p);

    // Any other file in /etc: not judged.
    let p = sh(&format!("printf x > {}", etc.display()));
    let pid = p.pid();
    p.wait();
    s.settled(pid, Duration::from_secs(10));
    assert!(
        !s.alerts_for(pid)
            .iter()
            .any(|a| has_reason(a, "persistence")),
        "{:?}",
        s.alerts_for(pid)
    );
    let c = &s.status()["counters"];
    assert!(c["persistence_changes"].as_u64() >= Some(5), "{c}");
    assert!(
        c["persistence_by_package_manager"].as_u64() >= Some(2),
        "{c}"
    );
    assert_eq!(c["file_overflows"].as_u64(), Some(0), "{c}");
}
