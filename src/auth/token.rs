//! Stream tokens: [`Keys::issue_token`] and [`Keys::verify_token`], and
//! the HMAC they share. Cold: once per request that asks for a token or
//! presents one.
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
//!
//! It must never trust a claim because the signature verifies, never
//! compare a MAC other than in constant time, and never grant more than
//! the key's current rights.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use simd_json::prelude::*;

use super::{AuthError, Grant, Keys, MAX_TOKEN_BYTES};
use crate::config::Settings;

type HmacSha256 = hmac::Hmac<Sha256>;

/// `{"alg":"HS256","typ":"JWT"}`, base64url: the header of the tokens sluice
/// issues.
pub(super) const JWT_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// How far in the future a token's `iat` (or `nbf`) may lie: the clock
/// difference tolerated between the signer and this node.
pub const TOKEN_CLOCK_SKEW_S: u64 = 60;

impl Keys {
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

pub(super) fn mac(settings: &Settings, data: &[u8]) -> HmacSha256 {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(&settings.token_secret)
        .expect("HMAC takes a key of any length");
    m.update(data);
    m
}
