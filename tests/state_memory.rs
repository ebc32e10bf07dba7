//! Heap bytes a keyed topic's state holds per row, counted by a global
//! allocator wrapper around the system allocator: the exact live bytes the
//! hub asked for (allocator slack and retention come on top; see
//! scripts/memory.py for a real server's RSS). One test per binary, so that
//! nothing else allocates while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use sluice::config::Settings;
use sluice::hub::Hub;
use sluice::sources::publish::parse_rows;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is
// added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Publishes `n` rows `{"id":N,"v":1}` (with `"p"` of `pad` bytes when
/// `pad > 0`) in batches of 10,000 to a topic keyed by `id`, then 32 one-row
/// updates so that the ring (16 slots) no longer holds the big frames.
/// Returns (heap bytes per row, JSON bytes per row).
fn measure(pad: usize, n: usize) -> (f64, f64) {
    let s = Settings::from_toml(
        "[server]\nworkers = 1\nreplay = 16\n[[topics]]\npattern = \"k/*\"\nkey = [\"id\"]\n",
    )
    .unwrap();
    let hub = Hub::new(Arc::new(s));
    let t = hub.topic("k/m").unwrap();
    let p = "x".repeat(pad);
    let before = LIVE.load(Ordering::Relaxed);
    let mut json = 0usize;
    for start in (0..n).step_by(10_000) {
        let rows: Vec<String> = (start..(start + 10_000).min(n))
            .map(|i| {
                if pad > 0 {
                    format!(r#"{{"id":{i},"v":1,"p":"{p}"}}"#)
                } else {
                    format!(r#"{{"id":{i},"v":1}}"#)
                }
            })
            .collect();
        json += rows.iter().map(String::len).sum::<usize>();
        let mut body = format!("[{}]", rows.join(",")).into_bytes();
        let rows = parse_rows(&mut body, false, &t.key_fields, &t.fields).unwrap();
        hub.publish(&t, rows).unwrap();
    }
    for _ in 0..32 {
        let mut b = br#"{"id":0,"v":2}"#.to_vec();
        let rows = parse_rows(&mut b, false, &t.key_fields, &t.fields).unwrap();
        hub.publish(&t, rows).unwrap();
    }
    let live = (LIVE.load(Ordering::Relaxed) - before) as f64;
    (live / n as f64, json as f64 / n as f64)
}

#[test]
fn rows_cost_their_bytes_and_a_small_fixed_overhead() {
    // A million tiny rows (19 bytes of JSON each): before, every row kept
    // simd-json's 1 KiB encode buffer and a second copy of its key; then an
    // `Arc` per row, a `Vec<Row>` slot and a hashbrown index cost ~55 bytes
    // of fixed overhead per row (3.9x). The arena table is within 2x.
    let (per_row, json) = measure(0, 1_000_000);
    eprintln!("tiny rows: {per_row:.1} heap bytes per row, {json:.1} JSON bytes");
    assert!(
        per_row <= 2.0 * json,
        "{per_row:.1} heap bytes per row of {json:.1} JSON bytes"
    );
    // Rows of ~100 bytes: the state is at most twice their JSON.
    let (per_row, json) = measure(80, 300_000);
    eprintln!("100-byte rows: {per_row:.1} heap bytes per row, {json:.1} JSON bytes");
    assert!(
        per_row <= 2.0 * json,
        "{per_row:.1} heap bytes per row of {json:.1} JSON bytes"
    );
}
