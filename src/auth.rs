//! API keys, roles, stream tokens and the credential forms of SPEC §2.
//!
//! Cold module (runs once per request, never per event). Secrets are kept only
//! as SHA-256 digests; a presented credential is hashed once and looked up by
//! digest, then compared in constant time, so neither timing nor a log line
//! can reveal a key. Only a key's `name` ever leaves this module.
//!
//! Stream tokens are HS256 JWTs (RFC 7519) signed with `token_secret`: the
//! MAC is the `hmac` crate's HMAC-SHA-256, checked in constant time; only
//! the header `{"alg":"HS256","typ":"JWT"}` is accepted (no `none`, no
//! algorithm switching). Claims: `sub` (the key's name), `tier`, optional
//! `topic` (the scope), `iat`, `exp`.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use simd_json::prelude::*;
use subtle::ConstantTimeEq;

use crate::config::{Key, Settings};

/// What a key may do. Every role may subscribe; `publisher` and `admin` may
/// publish; only `admin` may list topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Subscriber,
    Publisher,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "subscriber" => Some(Role::Subscriber),
            "publisher" => Some(Role::Publisher),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn may_publish(self) -> bool {
        matches!(self, Role::Publisher | Role::Admin)
    }
}

/// A key's secret, as the SHA-256 digest of its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySecret([u8; 32]);

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

impl KeySecret {
    pub fn plain(key: &str) -> KeySecret {
        KeySecret(Sha256::digest(key.as_bytes()).into())
    }

    pub fn from_sha256_hex(hex_digest: &str) -> Option<KeySecret> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digest.trim(), &mut out).ok()?;
        Some(KeySecret(out))
    }
}

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

/// `{"alg":"HS256","typ":"JWT"}`, base64url: the only header accepted.
const JWT_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

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
            .map(|(i, k)| (k.secret.0, i))
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

    /// Checks a stream token's signature, expiry and claims.
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
        if header != JWT_HEADER {
            return Err(AuthError::Forged);
        }
        let sig = B64.decode(sig).map_err(|_| AuthError::Forged)?;
        let signed = &token[..header.len() + 1 + payload.len()];
        mac(settings, signed.as_bytes())
            .verify_slice(&sig)
            .map_err(|_| AuthError::Forged)?;
        // Signed by us from here on: malformed claims mean another
        // configuration (a key or tier since removed), not an attack.
        let mut json = B64.decode(payload).map_err(|_| AuthError::Forged)?;
        let v = simd_json::to_borrowed_value(&mut json).map_err(|_| AuthError::Forged)?;
        let exp = v.get_u64("exp").ok_or(AuthError::Forged)?;
        if now_s >= exp {
            return Err(AuthError::Expired);
        }
        let key = v
            .get_str("sub")
            .and_then(|n| self.by_name.get(n))
            .copied()
            .ok_or(AuthError::Unknown)?;
        let tier = v
            .get_str("tier")
            .and_then(|t| settings.tiers.iter().position(|x| x.name == t))
            .ok_or(AuthError::Unknown)?;
        let topic = v.get_str("topic").map(Into::into);
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
            Some(&i) if bool::from(settings.keys[i].secret.0.ct_eq(&digest)) => {
                Ok(Principal::Key(i))
            }
            _ => Err(AuthError::Unknown),
        }
    }
}

/// Picks the credential of a request: headers first (`X-API-Key`,
/// `Authorization: Bearer`, `X-Consumer-Key`), then the query (`apiKey`,
/// `api_key`, `token`).
pub fn find_credential<'a>(
    headers: &[(&'a str, &'a str)],
    query: &[(&'a str, &'a str)],
) -> Option<Credential<'a>> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
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
        let source = if k.starts_with(JWT_HEADER) && k.matches('.').count() == 2 {
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
        if let Some((_, v)) = query.iter().find(|(n, _)| *n == name) {
            return Some(Credential { value: v, source });
        }
    }
    None
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

    #[test]
    fn header_beats_query_and_order_is_spec_order() {
        let h = [("Authorization", "Bearer b"), ("X-Consumer-Key", "c")];
        let q = [("apiKey", "q")];
        let c = find_credential(&h, &q).unwrap();
        assert_eq!((c.value, c.source), ("b", CredentialSource::Header));
        let c = find_credential(&[("x-api-key", "x")], &q).unwrap();
        assert_eq!(c.value, "x");
        let c = find_credential(&[], &[("api_key", "a"), ("token", "t")]).unwrap();
        assert_eq!((c.value, c.source), ("a", CredentialSource::Query));
        assert!(find_credential(&[("Authorization", "Basic x")], &[]).is_none());
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
