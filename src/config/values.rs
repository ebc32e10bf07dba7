//! Values that the configuration names and the rest of the crate uses:
//! key roles, key secrets (stored as SHA-256 digests, compared in constant
//! time) and the topic-name rule. Kept here so that `config` is a leaf:
//! it imports nothing else of the crate, and `auth` and `hub` import these
//! from it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest topic name, in bytes (SPEC §1).
pub const MAX_TOPIC_BYTES: usize = 200;

/// Longest key or tier name: both go into stream tokens (JSON-escaped, so
/// up to 6 bytes each), which must stay under `auth::MAX_TOKEN_BYTES`.
pub const MAX_NAME_BYTES: usize = 64;

/// `[A-Za-z0-9._~:@-]` segments joined by `/`, 1–200 bytes.
pub fn topic_name_is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_BYTES
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~:@-".contains(&b))
        })
}

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
    /// The SHA-256 digest of the secret.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn plain(key: &str) -> KeySecret {
        KeySecret(Sha256::digest(key.as_bytes()).into())
    }

    pub fn from_sha256_hex(hex_digest: &str) -> Option<KeySecret> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digest.trim(), &mut out).ok()?;
        Some(KeySecret(out))
    }

    /// Whether this is the secret `key` (for flagging published examples).
    pub fn is(&self, key: &str) -> bool {
        bool::from(self.0.ct_eq(&KeySecret::plain(key).0))
    }

    /// Whether this is the all-zero `key_sha256` that example configs use as
    /// a placeholder: no key hashes to it, so it never authenticates.
    pub fn is_placeholder(&self) -> bool {
        self.0 == [0; 32]
    }
}
