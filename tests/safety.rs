//! Safe defaults: no usable secret ships or installs, `check-config` and
//! `serve --config` warn about published ones, a busy port is refused, and
//! stream tokens minted outside sluice (any JWT library holding
//! `token_secret`) verify but never get a better tier or a longer life than
//! their key's.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

fn repo(p: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Runs a command that should stop by itself; kills it and fails after
/// `WAIT` (a second sluice that does start would otherwise serve forever).
fn run_to_exit(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn check_config(path: &std::path::Path) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_config_text(src: &str) -> (i32, String) {
    let p = temp_path("check.toml");
    std::fs::write(&p, src).unwrap();
    let r = check_config(&p);
    let _ = std::fs::remove_file(&p);
    r
}

#[test]
fn a_second_sluice_on_a_served_port_refuses_to_start() {
    for driver in DRIVERS {
        let first = Server::start_with(&config("", ""), driver);
        let addr = first.addr;
        let p = temp_path("second.toml");
        std::fs::write(&p, config("", "").replace("127.0.0.1:0", &addr.to_string())).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(&p);
        if driver == Driver::Epoll {
            cmd.env("SLUICE_DRIVER", "epoll");
        }
        let out = run_to_exit(cmd);
        let _ = std::fs::remove_file(&p);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{driver:?}: {err}");
        let last = err.trim().lines().last().unwrap_or_default();
        assert_eq!(
            last,
            format!(
                "sluice: cannot listen on {addr}: address already in use (another process serves it)"
            ),
            "{driver:?}"
        );
        // the first one still has the port, all of it
        for _ in 0..8 {
            let (st, _, body) = first.request("GET", "/healthz", &[], b"");
            assert_eq!(st, 200, "{body}");
        }
        assert!(first.stop().success());
    }
}

const TOKENS: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 2

[auth]
required = true
token_secret = "4f1d0c0b8a3e6c2d9e7f5a1b3c5d7e9f"
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
name = "one"
key = "k_business"
tier = "business"

[[topics]]
pattern = "odds/*"
key = ["id"]
"#;

/// A token as another service holding `token_secret` would mint it.
fn mint(header: &Header, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        header,
        &claims,
        &EncodingKey::from_secret(b"4f1d0c0b8a3e6c2d9e7f5a1b3c5d7e9f"),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn tokens_minted_elsewhere_get_no_more_than_their_key() {
    for driver in DRIVERS {
        let s = Server::start_with(TOKENS, driver);
        let t = now();
        let hs256 = Header::new(Algorithm::HS256); // {"typ":"JWT","alg":"HS256"}
        let tier_of = |tok: &str, bearer: bool| {
            let mut c = if bearer {
                s.subscribe(
                    "/v1/sse/odds/a",
                    &[("Authorization", &format!("Bearer {tok}"))],
                )
            } else {
                s.subscribe(&format!("/v1/sse/odds/a?token={tok}"), &[])
            };
            let (conn, _) = c.start();
            conn.json()["tier"].as_str().unwrap().to_string()
        };

        // a business key's token that claims the raw tier gets business
        let up = mint(
            &hs256,
            serde_json::json!({"sub":"one","tier":"scale","iat":t,"exp":t + 60}),
        );
        assert_eq!(tier_of(&up, false), "business", "{driver:?}");
        assert_eq!(tier_of(&up, true), "business", "{driver:?}");
        // a raw key's token may ask for less; without a tier it gets the key's
        let down = mint(
            &hs256,
            serde_json::json!({"sub":"raw","tier":"enterprise","iat":t,"exp":t + 60}),
        );
        assert_eq!(tier_of(&down, false), "enterprise");
        let mut bare = Header::new(Algorithm::HS256);
        bare.typ = None; // {"alg":"HS256"}
        let plain = mint(&bare, serde_json::json!({"sub":"raw","iat":t,"exp":t + 60}));
        assert_eq!(tier_of(&plain, true), "scale");

        // valid for years, no iat, issued tomorrow, another algorithm: 401
        let refused = [
            mint(
                &hs256,
                serde_json::json!({"sub":"raw","iat":t,"exp":t + 10 * 365 * 86400}),
            ),
            mint(&hs256, serde_json::json!({"sub":"raw","exp":t + 60})),
            mint(
                &hs256,
                serde_json::json!({"sub":"raw","iat":t + 86400,"exp":t + 86460}),
            ),
            mint(
                &Header::new(Algorithm::HS384),
                serde_json::json!({"sub":"raw","iat":t,"exp":t + 60}),
            ),
        ];
        for tok in refused {
            let c = s.subscribe(&format!("/v1/sse/odds/a?token={tok}"), &[]);
            assert_eq!(c.status, 401, "{tok}: {}", c.body_if_error);
            assert!(c.body_if_error.contains("\"unauthorized\""));
        }
    }
}

#[test]
fn the_example_config_ships_no_usable_secret_and_says_so() {
    let example = std::fs::read_to_string(repo("config/sluice.toml")).unwrap();
    assert!(!example.contains("change-me"));
    assert!(!example.contains("sk_live_acme"));
    assert!(
        !example.contains("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        "sha256(\"test\") is not a secret"
    );
    let (code, err) = check_config(&repo("config/sluice.toml"));
    assert_eq!(code, 0, "{err}");
    for needle in [
        "warning: key 'acme' has the placeholder key_sha256",
        "warning: key 'feed' has the placeholder key_sha256",
        "warning: [[sources]] kind = \"demo\"",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!err.contains("token_secret"), "empty is random: {err}");

    // the other examples' shared secrets are flagged, never printed
    for f in [
        "config/odds.toml",
        "config/ticker.toml",
        "config/game-results.toml",
        "config/chain-events.toml",
        "config/event-router.toml",
        "config/demo.toml",
    ] {
        let (code, err) = check_config(&repo(f));
        assert_eq!(code, 0, "{f}: {err}");
        assert!(
            err.contains("uses a published example secret"),
            "{f}: {err}"
        );
        for secret in ["pk_publisher_change_me", "demo-public-key-2026", "sk_live_"] {
            assert!(!err.contains(secret), "{err}");
        }
    }
}

#[test]
fn check_config_and_serve_warn_about_published_secrets() {
    let bad = config(
        "",
        "[[keys]]\nname = \"copied\"\nkey = \"sk_live_acme\"\ntier = \"scale\"\n",
    )
    .replace(
        "required = false",
        "required = false\ntoken_secret = \"change-me\"",
    );
    let (code, err) = check_config_text(&bad);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: auth.token_secret is a published example"),
        "{err}"
    );
    assert!(
        err.contains("warning: key 'copied' uses a published example secret"),
        "{err}"
    );
    assert!(!err.contains("change-me") && !err.contains("sk_live_acme"));
    assert_eq!(err.lines().count(), 2, "{err}");

    let short = bad.replace("change-me", "hunter2");
    let (_, err) = check_config_text(&short);
    assert!(err.contains("auth.token_secret has 7 bytes"), "{err}");

    let fine = config("", "").replace(
        "required = false",
        "required = false\ntoken_secret = \"8f02e52c5a7aed6edbc1ec26416e4e01\"",
    );
    assert_eq!(check_config_text(&fine), (0, String::new()));

    // serve --config logs the same at start, before it listens
    let p = temp_path("bad.toml");
    std::fs::write(&p, &bad).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&p)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut logs = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while !logs.contains("listening on") {
        let line = lines.next().expect("sluice exited").unwrap();
        logs.push_str(&line);
        logs.push('\n');
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&p);
    assert!(
        logs.contains("auth.token_secret is a published example")
            && logs.contains("key 'copied' uses a published example secret"),
        "{logs}"
    );
}

#[test]
fn the_installer_writes_a_config_with_fresh_secrets_and_no_demo() {
    let generate = || {
        let out = Command::new("bash")
            .arg(repo("scripts/install.sh"))
            .arg("--print-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap().trim().to_string(),
        )
    };
    let (cfg, admin) = generate();
    let (cfg2, admin2) = generate();
    let secret = |c: &str| {
        c.lines()
            .find_map(|l| l.strip_prefix("token_secret = \""))
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_string()
    };
    assert_eq!(secret(&cfg).len(), 64, "{cfg}");
    assert!(secret(&cfg).bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(secret(&cfg), secret(&cfg2));
    assert_ne!(admin, admin2);
    assert!(!cfg.contains(&admin), "only the digest is stored");
    assert!(
        !cfg.contains("[[sources]]") && !cfg.contains("\"demo\""),
        "{cfg}"
    );
    assert!(!cfg.contains(&"0".repeat(64)), "{cfg}");

    let p = temp_path("installed.toml");
    std::fs::write(&p, &cfg).unwrap();
    let (code, err) = check_config(&p);
    let _ = std::fs::remove_file(&p);
    assert_eq!((code, err.as_str()), (0, ""), "{cfg}");

    let s = Server::start(&cfg.replace("127.0.0.1:8080", "127.0.0.1:0"));
    let (st, _, body) = s.request("GET", "/v1/topics", &[("X-API-Key", &admin)], b"");
    assert_eq!(st, 200, "{body}");
    assert_eq!(s.request("GET", "/v1/topics", &[], b"").0, 401);
    let c = s.subscribe("/v1/sse/odds/x", &[("X-API-Key", "test")]);
    assert_eq!(c.status, 401);
    let (st, _, body) = s.request(
        "POST",
        "/v1/publish/odds/x",
        &[("X-API-Key", &admin)],
        br#"{"event_id":"e","bookmaker":"b","market":"m","outcome":"o"}"#,
    );
    assert_eq!(st, 202, "{body}");
}
