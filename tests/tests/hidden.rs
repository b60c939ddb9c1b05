//! Miners that hide their protocol: the real XMRig speaking TLS to a stand-in pool, renamed,
//! configured by a file instead of arguments, must still get a high alert, from the RandomX
//! rounding-mode fingerprint, its CPU and the shape of its pool connection; a benign program
//! that switches rounding modes all the time (interval arithmetic) must not look like it, nor
//! a busy program whose connection asks and is answered (a licence client). Loopback and own
//! namespaces only.
use std::{
    fs,
    io::{BufRead, Write},
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use minerwatch_tests::{
    NetNs, Pool, Proc, Sensor, has_reason, root_or_skip, scratch, severity_rank, xmrig,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");
const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
/// Short, so the benign workloads fit the CI budget.
const WINDOW: &str = "5";
/// How long a connection must be open before its shape counts, short for the same reason.
const FLOW_WINDOW: &str = "8";

/// XMRig reads `config.json` from its own directory when it has no arguments.
fn config(pool: std::net::SocketAddr) -> String {
    format!(
        r#"{{
  "autosave": false,
  "background": false,
  "colors": false,
  "donate-level": 1,
  "randomx": {{ "mode": "light", "1gb-pages": false, "rdmsr": false, "wrmsr": false }},
  "cpu": {{ "enabled": true, "huge-pages": false, "rx": [-1] }},
  "pools": [{{ "url": "{pool}", "user": "{WALLET}", "pass": "x", "tls": true, "keepalive": true }}]
}}"#
    )
}

#[test]
fn xmrig_over_tls_renamed_with_a_config_file_is_high_from_its_fingerprint() {
    if !root_or_skip("xmrig_over_tls_renamed_with_a_config_file_is_high_from_its_fingerprint") {
        return;
    }
    let ns = NetNs::new("tls");
    let pool = ns
        .spawn(|| Pool::serve_tls(TcpListener::bind("127.0.0.1:443").expect("bind in netns")))
        .join()
        .unwrap();
    // Renamed, and not in /tmp: nothing about the file says "miner".
    let dir = scratch("xmrig-tls").join("opt");
    fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("dbus-helper");
    fs::copy(xmrig(), &bin).unwrap();
    fs::write(dir.join("config.json"), config(pool.addr)).unwrap();

    let mut s = Sensor::start(
        "xmrig-tls",
        &["--saturation-window", WINDOW, "--flow-window", FLOW_WINDOW],
    );
    let started = Instant::now();
    let miner = Proc::spawn(
        ns.command(&bin)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pid = miner.pid();
    let high = s
        .wait_for(Duration::from_secs(90), |r| {
            r["kind"] == "alert" && r["pid"] == pid && severity_rank(&r["severity"]) >= 3
        })
        .unwrap_or_else(|| {
            panic!(
                "no high alert for XMRig over TLS (pid {pid}) within 90 s: {:?}\n{}",
                s.alerts_for(pid),
                s.stderr_text()
            )
        });
    eprintln!(
        "XMRig over TLS: high alert {:.1} s after start: {}",
        started.elapsed().as_secs_f64(),
        high["reasons"]
    );
    // The connection's shape joins once it is FLOW_WINDOW seconds old and the pool pushed
    // a few jobs.
    let alert = s
        .wait_for(Duration::from_secs(60), |r| {
            r["kind"] == "alert" && r["pid"] == pid && has_reason(r, "flow_shape")
        })
        .unwrap_or_else(|| {
            panic!(
                "no flow_shape for XMRig's TLS connection (pid {pid}): {:?}\nstatus {}",
                s.alerts_for(pid),
                s.status()
            )
        });
    eprintln!(
        "XMRig over TLS: flow shape {:.1} s after start: {}",
        started.elapsed().as_secs_f64(),
        alert["reasons"]
    );
    assert!(severity_rank(&alert["severity"]) >= 3, "{alert}");
    assert!(has_reason(&alert, "randomx_fingerprint"), "{alert}");
    assert!(has_reason(&alert, "cpu_saturation"), "{alert}");
    // TLS hid the login: the alert stands without it.
    assert!(!has_reason(&alert, "stratum_protocol"), "{alert}");
    assert!(!has_reason(&alert, "miner_cmdline"), "{alert}");
    let why = alert["reasons"].to_string();
    assert!(
        why.contains("toward zero") && why.contains("context switches of thread"),
        "{why}"
    );
    assert!(
        why.contains(&format!("TLS connection to {}", pool.addr)) && why.contains("server pushes"),
        "{why}"
    );
    // The flow's numbers, as facts of its finding record.
    let f = s
        .records()
        .into_iter()
        .find(|r| r["kind"] == "finding" && r["pid"] == pid && r["code"] == "flow_shape")
        .unwrap_or_else(|| panic!("no finding record for the flow shape"));
    let pushes: u32 = f["facts"]["server_pushes"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(pushes >= 3, "{f}");
    assert_eq!(f["facts"]["tls"], "true", "{f}");
    assert_eq!(f["weak"], true, "{f}");
    assert_eq!(f["peer"], pool.addr.to_string(), "{f}");
    // It did mine: the pool got its login over TLS.
    let end = Instant::now() + Duration::from_secs(10);
    while !pool
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("\"login\""))
    {
        assert!(
            Instant::now() < end,
            "the stand-in pool never received XMRig's login over TLS"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn interval_arithmetic_switching_rounding_modes_stays_below_medium() {
    if !root_or_skip("interval_arithmetic_switching_rounding_modes_stays_below_medium") {
        return;
    }
    let mut s = Sensor::start(
        "interval",
        &["--saturation-window", WINDOW, "--stats-interval", "1"],
    );
    // Longer than the window, so sustained CPU is seen and the fingerprint had its switches.
    let p = Proc::spawn(
        Command::new(CLIENT)
            .args(["interval", "9"])
            .stdin(Stdio::null()),
    );
    let pid = p.pid();
    // Positive barrier: its CPU saturation was judged, so its switches were too.
    s.wait_alert(pid, "cpu_saturation", Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "no cpu_saturation for the interval loop: {:?}",
                s.alerts_for(pid)
            )
        });
    let status = s.status();
    assert!(p.wait().success(), "the interval loop failed");
    s.settled(pid, Duration::from_secs(10));
    for a in s.alerts_for(pid) {
        assert!(!has_reason(&a, "randomx_fingerprint"), "{a}");
        assert!(severity_rank(&a["severity"]) < 2, "{a}");
    }
    // It did switch rounding modes where the hook could see them: the test tests something.
    let seen = status["counters"]["rounding_threads"].as_u64();
    assert!(
        seen.is_some_and(|n| n >= 1),
        "no thread seen with a non-default rounding mode: {status}"
    );
}

#[test]
fn a_busy_client_that_asks_and_is_answered_has_no_flow_shape() {
    if !root_or_skip("a_busy_client_that_asks_and_is_answered_has_no_flow_shape") {
        return;
    }
    // A licence server on loopback: one answer per question.
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in server.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = conn.try_clone().expect("clone");
                for line in std::io::BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    if writeln!(w, "granted {line}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut s = Sensor::start(
        "heartbeat",
        &[
            "--saturation-window",
            WINDOW,
            "--flow-window",
            "5",
            "--stats-interval",
            "1",
        ],
    );
    let p = Proc::spawn(
        Command::new(CLIENT)
            .args(["heartbeat", &addr.to_string(), "20"])
            .stdin(Stdio::null()),
    );
    let pid = p.pid();
    s.wait_alert(pid, "cpu_saturation", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no cpu_saturation for the client: {:?}", s.alerts_for(pid)));
    // Positive barrier: a report of a connection of a process with sustained CPU (this one:
    // nothing else here is busy) was judged. Reports come every 4 s.
    let reports = |s: &Sensor| s.status()["counters"]["flow_judged"].as_u64().unwrap_or(0);
    let before = reports(&s);
    let end = Instant::now() + Duration::from_secs(12);
    while reports(&s) < before + 1 {
        assert!(
            Instant::now() < end,
            "no flow reports for the client's connection"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(p.wait().success(), "the client failed");
    s.settled(pid, Duration::from_secs(10));
    for a in s.alerts_for(pid) {
        assert!(!has_reason(&a, "flow_shape"), "{a}");
    }
}
