//! The broadcast ring of one topic × cadence (tiers with the same
//! `coalesce_ms` share it): a fixed number of slots of `(pos, entry)`, made
//! 16 at a time as the writer first reaches them, where
//! an entry is a frame's sequence id, its encoded bytes and the rows it holds
//! (for filtered groups to re-join), one writer, any number of readers (one cursor per
//! worker, never one per connection). It doubles as the replay window for
//! `Last-Event-ID`.
//!
//! Hot module. This is the safe version (tokio's broadcast shape: a lock per
//! slot, taken uncontended by one worker per frame, never per connection),
//! and it stays. `benches/ring.rs` measures it under real threads against two
//! lock-free-for-readers candidates (figures in
//! `bench-results/ring-2026-11-23.jsonl`, on a busy 2-core machine):
//! arc-swap slots (`benches/support/lockfree_ring.rs`, the full API,
//! stress-tested beside this ring in `tests/concurrency.rs`) read at about
//! the same cost but push 2.5-3× slower (an allocation per frame, and the
//! writer settles every reader thread's debts), and lost the one-reader
//! threaded run; crossbeam-epoch slots were mixed (ahead with two readers,
//! behind on a lone read and a push beside one reader, within the noise),
//! need `unsafe`, and free a replaced frame only once the epoch moves on,
//! which would make the byte bound below soft. An uncontended slot lock
//! costs about what their read-side protection does (a read here is a lock,
//! two reference counts and an unlock). A replacement must beat this ring
//! there, on a quiet machine, first.
//!
//! Reads never allocate: a `Bytes` made from a `Vec` allocates its shared
//! header on its first clone, so `push` takes that clone, on the writer.
//!
//! Positions (`pos`) count frames pushed since the ring was made and are dense;
//! sequence ids (`seq`) are the topic's public ids and may jump. A reader that
//! asks for a position that has been overwritten gets [`Read::Lagged`] and
//! must resynchronise from the state table.
//!
//! The window is bounded in bytes as well as slots: past [`MAX_RING_BYTES`]
//! the oldest frames are dropped (read as `Lagged`, not found for resume)
//! even when slots remain, so a ring of big frames (a coalesced tier's, each
//! holding every key changed in its tick) keeps at most that much alive, not
//! `replay` whole frames. The newest frame is always kept.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use crossbeam_utils::CachePadded;

use super::{Row, Rows};

/// Most bytes one ring keeps alive: its frames, their row lists and the rows
/// themselves (counted in full even while the state table shares them).
pub const MAX_RING_BYTES: usize = 16 << 20;

/// One frame of the ring.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The highest sequence id the frame includes (its `id:`).
    pub seq: u64,
    /// The frame's `timestamp` (unix ms), for re-joined filtered frames.
    pub ts_ms: u64,
    /// The whole encoded frame, shared by every unfiltered subscriber.
    pub frame: Bytes,
    /// Its rows, in frame order.
    pub rows: Rows,
}

impl Entry {
    fn empty() -> Entry {
        Entry {
            seq: 0,
            ts_ms: 0,
            frame: Bytes::new(),
            rows: Rows::default(),
        }
    }

    /// What the entry keeps alive, at most: what [`Ring::bytes`] counts.
    pub fn cost(&self) -> usize {
        let rows = self
            .rows
            .iter()
            .fold(0usize, |n, r| n.saturating_add(r.heap_bytes()));
        self.frame
            .len()
            .saturating_add(self.rows.len().saturating_mul(std::mem::size_of::<Row>()))
            .saturating_add(rows)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.seq == other.seq && self.frame == other.frame
    }
}

impl Eq for Entry {}

struct Slot {
    /// `u64::MAX`: empty, or dropped for the byte bound.
    pos: u64,
    entry: Entry,
    /// `entry.cost()`, counted in `Ring::bytes`.
    cost: usize,
}

/// What a read at a position found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The frame at that position.
    Frame(Entry),
    /// Nothing has been written there yet.
    Empty,
    /// The position was overwritten: the reader fell a full lap behind.
    Lagged,
}

/// Slots are made this many at a time, as the writer first reaches them.
const CHUNK: usize = 16;

type Chunk = [Mutex<Slot>; CHUNK];

pub struct Ring {
    /// The slots, in chunks of [`CHUNK`]: the chunk table is made with the
    /// first push (a topic that is subscribed to but never published holds
    /// no slots: a client naming topics at random cannot make the node
    /// allocate a replay window for each), and each chunk when the writer
    /// first reaches it (a topic published a few times holds a few slots,
    /// not `replay`; making all 1,024 at once, 80 KiB, cost a publish about
    /// 35 µs of page faults and stores, 3.5% of the worker's CPU in
    /// `topics-1k`).
    slots: OnceLock<Box<[OnceLock<Box<Chunk>>]>>,
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

impl Ring {
    pub fn new(slots: usize) -> Ring {
        Ring::with_max_bytes(slots, MAX_RING_BYTES)
    }

    /// A ring of `slots` frames holding at most `max_bytes` (but always its
    /// newest frame).
    pub fn with_max_bytes(slots: usize, max_bytes: usize) -> Ring {
        Ring {
            slots: std::sync::OnceLock::new(),
            capacity: slots.max(1),
            max_bytes,
            tail: CachePadded::new(AtomicU64::new(0)),
            head: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    /// Makes the chunk table and the chunk of position `pos`, if not yet.
    fn make_slots(&self, pos: u64) {
        let chunks = self.slots.get_or_init(|| {
            (0..self.capacity.div_ceil(CHUNK))
                .map(|_| OnceLock::new())
                .collect()
        });
        let i = (pos % self.capacity()) as usize;
        chunks[i / CHUNK].get_or_init(|| {
            Box::new(std::array::from_fn(|_| {
                Mutex::new(Slot {
                    pos: u64::MAX,
                    entry: Entry::empty(),
                    cost: 0,
                })
            }))
        });
    }

    /// Bytes the live entries keep alive (their costs).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    /// The next position to be written; every position below it is readable
    /// unless overwritten.
    pub fn tail(&self) -> u64 {
        // Acquire pairs with the Release store in `push`: a reader that sees
        // tail = n also sees the slot contents written for positions < n.
        self.tail.load(Ordering::Acquire)
    }

    /// Appends a frame, then drops the oldest ones while the ring holds more
    /// than its byte bound. Callers serialise pushes (the topic's writer
    /// lock).
    pub fn push(&self, entry: Entry) {
        // Relaxed (tail, head, bytes): only the single writer, holding the
        // topic lock, stores them; readers check each slot's `pos` under its
        // lock and never trust `head` alone.
        let pos = self.tail.load(Ordering::Relaxed);
        let mut head = self.head.load(Ordering::Relaxed);
        let mut bytes = self.bytes.load(Ordering::Relaxed);
        self.make_slots(pos);
        let cost = entry.cost();
        // The first clone of a `Bytes` made from a `Vec` allocates its shared
        // header: take it here, so that no reader's clone allocates.
        drop(entry.frame.clone());
        {
            let mut slot = self.lock(pos);
            if slot.pos != u64::MAX {
                // the live frame a lap behind goes
                bytes = bytes.saturating_sub(slot.cost);
                head = head.max(slot.pos + 1);
            }
            slot.pos = pos;
            slot.entry = entry;
            slot.cost = cost;
        }
        bytes = bytes.saturating_add(cost);
        while bytes > self.max_bytes && head < pos {
            let mut slot = self.lock(head);
            bytes = bytes.saturating_sub(slot.cost);
            slot.pos = u64::MAX;
            slot.entry = Entry::empty();
            slot.cost = 0;
            head += 1;
        }
        self.head.store(head, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        // Release pairs with the Acquire in `tail`.
        self.tail.store(pos + 1, Ordering::Release);
    }

    /// Reads the frame at `pos`.
    pub fn read(&self, pos: u64) -> Read {
        if pos >= self.tail() {
            return Read::Empty;
        }
        let slot = self.lock(pos);
        if slot.pos == pos {
            Read::Frame(slot.entry.clone())
        } else {
            Read::Lagged
        }
    }

    /// The position of the frame with sequence id `seq`, if it is still in the
    /// ring. Sequence ids grow with positions, so this is a binary search over
    /// the live window.
    pub fn find(&self, seq: u64) -> Option<u64> {
        let tail = self.tail();
        let mut lo = tail
            .saturating_sub(self.capacity())
            .max(self.head.load(Ordering::Relaxed));
        let mut hi = tail;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (slot_pos, slot_seq) = {
                let s = self.lock(mid);
                (s.pos, s.entry.seq)
            };
            if slot_pos != mid {
                // overwritten or dropped while we searched: the window moved
                // past it
                lo = mid + 1;
                continue;
            }
            match slot_seq.cmp(&seq) {
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// Only for positions below the tail: a push made their slots.
    fn lock(&self, pos: u64) -> std::sync::MutexGuard<'_, Slot> {
        let i = (pos % self.capacity()) as usize;
        let chunk = self
            .slots
            .get()
            .and_then(|chunks| chunks[i / CHUNK].get())
            .expect("positions below the tail exist only after a push made their slots");
        // A poisoned slot only means a reader panicked while cloning a Bytes;
        // the slot's data is still whole.
        chunk[i % CHUNK].lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, b: u8) -> Entry {
        Entry {
            seq,
            ts_ms: 0,
            frame: Bytes::from(vec![b]),
            rows: Rows::default(),
        }
    }

    #[test]
    fn reads_in_order_and_reports_lag() {
        let r = Ring::new(4);
        assert_eq!(r.read(0), Read::Empty);
        for i in 0..6u64 {
            r.push(entry(100 + i, i as u8));
        }
        assert_eq!(r.tail(), 6);
        assert_eq!(r.read(1), Read::Lagged);
        assert_eq!(r.read(2), Read::Frame(entry(102, 2)));
        assert_eq!(r.read(5), Read::Frame(entry(105, 5)));
        assert_eq!(r.read(6), Read::Empty);
    }

    #[test]
    fn an_unpublished_ring_holds_no_slots() {
        let r = Ring::new(1024);
        assert!(r.slots.get().is_none());
        assert_eq!(r.read(0), Read::Empty);
        assert_eq!(r.find(1), None);
        r.push(entry(1, 1));
        let made = |r: &Ring| {
            r.slots
                .get()
                .map_or(0, |c| c.iter().filter(|c| c.get().is_some()).count())
        };
        // One chunk of slots, not the whole window.
        assert_eq!(made(&r), 1);
        for seq in 2..=(CHUNK as u64 + 1) {
            r.push(entry(seq, 1));
        }
        assert_eq!(made(&r), 2);
        // A full lap makes them all, and they are reused after it.
        for seq in (CHUNK as u64 + 2)..=2100 {
            r.push(entry(seq, 1));
        }
        assert_eq!(made(&r), 1024 / CHUNK);
        assert_eq!(r.read(2099), Read::Frame(entry(2100, 1)));
        assert_eq!(r.read(1000), Read::Lagged);
    }

    #[test]
    fn a_ring_whose_size_is_no_multiple_of_a_chunk_wraps_at_its_size() {
        let r = Ring::new(CHUNK + 3);
        for seq in 1..=100 {
            r.push(entry(seq, seq as u8));
        }
        for pos in 100 - (CHUNK as u64 + 3)..100 {
            assert_eq!(r.read(pos), Read::Frame(entry(pos + 1, (pos + 1) as u8)));
        }
        assert_eq!(r.read(100 - CHUNK as u64 - 4), Read::Lagged);
        assert_eq!(r.find(90), Some(89));
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_frames_but_never_the_newest() {
        let big = |seq: u64, n: usize| Entry {
            seq,
            ts_ms: 0,
            frame: Bytes::from(vec![0u8; n]),
            rows: Rows::default(),
        };
        let r = Ring::with_max_bytes(8, 1000);
        for seq in 1..=3 {
            r.push(big(seq, 400));
        }
        // 1200 bytes: the first frame went
        assert_eq!(r.bytes(), 800);
        assert_eq!(r.read(0), Read::Lagged);
        assert_eq!(r.read(1), Read::Frame(big(2, 400)));
        assert_eq!(r.find(1), None);
        assert_eq!(r.find(2), Some(1));
        // one frame over the bound on its own stays, alone
        r.push(big(4, 5000));
        assert_eq!(r.bytes(), 5000);
        assert_eq!(r.read(2), Read::Lagged);
        assert_eq!(r.read(3), Read::Frame(big(4, 5000)));
        assert_eq!(r.find(4), Some(3));
        // small frames again: slots wrap over dropped ones
        for seq in 5..=20 {
            r.push(big(seq, 10));
        }
        assert_eq!(r.bytes(), 80, "8 slots of 10 bytes");
        assert_eq!(r.find(13), Some(12));
        assert_eq!(r.find(12), None);
        assert_eq!(r.read(11), Read::Lagged);
        // rows count with the frame
        let row = Row::new(&[b'x'; 100], &[], &[]);
        let e = Entry {
            seq: 21,
            ts_ms: 0,
            frame: Bytes::from(vec![0u8; 50]),
            rows: vec![row.clone()].into(),
        };
        assert_eq!(e.cost(), 50 + std::mem::size_of::<Row>() + row.heap_bytes());
    }

    #[test]
    fn find_only_sees_the_live_window() {
        let r = Ring::new(4);
        for seq in [10u64, 20, 30, 40, 50, 60] {
            r.push(entry(seq, 0));
        }
        assert_eq!(r.find(30), Some(2));
        assert_eq!(r.find(60), Some(5));
        assert_eq!(r.find(20), None, "overwritten");
        assert_eq!(r.find(35), None, "never existed");
        assert_eq!(r.find(70), None);
    }
}
