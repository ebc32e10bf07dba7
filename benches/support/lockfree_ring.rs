//! A lock-free-for-readers candidate for `hub::Ring`, with its whole API,
//! kept outside the server: `benches/ring.rs` measured it slower than the
//! mutex-per-slot ring (pushes 2.5-3× dearer; see `src/hub/ring.rs`), and
//! `tests/concurrency.rs` stress-tests it beside that ring so the comparison
//! stays honest if it is taken up again. Included by both with `#[path]`.
//!
//! Each slot is an [`ArcSwapOption`] holding an `Arc` of a stamped entry
//! `(pos, cost, entry)`, made once per push. A reader loads the slot
//! (arc-swap's thread-local debt slots protect the pointer while it is read:
//! no lock, no allocation, no shared reference count touched) and clones the
//! entry out if its stamp is the position asked for. An entry is never
//! written after it is published, so there is nothing to tear; the writer
//! swaps whole `Arc`s, and the last holder of an old one frees it. No
//! `unsafe`: arc-swap's reclamation is what makes `Bytes`/`Arc` entries sound
//! to share, where a seqlock copy of them would not be. arc-swap has no loom
//! support, so the threads of `tests/concurrency.rs` are its test.
//!
//! Same semantics as `hub::Ring`: dense positions, `Lagged` for a position
//! overwritten or dropped for the byte bound, `find` over the live window,
//! the newest frame always kept.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use crossbeam_utils::CachePadded;
use sluice::hub::ring::MAX_RING_BYTES;
use sluice::hub::{Entry, Read};

/// What a slot holds: an entry stamped with its position. Immutable once
/// published.
struct Stamped {
    pos: u64,
    /// `entry.cost()`, counted in `LockFreeRing::bytes`.
    cost: usize,
    entry: Entry,
}

pub struct LockFreeRing {
    /// Made with the first push. `None` in a slot: never written, or
    /// dropped for the byte bound.
    slots: OnceLock<Box<[ArcSwapOption<Stamped>]>>,
    capacity: usize,
    max_bytes: usize,
    /// Number of frames ever pushed (the next position to write).
    tail: CachePadded<AtomicU64>,
    /// The oldest position not overwritten or dropped. Only the writer
    /// stores it; `find` reads it as a lower bound and checks each slot.
    head: AtomicU64,
    /// Sum of the live entries' costs. Writer only.
    bytes: AtomicUsize,
}

impl LockFreeRing {
    pub fn new(slots: usize) -> LockFreeRing {
        LockFreeRing::with_max_bytes(slots, MAX_RING_BYTES)
    }

    pub fn with_max_bytes(slots: usize, max_bytes: usize) -> LockFreeRing {
        LockFreeRing {
            slots: OnceLock::new(),
            capacity: slots.max(1),
            max_bytes,
            tail: CachePadded::new(AtomicU64::new(0)),
            head: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    pub fn tail(&self) -> u64 {
        // Acquire pairs with the Release store in `push`: a reader that sees
        // tail = n also sees the slot stores made for positions < n.
        self.tail.load(Ordering::Acquire)
    }

    /// Appends a frame, then drops the oldest ones while the ring holds more
    /// than its byte bound. Callers serialise pushes. Allocates the stamped
    /// entry; frees what it replaces unless a reader still holds it.
    pub fn push(&self, entry: Entry) {
        // Relaxed (tail, head, bytes): only the single writer stores them;
        // readers check each slot's stamp and never trust `head` alone.
        let pos = self.tail.load(Ordering::Relaxed);
        let mut head = self.head.load(Ordering::Relaxed);
        let mut bytes = self.bytes.load(Ordering::Relaxed);
        let slots = self
            .slots
            .get_or_init(|| (0..self.capacity).map(|_| ArcSwapOption::empty()).collect());
        let cost = entry.cost();
        // The first clone of a `Bytes` made from a `Vec` allocates its shared
        // header: take it here, so that no reader's clone allocates.
        drop(entry.frame.clone());
        let new = Arc::new(Stamped { pos, cost, entry });
        // arc-swap's swap is AcqRel on the slot: it publishes the new entry
        // to readers that load it, and hands back the old one only once every
        // reader still borrowing it holds a reference of its own.
        if let Some(old) = slots[self.index(pos)].swap(Some(new)) {
            // the live frame a lap behind goes
            bytes = bytes.saturating_sub(old.cost);
            head = head.max(old.pos + 1);
        }
        bytes = bytes.saturating_add(cost);
        while bytes > self.max_bytes && head < pos {
            if let Some(old) = slots[self.index(head)].swap(None) {
                bytes = bytes.saturating_sub(old.cost);
            }
            head += 1;
        }
        self.head.store(head, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        // Release pairs with the Acquire in `tail`: the slot stores above
        // happen before any read that saw the new tail.
        self.tail.store(pos + 1, Ordering::Release);
    }

    /// Reads the frame at `pos`: a load of the slot and a clone of the entry
    /// (two reference counts); no lock, no allocation.
    pub fn read(&self, pos: u64) -> Read {
        if pos >= self.tail() {
            return Read::Empty;
        }
        // Below the tail, the slot holds `pos`'s entry or a later one (its
        // store happened before the tail we saw), or nothing if the byte
        // bound dropped it.
        let slot = self.slot(pos).load();
        match slot.as_deref() {
            Some(s) if s.pos == pos => Read::Frame(s.entry.clone()),
            _ => Read::Lagged,
        }
    }

    /// The position of the frame with sequence id `seq`, if it is still in
    /// the ring: a binary search over the live window.
    pub fn find(&self, seq: u64) -> Option<u64> {
        let tail = self.tail();
        let mut lo = tail
            .saturating_sub(self.capacity())
            .max(self.head.load(Ordering::Relaxed));
        let mut hi = tail;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let slot_seq = match self.slot(mid).load().as_deref() {
                Some(s) if s.pos == mid => s.entry.seq,
                // overwritten or dropped while we searched: the window moved
                // past it
                _ => {
                    lo = mid + 1;
                    continue;
                }
            };
            match slot_seq.cmp(&seq) {
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    fn index(&self, pos: u64) -> usize {
        (pos % self.capacity()) as usize
    }

    /// Only for positions below the tail: the first push made the slots.
    fn slot(&self, pos: u64) -> &ArcSwapOption<Stamped> {
        let slots = self
            .slots
            .get()
            .expect("positions below the tail exist only after a push made the slots");
        &slots[self.index(pos)]
    }
}
