//! Micro-benchmarks of the hot pieces, each beside its naive baseline.
//!
//! * `encode/*`: building one update frame of k pre-encoded rows
//!   (`sse::update_frame`) versus re-serialising the rows with serde_json,
//!   which is what "parse once, encode once" avoids.
//! * `filter/*`: the frame a filtered group sends for one 20-row update of
//!   which half pass (`Topic::filtered_frame`: the rows' pre-encoded bytes
//!   re-joined) versus parsing and re-serialising the rows with serde_json.
//! * `ring/*`: one push plus a read by each of 4 worker cursors, on one
//!   thread (`hub::Ring`) versus a `Mutex<VecDeque>` broadcast log
//!   (`benches/ring.rs` times the ring under real threads against lock-free
//!   candidates).
//! * `coalesce/*`: 100 one-row updates over 10 keys followed by one tick of
//!   a 1 s tier (dirty marking, then one frame of the 10 latest rows) versus
//!   the same updates on the raw tier alone (one frame per update).
//! * `publish/parse`: parsing a 20-row publish body into rows
//!   (`sources::publish::parse_rows`, simd-json) versus serde_json.
//!
//! * `metering/*`: what a metered stream adds to each write: counting the
//!   bytes and the update frames it completed (`Subscriber::count_written`,
//!   a write of one one-row update frame, as in the fan-out) versus the same
//!   call on a stream that is not metered (one branch).
//!
//! Run: `cargo bench --bench hot` (pin it: `taskset -c 1 cargo bench ...`).

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Mutex;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::Arc;

use sluice::config::Settings;
use sluice::hub::filter::Clause;
use sluice::hub::{Entry, Filter, Hub, Read, Ring, Row, Rows};
use sluice::sources::publish::parse_rows;
use sluice::sse;

fn row(i: usize) -> String {
    format!(
        r#"{{"event_id":"nba-{i:03}","bookmaker":"pinnacle","market":"h2h","outcome":"home","price_american":-110,"kind":"game","ts_ns":1732330000123456789}}"#
    )
}

/// One update frame of 4 pre-encoded rows (`sse::update_frame`: envelope and
/// SSE framing around the rows' bytes), against building the same frame with
/// serde_json from parsed rows.
fn encode(c: &mut Criterion) {
    let rows: Vec<Bytes> = (0..4).map(|i| Bytes::from(row(i))).collect();
    let values: Vec<serde_json::Value> = (0..4)
        .map(|i| serde_json::from_str(&row(i)).unwrap())
        .collect();
    c.bench_function("encode/update_frame_4_rows", |b| {
        b.iter(|| {
            sse::update_frame(
                "odds_update",
                "odds/basketball_nba",
                1,
                2,
                black_box(&rows).iter().map(|r| &r[..]),
            )
        })
    });
    c.bench_function("encode/baseline_serde_4_rows", |b| {
        b.iter(|| {
            let v = serde_json::json!({"type":"odds_update","topic":"odds/basketball_nba","count":4,"timestamp":2,"data":black_box(&values)});
            format!("event: odds_update\nid: 1\ndata: {v}\n\n")
        })
    });
}

/// One push into a topic's ring and one read by each of 4 worker cursors
/// (`hub::Ring`, a lock per slot), against a `Mutex<VecDeque>` log.
fn ring(c: &mut Criterion) {
    let frame = Bytes::from(row(0));
    let rows = Rows::default();
    let r = Ring::new(1024);
    let mut cursors = [0u64; 4];
    c.bench_function("ring/push_and_4_reads", |b| {
        b.iter(|| {
            r.push(Entry {
                seq: 7,
                ts_ms: 0,
                frame: frame.clone(),
                rows: rows.clone(),
            });
            for cur in cursors.iter_mut() {
                if let Read::Frame(e) = r.read(*cur) {
                    black_box(e);
                }
                *cur += 1;
            }
        })
    });
    let log: Mutex<VecDeque<(u64, u64, Bytes)>> = Mutex::new(VecDeque::new());
    let mut pos = 0u64;
    let mut cursors = [0u64; 4];
    c.bench_function("ring/baseline_mutex_deque", |b| {
        b.iter(|| {
            {
                let mut l = log.lock().unwrap();
                if l.len() == 1024 {
                    l.pop_front();
                }
                l.push_back((pos, 7, frame.clone()));
                pos += 1;
            }
            for cur in cursors.iter_mut() {
                let l = log.lock().unwrap();
                let first = l.front().map_or(0, |e| e.0);
                if let Some(e) = l.get((*cur - first) as usize) {
                    black_box(e.2.clone());
                }
                *cur += 1;
            }
        })
    });
}

fn hub(tiers: &str) -> Hub {
    let s = Settings::from_toml(&format!(
        "[server]\nworkers = 1\n[auth]\nanonymous_tier = \"raw\"\n{tiers}\n\
         [[topics]]\npattern = \"*\"\nkey = [\"event_id\"]\nfilters = {{ books = \"bookmaker\" }}\n"
    ))
    .expect("bench config");
    Hub::new(Arc::new(s))
}

fn odds_row(i: usize, book: &str) -> Row {
    let json = row(i).replace("pinnacle", book);
    Row::new(json.as_bytes(), &[&format!("nba-{i:03}")], &[Some(book)])
}

/// The frame one filtered group sends for a 20-row ring entry of which 10
/// rows pass (`Topic::filtered_frame`: rows tested on their kept field
/// values, passing rows' bytes re-joined), against parsing, testing and
/// re-serialising the rows with serde_json.
fn filter(c: &mut Criterion) {
    let h = hub("[tiers.raw]\ncoalesce_ms = 0");
    let t = h.topic("odds/nba").unwrap();
    let rows: Vec<Row> = (0..20)
        .map(|i| odds_row(i, if i % 2 == 0 { "pinnacle" } else { "novig" }))
        .collect();
    h.publish(&t, rows).unwrap();
    let Read::Frame(entry) = t.ring(0).unwrap().read(0) else {
        panic!("a frame")
    };
    let f = Filter::new(vec![Clause::parse(0, "pinnacle").unwrap()]).unwrap();
    c.bench_function("filter/rejoin_10_of_20_rows", |b| {
        b.iter(|| t.filtered_frame(black_box(&entry), Some(&f)))
    });
    let json_rows: Vec<String> = entry
        .rows
        .iter()
        .map(|r| String::from_utf8(r.json().to_vec()).unwrap())
        .collect();
    c.bench_function("filter/baseline_serde_10_of_20_rows", |b| {
        b.iter(|| {
            let kept: Vec<serde_json::Value> = black_box(&json_rows)
                .iter()
                .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
                .filter(|v| v["bookmaker"] == "pinnacle")
                .collect();
            let v = serde_json::json!({"type":"update","topic":"odds/nba","count":kept.len(),"timestamp":2,"data":kept});
            format!("event: update\nid: 1\ndata: {v}\n\n")
        })
    });
}

/// 100 one-row publishes over 10 keys with the raw and a 1 s cadence active,
/// then the 1 s tick (`Hub::flush_cadence`: the 10 latest rows, one frame),
/// against the same publishes with only the raw cadence: the difference is
/// what coalescing adds (dirty marking and one tick) per 100 updates.
fn coalesce(c: &mut Criterion) {
    let h = hub("[tiers.raw]\ncoalesce_ms = 0\n[tiers.one]\ncoalesce_ms = 1000");
    let t = h.topic("odds/co").unwrap();
    t.start(1, None, None); // the 1 s cadence is active
    let mut now = 0u64;
    c.bench_function("coalesce/100_updates_10_keys_then_tick", |b| {
        b.iter(|| {
            for i in 0..100 {
                h.publish(&t, vec![odds_row(i % 10, "pinnacle")]).unwrap();
            }
            now += 1000;
            black_box(h.flush_cadence(1, now))
        })
    });
    let raw = hub("[tiers.raw]\ncoalesce_ms = 0");
    let t = raw.topic("odds/raw").unwrap();
    c.bench_function("coalesce/baseline_100_updates_raw_only", |b| {
        b.iter(|| {
            for i in 0..100 {
                raw.publish(&t, vec![odds_row(i % 10, "pinnacle")]).unwrap();
            }
        })
    });
}

/// Parsing a 20-row JSON array publish body into rows with their keys
/// (`sources::publish::parse_rows`, simd-json), against serde_json.
fn publish(c: &mut Criterion) {
    let body = format!("[{}]", (0..20).map(row).collect::<Vec<_>>().join(","));
    let key: Vec<String> = ["event_id", "bookmaker", "market", "outcome"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    c.bench_function("publish/parse_20_rows_simd_json", |b| {
        b.iter(|| {
            let mut buf = body.clone().into_bytes();
            parse_rows(&mut buf, false, &key, &[]).unwrap()
        })
    });
    // one row per publish, as the peer harness's publisher sends them
    let one = row(7);
    c.bench_function("publish/parse_1_row_simd_json", |b| {
        b.iter(|| {
            let mut buf = one.clone().into_bytes();
            parse_rows(&mut buf, false, &key, &[]).unwrap()
        })
    });
    c.bench_function("publish/baseline_serde_json_20_rows", |b| {
        b.iter(|| {
            let v: Vec<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_str(black_box(&body)).unwrap();
            v.iter()
                .map(|o| {
                    let k: Vec<String> = key.iter().map(|f| o[f].to_string()).collect();
                    (serde_json::to_vec(o).unwrap(), k.join("\u{1f}"))
                })
                .collect::<Vec<_>>()
        })
    });
}

fn metering(c: &mut Criterion) {
    use sluice::server::worker::iovec::FrameBatch;
    use sluice::server::worker::meter::WorkerMeter;
    use sluice::server::worker::subscriber::Subscriber;
    let hub = hub("[tiers.raw]\ncoalesce_ms = 0");
    let topic = hub.topic("test").unwrap();
    let (tx, _rx) = std::sync::mpsc::channel();
    let meter = WorkerMeter::new(0, tx);
    let rows = [Bytes::from(row(1))];
    let update = sse::update_frame(
        "update",
        "test",
        42,
        1_700_000_000_000,
        rows.iter().map(|b| &b[..]),
    );
    let batch_of = |sub: &Subscriber| {
        sub.push(std::rc::Rc::new(update.clone()));
        let mut batch = FrameBatch::new();
        sub.take_into(&mut batch);
        batch
    };
    let metered =
        Subscriber::new(0, 15, 0, true).metered(Box::new(meter.start("k", &topic, "raw", 100)));
    let batch = batch_of(&metered);
    let n = update.len();
    c.bench_function("metering/count_a_write_of_1_update", |b| {
        b.iter(|| metered.wrote(black_box(&batch), black_box(n)))
    });
    let plain = Subscriber::new(0, 15, 0, true);
    let batch = batch_of(&plain);
    c.bench_function("metering/baseline_unmetered_write", |b| {
        b.iter(|| plain.wrote(black_box(&batch), black_box(n)))
    });
}

criterion_group!(benches, encode, filter, ring, coalesce, publish, metering);
criterion_main!(benches);
