//! `[tiers]`, validated into [`Tier`]s and their cadences: the distinct
//! `coalesce_ms` values, each one ring and one frame per tick.
//!
//! Owns the section's checks and limits and the lookup of a tier by name
//! for the sections that name tiers. Never renumbers cadences on a reload
//! (`Settings::extend_cadences` does) and never imports crate code.

use std::collections::BTreeMap;

use toml::Spanned;

use super::error::{ConfigError, find_span};
use super::raw::RawTier;
use super::values::MAX_NAME_BYTES;

#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    pub coalesce_ms: u32,
    /// Index into [`Settings::cadences`]: tiers with the same `coalesce_ms`
    /// share one ring and one frame per tick.
    ///
    /// [`Settings::cadences`]: super::Settings::cadences
    pub cadence: usize,
}

/// Longest coalescing interval a tier may have.
pub const MAX_COALESCE_MS: u32 = 3_600_000;
/// Shortest non-zero coalescing interval.
pub const MIN_COALESCE_MS: u32 = 10;
/// Most distinct `coalesce_ms` values (a state-table row keeps one dirty bit
/// per cadence).
pub const MAX_CADENCES: usize = 32;

/// `[tiers]`: the tiers (in name order; SPEC's three when the section is
/// absent), each with its `coalesce_ms` checked, and the cadences, ascending.
pub(super) fn validate(
    src: &str,
    raw: Option<BTreeMap<String, RawTier>>,
) -> Result<(Vec<Tier>, Vec<u32>), ConfigError> {
    // Tiers: SPEC's three by default.
    let raw_tiers: Vec<(String, u32)> = match raw {
        Some(map) => map.into_iter().map(|(n, t)| (n, t.coalesce_ms)).collect(),
        None => vec![
            ("scale".into(), 0),
            ("enterprise".into(), 500),
            ("business".into(), 1000),
        ],
    };
    if raw_tiers.is_empty() {
        return Err(ConfigError::at(src, None, "at least one tier is needed"));
    }
    for (name, ms) in &raw_tiers {
        if !(1..=MAX_NAME_BYTES).contains(&name.len()) {
            return Err(ConfigError::at(
                src,
                find_span(src, &format!("[tiers.{name}]")),
                format!("tier names must be 1..{MAX_NAME_BYTES} bytes"),
            ));
        }
        if *ms != 0 && !(MIN_COALESCE_MS..=MAX_COALESCE_MS).contains(ms) {
            return Err(ConfigError::at(
                src,
                find_span(src, &format!("[tiers.{name}]")),
                format!(
                    "tiers.{name}.coalesce_ms must be 0 (raw) or {MIN_COALESCE_MS}..{MAX_COALESCE_MS}"
                ),
            ));
        }
    }
    let mut cadences: Vec<u32> = raw_tiers.iter().map(|(_, ms)| *ms).collect();
    cadences.sort_unstable();
    cadences.dedup();
    if cadences.len() > MAX_CADENCES {
        return Err(ConfigError::at(
            src,
            None,
            format!("at most {MAX_CADENCES} distinct coalesce_ms values"),
        ));
    }
    let tiers: Vec<Tier> = raw_tiers
        .into_iter()
        .map(|(name, coalesce_ms)| Tier {
            name,
            coalesce_ms,
            cadence: cadences
                .iter()
                .position(|&c| c == coalesce_ms)
                .expect("every tier's interval is in cadences"),
        })
        .collect();
    Ok((tiers, cadences))
}

/// The index of the tier `name` names; the error points at the name.
pub(super) fn index(
    src: &str,
    tiers: &[Tier],
    name: &Spanned<String>,
) -> Result<usize, ConfigError> {
    tiers
        .iter()
        .position(|t| t.name == *name.get_ref())
        .ok_or_else(|| {
            ConfigError::at(
                src,
                Some(name.span()),
                format!("unknown tier '{}'", name.get_ref()),
            )
        })
}
