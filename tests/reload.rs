//! Reload (SPEC §9): SIGHUP re-reads the config file. Streams of kept keys
//! flow on, a removed key's streams get `event: error` (`unauthorized`), a
//! changed tier's get `event: reconnect` (reason `reload`); an invalid file
//! changes nothing; `listen` and `workers` need a restart.

mod common;

use common::*;

const SIGHUP: i32 = 1;

/// Keys a (kept), b (removed by the reload), c (moved to a new tier), the
/// publisher; anonymous streams get the raw tier. `tiers`, `keys`,
/// `server` are the parts a reload rewrites.
fn config_file(server: &str, tiers: &str, keys: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
workers = 2
{server}

[auth]
required = false
anonymous_tier = "raw"

[tiers.raw]
coalesce_ms = 0
{tiers}

[[keys]]
name = "pub"
key = "pk_test"
tier = "raw"
role = "publisher"

[[keys]]
name = "a"
key = "sk_a"
tier = "raw"
{keys}

[[topics]]
pattern = "*"
history = 10
"#
    )
}

const KEYS_BEFORE: &str = r#"
[[keys]]
name = "b"
key = "sk_b"
tier = "raw"

[[keys]]
name = "c"
key = "sk_c"
tier = "raw"
"#;

/// b is gone, c is on the new "slow" tier (a new coalescing interval),
/// d is new and comes first, so every later key's index shifts.
const KEYS_AFTER: &str = r#"
[[keys]]
name = "c"
key = "sk_c"
tier = "slow"

[[keys]]
name = "d"
key = "sk_d"
tier = "raw"
"#;

fn before() -> String {
    config_file(
        "retry_ms = 2000\ncors_origins = [\"https://a.example\"]",
        "",
        KEYS_BEFORE,
    )
}

fn after() -> String {
    config_file(
        "retry_ms = 4000\ncors_origins = [\"https://b.example\"]",
        "[tiers.slow]\ncoalesce_ms = 200",
        KEYS_AFTER,
    )
}

/// Waits for a log line containing `needle` and returns it.
fn wait_log(s: &Server, seen: &mut Vec<String>, needle: &str) -> String {
    let mut found = None;
    eventually(&format!("a log line with {needle:?}"), || {
        seen.extend(s.logs());
        found = seen.iter().find(|l| l.contains(needle)).cloned();
        found.is_some()
    });
    found.expect("found")
}

fn metrics(s: &Server) -> String {
    let (status, _, body) = s.request("GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    body
}

fn stream(s: &Server, key: Option<&str>) -> SseClient {
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    let mut c = s.subscribe("/v1/sse/t/1", &headers);
    c.start();
    c
}

#[test]
fn a_reload_ends_removed_keys_reconnects_changed_tiers_and_keeps_the_rest_flowing() {
    for driver in DRIVERS {
        let path = temp_path("reload.toml");
        std::fs::write(&path, before()).unwrap();
        let s = Server::start_file(path.clone(), driver);
        let mut log = Vec::new();

        let mut a = stream(&s, Some("sk_a"));
        let mut b = stream(&s, Some("sk_b"));
        let mut c = stream(&s, Some("sk_c"));
        let mut anon = stream(&s, None);
        let id1 = s.publish("t/1", r#"{"n":1}"#);
        for st in [&mut a, &mut b, &mut c, &mut anon] {
            let f = st.next_event().expect("update before the reload");
            assert_eq!(f.id.as_deref(), Some(id1.as_str()), "{driver:?}: {}", f.raw);
        }

        std::fs::write(&path, after()).unwrap();
        s.signal(SIGHUP);

        // b: its key was removed.
        let f = b.next_event().expect("b's closing frame");
        assert_eq!(
            f.raw,
            "event: error\ndata: {\"error\":{\"code\":\"unauthorized\",\"message\":\"this stream's API key was removed by a configuration reload\"}}\n\n",
            "{driver:?}"
        );
        assert!(
            b.next().is_none(),
            "{driver:?}: b is closed after its error"
        );

        // c: its tier changed; the retry is the new retry_ms ±25%.
        let f = c.next_event().expect("c's closing frame");
        assert_eq!(f.event(), "reconnect", "{driver:?}: {}", f.raw);
        let r: u32 = f.retry.as_deref().expect("retry line").parse().unwrap();
        assert!((3000..=5000).contains(&r), "{driver:?}: retry {r}");
        assert_eq!(
            f.data.as_deref(),
            Some(format!(r#"{{"type":"reconnect","reason":"reload","retry_ms":{r}}}"#).as_str()),
            "{driver:?}"
        );
        assert_eq!(
            f.raw,
            format!(
                "event: reconnect\nretry: {r}\ndata: {{\"type\":\"reconnect\",\"reason\":\"reload\",\"retry_ms\":{r}}}\n\n"
            ),
            "{driver:?}"
        );
        assert!(
            c.next().is_none(),
            "{driver:?}: c is closed after reconnect"
        );

        let line = wait_log(&s, &mut log, "configuration reloaded");
        assert!(
            line.contains("2 streams go on, 1 told to reconnect, 1 ended"),
            "{driver:?}: {line}"
        );

        // a and the anonymous stream flow on: the next update, no gap.
        let id2 = s.publish("t/1", r#"{"n":2}"#);
        for st in [&mut a, &mut anon] {
            let f = st.next_event().expect("update after the reload");
            assert_eq!(f.event(), "update", "{driver:?}: {}", f.raw);
            assert_eq!(f.id.as_deref(), Some(id2.as_str()), "{driver:?}: {}", f.raw);
            assert_eq!(
                f.json()["data"],
                serde_json::json!([{"n": 2}]),
                "{driver:?}"
            );
        }

        // New requests: b's key is unknown, d's works, c lands in its new
        // (coalesced) tier, on a topic made before the tier existed.
        let b2 = s.subscribe("/v1/sse/t/1", &[("X-API-Key", "sk_b")]);
        assert_eq!(b2.status, 401, "{driver:?}: {}", b2.body_if_error);
        assert!(b2.body_if_error.contains("\"code\":\"unauthorized\""));
        let mut d = stream(&s, Some("sk_d"));
        let mut c2 = s.subscribe("/v1/sse/t/1", &[("X-API-Key", "sk_c")]);
        let (connected, _) = c2.start();
        let j = connected.json();
        assert_eq!(j["tier"], "slow", "{driver:?}: {}", connected.raw);
        assert_eq!(j["push_mode"], "coalesced", "{driver:?}");
        assert_eq!(connected.retry.as_deref(), Some("4000"), "{driver:?}");
        let id3 = s.publish("t/1", r#"{"n":3}"#);
        for st in [&mut d, &mut c2, &mut a] {
            let f = st.next_event().expect("update");
            assert_eq!(f.id.as_deref(), Some(id3.as_str()), "{driver:?}: {}", f.raw);
        }

        // CORS follows the file.
        let (_, head, _) = s.request(
            "GET",
            "/v1/snapshot/t/1",
            &[("Origin", "https://b.example")],
            b"",
        );
        assert!(
            head.contains("Access-Control-Allow-Origin: https://b.example"),
            "{driver:?}: {head}"
        );
        let (_, head, _) = s.request(
            "GET",
            "/v1/snapshot/t/1",
            &[("Origin", "https://a.example")],
            b"",
        );
        assert!(!head.contains("Access-Control-Allow-Origin"), "{head}");

        let m = metrics(&s);
        assert_eq!(
            metric(&m, "sluice_reloads_total{result=\"ok\"}"),
            1.0,
            "{m}"
        );
        assert_eq!(metric(&m, "sluice_reloads_total{result=\"error\"}"), 0.0);
        s.stop();
    }
}

#[test]
fn an_invalid_file_changes_nothing_and_says_where_it_is_wrong() {
    let path = temp_path("reload.toml");
    std::fs::write(&path, before()).unwrap();
    let s = Server::start_file(path.clone(), Driver::Auto);
    let mut log = Vec::new();
    let mut b = stream(&s, Some("sk_b"));

    // line 4 is `heartbeat_s = 99`, its value at column 15
    let bad = before().replacen("workers = 2\n", "workers = 2\nheartbeat_s = 99\n", 1);
    assert_eq!(bad.lines().nth(3), Some("heartbeat_s = 99"));
    std::fs::write(&path, &bad).unwrap();
    s.signal(SIGHUP);
    let line = wait_log(&s, &mut log, "reload failed");
    assert!(
        line.contains("configuration unchanged")
            && line.contains(&format!(
                "{}: line 4, column 15: heartbeat_s must be 1..30",
                path.display()
            )),
        "{line}"
    );
    let m = metrics(&s);
    assert_eq!(
        metric(&m, "sluice_reloads_total{result=\"error\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "sluice_reloads_total{result=\"ok\"}"),
        0.0,
        "{m}"
    );

    // The old configuration is in force: b's key works, its stream flows.
    let mut b2 = stream(&s, Some("sk_b"));
    let id = s.publish("t/1", r#"{"n":1}"#);
    for st in [&mut b, &mut b2] {
        let f = st.next_event().expect("update");
        assert_eq!(f.id.as_deref(), Some(id.as_str()), "{}", f.raw);
    }

    // Not TOML at all: the same.
    std::fs::write(&path, "[server\n").unwrap();
    s.signal(SIGHUP);
    log.clear();
    let line = wait_log(&s, &mut log, "reload failed");
    assert!(line.contains("line 1, column"), "{line}");
    let m = metrics(&s);
    assert_eq!(
        metric(&m, "sluice_reloads_total{result=\"error\"}"),
        2.0,
        "{m}"
    );
    s.stop();
}

#[test]
fn listen_and_workers_changes_need_a_restart_and_the_rest_applies() {
    for driver in DRIVERS {
        let path = temp_path("reload.toml");
        std::fs::write(&path, before()).unwrap();
        let s = Server::start_file(path.clone(), driver);
        let mut log = Vec::new();
        let mut a = stream(&s, Some("sk_a"));

        let changed = before()
            .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
            .replace("workers = 2", "workers = 1")
            .replace(KEYS_BEFORE, KEYS_AFTER)
            .replace("tier = \"slow\"", "tier = \"raw\"");
        std::fs::write(&path, changed).unwrap();
        s.signal(SIGHUP);
        let line = wait_log(&s, &mut log, "listen changed");
        assert!(line.contains("needs a restart"), "{line}");
        let line = wait_log(&s, &mut log, "workers changed");
        assert!(
            line.contains("needs a restart") && line.contains("still 2"),
            "{line}"
        );
        wait_log(&s, &mut log, "configuration reloaded");

        // Still on the old address, with both workers; the keys changed.
        let (status, _, body) = s.request("GET", "/healthz", &[], b"");
        assert_eq!(status, 200, "{body}");
        let b = s.subscribe("/v1/sse/t/1", &[("X-API-Key", "sk_b")]);
        assert_eq!(b.status, 401, "{driver:?}");
        let mut d = stream(&s, Some("sk_d"));
        let id = s.publish("t/1", r#"{"n":1}"#);
        for st in [&mut a, &mut d] {
            let f = st.next_event().expect("update");
            assert_eq!(f.id.as_deref(), Some(id.as_str()), "{driver:?}: {}", f.raw);
        }
        s.stop();
    }
}
