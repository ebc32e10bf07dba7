//! Safe defaults: no usable secret ships or installs, `check-config` and
//! `serve --config` warn about published ones, a busy port is refused, and
//! stream tokens minted outside sluice (any JWT library holding
//! `token_secret`) verify but never get a better tier or a longer life than
//! their key's.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

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
