//! The example configs in config/ reproduce the five reference services
//! (../shared/reference): each is loaded as shipped (only `listen` moved to
//! an ephemeral port) and its documented URLs, auth forms and frames are
//! checked against what that service's document says.

mod common;

use common::*;

const PUBLISHER: &str = "pk_publisher_change_me";

fn start_profile(name: &str) -> Server {
    let path = format!("{}/config/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).expect("read profile");
    assert!(src.contains("listen = \"127.0.0.1:8080\""), "{path}");
    let src = src.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"");
    Server::start(&src)
}

fn publish(s: &Server, topic: &str, body: &str) -> String {
    let (st, _, resp) = s.request(
        "POST",
        &format!("/v1/publish/{topic}"),
        &[("X-API-Key", PUBLISHER)],
        body.as_bytes(),
    );
    assert_eq!(st, 202, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn data(f: &Frame) -> Vec<serde_json::Value> {
    f.json()["data"].as_array().unwrap().clone()
}

#[test]
fn every_profile_passes_check_config() {
    for name in [
        "odds",
        "ticker",
        "chain-events",
        "game-results",
        "event-router",
    ] {
        let path = format!("{}/config/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(BIN)
            .args(["check-config", &path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Reference 004: three URL layouts, three auth forms, CSV filters,
/// heartbeat_s, connected / initial_state / odds_update, tiers 0 / 0.5 / 1 s.
#[test]
fn odds_profile() {
    let s = start_profile("odds");
    let row = |book: &str, market: &str, kind: &str, price: i32| {
        format!(
            r#"{{"event_id":"e1","bookmaker":"{book}","market":"{market}","outcome":"home","price_american":{price},"kind":"{kind}"}}"#
        )
    };
    publish(
        &s,
        "odds/basketball_nba",
        &format!(
            "[{},{},{}]",
            row("pinnacle", "h2h", "game", -110),
            row("novig", "player_points", "props", 120),
            row("fanduel", "h2h", "game", -105)
        ),
    );
    // a key is required
    let c = s.subscribe("/v1/sse/odds/basketball_nba", &[]);
    assert_eq!(c.status, 401);

    type Form<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let forms: [Form; 3] = [
        (
            "/v1/sse/odds/basketball_nba?apiKey=pk_live_scale",
            vec![],
            "scale",
            "raw",
        ),
        (
            "/v1/sse/hot/basketball_nba?bookmakers=pinnacle,novig",
            vec![("X-API-Key", "pk_live_business")],
            "business",
            "coalesced",
        ),
        (
            "/v1/odds-drop/basketball_nba?kinds=game&heartbeat_s=10",
            vec![("Authorization", "Bearer pk_live_enterprise")],
            "enterprise",
            "coalesced",
        ),
    ];
    let mut clients = Vec::new();
    for (path, headers, tier, mode) in forms {
        let mut c = s.subscribe(path, &headers);
        let (conn, init) = c.start();
        assert_eq!(conn.retry.as_deref(), Some("3000"));
        let j = conn.json();
        assert_eq!(j["type"], "connected");
        assert_eq!(j["topic"], "odds/basketball_nba");
        assert_eq!(j["tier"], tier);
        assert_eq!(j["push_mode"], mode);
        assert_eq!(j["transport"], "sse");
        assert_eq!(init.event(), "initial_state");
        assert_eq!(init.json()["type"], "initial_state");
        clients.push((c, init));
    }
    assert_eq!(clients[0].1.json()["count"], 3);
    assert_eq!(clients[1].1.json()["count"], 2, "bookmakers=pinnacle,novig");
    assert_eq!(clients[2].1.json()["count"], 2, "kinds=game");
    assert!(
        clients[0]
            .0
            .head
            .contains("Content-Type: text/event-stream")
    );
    // an update reaches the raw client at once, as odds_update
    let id = publish(
        &s,
        "odds/basketball_nba",
        &row("pinnacle", "h2h", "game", -120),
    );
    let f = clients[0].0.next_event().unwrap();
    assert_eq!(f.event(), "odds_update");
    assert_eq!(f.id.as_deref(), Some(id.as_str()));
    assert_eq!(f.json()["type"], "odds_update");
    assert_eq!(data(&f)[0]["price_american"], -120);
    // and the coalesced ones within their interval, with the same id
    for (c, _) in clients.iter_mut().skip(1) {
        let f = c.next_event().unwrap();
        assert_eq!(
            (f.event(), f.id.as_deref()),
            ("odds_update", Some(id.as_str()))
        );
    }
    let c = s.subscribe(
        "/v1/sse/odds/basketball_nba?apiKey=pk_live_scale&heartbeat_s=31",
        &[],
    );
    assert_eq!(c.status, 400, "heartbeat_s is 1..30");
}

/// Reference 000: X-Consumer-Key, ?symbol=, `message` events, 1 h cap.
#[test]
fn ticker_profile() {
    let s = start_profile("ticker");
    publish(
        &s,
        "ticker/AAPL",
        r#"{"symbol":"AAPL","price":189.1,"change":"+0.1%"}"#,
    );
    let mut c = s.subscribe(
        "/api/demo/api/bb-sse-ticker?symbol=AAPL",
        &[("X-Consumer-Key", "demo-public-key-2026")],
    );
    let (conn, init) = c.start();
    assert_eq!(conn.json()["topic"], "ticker/AAPL");
    assert_eq!(data(&init)[0]["symbol"], "AAPL");
    let id = publish(
        &s,
        "ticker/AAPL",
        r#"{"symbol":"AAPL","price":189.5,"change":"+0.3%"}"#,
    );
    let f = c.next_event().unwrap();
    assert_eq!(f.event(), "message", "EventSource onmessage gets it");
    assert_eq!(f.id.as_deref(), Some(id.as_str()));
    assert_eq!(data(&f)[0]["price"], 189.5);
    let c = s.subscribe(
        "/api/demo/api/bb-sse-ticker?symbol=AAPL",
        &[("X-Consumer-Key", "wrong")],
    );
    assert_eq!(c.status, 401);
}

/// Reference 001: ?package= with event_type / sender filters, x-api-key or a
/// 60 s token in the query, `sui.event` with id:, Last-Event-ID resume
/// without duplicates, 5 streams per key.
#[test]
fn chain_events_profile() {
    let s = start_profile("chain-events");
    let key = [("x-api-key", "sk_live_example")];
    let mut c = s.subscribe(
        "/v1/events/stream?package=0xabc&event_type=0xabc::pool::Swap",
        &key,
    );
    let (conn, init) = c.start();
    assert_eq!(conn.json()["topic"], "events/0xabc");
    assert_eq!(init.json()["count"], 0, "live events only");
    let ev = |n: u32, ty: &str| {
        format!(
            r#"{{"checkpoint":{n},"eventType":"0xabc::pool::{ty}","sender":"0x1","data":{{}}}}"#
        )
    };
    publish(&s, "events/0xabc", &ev(1, "Mint"));
    let a = publish(&s, "events/0xabc", &ev(2, "Swap"));
    let f = c.next_event().unwrap();
    assert_eq!(f.event(), "sui.event");
    assert_eq!(
        f.id.as_deref(),
        Some(a.as_str()),
        "the Mint was filtered out"
    );
    drop(c);
    let b = publish(&s, "events/0xabc", &ev(3, "Swap"));
    let c3 = publish(&s, "events/0xabc", &ev(4, "Swap"));
    let mut c = s.subscribe(
        "/v1/events/stream?package=0xabc&event_type=0xabc::pool::Swap",
        &[("x-api-key", "sk_live_example"), ("Last-Event-ID", &a)],
    );
    let (conn, first) = c.start();
    assert_eq!(conn.json()["resumed"], true);
    assert_eq!(first.id.as_deref(), Some(b.as_str()));
    assert_eq!(c.next_event().unwrap().id.as_deref(), Some(c3.as_str()));

    // token exchange, then the token in the query (browser EventSource)
    let (st, _, body) = s.request(
        "POST",
        "/v1/stream/token",
        &key,
        br#"{"topic":"events/0xabc"}"#,
    );
    assert_eq!(st, 200, "{body}");
    let t: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["expires_in"], 60);
    let tok = t["token"].as_str().unwrap();
    let mut browser = s.subscribe(&format!("/v1/events/stream?package=0xabc&token={tok}"), &[]);
    browser.start();
    let other = s.subscribe(&format!("/v1/events/stream?package=0xdef&token={tok}"), &[]);
    assert_eq!(other.status, 403, "scoped to one package");

    // 5 concurrent streams per key (c and browser hold two)
    let held: Vec<SseClient> = (0..3)
        .map(|_| {
            let mut x = s.subscribe("/v1/events/stream?package=0xabc", &key);
            x.start();
            x
        })
        .collect();
    let sixth = s.subscribe("/v1/events/stream?package=0xabc", &key);
    assert_eq!(sixth.status, 429);
    drop(held);
}

/// Reference 002: /sse/:game and /sse/type/:type with api_key, the latest
/// result first, then `message` per round.
#[test]
fn game_results_profile() {
    let s = start_profile("game-results");
    let round = |id: u32, slug: &str, ty: &str| {
        format!(
            r#"{{"round_id":{id},"game_id":1,"game_slug":"{slug}","game_type":"{ty}","extras":"{{\"point\": \"1.5\"}}"}}"#
        )
    };
    publish(&s, "games", &round(511, "crash", "multiplier"));
    publish(&s, "games", &round(512, "crash", "multiplier"));
    publish(&s, "games", &round(90, "double", "roulette"));
    let mut crash = s.subscribe("/sse/crash?api_key=sk_live_xxxxx", &[]);
    let (_, init) = crash.start();
    let rows = data(&init);
    assert_eq!(rows.len(), 1, "the latest result of this game");
    assert_eq!(rows[0]["round_id"], 512);
    let mut by_type = s.subscribe("/sse/type/multiplier?api_key=sk_live_xxxxx", &[]);
    by_type.start();
    publish(&s, "games", &round(91, "double", "roulette"));
    let id = publish(&s, "games", &round(513, "crash", "multiplier"));
    for c in [&mut crash, &mut by_type] {
        let f = c.next_event().unwrap();
        assert_eq!(f.event(), "message");
        assert_eq!(
            f.id.as_deref(),
            Some(id.as_str()),
            "the roulette round is not sent"
        );
        assert_eq!(data(&f)[0]["round_id"], 513);
    }
    let c = s.subscribe("/sse/crash", &[]);
    assert_eq!(c.status, 401, "api_key is required");
}

/// Reference 003: sinks at /events_stream/ and /alerts/live (match
/// alert.*), ?event_type= only narrows, no history, no auth.
#[test]
fn event_router_profile() {
    let s = start_profile("event-router");
    publish(&s, "events", r#"{"id":1,"event_type":"user.login"}"#);
    let mut all = s.subscribe("/events_stream/", &[]);
    let (_, init) = all.start();
    assert_eq!(
        init.json()["count"],
        0,
        "historical events are not replayed"
    );
    let mut users = s.subscribe("/events_stream/?event_type=user.*", &[]);
    users.start();
    let mut alerts = s.subscribe("/alerts/live", &[]);
    alerts.start();
    // a client cannot widen the sink's match
    let mut widen = s.subscribe("/alerts/live?event_type=user.*", &[]);
    widen.start();

    let login = publish(&s, "events", r#"{"id":2,"event_type":"user.login"}"#);
    let fire = publish(&s, "events", r#"{"id":3,"event_type":"alert.fire"}"#);
    assert_eq!(
        all.next_event().unwrap().id.as_deref(),
        Some(login.as_str())
    );
    assert_eq!(all.next_event().unwrap().id.as_deref(), Some(fire.as_str()));
    let f = users.next_event().unwrap();
    assert_eq!(
        (f.event(), f.id.as_deref()),
        ("message", Some(login.as_str()))
    );
    let f = alerts.next_event().unwrap();
    assert_eq!(f.id.as_deref(), Some(fire.as_str()));
    assert_eq!(data(&f)[0]["event_type"], "alert.fire");
    // The widening client got neither event: when the server drains, the
    // only frame it has is the reconnect.
    assert!(s.stop().success());
    let rest = widen.rest();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].event(), "reconnect");
}
