//! The hub: every topic's state table, sequence ids and broadcast ring, and
//! the per-worker inboxes that tell workers which rings advanced.
//!
//! Publishing is the only writer. A publish of k rows takes its topic's lock
//! once, assigns the next sequence id, updates the state table, encodes the
//! update frame once (`sse::update_frame`) and pushes it to the ring; after
//! the lock it queues the topic in the inbox of each worker that has
//! subscribers to it and wakes that worker once (not once per connection).
//!
//! Sequence ids are `max(previous + 1, unix microseconds)`: strictly
//! increasing within a run, and across restarts as long as the wall clock
//! does not step back by more than the downtime, since a new run starts from
//! the clock. So an id from a previous run never names a different update.
//!
//! Never touches a socket; never encodes per connection.

pub mod ring;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use indexmap::IndexMap;

use crate::config::{Settings, TopicRule};
use crate::sse;
use crate::time::{unix_micros, unix_millis};
pub use ring::{Read, Ring};

/// Most topics a node keeps (a subscriber may create a topic by naming it).
pub const MAX_TOPICS: usize = 100_000;
/// Longest topic name, in bytes (SPEC §1).
pub const MAX_TOPIC_BYTES: usize = 200;

/// `[A-Za-z0-9._~:@-]` segments joined by `/`, 1–200 bytes.
pub fn topic_name_is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_BYTES
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~:@-".contains(&b))
        })
}

/// One published row: its compact JSON, and its state-table key if the topic
/// has one.
#[derive(Debug, Clone)]
pub struct Row {
    pub json: Bytes,
    pub key: Option<Box<str>>,
}

enum Table {
    Keyed(IndexMap<Box<str>, Bytes>),
    Keyless {
        rows: VecDeque<Bytes>,
        history: usize,
    },
}

impl Table {
    fn len(&self) -> usize {
        match self {
            Table::Keyed(m) => m.len(),
            Table::Keyless { rows, .. } => rows.len(),
        }
    }
}

struct TopicState {
    /// Sequence id of the last update (0: none in this run).
    seq: u64,
    table: Table,
}

/// A topic: its state table (behind the writer lock) and its ring.
pub struct Topic {
    pub name: Box<str>,
    pub event: Box<str>,
    pub key_fields: Box<[String]>,
    state: Mutex<TopicState>,
    pub ring: Ring,
    /// Bit w: worker w has subscribers to this topic.
    interest: AtomicU64,
    /// Bit w: this topic waits in worker w's inbox.
    queued: AtomicU64,
    pub subscribers: AtomicUsize,
}

/// How a subscription starts (SPEC §2 frame 2).
pub enum Start {
    /// `Last-Event-ID` was in the ring: these frames follow it.
    Replay(Vec<Bytes>),
    /// A fresh initial state frame.
    Fresh(Bytes),
}

impl Topic {
    fn new(name: &str, rule: &TopicRule, ring_slots: usize) -> Topic {
        let table = if rule.key.is_empty() {
            Table::Keyless {
                rows: VecDeque::new(),
                history: rule.history,
            }
        } else {
            Table::Keyed(IndexMap::new())
        };
        Topic {
            name: name.into(),
            event: rule.event.as_str().into(),
            key_fields: rule.key.clone().into_boxed_slice(),
            state: Mutex::new(TopicState { seq: 0, table }),
            ring: Ring::new(ring_slots),
            interest: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            subscribers: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TopicState> {
        // The state is updated in one place (`publish`) that cannot panic
        // half-way through a table update, so a poisoned lock still holds a
        // whole table.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sequence id of the last update and the number of rows in the state.
    pub fn stats(&self) -> (u64, usize) {
        let st = self.lock();
        (st.seq, st.table.len())
    }

    /// Applies one update (k rows) and returns its sequence id.
    fn publish(&self, rows: &[Row]) -> u64 {
        let mut st = self.lock();
        let seq = (st.seq + 1).max(unix_micros());
        st.seq = seq;
        match &mut st.table {
            Table::Keyed(map) => {
                for row in rows {
                    let key = row.key.clone().unwrap_or_default();
                    map.insert(key, row.json.clone());
                }
            }
            Table::Keyless {
                rows: hist,
                history,
            } => {
                for row in rows {
                    if *history > 0 {
                        if hist.len() == *history {
                            hist.pop_front();
                        }
                        hist.push_back(row.json.clone());
                    }
                }
            }
        }
        let frame = sse::update_frame(
            &self.event,
            &self.name,
            seq,
            unix_millis(),
            rows.iter().map(|r| &r.json),
        );
        self.ring.push(seq, frame);
        seq
    }

    /// The `initial_state` JSON body (for `GET /v1/snapshot`).
    pub fn snapshot_json(&self) -> Bytes {
        let st = self.lock();
        let mut out = bytes::BytesMut::with_capacity(128);
        match &st.table {
            Table::Keyed(m) => {
                sse::initial_state_json(&mut out, &self.name, unix_millis(), m.values())
            }
            Table::Keyless { rows, .. } => {
                sse::initial_state_json(&mut out, &self.name, unix_millis(), rows.iter())
            }
        }
        out.freeze()
    }

    /// An initial state frame and the ring position it is consistent with:
    /// frames at positions ≥ the returned one come after it.
    pub fn initial_state(&self) -> (Bytes, u64) {
        let st = self.lock();
        (self.initial_state_locked(&st), self.ring.tail())
    }

    fn initial_state_locked(&self, st: &TopicState) -> Bytes {
        match &st.table {
            Table::Keyed(m) => {
                sse::initial_state_frame(&self.name, st.seq, unix_millis(), m.values())
            }
            Table::Keyless { rows, .. } => {
                sse::initial_state_frame(&self.name, st.seq, unix_millis(), rows.iter())
            }
        }
    }

    /// Starts a subscription: a replay after `last_id` when it is still in
    /// the ring, else an initial state; and the ring position live frames
    /// continue from. Holds the writer lock so that nothing is missed or
    /// sent twice between the two.
    pub fn start(&self, last_id: Option<u64>) -> (Start, u64) {
        let st = self.lock();
        let tail = self.ring.tail();
        if let Some(pos) = last_id.and_then(|id| self.ring.find(id)) {
            let mut frames = Vec::with_capacity((tail - pos - 1) as usize);
            let mut whole = true;
            for p in pos + 1..tail {
                match self.ring.read(p) {
                    Read::Frame(_, f) => frames.push(f),
                    // cannot happen while we hold the writer lock, but if it
                    // did, an initial state is the safe answer
                    _ => whole = false,
                }
            }
            if whole {
                return (Start::Replay(frames), tail);
            }
        }
        (Start::Fresh(self.initial_state_locked(&st)), tail)
    }

    /// Marks worker `w` as interested. Callers then read the ring under
    /// `start`, whose lock orders this before any later publish's check.
    pub fn add_interest(&self, w: usize) {
        // Relaxed suffices: the topic lock taken next (in `start`) is the
        // synchronisation point with publishers, who read `interest` after
        // releasing the same lock.
        self.interest.fetch_or(1 << w, Ordering::Relaxed);
    }

    pub fn remove_interest(&self, w: usize) {
        self.interest.fetch_and(!(1 << w), Ordering::Relaxed);
    }

    /// Called by worker `w` as it takes this topic from its inbox, before it
    /// reads the ring, so that a publish after the read queues it again.
    pub fn dequeued(&self, w: usize) {
        // AcqRel pairs with the fetch_or in `Hub::notify`.
        self.queued.fetch_and(!(1 << w), Ordering::AcqRel);
    }
}

/// One worker's inbox: topics whose rings advanced, and a waker.
pub struct Inbox {
    topics: SegQueue<Arc<Topic>>,
    flag: AtomicBool,
    waker: Mutex<Option<Waker>>,
    shutdown: AtomicBool,
}

impl Inbox {
    fn new() -> Inbox {
        Inbox {
            topics: SegQueue::new(),
            flag: AtomicBool::new(false),
            waker: Mutex::new(None),
            shutdown: AtomicBool::new(false),
        }
    }

    fn notify(&self) {
        // Release pairs with the Acquire swap in `poll_ready`: the worker
        // that sees the flag also sees the queued topics.
        if !self.flag.swap(true, Ordering::Release)
            && let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            w.wake();
        }
    }

    /// Ready when something was queued or shutdown was asked since the last
    /// ready poll.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        if self.flag.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    pub fn pop(&self) -> Option<Arc<Topic>> {
        self.topics.pop()
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

/// Why a topic name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Not a valid topic name (400).
    Invalid,
    /// Matches no `[[topics]]` pattern (404).
    NotFound,
    /// The node holds `MAX_TOPICS` topics (503).
    TooMany,
}

/// All topics of the node, and the workers' inboxes.
pub struct Hub {
    settings: Arc<Settings>,
    topics: RwLock<HashMap<Box<str>, Arc<Topic>>>,
    inboxes: Box<[Inbox]>,
    draining: AtomicBool,
    /// Open client connections on this node (all workers).
    pub connections: AtomicUsize,
    /// Open SSE streams on this node (all workers).
    pub streams: AtomicUsize,
}

impl Hub {
    pub fn new(settings: Arc<Settings>) -> Hub {
        let inboxes = (0..settings.workers).map(|_| Inbox::new()).collect();
        Hub {
            settings,
            topics: RwLock::new(HashMap::new()),
            inboxes,
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
        }
    }

    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    pub fn inbox(&self, w: usize) -> &Inbox {
        &self.inboxes[w]
    }

    /// The topic of that name, made on first use if a `[[topics]]` pattern
    /// matches it.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        if let Some(t) = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(t.clone());
        }
        if !topic_name_is_valid(name) {
            return Err(TopicError::Invalid);
        }
        let rule = self.settings.topic_rule(name).ok_or(TopicError::NotFound)?;
        let mut map = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = map.get(name) {
            return Ok(t.clone());
        }
        if map.len() >= MAX_TOPICS {
            return Err(TopicError::TooMany);
        }
        let t = Arc::new(Topic::new(name, rule, self.settings.replay));
        map.insert(name.into(), t.clone());
        Ok(t)
    }

    /// Every topic, sorted by name (for `GET /v1/topics`).
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Publishes one update of `rows` (k ≥ 1) and returns its sequence id.
    pub fn publish(&self, topic: &Arc<Topic>, rows: &[Row]) -> u64 {
        let seq = topic.publish(rows);
        self.notify(topic);
        seq
    }

    fn notify(&self, topic: &Arc<Topic>) {
        // Relaxed: `publish` released the topic lock just before, after any
        // `add_interest` that preceded a `start` (see `add_interest`).
        let mut mask = topic.interest.load(Ordering::Relaxed);
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let bit = 1u64 << w;
            // AcqRel pairs with `Topic::dequeued`.
            if topic.queued.fetch_or(bit, Ordering::AcqRel) & bit == 0 {
                self.inboxes[w].topics.push(topic.clone());
            }
            self.inboxes[w].notify();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts draining: `/healthz` answers 503 and every worker tells its
    /// streams to reconnect.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        for inbox in self.inboxes.iter() {
            inbox.shutdown.store(true, Ordering::Release);
            inbox.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        let s = Settings::from_toml(
            "[server]\nworkers = 1\nreplay = 16\n[[topics]]\npattern = \"k/*\"\nkey = [\"id\"]\n[[topics]]\npattern = \"l/*\"\nhistory = 2\n",
        )
        .unwrap();
        Hub::new(Arc::new(s))
    }

    fn row(json: &str, key: Option<&str>) -> Row {
        Row {
            json: Bytes::copy_from_slice(json.as_bytes()),
            key: key.map(Into::into),
        }
    }

    #[test]
    fn names() {
        assert!(topic_name_is_valid("odds/basketball_nba"));
        assert!(topic_name_is_valid("events/0xabc:1@x~y.z-w"));
        assert!(!topic_name_is_valid(""));
        assert!(!topic_name_is_valid("a/"));
        assert!(!topic_name_is_valid("a b"));
        assert!(!topic_name_is_valid(&"a".repeat(201)));
        let h = hub();
        assert_eq!(h.topic("x/y").err(), Some(TopicError::NotFound));
        assert_eq!(h.topic("k/ a").err(), Some(TopicError::Invalid));
    }

    #[test]
    fn keyed_state_keeps_the_latest_row_per_key() {
        let h = hub();
        let t = h.topic("k/1").unwrap();
        let s1 = h.publish(
            &t,
            &[
                row(r#"{"id":1,"v":1}"#, Some("1")),
                row(r#"{"id":2,"v":1}"#, Some("2")),
            ],
        );
        let s2 = h.publish(&t, &[row(r#"{"id":1,"v":2}"#, Some("1"))]);
        assert!(s2 > s1);
        let body = t.snapshot_json();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains(r#""count":2"#), "{text}");
        assert!(
            text.ends_with(r#""data":[{"id":1,"v":2},{"id":2,"v":1}]}"#),
            "{text}"
        );
    }

    #[test]
    fn keyless_state_is_the_last_history_rows() {
        let h = hub();
        let t = h.topic("l/1").unwrap();
        for i in 0..3 {
            h.publish(&t, &[row(&format!("{{\"i\":{i}}}"), None)]);
        }
        let text = String::from_utf8(t.snapshot_json().to_vec()).unwrap();
        assert!(text.ends_with(r#""data":[{"i":1},{"i":2}]}"#), "{text}");
    }

    #[test]
    fn start_replays_after_a_known_id_and_is_fresh_otherwise() {
        let h = hub();
        let t = h.topic("k/2").unwrap();
        let ids: Vec<u64> = (0..3)
            .map(|i| h.publish(&t, &[row(&format!("{{\"id\":{i}}}"), Some("a"))]))
            .collect();
        match t.start(Some(ids[0])) {
            (Start::Replay(frames), tail) => {
                assert_eq!(frames.len(), 2);
                assert_eq!(tail, 3);
                assert!(
                    frames[0].starts_with(format!("event: update\nid: {}\n", ids[1]).as_bytes())
                );
            }
            _ => panic!("expected a replay"),
        }
        assert!(matches!(t.start(Some(ids[2])), (Start::Replay(f), 3) if f.is_empty()));
        assert!(matches!(t.start(Some(12345)), (Start::Fresh(_), 3)));
        assert!(matches!(t.start(None), (Start::Fresh(_), 3)));
    }
}
