//! Renaming: a process that calls itself a kernel thread after it started is flagged with
//! both names; any other rename of the main thread is weak; a thread naming itself, and the
//! renaming every exec does, are not renames.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use minerwatch_tests::{Proc, Sensor, has_reason, reason_detail, root_or_skip, severity_rank};

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");

fn client(args: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(CLIENT)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
}

#[test]
fn renames_of_the_main_thread_are_evidence() {
    if !root_or_skip("renames_of_the_main_thread_are_evidence") {
        return;
    }
    let mut s = Sensor::start("rename", &["--stats-interval", "1"]);

    let c = client(&["rename", "kworker/0:2"]);
    let a = s
        .wait_alert(c.pid(), "fake_kernel_thread", Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "a rename to a kernel thread's name not flagged:\n{}",
                s.stderr_text()
            )
        });
    assert!(has_reason(&a, "process_rename"), "{a}");
    assert!(
        reason_detail(&a, "process_rename").contains("from `mw-client` to `kworker/0:2`"),
        "{a}"
    );
    assert_eq!(a["severity"], "medium", "{a}");
    drop(c);

    let c = client(&["rename", "backup-agent"]);
    let a = s
        .wait_alert(c.pid(), "process_rename", Duration::from_secs(10))
        .expect("any rename of the main thread is weak evidence");
    assert!(!has_reason(&a, "fake_kernel_thread"), "{a}");
    // Weak: info here, low from a clone under /tmp, never medium.
    assert!(severity_rank(&a["severity"]) < 2, "{a}");
    drop(c);

    // A worker thread renaming the main thread through /proc/self/comm is the same rename.
    let c = client(&["rename-comm", "kworker/1:0"]);
    let a = s
        .wait_alert(c.pid(), "fake_kernel_thread", Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "a rename from a worker thread not seen: {}",
                s.stderr_text()
            )
        });
    assert!(
        reason_detail(&a, "process_rename").contains("from `mw-client` to `kworker/1:0`"),
        "{a}"
    );
    drop(c);

    // A thread naming itself, and a plain exec: nothing.
    for args in [&["rename-thread", "worker-1"][..], &["burn", "0"][..]] {
        let c = client(args);
        let pid = c.pid();
        c.wait();
        s.settled(pid, Duration::from_secs(10));
        assert!(
            s.alerts_for(pid)
                .iter()
                .all(|a| !has_reason(a, "process_rename")),
            "{args:?}: {:?}",
            s.alerts_for(pid)
        );
    }
    let c = &s.status()["counters"];
    assert!(
        c["renames_by_exec"].as_u64() >= Some(4),
        "exec renames told apart: {c}"
    );
}
