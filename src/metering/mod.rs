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
//!
//! Files: this one holds the API the server, the workers and publishes
//! call (start, send, reopen, finish, the totals) and the message types;
//! `writer.rs` the `sluice-metering` thread (aggregation, the record lines,
//! the file); `tests.rs` the writer's unit tests.

#[cfg(test)]
mod tests;
mod writer;

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{BufMut, BytesMut};

pub use crate::config::ANONYMOUS_KEY;
use crate::config::Metering;
use crate::hub::Topic;
use crate::sse::{json_str_body, put_u64};
use writer::{Writer, open};

/// Milliseconds in a minute record's minute.
pub const MINUTE_MS: u64 = 60_000;
/// Most bytes of records held while the file cannot be written; past it,
/// new records are dropped (and counted) until a write succeeds.
pub const MAX_BUFFERED_BYTES: usize = 64 << 20;

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
