//! API keys, roles, stream tokens and the credential forms of SPEC §2.
//!
//! Cold module (runs once per request, never per event). Secrets are kept only
//! as SHA-256 digests; a presented credential is hashed once and looked up by
//! digest, then compared in constant time, so neither timing nor a log line
//! can reveal a key. Only a key's `name` ever leaves this module.
//!
//! Stream tokens are HS256 JWTs (RFC 7519) signed with `token_secret`: the
//! MAC is the `hmac` crate's HMAC-SHA-256, checked in constant time. sluice
//! issues them with the header `{"alg":"HS256","typ":"JWT"}` and the claims
//! `sub` (the key's name), `tier`, optional `topic` (the scope), `iat` and
//! `exp`. Anything that holds `token_secret` can mint them, so a token is
//! checked as if a stranger had signed it:
//!
//! * the header is any JSON object whose `alg` is exactly `"HS256"`, in any
//!   field order, with `typ` absent or `"JWT"` and other fields (`kid`)
//!   ignored; `alg` `none` or any other algorithm, and any `crit`, are
//!   refused, as is anything whose signature does not verify;
//! * `sub` must name a configured key; `iat` and `exp` are required integer
//!   seconds; `iat` may be at most [`TOKEN_CLOCK_SKEW_S`] in the future,
//!   `exp - iat` at most the current `token_ttl_s`, and `nbf`, when given,
//!   at most [`TOKEN_CLOCK_SKEW_S`] in the future; otherwise the token is not
//!   valid (401). So a token accepted now expires within
//!   `token_ttl_s + TOKEN_CLOCK_SKEW_S` seconds, whoever signed it;
//! * the tier granted is the key's *current* tier, or the token's `tier`
//!   when that one coalesces strictly more (a larger `coalesce_ms`): a token
//!   can narrow its key's tier, never widen it, and a key downgraded by a
//!   reload downgrades its tokens. A `tier` naming no configured tier is
//!   refused; without `tier` the key's tier applies;
//! * `topic`, when given, must be a string and scopes the token to it.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use simd_json::prelude::*;
use subtle::ConstantTimeEq;

pub use crate::config::values::{KeySecret, Role};
use crate::config::{Key, Settings};

/// Where a credential came from (first match wins, in SPEC order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Header,
    Query,
    Token,
}

/// A credential found on a request (borrowed from the request buffer).
#[derive(Debug, Clone, Copy)]
pub struct Credential<'a> {
    pub value: &'a str,
    pub source: CredentialSource,
}

/// What a valid stream token grants: its key's rights to subscribe, at the
/// tier it names, to its topic only when scoped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key: usize,
    pub tier: usize,
    pub topic: Option<Box<str>>,
}

/// Who is asking: a configured key, a stream token, or the anonymous tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Key(usize),
    Token(Grant),
    Anonymous,
}

impl Principal {
    /// The key this request counts against, if any.
    pub fn key(&self) -> Option<usize> {
        match self {
            Principal::Key(k) => Some(*k),
            Principal::Token(g) => Some(g.key),
            Principal::Anonymous => None,
        }
    }
}

/// Why a request's credential was refused (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Unknown,
    Expired,
    Forged,
}

impl AuthError {
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "an API key is required",
            AuthError::Unknown => "unknown API key",
            AuthError::Expired => "the stream token has expired",
            AuthError::Forged => "the stream token is not valid",
        }
    }
}

/// Longest stream token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 2048;

type HmacSha256 = hmac::Hmac<Sha256>;

/// `{"alg":"HS256","typ":"JWT"}`, base64url: the header of the tokens sluice
/// issues.
const JWT_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// How far in the future a token's `iat` (or `nbf`) may lie: the clock
/// difference tolerated between the signer and this node.
pub const TOKEN_CLOCK_SKEW_S: u64 = 60;

/// The key table, indexed by digest and by name.
pub struct Keys {
    by_digest: HashMap<[u8; 32], usize>,
    by_name: HashMap<String, usize>,
}

impl Keys {
    pub fn new(keys: &[Key]) -> Keys {
        let by_digest = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (*k.secret.digest(), i))
            .collect();
        let by_name = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.name.clone(), i))
            .collect();
        Keys { by_digest, by_name }
    }

    /// Issues a stream token for key `key`, scoped to `topic` if given,
    /// valid for `token_ttl_s` from `now_s`.
    pub fn issue_token(
        &self,
        settings: &Settings,
        key: usize,
        topic: Option<&str>,
        now_s: u64,
    ) -> String {
        let k = &settings.keys[key];
        let mut claims = bytes::BytesMut::with_capacity(128);
        claims.extend_from_slice(b"{\"sub\":\"");
        crate::sse::json_str_body(&mut claims, &k.name);
        claims.extend_from_slice(b"\",\"tier\":\"");
        crate::sse::json_str_body(&mut claims, &settings.tiers[k.tier].name);
        claims.extend_from_slice(b"\"");
        if let Some(t) = topic {
            claims.extend_from_slice(b",\"topic\":\"");
            crate::sse::json_str_body(&mut claims, t);
            claims.extend_from_slice(b"\"");
        }
        let exp = now_s + u64::from(settings.token_ttl_s);
        claims.extend_from_slice(format!(",\"iat\":{now_s},\"exp\":{exp}}}").as_bytes());
        let mut token = String::with_capacity(256);
        token.push_str(JWT_HEADER);
        token.push('.');
        B64.encode_string(&claims, &mut token);
        let sig = mac(settings, token.as_bytes()).finalize().into_bytes();
        token.push('.');
        B64.encode_string(sig, &mut token);
        token
    }

    /// Checks a stream token's header, signature, lifetime and claims, and
    /// clamps its tier to its key's (see the module doc).
    pub fn verify_token(
        &self,
        settings: &Settings,
        token: &str,
        now_s: u64,
    ) -> Result<Grant, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Forged);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Forged);
        };
        if !header_is_hs256(header) {
            return Err(AuthError::Forged);
        }
        let sig = B64.decode(sig).map_err(|_| AuthError::Forged)?;
        let signed = &token[..header.len() + 1 + payload.len()];
        mac(settings, signed.as_bytes())
            .verify_slice(&sig)
            .map_err(|_| AuthError::Forged)?;
        // Signed with our secret, but possibly by another system that holds
        // it: every claim is checked against this node's configuration.
        let mut json = B64.decode(payload).map_err(|_| AuthError::Forged)?;
        let v = simd_json::to_borrowed_value(&mut json).map_err(|_| AuthError::Forged)?;
        if !v.is_object() {
            return Err(AuthError::Forged);
        }
        let iat = v.get_u64("iat").ok_or(AuthError::Forged)?;
        let exp = v.get_u64("exp").ok_or(AuthError::Forged)?;
        let latest_iat = now_s.saturating_add(TOKEN_CLOCK_SKEW_S);
        if iat > latest_iat || exp > iat.saturating_add(u64::from(settings.token_ttl_s)) {
            return Err(AuthError::Forged);
        }
        if let Some(nbf) = v.get("nbf") {
            match nbf.as_u64() {
                Some(nbf) if nbf <= latest_iat => {}
                _ => return Err(AuthError::Forged),
            }
        }
        if now_s >= exp {
            return Err(AuthError::Expired);
        }
        let key = v
            .get_str("sub")
            .and_then(|n| self.by_name.get(n))
            .copied()
            .ok_or(AuthError::Unknown)?;
        let key_tier = settings.keys[key].tier;
        let tier = match v.get("tier") {
            None => key_tier,
            Some(t) => {
                let claimed = t
                    .as_str()
                    .and_then(|t| settings.tiers.iter().position(|x| x.name == t))
                    .ok_or(AuthError::Unknown)?;
                if settings.tiers[claimed].coalesce_ms > settings.tiers[key_tier].coalesce_ms {
                    claimed
                } else {
                    key_tier
                }
            }
        };
        let topic = match v.get("topic") {
            None => None,
            Some(t) => Some(t.as_str().ok_or(AuthError::Forged)?.into()),
        };
        Ok(Grant { key, tier, topic })
    }

    /// Resolves a request's credential to a principal.
    pub fn authenticate(
        &self,
        settings: &Settings,
        cred: Option<Credential<'_>>,
    ) -> Result<Principal, AuthError> {
        let Some(cred) = cred else {
            return if settings.auth_required {
                Err(AuthError::Missing)
            } else {
                Ok(Principal::Anonymous)
            };
        };
        if cred.source == CredentialSource::Token {
            return self
                .verify_token(settings, cred.value, crate::time::unix_secs())
                .map(Principal::Token);
        }
        let digest: [u8; 32] = Sha256::digest(cred.value.as_bytes()).into();
        match self.by_digest.get(&digest) {
            Some(&i) if bool::from(settings.keys[i].secret.digest().ct_eq(&digest)) => {
                Ok(Principal::Key(i))
            }
            _ => Err(AuthError::Unknown),
        }
    }
}

/// Picks the credential of a request: headers first (`X-API-Key`,
/// `Authorization: Bearer`, `X-Consumer-Key`), then the query (`apiKey`,
/// `api_key`, `token`).
pub fn find_credential<'a, H: AsRef<str>, Q: AsRef<str>>(
    headers: &'a [(H, H)],
    query: &'a [(Q, Q)],
) -> Option<Credential<'a>> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref().trim())
    };
    if let Some(v) = header("x-api-key") {
        return Some(Credential {
            value: v,
            source: CredentialSource::Header,
        });
    }
    if let Some(v) = header("authorization")
        && let Some(k) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        let k = k.trim();
        // A bearer value is a key or a stream token; tokens are JWTs.
        let source = if looks_like_jwt(k) {
            CredentialSource::Token
        } else {
            CredentialSource::Header
        };
        return Some(Credential { value: k, source });
    }
    if let Some(v) = header("x-consumer-key") {
        return Some(Credential {
            value: v,
            source: CredentialSource::Header,
        });
    }
    for (name, source) in [
        ("apiKey", CredentialSource::Query),
        ("api_key", CredentialSource::Query),
        ("token", CredentialSource::Token),
    ] {
        if let Some((_, v)) = query.iter().find(|(n, _)| n.as_ref() == name) {
            return Some(Credential {
                value: v.as_ref(),
                source,
            });
        }
    }
    None
}

/// Whether a JWT's base64url header is a JSON object with `alg` exactly
/// `HS256`, `typ` absent or `JWT`, and no `crit` (RFC 7515 §4.1.11: unknown
/// critical extensions must be refused, and we know none).
fn header_is_hs256(header: &str) -> bool {
    let Ok(mut json) = B64.decode(header) else {
        return false;
    };
    let Ok(v) = simd_json::to_borrowed_value(&mut json) else {
        return false;
    };
    v.is_object()
        && v.get_str("alg") == Some("HS256")
        && v.get("typ")
            .is_none_or(|t| t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT")))
        && v.get("crit").is_none()
}

/// Whether a bearer value is a JWT rather than an API key: three dot-
/// separated parts, the first a base64url JSON object.
fn looks_like_jwt(v: &str) -> bool {
    let Some((header, _)) = v.split_once('.') else {
        return false;
    };
    v.len() <= MAX_TOKEN_BYTES
        && v.matches('.').count() == 2
        && B64
            .decode(header)
            .is_ok_and(|h| h.trim_ascii_start().first() == Some(&b'{'))
}

fn mac(settings: &Settings, data: &[u8]) -> HmacSha256 {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(&settings.token_secret)
        .expect("HMAC takes a key of any length");
    m.update(data);
    m
}

#[cfg(test)]
mod tests {
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
}
