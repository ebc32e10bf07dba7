//! Unit tests of keys, credentials and stream tokens: round trips, forged
//! and foreign tokens, tier clamping, lifetimes, credential order.

use hmac::Mac;

use super::token::{JWT_HEADER, mac};
use super::*;

const NO_PAIRS: &[(&str, &str)] = &[];

fn settings() -> Settings {
    Settings::from_toml(
        "[auth]\ntoken_secret = \"s3cret\"\ntoken_ttl_s = 60\n\
         [[keys]]\nname = \"acme \\\"q\\\"\"\nkey = \"sk_acme\"\ntier = \"enterprise\"\n",
    )
    .unwrap()
}

#[test]
fn tokens_round_trip_and_expire() {
    let s = settings();
    let keys = Keys::new(&s.keys);
    let t = keys.issue_token(&s, 0, Some("odds/nba"), 1000);
    assert!(
        t.starts_with("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."),
        "{t}"
    );
    let g = keys.verify_token(&s, &t, 1059).unwrap();
    assert_eq!(
        g,
        Grant {
            key: 0,
            tier: 1,
            topic: Some("odds/nba".into())
        }
    );
    assert_eq!(keys.verify_token(&s, &t, 1060), Err(AuthError::Expired));
    let unscoped = keys.issue_token(&s, 0, None, 1000);
    assert_eq!(keys.verify_token(&s, &unscoped, 1000).unwrap().topic, None);
}

#[test]
fn the_longest_names_give_a_token_that_verifies() {
    // Control characters take 6 bytes each once JSON-escaped.
    let name: String = "\u{1}".repeat(crate::config::values::MAX_NAME_BYTES);
    let toml_name: String = "\\u0001".repeat(crate::config::values::MAX_NAME_BYTES);
    let s = Settings::from_toml(&format!(
        "[auth]\ntoken_secret = \"s3cret\"\n[tiers.\"{toml_name}\"]\ncoalesce_ms = 0\n\
         [[keys]]\nname = \"{toml_name}\"\nkey = \"sk\"\ntier = \"{toml_name}\"\n"
    ))
    .unwrap();
    assert_eq!(s.keys[0].name, name);
    let keys = Keys::new(&s.keys);
    let topic = "a".repeat(crate::config::values::MAX_TOPIC_BYTES);
    let t = keys.issue_token(&s, 0, Some(&topic), u64::from(u32::MAX) * 1000);
    assert!(t.len() <= MAX_TOKEN_BYTES, "{} bytes", t.len());
    assert!(
        keys.verify_token(&s, &t, u64::from(u32::MAX) * 1000)
            .is_ok()
    );
    // One byte more is a config error.
    let long = "k".repeat(crate::config::values::MAX_NAME_BYTES + 1);
    let e = Settings::from_toml(&format!(
        "[[keys]]\nname = \"{long}\"\nkey = \"sk\"\ntier = \"raw\"\n"
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("key names must be 1..64 bytes"),
        "{e}"
    );
}

#[test]
fn forged_tokens_are_refused() {
    let s = settings();
    let keys = Keys::new(&s.keys);
    let t = keys.issue_token(&s, 0, None, 1000);
    let (head_payload, sig) = t.rsplit_once('.').unwrap();
    // another secret
    let mut other = s.clone();
    other.token_secret = b"other".to_vec();
    assert_eq!(keys.verify_token(&other, &t, 1000), Err(AuthError::Forged));
    // a changed payload under the old signature
    let (head, _) = head_payload.split_once('.').unwrap();
    let evil = B64.encode(br#"{"sub":"acme","tier":"scale","iat":0,"exp":99999999999}"#);
    assert_eq!(
        keys.verify_token(&s, &format!("{head}.{evil}.{sig}"), 1000),
        Err(AuthError::Forged)
    );
    // alg none
    let none = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let (_, rest) = t.split_once('.').unwrap();
    assert_eq!(
        keys.verify_token(&s, &format!("{none}.{rest}"), 1000),
        Err(AuthError::Forged)
    );
    for junk in ["", "a.b", "a.b.c.d", &"x".repeat(5000)] {
        assert_eq!(keys.verify_token(&s, junk, 1000), Err(AuthError::Forged));
    }
}

/// A token signed with `s`'s secret, as any JWT encoder could make it.
fn mint(s: &Settings, header: &str, claims: &str) -> String {
    let signed = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = mac(s, signed.as_bytes()).finalize().into_bytes();
    format!("{signed}.{}", B64.encode(sig))
}

const SUB: &str = r#""sub":"acme \"q\"""#;

#[test]
fn any_hs256_header_verifies_and_nothing_else_does() {
    let s = settings();
    let keys = Keys::new(&s.keys);
    let claims = format!(r#"{{{SUB},"iat":1000,"exp":1060}}"#);
    for header in [
        r#"{"typ":"JWT","alg":"HS256"}"#,
        r#"{"alg":"HS256"}"#,
        r#"{"alg":"HS256","typ":"jwt","kid":"2026-01"}"#,
        r#" { "kid" : 7 , "alg" : "HS256" } "#,
    ] {
        let t = mint(&s, header, &claims);
        assert_eq!(
            keys.verify_token(&s, &t, 1000).map(|g| g.key),
            Ok(0),
            "{header}"
        );
        let bearer = format!("Bearer {t}");
        let headers = [("Authorization", bearer.as_str())];
        let c = find_credential(&headers, NO_PAIRS).unwrap();
        assert_eq!(c.source, CredentialSource::Token, "{header}");
    }
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"HS512","typ":"JWT"}"#,
        r#"{"alg":"hs256"}"#,
        r#"{"alg":["HS256"]}"#,
        r#"{"typ":"JWT"}"#,
        r#"{"alg":"HS256","typ":"JWE"}"#,
        r#"{"alg":"HS256","typ":1}"#,
        r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
        r#"["HS256"]"#,
        r#""HS256""#,
        "{",
    ] {
        let t = mint(&s, header, &claims);
        assert_eq!(
            keys.verify_token(&s, &t, 1000),
            Err(AuthError::Forged),
            "{header}"
        );
    }
}

#[test]
fn tokens_of_a_jwt_library_verify_and_ours_decode_there() {
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    let s = settings();
    let keys = Keys::new(&s.keys);
    let now = crate::time::unix_secs();
    // jsonwebtoken writes {"typ":"JWT","alg":"HS256"}
    let claims = serde_json::json!({
        "sub": "acme \"q\"", "tier": "business", "topic": "odds/nba",
        "iat": now, "exp": now + 60,
    });
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap();
    assert!(!t.starts_with(JWT_HEADER), "{t}");
    assert_eq!(
        keys.verify_token(&s, &t, now),
        Ok(Grant {
            key: 0,
            tier: 2,
            topic: Some("odds/nba".into())
        })
    );
    let ours = keys.issue_token(&s, 0, Some("odds/nba"), now);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        &ours,
        &DecodingKey::from_secret(b"s3cret"),
        &validation,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], "acme \"q\"");
    assert_eq!(data.claims["tier"], "enterprise");
    assert_eq!(data.claims["exp"], now + 60);
}

#[test]
fn a_tokens_tier_is_never_better_than_its_keys() {
    let s = settings();
    let keys = Keys::new(&s.keys);
    let tier_of = |s: &Settings, claims: &str| {
        let t = mint(s, r#"{"alg":"HS256"}"#, claims);
        keys.verify_token(s, &t, 1000).map(|g| g.tier)
    };
    // acme is enterprise (1): scale (0) is clamped, business (2) kept
    let with = |tier: &str| format!(r#"{{{SUB},"tier":"{tier}","iat":1000,"exp":1060}}"#);
    assert_eq!(tier_of(&s, &with("scale")), Ok(1));
    assert_eq!(tier_of(&s, &with("enterprise")), Ok(1));
    assert_eq!(tier_of(&s, &with("business")), Ok(2));
    assert_eq!(
        tier_of(&s, &format!(r#"{{{SUB},"iat":1000,"exp":1060}}"#)),
        Ok(1)
    );
    assert_eq!(tier_of(&s, &with("gold")), Err(AuthError::Unknown));
    // the key downgraded since: its old tokens follow it
    let mut down = s.clone();
    down.keys[0].tier = 2;
    let ours = keys.issue_token(&s, 0, None, 1000);
    assert_eq!(keys.verify_token(&down, &ours, 1000).map(|g| g.tier), Ok(2));
    // a tier with the same interval but another name is not granted
    let mut twin = s.clone();
    twin.tiers.push(crate::config::Tier {
        name: "gold".into(),
        coalesce_ms: 500,
        cadence: twin.tiers[1].cadence,
    });
    assert_eq!(tier_of(&twin, &with("gold")), Ok(1));
}

#[test]
fn a_tokens_lifetime_is_capped_by_token_ttl_s() {
    let s = settings();
    let keys = Keys::new(&s.keys);
    let check = |claims: String| {
        let t = mint(&s, r#"{"typ":"JWT","alg":"HS256"}"#, &claims);
        keys.verify_token(&s, &t, 1000).map(|g| g.key)
    };
    let forged = Err(AuthError::Forged);
    assert_eq!(check(format!(r#"{{{SUB},"iat":1000,"exp":1060}}"#)), Ok(0));
    assert_eq!(check(format!(r#"{{{SUB},"iat":1000,"exp":1061}}"#)), forged);
    // years: what a leaked example secret would have allowed
    let years = format!(r#"{{{SUB},"iat":1000,"exp":99999999999}}"#);
    assert_eq!(check(years), forged);
    assert_eq!(check(format!(r#"{{{SUB},"exp":1060}}"#)), forged);
    assert_eq!(
        check(format!(r#"{{{SUB},"iat":"1000","exp":1060}}"#)),
        forged
    );
    assert_eq!(check(format!(r#"{{{SUB},"iat":1000}}"#)), forged);
    // issued in the future: within the clock skew only
    let skew = TOKEN_CLOCK_SKEW_S;
    let at = |iat: u64| format!(r#"{{{SUB},"iat":{iat},"exp":{}}}"#, iat + 60);
    assert_eq!(check(at(1000 + skew)), Ok(0));
    assert_eq!(check(at(1001 + skew)), forged);
    let nbf = |nbf: u64| format!(r#"{{{SUB},"iat":1000,"exp":1060,"nbf":{nbf}}}"#);
    assert_eq!(check(nbf(1000 + skew)), Ok(0));
    assert_eq!(check(nbf(1001 + skew)), forged);
    // expired, and other claims of the wrong shape
    assert_eq!(
        check(format!(r#"{{{SUB},"iat":900,"exp":960}}"#)),
        Err(AuthError::Expired)
    );
    let topic = format!(r#"{{{SUB},"topic":["a"],"iat":1000,"exp":1060}}"#);
    assert_eq!(check(topic), forged);
    let unknown = r#"{"sub":"nobody","iat":1000,"exp":1060}"#.to_string();
    assert_eq!(check(unknown), Err(AuthError::Unknown));
    assert_eq!(check("[1000]".into()), forged);
}

#[test]
fn header_beats_query_and_order_is_spec_order() {
    let h = [("Authorization", "Bearer b"), ("X-Consumer-Key", "c")];
    let q = [("apiKey", "q")];
    let c = find_credential(&h, &q).unwrap();
    assert_eq!((c.value, c.source), ("b", CredentialSource::Header));
    let c = find_credential(&[("x-api-key", "x")], &q).unwrap();
    assert_eq!(c.value, "x");
    let c = find_credential(NO_PAIRS, &[("api_key", "a"), ("token", "t")]).unwrap();
    assert_eq!((c.value, c.source), ("a", CredentialSource::Query));
    assert!(find_credential(&[("Authorization", "Basic x")], NO_PAIRS).is_none());
}

#[test]
fn sha256_and_plain_keys_match_the_same_secret() {
    let hex = hex::encode(Sha256::digest(b"sk_live"));
    assert_eq!(
        KeySecret::from_sha256_hex(&hex).unwrap(),
        KeySecret::plain("sk_live")
    );
    assert!(KeySecret::from_sha256_hex("abc").is_none());
}
