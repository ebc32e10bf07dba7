//! A worker's side of usage metering (SPEC §9, [`crate::metering`]): each
//! metered stream's identity and what was folded of it, each key's account
//! on this worker, and the folds that move a stream's counts into its key's
//! account and on to the metering thread.
//!
//! Not per event: a stream counts what it writes in its `Subscriber` (two
//! adds per write, in `stream::run`); this module runs when a stream starts
//! and ends, and once a second (the wheel's tick) over the worker's open
//! metered streams. Time here is unix milliseconds, as in the records.
//!
//! Minutes: a stream's open time is cut at every minute boundary, so each
//! minute gets exactly the milliseconds the stream was open in it; events
//! and bytes go to the minute of the fold that found them (at most a second
//! later than written). After folding every stream up to a minute's end
//! the worker sends that minute's deltas and says it is done with it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use super::subscriber::Subscriber;
use crate::hub::Topic;
use crate::metering::{MINUTE_MS, Msg, StreamRecord, minute_of};
use crate::server::access::CloseReason;
use crate::time::unix_millis;

/// A worker more than this many minutes behind its clock (a clock step)
/// jumps to the current minute instead of walking every one.
const MAX_MINUTES_BEHIND: u32 = 60;

/// A metered stream: who its usage is for, and what of it was folded.
pub struct StreamMeter {
    key: Rc<KeyAccount>,
    topic: Arc<Topic>,
    tier: Arc<str>,
    start_ms: u64,
    /// The response head's length: the socket's bytes minus it are the
    /// stream's bytes.
    head_len: u64,
    /// Folded so far: open time up to this instant, events, bytes.
    folded_ms: Cell<u64>,
    folded_events: Cell<u64>,
    folded_bytes: Cell<u64>,
    /// Its stream record is sent (a stream ends once).
    recorded: Cell<bool>,
}

/// One key's usage on this worker since the last fold was sent.
struct KeyAccount {
    name: Arc<str>,
    stream_ms: Cell<u64>,
    events: Cell<u64>,
    bytes: Cell<u64>,
}

/// A worker's metering: its accounts by key name, its metered streams,
/// the minute in progress.
pub struct WorkerMeter {
    worker: usize,
    tx: Sender<Msg>,
    keys: RefCell<HashMap<Arc<str>, Rc<KeyAccount>>>,
    tiers: RefCell<Vec<Arc<str>>>,
    /// Streams started here and not yet recorded (recorded ones are
    /// dropped at the next fold).
    streams: RefCell<Vec<Rc<Subscriber>>>,
    /// Start of the minute in progress (unix ms).
    minute: Cell<u64>,
}

impl WorkerMeter {
    pub fn new(worker: usize, tx: Sender<Msg>) -> WorkerMeter {
        WorkerMeter {
            worker,
            tx,
            keys: RefCell::new(HashMap::new()),
            tiers: RefCell::new(Vec::new()),
            streams: RefCell::new(Vec::new()),
            minute: Cell::new(minute_of(unix_millis())),
        }
    }

    /// The meter of a stream starting now, of `key` (a key's name, or
    /// [`crate::metering::ANONYMOUS_KEY`]) on `topic` in `tier`, whose
    /// response head is `head_len` bytes.
    pub fn start(&self, key: &str, topic: &Arc<Topic>, tier: &str, head_len: usize) -> StreamMeter {
        let account = self
            .keys
            .borrow_mut()
            .entry(key.into())
            .or_insert_with_key(|name| {
                Rc::new(KeyAccount {
                    name: name.clone(),
                    stream_ms: Cell::new(0),
                    events: Cell::new(0),
                    bytes: Cell::new(0),
                })
            })
            .clone();
        let tier = {
            let mut tiers = self.tiers.borrow_mut();
            match tiers.iter().find(|t| ***t == *tier) {
                Some(t) => t.clone(),
                None => {
                    let t: Arc<str> = tier.into();
                    tiers.push(t.clone());
                    t
                }
            }
        };
        let _ = self.tx.send(Msg::Opened {
            key: account.name.clone(),
        });
        let now = unix_millis();
        StreamMeter {
            key: account,
            topic: topic.clone(),
            tier,
            start_ms: now,
            head_len: head_len as u64,
            folded_ms: Cell::new(now),
            folded_events: Cell::new(0),
            folded_bytes: Cell::new(0),
            recorded: Cell::new(false),
        }
    }

    /// Follows a metered stream until it is recorded.
    pub fn track(&self, sub: &Rc<Subscriber>) {
        self.streams.borrow_mut().push(sub.clone());
    }

    /// Once a second: every open stream folded up to now (and up to each
    /// minute boundary passed), the deltas sent.
    pub fn tick(&self) {
        let now = unix_millis();
        self.roll(now);
        self.fold_all(now);
        self.send_deltas();
    }

    /// A stream ended (its task is done): folds it and sends its record.
    pub fn stream_ended(&self, sub: &Subscriber) {
        let now = unix_millis();
        self.roll(now);
        let reason = sub.ended_because();
        self.record(sub, now, reason);
    }

    /// The worker stops: records every stream still open (close
    /// `shutdown`, or the reason its closing frame gave), sends the last
    /// deltas and says it is done.
    pub fn finish(&self) {
        let now = unix_millis();
        self.roll(now);
        let streams = std::mem::take(&mut *self.streams.borrow_mut());
        for sub in &streams {
            self.record(sub, now, sub.ended_at_stop());
        }
        self.send_deltas();
        let _ = self.tx.send(Msg::WorkerDone {
            worker: self.worker,
        });
    }

    /// Walks the minutes that ended before `now`: folds every open stream
    /// up to each one's end, sends its deltas and says it is done.
    fn roll(&self, now: u64) {
        let mut behind = 0;
        loop {
            let minute = self.minute.get();
            let end = minute.saturating_add(MINUTE_MS);
            if now < end {
                return;
            }
            behind += 1;
            let next = if behind > MAX_MINUTES_BEHIND {
                minute_of(now)
            } else {
                end
            };
            self.fold_all(next);
            self.send_deltas();
            let _ = self.tx.send(Msg::MinuteDone {
                worker: self.worker,
                minute_ms: minute,
            });
            self.minute.set(next);
        }
    }

    /// Folds every stream not yet recorded up to `upto`, and forgets the
    /// recorded ones.
    fn fold_all(&self, upto: u64) {
        self.streams.borrow_mut().retain(|sub| {
            let Some(m) = &sub.meter else { return false };
            if m.recorded.get() {
                return false;
            }
            // A stream that started after `upto` (a minute's end the worker
            // is late with) has nothing in the minutes before it.
            if m.start_ms < upto {
                fold(sub, m, upto);
            }
            true
        });
    }

    /// Folds a stream for the last time and sends its key's delta (so
    /// that the totals hold the stream once it counts as closed), then its
    /// record.
    fn record(&self, sub: &Subscriber, now: u64, reason: CloseReason) {
        let Some(m) = &sub.meter else { return };
        if m.recorded.replace(true) {
            return;
        }
        fold(sub, m, now);
        self.send_delta(&m.key);
        let _ = self.tx.send(Msg::Closed(Box::new(StreamRecord {
            key: m.key.name.clone(),
            topic: m.topic.clone(),
            tier: m.tier.clone(),
            start_ms: m.start_ms,
            end_ms: now.max(m.start_ms),
            events: m.folded_events.get(),
            bytes: m.folded_bytes.get(),
            close: reason.as_str(),
        })));
    }

    /// Sends each key's usage since its last delta.
    fn send_deltas(&self) {
        for a in self.keys.borrow().values() {
            self.send_delta(a);
        }
    }

    /// Sends a key's usage since its last delta, in the minute in progress.
    fn send_delta(&self, a: &KeyAccount) {
        let (ms, events, bytes) = (a.stream_ms.take(), a.events.take(), a.bytes.take());
        if ms != 0 || events != 0 || bytes != 0 {
            let _ = self.tx.send(Msg::Delta {
                key: a.name.clone(),
                minute_ms: self.minute.get(),
                stream_ms: ms,
                events,
                bytes,
            });
        }
    }
}

/// Moves what a stream wrote since its last fold, and its open time up to
/// `upto`, into its key's account.
fn fold(sub: &Subscriber, m: &StreamMeter, upto: u64) {
    let events = sub.sent_events.get();
    let bytes = sub.bytes.get().saturating_sub(m.head_len);
    let a = &m.key;
    let from = m.folded_ms.get();
    if upto > from {
        a.stream_ms.set(a.stream_ms.get() + (upto - from));
        m.folded_ms.set(upto);
    }
    a.events
        .set(a.events.get() + events.saturating_sub(m.folded_events.get()));
    a.bytes
        .set(a.bytes.get() + bytes.saturating_sub(m.folded_bytes.get()));
    m.folded_events.set(events);
    m.folded_bytes.set(bytes);
}
