//! The on-disk spool between the sensor and its collectors: every event, in sequence order,
//! in segment files under the spool directory, until every collector has acknowledged it.
//! It also carries the sequence across restarts: the next number is one past the last
//! record on disk.
//!
//! A segment is named after its first sequence number (`00000000000000000001.seg`) and holds
//! records `[len u32][crc32 u32][seq u64][protobuf Event]`. A torn tail (a crash mid-write) is
//! cut at start-up. Each collector's acknowledged sequence is in `cursor-<name>`. When the
//! spool is over its bound, the oldest segment goes, and whatever a collector had not yet
//! acknowledged from it is reported as a loss record: never silently.
use std::{
    collections::{BTreeMap, HashMap},
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use minerwatch_proto::v1::Event;
use prost::Message;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const HEADER: usize = 16;
/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 4 << 20;
/// No event is this big; a larger length field means a corrupt record.
const MAX_RECORD: usize = 4 << 20;
/// Data is written to the OS every flush, and forced to disk at most this often.
const SYNC_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
}

/// Events a collector will never get because the spool bound was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub collector: String,
    pub first: u64,
    pub last: u64,
    /// Events in `first..=last` that were in the spool (numbers skip what was never for
    /// collectors).
    pub count: u64,
}

#[derive(Debug)]
struct Index {
    /// First sequence number -> segment. The last one is being written.
    segments: BTreeMap<u64, Segment>,
    /// Collector name -> highest acknowledged sequence.
    cursors: HashMap<String, u64>,
    total: u64,
    max_bytes: u64,
    last_seq: u64,
    dropped: Vec<Dropped>,
}

impl Index {
    fn oldest(&self) -> u64 {
        self.segments.keys().next().copied().unwrap_or(1)
    }

    /// Last sequence number in the segment starting at `first`.
    fn segment_last(&self, first: u64) -> u64 {
        self.segments
            .range(first + 1..)
            .next()
            .map_or(self.last_seq, |(&next, _)| next - 1)
    }

    /// Removes closed segments every collector has acknowledged.
    fn collect(&mut self) {
        let acked = self
            .cursors
            .values()
            .copied()
            .min()
            .unwrap_or(self.last_seq);
        while self.segments.len() > 1 {
            let first = self.oldest();
            if self.segment_last(first) > acked {
                break;
            }
            if let Some(seg) = self.segments.remove(&first) {
                self.total -= seg.bytes;
                let _ = std::fs::remove_file(&seg.path);
            }
        }
    }
}

struct Shared {
    dir: PathBuf,
    index: Mutex<Index>,
    flushed: watch::Sender<u64>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("cursor-{safe}"))
}

/// Where the highest sequence number reserved is kept, so numbers given out to the local
/// API and the JSON lines, which the spool never holds, are not given out again after a
/// restart.
fn reserved_path(dir: &Path) -> PathBuf {
    dir.join("reserved")
}

/// Whole records in the segment at `path` numbered above `after`.
fn records_after(path: &Path, after: u64) -> u64 {
    let Ok(f) = File::open(path) else {
        return 0;
    };
    let (mut pos, mut n) = (0, 0);
    while let Record::Ok { seq, next, .. } = read_record(&f, pos) {
        if seq > after {
            n += 1;
        }
        pos = next;
    }
    n
}

fn save_cursor(dir: &Path, name: &str, seq: u64) -> std::io::Result<()> {
    let path = cursor_path(dir, name);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{seq}\n"))?;
    std::fs::rename(tmp, path)
}

fn encode(ev: &Event, buf: &mut Vec<u8>) {
    buf.clear();
    buf.resize(HEADER, 0);
    ev.encode(buf).unwrap_or_default();
    let len = (buf.len() - HEADER) as u32;
    let crc = crc32fast::hash(&buf[HEADER..]);
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf[8..16].copy_from_slice(&ev.seq.to_le_bytes());
}

enum Record {
    Ok {
        seq: u64,
        body: Vec<u8>,
        next: u64,
    },
    /// Not (yet) a whole record here: end of the written data, or a torn write.
    Incomplete,
    Corrupt,
}

fn read_record(f: &File, pos: u64) -> Record {
    let mut h = [0u8; HEADER];
    if f.read_exact_at(&mut h, pos).is_err() {
        return Record::Incomplete;
    }
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let seq = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    if len > MAX_RECORD {
        return Record::Corrupt;
    }
    let mut body = vec![0u8; len];
    if f.read_exact_at(&mut body, pos + HEADER as u64).is_err() {
        return Record::Incomplete;
    }
    if crc32fast::hash(&body) != crc {
        return Record::Corrupt;
    }
    Record::Ok {
        seq,
        body,
        next: pos + (HEADER + len) as u64,
    }
}

/// The sensor task's end: appends events and flushes them.
pub struct Writer {
    shared: Arc<Shared>,
    file: BufWriter<File>,
    active: u64,
    active_path: PathBuf,
    active_bytes: u64,
    last_sync: Instant,
    buf: Vec<u8>,
}

/// What the sensor task reads of a spool that another thread writes: how far it goes, what
/// its bound dropped, whether every collector has it all.
#[derive(Clone)]
pub struct View {
    shared: Arc<Shared>,
}

impl View {
    pub fn last_seq(&self) -> u64 {
        self.shared.index.lock().map_or(0, |i| i.last_seq)
    }

    /// What the bound dropped since the last call.
    pub fn take_losses(&self) -> Vec<Dropped> {
        self.shared
            .index
            .lock()
            .map(|mut i| std::mem::take(&mut i.dropped))
            .unwrap_or_default()
    }

    /// Every collector has acknowledged everything up to `seq`, and the spool holds it.
    pub fn all_acked(&self, seq: u64) -> bool {
        self.shared
            .index
            .lock()
            .is_ok_and(|i| i.last_seq >= seq && i.cursors.values().all(|&a| a >= seq))
    }
}

/// A collector's end: reads what it has not acknowledged yet, and acknowledges.
pub struct Reader {
    shared: Arc<Shared>,
    name: String,
    next: u64,
    open: Option<(u64, File, u64)>,
}

/// Opens (or creates) the spool in `dir` for `collectors` (their names: the URLs).
pub fn open(
    dir: &Path,
    max_bytes: u64,
    collectors: &[String],
) -> Result<(Writer, Vec<Reader>), SpoolError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let mut segments = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = entry.metadata().map_err(io(dir))?.len();
        segments.insert(
            first,
            Segment {
                path: entry.path(),
                bytes,
            },
        );
    }
    // The last segment is where writing resumes: find its last whole record, cut the rest.
    let (active, last_seq) = match segments.iter_mut().next_back() {
        None => {
            // A new spool numbers from the time in microseconds: one wiped and recreated on a
            // running node never reuses a number a collector has already stored.
            let first = std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64);
            let path = segment_path(dir, first);
            segments.insert(first, Segment { path, bytes: 0 });
            (first, first - 1)
        }
        Some((&first, seg)) => {
            let f = File::open(&seg.path).map_err(io(&seg.path))?;
            // Sequence numbers rise through a segment, with gaps where events were not for
            // collectors (activity without push_activity): a whole record whose number does
            // not rise is where the good data ends.
            let (mut pos, mut last) = (0u64, first - 1);
            while let Record::Ok { seq, next, .. } = read_record(&f, pos) {
                if seq <= last {
                    break;
                }
                pos = next;
                last = seq;
            }
            if pos != seg.bytes {
                tracing::warn!(segment = %seg.path.display(), kept = pos, cut = seg.bytes - pos, "spool: cutting a torn tail");
                OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .and_then(|f| f.set_len(pos))
                    .map_err(io(&seg.path))?;
                seg.bytes = pos;
            }
            (first, last)
        }
    };
    let oldest = segments.keys().next().copied().unwrap_or(1);
    let mut cursors = HashMap::new();
    for name in collectors {
        // A collector new to this spool starts with the oldest event still here.
        let acked = std::fs::read_to_string(cursor_path(dir, name))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(oldest - 1)
            .min(last_seq);
        cursors.insert(name.clone(), acked);
    }
    let total = segments.values().map(|s| s.bytes).sum();
    let active_path = segment_path(dir, active);
    let active_bytes = segments.get(&active).map_or(0, |s| s.bytes);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&active_path)
        .map_err(io(&active_path))?;
    let (flushed, _) = watch::channel(last_seq);
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        index: Mutex::new(Index {
            segments,
            cursors: cursors.clone(),
            total,
            max_bytes,
            last_seq,
            dropped: Vec::new(),
        }),
        flushed,
    });
    let readers = collectors
        .iter()
        .map(|name| Reader {
            shared: shared.clone(),
            name: name.clone(),
            next: cursors.get(name).copied().unwrap_or(0) + 1,
            open: None,
        })
        .collect();
    let writer = Writer {
        shared,
        file: BufWriter::with_capacity(256 << 10, file),
        active,
        active_path,
        active_bytes,
        last_sync: Instant::now(),
        buf: Vec::new(),
    };
    Ok((writer, readers))
}

impl Writer {
    /// The number to continue from: the last event spooled, or the highest number reserved
    /// by an earlier run, whichever is higher.
    pub fn resume_seq(&self) -> u64 {
        let reserved = std::fs::read_to_string(reserved_path(&self.shared.dir))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        self.last_seq().max(reserved)
    }

    /// Records that numbers up to `seq` may have been given out.
    pub fn reserve(&self, seq: u64) -> Result<(), SpoolError> {
        let path = reserved_path(&self.shared.dir);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{seq}\n"))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(io(&path))
    }

    pub fn view(&self) -> View {
        View {
            shared: self.shared.clone(),
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.view().last_seq()
    }

    /// Appends one event. Its `seq` must be above the last.
    pub fn append(&mut self, ev: &Event) -> Result<(), SpoolError> {
        encode(ev, &mut self.buf);
        self.file
            .write_all(&self.buf)
            .map_err(io(&self.active_path))?;
        let n = self.buf.len() as u64;
        self.active_bytes += n;
        if let Ok(mut idx) = self.shared.index.lock() {
            idx.last_seq = ev.seq;
            idx.total += n;
            if let Some(seg) = idx.segments.get_mut(&self.active) {
                seg.bytes += n;
            }
        }
        if self.active_bytes >= SEGMENT_BYTES {
            self.roll(ev.seq + 1)?;
        }
        Ok(())
    }

    fn roll(&mut self, first: u64) -> Result<(), SpoolError> {
        self.file.flush().map_err(io(&self.active_path))?;
        self.file
            .get_ref()
            .sync_data()
            .map_err(io(&self.active_path))?;
        let path = segment_path(&self.shared.dir, first);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        self.file = BufWriter::with_capacity(256 << 10, file);
        self.active = first;
        self.active_path = path.clone();
        self.active_bytes = 0;
        let Ok(mut idx) = self.shared.index.lock() else {
            return Ok(());
        };
        idx.segments.insert(first, Segment { path, bytes: 0 });
        // Over the bound: the oldest segment goes, and what it held that a collector had
        // not acknowledged is recorded as dropped for that collector.
        while idx.total > idx.max_bytes && idx.segments.len() > 1 {
            let oldest = idx.oldest();
            let last = idx.segment_last(oldest);
            let mut dropped = Vec::new();
            let path = segment_path(&self.shared.dir, oldest);
            for (name, acked) in idx.cursors.iter_mut() {
                if *acked < last {
                    dropped.push(Dropped {
                        collector: name.clone(),
                        first: (*acked + 1).max(oldest),
                        last,
                        count: records_after(&path, *acked),
                    });
                    *acked = last;
                    let _ = save_cursor(&self.shared.dir, name, last);
                }
            }
            idx.dropped.extend(dropped);
            if let Some(seg) = idx.segments.remove(&oldest) {
                idx.total -= seg.bytes;
                let _ = std::fs::remove_file(&seg.path);
            }
        }
        Ok(())
    }

    /// Hands everything appended to the OS and wakes the readers; forces it to disk at most
    /// once a second.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        self.file.flush().map_err(io(&self.active_path))?;
        if self.last_sync.elapsed() >= SYNC_EVERY {
            self.last_sync = Instant::now();
            self.file
                .get_ref()
                .sync_data()
                .map_err(io(&self.active_path))?;
        }
        let last = self.last_seq();
        self.shared.flushed.send_if_modified(|v| {
            let changed = *v != last;
            *v = last;
            changed
        });
        Ok(())
    }

    /// What the bound dropped since the last call.
    pub fn take_losses(&mut self) -> Vec<Dropped> {
        self.view().take_losses()
    }
}

impl Reader {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn acked(&self) -> u64 {
        self.shared
            .index
            .lock()
            .ok()
            .and_then(|i| i.cursors.get(&self.name).copied())
            .unwrap_or(0)
    }

    /// Changes whenever more events are flushed.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.flushed.subscribe()
    }

    /// Reads again from the first unacknowledged event (after a reconnect).
    pub fn rewind(&mut self) {
        self.next = self.acked() + 1;
        self.open = None;
    }

    /// Up to `max_events` (and about `max_bytes`) events from where this reader is.
    pub fn read_batch(
        &mut self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, SpoolError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_events && bytes < max_bytes {
            let (first, is_last) = {
                let Ok(idx) = self.shared.index.lock() else {
                    break;
                };
                // Dropped by the bound while we were behind (already reported).
                self.next = self.next.max(idx.oldest());
                if self.next > idx.last_seq {
                    break;
                }
                let Some((&first, _)) = idx.segments.range(..=self.next).next_back() else {
                    break;
                };
                (first, idx.segments.range(first + 1..).next().is_none())
            };
            if self.open.as_ref().is_none_or(|(f, _, _)| *f != first) {
                let path = segment_path(&self.shared.dir, first);
                let file = File::open(&path).map_err(io(&path))?;
                self.open = Some((first, file, 0));
            }
            let Some((_, file, pos)) = self.open.as_mut() else {
                break;
            };
            match read_record(file, *pos) {
                Record::Ok { seq, body, next } => {
                    *pos = next;
                    if seq < self.next {
                        continue;
                    }
                    match Event::decode(&body[..]) {
                        Ok(ev) => {
                            bytes += body.len();
                            out.push(ev);
                        }
                        Err(e) => {
                            tracing::warn!(seq, reason = %e, "spool: undecodable record skipped")
                        }
                    }
                    self.next = seq + 1;
                }
                Record::Incomplete if is_last => break,
                Record::Incomplete | Record::Corrupt => {
                    if is_last {
                        break;
                    }
                    // A closed segment that ends early or is damaged: go on with the next.
                    tracing::warn!(segment = first, "spool: damaged segment, skipping its rest");
                    let next_first = self
                        .shared
                        .index
                        .lock()
                        .ok()
                        .and_then(|i| i.segments.range(first + 1..).next().map(|(&f, _)| f));
                    match next_first {
                        Some(f) => self.next = f,
                        None => break,
                    }
                }
            }
        }
        Ok(out)
    }

    /// Records that the collector stored everything up to `seq`.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let Ok(mut idx) = self.shared.index.lock() else {
            return Ok(());
        };
        let Some(acked) = idx.cursors.get_mut(&self.name) else {
            return Ok(());
        };
        if seq <= *acked {
            return Ok(());
        }
        *acked = seq;
        let path = cursor_path(&self.shared.dir, &self.name);
        save_cursor(&self.shared.dir, &self.name, seq).map_err(io(&path))?;
        idx.collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minerwatch_proto::v1::{Heartbeat, event::Body};

    fn ev(seq: u64, pad: usize) -> Event {
        Event {
            seq,
            node: Some(minerwatch_proto::v1::Node {
                host: "x".repeat(pad),
                ..Default::default()
            }),
            body: Some(Body::Heartbeat(Heartbeat {
                interval_seconds: 1,
            })),
            ..Default::default()
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mw-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn seqs(r: &mut Reader) -> Vec<u64> {
        r.read_batch(usize::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn resumes_sequence_and_cursor_after_restart_and_cuts_a_torn_tail() {
        let dir = tmp("restart");
        let c = vec!["http://c1".to_string()];
        let base;
        {
            let (mut w, mut r) = open(&dir, 1 << 30, &c).unwrap();
            base = w.last_seq();
            for s in 1..=10 {
                w.append(&ev(base + s, 10)).unwrap();
            }
            w.flush().unwrap();
            assert_eq!(seqs(&mut r[0]), (base + 1..=base + 10).collect::<Vec<_>>());
            r[0].ack(base + 4).unwrap();
        }
        // A crash in the middle of a write leaves half a record.
        let seg = segment_path(&dir, base + 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        let (w, mut r) = open(&dir, 1 << 30, &c).unwrap();
        assert_eq!(w.last_seq(), base + 10);
        assert_eq!(seqs(&mut r[0]), (base + 5..=base + 10).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_spool_with_gaps_in_its_numbers_is_kept_whole_across_a_restart() {
        let dir = tmp("gaps");
        let c = vec!["http://c1".to_string()];
        let (mut w, _) = open(&dir, 1 << 30, &c).unwrap();
        let base = w.last_seq();
        let kept: Vec<u64> = [1, 2, 5, 9, 10].iter().map(|s| base + s).collect();
        for &s in &kept {
            w.append(&ev(s, 10)).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        let (w, mut r) = open(&dir, 1 << 30, &c).unwrap();
        assert_eq!(w.last_seq(), base + 10);
        assert_eq!(seqs(&mut r[0]), kept);
        // Numbers reserved for events the spool never held are not given out again.
        assert_eq!(w.resume_seq(), base + 10);
        w.reserve(base + 500).unwrap();
        drop(w);
        let (w, _) = open(&dir, 1 << 30, &c).unwrap();
        assert_eq!((w.last_seq(), w.resume_seq()), (base + 10, base + 500));
        assert!(records_after(&segment_path(&dir, base + 1), base + 2) == 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn acknowledged_segments_go_and_the_bound_drops_explicitly() {
        let dir = tmp("bound");
        let c = vec!["a".to_string(), "b".to_string()];
        let (mut w, mut r) = open(&dir, 3 * SEGMENT_BYTES, &c).unwrap();
        // ~1 KiB events: a segment holds about 4,000.
        let base = w.last_seq();
        let n = base + 25_000;
        for s in base + 1..=n {
            w.append(&ev(s, 1000)).unwrap();
            if s % 1000 == 0 {
                w.flush().unwrap();
                // Collector a keeps up; b never acknowledges anything.
                let got = r[0].read_batch(usize::MAX, usize::MAX).unwrap();
                r[0].ack(got.last().unwrap().seq).unwrap();
            }
        }
        w.flush().unwrap();
        let dropped = w.take_losses();
        assert!(!dropped.is_empty());
        assert!(dropped.iter().all(|d| d.collector == "b"));
        // What b lost is one unbroken range from 1, and what it can still read follows it.
        let mut expect = base + 1;
        for d in &dropped {
            assert_eq!(d.first, expect);
            expect = d.last + 1;
        }
        assert_eq!(seqs(&mut r[1]), (expect..=n).collect::<Vec<_>>());
        let idx = w.shared.index.lock().unwrap();
        assert!(idx.total <= 3 * SEGMENT_BYTES + SEGMENT_BYTES);
        drop(idx);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
