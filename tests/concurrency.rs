//! The cross-thread pieces under real threads: the broadcast ring (one
//! writer, readers on other threads) and the worker inbox's wake-up
//! protocol. Every frame is accounted for: received + lagged == sent, in
//! order, never torn (a frame's id, timestamp, bytes and rows always belong
//! to the same push), `find` never names a wrong position, the byte bound
//! holds, reads allocate nothing; and a reader that waits on the inbox is
//! always woken for what was published (no lost wake-up).
//!
//! The ring tests run on `hub::Ring` and on the lock-free candidate that
//! `benches/ring.rs` measures against it (`benches/support/lockfree_ring.rs`,
//! arc-swap slots; arc-swap has no loom support, so these threads are its
//! model check).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice::config::Settings;
use sluice::hub::ring::{Entry, MAX_RING_BYTES, Read, Ring};
use sluice::hub::{Hub, Row, Rows};
use sluice::sources::publish::{Format, accept};

#[path = "../benches/support/lockfree_ring.rs"]
mod lockfree_ring;
use lockfree_ring::LockFreeRing;

const WAIT: Duration = Duration::from_secs(20);

/// The system allocator, counting the allocations each thread makes.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is passed to `System` unchanged; the count is a
// const-initialised thread-local `Cell` without a destructor, which neither
// allocates nor can be reached after it is gone (`try_with`).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc` above, with
        // this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The ring and the candidate behind one interface.
trait Broadcast: Send + Sync + 'static {
    fn with_max_bytes(slots: usize, max_bytes: usize) -> Self;
    fn push(&self, e: Entry);
    fn read(&self, pos: u64) -> Read;
    fn tail(&self) -> u64;
    fn capacity(&self) -> u64;
    fn find(&self, seq: u64) -> Option<u64>;
    fn bytes(&self) -> usize;
}

macro_rules! broadcast {
    ($ring:ident) => {
        impl Broadcast for $ring {
            fn with_max_bytes(slots: usize, max_bytes: usize) -> Self {
                $ring::with_max_bytes(slots, max_bytes)
            }
            fn push(&self, e: Entry) {
                $ring::push(self, e)
            }
            fn read(&self, pos: u64) -> Read {
                $ring::read(self, pos)
            }
            fn tail(&self) -> u64 {
                $ring::tail(self)
            }
            fn capacity(&self) -> u64 {
                $ring::capacity(self)
            }
            fn find(&self, seq: u64) -> Option<u64> {
                $ring::find(self, seq)
            }
            fn bytes(&self) -> usize {
                $ring::bytes(self)
            }
        }
    };
}

broadcast!(Ring);
broadcast!(LockFreeRing);

/// The sequence id of position `pos`: sparse, so that `find` can be asked
/// for ids that were never pushed.
fn seq_of(pos: u64) -> u64 {
    pos * 10 + 5
}

/// The frame pushed at position `pos`: every field derived from it, the
/// bytes in a `Bytes` that allocates its shared header on its first clone
/// (as a frame frozen at its exact capacity does).
fn entry(pos: u64) -> Entry {
    let frame = format!("frame {pos:020}").into_bytes().into_boxed_slice();
    Entry {
        seq: seq_of(pos),
        ts_ms: pos,
        frame: Bytes::from(frame),
        rows: vec![Row::new(format!(r#"{{"pos":{pos}}}"#).as_bytes(), &[], &[])].into(),
    }
}

/// Fails unless `e` is whole: the frame pushed at `pos`, every field of it.
fn check(e: &Entry, pos: u64) {
    assert_eq!(e.seq, seq_of(pos), "position and frame agree");
    assert_eq!(e.ts_ms, pos, "a whole entry");
    assert_eq!(e.frame, format!("frame {pos:020}"), "a whole frame");
    let rows: Vec<&[u8]> = e.rows.iter().map(Row::json).collect();
    assert_eq!(rows, [format!(r#"{{"pos":{pos}}}"#).as_bytes()], "its rows");
}

/// How a reader keeps up.
#[derive(Clone, Copy)]
enum Pace {
    /// Reads as fast as it can.
    Eager,
    /// After every `every` frames, waits until the writer is `ahead`
    /// positions past it (or done), so that it surely falls behind.
    Stalls { every: u64, ahead: u64 },
}

/// Reads every position from 0 until `sent` frames are accounted for;
/// returns (received, lagged).
fn read_all<R: Broadcast>(ring: &R, sent: u64, pace: Pace) -> (u64, u64) {
    let (mut pos, mut received, mut lagged) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + WAIT;
    while received + lagged < sent {
        assert!(Instant::now() < deadline, "reader stuck at {pos}");
        match ring.read(pos) {
            Read::Frame(e) => {
                // The frame at a position is the one pushed there, and
                // positions only grow: whole frames, in order.
                check(&e, pos);
                received += 1;
                pos += 1;
                if let Pace::Stalls { every, ahead } = pace
                    && received % every == 1
                {
                    let until = (pos + ahead).min(sent);
                    while ring.tail() < until {
                        assert!(Instant::now() < deadline, "writer stuck");
                        thread::yield_now();
                    }
                }
            }
            Read::Empty => thread::yield_now(),
            Read::Lagged => {
                // Overwritten: skip to the oldest frame a lap could hold
                // (one at a time while the byte bound drops frames).
                let oldest = ring.tail().saturating_sub(ring.capacity());
                let next = oldest.max(pos + 1);
                lagged += next - pos;
                pos = next;
            }
        }
    }
    assert_eq!(pos, sent, "read to the end");
    (received, lagged)
}

/// Asks for the ids near the tail until `done`: a found position is always
/// the one the id was pushed at, and an id never pushed is never found.
fn find_while<R: Broadcast>(ring: &R, done: &AtomicBool) {
    // Acquire pairs with the writer's Release store of `done`.
    while !done.load(Ordering::Acquire) {
        let tail = ring.tail();
        for q in tail.saturating_sub(4)..tail {
            if let Some(p) = ring.find(seq_of(q)) {
                assert_eq!(p, q, "find({}) names the wrong position", seq_of(q));
            }
            assert_eq!(ring.find(seq_of(q) + 1), None, "an id never pushed");
        }
        thread::yield_now();
    }
}

/// One writer pushing `sent` frames into `ring` while a reader of each pace
/// and a `find` caller run on other threads; `after_push` checks the ring
/// on the writer's thread after each push. Checks every reader's accounting
/// and returns each reader's (received, lagged).
fn stress<R: Broadcast>(
    ring: R,
    sent: u64,
    paces: &[Pace],
    after_push: impl Fn(&R),
) -> Vec<(u64, u64)> {
    let ring = Arc::new(ring);
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = paces
        .iter()
        .map(|&pace| {
            let ring = ring.clone();
            thread::spawn(move || read_all(&*ring, sent, pace))
        })
        .collect();
    let finder = {
        let (ring, done) = (ring.clone(), done.clone());
        thread::spawn(move || find_while(&*ring, &done))
    };
    for pos in 0..sent {
        ring.push(entry(pos));
        after_push(&*ring);
    }
    // Release pairs with the Acquire in `find_while`.
    done.store(true, Ordering::Release);
    finder.join().expect("finder");
    assert_eq!(ring.find(seq_of(sent - 1)), Some(sent - 1), "the newest");
    let counts: Vec<_> = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect();
    for &(received, lagged) in &counts {
        assert_eq!(received + lagged, sent, "capacity {}", ring.capacity());
        assert!(received > 0);
    }
    counts
}

fn readers_account_for_every_frame<R: Broadcast>() {
    for capacity in [4usize, 64, 1024] {
        let stall = Pace::Stalls {
            every: 10_000,
            ahead: capacity as u64 + 1,
        };
        let ring = R::with_max_bytes(capacity, MAX_RING_BYTES);
        let counts = stress(ring, 200_000, &[Pace::Eager, stall], |_| {});
        assert!(counts[1].1 > 0, "the stalling reader was lapped");
    }
}

#[test]
fn ring_readers_on_other_threads_account_for_every_frame() {
    readers_account_for_every_frame::<Ring>();
    readers_account_for_every_frame::<LockFreeRing>();
}

fn tiny_rings_lap_readers<R: Broadcast>() {
    for capacity in [1usize, 2, 3] {
        let stall = Pace::Stalls {
            every: 100,
            ahead: capacity as u64 + 1,
        };
        let ring = R::with_max_bytes(capacity, MAX_RING_BYTES);
        let paces = [Pace::Eager, Pace::Eager, stall];
        let counts = stress(ring, 50_000, &paces, |_| {});
        assert!(
            counts[2].1 > 0,
            "capacity {capacity}: the stalling reader lagged"
        );
    }
}

#[test]
fn a_ring_of_one_to_three_slots_laps_its_readers_without_tearing_a_frame() {
    tiny_rings_lap_readers::<Ring>();
    tiny_rings_lap_readers::<LockFreeRing>();
}

fn byte_bound_under_readers<R: Broadcast>() {
    // What one entry costs: 20 to 24 bytes more than `entry(0)`'s at most
    // (its row's text has up to 4 more digits).
    let cost = entry(0).cost();
    let bound = 5 * cost;
    // 64 slots, and the stalling reader waits 10 frames ahead: any lag it
    // sees is the byte bound's, which keeps 4 or 5 frames.
    let ring = R::with_max_bytes(64, bound);
    let stall = Pace::Stalls {
        every: 50,
        ahead: 10,
    };
    let counts = stress(ring, 50_000, &[Pace::Eager, stall], |ring| {
        assert!(ring.bytes() <= bound, "the bound holds after each push");
        let tail = ring.tail();
        assert!(
            matches!(ring.read(tail - 1), Read::Frame(_)),
            "the newest stays"
        );
        if tail > 5 {
            assert_eq!(ring.read(tail - 6), Read::Lagged, "dropped");
        }
    });
    assert!(
        counts[1].1 > 0,
        "the stalling reader lost frames to the bound"
    );
}

#[test]
fn the_byte_bound_drops_frames_under_readers_without_tearing_one() {
    byte_bound_under_readers::<Ring>();
    byte_bound_under_readers::<LockFreeRing>();
}

fn reads_allocate_nothing<R: Broadcast>() {
    // A thread's first read of the candidate registers it with arc-swap
    // (once per thread); the reads counted come after.
    let warm = R::with_max_bytes(1, MAX_RING_BYTES);
    warm.push(entry(0));
    assert!(matches!(warm.read(0), Read::Frame(_)));
    let ring = Arc::new(R::with_max_bytes(64, MAX_RING_BYTES));
    let sent = 50_000u64;
    let writer = {
        let ring = ring.clone();
        thread::spawn(move || {
            for pos in 0..sent {
                ring.push(entry(pos));
            }
        })
    };
    let (mut pos, mut reads, mut allocated) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + WAIT;
    while pos < sent {
        assert!(Instant::now() < deadline, "reader stuck at {pos}");
        let before = allocations();
        let read = ring.read(pos);
        allocated += allocations() - before;
        match read {
            Read::Frame(e) => {
                check(&e, pos);
                reads += 1;
                pos += 1;
            }
            Read::Empty => thread::yield_now(),
            Read::Lagged => pos = ring.tail().saturating_sub(ring.capacity()).max(pos + 1),
        }
    }
    writer.join().expect("writer");
    assert!(reads > 0);
    assert_eq!(allocated, 0, "allocations in {reads} reads");
}

#[test]
fn a_worker_reads_without_allocating() {
    reads_allocate_nothing::<Ring>();
    reads_allocate_nothing::<LockFreeRing>();
}

#[test]
fn the_lock_free_candidate_behaves_as_the_ring() {
    // One thread, small rings and tight byte bounds so that laps and drops
    // happen on most pushes; every read and find compared after each push.
    for (slots, max_bytes) in [(1, 1000), (3, 50), (5, usize::MAX), (8, 120)] {
        let ring = Ring::with_max_bytes(slots, max_bytes);
        let candidate = LockFreeRing::with_max_bytes(slots, max_bytes);
        let mut seq = 0u64;
        for i in 0..60u64 {
            seq += 1 + i % 3;
            let len = (i * 7 % 40) as usize + 1;
            let e = Entry {
                seq,
                ts_ms: i,
                frame: Bytes::from(vec![i as u8; len]),
                rows: Rows::default(),
            };
            ring.push(e.clone());
            candidate.push(e);
            assert_eq!(candidate.tail(), ring.tail());
            assert_eq!(
                candidate.bytes(),
                ring.bytes(),
                "{slots} slots, {max_bytes} B"
            );
            for p in 0..=ring.tail() {
                assert_eq!(candidate.read(p), ring.read(p), "pos {p}");
            }
            for s in 0..=seq + 1 {
                assert_eq!(candidate.find(s), ring.find(s), "seq {s}");
            }
        }
    }
    // An entry read out outlives its slot, and dropping the ring frees
    // every entry it held.
    let rows: Rows = vec![Row::new(b"{}", &["k"], &[])].into();
    let candidate = LockFreeRing::new(2);
    let e = |seq: u64| Entry {
        seq,
        ts_ms: 0,
        frame: Bytes::from(vec![seq as u8; 8]),
        rows: rows.clone(),
    };
    candidate.push(e(1));
    let Read::Frame(kept) = candidate.read(0) else {
        panic!("position 0 is written");
    };
    for seq in 2..=10 {
        candidate.push(e(seq));
    }
    assert_eq!(candidate.read(0), Read::Lagged);
    assert_eq!(kept, e(1), "the reader's copy is whole");
    // this test's, the reader's and the ring's two live entries
    assert_eq!(Arc::strong_count(&rows), 4);
    drop(candidate);
    drop(kept);
    assert_eq!(Arc::strong_count(&rows), 1, "nothing leaked");
}

/// A waker that records that it was woken.
struct Flag(AtomicBool, thread::Thread);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
        self.1.unpark();
    }
}

#[test]
fn an_inbox_waiter_is_woken_for_every_publish_from_another_thread() {
    let s =
        Settings::from_toml("[server]\nworkers = 1\nreplay = 64\n[[topics]]\npattern = \"*\"\n")
            .unwrap();
    let hub = Arc::new(Hub::new(Arc::new(s)));
    let topics: Vec<_> = (0..4)
        .map(|i| hub.topic(&format!("t{i}")).unwrap())
        .collect();
    for t in &topics {
        t.add_interest(0, 0);
    }
    let sent_per_topic = 20_000u64;
    let publisher = {
        let hub = hub.clone();
        let topics = topics.clone();
        thread::spawn(move || {
            for n in 0..sent_per_topic {
                for t in &topics {
                    let mut body = format!(r#"{{"n":{n}}}"#).into_bytes();
                    accept(&hub, t, &mut body, Format::Json, "test").unwrap();
                }
            }
        })
    };
    // The worker's side, on this thread: wait on the inbox, then read each
    // queued topic's ring from its cursor.
    let flag = Arc::new(Flag(AtomicBool::new(false), thread::current()));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let inbox = hub.inbox(0);
    let mut cursors = vec![0u64; topics.len()];
    let mut counted = vec![0u64; topics.len()];
    let deadline = Instant::now() + WAIT;
    while counted.iter().sum::<u64>() < sent_per_topic * topics.len() as u64 {
        match inbox.poll_ready(&mut cx) {
            Poll::Ready(()) => {}
            Poll::Pending => {
                // Only a wake-up may end this wait; a lost one times out.
                while !flag.0.swap(false, Ordering::Acquire) {
                    assert!(
                        Instant::now() < deadline,
                        "lost wake-up: {counted:?} of {sent_per_topic} each"
                    );
                    thread::park_timeout(Duration::from_millis(50));
                }
                continue;
            }
        }
        while let Some(t) = inbox.pop() {
            t.dequeued(0);
            let i = topics.iter().position(|x| Arc::ptr_eq(x, &t)).unwrap();
            let ring = t.ring(0).expect("the raw ring");
            while cursors[i] < ring.tail() {
                match ring.read(cursors[i]) {
                    Read::Frame(_) => {
                        counted[i] += 1;
                        cursors[i] += 1;
                    }
                    Read::Lagged => {
                        let next = ring.tail().saturating_sub(ring.capacity());
                        counted[i] += next - cursors[i];
                        cursors[i] = next;
                    }
                    Read::Empty => break,
                }
            }
        }
    }
    publisher.join().unwrap();
    assert_eq!(counted, vec![sent_per_topic; topics.len()]);
}
