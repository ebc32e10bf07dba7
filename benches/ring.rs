//! The broadcast ring under real threads: `hub::Ring` (a `Mutex` per slot)
//! against two lock-free-for-readers candidates, arc-swap slots
//! (`support/lockfree_ring.rs`, the whole ring API, stress-tested in
//! `tests/concurrency.rs`) and crossbeam-epoch slots (below: push and read
//! only, enough to time them). The server keeps the mutex ring: the arc-swap
//! ring was slower and the epoch one no clear win (see `src/hub/ring.rs`;
//! figures in `bench-results/ring-2026-11-23.jsonl`).
//!
//! * `ring_mt/{mutex,arcswap,epoch}/readers_N`: one writer thread pushing
//!   frames while N reader threads each read every position, as workers do
//!   (the writer never laps them: it waits while it is half a ring ahead of
//!   the slowest, so every reader reads every frame). Throughput counts
//!   frames; reads/s = frames/s × N. Timed from the readers' start to the
//!   last reader reaching the last frame.
//! * `ring_push/{mutex,arcswap,epoch}/readers_N`: the cost of one push while
//!   N threads keep reading the newest frame (the slot next to the one being
//!   written), N = 0 being the push alone.
//! * `ring_read/{mutex,arcswap,epoch}`: one read on one thread, no writer.
//!
//! Frames come from a pool of distinct `Bytes` and row lists bigger than the
//! ring, so a push or a read costs the ring's work plus two reference counts,
//! not an allocator's (except the candidates' own allocation per push, under
//! the server's allocator).
//!
//! Run: `cargo bench --bench ring`. On a busy or small machine run it several
//! times and compare medians; `readers_2` puts three busy threads on the
//! cores it gets.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_utils::CachePadded;
use sluice::hub::{Entry, Read, Ring, Row, Rows};

#[path = "support/lockfree_ring.rs"]
mod lockfree_ring;
use lockfree_ring::LockFreeRing;

// The server's allocator: a candidate's push allocates its slot's entry.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Slots per ring, as a topic's default replay window.
const SLOTS: usize = 1024;
/// Distinct frames cycled through (more than a ring holds).
const POOL: usize = 4 * SLOTS;
/// How far ahead of its slowest reader the writer may run.
const LEAD: u64 = SLOTS as u64 / 2;
/// How often a reader publishes its cursor to the writer.
const REPORT_EVERY: u64 = 64;

/// The rings behind one interface.
trait Broadcast: Send + Sync + 'static {
    const NAME: &'static str;
    fn make(slots: usize) -> Self;
    fn push(&self, e: Entry);
    fn read(&self, pos: u64) -> Read;
    fn tail(&self) -> u64;
}

impl Broadcast for Ring {
    const NAME: &'static str = "mutex";
    fn make(slots: usize) -> Self {
        Ring::new(slots)
    }
    fn push(&self, e: Entry) {
        Ring::push(self, e)
    }
    fn read(&self, pos: u64) -> Read {
        Ring::read(self, pos)
    }
    fn tail(&self) -> u64 {
        Ring::tail(self)
    }
}

impl Broadcast for LockFreeRing {
    const NAME: &'static str = "arcswap";
    fn make(slots: usize) -> Self {
        LockFreeRing::new(slots)
    }
    fn push(&self, e: Entry) {
        LockFreeRing::push(self, e)
    }
    fn read(&self, pos: u64) -> Read {
        LockFreeRing::read(self, pos)
    }
    fn tail(&self) -> u64 {
        LockFreeRing::tail(self)
    }
}

/// Frames of about the size of a one-row update, each its own `Bytes` and
/// row list.
fn pool() -> Vec<Entry> {
    (0..POOL)
        .map(|i| {
            let json = format!(
                r#"{{"event_id":"nba-{i:04}","bookmaker":"pinnacle","market":"h2h","outcome":"home","price_american":-110}}"#
            );
            let frame = format!(
                "event: odds_update\nid: {i}\ndata: {{\"type\":\"odds_update\",\"data\":[{json}]}}\n\n"
            );
            let rows: Rows = vec![Row::new(json.as_bytes(), &["k"], &[])].into();
            Entry {
                seq: i as u64,
                ts_ms: 0,
                frame: Bytes::from(frame),
                rows,
            }
        })
        .collect()
}

/// One writer and `readers` reader threads over `frames` frames; the time
/// from the start signal until every reader has read the last one.
fn run_threaded<R: Broadcast>(pool: &Arc<Vec<Entry>>, readers: usize, frames: u64) -> Duration {
    let ring = Arc::new(R::make(SLOTS));
    let cursors: Arc<Vec<CachePadded<AtomicU64>>> = Arc::new(
        (0..readers)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect(),
    );
    let start = Arc::new(Barrier::new(readers + 1));
    let handles: Vec<_> = (0..readers)
        .map(|r| {
            let (ring, cursors, start) = (ring.clone(), cursors.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let mut pos = 0u64;
                while pos < frames {
                    match ring.read(pos) {
                        Read::Frame(e) => {
                            black_box(e);
                            pos += 1;
                            if pos.is_multiple_of(REPORT_EVERY) {
                                // Relaxed: the writer only paces on it.
                                cursors[r].store(pos, Ordering::Relaxed);
                            }
                        }
                        Read::Empty => thread::yield_now(),
                        Read::Lagged => panic!("the writer lapped a reader at {pos}"),
                    }
                }
                // Relaxed: see above.
                cursors[r].store(u64::MAX, Ordering::Relaxed);
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    for i in 0..frames {
        if i.is_multiple_of(REPORT_EVERY) {
            // Relaxed: a stale cursor only makes the writer wait longer.
            while cursors
                .iter()
                .any(|c| i.saturating_sub(c.load(Ordering::Relaxed)) > LEAD)
            {
                thread::yield_now();
            }
        }
        ring.push(pool[(i as usize) % POOL].clone());
    }
    for h in handles {
        h.join().expect("reader");
    }
    t0.elapsed()
}

fn threaded(c: &mut Criterion) {
    let pool = Arc::new(pool());
    let mut g = c.benchmark_group("ring_mt");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    for readers in [1usize, 2] {
        let id = format!("readers_{readers}");
        g.bench_function(BenchmarkId::new(Ring::NAME, &id), |b| {
            b.iter_custom(|n| run_threaded::<Ring>(&pool, readers, n))
        });
        g.bench_function(BenchmarkId::new(LockFreeRing::NAME, &id), |b| {
            b.iter_custom(|n| run_threaded::<LockFreeRing>(&pool, readers, n))
        });
        g.bench_function(BenchmarkId::new(EpochRing::NAME, &id), |b| {
            b.iter_custom(|n| run_threaded::<EpochRing>(&pool, readers, n))
        });
    }
    g.finish();
}

/// Push cost with `readers` threads reading the newest frame meanwhile.
fn push_with<R: Broadcast>(c: &mut Criterion, pool: &[Entry], readers: usize) {
    let ring = Arc::new(R::make(SLOTS));
    ring.push(pool[0].clone());
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..readers)
        .map(|_| {
            let (ring, stop) = (ring.clone(), stop.clone());
            thread::spawn(move || {
                // Relaxed: only ends the loop.
                while !stop.load(Ordering::Relaxed) {
                    let tail = ring.tail();
                    black_box(ring.read(tail - 1));
                }
            })
        })
        .collect();
    let mut i = 0usize;
    c.benchmark_group("ring_push")
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .bench_function(
            BenchmarkId::new(R::NAME, format!("readers_{readers}")),
            |b| {
                b.iter_batched(
                    || {
                        i = (i + 1) % POOL;
                        pool[i].clone()
                    },
                    |e| ring.push(e),
                    BatchSize::SmallInput,
                )
            },
        );
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("reader");
    }
}

fn push(c: &mut Criterion) {
    let pool = pool();
    for readers in [0usize, 1, 2] {
        push_with::<Ring>(c, &pool, readers);
        push_with::<LockFreeRing>(c, &pool, readers);
        push_with::<EpochRing>(c, &pool, readers);
    }
}

fn read_one<R: Broadcast>(c: &mut Criterion, pool: &[Entry]) {
    let ring = R::make(SLOTS);
    for e in &pool[..SLOTS] {
        ring.push(e.clone());
    }
    let mut pos = 0u64;
    c.benchmark_group("ring_read")
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .bench_function(R::NAME, |b| {
            b.iter(|| {
                pos = (pos + 1) % SLOTS as u64;
                black_box(ring.read(pos))
            })
        });
}

fn read(c: &mut Criterion) {
    let pool = pool();
    read_one::<Ring>(c, &pool);
    read_one::<LockFreeRing>(c, &pool);
    read_one::<EpochRing>(c, &pool);
}

/// The second candidate, for comparison only: crossbeam-epoch slots (readers
/// pin, the writer defers the old entry's drop). No byte bound (the others'
/// is never reached here) and no `find`. Beside being slower, it frees a
/// replaced frame only once the epoch advances past it, so its memory bound
/// would be soft.
mod epoch_ring {
    use std::sync::atomic::{AtomicU64, Ordering};

    use crossbeam_epoch::{self as epoch, Atomic, Owned};
    use crossbeam_utils::CachePadded;
    use sluice::hub::{Entry, Read};

    struct Stamped {
        pos: u64,
        entry: Entry,
    }

    pub struct EpochRing {
        slots: Box<[Atomic<Stamped>]>,
        tail: CachePadded<AtomicU64>,
    }

    impl EpochRing {
        pub fn new(slots: usize) -> EpochRing {
            EpochRing {
                slots: (0..slots.max(1)).map(|_| Atomic::null()).collect(),
                tail: CachePadded::new(AtomicU64::new(0)),
            }
        }

        fn slot(&self, pos: u64) -> &Atomic<Stamped> {
            &self.slots[(pos % self.slots.len() as u64) as usize]
        }

        pub fn tail(&self) -> u64 {
            // Acquire pairs with the Release store in `push`.
            self.tail.load(Ordering::Acquire)
        }

        pub fn push(&self, entry: Entry) {
            // Relaxed: only the writer stores the tail.
            let pos = self.tail.load(Ordering::Relaxed);
            let guard = epoch::pin();
            // AcqRel: publishes the new entry to readers' Acquire loads and
            // takes the old one's contents before it is dropped.
            let old =
                self.slot(pos)
                    .swap(Owned::new(Stamped { pos, entry }), Ordering::AcqRel, &guard);
            if !old.is_null() {
                // SAFETY: `old` was unlinked by the swap above, so no reader
                // that pins after it can load it; readers pinned before keep
                // it alive until their guards go, which `defer_destroy` waits
                // for. Only this writer unlinks entries, once each.
                unsafe { guard.defer_destroy(old) };
            }
            // Release pairs with the Acquire in `tail`.
            self.tail.store(pos + 1, Ordering::Release);
        }

        pub fn read(&self, pos: u64) -> Read {
            if pos >= self.tail() {
                return Read::Empty;
            }
            let guard = epoch::pin();
            // Acquire pairs with the writer's AcqRel swap.
            let p = self.slot(pos).load(Ordering::Acquire, &guard);
            // SAFETY: a non-null slot pointer came from `Owned::new` and is
            // destroyed only through `defer_destroy` after being unlinked;
            // `guard` is pinned, so it outlives this borrow.
            match unsafe { p.as_ref() } {
                Some(s) if s.pos == pos => Read::Frame(s.entry.clone()),
                _ => Read::Lagged,
            }
        }
    }

    impl Drop for EpochRing {
        fn drop(&mut self) {
            for slot in self.slots.iter() {
                // SAFETY: `&mut self`: no reader or writer is left, so the
                // live entries can be taken without a pinned guard.
                unsafe {
                    let p = slot.load(Ordering::Relaxed, epoch::unprotected());
                    if !p.is_null() {
                        drop(p.into_owned());
                    }
                }
            }
        }
    }
}

use epoch_ring::EpochRing;

impl Broadcast for EpochRing {
    const NAME: &'static str = "epoch";
    fn make(slots: usize) -> Self {
        EpochRing::new(slots)
    }
    fn push(&self, e: Entry) {
        EpochRing::push(self, e)
    }
    fn read(&self, pos: u64) -> Read {
        EpochRing::read(self, pos)
    }
    fn tail(&self) -> u64 {
        EpochRing::tail(self)
    }
}

criterion_group!(benches, threaded, push, read);
criterion_main!(benches);
