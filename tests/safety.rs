//! Safe defaults: no usable secret ships or installs, `check-config` and
//! `serve --config` warn about published ones, a busy port is refused, and
//! stream tokens minted outside sluice (any JWT library holding
//! `token_secret`) verify but never get a better tier or a longer life than
//! their key's.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

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
