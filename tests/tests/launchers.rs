//! Launchers: a miner started through `timeout` or `bash -c` shows its command line in the
//! launcher too. The launcher's evidence joins the miner's alert, which stays the one
//! alert; a launcher whose command never starts keeps its evidence as its own alert.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use minerwatch_tests::{Proc, Sensor, has_reason, root_or_skip};
use serde_json::Value;

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");

/// The pid of the process that exec'd with `marker` as its last argument, from the sensor's
/// exec records.
fn exec_of(s: &mut Sensor, marker: &str) -> (u32, Value) {
    let r = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "exec"
                && r["argv"]
                    .as_array()
                    .is_some_and(|a| a.last().is_some_and(|m| m == marker) && a[0] == CLIENT)
        })
        .unwrap_or_else(|| panic!("no exec of mw-client with {marker}:\n{}", s.stderr_text()));
    (r["pid"].as_u64().expect("pid") as u32, r)
}

fn launch(program: &str, args: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
}

/// The launcher `l` raised nothing; the miner `pid` raised `miner_cmdline`, and its alert
/// names the launcher among its parents.
fn joined(s: &mut Sensor, l: Proc, pid: u32) {
    let a = s
        .wait_alert(pid, "miner_cmdline", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the launched miner {pid} not flagged:\n{}", s.stderr_text()));
    let lpid = l.pid();
    assert!(
        a.to_string().contains(&format!("\"pid\":{lpid}")),
        "the launcher {lpid} is not among the parents: {a}"
    );
    l.wait();
    s.settled(lpid, Duration::from_secs(10));
    assert!(
        s.alerts_for(lpid).is_empty(),
        "the launcher got an alert of its own: {:?}",
        s.alerts_for(lpid)
    );
}

#[test]
fn a_launcher_is_part_of_its_miners_alert() {
    if !root_or_skip("a_launcher_is_part_of_its_miners_alert") {
        return;
    }
    let mut s = Sensor::start("launchers", &["--stats-interval", "1"]);

    // `timeout` forks the miner and waits for it.
    let l = launch(
        "timeout",
        &[
            "20",
            CLIENT,
            "burn",
            "1",
            "--donate-level",
            "1",
            "marker-timeout",
        ],
    );
    let (pid, _) = exec_of(&mut s, "marker-timeout");
    assert_ne!(pid, l.pid(), "timeout forks the command");
    joined(&mut s, l, pid);

    // `bash -c` with more after the miner forks it too. The Stratum URL in the line is
    // evidence in bash's own command line.
    let line = format!("{CLIENT} burn 1 -o stratum+tcp://127.0.0.1:3333 marker-bash; true");
    let l = launch("/bin/bash", &["-c", &line]);
    let (pid, _) = exec_of(&mut s, "marker-bash");
    assert_ne!(pid, l.pid(), "bash forks a command that is not its last");
    joined(&mut s, l, pid);

    // A launcher whose command cannot start: its evidence is not lost.
    let l = launch(
        "timeout",
        &["20", "/nonexistent/xmrig", "--donate-level", "1"],
    );
    let lpid = l.pid();
    let a = s
        .wait_alert(lpid, "miner_cmdline", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("a lone launcher's evidence lost:\n{}", s.stderr_text()));
    assert!(has_reason(&a, "miner_cmdline"), "{a}");
    drop(l);

    // The counters, as the next status report has them.
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let c = s.status()["counters"].clone();
        if c["launches_joined"].as_u64() >= Some(2) && c["launches_alone"].as_u64() >= Some(1) {
            break;
        }
        assert!(std::time::Instant::now() < end, "{c}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
