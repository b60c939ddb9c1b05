//! Lateral spread: a process trying SSH on fifty loopback addresses within seconds gets a
//! `lateral_scan` finding (weak: low on its own); the same fan-out from a cluster tool
//! (`pdsh`) or on a web port gets none. Loopback only.
use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use minerwatch_tests::{Proc, Sensor, has_reason, root_or_skip, scratch};

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");

fn fanout(program: &std::path::Path, port: &str) -> Proc {
    Proc::spawn(
        Command::new(program)
            .args(["fanout", port, "50"])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
}

#[test]
fn ssh_fanout_is_a_lateral_scan_unless_a_cluster_tool_does_it() {
    if !root_or_skip("ssh_fanout_is_a_lateral_scan_unless_a_cluster_tool_does_it") {
        return;
    }
    let mut s = Sensor::start("lateral", &["--stats-interval", "1"]);

    let worm = fanout(CLIENT.as_ref(), "22");
    let a = s
        .wait_alert(worm.pid(), "lateral_scan", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no lateral_scan for an SSH sweep:\n{}", s.stderr_text()));
    let detail = a["reasons"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["code"] == "lateral_scan"))
        .and_then(|r| r["detail"].as_str())
        .unwrap();
    assert!(
        detail.starts_with("tried 32 addresses on port 22 within"),
        "{detail}"
    );
    // Weak: fan-out alone is never medium.
    assert_eq!(a["severity"], "low", "{a}");

    // The same sweep from a parallel shell, and a sweep of a web port: nothing.
    let dir = scratch("lateral-tools");
    let pdsh = dir.join("pdsh");
    fs::copy(CLIENT, &pdsh).unwrap();
    for p in [fanout(&pdsh, "22"), fanout(CLIENT.as_ref(), "443")] {
        let pid = p.pid();
        p.wait();
        s.settled(pid, Duration::from_secs(15));
        let alerts = s.alerts_for(pid);
        assert!(
            !alerts.iter().any(|a| has_reason(a, "lateral_scan")),
            "{alerts:?}"
        );
    }
}
