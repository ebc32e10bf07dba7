//! API keys, roles and the credential forms of SPEC §2.
//!
//! Cold module (runs once per request, never per event). Secrets are kept only
//! as SHA-256 digests; a presented credential is hashed once and looked up by
//! digest, then compared in constant time, so neither timing nor a log line
//! can reveal a key. Only a key's `name` ever leaves this module.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
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

/// Who is asking: a configured key, or the anonymous tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Key(usize),
    Anonymous,
}

/// Why a request's credential was refused (SPEC §4 codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Unknown,
    TokenUnsupported,
}

impl AuthError {
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "an API key is required",
            AuthError::Unknown => "unknown API key",
            AuthError::TokenUnsupported => "stream tokens are not accepted by this build",
        }
    }
}

/// The key table, indexed by digest.
pub struct Keys {
    by_digest: HashMap<[u8; 32], usize>,
}

impl Keys {
    pub fn new(keys: &[Key]) -> Keys {
        let by_digest = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.secret.0, i))
            .collect();
        Keys { by_digest }
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
            return Err(AuthError::TokenUnsupported);
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
        return Some(Credential {
            value: k.trim(),
            source: CredentialSource::Header,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

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
