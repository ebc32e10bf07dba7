//! Unit tests of the metering thread: when minutes are written, the
//! record lines byte for byte, the totals, and the seconds format.

use std::path::{Path, PathBuf};

use super::*;
use crate::config::Settings;
use crate::hub::Hub;

/// A writer for `workers` workers on a fresh file; its lines come
/// back from `lines`.
fn writer(workers: usize) -> (Writer, PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "sluice-metering-unit-{}-{}.jsonl",
        std::process::id(),
        fastrand::u64(..)
    ));
    let file = open(&path).unwrap();
    let usage = Arc::new(Mutex::new(Usage::new()));
    let w = Writer::new(path.clone(), file, Duration::from_secs(1), workers, usage);
    (w, path)
}

fn lines(w: &mut Writer, path: &Path) -> Vec<String> {
    w.write_out();
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn delta(key: &str, minute_ms: u64, stream_ms: u64, events: u64, bytes: u64) -> Msg {
    Msg::Delta {
        key: key.into(),
        minute_ms,
        stream_ms,
        events,
        bytes,
    }
}

#[test]
fn a_minute_is_written_once_every_worker_is_done_with_it() {
    let (mut w, path) = writer(2);
    let m = 1_700_000_040_000;
    w.handle(delta("a", m, 60_000, 3, 300));
    w.handle(delta("a", m, 1_500, 1, 100));
    w.handle(delta("b", m, 2_000, 0, 50));
    w.handle(Msg::MinuteDone {
        worker: 0,
        minute_ms: m,
    });
    assert!(lines(&mut w, &path).is_empty(), "worker 1 is not done");
    w.handle(delta("a", m + MINUTE_MS, 5, 0, 0));
    w.handle(Msg::MinuteDone {
        worker: 1,
        minute_ms: m,
    });
    assert_eq!(
        lines(&mut w, &path),
        [
            format!(
                r#"{{"type":"minute","key":"a","minute_ms":{m},"stream_seconds":61.5,"events":4,"bytes":400,"published_rows":0}}"#
            ),
            format!(
                r#"{{"type":"minute","key":"b","minute_ms":{m},"stream_seconds":2.0,"events":0,"bytes":50,"published_rows":0}}"#
            ),
        ]
    );
    // The next minute waits for both workers again; a stopped worker
    // waits for nothing.
    w.handle(Msg::MinuteDone {
        worker: 0,
        minute_ms: m + MINUTE_MS,
    });
    assert_eq!(lines(&mut w, &path).len(), 2);
    w.handle(Msg::WorkerDone { worker: 1 });
    let all = lines(&mut w, &path);
    assert_eq!(all.len(), 3);
    assert!(all[2].contains(&format!(r#""minute_ms":{}"#, m + MINUTE_MS)));
    let u = w.usage.lock().unwrap()["a"];
    assert_eq!((u.stream_ms, u.events, u.bytes), (61_505, 4, 400));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn stream_records_are_written_at_once_and_open_counts_follow_them() {
    let (mut w, path) = writer(1);
    let s = Settings::from_toml("[[topics]]\npattern = \"*\"\n").unwrap();
    let hub = Hub::new(Arc::new(s));
    w.handle(Msg::Opened { key: "k\"1".into() });
    w.handle(Msg::Opened { key: "k\"1".into() });
    w.handle(Msg::Closed(Box::new(StreamRecord {
        key: "k\"1".into(),
        topic: hub.topic("odds/nba").unwrap(),
        tier: "scale".into(),
        start_ms: 1_000,
        end_ms: 3_250,
        events: 7,
        bytes: 900,
        close: "client",
    })));
    assert_eq!(
        lines(&mut w, &path),
        [
            r#"{"type":"stream","key":"k\"1","topic":"odds/nba","tier":"scale","start_ms":1000,"end_ms":3250,"seconds":2.25,"events":7,"bytes":900,"close":"client"}"#
        ]
    );
    let u = w.usage.lock().unwrap()["k\"1"];
    assert_eq!((u.streams_open, u.streams_total), (1, 2));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn published_rows_land_in_the_minute_they_arrive_in() {
    let (mut w, path) = writer(1);
    w.handle(Msg::Published {
        key: "pub".into(),
        rows: 3,
    });
    w.handle(Msg::Published {
        key: "pub".into(),
        rows: 2,
    });
    assert!(lines(&mut w, &path).is_empty());
    // A stop writes every minute held.
    assert!(w.handle(Msg::Stop));
    for (minute, keys) in std::mem::take(&mut w.pending) {
        w.write_minute(minute, &keys);
    }
    let all = lines(&mut w, &path);
    let rows: u64 = all
        .iter()
        .map(|l| {
            assert!(
                l.starts_with(r#"{"type":"minute","key":"pub","minute_ms":"#),
                "{l}"
            );
            assert!(
                l.contains(r#""stream_seconds":0.0,"events":0,"bytes":0"#),
                "{l}"
            );
            let n = l.rsplit(':').next().unwrap().trim_end_matches('}');
            n.parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(rows, 5);
    assert_eq!(w.usage.lock().unwrap()["pub"].published_rows, 5);
    let _ = std::fs::remove_file(&path);
}

fn secs(ms: u64) -> String {
    let mut b = BytesMut::new();
    put_ms_as_seconds(&mut b, ms);
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn seconds_keep_milliseconds() {
    assert_eq!(secs(0), "0.0");
    assert_eq!(secs(5), "0.005");
    assert_eq!(secs(50), "0.05");
    assert_eq!(secs(1500), "1.5");
    assert_eq!(secs(1234), "1.234");
    assert_eq!(secs(60_000), "60.0");
    assert_eq!(secs(u64::MAX), "18446744073709551.615");
}

#[test]
fn minutes_start_on_the_minute() {
    assert_eq!(minute_of(0), 0);
    assert_eq!(minute_of(59_999), 0);
    assert_eq!(minute_of(60_000), 60_000);
    assert_eq!(minute_of(1_700_000_012_345), 1_699_999_980_000);
}
