//! A topic's state as streams and snapshots see it: the initial state
//! (encoded once per cadence, filter and table version, shared by every
//! stream start and snapshot until the table changes), re-joined filtered
//! frames, and the start of a subscription (a replay or a fresh state).
//!
//! Cold: once per stream start, snapshot or filtered group and frame;
//! never per connection per event.

use bytes::Bytes;

use super::topic::{SharedState, Start, Table, TopicState};
use super::{Entry, Filter, MAX_SHARED_STATES, Read, Row, RowRef, Topic, filter};
use crate::sse;
use crate::time::unix_millis;

impl Topic {
    /// The rows of the state table that `filter` lets through, as cadence `c`
    /// has reached them: a keyless topic leaves out the rows still pending
    /// for `c`'s next frame (they come with it).
    pub(super) fn state_rows<'a>(
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
    pub(super) fn shared_state<'s>(
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

    pub(super) fn initial_state_locked(
        &self,
        st: &mut TopicState,
        c: usize,
        filter: Option<&Filter>,
    ) -> Bytes {
        self.shared_state(st, Some(c), filter).frame.clone()
    }

    /// Drops the shared initial states that no stream or response holds
    /// any more (the next start encodes the table afresh).
    pub(super) fn release_unused_states(&self) {
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
        // (A filter names fields, so the topic has some and its entries
        // keep their rows: `Topic::push_frame`.)
        debug_assert!(!self.fields.is_empty());
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
}
