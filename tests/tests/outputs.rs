//! End-to-end: an output that fails does not stop the sensor. The JSON-lines file sits on a
//! tiny tmpfs that the test fills: the sensor keeps running, says so, counts the failed
//! writes, and writes what it held once there is room again.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test loudly"
)]
use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use minerwatch_tests::{Proc, Sensor, listener, root_or_skip, scratch};

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(dir: &std::path::Path, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_disk_under_the_jsonl_output_is_survived_and_counted() {
    if !root_or_skip("full_disk_under_the_jsonl_output_is_survived_and_counted") {
        return;
    }
    let dir = scratch("full-disk");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _fs = Tmpfs::new(&mnt, "512k");
    let jsonl = mnt.join("out.jsonl");
    let mut s = Sensor::start_writing(&dir, &jsonl, &["--stats-interval", "1"]);
    // Fill what is left of the file system.
    let filler = mnt.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![b'x'; 4096];
        while f.write_all(&block).is_ok() {}
    }
    let (_l, addr) = listener(0);
    let c = Proc::spawn(
        Command::new(CLIENT)
            .args(["stratum", &addr, "write"])
            .stdin(Stdio::null()),
    );
    let pid = c.pid();
    // The sensor says so on stderr and keeps running.
    let end = Instant::now() + Duration::from_secs(15);
    while !s.stderr_text().contains("cannot be written") {
        assert!(
            Instant::now() < end,
            "no warning; stderr:\n{}",
            s.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        s.is_running(),
        "sensor died on a full disk:\n{}",
        s.stderr_text()
    );
    // Room again: what was held is written, the alert raised while full among it, and the
    // failed writes are counted in the stats.
    std::fs::remove_file(&filler).unwrap();
    s.wait_alert(pid, "stratum_protocol", Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "alert raised on a full disk never written:\n{}",
                s.stderr_text()
            )
        });
    let stats = s
        .wait_for(Duration::from_secs(15), |r| {
            r["kind"] == "stats" && r["jsonl"]["write_errors"].as_u64().unwrap_or(0) > 0
        })
        .expect("stats record counting the failed writes");
    assert_eq!(stats["jsonl"]["dropped"], 0, "{stats}");
    assert!(
        s.stderr_text().contains("writable again"),
        "{}",
        s.stderr_text()
    );
}
