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
//! Files: this one is the registry ([`Hub`]: topics by name, their
//! creation, caps and reclaiming, publishing and waking workers); `topic`
//! a topic's lock, table and rings and applying an update; `state` the
//! initial states, snapshots and subscription starts; `cadence` the
//! coalescing state; `inbox` a worker's wake-up; `table` the keyed state
//! table; `row` a row's encoding; `ring` the broadcast ring; `coalesce` the
//! coalescer thread; `filter` and `row_key` their rules.
//!
//! Never touches a socket; never encodes per connection.

mod cadence;
pub mod coalesce;
pub mod filter;
mod inbox;
pub mod ring;
pub mod row;
pub mod row_key;
mod state;
mod table;
#[cfg(test)]
mod tests;
mod topic;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crossbeam_queue::SegQueue;

pub use crate::config::values::{MAX_TOPIC_BYTES, topic_name_is_valid};
use crate::config::{MAX_CADENCES, Settings};
pub use cadence::CadenceTable;
pub use filter::Filter;
pub use inbox::Inbox;
pub use ring::{Entry, Read, Ring};
pub use row::{Row, RowBuilder, RowRef};
pub use topic::{MAX_SHARED_STATES, Start, Topic};

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
