//! DNS, observed: lookups a process makes through the system resolver, answered by a real
//! name server (dnsmasq) inside a network namespace the test made, with its own
//! `resolv.conf`. The names are test names under `.test`; nothing leaves the namespace and
//! the sensor resolves nothing itself.
use std::{
    fs,
    net::TcpListener,
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use minerwatch_tests::{
    NetNs, Proc, Sensor, has_reason, reason_detail, root_or_skip, scratch, severity_rank,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");

/// `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` puts over /etc/resolv.conf; removed
/// when dropped.
struct Resolv(std::path::PathBuf);

impl Resolv {
    fn new(ns: &NetNs) -> Resolv {
        let dir = Path::new("/etc/netns").join(&ns.name);
        fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
        let r = Resolv(dir);
        r.write("nameserver 127.0.0.1\noptions attempts:1\n");
        r
    }

    /// Replaces the namespace's `resolv.conf`; the next `ip netns exec` sees it.
    fn write(&self, text: &str) {
        fs::write(self.0.join("resolv.conf"), text).expect("write resolv.conf");
    }
}

impl Drop for Resolv {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Waits until the name server in `ns` answers.
fn wait_answering(ns: &NetNs) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = ns
            .command(Path::new("getent"))
            .args(["hosts", "ready.minerwatch-ns.test"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(
            Instant::now() < end,
            "dnsmasq does not answer in {}",
            ns.name
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn lookups_are_observed_and_joined_to_the_connects_that_follow() {
    if !root_or_skip("lookups_are_observed_and_joined_to_the_connects_that_follow") {
        return;
    }
    let dir = scratch("dns");
    let feed = dir.join("names.txt");
    fs::write(&feed, "minerwatch.test\n").unwrap();
    let ns = NetNs::new("dns");
    let resolv = Resolv::new(&ns);
    let _dnsmasq = Proc::spawn(
        ns.command(Path::new("/usr/sbin/dnsmasq"))
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--address=/minerwatch.test/127.0.0.5",
                "--address=/example.test/127.0.0.6",
                "--address=/minerwatch-ns.test/127.0.0.7",
            ])
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // The pool, inside the namespace, at the address the name server gives for it.
    let _pool = ns
        .spawn(|| TcpListener::bind("127.0.0.5:3333").expect("bind in netns"))
        .join()
        .unwrap();
    wait_answering(&ns);

    let mut s = Sensor::start(
        "dns",
        &[
            "--pool-feed",
            feed.to_str().unwrap(),
            "--stats-interval",
            "1",
        ],
    );

    // A program given the pool's name: looks it up, connects to the answer.
    let c = Proc::spawn(
        ns.command(Path::new(CLIENT))
            .args(["resolve", "eu.pool.minerwatch.test", "3333"])
            .stdout(Stdio::null()),
    );
    let a = s
        .wait_alert(c.pid(), "pool_dns", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("lookup of a listed pool not flagged:\n{}", s.stderr_text()));
    let d = reason_detail(&a, "pool_dns");
    assert!(
        d.contains(
            "connection to 127.0.0.5:3333, which the process looked up as eu.pool.minerwatch.test"
        ) && d.contains("as minerwatch.test"),
        "the lookup is joined to the connect: {d}"
    );
    // Strong: medium with the weak miner port, high where the client runs from /tmp too.
    assert!(severity_rank(&a["severity"]) >= 2, "{a}");
    // The address itself is on no list: the evidence is the name it was looked up as.
    assert!(!has_reason(&a, "pool_intel"), "{a}");
    drop(c);

    // A lookup of a pool-like name, and no connect: said when the process exits.
    let g = Proc::spawn(
        ns.command(Path::new("getent"))
            .args(["hosts", "xmr-eu1.example.test"])
            .stdout(Stdio::null()),
    );
    let pid = g.pid();
    let a = s
        .wait_alert(pid, "pool_dns", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("a pool-like lookup not flagged:\n{}", s.stderr_text()));
    assert!(
        reason_detail(&a, "pool_dns")
            .contains("looked up xmr-eu1.example.test in DNS (through 127.0.0.1:53)"),
        "{a}"
    );
    assert!(severity_rank(&a["severity"]) < 2, "weak alone: {a}");
    g.wait();

    // An ordinary name, and the NTP pool (not answered here): nothing.
    for name in ["www.example.test", "2.debian.pool.ntp.org"] {
        let g = Proc::spawn(
            ns.command(Path::new("getent"))
                .args(["hosts", name])
                .stdout(Stdio::null()),
        );
        let pid = g.pid();
        g.wait();
        s.settled(pid, Duration::from_secs(10));
        assert!(
            s.alerts_for(pid)
                .iter()
                .all(|a| ["pool_intel", "pool_like_name", "pool_dns"]
                    .iter()
                    .all(|code| !has_reason(a, code))),
            "{name}: {:?}",
            s.alerts_for(pid)
        );
    }
    // The same over TCP (glibc's `use-vc`): the query in the connection's first bytes, the
    // answer from the segments that come back, joined to the connect that follows.
    let c = &s.status()["counters"];
    let (answers, unparsed) = (c["dns_answers"].as_u64(), c["dns_unparsed"].as_u64());
    resolv.write("nameserver 127.0.0.1\noptions attempts:1 use-vc\n");
    let c = Proc::spawn(
        ns.command(Path::new(CLIENT))
            .args(["resolve", "us.pool.minerwatch.test", "3333"])
            .stdout(Stdio::null()),
    );
    let a = s
        .wait_alert(c.pid(), "pool_dns", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("a lookup over TCP not flagged:\n{}", s.stderr_text()));
    let d = reason_detail(&a, "pool_dns");
    assert!(
        d.contains(
            "connection to 127.0.0.5:3333, which the process looked up as us.pool.minerwatch.test"
        ),
        "the TCP answer is read and joined: {d}"
    );
    drop(c);
    let c = s.wait_counters(Duration::from_secs(5), |c| {
        c["dns_answers"].as_u64() > answers
    });
    assert!(c["dns_answers"].as_u64() > answers, "{c}");
    assert_eq!(c["dns_unparsed"].as_u64(), unparsed, "{c}");
    resolv.write("nameserver 127.0.0.1\noptions attempts:1\n");

    let c = &s.status()["counters"];
    assert!(c["dns_queries"].as_u64() >= Some(4), "{c}");
    assert!(c["dns_answers"].as_u64() >= Some(3), "{c}");
    assert_eq!(c["dns_unparsed"].as_u64(), Some(0), "{c}");
}
