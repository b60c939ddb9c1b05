//! Rivals: a process that kills a miner it did not start is weak evidence; the parent that
//! stops its own miner, and a kill of anything else, are not.
use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use minerwatch_tests::{Proc, Sensor, has_reason, root_or_skip, scratch};

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");

/// A program called `xmrig` (mw-client under that name) that sleeps a few seconds.
fn miner(s: &mut Sensor, exe: &std::path::Path) -> Proc {
    let p = Proc::spawn(
        Command::new(exe)
            .args(["rename-thread", "worker"])
            .stdout(Stdio::null()),
    );
    let pid = p.pid();
    s.wait_for(Duration::from_secs(10), |r| {
        r["kind"] == "exec" && r["pid"] == pid
    })
    .expect("the miner's exec seen");
    p
}

/// `kill -9` of every pid in `pids`, by one process; returns its pid.
fn kill(pids: &[u32]) -> u32 {
    let mut k = Proc::spawn(
        Command::new("kill")
            .arg("-9")
            .args(pids.iter().map(u32::to_string))
            .stdout(Stdio::null()),
    );
    let kpid = k.pid();
    assert!(k.0.wait().expect("kill runs").success());
    kpid
}

#[test]
fn killing_a_miner_one_did_not_start_is_evidence() {
    if !root_or_skip("killing_a_miner_one_did_not_start_is_evidence") {
        return;
    }
    let dir = scratch("rival");
    let exe = dir.join("xmrig");
    fs::copy(CLIENT, &exe).unwrap();
    let mut s = Sensor::start("rival", &["--stats-interval", "1"]);

    // `kill -9` of three miners it did not start, as malware clearing a node does.
    let miners: Vec<Proc> = (0..3).map(|_| miner(&mut s, &exe)).collect();
    let pids: Vec<u32> = miners.iter().map(Proc::pid).collect();
    let killer = kill(&pids);
    let a = s
        .wait_alert(killer, "rival_kill", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("a rival kill not seen:\n{}", s.stderr_text()));
    let detail = a["reasons"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        pids.iter()
            .any(|p| detail.contains(&format!("SIGKILL to process {p} (named xmrig)"))),
        "{a}"
    );
    assert_eq!(a["severity"], "low", "weak: {a}");
    drop(miners);

    // The parent (this test) stopping its own miner, and `kill` of something else: nothing.
    let m = miner(&mut s, &exe);
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(m.pid() as i32, libc::SIGKILL) };
    let other = Proc::spawn(Command::new("sleep").arg("5"));
    let killer = kill(&[other.pid()]);
    s.settled(killer, Duration::from_secs(10));
    let me = std::process::id();
    for pid in [me, killer] {
        assert!(
            s.alerts_for(pid)
                .iter()
                .all(|a| !has_reason(a, "rival_kill")),
            "{pid}: {:?}",
            s.alerts_for(pid)
        );
    }
    // Each of the three kills counted; the parent's and the sleep's not.
    assert_eq!(s.status()["counters"]["rival_kills"].as_u64(), Some(3));
}
