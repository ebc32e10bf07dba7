//! The command line (SPEC §5): check-config, exit codes, the demo feed, and
//! the shipped config and systemd unit.

mod common;

use std::process::Command;

use common::*;

fn check(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_configs_are_valid() {
    for f in [
        "config/sluice.toml",
        "config/demo.toml",
        "scripts/bench.toml",
    ] {
        let (code, _, err) = check(&repo(f));
        assert_eq!(code, 0, "{f}: {err}");
    }
}

#[test]
fn bad_configs_exit_1_with_line_and_column() {
    let cases = [
        (
            "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n",
            "line 3, column 1",
            "lisen",
        ),
        (
            "[server]\nheartbeat_s = 0\n",
            "line 2, column 15",
            "heartbeat_s",
        ),
        (
            "[[keys]]\nname = \"a\"\nkey = \"k\"\ntier = \"gold\"\n",
            "line 4, column 8",
            "unknown tier",
        ),
        (
            "[[topics]]\npattern = \"a b\"\n",
            "line 2, column 11",
            "not a topic name",
        ),
        ("[server\n", "line 1", ""),
        (
            "[[sources]]\nkind = \"kafka\"\n",
            "line 2, column 8",
            "unknown source kind",
        ),
        (
            "[[topics]]\npattern = \"*\"\n[[routes]]\npath = \"/x/{a\"\ntopic = \"t/{a}\"\n",
            "line 4, column 8",
            "whole-segment {variables}",
        ),
        (
            "[server]\nworkers = 1\n[tiers.fast]\ncoalesce_ms = 5\n",
            "line 3, column 1",
            "tiers.fast.coalesce_ms",
        ),
        (
            "[server]\nadmin_listen = \"localhost\"\n",
            "line 2, column 16",
            "admin_listen: 'localhost' is not an IP:port address",
        ),
        (
            "[auth]\nrequired = false\nanonymous_tier = \"gold\"\n",
            "line 3, column 18",
            "auth.anonymous_tier: unknown tier 'gold'",
        ),
    ];
    for (src, pos, what) in cases {
        let p = temp_path("bad.toml");
        std::fs::write(&p, src).unwrap();
        let (code, _, err) = check(&p);
        assert_eq!(code, 1, "{src:?}");
        assert!(
            err.contains(pos) && err.contains(what),
            "{src:?} gave {err:?}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");

        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "serve with {src:?}");
        let _ = std::fs::remove_file(&p);
    }
    let (code, _, err) = check(std::path::Path::new("/nonexistent/sluice.toml"));
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/sluice.toml"), "{err}");
}

#[test]
fn start_up_failure_is_exit_1_with_a_reason() {
    let s = Server::start(&config("", ""));
    let busy = config("", "")
        .replace("127.0.0.1:0", &s.addr.to_string())
        .replace("workers = 2", "workers = 1");
    // A port held by a plain listener (another program); a second sluice
    // on a sluice's port is tests/safety.rs's.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.replace(
        &s.addr.to_string(),
        &plain.local_addr().unwrap().to_string(),
    );
    let p = temp_path("busy.toml");
    std::fs::write(&p, busy).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on"), "{err}");
    let _ = std::fs::remove_file(&p);
}

#[test]
fn demo_feed_streams_odds_and_ticks() {
    for driver in DRIVERS {
        let demo = std::fs::read_to_string(repo("config/demo.toml"))
            .unwrap()
            .replace("127.0.0.1:8080", "127.0.0.1:0");
        let s = Server::start_with(&demo, driver);
        let mut c = s.subscribe("/v1/sse/odds/basketball_nba", &[]);
        let (conn, init) = c.start();
        assert_eq!(
            conn.json()["tier"],
            "business",
            "anonymous tier of the demo"
        );
        let rows = init.json()["data"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 144);
        for field in [
            "event_id",
            "bookmaker",
            "market",
            "outcome",
            "price_american",
            "kind",
        ] {
            assert!(
                rows.iter().all(|r| r.get(field).is_some()),
                "every row has {field}"
            );
        }
        let u = c.next_event().unwrap();
        assert_eq!(u.event(), "odds_update");
        assert!(u.json()["count"].as_u64().unwrap() >= 1);

        let mut t = s.subscribe("/v1/sse/ticker/MSFT", &[("X-API-Key", "demo-scale")]);
        let (conn, init) = t.start();
        assert_eq!(conn.json()["tier"], "scale");
        assert_eq!(init.json()["data"][0]["symbol"], "MSFT");
        let mut last: u64 = init.id.unwrap().parse().unwrap();
        for _ in 0..3 {
            let f = t.next_event().unwrap();
            assert_eq!(f.event(), "tick");
            let id: u64 = f.id.unwrap().parse().unwrap();
            assert!(id > last);
            last = id;
        }
    }
}

/// The page at `/` and the three demo keys it uses: each key gets its tier,
/// and the coalesced tiers' frames come at most once per interval.
#[test]
fn demo_page_and_keys_show_each_tier() {
    let demo = std::fs::read_to_string(repo("config/demo.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0");
    let s = Server::start(&demo);
    let (st, head, page) = s.request("GET", "/", &[("Accept", "text/html")], b"");
    assert_eq!(st, 200);
    assert!(head.contains("Content-Type: text/html"), "{head}");
    for needle in [
        "new EventSource(",
        "demo-scale",
        "demo-enterprise",
        "demo-business",
        "apiKey=",
    ] {
        assert!(page.contains(needle), "the page uses {needle}");
    }
    let (_, head, text) = s.request("GET", "/", &[], b"");
    assert!(head.contains("text/plain") && text.contains("/v1/sse/{topic}"));

    for (key, tier, interval_ms) in [
        ("demo-scale", "scale", 0),
        ("demo-enterprise", "enterprise", 500),
        ("demo-business", "business", 1000),
    ] {
        // as the page does: the key in the query
        let mut c = s.subscribe(&format!("/v1/sse/odds/basketball_nba?apiKey={key}"), &[]);
        let (conn, _) = c.start();
        assert_eq!(conn.json()["tier"], tier);
        let stamps: Vec<u64> = (0..3)
            .map(|_| {
                let f = c.next_event().unwrap();
                assert_eq!(f.event(), "odds_update");
                f.json()["timestamp"].as_u64().unwrap()
            })
            .collect();
        for w in stamps.windows(2) {
            let gap = w[1] - w[0];
            if interval_ms > 0 {
                // ticks fall on wall-clock multiples of the interval
                assert!(gap >= interval_ms - 50, "{tier}: frames {gap} ms apart");
                assert_eq!(
                    w[1] / 10 % (interval_ms / 10),
                    0,
                    "{tier}: tick at {}",
                    w[1]
                );
            }
        }
    }
}

#[test]
fn systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is needed for this test (.ci/run installs systemd)");
    };
    assert!(out.status.success());
    let (dir, path) = unit_copy();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("sluice.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_and_help_for_every_subcommand() {
    let version = format!("sluice {}\n", env!("CARGO_PKG_VERSION"));
    for args in [&["--version"][..], &["-V"]] {
        assert_eq!(run(args), (0, version.clone(), String::new()), "{args:?}");
    }
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["serve", "check-config", "bench"] {
        assert!(out.contains(sub), "top-level help names {sub}: {out}");
    }
    for (args, needle) in [
        (&["serve", "--help"][..], "--config <FILE>"),
        (&["help", "serve"], "--config <FILE>"),
        (&["check-config", "--help"], "check-config <FILE>"),
        (&["bench", "--help"], "usage: sluice bench --url URL"),
        (&["bench", "-h"], "usage: sluice bench --url URL"),
        (&["help", "bench"], "usage: sluice bench --url URL"),
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains(needle), "{args:?}: {out}");
    }
}

#[test]
fn usage_errors_exit_1() {
    for args in [
        &["bogus"][..],
        &["check-config"],
        &["serve", "--config"],
        &["serve", "extra"],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 1, "{args:?}");
        assert!(
            out.is_empty() && err.starts_with("error: "),
            "{args:?}: {err}"
        );
    }
    // the load generator parses its own options
    let (code, _, err) = run(&["bench", "--connections", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("--connections"), "{err}");
}
