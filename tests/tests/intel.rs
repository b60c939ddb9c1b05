//! Pool intelligence, the way an operator runs it: a feed of pool addresses given with
//! `--pool-feed`, matched in the kernel at connect (and in user space for a connection older
//! than the sensor); the bundled list of pool names matched against command lines; a feed
//! edited while the sensor runs, reloaded on SIGHUP or on change, and a broken edit refused
//! with the old lists kept. Loopback only: 127.0.0.0/8 stands in for pool addresses.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use minerwatch_tests::{
    Proc, Sensor, has_reason, listener_on, reason_detail, root_or_skip, scratch, sensor_bin,
    severity_rank,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");

fn client(args: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(CLIENT)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
}

/// Waits until `text` shows up `n` times in the sensor's log.
fn wait_log(s: &Sensor, text: &str, n: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    while s.stderr_text().matches(text).count() < n {
        assert!(
            Instant::now() < end,
            "{text:?} not logged {n} times within 10 s:\n{}",
            s.stderr_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Rewrites `path` so its modification time surely differs from the last write.
fn rewrite(path: &Path, text: &str) {
    let before = fs::metadata(path).and_then(|m| m.modified()).ok();
    loop {
        fs::write(path, text).expect("write the feed");
        if fs::metadata(path).and_then(|m| m.modified()).ok() != before {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn feeds_flag_connects_and_command_lines_and_reload_safely() {
    if !root_or_skip("feeds_flag_connects_and_command_lines_and_reload_safely") {
        return;
    }
    let dir = scratch("intel");
    let feed = dir.join("pools.csv");
    // Committee-style: a header, then address,port,first seen.
    fs::write(&feed, "ip,port,first_seen\n127.0.0.2,3333,2026-11-30\n").unwrap();
    let (_l2, pool2) = listener_on("127.0.0.2:0");
    let (_l3, pool3) = listener_on("127.0.0.3:0");

    // A connection that predates the sensor: matched from /proc at start.
    let mut old = Command::new(CLIENT);
    old.args(["hold", &pool2])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let old = Proc::spawn(&mut old);
    thread::sleep(Duration::from_millis(300));

    let feed_arg = feed.to_str().unwrap();
    let mut s = Sensor::start("intel", &["--pool-feed", feed_arg, "--stats-interval", "1"]);
    let a = s
        .wait_alert(old.pid(), "pool_intel", Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "connection from before the start not flagged:\n{}",
                s.stderr_text()
            )
        });
    assert!(reason_detail(&a, "pool_intel").contains(&pool2), "{a}");
    // Strong: medium, or high where the client runs from a clone under /tmp.
    assert!(severity_rank(&a["severity"]) >= 2, "{a}");
    drop(old);

    // A new connect, matched in the kernel: the evidence names the address, the entry and
    // the feed it came from.
    let c = client(&["connect", &pool2]);
    let a = s
        .wait_alert(c.pid(), "pool_intel", Duration::from_secs(5))
        .expect("connect to a listed address flagged");
    let d = reason_detail(&a, "pool_intel");
    assert!(
        d.contains(&format!("connection to {pool2}"))
            && d.contains(feed_arg)
            && d.contains("as 127.0.0.2"),
        "{d}"
    );
    // A list alone is not high (from a clone under /tmp the client's location adds to it).
    assert!(
        severity_rank(&a["severity"]) < 3 || has_reason(&a, "suspicious_exe_location"),
        "a list alone is not high: {a}"
    );

    // An address not listed.
    let c = client(&["connect", &pool3]);
    let pid = c.pid();
    c.wait();
    s.settled(pid, Duration::from_secs(10));
    assert!(
        !s.alerts_for(pid)
            .iter()
            .any(|a| has_reason(a, "pool_intel")),
        "{:?}",
        s.alerts_for(pid)
    );

    // A command line naming a pool on the bundled list, whatever it connects to.
    let c = client(&["connect", &pool3, "-o", "Pool.SupportXMR.com:443"]);
    let a = s
        .wait_alert(c.pid(), "pool_intel", Duration::from_secs(5))
        .expect("command line naming a bundled pool flagged");
    let d = reason_detail(&a, "pool_intel");
    assert!(
        d.contains("command line names pool.supportxmr.com") && d.contains("bundled"),
        "{d}"
    );

    // A broken edit, then SIGHUP: refused, said so with the line, and the old list stays.
    rewrite(&feed, "127.0.0.2\n127.0.0.3\nnot a pool!\n");
    let sensor_pid = s.ready["sensor_pid"].as_u64().unwrap() as i32;
    // SAFETY: plain kill(2) on the sensor this test started.
    unsafe { libc::kill(sensor_pid, libc::SIGHUP) };
    wait_log(&s, "pool feed refused", 1);
    assert!(s.stderr_text().contains("line 3"), "{}", s.stderr_text());
    let c = client(&["connect", &pool2]);
    s.wait_alert(c.pid(), "pool_intel", Duration::from_secs(5))
        .expect("the old list still in force after a refused reload");
    let c = client(&["connect", &pool3]);
    let pid = c.pid();
    c.wait();
    s.settled(pid, Duration::from_secs(10));
    assert!(
        !s.alerts_for(pid)
            .iter()
            .any(|a| has_reason(a, "pool_intel"))
    );
    assert!(s.status()["counters"]["pool_feed_errors"].as_u64() >= Some(1));

    // A good edit, noticed without a signal: the new entry matches, the dropped one no
    // longer does.
    rewrite(&feed, "127.0.0.3/32\n");
    let end = Instant::now() + Duration::from_secs(10);
    while s.status()["counters"]["pool_reloads"].as_u64() != Some(1) {
        assert!(
            Instant::now() < end,
            "no reload within 10 s of the edit:\n{}",
            s.stderr_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let c = client(&["connect", &pool3]);
    s.wait_alert(c.pid(), "pool_intel", Duration::from_secs(5))
        .expect("an entry added by a reload matches");
    let c = client(&["connect", &pool2]);
    let pid = c.pid();
    c.wait();
    s.settled(pid, Duration::from_secs(10));
    assert!(
        !s.alerts_for(pid)
            .iter()
            .any(|a| has_reason(a, "pool_intel")),
        "an entry removed by a reload still matches: {:?}",
        s.alerts_for(pid)
    );
}

#[test]
fn a_bad_feed_stops_the_start_naming_file_and_line() {
    if !root_or_skip("a_bad_feed_stops_the_start_naming_file_and_line") {
        return;
    }
    let dir = scratch("intel-bad");
    let feed = dir.join("feed.txt");
    fs::write(&feed, "pool.example.org\n\n10.0.0.0/40\n").unwrap();
    let out = Command::new(sensor_bin())
        .args(["run", "--no-terminal", "--pool-feed"])
        .arg(&feed)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(feed.to_str().unwrap()) && err.contains("line 3") && err.contains("prefix"),
        "{err}"
    );
    let missing = dir.join("absent.txt");
    let out = Command::new(sensor_bin())
        .args(["run", "--no-terminal", "--pool-feed"])
        .arg(&missing)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot read pool feed") && err.contains("absent.txt"),
        "{err}"
    );
}

/// A real TLS client (`openssl s_client`) asking for `name` at `addr`; the listener never
/// answers, which is enough: the ClientHello leaves first, in clear.
fn tls_hello(addr: &str, name: &str) -> Proc {
    Proc::spawn(
        Command::new("openssl")
            .args(["s_client", "-connect", addr, "-servername", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

#[test]
fn tls_server_names_are_read_from_the_client_hello() {
    if !root_or_skip("tls_server_names_are_read_from_the_client_hello") {
        return;
    }
    let dir = scratch("intel-sni");
    let feed = dir.join("names.txt");
    fs::write(&feed, "# pools seen by the SOC\nminerwatch.test\n").unwrap();
    // The address is on no list: only the name the client asks for says where it goes.
    let (_l, addr) = listener_on("127.0.0.4:0");
    let mut s = Sensor::start(
        "intel-sni",
        &[
            "--pool-feed",
            feed.to_str().unwrap(),
            "--stats-interval",
            "1",
        ],
    );

    let c = tls_hello(&addr, "eu.pool.minerwatch.test");
    let a = s
        .wait_alert(c.pid(), "pool_intel", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("SNI of a listed pool not flagged:\n{}", s.stderr_text()));
    let d = reason_detail(&a, "pool_intel");
    assert!(
        d.contains(&format!("TLS connection to {addr}"))
            && d.contains("asks for eu.pool.minerwatch.test (SNI)")
            && d.contains("as minerwatch.test"),
        "{d}"
    );
    assert_eq!(a["severity"], "medium", "a name alone is not high: {a}");
    drop(c);

    // On no list, but pool-like: weak, below medium.
    let c = tls_hello(&addr, "xmr-eu1.example.test");
    let a = s
        .wait_alert(c.pid(), "pool_like_name", Duration::from_secs(10))
        .expect("a pool-like server name is weak evidence");
    assert!(
        reason_detail(&a, "pool_like_name").contains("asks for xmr-eu1.example.test (SNI)"),
        "{a}"
    );
    assert!(severity_rank(&a["severity"]) < 2, "{a}");
    drop(c);

    // The NTP pool and an ordinary name: nothing.
    for name in ["2.debian.pool.ntp.org", "www.example.test"] {
        let c = tls_hello(&addr, name);
        let pid = c.pid();
        thread::sleep(Duration::from_millis(500));
        drop(c);
        s.settled(pid, Duration::from_secs(10));
        assert!(
            s.alerts_for(pid)
                .iter()
                .all(|a| !has_reason(a, "pool_intel") && !has_reason(a, "pool_like_name")),
            "{name}: {:?}",
            s.alerts_for(pid)
        );
    }
    let names = s.status()["counters"]["sni_names"].as_u64().unwrap_or(0);
    assert!(names >= 4, "every ClientHello read: {names}");
}
