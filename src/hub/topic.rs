//! A topic: its state table and sequence id behind one writer lock, and one
//! broadcast ring per active cadence. Publishing applies an update here
//! (table, coalescing state, the raw frame); the coalescer's tick builds a
//! cadence's frame here.
//!
//! Cold per publish (one lock, one encode per frame and cadence); the
//! workers only read the rings and the interest and queued bits. Never
//! touches a socket; never encodes per connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;

use super::cadence::{Cadence, CadenceTable};
use super::ring::Entry;
use super::table::KeyedTable;
use super::{Filter, MAX_PENDING_BYTES, NO_MAKER, Ring, Row, Rows, StateFull};
use crate::config::{MAX_CADENCES, Settings, TopicRule};
use crate::sse;
use crate::time::{unix_micros, unix_millis};

pub(super) enum Table {
    /// The latest row per key, in the order keys first appeared.
    Keyed(KeyedTable),
    Keyless {
        rows: VecDeque<Row>,
        history: usize,
    },
}

impl Table {
    pub(super) fn len(&self) -> usize {
        match self {
            Table::Keyed(m) => m.len(),
            Table::Keyless { rows, .. } => rows.len(),
        }
    }
}

/// Most encoded initial states a topic keeps for reuse (one per cadence and
/// filter asked for); past it the oldest goes.
pub const MAX_SHARED_STATES: usize = 8;

/// An encoded initial state of the current state table, shared by every
/// stream that starts (and every snapshot taken) before the table changes:
/// clients that do not read it hold one buffer between them, not a copy each.
pub(super) struct SharedState {
    /// The cadence whose `id` and pending rows the frame reflects; `None`:
    /// built for a snapshot (every row, `id` the topic's).
    pub(super) cadence: Option<usize>,
    pub(super) filter: Option<Filter>,
    pub(super) frame: Bytes,
    /// The JSON inside `frame` (the snapshot body).
    pub(super) body: std::ops::Range<usize>,
}

pub(super) struct TopicState {
    /// Sequence id of the last update (0: none in this run).
    pub(super) seq: u64,
    pub(super) table: Table,
    /// By cadence index, up to the highest one ever active on the topic.
    pub(super) cadences: Vec<Cadence>,
    /// Encoded initial states of the table as it is now: emptied whenever
    /// the table, a cadence's id or its pending rows change.
    pub(super) shared: Vec<SharedState>,
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
    pub(super) state: Mutex<TopicState>,
    /// One ring per cadence, made when the cadence becomes active. Every
    /// cadence index the node may ever use has a slot (a reload can add
    /// cadences to a topic made before it); a slot is 16 bytes until used.
    pub(super) rings: Box<[OnceLock<Box<Ring>>]>,
    /// The node's cadence intervals, by index.
    pub(super) cadence_ms: Arc<CadenceTable>,
    pub(super) ring_slots: usize,
    /// Per cadence, bit w: worker w has subscribers on that cadence (so a
    /// worker with only coalesced subscribers is not woken per publish).
    pub(super) interest: Box<[AtomicU64]>,
    /// Bit w: this topic waits in worker w's inbox.
    pub(super) queued: AtomicU64,
    pub subscribers: AtomicUsize,
    /// The reader count (index into `Hub::made_empty`) this topic holds one
    /// of while it holds nothing; `NO_MAKER` otherwise.
    pub(super) maker: AtomicUsize,
    /// Unix ms since which the sweep has seen the topic unused (made, or
    /// last seen with subscribers or held by a stream or a worker).
    pub(super) idle_since_ms: AtomicU64,
}

/// How a subscription starts (SPEC §2 frame 2).
pub enum Start {
    /// `Last-Event-ID` was in the ring: these frames follow it.
    Replay(Vec<Bytes>),
    /// A fresh initial state frame.
    Fresh(Bytes),
}

impl Topic {
    pub(super) fn new(
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

    pub(super) fn lock(&self) -> MutexGuard<'_, TopicState> {
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
    pub(super) fn publish(
        &self,
        rows: Vec<Row>,
        id: Option<u64>,
    ) -> Result<(u64, u32, u32), StateFull> {
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
    pub(super) fn push_frame(
        &self,
        st: &mut TopicState,
        c: usize,
        seq: u64,
        ts_ms: u64,
        rows: Rows,
    ) {
        let frame = sse::update_frame(
            &self.event,
            &self.name,
            seq,
            ts_ms,
            rows.iter().map(Row::json),
        );
        let ring = self.rings[c].get().expect("an active cadence has a ring");
        // Only filtered groups read an entry's rows (to re-join the ones
        // that pass), and a topic without filter fields has none: its ring
        // keeps the frame alone, and the rows are freed now.
        let rows = if self.fields.is_empty() {
            Rows::default()
        } else {
            rows
        };
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
    pub(super) fn flush_locked(&self, st: &mut TopicState, c: usize, now_ms: u64) -> bool {
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
    pub(super) fn flush(&self, c: usize, now_ms: u64) -> bool {
        let mut st = self.lock();
        st.cadences[c].queued = false;
        self.flush_locked(&mut st, c, now_ms)
    }

    /// Makes cadence `c` active (its ring, and frames from now on).
    pub(super) fn activate<'a>(&'a self, st: &mut TopicState, c: usize) -> &'a Ring {
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
