//! Miner tuning, attributed to the process that did it: a stand-in `modprobe` run the way
//! XMRig's MSR mod runs it (no module is loaded: the script does nothing), a huge-page
//! reservation through the real `sysctl`, and one written straight to /proc/sys (seen by the
//! `cgroup/sysctl` hook, not from any command line). The reservation is a few pages, and the
//! value before the test is put back afterwards.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::Duration,
};

use minerwatch_tests::{Proc, Sensor, reason_detail, root_or_skip, scratch};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Puts the huge-page count back however the test ends.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = fs::write(NR_HUGEPAGES, &self.0);
    }
}

#[test]
fn msr_and_huge_page_tuning_are_attributed_to_their_writer() {
    if !root_or_skip("msr_and_huge_page_tuning_are_attributed_to_their_writer") {
        return;
    }
    let before = fs::read_to_string(NR_HUGEPAGES).unwrap();
    let _restore = Restore(before.clone());
    let pages = before.trim().parse::<u64>().unwrap() + 4;
    let mut s = Sensor::start("tuning", &[]);

    // The MSR mod's command, run by a script named `modprobe` that does nothing.
    let dir = scratch("tuning-bin");
    let modprobe = dir.join("modprobe");
    fs::write(&modprobe, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&modprobe, fs::Permissions::from_mode(0o755)).unwrap();
    let p = Proc::spawn(
        Command::new(&modprobe)
            .args(["msr", "allow_writes=on"])
            .stdin(Stdio::null()),
    );
    let a = s
        .wait_alert(p.pid(), "miner_tuning", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no miner_tuning for modprobe msr:\n{}", s.stderr_text()));
    let d = reason_detail(&a, "miner_tuning");
    assert!(
        d.contains("modprobe msr allow_writes=on") && d.contains("model-specific registers"),
        "{d}"
    );
    assert_eq!(a["severity"], "medium", "{a}");

    // A reservation through sysctl(8).
    let p = Proc::spawn(
        Command::new("sysctl")
            .args(["-w", &format!("vm.nr_hugepages={pages}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    let a = s
        .wait_alert(p.pid(), "miner_tuning", Duration::from_secs(5))
        .expect("a huge-page reservation through sysctl");
    assert!(
        reason_detail(&a, "miner_tuning").contains("huge pages"),
        "{a}"
    );

    // Written straight to /proc/sys by this test process, whose command line says nothing:
    // only the sysctl hook can tell.
    fs::write(NR_HUGEPAGES, format!("{}\n", pages + 1)).unwrap();
    let me = std::process::id();
    let a = s
        .wait_alert(me, "miner_tuning", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the write to {NR_HUGEPAGES} not attributed to pid {me}"));
    assert_eq!(
        reason_detail(&a, "miner_tuning"),
        format!(
            "wrote vm.nr_hugepages = {}: reserves huge pages, which RandomX wants",
            pages + 1
        )
    );
}
