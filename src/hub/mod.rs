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
//! With `[cluster]`, ids come from the JetStream log instead
//! ([`Hub::publish_with_id`], `cluster`), the same on every node.
//!
//! Memory: a row is one allocation of about its JSON's size ([`row`]); a
//! keyed state table keeps its rows' encoded bytes in one arena and adds
//! about 12 bytes per key (`table`: 1M rows of 19 bytes take 34 bytes each);
//! a ring keeps at most
//! [`ring::MAX_RING_BYTES`]; an initial state is encoded once per cadence and
//! filter while the table is unchanged and shared by every stream and
//! snapshot ([`MAX_SHARED_STATES`]); [`Hub::sweep`] frees unused encoded
//! states and topics idle for `topic_idle_s`, and readers make at most
//! `max_topics_per_key` topics that hold nothing ([`Maker`]).
//!
//! Never touches a socket; never encodes per connection.

pub mod coalesce;
pub mod filter;
pub mod ring;
pub mod row;
pub mod row_key;
mod table;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use crossbeam_queue::SegQueue;

pub use crate::config::values::{MAX_TOPIC_BYTES, topic_name_is_valid};
use crate::config::{MAX_CADENCES, Settings, TopicRule};
use crate::sse;
use crate::time::{unix_micros, unix_millis};
pub use filter::Filter;
pub use ring::{Entry, Read, Ring};
pub use row::{Row, RowBuilder, RowRef};
use table::KeyedTable;

/// Most topics a node keeps: the last resort. Before it, topics that hold
/// nothing are freed after `topic_idle_s`, and a key that only reads may
/// have made at most `max_topics_per_key` of them.
pub const MAX_TOPICS: usize = 100_000;

/// `Topic::maker` when no reader's count holds the topic.
const NO_MAKER: usize = usize::MAX;

/// Who names a topic that may not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maker {
    /// A publish or a source: only [`MAX_TOPICS`] limits the topics it makes.
    Publisher,
    /// A read (a stream, a snapshot, a token's scope) by API key `Some(k)`
    /// (index into `Settings::keys`) or anonymous (`None`, one count for all
    /// anonymous clients): a topic it makes counts against
    /// `max_topics_per_key` until something is published to it or it is
    /// freed.
    Reader(Option<usize>),
}

/// The rows of one frame, shared by the ring, a keyless state table and
/// every filtered group that re-joins them (a keyed table keeps its own
/// copy in its arena).
pub type Rows = Arc<[Row]>;

/// Most bytes of rows a keyless topic gathers for one coalesced frame; past
/// it the frame goes out at once rather than waiting for the tick, so that no
/// single frame outgrows a connection's queue.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;

enum Table {
    /// The latest row per key, in the order keys first appeared.
    Keyed(KeyedTable),
    Keyless {
        rows: VecDeque<Row>,
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

/// What one cadence (a `coalesce_ms` value) keeps of a topic, under the
/// topic lock. Only an active cadence builds frames: the raw one always is,
/// a coalesced one from its first subscriber on.
#[derive(Default)]
struct Cadence {
    active: bool,
    /// Its `coalesce_ms` (0: raw), set when it becomes active.
    ms: u32,
    /// Sequence id the cadence's frames have reached: its last frame's id,
    /// or the topic's id when the cadence became active.
    emitted: u64,
    /// Keyed topics: state-table indices changed since the last frame, in
    /// the order they first changed.
    dirty: Vec<usize>,
    /// Keyed topics: bit i set when index i is in `dirty`.
    dirty_bits: Vec<u64>,
    /// Keyless topics: rows published since the last frame, in order.
    pending: Vec<Row>,
    pending_bytes: usize,
    /// In the hub's flush queue for this cadence.
    queued: bool,
}

impl Cadence {
    fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.pending.is_empty()
    }

    /// Queues state-table index `i` for the next frame, once.
    fn mark_dirty(&mut self, i: usize) {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.dirty_bits.len() <= word {
            self.dirty_bits.resize(word + 1, 0);
        }
        if self.dirty_bits[word] & bit == 0 {
            self.dirty_bits[word] |= bit;
            self.dirty.push(i);
        }
    }
}

/// Most encoded initial states a topic keeps for reuse (one per cadence and
/// filter asked for); past it the oldest goes.
pub const MAX_SHARED_STATES: usize = 8;

/// An encoded initial state of the current state table, shared by every
/// stream that starts (and every snapshot taken) before the table changes:
/// clients that do not read it hold one buffer between them, not a copy each.
struct SharedState {
    /// The cadence whose `id` and pending rows the frame reflects; `None`:
    /// built for a snapshot (every row, `id` the topic's).
    cadence: Option<usize>,
    filter: Option<Filter>,
    frame: Bytes,
    /// The JSON inside `frame` (the snapshot body).
    body: std::ops::Range<usize>,
}

struct TopicState {
    /// Sequence id of the last update (0: none in this run).
    seq: u64,
    table: Table,
    /// By cadence index, up to the highest one ever active on the topic.
    cadences: Vec<Cadence>,
    /// Encoded initial states of the table as it is now: emptied whenever
    /// the table, a cadence's id or its pending rows change.
    shared: Vec<SharedState>,
}

/// A topic: its state table (behind the writer lock) and one ring per
/// active cadence.
pub struct Topic {
    pub name: Box<str>,
    pub event: Box<str>,
    pub key_fields: Box<[String]>,
    /// The row fields filters look at (`Row::fields` follows this order).
    pub fields: Box<[String]>,
    /// Query parameter → index into `fields`.
    pub filter_params: Box<[(Box<str>, usize)]>,
    state: Mutex<TopicState>,
    /// One ring per cadence, made when the cadence becomes active. Every
    /// cadence index the node may ever use has a slot (a reload can add
    /// cadences to a topic made before it); a slot is 16 bytes until used.
    rings: Box<[OnceLock<Box<Ring>>]>,
    /// The node's cadence intervals, by index.
    cadence_ms: Arc<CadenceTable>,
    ring_slots: usize,
    /// Per cadence, bit w: worker w has subscribers on that cadence (so a
    /// worker with only coalesced subscribers is not woken per publish).
    interest: Box<[AtomicU64]>,
    /// Bit w: this topic waits in worker w's inbox.
    queued: AtomicU64,
    pub subscribers: AtomicUsize,
    /// The reader count (index into `Hub::made_empty`) this topic holds one
    /// of while it holds nothing; `NO_MAKER` otherwise.
    maker: AtomicUsize,
    /// Unix ms since which the sweep has seen the topic unused (made, or
    /// last seen with subscribers or held by a stream or a worker).
    idle_since_ms: AtomicU64,
}

/// How a subscription starts (SPEC §2 frame 2).
pub enum Start {
    /// `Last-Event-ID` was in the ring: these frames follow it.
    Replay(Vec<Bytes>),
    /// A fresh initial state frame.
    Fresh(Bytes),
}

/// The node's cadences (`coalesce_ms` values), by index: append-only, so
/// that an index (in rings, groups, bit masks) names the same interval for
/// the life of the process. The configuration at start fills the first
/// ones; a reload appends the intervals it adds (`Settings::extend_cadences`).
pub struct CadenceTable {
    ms: [OnceLock<u32>; MAX_CADENCES],
}

impl CadenceTable {
    fn new(cadences: &[u32]) -> CadenceTable {
        let t = CadenceTable {
            ms: std::array::from_fn(|_| OnceLock::new()),
        };
        t.extend(cadences);
        t
    }

    /// Records the intervals of `cadences` (a list that extends this one).
    fn extend(&self, cadences: &[u32]) {
        for (slot, &ms) in self.ms.iter().zip(cadences) {
            let set = *slot.get_or_init(|| ms);
            debug_assert_eq!(set, ms, "cadence indices are stable");
        }
    }

    /// The interval of cadence `c` (it is in use, so it is set).
    fn get(&self, c: usize) -> u32 {
        self.ms[c].get().copied().unwrap_or(0)
    }

    /// The intervals set so far, by index.
    pub fn to_vec(&self) -> Vec<u32> {
        self.ms.iter().map_while(|s| s.get().copied()).collect()
    }
}

impl Topic {
    fn new(
        name: &str,
        rule: &TopicRule,
        settings: &Settings,
        cadences: &Arc<CadenceTable>,
    ) -> Topic {
        let table = if rule.key.is_empty() {
            Table::Keyless {
                rows: VecDeque::new(),
                history: rule.history,
            }
        } else {
            Table::Keyed(KeyedTable::default())
        };
        let topic = Topic {
            name: name.into(),
            event: rule.event.as_str().into(),
            key_fields: rule.key.clone().into_boxed_slice(),
            fields: rule.fields.clone().into_boxed_slice(),
            filter_params: rule
                .filters
                .iter()
                .map(|(p, i)| (p.as_str().into(), *i))
                .collect(),
            state: Mutex::new(TopicState {
                seq: 0,
                table,
                cadences: Vec::new(),
                shared: Vec::new(),
            }),
            rings: (0..MAX_CADENCES).map(|_| OnceLock::new()).collect(),
            cadence_ms: cadences.clone(),
            ring_slots: settings.replay,
            interest: (0..MAX_CADENCES).map(|_| AtomicU64::new(0)).collect(),
            queued: AtomicU64::new(0),
            subscribers: AtomicUsize::new(0),
            maker: AtomicUsize::new(NO_MAKER),
            idle_since_ms: AtomicU64::new(unix_millis()),
        };
        // The raw cadence is always on, so that `Last-Event-ID` resumes from
        // any published id (costs one encode per publish); a coalesced
        // cadence starts with its first subscriber.
        if let Some(raw) = settings.cadences.iter().position(|&ms| ms == 0) {
            topic.activate(&mut topic.lock(), raw);
        }
        topic
    }

    fn lock(&self) -> MutexGuard<'_, TopicState> {
        // The state is updated in places (`publish`, `flush`) that cannot
        // panic half-way through a table update, so a poisoned lock still
        // holds a whole table.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ring of cadence `c`, if the cadence is active.
    pub fn ring(&self, c: usize) -> Option<&Ring> {
        self.rings.get(c)?.get().map(|r| &**r)
    }

    /// True when `rule` gives this topic the shape it has: event name, row
    /// key, history and filter fields and parameters (a reload that changes
    /// them leaves existing topics as they are).
    pub fn follows(&self, rule: &TopicRule) -> bool {
        let history = match &self.lock().table {
            Table::Keyless { history, .. } => *history,
            Table::Keyed(_) => rule.history,
        };
        *self.event == *rule.event
            && *self.key_fields == *rule.key
            && history == rule.history
            && *self.fields == *rule.fields
            && self.filter_params.len() == rule.filters.len()
            && self
                .filter_params
                .iter()
                .zip(&rule.filters)
                .all(|((p, i), (q, j))| **p == **q && i == j)
    }

    /// Sequence id of the last update and the number of rows in the state.
    pub fn stats(&self) -> (u64, usize) {
        let st = self.lock();
        (st.seq, st.table.len())
    }

    /// Applies one update (k rows) with the given sequence id (the
    /// cluster's), or the next one from the clock. Returns its sequence id,
    /// the cadences whose rings got a frame (raw, or a keyless frame flushed
    /// early), and the cadences that became dirty and must be queued for
    /// their next tick.
    fn publish(&self, rows: Vec<Row>, id: Option<u64>) -> Result<(u64, u32, u32), StateFull> {
        let mut st = self.lock();
        let st = &mut *st;
        if let Table::Keyed(set) = &mut st.table {
            // Room for every row first, so a publish is applied whole or
            // not at all.
            let bytes = rows
                .iter()
                .map(|r| r.view().encoded().len() + 10)
                .fold(0usize, usize::saturating_add);
            if !set.reserve(bytes) {
                return Err(StateFull);
            }
        }
        let rows: Rows = rows.into();
        // A given id is above the last one (the cluster log's order); the
        // max only keeps the ring's order should a caller break that.
        let seq = (st.seq + 1).max(id.unwrap_or_else(unix_micros));
        st.seq = seq;
        st.shared.clear();
        // Coalesced cadences that gather this update.
        let mut gather = 0u32;
        for (c, cad) in st.cadences.iter().enumerate() {
            if cad.active && cad.ms != 0 {
                gather |= 1 << c;
            }
        }
        match &mut st.table {
            Table::Keyed(set) => {
                for row in rows.iter() {
                    // Replaces the row of an equal key in place (its index,
                    // so its place in the state order, stays).
                    let i = set.upsert(row.view());
                    let mut g = gather;
                    while g != 0 {
                        let c = g.trailing_zeros() as usize;
                        g &= g - 1;
                        st.cadences[c].mark_dirty(i);
                    }
                }
            }
            Table::Keyless {
                rows: hist,
                history,
            } => {
                for row in rows.iter() {
                    if *history > 0 {
                        if hist.len() == *history {
                            hist.pop_front();
                        }
                        hist.push_back(row.clone());
                    }
                }
                let mut g = gather;
                while g != 0 {
                    let c = g.trailing_zeros() as usize;
                    g &= g - 1;
                    let cad = &mut st.cadences[c];
                    cad.pending.extend(rows.iter().cloned());
                    cad.pending_bytes += rows.iter().map(|r| r.json().len()).sum::<usize>();
                }
            }
        }
        let mut pushed = 0u32;
        let mut newly_dirty = 0u32;
        let now_ms = unix_millis();
        for c in 0..st.cadences.len() {
            if !st.cadences[c].active {
                continue;
            }
            if st.cadences[c].ms == 0 {
                self.push_frame(st, c, seq, now_ms, rows.clone());
                pushed |= 1 << c;
            } else if st.cadences[c].pending_bytes > MAX_PENDING_BYTES {
                if self.flush_locked(st, c, now_ms) {
                    pushed |= 1 << c;
                }
            } else if st.cadences[c].is_dirty() && !st.cadences[c].queued {
                st.cadences[c].queued = true;
                newly_dirty |= 1 << c;
            }
        }
        Ok((seq, pushed, newly_dirty))
    }

    /// Encodes one frame of `rows` (once, for every subscriber of cadence
    /// `c`) and appends it to the cadence's ring.
    fn push_frame(&self, st: &mut TopicState, c: usize, seq: u64, ts_ms: u64, rows: Rows) {
        let frame = sse::update_frame(
            &self.event,
            &self.name,
            seq,
            ts_ms,
            rows.iter().map(Row::json),
        );
        let ring = self.rings[c].get().expect("an active cadence has a ring");
        ring.push(Entry {
            seq,
            ts_ms,
            frame,
            rows,
        });
        st.cadences[c].emitted = seq;
        st.shared.clear();
    }

    /// Builds cadence `c`'s coalesced frame from what changed since its last
    /// frame: the latest version of each changed key (keyless: every row, in
    /// order), with the topic's current id. False when nothing changed.
    fn flush_locked(&self, st: &mut TopicState, c: usize, now_ms: u64) -> bool {
        let rows: Rows = match &mut st.table {
            Table::Keyed(set) => {
                let cad = &mut st.cadences[c];
                let bits = &mut cad.dirty_bits;
                cad.dirty
                    .drain(..)
                    .map(|i| {
                        bits[i / 64] &= !(1u64 << (i % 64));
                        Row::from_ref(set.get(i))
                    })
                    .collect()
            }
            Table::Keyless { .. } => {
                let cad = &mut st.cadences[c];
                cad.pending_bytes = 0;
                cad.pending.drain(..).collect()
            }
        };
        if rows.is_empty() {
            return false;
        }
        self.push_frame(st, c, st.seq, now_ms, rows);
        true
    }

    /// The coalescer's tick for cadence `c`: true when a frame was pushed.
    fn flush(&self, c: usize, now_ms: u64) -> bool {
        let mut st = self.lock();
        st.cadences[c].queued = false;
        self.flush_locked(&mut st, c, now_ms)
    }

    /// Makes cadence `c` active (its ring, and frames from now on).
    fn activate<'a>(&'a self, st: &mut TopicState, c: usize) -> &'a Ring {
        if st.cadences.len() <= c {
            st.cadences.resize_with(c + 1, Cadence::default);
        }
        let cad = &mut st.cadences[c];
        if !cad.active {
            cad.active = true;
            cad.ms = self.cadence_ms.get(c);
            cad.emitted = st.seq;
            st.shared.clear();
        }
        self.rings[c].get_or_init(|| Box::new(Ring::new(self.ring_slots)))
    }

    /// The rows of the state table that `filter` lets through, as cadence `c`
    /// has reached them: a keyless topic leaves out the rows still pending
    /// for `c`'s next frame (they come with it).
    fn state_rows<'a>(
        &self,
        st: &'a TopicState,
        c: Option<usize>,
        filter: Option<&'a Filter>,
    ) -> Vec<&'a [u8]> {
        match &st.table {
            Table::Keyed(set) => set
                .iter()
                .filter(|r| filter::passes(filter, *r))
                .map(RowRef::json)
                .collect(),
            Table::Keyless { rows, .. } => {
                let pending = c.map_or(0, |c| st.cadences[c].pending.len());
                let upto = rows.len() - pending.min(rows.len());
                rows.range(..upto)
                    .filter(|r| filter::passes(filter, *r))
                    .map(Row::json)
                    .collect()
            }
        }
    }

    /// The last id and the state table's rows (compact JSON, table order),
    /// read under one lock (`cluster::snapshot`).
    pub fn table(&self) -> (u64, Vec<Bytes>) {
        let st = self.lock();
        let rows = self
            .state_rows(&st, None, None)
            .into_iter()
            .map(Bytes::copy_from_slice)
            .collect();
        (st.seq, rows)
    }

    /// The `initial_state` JSON body (for `GET /v1/snapshot`): a slice of a
    /// shared initial state frame showing every row, built (for the raw
    /// cadence when there is one, so raw streams share it) if none is.
    pub fn snapshot_json(&self, filter: Option<&Filter>) -> Bytes {
        let mut st = self.lock();
        let st = &mut *st;
        let keyed = matches!(st.table, Table::Keyed(_));
        let whole = |c: Option<usize>| keyed || c.is_none_or(|c| st.cadences[c].pending.is_empty());
        if let Some(s) = st
            .shared
            .iter()
            .find(|s| s.filter.as_ref() == filter && whole(s.cadence))
        {
            return s.frame.slice(s.body.clone());
        }
        let raw = self
            .cadence_ms
            .to_vec()
            .iter()
            .position(|&ms| ms == 0)
            .filter(|&c| st.cadences.get(c).is_some_and(|cad| cad.active));
        let s = self.shared_state(st, raw, filter);
        s.frame.slice(s.body.clone())
    }

    /// The shared initial state of cadence `c` (`None`: a snapshot's) for
    /// `filter`, encoded now if no stream or snapshot asked for it since the
    /// table last changed.
    fn shared_state<'s>(
        &self,
        st: &'s mut TopicState,
        c: Option<usize>,
        filter: Option<&Filter>,
    ) -> &'s SharedState {
        if let Some(i) = st
            .shared
            .iter()
            .position(|s| s.cadence == c && s.filter.as_ref() == filter)
        {
            return &st.shared[i];
        }
        let id = c.map_or(st.seq, |c| st.cadences[c].emitted);
        let rows = self.state_rows(st, c, filter);
        let (frame, body) =
            sse::initial_state_frame(&self.name, id, unix_millis(), rows.into_iter());
        if st.shared.len() >= MAX_SHARED_STATES {
            st.shared.remove(0);
        }
        // Exact: most topics only ever share one state (a Vec would reserve
        // room for four, 320 bytes, in every topic ever read).
        st.shared.reserve_exact(1);
        st.shared.push(SharedState {
            cadence: c,
            filter: filter.cloned(),
            frame,
            body,
        });
        st.shared.last().expect("just pushed")
    }

    fn initial_state_locked(
        &self,
        st: &mut TopicState,
        c: usize,
        filter: Option<&Filter>,
    ) -> Bytes {
        self.shared_state(st, Some(c), filter).frame.clone()
    }

    /// Drops the shared initial states that no stream or response holds
    /// any more (the next start encodes the table afresh).
    fn release_unused_states(&self) {
        let mut st = self.lock();
        st.shared.retain(|s| !s.frame.is_unique());
        if st.shared.is_empty() {
            st.shared = Vec::new();
        }
    }

    /// Initial state frames for several filters of cadence `c`, and the ring
    /// position they are consistent with (a lagged worker's resync).
    pub fn initial_states(&self, c: usize, filters: &[Option<&Filter>]) -> (Vec<Bytes>, u64) {
        let mut st = self.lock();
        let ring = self.activate(&mut st, c);
        let tail = ring.tail();
        let frames = filters
            .iter()
            .map(|f| self.initial_state_locked(&mut st, c, *f))
            .collect();
        (frames, tail)
    }

    /// The frame a group with `filter` sends for ring entry `e`: the shared
    /// frame when every row passes, rows re-joined from their pre-encoded
    /// bytes when some do, nothing when none do.
    pub fn filtered_frame(&self, e: &Entry, filter: Option<&Filter>) -> Option<Bytes> {
        let Some(f) = filter else {
            return Some(e.frame.clone());
        };
        // Each row is tested once (the frame builder walks its rows twice).
        let kept: Vec<&[u8]> = e
            .rows
            .iter()
            .filter(|r| f.passes(*r))
            .map(Row::json)
            .collect();
        if kept.is_empty() {
            None
        } else if kept.len() == e.rows.len() {
            Some(e.frame.clone())
        } else {
            Some(sse::update_frame(
                &self.event,
                &self.name,
                e.seq,
                e.ts_ms,
                kept.iter().copied(),
            ))
        }
    }

    /// Starts a subscription on cadence `c`: a replay after `last_id` when it
    /// is still in the cadence's ring, else an initial state; and the ring
    /// position live frames continue from. Holds the writer lock so that
    /// nothing is missed or sent twice between the two.
    pub fn start(&self, c: usize, filter: Option<&Filter>, last_id: Option<u64>) -> (Start, u64) {
        let mut st = self.lock();
        let ring = self.activate(&mut st, c);
        let tail = ring.tail();
        if let Some(pos) = last_id.and_then(|id| ring.find(id)) {
            let mut frames = Vec::with_capacity((tail - pos - 1) as usize);
            let mut whole = true;
            for p in pos + 1..tail {
                match ring.read(p) {
                    Read::Frame(e) => frames.extend(self.filtered_frame(&e, filter)),
                    // cannot happen while we hold the writer lock, but if it
                    // did, an initial state is the safe answer
                    _ => whole = false,
                }
            }
            if whole {
                return (Start::Replay(frames), tail);
            }
        }
        (
            Start::Fresh(self.initial_state_locked(&mut st, c, filter)),
            tail,
        )
    }

    /// Marks worker `w` as interested. Callers then read the ring under
    /// `start`, whose lock orders this before any later publish's check.
    pub fn add_interest(&self, w: usize, c: usize) {
        // Relaxed suffices: the topic lock taken next (in `start`) is the
        // synchronisation point with publishers, who read `interest` after
        // releasing the same lock.
        self.interest[c].fetch_or(1 << w, Ordering::Relaxed);
    }

    pub fn remove_interest(&self, w: usize, c: usize) {
        self.interest[c].fetch_and(!(1 << w), Ordering::Relaxed);
    }

    /// Called by worker `w` as it takes this topic from its inbox, before it
    /// reads the ring, so that a publish after the read queues it again.
    pub fn dequeued(&self, w: usize) {
        // AcqRel pairs with the fetch_or in `Hub::notify`.
        self.queued.fetch_and(!(1 << w), Ordering::AcqRel);
    }
}

/// A wake-up from another thread: a flag, and the waker of the one task
/// that waits for it.
struct Signal {
    flag: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    fn new() -> Signal {
        Signal {
            flag: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    fn notify(&self) {
        // Release pairs with the Acquire swap in `poll`: the task that sees
        // the flag also sees what was written before the notify.
        if !self.flag.swap(true, Ordering::Release)
            && let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            w.wake();
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        if self.flag.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// One worker's inbox: topics whose rings advanced, and a waker; the
/// shutdown flag; and a second wake-up for configuration reloads, which a
/// cold task of the worker waits on (`server::reload`), apart from the
/// fan-out.
pub struct Inbox {
    topics: SegQueue<Arc<Topic>>,
    ready: Signal,
    shutdown: AtomicBool,
    reload: Signal,
}

impl Inbox {
    fn new() -> Inbox {
        Inbox {
            topics: SegQueue::new(),
            ready: Signal::new(),
            shutdown: AtomicBool::new(false),
            reload: Signal::new(),
        }
    }

    fn notify(&self) {
        self.ready.notify();
    }

    /// Ready when something was queued or shutdown was asked since the last
    /// ready poll.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.ready.poll(cx)
    }

    /// Ready when a reload was published since the last ready poll.
    pub fn poll_reload(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.reload.poll(cx)
    }

    pub fn pop(&self) -> Option<Arc<Topic>> {
        self.topics.pop()
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

/// True when `t` is unused (only the registry holds it, no subscriber, no
/// row) and has been for `idle_ms`, with no update in that time either. A
/// topic found in use is marked as seen in use now.
fn reclaimable(t: &Arc<Topic>, now_ms: u64, idle_ms: u64) -> bool {
    // Relaxed: a gauge; the Arc count decides, under the registry lock.
    let (seq, rows) = t.stats();
    if Arc::strong_count(t) > 1 || t.subscribers.load(Ordering::Relaxed) > 0 || rows > 0 {
        t.idle_since_ms.store(now_ms, Ordering::Relaxed);
        return false;
    }
    let last = t.idle_since_ms.load(Ordering::Relaxed).max(seq / 1000);
    now_ms >= last.saturating_add(idle_ms)
}

/// A keyed topic's state table would pass [`table::MAX_TABLE_BYTES`]: the
/// publish was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the topic's state table is full ({} bytes)", table::MAX_TABLE_BYTES)]
pub struct StateFull;

/// Why a topic name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Not a valid topic name (400).
    Invalid,
    /// Matches no `[[topics]]` pattern (404).
    NotFound,
    /// The node holds `MAX_TOPICS` topics (503).
    TooMany,
    /// The reader has made `max_topics_per_key` topics that hold nothing
    /// (503 until some are freed or published to).
    KeyCap,
}

/// All topics of the node, and the workers' inboxes.
pub struct Hub {
    /// The configuration in force: replaced whole by a reload
    /// ([`Hub::set_settings`]), read once per request or topic lookup,
    /// never per event.
    settings: RwLock<Arc<Settings>>,
    /// The node's cadences by index (append-only).
    cadences: Arc<CadenceTable>,
    topics: RwLock<HashMap<Box<str>, Arc<Topic>>>,
    inboxes: Box<[Inbox]>,
    /// Per cadence index: topics with changes waiting for the cadence's tick.
    flush_queues: Box<[SegQueue<Arc<Topic>>]>,
    draining: AtomicBool,
    /// Workers that have not finished draining (or not yet started to).
    /// Every worker keeps answering on its listener until this is zero.
    workers_busy: AtomicUsize,
    /// Open client connections on this node (all workers).
    pub connections: AtomicUsize,
    /// Open SSE streams on this node (all workers).
    pub streams: AtomicUsize,
    /// Connections on this node that are not streams (`server::limits`).
    pub pending: AtomicUsize,
    /// Workers whose accept loop runs (`/healthz` reports this, not the
    /// configured count). Relaxed: a gauge read by `/healthz` only.
    pub workers_up: AtomicUsize,
    /// Per worker, when its event loop last turned (`time::mono_ms`; 0:
    /// not yet): the watchdog and `/healthz` tell a stuck worker by it.
    beats: Box<[AtomicU64]>,
    /// Per key of the configuration at start, then one for anonymous
    /// clients: topics made by reading that hold nothing yet
    /// (`max_topics_per_key`). Incremented under the registry's write lock,
    /// decremented by the first publish or the sweep. A key added by a
    /// reload shares the anonymous count until a restart.
    made_empty: Box<[AtomicU32]>,
}

impl Hub {
    pub fn new(settings: Arc<Settings>) -> Hub {
        let inboxes = (0..settings.workers).map(|_| Inbox::new()).collect();
        let flush_queues = (0..MAX_CADENCES).map(|_| SegQueue::new()).collect();
        Hub {
            cadences: Arc::new(CadenceTable::new(&settings.cadences)),
            topics: RwLock::new(HashMap::new()),
            inboxes,
            flush_queues,
            draining: AtomicBool::new(false),
            workers_busy: AtomicUsize::new(settings.workers),
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            workers_up: AtomicUsize::new(0),
            beats: (0..settings.workers).map(|_| AtomicU64::new(0)).collect(),
            made_empty: (0..=settings.keys.len())
                .map(|_| AtomicU32::new(0))
                .collect(),
            settings: RwLock::new(settings),
        }
    }

    /// The configuration in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a reloaded configuration in force for what the hub decides:
    /// which topics may be made and with which rule, and the cadences. Its
    /// `workers` must be the running count and its cadences must extend the
    /// running ones (`Settings::extend_cadences`), so that every index in
    /// use keeps its meaning. Topics that exist keep the rule they were
    /// made with; a topic that no pattern matches any more is not found.
    pub fn set_settings(&self, settings: Arc<Settings>) {
        debug_assert_eq!(settings.workers, self.inboxes.len());
        self.cadences.extend(&settings.cadences);
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    /// The node's cadence intervals, by index (for the coalescer).
    pub fn cadences(&self) -> Vec<u32> {
        self.cadences.to_vec()
    }

    pub fn inbox(&self, w: usize) -> &Inbox {
        &self.inboxes[w]
    }

    /// The topic of that name, made on first use if a `[[topics]]` pattern
    /// matches it (by a publisher: only the node cap applies).
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        self.topic_for(name, Maker::Publisher)
    }

    /// The topic of that name, made on first use by `maker` if a
    /// `[[topics]]` pattern matches it.
    pub fn topic_for(&self, name: &str, maker: Maker) -> Result<Arc<Topic>, TopicError> {
        let settings = self.settings();
        // A topic that exists still needs a pattern: a reload may have
        // removed it.
        let found = |t: &Arc<Topic>| match settings.topic_rule(name) {
            Some(_) => Ok(t.clone()),
            None => Err(TopicError::NotFound),
        };
        if let Some(t) = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return found(t);
        }
        if !topic_name_is_valid(name) {
            return Err(TopicError::Invalid);
        }
        let rule = settings.topic_rule(name).ok_or(TopicError::NotFound)?;
        let mut map = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = map.get(name) {
            return found(t);
        }
        let count = match maker {
            Maker::Publisher => None,
            Maker::Reader(key) => {
                let anonymous = self.made_empty.len() - 1;
                let slot = key.filter(|&k| k < anonymous).unwrap_or(anonymous);
                let max = settings.max_topics_per_key;
                // Relaxed: increments happen under the write lock held here;
                // a racing decrement only makes room.
                if max != 0 && self.made_empty[slot].load(Ordering::Relaxed) >= max {
                    return Err(TopicError::KeyCap);
                }
                Some(slot)
            }
        };
        if map.len() >= MAX_TOPICS {
            return Err(TopicError::TooMany);
        }
        let t = Arc::new(Topic::new(name, rule, &settings, &self.cadences));
        if let Some(slot) = count {
            self.made_empty[slot].fetch_add(1, Ordering::Relaxed);
            t.maker.store(slot, Ordering::Relaxed);
        }
        map.insert(name.into(), t.clone());
        Ok(t)
    }

    /// How many topics the node holds.
    pub fn topic_count(&self) -> usize {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Takes `topic` off its maker's count of topics that hold nothing.
    fn uncount_maker(&self, topic: &Topic) {
        // Relaxed load first: a publish to a topic no reader made (most of
        // them) costs one plain load. The swap makes exactly one caller
        // decrement.
        if topic.maker.load(Ordering::Relaxed) != NO_MAKER {
            let slot = topic.maker.swap(NO_MAKER, Ordering::Relaxed);
            if slot != NO_MAKER {
                self.made_empty[slot].fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Topics that holding nothing count against reader `key`'s (`None`:
    /// anonymous) `max_topics_per_key`.
    pub fn made_empty(&self, key: Option<usize>) -> u32 {
        let anonymous = self.made_empty.len() - 1;
        let slot = key.filter(|&k| k < anonymous).unwrap_or(anonymous);
        self.made_empty[slot].load(Ordering::Relaxed)
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
    pub fn publish(&self, topic: &Arc<Topic>, rows: Vec<Row>) -> Result<u64, StateFull> {
        self.publish_inner(topic, rows, None)
    }

    /// Publishes one update with sequence id `id`, which must be above the
    /// topic's last one (`cluster`: ids come from the JetStream log, the same
    /// on every node). Returns the id used.
    pub fn publish_with_id(
        &self,
        topic: &Arc<Topic>,
        rows: Vec<Row>,
        id: u64,
    ) -> Result<u64, StateFull> {
        self.publish_inner(topic, rows, Some(id))
    }

    fn publish_inner(
        &self,
        topic: &Arc<Topic>,
        rows: Vec<Row>,
        id: Option<u64>,
    ) -> Result<u64, StateFull> {
        self.uncount_maker(topic);
        let (seq, pushed, mut newly_dirty) = topic.publish(rows, id)?;
        while newly_dirty != 0 {
            let c = newly_dirty.trailing_zeros() as usize;
            newly_dirty &= newly_dirty - 1;
            self.flush_queues[c].push(topic.clone());
        }
        if pushed != 0 {
            self.notify(topic, pushed);
        }
        Ok(seq)
    }

    /// Cadence `c`'s tick: every topic changed since the last one gets its
    /// coalesced frame, and the workers are told. Returns the frames built.
    pub fn flush_cadence(&self, c: usize, now_ms: u64) -> usize {
        let q = &self.flush_queues[c];
        // Only the topics queued before the tick: a publish racing with it
        // queues its topic again for the next tick.
        let mut built = 0;
        for _ in 0..q.len() {
            let Some(topic) = q.pop() else { break };
            if topic.flush(c, now_ms) {
                built += 1;
                self.notify(&topic, 1 << c);
            }
        }
        built
    }

    /// Queues `topic` in the inbox of every worker with subscribers on one
    /// of `cadences` (a bit mask) and wakes each once.
    fn notify(&self, topic: &Arc<Topic>, cadences: u32) {
        // Relaxed: `publish`/`flush` released the topic lock just before,
        // after any `add_interest` that preceded a `start` (see
        // `add_interest`).
        let mut mask = 0u64;
        let mut cs = cadences;
        while cs != 0 {
            let c = cs.trailing_zeros() as usize;
            cs &= cs - 1;
            mask |= topic.interest[c].load(Ordering::Relaxed);
        }
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

    /// Worker `w`'s event loop turned at `now_ms` (`time::mono_ms`).
    pub fn beat(&self, w: usize, now_ms: u64) {
        // Relaxed: a timestamp read on its own, by the watchdog.
        self.beats[w].store(now_ms, Ordering::Relaxed);
    }

    /// True when every worker's loop turned after `since_ms`.
    pub fn all_beat_since(&self, since_ms: u64) -> bool {
        self.beats
            .iter()
            .all(|b| b.load(Ordering::Relaxed) > since_ms)
    }

    /// The worker whose loop has not turned for the longest, if that is
    /// `threshold_ms` or more at `now_ms`: (worker, ms since its last turn).
    /// A worker that never turned counts from the process's start.
    pub fn stalled_worker(&self, now_ms: u64, threshold_ms: u64) -> Option<(usize, u64)> {
        self.beats
            .iter()
            .enumerate()
            .map(|(w, b)| (w, now_ms.saturating_sub(b.load(Ordering::Relaxed))))
            .filter(|&(_, since)| since >= threshold_ms)
            .max_by_key(|&(_, since)| since)
    }

    /// Once a second (the coalescer thread, `now_ms` its clock): drops
    /// encoded initial states that no stream or response holds any more, and
    /// frees every topic that has had no subscribers, no rows and no update
    /// for `topic_idle_s`.
    ///
    /// Never on a publish or subscribe path: it takes the registry's read
    /// lock and each topic's lock once, then the write lock only when some
    /// topic is to go. A topic goes only while nothing but the registry
    /// holds it (its `Arc` count is 1 under the write lock, so no stream,
    /// worker, queue or request can be using it or clone it meanwhile).
    ///
    /// Ids stay increasing across a topic's reclaim: a topic goes only when
    /// its last id (`max(previous + 1, unix µs)`) is `topic_idle_s` old by
    /// the clock, and the topic made again starts from the clock.
    pub fn sweep(&self, now_ms: u64) {
        let idle_ms = u64::from(self.settings().topic_idle_s) * 1000;
        let mut idle = Vec::new();
        for t in self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            t.release_unused_states();
            if idle_ms != 0 && reclaimable(t, now_ms, idle_ms) {
                idle.push(t.name.clone());
            }
        }
        if idle.is_empty() {
            return;
        }
        let mut map = self.topics.write().unwrap_or_else(|e| e.into_inner());
        for name in idle {
            let still = map
                .get(&name)
                .is_some_and(|t| reclaimable(t, now_ms, idle_ms));
            if still && let Some(t) = map.remove(&name) {
                self.uncount_maker(&t);
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Worker done: its streams are gone (or its grace ran out), or it
    /// failed or ended. Each worker calls it exactly once.
    pub fn worker_drained(&self) {
        // AcqRel: the last worker to finish sees every other one's finish.
        self.workers_busy.fetch_sub(1, Ordering::AcqRel);
    }

    /// True once every worker has drained: they may stop (and close their
    /// listeners) together.
    pub fn all_workers_drained(&self) -> bool {
        self.workers_busy.load(Ordering::Acquire) == 0
    }

    /// Wakes every worker's reload task: a new configuration was published
    /// (what it is, is the caller's: the hub carries only the wake-up).
    pub fn notify_reload(&self) {
        for inbox in self.inboxes.iter() {
            inbox.reload.notify();
        }
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
        Row::new(json.as_bytes(), key.as_slice(), &[])
    }

    #[test]
    fn workers_stop_together_once_every_one_has_drained() {
        let s = Settings::from_toml("[server]\nworkers = 3\n").unwrap();
        let h = Hub::new(Arc::new(s));
        h.drain();
        for _ in 0..2 {
            h.worker_drained();
            assert!(!h.all_workers_drained());
        }
        h.worker_drained();
        assert!(h.all_workers_drained());
    }

    #[test]
    fn a_reload_keeps_cadence_indices_and_existing_topics_need_a_pattern() {
        let h = hub();
        let t = h.topic("k/1").unwrap();
        let mut s = Settings::from_toml(
            "[server]\nworkers = 1\nreplay = 16\n[tiers.raw]\ncoalesce_ms = 0\n\
             [tiers.new]\ncoalesce_ms = 250\n[[topics]]\npattern = \"l/*\"\n",
        )
        .unwrap();
        s.extend_cadences(&h.cadences()).unwrap();
        h.set_settings(Arc::new(s));
        assert_eq!(h.cadences(), vec![0, 500, 1000, 250]);
        // no pattern matches k/1 any more, though the topic exists
        assert_eq!(h.topic("k/1").err(), Some(TopicError::NotFound));
        assert!(h.topic("l/1").is_ok());
        // a topic made before the reload serves the cadence it added
        assert!(t.ring(3).is_none());
        t.start(3, None, None);
        h.publish(&t, vec![row(r#"{"id":1}"#, Some("1"))]).unwrap();
        assert_eq!(h.flush_cadence(3, 250), 1);
        assert_eq!(t.ring(3).map(Ring::tail), Some(1));
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
        let s1 = h
            .publish(
                &t,
                vec![
                    row(r#"{"id":1,"v":1}"#, Some("1")),
                    row(r#"{"id":2,"v":1}"#, Some("2")),
                ],
            )
            .unwrap();
        let s2 = h
            .publish(&t, vec![row(r#"{"id":1,"v":2}"#, Some("1"))])
            .unwrap();
        assert!(s2 > s1);
        let body = t.snapshot_json(None);
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
            h.publish(&t, vec![row(&format!("{{\"i\":{i}}}"), None)])
                .unwrap();
        }
        let text = String::from_utf8(t.snapshot_json(None).to_vec()).unwrap();
        assert!(text.ends_with(r#""data":[{"i":1},{"i":2}]}"#), "{text}");
    }

    fn fresh(start: (Start, u64)) -> Bytes {
        match start.0 {
            Start::Fresh(f) => f,
            Start::Replay(_) => panic!("expected an initial state"),
        }
    }

    #[test]
    fn starts_and_snapshots_share_one_buffer_until_the_state_changes() {
        let h = hub();
        let t = h.topic("k/s").unwrap();
        h.publish(&t, vec![row(r#"{"id":1}"#, Some("1"))]).unwrap();
        let a = fresh(t.start(0, None, None));
        let b = fresh(t.start(0, None, None));
        assert_eq!(a.as_ptr(), b.as_ptr(), "one buffer for both streams");
        let snap = t.snapshot_json(None);
        let inside = a.as_ptr_range();
        assert!(
            inside.contains(&snap.as_ptr()) && snap.len() < a.len(),
            "the snapshot body is a slice of the stream's frame"
        );
        assert!(a.ends_with(&[&snap[..], b"\n\n"].concat()));
        // another filter is another buffer
        let f = Filter::new(vec![filter::Clause::parse(0, "x").unwrap()]).unwrap();
        let filtered = fresh(t.start(0, Some(&f), None));
        assert_ne!(filtered.as_ptr(), a.as_ptr());
        assert_eq!(
            fresh(t.start(0, Some(&f), None)).as_ptr(),
            filtered.as_ptr()
        );
        // a publish makes the next start encode the new state
        h.publish(&t, vec![row(r#"{"id":2}"#, Some("2"))]).unwrap();
        let c = fresh(t.start(0, None, None));
        assert_ne!(c.as_ptr(), a.as_ptr());
        assert!(
            std::str::from_utf8(&c)
                .unwrap()
                .contains(r#"[{"id":1},{"id":2}]"#)
        );
        assert!(!std::str::from_utf8(&a).unwrap().contains(r#"{"id":2}"#));
    }

    #[test]
    fn shared_states_are_bounded_and_released_when_unused() {
        let h = hub();
        let t = h.topic("k/b").unwrap();
        h.publish(&t, vec![row(r#"{"id":1}"#, Some("1"))]).unwrap();
        let filters: Vec<Filter> = (0..MAX_SHARED_STATES + 2)
            .map(|i| Filter::new(vec![filter::Clause::parse(0, &i.to_string()).unwrap()]).unwrap())
            .collect();
        for f in &filters {
            fresh(t.start(0, Some(f), None));
        }
        assert_eq!(t.lock().shared.len(), MAX_SHARED_STATES);
        let held = fresh(t.start(0, None, None));
        t.release_unused_states();
        assert_eq!(t.lock().shared.len(), 1, "only the held one stays");
        assert_eq!(fresh(t.start(0, None, None)).as_ptr(), held.as_ptr());
        drop(held);
        t.release_unused_states();
        assert!(t.lock().shared.is_empty());
    }

    #[test]
    fn a_snapshot_never_reuses_a_frame_that_leaves_out_pending_rows() {
        let s = Settings::from_toml(
            "[server]\nworkers = 1\n[tiers.raw]\ncoalesce_ms = 0\n[tiers.slow]\ncoalesce_ms = 1000\n\
             [auth]\nanonymous_tier = \"raw\"\n[[topics]]\npattern = \"l/*\"\nhistory = 10\n",
        )
        .unwrap();
        let h = Hub::new(Arc::new(s));
        let t = h.topic("l/p").unwrap();
        fresh(t.start(1, None, None)); // the 1 s cadence is active
        h.publish(&t, vec![row(r#"{"i":1}"#, None)]).unwrap();
        // the coalesced start leaves row 1 out (its next frame brings it)
        let slow = fresh(t.start(1, None, None));
        assert!(std::str::from_utf8(&slow).unwrap().contains(r#""data":[]"#));
        let snap = t.snapshot_json(None);
        assert!(snap.ends_with(br#""data":[{"i":1}]}"#));
        // and it was built for the raw cadence, whose streams share it
        let raw = fresh(t.start(0, None, None));
        assert!(raw.as_ptr_range().contains(&snap.as_ptr()));
    }

    fn topic_names(h: &Hub) -> Vec<String> {
        h.topics().iter().map(|t| t.name.to_string()).collect()
    }

    #[test]
    fn the_sweep_frees_only_topics_unused_empty_and_idle() {
        let s = Settings::from_toml(
            "[server]\nworkers = 1\ntopic_idle_s = 10\n[[topics]]\npattern = \"k/*\"\nkey = [\"id\"]\n\
             [[topics]]\npattern = \"l/*\"\nhistory = 0\n",
        )
        .unwrap();
        let h = Hub::new(Arc::new(s));
        let now = unix_millis();
        h.topic("k/empty").unwrap();
        let t = h.topic("k/rows").unwrap();
        h.publish(&t, vec![row(r#"{"id":1}"#, Some("1"))]).unwrap();
        drop(t);
        let held = h.topic("k/held").unwrap();
        h.topic("k/subscribed")
            .unwrap()
            .subscribers
            .fetch_add(1, Ordering::Relaxed);
        // keyless without history: updates, yet no rows
        let t = h.topic("l/updated").unwrap();
        let id = h.publish(&t, vec![row("{}", None)]).unwrap();
        drop(t);
        h.sweep(now + 9_000);
        assert_eq!(topic_names(&h).len(), 5, "nothing is idle for 10 s yet");
        h.sweep(now + 11_000);
        assert_eq!(topic_names(&h), ["k/held", "k/rows", "k/subscribed"]);
        // seen in use at 11 s: idle from then on
        drop(held);
        h.sweep(now + 12_000);
        assert_eq!(topic_names(&h).len(), 3);
        h.sweep(now + 21_000);
        assert_eq!(topic_names(&h), ["k/rows", "k/subscribed"]);
        // a topic made again goes on with later ids
        let t = h.topic("l/updated").unwrap();
        assert!(h.publish(&t, vec![row("{}", None)]).unwrap() > id);
    }

    #[test]
    fn a_reader_makes_at_most_max_topics_per_key_topics_that_hold_nothing() {
        let s = Settings::from_toml(
            "[server]\nworkers = 1\nmax_topics_per_key = 2\ntopic_idle_s = 10\n\
             [[keys]]\nname = \"r\"\nkey = \"k_r\"\ntier = \"scale\"\n\
             [[topics]]\npattern = \"k/*\"\nkey = [\"id\"]\n",
        )
        .unwrap();
        let h = Hub::new(Arc::new(s));
        let reader = Maker::Reader(Some(0));
        h.topic_for("k/1", reader).unwrap();
        h.topic_for("k/2", reader).unwrap();
        assert_eq!(h.topic_for("k/3", reader).err(), Some(TopicError::KeyCap));
        assert!(
            h.topic_for("k/1", reader).is_ok(),
            "reading a topic that exists"
        );
        assert!(
            h.topic_for("k/a", Maker::Reader(None)).is_ok(),
            "anonymous has its own count"
        );
        assert!(h.topic_for("k/p", Maker::Publisher).is_ok());
        assert_eq!((h.made_empty(Some(0)), h.made_empty(None)), (2, 1));
        // a publish makes k/1 hold something: it no longer counts
        let t = h.topic("k/1").unwrap();
        h.publish(&t, vec![row(r#"{"id":1}"#, Some("1"))]).unwrap();
        drop(t);
        assert_eq!(h.made_empty(Some(0)), 1);
        h.topic_for("k/3", reader).unwrap();
        assert_eq!(h.topic_for("k/4", reader).err(), Some(TopicError::KeyCap));
        // freed topics no longer count
        h.sweep(unix_millis() + 11_000);
        assert_eq!((h.made_empty(Some(0)), h.made_empty(None)), (0, 0));
        assert_eq!(topic_names(&h), ["k/1"]);
        h.topic_for("k/4", reader).unwrap();
    }

    #[test]
    fn start_replays_after_a_known_id_and_is_fresh_otherwise() {
        let h = hub();
        let t = h.topic("k/2").unwrap();
        t.start(0, None, None);
        let ids: Vec<u64> = (0..3)
            .map(|i| {
                h.publish(&t, vec![row(&format!("{{\"id\":{i}}}"), Some("a"))])
                    .unwrap()
            })
            .collect();
        match t.start(0, None, Some(ids[0])) {
            (Start::Replay(frames), tail) => {
                assert_eq!(frames.len(), 2);
                assert_eq!(tail, 3);
                assert!(
                    frames[0].starts_with(format!("event: update\nid: {}\n", ids[1]).as_bytes())
                );
            }
            _ => panic!("expected a replay"),
        }
        assert!(matches!(t.start(0, None, Some(ids[2])), (Start::Replay(f), 3) if f.is_empty()));
        assert!(matches!(
            t.start(0, None, Some(12345)),
            (Start::Fresh(_), 3)
        ));
        assert!(matches!(t.start(0, None, None), (Start::Fresh(_), 3)));
    }
}
