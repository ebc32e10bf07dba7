//! Micro-benchmarks of the hot pieces, each beside its naive baseline.
//!
//! * `encode/*`: building one update frame of k pre-encoded rows
//!   (`sse::update_frame`) versus re-serialising the rows with serde_json,
//!   which is what "parse once, encode once" avoids.
//! * `ring/*`: one push plus a read by each of 2 worker cursors
//!   (`hub::Ring`) versus a `Mutex<VecDeque>` broadcast log.
//! * `publish/parse`: parsing a 20-row publish body into rows
//!   (`sources::publish::parse_rows`, simd-json) versus serde_json.
//!
//! Run: `cargo bench --bench hot` (pin it: `taskset -c 1 cargo bench ...`).

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Mutex;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use sluice::hub::{Entry, Read, Ring, Rows};
use sluice::sources::publish::parse_rows;
use sluice::sse;

fn row(i: usize) -> String {
    format!(
        r#"{{"event_id":"nba-{i:03}","bookmaker":"pinnacle","market":"h2h","outcome":"home","price_american":-110,"kind":"game","ts_ns":1732330000123456789}}"#
    )
}

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
                black_box(&rows).iter(),
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

fn ring(c: &mut Criterion) {
    let frame = Bytes::from(row(0));
    let rows = Rows::default();
    let r = Ring::new(1024);
    let mut cursors = [0u64; 2];
    c.bench_function("ring/push_and_2_reads", |b| {
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
    let mut cursors = [0u64; 2];
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

criterion_group!(benches, encode, ring, publish);
criterion_main!(benches);
