//! Usage metering (SPEC §9): the JSONL file against what independent clients
//! received (update events, and body bytes: every SSE frame after the
//! response head), across a graceful stop (nothing lost) and a `kill -9`
//! (whole lines, nothing written lost); `GET /v1/usage`; the file reopened
//! on SIGHUP. IO tests run on both drivers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// The harness config plus a business-tier key and `[metering]` writing
/// to `path` with `flush_s = 1`; heartbeats only where a test asks.
fn metered(path: &Path) -> String {
    config(
        "heartbeat_s = 30",
        &format!(
            "[[keys]]\nname = \"biz\"\nkey = \"bk_test\"\ntier = \"business\"\n\n\
             [metering]\npath = {:?}\nflush_s = 1\n",
            path.to_str().unwrap()
        ),
    )
}

/// An SSE client that counts what it received after the response head.
struct Counted {
    c: SseClient,
    key: &'static str,
    topic: &'static str,
    /// Body bytes: every frame's exact text.
    bytes: usize,
    /// Update frames (an `id` and not the initial state): live or replayed.
    events: usize,
    last_id: Option<String>,
}

impl Counted {
    fn open(s: &Server, key: &'static str, topic: &'static str, extra: &str) -> Counted {
        let secret = match key {
            "sub" => Some("sk_test"),
            "biz" => Some("bk_test"),
            "admin" => Some("ak_test"),
            _ => None,
        };
        let mut headers = vec![];
        if let Some(k) = secret {
            headers.push(("X-API-Key", k));
        }
        let c = s.subscribe(&format!("/v1/sse/{topic}{extra}"), &headers);
        assert_eq!(c.status, 200, "{} {}", c.head, c.body_if_error);
        Counted {
            c,
            key,
            topic,
            bytes: 0,
            events: 0,
            last_id: None,
        }
    }

    fn next(&mut self) -> Option<Frame> {
        let f = self.c.next()?;
        self.bytes += f.raw.len();
        if f.id.is_some() {
            self.last_id = f.id.clone();
            if f.event() != "initial_state" {
                self.events += 1;
            }
        }
        Some(f)
    }

    /// Reads until the update with id `id` (or a later one) has arrived.
    fn until_id(&mut self, id: &str) {
        let want: u64 = id.parse().unwrap();
        while self
            .last_id
            .as_deref()
            .is_none_or(|l| l.parse::<u64>().unwrap() < want)
        {
            self.next().expect("stream ended early");
        }
    }

    /// Reads `connected` and the frame after it.
    fn start(&mut self) {
        let c = self.next().expect("connected");
        assert_eq!(c.event(), "connected", "{}", c.raw);
        self.next().expect("start frame");
    }

    /// Reads until the server closes.
    fn rest(&mut self) {
        while self.next().is_some() {}
    }

    /// What its stream record must say: key, topic, events, bytes.
    fn expected(&self) -> (String, String, u64, u64) {
        (
            self.key.to_string(),
            self.topic.to_string(),
            self.events as u64,
            self.bytes as u64,
        )
    }
}

/// Every line of the file, each a whole JSON object of one of the two
/// record types with exactly SPEC §9's fields.
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the last line is cut: {text:?}"
    );
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            fields.sort_unstable();
            let want: &[&str] = match v["type"].as_str() {
                Some("stream") => &[
                    "bytes", "close", "end_ms", "events", "key", "seconds", "start_ms", "tier",
                    "topic", "type",
                ],
                Some("minute") => &[
                    "bytes",
                    "events",
                    "key",
                    "minute_ms",
                    "published_rows",
                    "stream_seconds",
                    "type",
                ],
                _ => panic!("unknown record {l}"),
            };
            assert_eq!(fields, want, "{l}");
            v
        })
        .collect()
}

/// The stream records written so far, while the server may be writing
/// (a line still being written is left out).
fn streams_so_far(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["type"] == "stream")
        .collect()
}

fn streams(recs: &[Value]) -> Vec<&Value> {
    recs.iter().filter(|r| r["type"] == "stream").collect()
}

/// Seconds as the records give them, in milliseconds.
fn ms(v: &Value) -> u64 {
    (v.as_f64().unwrap() * 1000.0).round() as u64
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

fn usage(s: &Server) -> BTreeMap<String, Value> {
    let (status, _, body) = s.request("GET", "/v1/usage", &[("X-API-Key", "ak_test")], b"");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key"].as_str().unwrap().to_string(), k.clone()))
        .collect()
}

fn usage_path(name: &str) -> PathBuf {
    let p = temp_path(name);
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn the_file_matches_what_clients_received_across_a_graceful_stop() {
    for driver in DRIVERS {
        let path = usage_path("usage.jsonl");
        let s = Server::start_with(&metered(&path), driver);
        let mut clients = vec![
            Counted::open(&s, "sub", "m/a", ""),
            Counted::open(&s, "sub", "m/b", "?heartbeat_s=1"),
            Counted::open(&s, "biz", "m/a", ""),
            Counted::open(&s, "anonymous", "m/a", ""),
        ];
        for c in clients.iter_mut() {
            c.start();
        }
        let a: Vec<String> = (0..5)
            .map(|i| s.publish("m/a", &format!("{{\"n\":{i}}}")))
            .collect();
        let b: Vec<String> = (0..3)
            .map(|i| s.publish("m/b", &format!("{{\"n\":{i}}}")))
            .collect();
        for c in clients.iter_mut() {
            let last = if c.topic == "m/a" { &a[4] } else { &b[2] };
            c.until_id(last);
        }
        // A resumed stream: its replayed updates are events too.
        let mut resumed = Counted::open(&s, "sub", "m/a", &format!("?lastEventId={}", a[1]));
        resumed.start();
        resumed.until_id(&a[4]);
        assert_eq!(resumed.events, 3);

        // The client closes the first stream: its record comes at once.
        let first = clients.remove(0).expected();
        eventually("the closed stream's record", || {
            streams_so_far(&path)
                .iter()
                .any(|r| r["close"] == "client_closed")
        });
        let a_more: Vec<String> = (5..7)
            .map(|i| s.publish("m/a", &format!("{{\"n\":{i}}}")))
            .collect();
        for c in clients.iter_mut().filter(|c| c.topic == "m/a") {
            c.until_id(&a_more[1]);
        }
        assert!(s.stop().success());
        clients.push(resumed);
        for c in clients.iter_mut() {
            c.rest();
        }

        let recs = records(&path);
        let got = streams(&recs);
        let mut want: Vec<(String, String, u64, u64, &str)> = clients
            .iter()
            .map(|c| {
                let (k, t, e, b) = c.expected();
                (k, t, e, b, "shutdown")
            })
            .collect();
        let (k, t, e, b) = first;
        assert_eq!(e, 5);
        want.push((k, t, e, b, "client_closed"));
        want.sort();
        let mut have: Vec<(String, String, u64, u64, &str)> = got
            .iter()
            .map(|r| {
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["topic"].as_str().unwrap().to_string(),
                    n(&r["events"]),
                    n(&r["bytes"]),
                    r["close"].as_str().unwrap(),
                )
            })
            .collect();
        have.sort();
        assert_eq!(have, want, "{driver:?}");
        for r in &got {
            let tier = if r["key"] == "biz" {
                "business"
            } else {
                "scale"
            };
            assert_eq!(r["tier"], tier, "{r}");
            assert_eq!(
                ms(&r["seconds"]),
                n(&r["end_ms"]) - n(&r["start_ms"]),
                "{r}"
            );
        }

        // Nothing lost: each key's minutes add up to its streams, and the
        // publisher's rows are all there.
        let mut by_key: BTreeMap<String, [u64; 6]> = BTreeMap::new();
        for r in &recs {
            let e = by_key.entry(r["key"].as_str().unwrap().into()).or_default();
            if r["type"] == "stream" {
                e[0] += n(&r["events"]);
                e[1] += n(&r["bytes"]);
                e[2] += ms(&r["seconds"]);
            } else {
                assert_eq!(n(&r["minute_ms"]) % 60_000, 0, "{r}");
                e[3] += n(&r["events"]);
                e[4] += n(&r["bytes"]);
                e[5] += ms(&r["stream_seconds"]);
            }
        }
        for (key, e) in &by_key {
            assert_eq!(e[..3], e[3..], "{key}: streams vs minutes");
        }
        let rows: u64 = recs
            .iter()
            .filter(|r| r["type"] == "minute" && r["key"] == "pub")
            .map(|r| n(&r["published_rows"]))
            .sum();
        assert_eq!(rows, 10);
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn a_slow_consumers_record_counts_only_what_reached_it() {
    for driver in DRIVERS {
        let path = usage_path("usage-slow.jsonl");
        let s = Server::start_with(&metered(&path), driver);
        let mut c = Counted::open(&s, "sub", "slow/a", "");
        c.start();
        // The client stops reading: the socket fills, then the queue, and
        // the stream is told to reconnect with its queued updates dropped.
        let pad = "x".repeat(64 * 1024);
        let mut published = 0;
        let slow = || {
            metric(
                &s.request("GET", "/metrics", &[], b"").2,
                "sluice_sse_slow_consumers_total",
            )
        };
        while slow() < 1.0 {
            for i in 0..20 {
                s.publish("slow/a", &format!("{{\"n\":{i},\"pad\":\"{pad}\"}}"));
                published += 1;
            }
            assert!(published < 2000, "never a slow consumer");
        }
        c.rest();
        assert!(c.events < published, "{} of {published}", c.events);
        eventually("the record", || !streams_so_far(&path).is_empty());
        let recs = records(&path);
        let r = streams(&recs)[0];
        assert_eq!(
            (
                n(&r["events"]),
                n(&r["bytes"]),
                r["close"].as_str().unwrap()
            ),
            (c.events as u64, c.bytes as u64, "slow_consumer"),
            "{driver:?}"
        );
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn usage_endpoint_reports_each_key_since_start_to_admins_only() {
    let path = usage_path("usage-endpoint.jsonl");
    let s = Server::start(&metered(&path));
    let mut c = Counted::open(&s, "sub", "u/x", "");
    c.start();
    eventually("the open stream in /v1/usage", || {
        n(&usage(&s)["sub"]["streams_open"]) == 1
    });
    let ids: Vec<String> = (0..3)
        .map(|i| s.publish("u/x", &format!("[{{\"n\":{i}}},{{\"n\":{i}}}]")))
        .collect();
    c.until_id(&ids[2]);
    drop(c.c);
    eventually("the closed stream in /v1/usage", || {
        n(&usage(&s)["sub"]["streams_open"]) == 0
    });
    let u = usage(&s);
    let sub = &u["sub"];
    assert_eq!(n(&sub["streams_total"]), 1);
    assert_eq!(n(&sub["events"]), 3);
    assert_eq!(n(&sub["bytes"]), c.bytes as u64);
    assert_eq!(n(&sub["published_rows"]), 0);
    assert_eq!(n(&u["pub"]["published_rows"]), 6);
    // Configured keys are listed before they have any usage.
    for key in ["admin", "biz"] {
        assert_eq!(
            u[key],
            serde_json::json!({"key": key, "streams_open": 0, "streams_total": 0,
                "stream_seconds": 0.0, "events": 0, "bytes": 0, "published_rows": 0})
        );
    }
    // The endpoint and the file agree.
    let recs = records(&path);
    let r = streams(&recs)[0];
    assert_eq!((n(&r["events"]), n(&r["bytes"])), (3, c.bytes as u64));
    assert_eq!(ms(&sub["stream_seconds"]), ms(&r["seconds"]));

    let (status, _, body) = s.request("GET", "/v1/usage", &[("X-API-Key", "sk_test")], b"");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"forbidden\""), "{body}");
    let (status, _, body) = s.request("GET", "/v1/usage", &[], b"");
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = s.request("POST", "/v1/usage", &[("X-API-Key", "ak_test")], b"");
    assert_eq!(status, 405);
    let _ = std::fs::remove_file(&path);

    // Without [metering] there is no usage to report.
    let off = Server::start(&config("", ""));
    let (status, _, body) = off.request("GET", "/v1/usage", &[("X-API-Key", "ak_test")], b"");
    assert_eq!(status, 404, "{body}");
}

#[test]
fn a_killed_process_leaves_whole_lines_and_every_record_it_wrote() {
    for driver in DRIVERS {
        let path = usage_path("usage-kill.jsonl");
        let s = Server::start_with(&metered(&path), driver);
        let mut open = Counted::open(&s, "biz", "k9/a", "");
        open.start();
        let mut closed = Counted::open(&s, "sub", "k9/a", "");
        closed.start();
        let id = s.publish("k9/a", r#"{"n":1}"#);
        closed.until_id(&id);
        drop(closed.c);
        eventually("the closed stream's record", || {
            !streams_so_far(&path).is_empty()
        });
        s.signal(9);
        let _ = s.wait_exit();
        let recs = records(&path);
        let got = streams(&recs);
        assert_eq!(got.len(), 1, "{recs:?}");
        assert_eq!(
            (
                got[0]["key"].as_str().unwrap(),
                n(&got[0]["events"]),
                n(&got[0]["bytes"]),
                got[0]["close"].as_str().unwrap()
            ),
            ("sub", 1, closed.bytes as u64, "client_closed")
        );
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn sighup_reopens_the_file_for_logrotate() {
    let path = usage_path("usage-rotate.jsonl");
    let rotated = path.with_extension("jsonl.1");
    let _ = std::fs::remove_file(&rotated);
    let s = Server::start(&metered(&path));
    let close_one = |topic: &'static str| {
        let mut c = Counted::open(&s, "sub", topic, "");
        c.start();
        drop(c.c);
    };
    close_one("r/before");
    eventually("the first record", || !streams_so_far(&path).is_empty());
    std::fs::rename(&path, &rotated).unwrap();
    s.signal(1);
    eventually("a new file at the path", || path.exists());
    close_one("r/after");
    eventually("the second record", || !streams_so_far(&path).is_empty());
    let topics = |p: &Path| -> Vec<String> {
        streams(&records(p))
            .iter()
            .map(|r| r["topic"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(topics(&rotated), ["r/before"]);
    assert_eq!(topics(&path), ["r/after"]);
    assert!(s.stop().success());
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rotated);
}

#[test]
fn an_unwritable_usage_file_is_a_start_up_failure() {
    let cfg = metered(Path::new("/nonexistent-dir/usage.jsonl"));
    let p = temp_path("unwritable.toml");
    std::fs::write(&p, cfg).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the metering file /nonexistent-dir/usage.jsonl"),
        "{err}"
    );
    let _ = std::fs::remove_file(&p);
}
