//! A topic's cadences: what each `coalesce_ms` value keeps of it under the
//! topic lock ([`Cadence`]: dirty keys, pending rows), and the node's
//! append-only table of cadence intervals ([`CadenceTable`]).
//!
//! Cold: touched once per publish and per coalescer tick under the topic
//! lock; never per connection.

use std::sync::OnceLock;

use super::Row;
use crate::config::MAX_CADENCES;

/// What one cadence (a `coalesce_ms` value) keeps of a topic, under the
/// topic lock. Only an active cadence builds frames: the raw one always is,
/// a coalesced one from its first subscriber on.
#[derive(Default)]
pub(super) struct Cadence {
    pub(super) active: bool,
    /// Its `coalesce_ms` (0: raw), set when it becomes active.
    pub(super) ms: u32,
    /// Sequence id the cadence's frames have reached: its last frame's id,
    /// or the topic's id when the cadence became active.
    pub(super) emitted: u64,
    /// Keyed topics: state-table indices changed since the last frame, in
    /// the order they first changed.
    pub(super) dirty: Vec<usize>,
    /// Keyed topics: bit i set when index i is in `dirty`.
    pub(super) dirty_bits: Vec<u64>,
    /// Keyless topics: rows published since the last frame, in order.
    pub(super) pending: Vec<Row>,
    pub(super) pending_bytes: usize,
    /// In the hub's flush queue for this cadence.
    pub(super) queued: bool,
}

impl Cadence {
    pub(super) fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.pending.is_empty()
    }

    /// Queues state-table index `i` for the next frame, once.
    pub(super) fn mark_dirty(&mut self, i: usize) {
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

/// The node's cadences (`coalesce_ms` values), by index: append-only, so
/// that an index (in rings, groups, bit masks) names the same interval for
/// the life of the process. The configuration at start fills the first
/// ones; a reload appends the intervals it adds (`Settings::extend_cadences`).
pub struct CadenceTable {
    pub(super) ms: [OnceLock<u32>; MAX_CADENCES],
}

impl CadenceTable {
    pub(super) fn new(cadences: &[u32]) -> CadenceTable {
        let t = CadenceTable {
            ms: std::array::from_fn(|_| OnceLock::new()),
        };
        t.extend(cadences);
        t
    }

    /// Records the intervals of `cadences` (a list that extends this one).
    pub(super) fn extend(&self, cadences: &[u32]) {
        for (slot, &ms) in self.ms.iter().zip(cadences) {
            let set = *slot.get_or_init(|| ms);
            debug_assert_eq!(set, ms, "cadence indices are stable");
        }
    }

    /// The interval of cadence `c` (it is in use, so it is set).
    pub(super) fn get(&self, c: usize) -> u32 {
        self.ms[c].get().copied().unwrap_or(0)
    }

    /// The intervals set so far, by index.
    pub fn to_vec(&self) -> Vec<u32> {
        self.ms.iter().map_while(|s| s.get().copied()).collect()
    }
}
