//! End-to-end delivery: the real sensor pushes to the real collector over loopback (plain
//! and mutual TLS), through collector crashes and sensor restarts, beside stuck API clients,
//! and both servers shrug off garbage, wrong certificates and oversized messages.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test loudly"
)]
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use minerwatch_tests::{
    Collector, Proc, Sensor, collector_bin, exec_storm, has_reason, listener, root_or_skip,
    scratch, sensor_bin,
};
use serde_json::Value;

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");
const GRPC: &str = env!("CARGO_BIN_EXE_mw-grpc");

fn mw_grpc(args: &[&str]) -> String {
    let out = Command::new(GRPC).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A test CA with certificates for the collector and node `n1` in `dir`.
fn certs(dir: &Path) {
    let out = Command::new(collector_bin())
        .args(["certs", "--out"])
        .arg(dir)
        .args(["--node", "n1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tls_args(dir: &Path, who: &str) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        dir.join("ca.pem").display().to_string(),
        "--tls-cert".into(),
        dir.join(format!("{who}.pem")).display().to_string(),
        "--tls-key".into(),
        dir.join(format!("{who}-key.pem")).display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A sensor named `name` pushing to `c` over plain HTTP, spooling in `spool` (a restarted
/// sensor is given the same one), with `extra` flags.
fn sensor_pushing_to(c: &Collector, name: &str, spool: &Path, extra: &[&str]) -> Sensor {
    let url = format!("http://{}", c.addr);
    let mut args = vec!["--collector", &url, "--spool-dir", spool.to_str().unwrap()];
    args.extend_from_slice(extra);
    Sensor::start(name, &args)
}

/// Raises a high alert on the sensor: a Stratum login from a fresh process.
fn stratum_alert() -> (Proc, u32) {
    let (_l, addr) = listener(0);
    let c = Proc::spawn(
        Command::new(CLIENT)
            .args(["stratum", &addr, "write"])
            .stdin(Stdio::null()),
    );
    std::mem::forget(_l);
    let pid = c.pid();
    (c, pid)
}

fn alert_in_collector(c: &Collector, pid: u32) -> Value {
    c.wait_row(&["alerts"], Duration::from_secs(10), |a| {
        a["pid"] == pid && has_reason(a, "stratum_protocol")
    })
    .unwrap_or_else(|| {
        panic!(
            "no alert for pid {pid} in the collector: {:?}",
            c.query(&["alerts"])
        )
    })
}

fn alert_reaches_db_and_sink(collector: &Collector, sensor_args: &[&str]) {
    let mut s = Sensor::start("deliver-sensor", sensor_args);
    let (_c, pid) = stratum_alert();
    let local = s
        .wait_alert(pid, "stratum_protocol", Duration::from_secs(10))
        .expect("sensor alert");
    let stored = alert_in_collector(collector, pid);
    assert_eq!(stored["severity"], local["severity"]);
    assert_eq!(stored["exe"], local["exe"]);
    assert!(stored["seq"].as_u64().unwrap() > 0, "{stored}");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let sink = collector.sink_records();
        if sink
            .iter()
            .any(|a| a["pid"] == pid && a["seq"] == stored["seq"])
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "alert not in the JSON-lines sink: {sink:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let nodes = collector.query(&["nodes"]);
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["state"], "reporting");
    assert_eq!(nodes[0]["node"], stored["node"]);
}

#[test]
fn alert_reaches_collector_database_and_sink_plain() {
    if !root_or_skip("alert_reaches_collector_database_and_sink_plain") {
        return;
    }
    // Syslog receivers on loopback, UDP and TCP, as a SIEM would run them.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let syslog_udp = format!("udp://{}", udp.local_addr().unwrap());
    let syslog_tcp = format!("tcp://{}", tcp.local_addr().unwrap());
    let c = Collector::start(
        "deliver-plain",
        "127.0.0.1:0",
        &["--syslog", &syslog_udp, "--syslog", &syslog_tcp],
    );
    let spool = scratch("deliver-plain-spool");
    let url = format!("http://{}", c.addr);
    alert_reaches_db_and_sink(
        &c,
        &["--collector", &url, "--spool-dir", spool.to_str().unwrap()],
    );
    // RFC 5424 over UDP: one datagram per alert.
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    while let Ok(n) = udp.recv(&mut buf) {
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        let stratum = msg.contains(" stratum_protocol [minerwatch@32473 ");
        got.push(msg);
        if stratum {
            break;
        }
    }
    let msg = got
        .iter()
        .find(|m| m.contains(" stratum_protocol "))
        .unwrap_or_else(|| panic!("no Stratum alert over syslog UDP: {got:?}"));
    assert!(msg.starts_with("<131>1 "), "{msg}");
    // Over TCP with octet-counting framing: "<length> <message>".
    let (mut conn, _) = tcp.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut text = String::new();
    let mut chunk = [0u8; 65536];
    while !text.contains(" stratum_protocol ") {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "syslog TCP closed: {text:?}");
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    let (len, rest) = text.split_once(' ').unwrap();
    let len: usize = len
        .parse()
        .unwrap_or_else(|_| panic!("no octet count: {text:?}"));
    assert!(rest.len() >= len && rest.starts_with('<'), "{text:?}");
}

#[test]
fn collectors_get_what_is_decisive_unless_asked_for_activity() {
    if !root_or_skip("collectors_get_what_is_decisive_unless_asked_for_activity") {
        return;
    }
    let c = Collector::start("filtered", "127.0.0.1:0", &[]);
    let spool = scratch("filtered-spool");
    let mut s = sensor_pushing_to(
        &c,
        "filtered-sensor",
        &spool,
        &["--heartbeat-interval", "1"],
    );
    exec_storm(200).wait();
    let (_c, pid) = stratum_alert();
    s.wait_alert(pid, "stratum_protocol", Duration::from_secs(10))
        .expect("sensor alert");
    alert_in_collector(&c, pid);
    // The positive barrier: a heartbeat sent after the storm and the alert is stored.
    let after = s.status()["last_seq"].as_u64().unwrap();
    c.wait_row(
        &["events", "--kind", "heartbeat"],
        Duration::from_secs(10),
        |e| e["seq"].as_u64().unwrap_or(0) > after,
    )
    .expect("a heartbeat after the alert");
    for kind in ["exec", "exit", "connect"] {
        let got = c.query(&["events", "--kind", kind]);
        assert!(
            got.is_empty(),
            "{kind} pushed without --push-activity: {:?}",
            got.first()
        );
    }
    for kind in ["stratum", "status"] {
        assert!(
            !c.query(&["events", "--kind", kind]).is_empty(),
            "no {kind} event stored"
        );
    }
    // The sensor sends its node once per stream; the collector stamps it on every event.
    let nodes = c.query(&["nodes"]);
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(
        c.query(&["events"])
            .iter()
            .all(|e| e["node"] == nodes[0]["node"]),
        "an event stored without the stream's node"
    );
}

#[test]
fn alert_reaches_collector_with_mutual_tls() {
    if !root_or_skip("alert_reaches_collector_with_mutual_tls") {
        return;
    }
    let pki = scratch("pki");
    certs(&pki);
    let c = Collector::start(
        "deliver-mtls",
        "127.0.0.1:0",
        &strs(&tls_args(&pki, "collector")),
    );
    let spool = scratch("deliver-mtls-spool");
    let port = c.addr.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{port}");
    let mut args = vec![
        "--collector".to_string(),
        url,
        "--node".into(),
        "n1".into(),
        "--spool-dir".into(),
        spool.display().to_string(),
    ];
    args.extend(tls_args(&pki, "n1"));
    alert_reaches_db_and_sink(&c, &strs(&args));
    assert!(c.stderr_text().contains("sensor connected"));
}

/// Every sequence number in `first..=last` exactly once, except that each restart of the
/// sensor may skip numbers once: it resumes above the numbers the last run reserved, which
/// may include some it never gave out.
fn assert_once_across_restarts(events: &[Value], first: u64, last: u64, restarts: usize) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let set: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(set.len(), seqs.len(), "duplicates stored");
    let held: Vec<u64> = set.range(first..=last).copied().collect();
    assert_eq!(held.first(), Some(&first), "the first event is missing");
    assert_eq!(held.last(), Some(&last), "the last event is missing");
    let jumps: Vec<(u64, u64)> = held
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        jumps.len() <= restarts,
        "gaps {jumps:?} in {first}..={last}, more than the {restarts} restarts explain"
    );
}

/// Every sequence number in `first..=last` exactly once.
fn assert_exactly_once(events: &[Value], first: u64, last: u64) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let set: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(set.len(), seqs.len(), "duplicates stored");
    let missing: Vec<u64> = (first..=last)
        .filter(|s| !set.contains(s))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "missing seqs (first 10): {missing:?} of {first}..={last}"
    );
    assert_eq!(set.range(first..=last).count() as u64, last - first + 1);
}

fn all_events(c: &Collector) -> Vec<Value> {
    c.query(&["events", "--limit", "10000000"])
}

#[test]
fn collector_killed_mid_stream_loses_and_duplicates_nothing() {
    if !root_or_skip("collector_killed_mid_stream_loses_and_duplicates_nothing") {
        return;
    }
    let mut c = Collector::start("deliver-kill", "127.0.0.1:0", &[]);
    let spool = scratch("deliver-kill-spool");
    let s = sensor_pushing_to(&c, "deliver-kill-sensor", &spool, &["--push-activity"]);
    let first = s.status()["last_seq"].as_u64().unwrap();
    let storm = exec_storm(3000);
    // Kill the collector while the stream is flowing, twice.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700));
        c.kill9();
        std::thread::sleep(Duration::from_millis(300));
        c.restart();
    }
    storm.wait();
    let st = s.wait_delivered(Duration::from_secs(30));
    let last = st["collectors"][0]["acked_seq"].as_u64().unwrap();
    assert!(last - first > 6000, "storm too small: {first}..{last}");
    let events = all_events(&c);
    let first_stored = events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .min()
        .unwrap();
    assert!(
        first_stored <= first,
        "events from before the storm are missing"
    );
    assert_exactly_once(&events, first_stored, last);
    let nodes = c.query(&["nodes"]);
    eprintln!(
        "{} events stored once each; {} resent and dropped as duplicates",
        events.len(),
        nodes[0]["duplicates"]
    );
}

#[test]
fn sensor_restart_replays_its_spool() {
    if !root_or_skip("sensor_restart_replays_its_spool") {
        return;
    }
    // Reserve a port with nobody on it: the collector is down for the first run.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let spool = scratch("replay-spool");
    let args = [
        "--collector",
        &url,
        "--push-activity",
        "--spool-dir",
        spool.to_str().unwrap(),
    ];
    let s = Sensor::start("replay-1", &args);
    let (_c, pid) = stratum_alert();
    exec_storm(500).wait();
    std::thread::sleep(Duration::from_millis(300));
    let first_run_last = s.status()["last_seq"].as_u64().unwrap();
    // A person following the events sees the stream end cleanly when the sensor stops.
    let follower = Proc::spawn(
        Command::new(sensor_bin())
            .args(["events", "--follow", "--socket"])
            .arg(&s.socket)
            .stdout(Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    let (status, _) = s.stop_with(libc::SIGTERM);
    assert!(status.success());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "a follower held up the stop for {:?}",
        stopping.elapsed()
    );
    assert!(
        follower.wait().success(),
        "the follower did not end cleanly"
    );
    // The collector comes up; the sensor starts again from the same spool.
    let c = Collector::start("replay-collector", &format!("127.0.0.1:{port}"), &[]);
    let s = Sensor::start("replay-2", &args);
    let st = s.wait_delivered(Duration::from_secs(30));
    let last = st["collectors"][0]["acked_seq"].as_u64().unwrap();
    assert!(
        last > first_run_last,
        "the sequence must continue across restarts"
    );
    let events = all_events(&c);
    let first = events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .min()
        .unwrap();
    assert_once_across_restarts(&events, first, last, 1);
    assert!(
        (first..=first_run_last).all(|q| events.iter().any(|e| e["seq"] == q)),
        "the first run's events did not all come through its spool"
    );
    // A lost cursor (a restored disk, say) makes the sensor send its whole spool again:
    // the collector stores each event once still.
    let (status, _) = s.stop_with(libc::SIGTERM);
    assert!(status.success());
    let mut cursors = 0;
    for f in std::fs::read_dir(&spool).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with("cursor-") {
            std::fs::remove_file(f.path()).unwrap();
            cursors += 1;
        }
    }
    assert_eq!(cursors, 1);
    let s = Sensor::start("replay-3", &args);
    let last = s.wait_delivered(Duration::from_secs(30))["collectors"][0]["acked_seq"]
        .as_u64()
        .unwrap();
    let events = all_events(&c);
    assert_once_across_restarts(&events, first, last, 2);
    let dups = c.query(&["nodes"])[0]["duplicates"].as_u64().unwrap();
    assert!(
        dups as usize >= events.len() / 2,
        "only {dups} duplicates seen"
    );
    // The first run's stop record and its alert came through the spool.
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "status" && e["state"] == "stopping")
    );
    alert_in_collector(&c, pid);
}

#[test]
fn stuck_api_client_slows_neither_other_clients_nor_the_collector() {
    if !root_or_skip("stuck_api_client_slows_neither_other_clients_nor_the_collector") {
        return;
    }
    let c = Collector::start("stuck-collector", "127.0.0.1:0", &[]);
    let spool = scratch("stuck-spool");
    let s = sensor_pushing_to(&c, "stuck-sensor", &spool, &["--push-activity"]);
    let events_cmd = |out: Stdio| {
        Proc::spawn(
            Command::new(sensor_bin())
                .args(["events", "--follow", "--all", "--json", "--socket"])
                .arg(&s.socket)
                .stdin(Stdio::null())
                .stdout(out),
        )
    };
    // The stuck client: nobody reads its stdout, so it stops reading from the sensor.
    let mut stuck = events_cmd(Stdio::piped());
    let mut live = events_cmd(Stdio::piped());
    let live_out = live.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        for line in BufReader::new(live_out).lines() {
            let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
            let done = v["kind"] == "exit" && v["comm"] == "mw-storm-done";
            got.push(v);
            if done {
                break;
            }
        }
        got
    });
    std::thread::sleep(Duration::from_millis(500));
    exec_storm(6000).wait();
    // A marker process whose exit ends the live client's read.
    let marker = scratch("stuck-marker").join("mw-storm-done");
    std::fs::copy("/bin/true", &marker).unwrap();
    Command::new(&marker).status().unwrap();
    let marker_done = Instant::now();
    let st = s.wait_delivered(Duration::from_secs(30));
    let got = reader.join().unwrap();
    // The live client kept up: no loss, every number from its first to its last.
    assert!(
        got.iter().all(|e| e["kind"] != "loss"),
        "live client lost events"
    );
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.len() > 12_000, "only {} events", seqs.len());
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap in the live client's stream"
    );
    // The collector got all of it too.
    let events = all_events(&c);
    let last = st["collectors"][0]["acked_seq"].as_u64().unwrap();
    assert_exactly_once(&events, seqs[0], last.min(*seqs.last().unwrap()));
    // The stuck client, once it reads again, is told what it missed.
    let mut out = BufReader::new(stuck.0.stdout.take().unwrap());
    let mut line = String::new();
    let loss = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "stuck client ended");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["kind"] == "loss" {
            break v;
        }
    };
    assert_eq!(loss["source"], "client_queue", "{loss}");
    assert!(loss["count"].as_u64().unwrap() > 0);
    eprintln!(
        "live client and collector current {:?} after the storm; stuck client missed {}",
        marker_done.elapsed(),
        loss["count"]
    );
}

/// Bytes that are not HTTP/2 at all, then the connection is read until closed.
fn garbage(mut s: impl Read + Write) {
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let _ = s.write_all(&junk);
    let mut buf = [0u8; 1024];
    while s.read(&mut buf).is_ok_and(|n| n > 0) {}
}

#[test]
fn servers_reject_garbage_wrong_certificates_and_oversized_messages() {
    if !root_or_skip("servers_reject_garbage_wrong_certificates_and_oversized_messages") {
        return;
    }
    let pki = scratch("pki-good");
    certs(&pki);
    let rogue = scratch("pki-rogue");
    certs(&rogue);
    let c = Collector::start(
        "hostile-collector",
        "127.0.0.1:0",
        &strs(&tls_args(&pki, "collector")),
    );
    let spool = scratch("hostile-spool");
    let port = c.addr.rsplit(':').next().unwrap().to_string();
    let sensor_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = format!("127.0.0.1:{sensor_port}");
    let mut args = vec![
        "--collector".to_string(),
        format!("https://localhost:{port}"),
        "--node".into(),
        "n1".into(),
        "--spool-dir".into(),
        spool.display().to_string(),
        "--listen".into(),
        api.clone(),
    ];
    args.extend(tls_args(&pki, "n1"));
    let s = Sensor::start("hostile-sensor", &strs(&args));
    let sock = s.socket.to_str().unwrap().to_string();
    let good = |dir: &Path, who: &str| -> Vec<String> {
        ["ca.pem", &format!("{who}.pem"), &format!("{who}-key.pem")]
            .iter()
            .map(|f| dir.join(f).display().to_string())
            .collect()
    };
    let n1 = good(&pki, "n1");
    let bad = good(&rogue, "n1");
    // Garbage on every port.
    garbage(UnixStream::connect(&sock).unwrap());
    garbage(TcpStream::connect(&c.addr).unwrap());
    garbage(TcpStream::connect(&api).unwrap());
    // A certificate from another CA, on both TLS ports.
    let r = mw_grpc(&["status-tls", &api, &bad[0], &bad[1], &bad[2]]);
    assert!(
        r.starts_with("ERR"),
        "wrong certificate accepted by the sensor: {r}"
    );
    let r = mw_grpc(&[
        "push-oversized",
        &format!("https://localhost:{port}"),
        &bad[0],
        &bad[1],
        &bad[2],
    ]);
    assert!(
        r.starts_with("ERR"),
        "wrong certificate accepted by the collector: {r}"
    );
    // No client certificate at all.
    let r = mw_grpc(&["status-tls", &api]);
    assert!(r.starts_with("ERR"), "no certificate accepted: {r}");
    // Oversized messages: refused with OUT_OF_RANGE ("message length too large").
    let r = mw_grpc(&["oversized-unix", &sock]);
    assert!(
        r.starts_with("ERR OutOfRange") && r.contains("too large"),
        "{r}"
    );
    let r = mw_grpc(&["oversized-tls", &api, &n1[0], &n1[1], &n1[2]]);
    assert!(
        r.starts_with("ERR OutOfRange") && r.contains("too large"),
        "{r}"
    );
    let r = mw_grpc(&[
        "push-oversized",
        &format!("https://localhost:{port}"),
        &n1[0],
        &n1[1],
        &n1[2],
    ]);
    assert!(
        r.starts_with("ERR OutOfRange") && r.contains("too large"),
        "{r}"
    );
    // And everyone else is still served: the API on both ports, and the sensor's push.
    assert_eq!(mw_grpc(&["status-unix", &sock]), "OK");
    assert_eq!(mw_grpc(&["status-tls", &api, &n1[0], &n1[1], &n1[2]]), "OK");
    let (_p, pid) = stratum_alert();
    alert_in_collector(&c, pid);
    let st = s.status();
    assert_eq!(st["collectors"][0]["connected"], true, "{st}");
}

#[test]
fn stopped_sensor_raises_sensor_silent() {
    if !root_or_skip("stopped_sensor_raises_sensor_silent") {
        return;
    }
    let c = Collector::start("silent-collector", "127.0.0.1:0", &["--silent-after", "2s"]);
    let spool = scratch("silent-spool");
    let s = sensor_pushing_to(&c, "silent-sensor", &spool, &["--heartbeat-interval", "1"]);
    s.wait_delivered(Duration::from_secs(10));
    // Quiet for longer than 2 s is fine while heartbeats come.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        c.query(&["alerts"])
            .iter()
            .all(|a| !has_reason(a, "sensor_silent")),
        "silent while heartbeats arrive"
    );
    // A miner that kills the sensor outright.
    s.kill9();
    let silent = c
        .wait_row(&["alerts"], Duration::from_secs(10), |a| {
            has_reason(a, "sensor_silent")
        })
        .expect("no sensor_silent alert");
    assert_eq!(silent["severity"], "high", "{silent}");
    assert_eq!(silent["source"], "collector");
    let sink = c.sink_records();
    assert!(
        sink.iter().any(|a| has_reason(a, "sensor_silent")),
        "{sink:?}"
    );
    let nodes = c.query(&["nodes"]);
    assert_eq!(nodes[0]["state"], "SILENT", "{nodes:?}");
    // The sink file is rotated away (logrotate); it comes back, and the SOC is told that in
    // the new file.
    std::fs::rename(&c.sink, c.sink.with_extension("1")).unwrap();
    let _s = sensor_pushing_to(
        &c,
        "silent-sensor-2",
        &spool,
        &["--heartbeat-interval", "1"],
    );
    c.wait_row(&["alerts"], Duration::from_secs(10), |a| {
        has_reason(a, "sensor_resumed")
    })
    .expect("no sensor_resumed alert");
    let end = Instant::now() + Duration::from_secs(5);
    while !c
        .sink_records()
        .iter()
        .any(|a| has_reason(a, "sensor_resumed"))
    {
        assert!(
            Instant::now() < end,
            "sensor_resumed not in the new sink file"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
