//! Tiers, coalescing, filters, routes, per-key caps and stream tokens
//! (SPEC §2–4 and §6), end to end against the real binary.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 2
heartbeat_s = 30

[auth]
required = true
token_secret = "test-secret"
token_ttl_s = 60

[tiers.scale]
coalesce_ms = 0
[tiers.enterprise]
coalesce_ms = 500
[tiers.business]
coalesce_ms = 1000

[[keys]]
name = "raw"
key = "k_scale"
tier = "scale"

[[keys]]
name = "half"
key = "k_enterprise"
tier = "enterprise"

[[keys]]
name = "one"
key = "k_business"
tier = "business"

[[keys]]
name = "capped"
key = "k_capped"
tier = "scale"
max_connections = 2

[[keys]]
name = "oddsonly"
key = "k_oddsonly"
tier = "scale"
topics = ["odds/*"]

[[keys]]
name = "pub"
key = "pk_test"
tier = "scale"
role = "publisher"

[[topics]]
pattern = "vip/*"
key = ["id"]
tiers = ["scale"]

[[topics]]
pattern = "odds/*"
event = "odds_update"
key = ["id"]
filters = { bookmakers = "book", kinds = "kind" }

[[topics]]
pattern = "feed/*"
history = 50
filters = { event_type = "type" }

[[routes]]
path = "/live/{sport}"
topic = "odds/{sport}"
match = { kind = "game" }

[[routes]]
path = "/stream"
topic = "feed/{package}"

[[routes]]
path = "/alerts/live"
topic = "feed/main"
match = { type = "alert.*" }

[[routes]]
path = "/games/{game}"
topic = "feed/games"
match = { type = "{game}" }

[[routes]]
path = "/bytype"
topic = "feed/games"
match = { type = "{t}" }

[[routes]]
path = "/{name}"
topic = "feed/{name}"
"#;

fn start() -> Server {
    Server::start(CONFIG)
}

fn publish(s: &Server, topic: &str, body: &str) -> String {
    s.publish(topic, body)
}

fn key(k: &str) -> [(&'static str, &str); 1] {
    [("X-API-Key", k)]
}

/// Rows of a frame's `data`, as (id, v) for rows shaped {"id":..,"v":..}.
fn rows(f: &Frame) -> Vec<serde_json::Value> {
    f.json()["data"].as_array().expect("data array").clone()
}

#[test]
fn connected_reports_each_tiers_push_mode_and_interval() {
    let s = start();
    for (k, tier, mode, interval) in [
        ("k_scale", "scale", "raw", 0.0),
        ("k_enterprise", "enterprise", "coalesced", 0.5),
        ("k_business", "business", "coalesced", 1.0),
    ] {
        let mut c = s.subscribe("/v1/sse/odds/t", &key(k));
        let (conn, _) = c.start();
        let j = conn.json();
        assert_eq!(j["tier"], tier);
        assert_eq!(j["push_mode"], mode);
        assert_eq!(j["min_push_interval_s"].as_f64(), Some(interval));
        assert!(
            conn.raw
                .contains(&format!("\"min_push_interval_s\":{interval:?},")),
            "{}",
            conn.raw
        );
    }
}

/// 300 updates to three keys in about 1.5 s, while a raw, a 0.5 s and a
/// 1 s subscriber listen.
#[test]
fn coalesced_tiers_send_at_most_one_frame_per_interval_and_end_at_the_state() {
    let s = start();
    let mut raw = s.subscribe("/v1/sse/odds/co", &key("k_scale"));
    let mut half = s.subscribe("/v1/sse/odds/co", &key("k_enterprise"));
    let mut one = s.subscribe("/v1/sse/odds/co", &key("k_business"));
    for c in [&mut raw, &mut half, &mut one] {
        let (_, init) = c.start();
        assert_eq!(init.event(), "initial_state");
    }
    // 300 updates over about 1.5 s: far more than one per interval.
    let t0 = Instant::now();
    let mut last = String::new();
    for i in 0..300 {
        last = publish(&s, "odds/co", &format!(r#"{{"id":{},"v":{i}}}"#, i % 3));
        std::thread::sleep(Duration::from_millis(5)); // pacing the publisher, not synchronising
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let snapshot: serde_json::Value = {
        let (st, _, body) = s.request("GET", "/v1/snapshot/odds/co", &key("k_scale"), b"");
        assert_eq!(st, 200);
        serde_json::from_str(&body).unwrap()
    };

    // raw: every update, in order
    for i in 0..300 {
        let f = raw.next_event().unwrap();
        assert_eq!(f.event(), "odds_update");
        assert_eq!(rows(&f), vec![serde_json::json!({"id": i % 3, "v": i})]);
    }

    for (c, interval) in [(&mut half, 0.5), (&mut one, 1.0)] {
        let mut frames = Vec::new();
        let mut prev_id = 0u64;
        loop {
            let f = c.next_event().unwrap();
            assert_eq!(f.event(), "odds_update", "{}", f.raw);
            let id: u64 = f.id.clone().unwrap().parse().unwrap();
            assert!(id > prev_id, "ids grow");
            prev_id = id;
            let done = f.id.as_deref() == Some(last.as_str());
            frames.push(f);
            if done {
                break;
            }
        }
        // at most one frame per interval (+1 for the partial interval at
        // each end), and far fewer than the updates
        let max = (elapsed / interval).ceil() as usize + 2;
        assert!(
            frames.len() <= max,
            "{interval}s tier sent {} frames in {elapsed:.2}s",
            frames.len()
        );
        // each frame holds each changed key once, with its latest value
        for f in &frames {
            let ids: Vec<_> = rows(f).iter().map(|r| r["id"].clone()).collect();
            let mut uniq = ids.clone();
            uniq.sort_by_key(|v| v.as_i64());
            uniq.dedup();
            assert_eq!(ids.len(), uniq.len(), "a key twice in one frame: {}", f.raw);
        }
        // the last version of each key seen equals the state table
        let mut seen = BTreeMap::new();
        for f in &frames {
            for r in rows(f) {
                seen.insert(r["id"].as_i64().unwrap(), r);
            }
        }
        let state: BTreeMap<i64, serde_json::Value> = snapshot["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_i64().unwrap(), r.clone()))
            .collect();
        assert_eq!(seen, state);
    }
}

#[test]
fn keyless_coalesced_frames_carry_every_row_once_in_order() {
    let s = start();
    let mut c = s.subscribe("/v1/sse/feed/x", &key("k_enterprise"));
    c.start();
    let mut last = String::new();
    for i in 0..60 {
        last = publish(&s, "feed/x", &format!(r#"{{"n":{i}}}"#));
    }
    let mut got = Vec::new();
    loop {
        let f = c.next_event().unwrap();
        got.extend(rows(&f).into_iter().map(|r| r["n"].as_i64().unwrap()));
        if f.id.as_deref() == Some(last.as_str()) {
            break;
        }
    }
    assert_eq!(got, (0..60).collect::<Vec<_>>());
}

#[test]
fn a_coalesced_client_resumes_with_the_frames_after_its_last_id() {
    let s = start();
    let mut c = s.subscribe("/v1/sse/odds/res", &key("k_enterprise"));
    c.start();
    let first = publish(&s, "odds/res", r#"{"id":1,"v":1}"#);
    let f1 = c.next_event().unwrap();
    assert_eq!(f1.id.as_deref(), Some(first.as_str()));
    drop(c);
    // while away: two more updates, each its own tick
    let mut ids = Vec::new();
    let mut watch = s.subscribe("/v1/sse/odds/res", &key("k_enterprise"));
    watch.start();
    for v in 2..4 {
        let id = publish(&s, "odds/res", &format!(r#"{{"id":1,"v":{v}}}"#));
        let f = watch.next_event().unwrap();
        assert_eq!(f.id.as_deref(), Some(id.as_str()));
        ids.push(id);
    }
    let mut c = s.subscribe(
        "/v1/sse/odds/res",
        &[("X-API-Key", "k_enterprise"), ("Last-Event-ID", &first)],
    );
    let (conn, f) = c.start();
    assert_eq!(conn.json()["resumed"], true);
    assert_eq!(f.id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(rows(&f), vec![serde_json::json!({"id":1,"v":2})]);
    let f = c.next_event().unwrap();
    assert_eq!(f.id.as_deref(), Some(ids[1].as_str()));
    // an id the coalesced ring does not hold: a fresh state, not an error
    let mut c = s.subscribe(
        "/v1/sse/odds/res",
        &[("X-API-Key", "k_enterprise"), ("Last-Event-ID", "12345")],
    );
    let (conn, f) = c.start();
    assert_eq!(conn.json()["resumed"], false);
    assert_eq!(f.event(), "initial_state");
}

#[test]
fn filters_narrow_snapshots_initial_states_and_updates() {
    let s = start();
    publish(
        &s,
        "odds/f",
        r#"[{"id":1,"book":"pinnacle","kind":"game"},{"id":2,"book":"novig","kind":"props"},{"id":3,"book":"fanduel","kind":"game"}]"#,
    );
    let (st, _, body) = s.request(
        "GET",
        "/v1/snapshot/odds/f?bookmakers=pinnacle,fanduel&kinds=game",
        &key("k_scale"),
        b"",
    );
    assert_eq!(st, 200);
    let snap: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(snap["count"], 2);

    let mut c = s.subscribe(
        "/v1/sse/odds/f?bookmakers=pin*,novig&ignored=1",
        &key("k_scale"),
    );
    let (_, init) = c.start();
    let ids: Vec<_> = rows(&init)
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2]);
    assert!(init.raw.contains("\"count\":2,"), "{}", init.raw);
    // an update with no passing row is not sent at all
    publish(
        &s,
        "odds/f",
        r#"{"id":3,"book":"fanduel","kind":"game","v":2}"#,
    );
    // one with some passing rows is re-joined with those rows only
    let id = publish(
        &s,
        "odds/f",
        r#"[{"id":3,"book":"fanduel","v":3},{"id":1,"book":"pinnacle","v":3}]"#,
    );
    let f = c.next_event().unwrap();
    assert_eq!(f.id.as_deref(), Some(id.as_str()));
    assert_eq!(
        rows(&f),
        vec![serde_json::json!({"id":1,"book":"pinnacle","v":3})]
    );
    assert!(f.raw.contains("\"count\":1,"), "{}", f.raw);

    // an empty filter value is 400
    let c = s.subscribe("/v1/sse/odds/f?bookmakers=", &key("k_scale"));
    assert_eq!(c.status, 400, "{}", c.body_if_error);
}

#[test]
fn routes_map_url_layouts_and_their_match_cannot_be_widened() {
    let s = start();
    publish(
        &s,
        "odds/nba",
        r#"[{"id":1,"kind":"game","book":"a"},{"id":2,"kind":"props","book":"a"}]"#,
    );
    let mut c = s.subscribe("/live/nba", &key("k_scale"));
    let (conn, init) = c.start();
    assert_eq!(conn.json()["topic"], "odds/nba");
    let ids: Vec<_> = rows(&init)
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1], "the route only allows kind=game");
    // asking for props through the route narrows to nothing
    let mut c2 = s.subscribe("/live/nba?kinds=props", &key("k_scale"));
    let (_, init) = c2.start();
    assert_eq!(init.json()["count"], 0);
    publish(&s, "odds/nba", r#"{"id":2,"kind":"props","book":"a"}"#);
    let id = publish(&s, "odds/nba", r#"{"id":3,"kind":"game","book":"a"}"#);
    let f = c.next_event().unwrap();
    assert_eq!(f.id.as_deref(), Some(id.as_str()));

    // a topic variable taken from the query
    publish(&s, "feed/0xabc", r#"{"type":"user.login"}"#);
    let mut c = s.subscribe("/stream?package=0xabc", &key("k_scale"));
    let (conn, init) = c.start();
    assert_eq!(conn.json()["topic"], "feed/0xabc");
    assert_eq!(init.json()["count"], 1);
    let c = s.subscribe("/stream", &key("k_scale"));
    assert_eq!(c.status, 400, "the topic variable is missing");

    // a prefix match in the route; the client narrows within it
    publish(
        &s,
        "feed/main",
        r#"[{"type":"alert.fire"},{"type":"user.login"},{"type":"alert.smoke"}]"#,
    );
    let mut c = s.subscribe("/alerts/live/", &key("k_scale"));
    let (_, init) = c.start();
    assert_eq!(init.json()["count"], 2);
    let mut c = s.subscribe(
        "/alerts/live?event_type=alert.smoke,user.*",
        &key("k_scale"),
    );
    let (_, init) = c.start();
    assert_eq!(rows(&init), vec![serde_json::json!({"type":"alert.smoke"})]);
}

#[test]
fn commas_and_stars_in_a_route_variable_cannot_widen_its_match() {
    let s = start();
    publish(
        &s,
        "feed/games",
        r#"[{"type":"a"},{"type":"b"},{"type":"a,b"},{"type":"*"},{"type":"ab"}]"#,
    );
    let types = |path: &str| -> Vec<String> {
        let mut c = s.subscribe(path, &key("k_scale"));
        let (_, init) = c.start();
        rows(&init)
            .iter()
            .map(|r| r["type"].as_str().unwrap().to_string())
            .collect()
    };
    let none: Vec<String> = Vec::new();
    // a path variable, plain and percent-encoded
    assert_eq!(types("/games/a"), ["a"]);
    assert_eq!(types("/games/a,b"), ["a,b"], "a comma adds no value");
    assert_eq!(types("/games/a%2Cb"), ["a,b"]);
    assert_eq!(types("/games/*"), ["*"], "a star is no prefix");
    assert_eq!(types("/games/a*"), none);
    assert_eq!(types("/games/%2A"), ["*"]);
    // a query variable
    assert_eq!(types("/bytype?t=b"), ["b"]);
    assert_eq!(types("/bytype?t=a,b"), ["a,b"]);
    assert_eq!(types("/bytype?t=*"), ["*"]);
    assert_eq!(types("/bytype?t=a%2C*"), none);
    let c = s.subscribe("/bytype?t=", &key("k_scale"));
    assert_eq!(c.status, 400, "an empty variable is missing");

    // live updates too: only the literal value passes
    let mut c = s.subscribe("/games/*", &key("k_scale"));
    c.start();
    publish(&s, "feed/games", r#"[{"type":"a"},{"type":"z"}]"#);
    let id = publish(&s, "feed/games", r#"[{"type":"b"},{"type":"*","n":1}]"#);
    let f = c.next_event().unwrap();
    assert_eq!(f.id.as_deref(), Some(id.as_str()), "{}", f.raw);
    assert_eq!(rows(&f), vec![serde_json::json!({"type":"*","n":1})]);
}

#[test]
fn tier_gates_and_key_topic_patterns_are_403() {
    let s = start();
    let c = s.subscribe("/v1/sse/vip/a", &key("k_business"));
    assert_eq!(c.status, 403, "{}", c.body_if_error);
    assert!(c.body_if_error.contains("\"forbidden\""));
    let mut c = s.subscribe("/v1/sse/vip/a", &key("k_scale"));
    c.start();
    let c = s.subscribe("/v1/sse/feed/a", &key("k_oddsonly"));
    assert_eq!(c.status, 403);
    let mut c = s.subscribe("/v1/sse/odds/a", &key("k_oddsonly"));
    c.start();
}

#[test]
fn max_connections_per_key_is_429_and_frees_when_a_stream_ends() {
    let s = Server::start(&CONFIG.replace("heartbeat_s = 30", "heartbeat_s = 30\nmax_events = 1"));
    let mut a = s.subscribe("/v1/sse/odds/cap1", &key("k_capped"));
    a.start();
    let mut b = s.subscribe("/v1/sse/odds/cap2", &key("k_capped"));
    b.start();
    let c = s.subscribe("/v1/sse/odds/cap3", &key("k_capped"));
    assert_eq!(c.status, 429, "{}", c.body_if_error);
    assert!(c.body_if_error.contains("\"too_many_connections\""));
    // other keys are not affected
    let mut other = s.subscribe("/v1/sse/odds/cap3", &key("k_scale"));
    other.start();

    // client close frees a slot
    drop(a);
    let mut again = None;
    eventually("a slot freed by a client close", || {
        let c = s.subscribe("/v1/sse/odds/cap1", &key("k_capped"));
        let ok = c.status == 200;
        again = ok.then_some(c);
        ok
    });
    again.expect("reconnected").start();
    // the limit frame ends a stream: its slot is freed too
    publish(&s, "odds/cap2", r#"{"id":1}"#);
    let rest = b.rest();
    assert!(rest.iter().any(|f| f.event() == "limit"), "{rest:?}");
    eventually("a slot freed by the limit frame", || {
        let c = s.subscribe("/v1/sse/odds/cap2", &key("k_capped"));
        c.status == 200
    });
}

#[test]
fn a_stream_ended_by_max_duration_frees_its_keys_slot() {
    let s =
        Server::start(&CONFIG.replace("heartbeat_s = 30", "heartbeat_s = 30\nmax_duration_s = 1"));
    let mut held: Vec<SseClient> = (0..2)
        .map(|_| {
            let mut c = s.subscribe("/v1/sse/odds/dur", &key("k_capped"));
            c.start();
            c
        })
        .collect();
    assert_eq!(
        s.subscribe("/v1/sse/odds/dur", &key("k_capped")).status,
        429
    );
    for c in held.iter_mut() {
        let rest = c.rest();
        assert_eq!(rest.last().map(|f| f.event()), Some("timeout"), "{rest:?}");
    }
    eventually("both slots freed by the timeouts", || {
        let a = s.subscribe("/v1/sse/odds/dur", &key("k_capped"));
        let b = s.subscribe("/v1/sse/odds/dur", &key("k_capped"));
        a.status == 200 && b.status == 200
    });
}

fn token(s: &Server, k: &str, body: &str) -> (u16, serde_json::Value) {
    let (st, _, resp) = s.request(
        "POST",
        "/v1/stream/token",
        &[("X-API-Key", k), ("Content-Type", "application/json")],
        body.as_bytes(),
    );
    (
        st,
        serde_json::from_str(&resp).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn stream_tokens_in_the_query_carry_the_keys_tier_and_scope() {
    let s = start();
    let (st, t) = token(&s, "k_enterprise", "");
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["expires_in"], 60);
    let tok = t["token"].as_str().unwrap().to_string();

    // a browser's EventSource: no headers, the token in the query
    let mut c = s.subscribe(&format!("/v1/sse/odds/tok?token={tok}"), &[]);
    let (conn, _) = c.start();
    assert_eq!(conn.json()["tier"], "enterprise");
    assert_eq!(conn.json()["push_mode"], "coalesced");
    // and as a bearer token
    let mut c = s.subscribe(
        "/v1/sse/odds/tok",
        &[("Authorization", &format!("Bearer {tok}"))],
    );
    c.start();

    // scoped: its topic only
    let (st, t) = token(&s, "k_scale", r#"{"topic":"odds/one"}"#);
    assert_eq!(st, 200);
    let scoped = t["token"].as_str().unwrap().to_string();
    let mut c = s.subscribe(&format!("/v1/sse/odds/one?token={scoped}"), &[]);
    c.start();
    let c = s.subscribe(&format!("/v1/sse/odds/two?token={scoped}"), &[]);
    assert_eq!(c.status, 403, "{}", c.body_if_error);

    // forged: a flipped signature byte
    let mut forged = tok.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let c = s.subscribe(&format!("/v1/sse/odds/tok?token={forged}"), &[]);
    assert_eq!(c.status, 401);
    assert!(c.body_if_error.contains("\"unauthorized\""));

    // tokens subscribe only; only keys get tokens; scopes must exist
    let (st, _, _) = s.request(
        "POST",
        "/v1/publish/odds/tok",
        &[("Authorization", &format!("Bearer {tok}"))],
        br#"{"id":1}"#,
    );
    assert_eq!(st, 403);
    let (st, _, _) = s.request("POST", "/v1/stream/token", &[], b"");
    assert_eq!(st, 401);
    assert_eq!(token(&s, "k_scale", r#"{"topic":"nope/x"}"#).0, 404);
    assert_eq!(token(&s, "k_oddsonly", r#"{"topic":"feed/x"}"#).0, 403);
    assert_eq!(token(&s, "k_scale", "{not json").0, 400);

    // a token counts against its key's max_connections
    let (_, t) = token(&s, "k_capped", "");
    let capped = t["token"].as_str().unwrap().to_string();
    let mut held: Vec<SseClient> = (0..2)
        .map(|_| {
            let mut c = s.subscribe(&format!("/v1/sse/odds/x?token={capped}"), &[]);
            c.start();
            c
        })
        .collect();
    let c = s.subscribe("/v1/sse/odds/x", &key("k_capped"));
    assert_eq!(c.status, 429);
    held.clear();

    // neither keys nor tokens reach the log
    let logs = s.logs().join("\n");
    for secret in ["k_enterprise", "k_scale", "k_capped", &tok, &scoped] {
        assert!(!logs.contains(secret), "{logs}");
    }
}

#[test]
fn expired_tokens_are_401() {
    let s = Server::start(&CONFIG.replace("token_ttl_s = 60", "token_ttl_s = 1"));
    let (_, t) = token(&s, "k_scale", "");
    let tok = t["token"].as_str().unwrap().to_string();
    let issued = Instant::now();
    let mut c = s.subscribe(&format!("/v1/sse/odds/e?token={tok}"), &[]);
    c.start();
    // the token's `exp` is a whole second; wait for the server to refuse it
    eventually("the token to expire", || {
        let c = s.subscribe(&format!("/v1/sse/odds/e?token={tok}"), &[]);
        c.status == 401 && c.body_if_error.contains("expired")
    });
    assert!(issued.elapsed() < Duration::from_secs(3));
}
