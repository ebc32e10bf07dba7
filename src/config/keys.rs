//! `[auth]` and `[[keys]]`: the token secret, the anonymous tier and the
//! API keys (as SHA-256 digests, with role, tier and topic patterns), and
//! the warnings about secrets that are published or guessable.
//!
//! Owns these sections' checks and the list of published example secrets.
//! Never verifies a request's key or token (`auth` does, with these
//! settings), never prints a secret (warnings name the key, not its
//! value), reads nothing but `/dev/urandom` (for a per-process
//! `token_secret`), and never imports crate code.

use std::ops::Range;

use super::error::ConfigError;
use super::raw::{RawAuth, RawKey};
use super::tiers::{Tier, index as tier_index};
use super::topics::{Pattern, parse_patterns};
use super::values::{KeySecret, MAX_NAME_BYTES, Role};

/// Secrets that ship in this repository's example configs, README and
/// docs, and the usual stand-ins: [`Settings::warnings`] flags a
/// `token_secret` or key that uses one.
///
/// [`Settings::warnings`]: super::Settings::warnings
pub const EXAMPLE_SECRETS: &[&str] = &[
    "change-me",
    "change_me",
    "changeme",
    "secret",
    "test",
    "password",
    "sk_live_acme",
    "sk_live_example",
    "sk_live_xxxxx",
    "pk_live_scale",
    "pk_live_enterprise",
    "pk_live_business",
    "pk_publisher_change_me",
    "demo-scale",
    "demo-enterprise",
    "demo-business",
    "demo-publisher",
    "demo-admin",
    "demo-public-key-2026",
    "set-the-same-random-secret-on-every-node",
];

/// Shortest `token_secret` that [`Settings::warnings`] does not call
/// guessable (an HS256 secret can be searched offline from any token).
///
/// [`Settings::warnings`]: super::Settings::warnings
pub const MIN_TOKEN_SECRET_BYTES: usize = 16;

/// One `[[keys]]` entry, validated.
#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub secret: KeySecret,
    pub tier: usize,
    pub role: Role,
    pub max_connections: u32,
    pub topics: Vec<Pattern>,
}

/// `[auth]`, validated.
pub(super) struct Auth {
    pub(super) required: bool,
    /// Index into the tiers (0 when keys are required and the default
    /// anonymous tier does not exist).
    pub(super) anonymous_tier: usize,
    pub(super) token_secret: Vec<u8>,
    /// `token_secret` was empty: the secret is random, made for this
    /// process.
    pub(super) token_secret_random: bool,
    pub(super) token_ttl_s: u32,
}

/// `[auth]`: the anonymous tier must exist when keys are optional; an
/// empty `token_secret` becomes 32 random bytes for this process.
pub(super) fn validate_auth(src: &str, a: RawAuth, tiers: &[Tier]) -> Result<Auth, ConfigError> {
    // The anonymous tier matters only when keys are optional; its default
    // ("business") need not exist when they are required.
    let anonymous_tier = match tier_index(src, tiers, &a.anonymous_tier) {
        Ok(t) => t,
        Err(_) if a.required && a.anonymous_tier.span().is_empty() => 0,
        Err(e) => {
            return Err(ConfigError {
                message: format!("auth.anonymous_tier: {}", e.message),
                ..e
            });
        }
    };
    let token_secret_random = a.token_secret.is_empty();
    let token_secret = if token_secret_random {
        // A per-process secret from the kernel's CSPRNG (tokens then die
        // with the process, which is what an empty secret asks for).
        let mut b = vec![0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").map_err(|e| {
                ConfigError::at(
                    src,
                    None,
                    format!("token_secret: cannot read /dev/urandom: {e}"),
                )
            })?,
            &mut b,
        )
        .map_err(|e| ConfigError::at(src, None, format!("token_secret: {e}")))?;
        b
    } else {
        a.token_secret.into_bytes()
    };
    Ok(Auth {
        required: a.required,
        anonymous_tier,
        token_secret,
        token_secret_random,
        token_ttl_s: a.token_ttl_s,
    })
}

/// `[[keys]]`: exactly one of `key` or `key_sha256`, a role, topic
/// patterns, a known tier, names unique.
pub(super) fn validate_keys(
    src: &str,
    raw: Vec<RawKey>,
    tiers: &[Tier],
) -> Result<Vec<Key>, ConfigError> {
    let err = |span: Range<usize>, msg: String| ConfigError::at(src, Some(span), msg);
    let mut keys = Vec::with_capacity(raw.len());
    for k in raw {
        if !(1..=MAX_NAME_BYTES).contains(&k.name.get_ref().len()) {
            return Err(err(
                k.name.span(),
                format!("key names must be 1..{MAX_NAME_BYTES} bytes"),
            ));
        }
        let secret = match (k.key, k.key_sha256) {
            (Some(plain), None) if !plain.is_empty() => KeySecret::plain(&plain),
            (None, Some(hex)) => KeySecret::from_sha256_hex(hex.get_ref())
                .ok_or_else(|| err(hex.span(), "key_sha256 must be 64 hex digits".into()))?,
            _ => {
                return Err(err(
                    k.name.span(),
                    format!(
                        "key '{}': give exactly one of key or key_sha256",
                        k.name.get_ref()
                    ),
                ));
            }
        };
        let role = Role::parse(k.role.get_ref()).ok_or_else(|| {
            err(
                k.role.span(),
                "role must be subscriber, publisher or admin".into(),
            )
        })?;
        let topics = parse_patterns(src, &k.topics)?;
        if keys.iter().any(|o: &Key| o.name == *k.name.get_ref()) {
            return Err(err(
                k.name.span(),
                format!("duplicate key name '{}'", k.name.get_ref()),
            ));
        }
        keys.push(Key {
            name: k.name.into_inner(),
            secret,
            tier: tier_index(src, tiers, &k.tier)?,
            role,
            max_connections: k.max_connections,
            topics,
        });
    }
    Ok(keys)
}

/// The warnings about `token_secret` and the keys' secrets: published
/// examples, a short `token_secret`, the all-zero placeholder digest.
pub(super) fn secret_warnings(secret: &[u8], keys: &[Key]) -> Vec<String> {
    let mut out = Vec::new();
    // Secrets are named, never printed, even published ones.
    if EXAMPLE_SECRETS.iter().any(|e| e.as_bytes() == secret) {
        out.push(
            "auth.token_secret is a published example: anyone can mint stream tokens \
             with it; set a random one (openssl rand -hex 32), or \"\" for a random \
             secret per process"
                .into(),
        );
    } else if secret.len() < MIN_TOKEN_SECRET_BYTES {
        out.push(format!(
            "auth.token_secret has {} bytes: a short secret can be guessed from any \
             token; use at least {MIN_TOKEN_SECRET_BYTES} random bytes (openssl rand -hex 32)",
            secret.len()
        ));
    }
    for k in keys {
        if EXAMPLE_SECRETS.iter().any(|e| k.secret.is(e)) {
            out.push(format!(
                "key '{}' uses a published example secret: anyone can use it; set a \
                 random one (openssl rand -hex 24), preferably as key_sha256",
                k.name
            ));
        } else if k.secret.is_placeholder() {
            out.push(format!(
                "key '{}' has the placeholder key_sha256 of zeros: no key matches it; \
                 set the SHA-256 of a real key (printf %s \"$KEY\" | sha256sum)",
                k.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Settings;

    #[test]
    fn unknown_tier_points_at_the_value() {
        let src = "[[keys]]\nname = \"a\"\nkey = \"k\"\ntier = \"gold\"\n";
        let e = Settings::from_toml(src).unwrap_err();
        assert_eq!((e.line, e.column), (4, 8), "{e}");
        assert!(e.message.contains("unknown tier 'gold'"), "{e}");
    }
}
