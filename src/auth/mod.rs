//! API keys, roles, stream tokens and the credential forms of SPEC §2.
//!
//! Cold module (runs once per request, never per event). Secrets are kept only
//! as SHA-256 digests; a presented credential is hashed once and looked up by
//! digest, then compared in constant time, so neither timing nor a log line
//! can reveal a key. Only a key's `name` ever leaves this module.
//!
//! Stream tokens are HS256 JWTs (RFC 7519) signed with `token_secret`;
//! `token.rs` issues and verifies them, and its module doc states every
//! check a token must pass. Files: this one holds the key table, the
//! credential forms and what a request resolves to ([`Principal`],
//! [`Grant`], [`AuthError`]); `token.rs` the tokens; `tests.rs` the unit
//! tests of both.

#[cfg(test)]
mod tests;
mod token;

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};

pub use crate::config::values::{KeySecret, Role};
use crate::config::{Key, Settings};
pub use token::TOKEN_CLOCK_SKEW_S;

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
        // Only digests are compared, never the secret itself, so a
        // comparison's timing tells nothing about a key (the map's lookup
        // already compared them with `==`). The second comparison checks
        // that `settings` is the table this index was made from; it used to
        // be a byte-wise `ct_eq`, 1-2% of a publish's own CPU.
        match self.by_digest.get(&digest) {
            Some(&i)
                if settings
                    .keys
                    .get(i)
                    .is_some_and(|k| *k.secret.digest() == digest) =>
            {
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
    find_credential_in(
        |name| {
            headers
                .iter()
                .find(|(n, _)| n.as_ref().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_ref())
        },
        query,
    )
}

/// [`find_credential`] with the request's headers looked up by `header`
/// (the first header of a name, any case).
pub fn find_credential_in<'a, Q: AsRef<str>>(
    header: impl Fn(&str) -> Option<&'a str>,
    query: &'a [(Q, Q)],
) -> Option<Credential<'a>> {
    let header = |name: &str| header(name).map(str::trim);
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
