//! `GET /metrics` (SPEC §3, §9): valid Prometheus text (checked by
//! `promtool check metrics`, Debian package `prometheus`), HELP and TYPE for
//! every family, the families the operators' dashboards use, bounded labels.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

/// Keys on the two coalesced tiers (the common config's `sub` is raw).
const TIER_KEYS: &str = r#"
[[keys]]
name = "ent"
key = "ek_secret_test"
tier = "enterprise"

[[keys]]
name = "biz"
key = "bk_secret_test"
tier = "business"
"#;

/// The value of the sample `series` (name with its labels, as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

fn metrics(s: &Server) -> String {
    let (st, head, body) = s.request("GET", "/metrics", &[], b"");
    assert_eq!(st, 200, "{head}");
    body
}

/// Streams on every tier, a few updates, then the clients hang up.
fn traffic(s: &Server) {
    let mut clients: Vec<SseClient> = [
        ("sk_test", "scale"),
        ("ek_secret_test", "enterprise"),
        ("bk_secret_test", "business"),
    ]
    .iter()
    .map(|(key, tier)| {
        let mut c = s.subscribe("/v1/sse/room/1", &[("X-API-Key", key)]);
        let (conn, _) = c.start();
        assert_eq!(conn.json()["tier"], *tier);
        c
    })
    .collect();
    for n in 0..3 {
        s.publish("room/1", &format!(r#"{{"n":{n}}}"#));
    }
    for _ in 0..3 {
        assert_eq!(clients[0].next_event().unwrap().event(), "update");
    }
    // each coalesced tier gets its tick's frame
    for c in &mut clients[1..] {
        assert_eq!(c.next_event().unwrap().event(), "update");
    }
    drop(clients);
}

/// Every family named by a sample line (histogram series folded into
/// their family).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let name = l.split(['{', ' ']).next().unwrap();
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix)
                    && text.contains(&format!("# TYPE {base} histogram"))
                {
                    return base.to_string();
                }
            }
            name.to_string()
        })
        .collect()
}

fn promtool_check(text: &str) {
    if std::env::var("SLUICE_SKIP_PROMTOOL").as_deref() == Ok("1") {
        eprintln!("SLUICE_SKIP_PROMTOOL=1: promtool check metrics skipped");
        return;
    }
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!(
            "promtool is needed for this test ({e}): apt-get install prometheus \
             (scripts/test.sh installs it), or set SLUICE_SKIP_PROMTOOL=1"
        )
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\n{text}"
    );
}

#[test]
fn metrics_pass_promtool_with_help_and_type_for_every_family() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("", TIER_KEYS), driver);
        traffic(&s);
        // Workers flush their counts once a second.
        eventually("the closes counted", || {
            let text = metrics(&s);
            ["scale", "enterprise", "business"].iter().all(|t| {
                sample(
                    &text,
                    &format!(
                        r#"sluice_sse_stream_closes_total{{tier="{t}",reason="client_closed"}}"#
                    ),
                ) == Some(1.0)
            })
        });
        let text = metrics(&s);
        promtool_check(&text);

        let fams = families(&text);
        for f in &fams {
            assert!(text.contains(&format!("# HELP {f} ")), "HELP for {f}");
            assert!(text.contains(&format!("# TYPE {f} ")), "TYPE for {f}");
        }
        for f in [
            "sluice_http_responses_total",
            "sluice_publish_updates_total",
            "sluice_publish_rows_total",
            "sluice_sse_frames_delivered_total",
            "sluice_sse_streams_total",
            "sluice_sse_stream_closes_total",
            "sluice_sse_streams_open",
            "sluice_sse_slow_consumers_total",
            "sluice_sse_written_bytes_total",
            "sluice_sse_publish_latency_seconds",
            "sluice_sse_frame_bytes",
            "sluice_ring_lag_resyncs_total",
            "sluice_ring_lag_frames",
            "sluice_connections_open",
            "sluice_hub_topics",
            "sluice_workers_up",
            "sluice_reloads_total",
            "sluice_build_info",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(fams.contains(f), "{f} is exported:\n{text}");
        }
        assert!(text.contains("# TYPE sluice_sse_publish_latency_seconds histogram"));
        assert!(text.contains("# TYPE sluice_sse_frame_bytes histogram"));

        for tier in ["scale", "enterprise", "business"] {
            let one = |name: &str| sample(&text, &format!(r#"{name}{{tier="{tier}"}}"#));
            assert_eq!(one("sluice_sse_streams_total"), Some(1.0), "{tier}");
            assert_eq!(one("sluice_sse_streams_open"), Some(0.0), "{tier}");
            assert!(
                one("sluice_sse_publish_latency_seconds_count").unwrap() >= 1.0,
                "{tier}"
            );
            assert!(
                one("sluice_sse_frame_bytes_count").unwrap() >= 1.0,
                "{tier}"
            );
        }
        assert_eq!(
            sample(&text, r#"sluice_sse_frames_delivered_total{tier="scale"}"#),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, r#"sluice_publish_updates_total{source="http"}"#),
            Some(3.0)
        );
        assert!(metric(&text, "sluice_sse_written_bytes_total") > 0.0);
        assert_eq!(metric(&text, "sluice_workers_up"), 2.0);
        assert_eq!(
            sample(
                &text,
                &format!(
                    r#"sluice_build_info{{version="{}"}}"#,
                    env!("CARGO_PKG_VERSION")
                )
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"sluice_reloads_total{result="ok"}"#),
            Some(0.0)
        );
        assert!(metric(&text, "process_resident_memory_bytes") > 0.0);
        assert!(metric(&text, "process_open_fds") > 0.0);
        assert!(metric(&text, "process_start_time_seconds") > 1.0e9);

        // Bounded labels: no topic names, no secrets.
        for never in ["room/1", "sk_test", "ek_secret_test", "pk_test"] {
            assert!(!text.contains(never), "{never} in /metrics");
        }
    }
}

#[test]
fn admin_listen_serves_the_admin_endpoints_and_takes_metrics_off_listen() {
    let s = Server::start(&config("admin_listen = \"127.0.0.1:0\"", ""));
    let logs = s.logs();
    let admin: std::net::SocketAddr = logs
        .iter()
        .find_map(|l| l.split("admin=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the admin address is logged: {logs:#?}"));
    assert_ne!(admin.port(), s.addr.port());
    let admin_key = [("X-API-Key", "ak_test")];

    // the public port: everything but /metrics
    let (st, _, body) = s.request("GET", "/metrics", &[], b"");
    assert_eq!(st, 404, "{body}");
    assert!(body.contains(r#""code":"not_found""#), "{body}");
    assert_eq!(s.request("GET", "/healthz", &[], b"").0, 200);
    assert_eq!(s.request("GET", "/v1/topics", &admin_key, b"").0, 200);
    s.publish("adm/x", r#"{"n":1}"#);

    // the admin port: its endpoints, with the same rules
    let (st, _, text) = http(admin, "GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    assert_eq!(
        sample(&text, r#"sluice_publish_updates_total{source="http"}"#),
        Some(1.0)
    );
    promtool_check(&text);
    let (st, _, body) = http(admin, "GET", "/healthz", &[], b"");
    assert_eq!(st, 200);
    assert!(body.contains(r#""status":"ok""#), "{body}");
    let (st, _, body) = http(admin, "GET", "/v1/topics", &admin_key, b"");
    assert_eq!(st, 200);
    assert!(body.contains(r#""topic":"adm/x""#), "{body}");
    assert_eq!(http(admin, "GET", "/v1/topics", &[], b"").0, 401);
    // and nothing else: no streams, no publishing, no demo page
    for (method, path) in [
        ("GET", "/v1/sse/adm/x"),
        ("GET", "/v1/snapshot/adm/x"),
        ("GET", "/"),
        ("POST", "/v1/publish/adm/x"),
        ("POST", "/v1/stream/token"),
    ] {
        let body: &[u8] = if method == "POST" { b"{}" } else { b"" };
        let (st, _, body) = http(admin, method, path, &[("X-API-Key", "pk_test")], body);
        assert_eq!(st, 404, "{method} {path}: {body}");
    }
    assert_eq!(s.stop().code(), Some(0));
}
