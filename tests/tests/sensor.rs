//! End-to-end: the real sensor binary loads the real eBPF programs into this kernel, real
//! processes do real things, and we read what the sensor wrote.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test loudly"
)]
use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use minerwatch_tests::{
    Proc, Sensor, has_reason, listener, root_or_skip, sensor_bin, severity_rank,
};
use serde_json::Value;

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");

/// The detail of reason `code` in `alert`.
fn reason<'a>(alert: &'a Value, code: &str) -> &'a str {
    alert["reasons"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["code"] == code))
        .and_then(|r| r["detail"].as_str())
        .unwrap_or_else(|| panic!("no {code} reason in {alert}"))
}

fn client(args: &[&str]) -> Command {
    let mut c = Command::new(CLIENT);
    c.args(args).stdin(Stdio::null());
    c
}

#[test]
fn check_says_every_hook_attaches() {
    if !root_or_skip("check_says_every_hook_attaches") {
        return;
    }
    let out = Command::new(sensor_bin()).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed:\n{text}");
    assert!(
        text.contains("15 of 15 attach")
            && text.contains("net_ingress")
            && text.contains("fpu_switch")
            && text.contains("sysctl_write")
            && text.contains("verdict     ready"),
        "{text}"
    );
    // Hardware counters are optional: present on bare metal, absent in most VMs.
    assert!(text.contains("of 2 optional"), "{text}");
}

#[test]
fn ready_record_lists_hooks() {
    if !root_or_skip("ready_record_lists_hooks") {
        return;
    }
    let s = Sensor::start("ready", &[]);
    let attached = s.ready["hooks_attached"].as_array().unwrap();
    let missing = s.ready["hooks_missing"].as_array().unwrap();
    assert_eq!(attached.len() + missing.len(), 17, "{}", s.ready);
    assert!(attached.iter().any(|h| h == "fpu_switch"), "{}", s.ready);
    // Only the optional hardware-counter hooks may be missing, each saying what it costs.
    for m in missing {
        assert_eq!(m["optional"], true, "{m}");
        assert!(m["hook"].as_str().unwrap().starts_with("cpu_hw_"), "{m}");
        assert!(m["lost"].as_str().unwrap().contains("IPC"), "{m}");
        assert!(!m["error"].as_str().unwrap().is_empty(), "{m}");
    }
    assert!(s.ready["processes_known"].as_u64().unwrap() > 10);
}

#[test]
fn exec_appears_with_argv_and_parent() {
    if !root_or_skip("exec_appears_with_argv_and_parent") {
        return;
    }
    let mut s = Sensor::start("exec", &[]);
    let p = Proc::spawn(
        Command::new("/bin/sh")
            .args(["-c", "sleep 0.2", "marker-argv-☃"])
            .stdin(Stdio::null()),
    );
    let pid = p.pid();
    let exec = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "exec" && r["pid"] == pid
        })
        .expect("exec record for /bin/sleep");
    assert_eq!(
        exec["argv"],
        serde_json::json!(["/bin/sh", "-c", "sleep 0.2", "marker-argv-☃"])
    );
    assert!(exec["exe"].as_str().unwrap().ends_with("sh"), "{exec}");
    assert_eq!(
        exec["ppid"],
        std::process::id(),
        "parent is this test process"
    );
    p.wait();
    s.wait_for(Duration::from_secs(10), |r| {
        r["kind"] == "exit" && r["pid"] == pid
    })
    .expect("exit record");
}

#[test]
fn connect_to_loopback_is_attributed_to_the_right_pid() {
    if !root_or_skip("connect_to_loopback_is_attributed_to_the_right_pid") {
        return;
    }
    let (_l, addr) = listener(0);
    let mut s = Sensor::start("connect", &[]);
    let c = Proc::spawn(&mut client(&["connect", &addr]));
    let pid = c.pid();
    let rec = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "connect" && r["peer"] == addr.as_str()
        })
        .expect("connect record");
    assert_eq!(rec["pid"], pid);
    assert_eq!(
        (rec["transport"].as_str(), rec["ret"].as_i64()),
        (Some("tcp"), Some(0))
    );
}

fn stratum_login_gets_high_alert(how: &str) {
    let (_l, addr) = listener(0);
    let mut s = Sensor::start(&format!("stratum-{how}"), &[]);
    let c = Proc::spawn(&mut client(&["stratum", &addr, how]));
    let pid = c.pid();
    let alert = s
        .wait_alert(pid, "stratum_protocol", Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "no Stratum alert for the {how} client (pid {pid}): {:?}",
                s.records()
            )
        });
    assert!(severity_rank(&alert["severity"]) >= 3, "{alert}");
    let detail = reason(&alert, "stratum_protocol");
    assert!(
        detail.contains("`login`") && detail.contains("XMRig/6.16.0") && detail.contains(&addr),
        "{detail}"
    );
    assert_eq!(alert["connection"], addr.as_str());
    assert!(
        alert["exe"].as_str().unwrap().ends_with("mw-client"),
        "{alert}"
    );
}

#[test]
fn stratum_login_with_write() {
    if root_or_skip("stratum_login_with_write") {
        stratum_login_gets_high_alert("write");
    }
}

#[test]
fn stratum_login_with_sendto() {
    if root_or_skip("stratum_login_with_sendto") {
        stratum_login_gets_high_alert("sendto");
    }
}

#[test]
fn stratum_login_with_sendmsg() {
    if root_or_skip("stratum_login_with_sendmsg") {
        stratum_login_gets_high_alert("sendmsg");
    }
}

#[test]
fn stratum_login_with_writev() {
    if root_or_skip("stratum_login_with_writev") {
        stratum_login_gets_high_alert("writev");
    }
}

#[test]
fn stratum_behind_socks5_proxy() {
    if !root_or_skip("stratum_behind_socks5_proxy") {
        return;
    }
    let (_l, proxy) = listener(0);
    let mut s = Sensor::start("socks5", &[]);
    let c = Proc::spawn(&mut client(&["socks5", &proxy, "10.20.30.40:3333"]));
    let pid = c.pid();
    let alert = s
        .wait_alert(pid, "stratum_protocol", Duration::from_secs(10))
        .expect("alert for the proxied miner");
    let detail = reason(&alert, "stratum_protocol");
    assert!(
        detail.contains("through SOCKS5 to 10.20.30.40:3333"),
        "{detail}"
    );
}

#[test]
fn cpu_burner_gets_saturation_evidence_but_no_high_alert() {
    if !root_or_skip("cpu_burner_gets_saturation_evidence_but_no_high_alert") {
        return;
    }
    let mut s = Sensor::start(
        "burn",
        &["--saturation-window", "3", "--stats-interval", "1"],
    );
    let b = Proc::spawn(&mut client(&["burn", "7"]));
    let pid = b.pid();
    let alert = s
        .wait_alert(pid, "cpu_saturation", Duration::from_secs(12))
        .expect("saturation evidence for the burner");
    let detail = reason(&alert, "cpu_saturation");
    assert!(
        detail.contains("% of a core for") && detail.contains("outside any Slurm job"),
        "{detail}"
    );
    b.wait();
    s.settled(pid, Duration::from_secs(10));
    let alerts = s.alerts_for(pid);
    for a in &alerts {
        assert!(
            severity_rank(&a["severity"]) < 3,
            "a CPU burner alone must not be high: {a}"
        );
    }
    // Saturated for seconds after the alert, yet updated only when evidence is new: at most
    // one record per distinct reason (its exe may sit under /tmp in a checkout there).
    let reasons: std::collections::BTreeSet<String> = alerts
        .iter()
        .flat_map(|a| {
            a["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["code"].to_string())
        })
        .collect();
    assert!(alerts.len() <= reasons.len(), "repeated alerts: {alerts:?}");
    let revisions: Vec<u64> = alerts
        .iter()
        .map(|a| a["update"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, (0..alerts.len() as u64).collect::<Vec<_>>());
    // Its saturation event went out when saturation began, not at every tick it lasted (a
    // node of busy jobs would send one a second each): the stream holds one or two for it.
    let out = Command::new(minerwatch_tests::sensor_bin())
        .args(["events", "--kind", "saturation", "--json", "--socket"])
        .arg(&s.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let sent = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("\"pid\":{pid}")))
        .count();
    assert!((1..=2).contains(&sent), "{sent} saturation events sent");
    // It was saturated at more ticks than that: the others only refreshed the alert.
    let c = s.wait_counters(Duration::from_secs(5), |c| {
        sent as u64 + c["saturation_unsent"].as_u64().unwrap_or(0) >= 3
    });
    let unsent = c["saturation_unsent"].as_u64().unwrap();
    assert!(
        sent as u64 + unsent >= 3,
        "saturated at {sent} + {unsent} ticks, fewer than the run allows"
    );
}

#[test]
fn http_client_to_port_3333_is_not_high() {
    if !root_or_skip("http_client_to_port_3333_is_not_high") {
        return;
    }
    let (_l, addr) = listener(3333);
    let mut s = Sensor::start("http3333", &["--stats-interval", "1"]);
    let c = Proc::spawn(&mut client(&["http", &addr]));
    let pid = c.pid();
    s.wait_alert(pid, "miner_port", Duration::from_secs(10))
        .expect("weak miner-port evidence is still reported");
    c.wait();
    s.settled(pid, Duration::from_secs(10));
    for a in s.alerts_for(pid) {
        assert!(
            !has_reason(&a, "stratum_protocol"),
            "HTTP is not Stratum: {a}"
        );
        assert!(severity_rank(&a["severity"]) < 3, "{a}");
    }
}

#[test]
fn process_and_connection_from_before_the_sensor_are_known() {
    if !root_or_skip("process_and_connection_from_before_the_sensor_are_known") {
        return;
    }
    let (_l, addr) = listener(0);
    // Connected before the sensor starts; tells the pool it is alive once we say so.
    let mut holder = Proc::spawn(
        client(&["hold", &addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let pid = holder.pid();
    let mut line = String::new();
    BufReader::new(holder.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "connected");

    let mut s = Sensor::start("preexisting", &[]);
    assert!(
        s.ready["connections_watched"].as_u64().unwrap() >= 1,
        "{}",
        s.ready
    );
    let mut stdin = holder.0.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    let alert = s
        .wait_alert(pid, "stratum_protocol", Duration::from_secs(10))
        .expect("alert for the pre-existing miner connection");
    assert!(
        reason(&alert, "stratum_protocol").contains("`keepalived`"),
        "{alert}"
    );
    // Known from /proc at start: its command line and parent, though no exec was seen.
    assert_eq!(alert["preexisting"], true);
    assert_eq!(alert["argv"], serde_json::json!([CLIENT, "hold", addr]));
    assert_eq!(alert["ppid"], std::process::id());
    drop(stdin);
}

#[test]
fn clean_stop_on_sigterm_and_sigint() {
    if !root_or_skip("clean_stop_on_sigterm_and_sigint") {
        return;
    }
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let s = Sensor::start("stop", &[]);
        let (status, records) = s.stop_with(sig);
        assert!(status.success(), "{name}: {status}");
        let last = records.last().unwrap();
        assert_eq!(
            (last["kind"].as_str(), last["reason"].as_str()),
            (Some("stop"), Some(name))
        );
        let stats = records
            .iter()
            .rev()
            .find(|r| r["kind"] == "stats")
            .expect("final stats");
        assert!(stats["kernel"]["ringbuf_full_exec"].is_u64(), "{stats}");
    }
}

#[test]
fn cannot_start_gives_one_line_and_nonzero_exit() {
    let bad = |args: &[&str], expect: &str| {
        let out = Command::new(sensor_bin())
            .arg("run")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(err.trim().lines().count(), 1, "one line, got {err:?}");
        assert!(err.contains(expect), "{args:?}: {err:?}");
    };
    bad(
        &["--saturation-window", "0"],
        "bad setting `saturation_window`",
    );
    bad(
        &["--config", "/nonexistent/minerwatch.toml"],
        "cannot read config /nonexistent/minerwatch.toml",
    );
    bad(
        &["--collector", "collector.example:50051"],
        "bad setting `collector`: `collector.example:50051` must start with http:// or https://",
    );
    bad(
        &["--collector", "https://collector.example:50051"],
        "set tls_ca, tls_cert and tls_key",
    );
    bad(
        &["--listen", "0.0.0.0:50052"],
        "the TCP API is served with mutual TLS only",
    );
    bad(
        &["--tls-ca", "/etc/ssl/nonexistent-ca.pem"],
        "tls_ca, tls_cert and tls_key go together",
    );
    bad(
        &[
            "--listen",
            "127.0.0.1:0",
            "--socket",
            "",
            "--tls-ca",
            "/nonexistent/ca.pem",
            "--tls-cert",
            "/nonexistent/n1.pem",
            "--tls-key",
            "/nonexistent/n1-key.pem",
        ],
        "cannot read CA certificate /nonexistent/ca.pem",
    );
    let dir = minerwatch_tests::scratch("badcfg");
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "saturation_window = 30\nsaturaton_threshold = 0.5\n").unwrap();
    bad(
        &["--config", cfg.to_str().unwrap()],
        "unknown field `saturaton_threshold`",
    );
    // Not root: an unprivileged user is told why, before anything is loaded. The binary is
    // copied where that user can reach it (the checkout may sit under a private home).
    let public = std::env::temp_dir().join(format!("mw-nonroot-{}", std::process::id()));
    std::fs::create_dir_all(&public).unwrap();
    let bin = public.join("minerwatch");
    std::fs::copy(sensor_bin(), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("run")
        .current_dir(&public)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&public);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("must run as root"),
        "{err:?}"
    );
}
