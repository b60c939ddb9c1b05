//! End-to-end: the evasions and edge cases of process and connection lifecycles: a leader
//! that exits early, a login one byte per packet, IPv6, UDP destinations, exec from a
//! non-leader thread and from a memfd, floods beside a login, many short-lived sockets,
//! and processes that move between cgroups or run through links that change.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test loudly"
)]
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use minerwatch_tests::{
    Proc, Sensor, exec_storm, has_reason, listener, listener_on, root_or_skip, severity_rank,
};
use serde_json::Value;

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");

fn client(args: &[&str]) -> Command {
    let mut c = Command::new(CLIENT);
    c.args(args).stdin(Stdio::null());
    c
}

fn high_stratum(s: &mut Sensor, pid: u32, what: &str) -> Value {
    let alert = s
        .wait_alert(pid, "stratum_protocol", Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "no Stratum alert for {what} (pid {pid}); stderr:\n{}",
                s.stderr_text()
            )
        });
    assert!(severity_rank(&alert["severity"]) >= 3, "{what}: {alert}");
    alert
}

#[test]
fn leader_pthread_exit_keeps_the_process_and_its_evidence() {
    if !root_or_skip("leader_pthread_exit_keeps_the_process_and_its_evidence") {
        return;
    }
    let (_l, addr) = listener(0);
    let mut s = Sensor::start("leader-exit", &[]);
    let c = Proc::spawn(&mut client(&["leader-exit", &addr]));
    let pid = c.pid();
    let alert = high_stratum(&mut s, pid, "a thread whose leader exited");
    // The process is still known: its executable and command line are in the alert.
    assert!(
        alert["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("mw-client")),
        "{alert}"
    );
    assert_eq!(alert["argv"][1], "leader-exit", "{alert}");
    // No exit was reported while the other thread still ran.
    let exit_before = s
        .records()
        .into_iter()
        .take_while(|r| r != &alert)
        .any(|r| r["kind"] == "exit" && r["pid"] == pid);
    assert!(!exit_before, "exit reported while a thread still ran");
    c.wait();
    s.wait_for(Duration::from_secs(10), |r| {
        r["kind"] == "exit" && r["pid"] == pid
    })
    .expect("one exit record once the last thread is gone");
}

#[test]
fn login_one_byte_per_packet_is_high() {
    if !root_or_skip("login_one_byte_per_packet_is_high") {
        return;
    }
    let (_l, addr) = listener(0);
    let mut s = Sensor::start("bytewise", &[]);
    let c = Proc::spawn(&mut client(&["bytewise", &addr]));
    high_stratum(&mut s, c.pid(), "a login one byte per packet");
}

#[test]
fn login_after_whitespace_padding_is_high() {
    if !root_or_skip("login_after_whitespace_padding_is_high") {
        return;
    }
    let (_l, addr) = listener(0);
    let mut s = Sensor::start("padded", &[]);
    for how in ["one", "split", "big"] {
        let c = Proc::spawn(&mut client(&["padded", &addr, how]));
        high_stratum(
            &mut s,
            c.pid(),
            &format!("a login after whitespace padding ({how})"),
        );
    }
}

#[test]
fn ipv6_connect_and_first_bytes() {
    if !root_or_skip("ipv6_connect_and_first_bytes") {
        return;
    }
    let (_l, addr) = listener_on("[::1]:0");
    let mut s = Sensor::start("ipv6", &[]);
    let c = Proc::spawn(&mut client(&["stratum", &addr, "write"]));
    let pid = c.pid();
    let alert = high_stratum(&mut s, pid, "a login over IPv6");
    assert_eq!(alert["connection"], addr.as_str(), "{alert}");
    let conn = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "connect" && r["pid"] == pid && r["peer"] == addr.as_str()
        })
        .expect("IPv6 connect record");
    assert_eq!(conn["transport"], "tcp");
    assert_eq!(conn["ret"], 0);
}

#[test]
fn udp_destinations_connected_and_unconnected() {
    if !root_or_skip("udp_destinations_connected_and_unconnected") {
        return;
    }
    let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a, b) = (
        a.local_addr().unwrap().to_string(),
        b.local_addr().unwrap().to_string(),
    );
    let mut s = Sensor::start("udp", &[]);
    let c = Proc::spawn(&mut client(&["udp", &a, &b]));
    let pid = c.pid();
    let sent = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "connect" && r["pid"] == pid && r["peer"] == a.as_str()
        })
        .expect("record of the unconnected datagram's destination");
    assert_eq!(
        (&sent["transport"], &sent["unconnected"]),
        (&"udp".into(), &true.into()),
        "{sent}"
    );
    let conn = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "connect" && r["pid"] == pid && r["peer"] == b.as_str()
        })
        .expect("record of the connected UDP socket");
    assert_eq!(conn["transport"], "udp", "{conn}");
    assert_ne!(conn["unconnected"], true, "{conn}");
}

#[test]
fn exec_from_a_non_leader_thread() {
    if !root_or_skip("exec_from_a_non_leader_thread") {
        return;
    }
    let mut s = Sensor::start("thread-exec", &[]);
    let c = Proc::spawn(&mut client(&["thread-exec", "/bin/sleep", "0.3"]));
    let pid = c.pid();
    let rec = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "exec" && r["pid"] == pid && r["argv"][0] == "/bin/sleep"
        })
        .unwrap_or_else(|| panic!("no exec record for pid {pid}: {:?}", s.records()));
    assert_eq!(
        rec["argv"],
        serde_json::json!(["/bin/sleep", "0.3"]),
        "{rec}"
    );
    assert!(rec["exe"].as_str().unwrap().ends_with("sleep"), "{rec}");
}

#[test]
fn execveat_of_a_memfd_is_fileless() {
    if !root_or_skip("execveat_of_a_memfd_is_fileless") {
        return;
    }
    let mut s = Sensor::start("memfd-exec", &[]);
    let c = Proc::spawn(&mut client(&["memfd-exec", "/bin/sleep", "0.5"]));
    let pid = c.pid();
    let rec = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "exec" && r["pid"] == pid && r["argv"][0] == "/bin/sleep"
        })
        .unwrap_or_else(|| panic!("no exec record for pid {pid}: {:?}", s.records()));
    assert_eq!(
        rec["argv"],
        serde_json::json!(["/bin/sleep", "0.5"]),
        "{rec}"
    );
    assert!(
        rec["exe"].as_str().unwrap().contains("memfd:mw-fileless"),
        "{rec}"
    );
    let alert = s
        .wait_alert(pid, "suspicious_exe_location", Duration::from_secs(10))
        .expect("a memfd executable is a suspicious_exe_location finding");
    assert!(has_reason(&alert, "suspicious_exe_location"));
}

#[test]
fn login_is_alerted_through_an_exec_and_connect_flood() {
    if !root_or_skip("login_is_alerted_through_an_exec_and_connect_flood") {
        return;
    }
    let (_l, addr) = listener(0);
    let mut s = Sensor::start("flood", &["--stats-interval", "1"]);
    let _storm = exec_storm(20_000);
    let (_l2, flood_addr) = listener(0);
    let _connects: Vec<Proc> = (0..4)
        .map(|_| Proc::spawn(&mut client(&["connect-storm", &flood_addr, "3000"])))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let c = Proc::spawn(&mut client(&["stratum", &addr, "write"]));
    high_stratum(&mut s, c.pid(), "a login during a flood");
    // Whatever the flood cost is counted and reported, never silent.
    let stats = s.wait_for(Duration::from_secs(15), |r| r["kind"] == "stats");
    if let Some(st) = stats {
        assert!(st["kernel"].is_object(), "{st}");
    }
}

#[test]
fn one_process_cannot_flood_the_decisive_ring() {
    if !root_or_skip("one_process_cannot_flood_the_decisive_ring") {
        return;
    }
    let (_l, addr) = listener(0);
    let mut s = Sensor::start("payload-flood", &["--stats-interval", "1"]);
    // 2 MiB of first bytes from one process, far past its 256 KiB a second.
    let storm = Proc::spawn(&mut client(&["payload-storm", &addr, "1000"]));
    std::thread::sleep(Duration::from_millis(100));
    let c = Proc::spawn(&mut client(&["stratum", &addr, "write"]));
    high_stratum(
        &mut s,
        c.pid(),
        "a login while another process floods first bytes",
    );
    assert!(storm.wait().success());
    // What the flooder lost is counted, and told as a loss.
    let stats = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "stats" && r["kernel"]["payload_budget_dropped"].as_u64().unwrap_or(0) > 0
        })
        .expect("a stats record counting the dropped records");
    assert_eq!(stats["kernel"]["ringbuf_full_payload"], 0, "{stats}");
}

#[test]
fn many_short_lived_sockets_leave_nothing_behind() {
    if !root_or_skip("many_short_lived_sockets_leave_nothing_behind") {
        return;
    }
    let (_l, addr) = listener(0);
    let mut s = Sensor::start("short-sockets", &["--stats-interval", "1"]);
    // 20,000 connections, each sending a little and closing.
    let storms: Vec<Proc> = (0..4)
        .map(|_| Proc::spawn(&mut client(&["connect-storm", &addr, "5000"])))
        .collect();
    for p in storms {
        assert!(p.wait().success());
    }
    // Closed connections are forgotten: the last stats record holds few streams, and no
    // socket went unfollowed for lack of storage.
    std::thread::sleep(Duration::from_millis(1500));
    let stats = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "stats" && r["uptime_s"].as_u64().unwrap_or(0) >= 2
        })
        .expect("stats record");
    let last = s
        .records()
        .into_iter()
        .rev()
        .find(|r| r["kind"] == "stats")
        .unwrap_or(stats);
    assert!(last["streams"].as_u64().unwrap() < 100, "{last}");
    assert_eq!(last["kernel"]["sock_storage_failed"], 0, "{last}");
    // And the sensor still sees a new login at once.
    let c = Proc::spawn(&mut client(&["stratum", &addr, "write"]));
    high_stratum(&mut s, c.pid(), "a login after 20,000 short connections");
}

/// The exec record of `marker` (the last argument of its command line).
fn exec_of(s: &mut Sensor, marker: &str) -> Value {
    s.wait_for(Duration::from_secs(10), |r| {
        r["kind"] == "exec" && r["argv"].as_array().and_then(|a| a.last()) == Some(&marker.into())
    })
    .unwrap_or_else(|| panic!("no exec record for {marker}; stderr:\n{}", s.stderr_text()))
}

/// Where a job cgroup can be made for the test: a v1 hierarchy where Slurm puts jobs
/// (freezer) when this node has one, else the cgroup v2 tree.
fn job_cgroup_root() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let find = |want: &dyn Fn(&[&str]) -> bool| {
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            want(&f).then(|| std::path::PathBuf::from(f[1]))
        })
    };
    find(&|f| f[2] == "cgroup" && f[3].split(',').any(|o| o == "freezer"))
        .or_else(|| find(&|f| f[2] == "cgroup2"))
        .expect("no cgroup hierarchy mounted")
}

/// The sensor reuses cgroup paths by the cgroup ids the kernel gives at exec (the v2 id,
/// and on nodes with v1 hierarchies a key of the v1 cgroups): a process moved into a job
/// cgroup and out again between execs must be described where it is at each exec, short
/// processes (gone before /proc could be read) included.
#[test]
fn exec_names_the_job_cgroup_it_runs_in_across_moves() {
    if !root_or_skip("exec_names_the_job_cgroup_it_runs_in_across_moves") {
        return;
    }
    let root = job_cgroup_root();
    // A job folder under an anchor root made, as slurmstepd does (named in the config: no
    // slurmd runs here).
    let anchor = format!("minerwatch-e2e-{}", std::process::id());
    let parent = root.join(&anchor);
    let job = parent.join("job_4242");
    std::fs::create_dir_all(&job).unwrap();
    let dir = minerwatch_tests::scratch("cgroup-moves");
    let config = dir.join("minerwatch.toml");
    std::fs::write(&config, format!("slurm_cgroup_anchors = [\"/{anchor}\"]\n")).unwrap();
    let mut s = Sensor::start_writing(
        &dir,
        &dir.join("out.jsonl"),
        &[
            "--stats-interval",
            "1",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let script = format!(
        "echo $$ > {job}/cgroup.procs; \
         /bin/sh -c 'sleep 0.2' in-1; /bin/true in-fast; /bin/sh -c 'sleep 0.2' in-2; \
         echo $$ > {root}/cgroup.procs; \
         /bin/sh -c 'sleep 0.2' out-1; /bin/true out-fast",
        job = job.display(),
        root = root.display()
    );
    let status = Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for marker in ["in-1", "in-fast", "in-2"] {
        let e = exec_of(&mut s, marker);
        assert_eq!(e["job"], 4242, "{marker}: {e}");
    }
    for marker in ["out-1", "out-fast"] {
        let e = exec_of(&mut s, marker);
        assert_eq!(e["job"], Value::Null, "{marker}: {e}");
    }
    // Some of those paths were reused rather than read (the point of the key).
    let c = s.wait_counters(Duration::from_secs(5), |c| {
        c["cgroup_paths_reused"].as_u64() > Some(0)
    });
    assert!(c["cgroup_paths_reused"].as_u64() > Some(0), "{c}");
    std::fs::remove_dir(&job).unwrap();
    std::fs::remove_dir(&parent).unwrap();
}

/// The resolved executable is reused by (path as executed, inode it led to): a link that
/// now points elsewhere is resolved again, and a process gone before /proc could be read
/// still gets its resolved path.
#[test]
fn exec_resolves_links_again_when_they_change() {
    if !root_or_skip("exec_resolves_links_again_when_they_change") {
        return;
    }
    let dir = minerwatch_tests::scratch("exe-links");
    let (first, second, alias) = (dir.join("first"), dir.join("second"), dir.join("alias"));
    std::fs::copy("/bin/true", &first).unwrap();
    std::fs::copy("/bin/true", &second).unwrap();
    std::os::unix::fs::symlink(&first, &alias).unwrap();
    let mut s = Sensor::start("exe-links", &["--stats-interval", "1"]);
    let run = |marker: &str| {
        let st = Command::new(&alias).arg(marker).status().unwrap();
        assert!(st.success());
    };
    for m in ["first-1", "first-2", "first-3"] {
        run(m);
    }
    // The link changes once the sensor has described those (a path resolved after the
    // link changed leads to another inode, and is not taken for the one executed).
    exec_of(&mut s, "first-3");
    std::fs::remove_file(&alias).unwrap();
    std::os::unix::fs::symlink(&second, &alias).unwrap();
    run("second-1");
    run("second-2");
    for (m, want) in [
        ("first-1", &first),
        ("first-2", &first),
        ("first-3", &first),
        ("second-1", &second),
        ("second-2", &second),
    ] {
        let e = exec_of(&mut s, m);
        assert_eq!(e["exe"], want.display().to_string(), "{m}: {e}");
    }
    let c = s.wait_counters(Duration::from_secs(5), |c| {
        c["exe_paths_reused"].as_u64() > Some(0)
    });
    assert!(c["exe_paths_reused"].as_u64() > Some(0), "{c}");
}
