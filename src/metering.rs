//! Usage metering (SPEC §9): per key name, one JSON line per closed stream
//! and one per key per minute, appended to `[metering] path`, and the
//! totals since start that `GET /v1/usage` reports.
//!
//! Cold: the `sluice-metering` thread owns the file and the totals. Workers
//! count what each stream wrote in its `Subscriber` (two adds per write,
//! nothing per event), fold those counts into per-key accounts once a
//! second and when a stream ends (`server::worker::meter`), and send this
//! thread [`Msg`]s: a stream opened, a stream closed (its record), a key's
//! usage in a minute since the last fold ([`Msg::Delta`]), a minute done.
//! Publishes send their key's rows. The thread
//! * writes a stream record when it arrives;
//! * writes minute M's records once every worker has said it is done with
//!   M (at its first tick after M ends): one line per key that had a
//!   stream open, or published, in M;
//! * writes what it holds after every burst of messages (whole lines, one
//!   `write` per burst) and `fdatasync`s the file every `flush_s` seconds;
//! * reopens the file at its path on [`reopen`] (SIGHUP, for logrotate);
//! * on [`finish`] (a graceful stop, once every worker has recorded its
//!   streams) writes every minute it holds, syncs and ends.
//!
//! What a crash loses: a killed process, nothing the thread had written
//! (the kernel keeps it); a host crash, at most the last `flush_s` seconds;
//! either, the minute in progress and the streams still open (their
//! records are written when they end).
//!
//! Counts: `events` are update frames written whole to the client (replays
//! included; not `connected`, initial states, heartbeats or closing
//! frames); `bytes` are the body bytes the client's socket took: every SSE
//! frame, the response head excluded. Streams without a key are metered as
//! [`ANONYMOUS_KEY`]. Publishes count under the publishing key; rows from
//! sources without a key (the demo feed) are not metered.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};

pub use crate::config::ANONYMOUS_KEY;
use crate::config::Metering;
use crate::hub::Topic;
use crate::sse::{json_str_body, put_u64};
use crate::time::unix_millis;

/// Milliseconds in a minute record's minute.
pub const MINUTE_MS: u64 = 60_000;
/// Most bytes of records held while the file cannot be written; past it,
/// new records are dropped (and counted) until a write succeeds.
pub const MAX_BUFFERED_BYTES: usize = 64 << 20;
/// Most messages handled before what they produced is written out.
const BURST: usize = 4096;

/// What workers and publishes tell the metering thread.
pub enum Msg {
    /// A stream of `key` started.
    Opened { key: Arc<str> },
    /// A stream ended: its record.
    Closed(Box<StreamRecord>),
    /// A key's usage in minute `minute_ms` on one worker since its last
    /// fold: milliseconds its streams were open, events and bytes written.
    Delta {
        key: Arc<str>,
        minute_ms: u64,
        stream_ms: u64,
        events: u64,
        bytes: u64,
    },
    /// Worker `worker` will send nothing more for minutes up to `minute_ms`.
    MinuteDone { worker: usize, minute_ms: u64 },
    /// Worker `worker` has stopped: it sends nothing more.
    WorkerDone { worker: usize },
    /// A publish of `rows` rows by `key`.
    Published { key: Arc<str>, rows: u64 },
    /// Reopen the file (logrotate moved it).
    Reopen,
    /// Write everything, sync, end.
    Stop,
}

/// One closed stream.
pub struct StreamRecord {
    pub key: Arc<str>,
    pub topic: Arc<Topic>,
    pub tier: Arc<str>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub events: u64,
    pub bytes: u64,
    pub close: &'static str,
}

/// One key's totals since start (`GET /v1/usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyUsage {
    pub streams_open: u64,
    pub streams_total: u64,
    pub stream_ms: u64,
    pub events: u64,
    pub bytes: u64,
    pub published_rows: u64,
}

/// Usage by key name.
type Usage = BTreeMap<Arc<str>, KeyUsage>;

/// The process's metering, once started.
struct Meter {
    tx: Sender<Msg>,
    usage: Arc<Mutex<Usage>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

static METER: OnceLock<Meter> = OnceLock::new();

/// Opens the file (created if missing, appended to) and starts the
/// `sluice-metering` thread for a node of `workers` workers. Once per
/// process.
pub fn start(cfg: &Metering, workers: usize) -> io::Result<()> {
    let file = open(&cfg.path)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let usage = Arc::new(Mutex::new(Usage::new()));
    let flush = Duration::from_secs(cfg.flush_s.into());
    let writer = Writer::new(cfg.path.clone(), file, flush, workers, usage.clone());
    let meter = Meter {
        tx,
        usage,
        thread: Mutex::new(None),
    };
    if METER.set(meter).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "metering already started",
        ));
    }
    let thread = std::thread::Builder::new()
        .name("sluice-metering".into())
        .spawn(move || writer.run(rx))?;
    if let Some(m) = METER.get() {
        *m.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    }
    Ok(())
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A sender to the metering thread; `None` while metering is off.
pub fn sender() -> Option<Sender<Msg>> {
    METER.get().map(|m| m.tx.clone())
}

/// Counts a publish of `rows` rows by the key named `key`.
pub fn published(key: &str, rows: usize) {
    if let Some(m) = METER.get() {
        let _ = m.tx.send(Msg::Published {
            key: key.into(),
            rows: rows as u64,
        });
    }
}

/// Reopens the file at its path (SIGHUP): records from now on go to the
/// file found there, created if logrotate moved the old one away.
pub fn reopen() {
    if let Some(m) = METER.get() {
        let _ = m.tx.send(Msg::Reopen);
    }
}

/// A graceful stop: writes every record held, syncs the file and waits for
/// the thread to end. Call once every worker has stopped.
pub fn finish() {
    if let Some(m) = METER.get() {
        let _ = m.tx.send(Msg::Stop);
        let thread = m.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// `GET /v1/usage`: every key's totals since start, the configured keys
/// (`names`) included when they have none yet, by name. `None` while
/// metering is off.
pub fn usage_json<'a>(names: impl Iterator<Item = &'a str>) -> Option<String> {
    let m = METER.get()?;
    let mut usage = m.usage.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for n in names {
        usage.entry(n.into()).or_default();
    }
    let mut out = BytesMut::with_capacity(64 + usage.len() * 160);
    out.put_slice(b"{\"keys\":[");
    for (i, (key, u)) in usage.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(b"{\"key\":\"");
        json_str_body(&mut out, key);
        out.put_slice(b"\",\"streams_open\":");
        put_u64(&mut out, u.streams_open);
        out.put_slice(b",\"streams_total\":");
        put_u64(&mut out, u.streams_total);
        out.put_slice(b",\"stream_seconds\":");
        put_ms_as_seconds(&mut out, u.stream_ms);
        out.put_slice(b",\"events\":");
        put_u64(&mut out, u.events);
        out.put_slice(b",\"bytes\":");
        put_u64(&mut out, u.bytes);
        out.put_slice(b",\"published_rows\":");
        put_u64(&mut out, u.published_rows);
        out.put_u8(b'}');
    }
    out.put_slice(b"]}");
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// The start of the minute `ms` falls in.
pub fn minute_of(ms: u64) -> u64 {
    ms - ms % MINUTE_MS
}

/// A key's usage in one minute.
#[derive(Debug, Clone, Copy, Default)]
struct Minute {
    stream_ms: u64,
    events: u64,
    bytes: u64,
    published_rows: u64,
}

/// The metering thread's state.
struct Writer {
    path: PathBuf,
    file: File,
    /// Whole lines not yet written.
    out: BytesMut,
    /// Written since the last sync.
    dirty: bool,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
    /// Records dropped since the last successful write.
    dropped: u64,
    flush: Duration,
    next_sync: Instant,
    /// Minutes not yet written: minute → key → usage.
    pending: BTreeMap<u64, BTreeMap<Arc<str>, Minute>>,
    /// Per worker: the last minute it is done with (`u64::MAX`: stopped).
    done: Vec<Option<u64>>,
    /// Minutes before this one are written.
    next_minute: u64,
    usage: Arc<Mutex<Usage>>,
}

impl Writer {
    fn new(
        path: PathBuf,
        file: File,
        flush: Duration,
        workers: usize,
        usage: Arc<Mutex<Usage>>,
    ) -> Writer {
        Writer {
            path,
            file,
            out: BytesMut::new(),
            dirty: false,
            failing: false,
            dropped: 0,
            flush,
            next_sync: Instant::now() + flush,
            pending: BTreeMap::new(),
            done: vec![None; workers],
            next_minute: 0,
            usage,
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = self.next_sync.saturating_duration_since(Instant::now());
            let stop = match rx.recv_timeout(wait) {
                Ok(msg) => {
                    let mut stop = self.handle(msg);
                    let mut n = 1;
                    while !stop && n < BURST {
                        match rx.try_recv() {
                            Ok(msg) => stop = self.handle(msg),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    stop
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            if stop {
                let minutes = std::mem::take(&mut self.pending);
                for (minute, keys) in minutes {
                    self.write_minute(minute, &keys);
                }
                self.write_out();
                self.sync();
                return;
            }
            self.write_out();
            if Instant::now() >= self.next_sync {
                self.sync();
            }
        }
    }

    /// Handles one message; true for [`Msg::Stop`].
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Opened { key } => {
                let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
                let u = usage.entry(key).or_default();
                u.streams_open += 1;
                u.streams_total += 1;
            }
            Msg::Closed(r) => {
                {
                    let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
                    let u = usage.entry(r.key.clone()).or_default();
                    u.streams_open = u.streams_open.saturating_sub(1);
                }
                self.write_stream(&r);
            }
            Msg::Delta {
                key,
                minute_ms,
                stream_ms,
                events,
                bytes,
            } => {
                {
                    let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
                    let u = usage.entry(key.clone()).or_default();
                    u.stream_ms += stream_ms;
                    u.events += events;
                    u.bytes += bytes;
                }
                // A worker sends a minute's deltas before it says it is done
                // with it, so this minute is never written already; were it
                // (a clock stepped back), the usage joins the next one.
                let minute = minute_ms.max(self.next_minute);
                let m = self
                    .pending
                    .entry(minute)
                    .or_default()
                    .entry(key)
                    .or_default();
                m.stream_ms += stream_ms;
                m.events += events;
                m.bytes += bytes;
            }
            Msg::MinuteDone { worker, minute_ms } => {
                if let Some(d) = self.done.get_mut(worker) {
                    *d = Some(d.map_or(minute_ms, |d| d.max(minute_ms)));
                }
                self.write_done_minutes();
            }
            Msg::WorkerDone { worker } => {
                if let Some(d) = self.done.get_mut(worker) {
                    *d = Some(u64::MAX);
                }
                self.write_done_minutes();
            }
            Msg::Published { key, rows } => {
                self.usage
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(key.clone())
                    .or_default()
                    .published_rows += rows;
                // Rows count in the minute they arrive in (never one that
                // is written already).
                let minute = minute_of(unix_millis()).max(self.next_minute);
                self.pending
                    .entry(minute)
                    .or_default()
                    .entry(key)
                    .or_default()
                    .published_rows += rows;
            }
            Msg::Reopen => {
                self.write_out();
                self.sync();
                match open(&self.path) {
                    Ok(f) => {
                        self.file = f;
                        tracing::info!(path = %self.path.display(), "metering: reopened the usage file");
                    }
                    Err(e) => tracing::error!(
                        path = %self.path.display(),
                        error = %e,
                        "metering: cannot reopen the usage file; still writing to the old one"
                    ),
                }
            }
            Msg::Stop => return true,
        }
        false
    }

    /// Writes the minutes every worker is done with.
    fn write_done_minutes(&mut self) {
        let mut ready = u64::MAX;
        for d in &self.done {
            match d {
                Some(m) => ready = ready.min(*m),
                None => return,
            }
        }
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > ready {
                break;
            }
            let (minute, keys) = entry.remove_entry();
            self.write_minute(minute, &keys);
        }
        let next = if ready == u64::MAX {
            minute_of(unix_millis())
        } else {
            ready.saturating_add(MINUTE_MS)
        };
        self.next_minute = self.next_minute.max(next);
    }

    /// Room for one more record, or it is dropped (the file has failed for
    /// `MAX_BUFFERED_BYTES`).
    fn room(&mut self) -> bool {
        if self.out.len() < MAX_BUFFERED_BYTES {
            return true;
        }
        self.dropped += 1;
        false
    }

    fn write_stream(&mut self, r: &StreamRecord) {
        if !self.room() {
            return;
        }
        let out = &mut self.out;
        out.put_slice(b"{\"type\":\"stream\",\"key\":\"");
        json_str_body(out, &r.key);
        out.put_slice(b"\",\"topic\":\"");
        json_str_body(out, &r.topic.name);
        out.put_slice(b"\",\"tier\":\"");
        json_str_body(out, &r.tier);
        out.put_slice(b"\",\"start_ms\":");
        put_u64(out, r.start_ms);
        out.put_slice(b",\"end_ms\":");
        put_u64(out, r.end_ms);
        out.put_slice(b",\"seconds\":");
        put_ms_as_seconds(out, r.end_ms.saturating_sub(r.start_ms));
        out.put_slice(b",\"events\":");
        put_u64(out, r.events);
        out.put_slice(b",\"bytes\":");
        put_u64(out, r.bytes);
        out.put_slice(b",\"close\":\"");
        out.put_slice(r.close.as_bytes());
        out.put_slice(b"\"}\n");
    }

    fn write_minute(&mut self, minute: u64, keys: &BTreeMap<Arc<str>, Minute>) {
        for (key, m) in keys {
            if !self.room() {
                return;
            }
            let out = &mut self.out;
            out.put_slice(b"{\"type\":\"minute\",\"key\":\"");
            json_str_body(out, key);
            out.put_slice(b"\",\"minute_ms\":");
            put_u64(out, minute);
            out.put_slice(b",\"stream_seconds\":");
            put_ms_as_seconds(out, m.stream_ms);
            out.put_slice(b",\"events\":");
            put_u64(out, m.events);
            out.put_slice(b",\"bytes\":");
            put_u64(out, m.bytes);
            out.put_slice(b",\"published_rows\":");
            put_u64(out, m.published_rows);
            out.put_slice(b"}\n");
        }
    }

    /// Writes the lines held. A failed write keeps what was not written
    /// (a line cut by it is completed by the next write that succeeds).
    fn write_out(&mut self) {
        while !self.out.is_empty() {
            match self.file.write(&self.out) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.advance(n);
                    self.dirty = true;
                    if self.failing {
                        self.failing = false;
                        tracing::warn!(
                            dropped = self.dropped,
                            "metering: the usage file is writable again"
                        );
                        self.dropped = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !self.failing {
                        self.failing = true;
                        tracing::error!(
                            path = %self.path.display(),
                            error = %e,
                            "metering: cannot write the usage file; holding records"
                        );
                    }
                    metrics::counter!("sluice_metering_write_errors_total").increment(1);
                    break;
                }
            }
        }
    }

    fn sync(&mut self) {
        if self.dirty {
            if let Err(e) = self.file.sync_data() {
                tracing::error!(error = %e, "metering: cannot sync the usage file");
            }
            self.dirty = false;
        }
        self.next_sync = Instant::now() + self.flush;
    }
}

/// Milliseconds as seconds with up to three decimals (`60.0`, `1.5`,
/// `0.005`).
pub fn put_ms_as_seconds(out: &mut BytesMut, ms: u64) {
    put_u64(out, ms / 1000);
    out.put_u8(b'.');
    let frac = ms % 1000;
    if frac == 0 {
        out.put_u8(b'0');
    } else {
        let digits = [frac / 100, frac / 10 % 10, frac % 10];
        let n = if digits[2] != 0 {
            3
        } else if digits[1] != 0 {
            2
        } else {
            1
        };
        for d in &digits[..n] {
            out.put_u8(b'0' + *d as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::hub::Hub;

    /// A writer for `workers` workers on a fresh file; its lines come
    /// back from `lines`.
    fn writer(workers: usize) -> (Writer, PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "sluice-metering-unit-{}-{}.jsonl",
            std::process::id(),
            fastrand::u64(..)
        ));
        let file = open(&path).unwrap();
        let usage = Arc::new(Mutex::new(Usage::new()));
        let w = Writer::new(path.clone(), file, Duration::from_secs(1), workers, usage);
        (w, path)
    }

    fn lines(w: &mut Writer, path: &Path) -> Vec<String> {
        w.write_out();
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn delta(key: &str, minute_ms: u64, stream_ms: u64, events: u64, bytes: u64) -> Msg {
        Msg::Delta {
            key: key.into(),
            minute_ms,
            stream_ms,
            events,
            bytes,
        }
    }

    #[test]
    fn a_minute_is_written_once_every_worker_is_done_with_it() {
        let (mut w, path) = writer(2);
        let m = 1_700_000_040_000;
        w.handle(delta("a", m, 60_000, 3, 300));
        w.handle(delta("a", m, 1_500, 1, 100));
        w.handle(delta("b", m, 2_000, 0, 50));
        w.handle(Msg::MinuteDone {
            worker: 0,
            minute_ms: m,
        });
        assert!(lines(&mut w, &path).is_empty(), "worker 1 is not done");
        w.handle(delta("a", m + MINUTE_MS, 5, 0, 0));
        w.handle(Msg::MinuteDone {
            worker: 1,
            minute_ms: m,
        });
        assert_eq!(
            lines(&mut w, &path),
            [
                format!(
                    r#"{{"type":"minute","key":"a","minute_ms":{m},"stream_seconds":61.5,"events":4,"bytes":400,"published_rows":0}}"#
                ),
                format!(
                    r#"{{"type":"minute","key":"b","minute_ms":{m},"stream_seconds":2.0,"events":0,"bytes":50,"published_rows":0}}"#
                ),
            ]
        );
        // The next minute waits for both workers again; a stopped worker
        // waits for nothing.
        w.handle(Msg::MinuteDone {
            worker: 0,
            minute_ms: m + MINUTE_MS,
        });
        assert_eq!(lines(&mut w, &path).len(), 2);
        w.handle(Msg::WorkerDone { worker: 1 });
        let all = lines(&mut w, &path);
        assert_eq!(all.len(), 3);
        assert!(all[2].contains(&format!(r#""minute_ms":{}"#, m + MINUTE_MS)));
        let u = w.usage.lock().unwrap()["a"];
        assert_eq!((u.stream_ms, u.events, u.bytes), (61_505, 4, 400));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn stream_records_are_written_at_once_and_open_counts_follow_them() {
        let (mut w, path) = writer(1);
        let s = Settings::from_toml("[[topics]]\npattern = \"*\"\n").unwrap();
        let hub = Hub::new(Arc::new(s));
        w.handle(Msg::Opened { key: "k\"1".into() });
        w.handle(Msg::Opened { key: "k\"1".into() });
        w.handle(Msg::Closed(Box::new(StreamRecord {
            key: "k\"1".into(),
            topic: hub.topic("odds/nba").unwrap(),
            tier: "scale".into(),
            start_ms: 1_000,
            end_ms: 3_250,
            events: 7,
            bytes: 900,
            close: "client",
        })));
        assert_eq!(
            lines(&mut w, &path),
            [
                r#"{"type":"stream","key":"k\"1","topic":"odds/nba","tier":"scale","start_ms":1000,"end_ms":3250,"seconds":2.25,"events":7,"bytes":900,"close":"client"}"#
            ]
        );
        let u = w.usage.lock().unwrap()["k\"1"];
        assert_eq!((u.streams_open, u.streams_total), (1, 2));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn published_rows_land_in_the_minute_they_arrive_in() {
        let (mut w, path) = writer(1);
        w.handle(Msg::Published {
            key: "pub".into(),
            rows: 3,
        });
        w.handle(Msg::Published {
            key: "pub".into(),
            rows: 2,
        });
        assert!(lines(&mut w, &path).is_empty());
        // A stop writes every minute held.
        assert!(w.handle(Msg::Stop));
        for (minute, keys) in std::mem::take(&mut w.pending) {
            w.write_minute(minute, &keys);
        }
        let all = lines(&mut w, &path);
        let rows: u64 = all
            .iter()
            .map(|l| {
                assert!(
                    l.starts_with(r#"{"type":"minute","key":"pub","minute_ms":"#),
                    "{l}"
                );
                assert!(
                    l.contains(r#""stream_seconds":0.0,"events":0,"bytes":0"#),
                    "{l}"
                );
                let n = l.rsplit(':').next().unwrap().trim_end_matches('}');
                n.parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(rows, 5);
        assert_eq!(w.usage.lock().unwrap()["pub"].published_rows, 5);
        let _ = std::fs::remove_file(&path);
    }

    fn secs(ms: u64) -> String {
        let mut b = BytesMut::new();
        put_ms_as_seconds(&mut b, ms);
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn seconds_keep_milliseconds() {
        assert_eq!(secs(0), "0.0");
        assert_eq!(secs(5), "0.005");
        assert_eq!(secs(50), "0.05");
        assert_eq!(secs(1500), "1.5");
        assert_eq!(secs(1234), "1.234");
        assert_eq!(secs(60_000), "60.0");
        assert_eq!(secs(u64::MAX), "18446744073709551.615");
    }

    #[test]
    fn minutes_start_on_the_minute() {
        assert_eq!(minute_of(0), 0);
        assert_eq!(minute_of(59_999), 0);
        assert_eq!(minute_of(60_000), 60_000);
        assert_eq!(minute_of(1_700_000_012_345), 1_699_999_980_000);
    }
}
