//! Topics are reclaimed (SPEC is silent; README documents it): a topic with
//! no subscribers, no rows and no update for `topic_idle_s` is freed, and a
//! key that only reads may make at most `max_topics_per_key` topics that
//! hold nothing; publishers make topics up to the node cap only.

mod common;

use common::*;

fn listed(s: &Server) -> Vec<String> {
    let (status, _, body) = s.request("GET", "/v1/topics", &[("X-API-Key", "ak_test")], b"");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("topics json");
    v["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .map(|t| t["topic"].as_str().expect("name").to_string())
        .collect()
}

fn snapshot(s: &Server, topic: &str, key: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    let (status, _, body) = s.request("GET", &format!("/v1/snapshot/{topic}"), &headers, b"");
    (status, body)
}

#[test]
fn idle_empty_topics_are_freed_while_used_ones_stay() {
    let s = Server::start(&config(
        "topic_idle_s = 1",
        "[[topics]]\npattern = \"h0/*\"\nhistory = 0\n",
    ));
    assert_eq!(snapshot(&s, "e/idle", None).0, 200);
    let mut watcher = s.subscribe("/v1/sse/e/watched", &[]);
    watcher.start();
    s.publish("k/kept", r#"{"id":1}"#);
    // a topic with updates but no rows (history = 0)
    let first = s.publish("h0/updated", r#"{"n":1}"#);
    assert_eq!(
        listed(&s),
        ["e/idle", "e/watched", "h0/updated", "k/kept"],
        "all made"
    );
    eventually("the idle topics to go", || {
        listed(&s) == ["e/watched", "k/kept"]
    });
    // once its last subscriber leaves, a topic goes too
    drop(watcher);
    eventually("e/watched to go", || listed(&s) == ["k/kept"]);
    // ids of a topic made again go on increasing
    let again = s.publish("h0/updated", r#"{"n":2}"#);
    assert!(
        again.parse::<u64>().unwrap() > first.parse::<u64>().unwrap(),
        "{again} after {first}"
    );
    // a freed topic is an ordinary empty topic when named again
    let (status, body) = snapshot(&s, "e/idle", None);
    assert_eq!(status, 200);
    assert!(body.contains(r#""count":0"#), "{body}");
}

#[test]
fn a_reader_key_makes_at_most_max_topics_per_key_topics_that_hold_nothing() {
    let s = Server::start(&config("max_topics_per_key = 3", ""));
    let reader = Some("sk_test");
    for i in 1..=3 {
        assert_eq!(snapshot(&s, &format!("e/{i}"), reader).0, 200);
    }
    let (status, body) = snapshot(&s, "e/4", reader);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""code":"unavailable""#), "{body}");
    assert!(body.contains("too many topics that hold nothing"), "{body}");
    // the same key is refused a stream or a token that would make one too
    let c = s.subscribe("/v1/sse/e/5", &[("X-API-Key", "sk_test")]);
    assert_eq!(c.status, 503, "{}", c.body_if_error);
    let (status, _, body) = s.request(
        "POST",
        "/v1/stream/token",
        &[("X-API-Key", "sk_test")],
        br#"{"topic":"e/6"}"#,
    );
    assert_eq!(status, 503, "{body}");
    // topics that exist are read as before
    assert_eq!(snapshot(&s, "e/1", reader).0, 200);
    let mut c = s.subscribe("/v1/sse/e/2", &[("X-API-Key", "sk_test")]);
    c.start();
    // anonymous readers have their own count; publishers only the node cap
    assert_eq!(snapshot(&s, "e/anon", None).0, 200);
    for i in 0..5 {
        s.publish(&format!("p/{i}"), r#"{"n":1}"#);
    }
    // a topic a publisher wrote to holds something: it no longer counts
    s.publish("e/1", r#"{"n":1}"#);
    assert_eq!(snapshot(&s, "e/7", reader).0, 200);
    assert_eq!(snapshot(&s, "e/8", reader).0, 503);
    let names = listed(&s);
    for t in ["e/1", "e/2", "e/3", "e/7", "e/anon", "p/0", "p/4"] {
        assert!(names.iter().any(|n| n == t), "{t} in {names:?}");
    }
    for t in ["e/4", "e/5", "e/6", "e/8"] {
        assert!(!names.iter().any(|n| n == t), "{t} in {names:?}");
    }
}
