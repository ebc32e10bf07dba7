//! The `sluice-metering` thread: it owns the usage file and the totals.
//! It folds the workers' messages into per-key minutes, turns closed
//! streams and finished minutes into JSON lines (SPEC §9), writes them in
//! bursts, syncs every `flush_s`, and reopens the file on SIGHUP.
//!
//! Cold, on its own thread. It must never block a worker or a publish: they
//! only send it messages; a file that cannot be written costs held (then
//! dropped, counted) records, never a wait on the sending side.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};

use super::{
    MAX_BUFFERED_BYTES, MINUTE_MS, Msg, StreamRecord, Usage, minute_of, put_ms_as_seconds,
};
use crate::sse::{json_str_body, put_u64};
use crate::time::unix_millis;

/// Most messages handled before what they produced is written out.
const BURST: usize = 4096;

pub(super) fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A key's usage in one minute.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Minute {
    stream_ms: u64,
    events: u64,
    bytes: u64,
    published_rows: u64,
}

/// The metering thread's state.
pub(super) struct Writer {
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
    pub(super) pending: BTreeMap<u64, BTreeMap<Arc<str>, Minute>>,
    /// Per worker: the last minute it is done with (`u64::MAX`: stopped).
    done: Vec<Option<u64>>,
    /// Minutes before this one are written.
    next_minute: u64,
    pub(super) usage: Arc<Mutex<Usage>>,
}

impl Writer {
    pub(super) fn new(
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

    pub(super) fn run(mut self, rx: Receiver<Msg>) {
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
    pub(super) fn handle(&mut self, msg: Msg) -> bool {
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

    pub(super) fn write_minute(&mut self, minute: u64, keys: &BTreeMap<Arc<str>, Minute>) {
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
    pub(super) fn write_out(&mut self) {
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
