//! `[[topics]]`, validated into [`TopicRule`]s: which topics a rule
//! matches ([`Pattern`]), their event name, history, tiers and the row
//! fields kept for filters. Also the pattern syntax that `[[keys]]` uses.
//!
//! Owns the section's checks and the names reserved for sluice's own
//! frames. Never holds topics or rows (the hub does, and asks
//! `Settings::topic_rule`) and never imports crate code.

use std::ops::Range;

use toml::Spanned;

use super::error::ConfigError;
use super::raw::RawTopic;
use super::routes::Route;
use super::tiers::{Tier, index as tier_index};
use super::values::topic_name_is_valid;

/// A topic pattern: an exact name, a prefix ending in `/*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Option<Pattern> {
        if s == "*" {
            Some(Pattern::Any)
        } else if let Some(prefix) = s.strip_suffix("/*") {
            topic_name_is_valid(prefix).then(|| Pattern::Prefix(format!("{prefix}/")))
        } else {
            topic_name_is_valid(s).then(|| Pattern::Exact(s.to_string()))
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(p) => topic.len() > p.len() && topic.starts_with(p.as_str()),
            Pattern::Exact(e) => e == topic,
        }
    }
}

/// What a `[[topics]]` entry says about the topics it matches.
#[derive(Debug, Clone)]
pub struct TopicRule {
    pub pattern: Pattern,
    pub event: String,
    pub key: Vec<String>,
    pub history: usize,
    pub tiers: Vec<usize>,
    /// Row fields every published row keeps the value of, for filters: the
    /// `filters` fields, then every field a route's `match` names.
    pub fields: Vec<String>,
    /// query parameter → index into `fields`
    pub filters: Vec<(String, usize)>,
}

/// Event names of sluice's own frames: a topic's `event` may not take one,
/// so that a client (and the metering, which counts update frames by their
/// head) can tell updates from them.
pub const RESERVED_EVENTS: &[&str] = &[
    "connected",
    "initial_state",
    "timeout",
    "limit",
    "reconnect",
    "error",
];

/// Each of `list` as a [`Pattern`]; the error points at the first that is
/// not one.
pub(super) fn parse_patterns(
    src: &str,
    list: &[Spanned<String>],
) -> Result<Vec<Pattern>, ConfigError> {
    list.iter()
        .map(|p| {
            Pattern::parse(p.get_ref()).ok_or_else(|| {
                ConfigError::at(
                    src,
                    Some(p.span()),
                    format!("'{}' is not a topic name, 'prefix/*' or '*'", p.get_ref()),
                )
            })
        })
        .collect()
}

/// `[[topics]]`: each pattern, event and tier list checked; every rule
/// keeps the fields its `filters` name, then every field a route's `match`
/// names.
pub(super) fn validate(
    src: &str,
    raw: Vec<RawTopic>,
    tiers: &[Tier],
    routes: &[Route],
) -> Result<Vec<TopicRule>, ConfigError> {
    let err = |span: Range<usize>, msg: String| ConfigError::at(src, Some(span), msg);
    let route_fields: Vec<String> = {
        let mut f: Vec<String> = routes
            .iter()
            .flat_map(|r| r.fixed.iter().map(|(field, _)| field.clone()))
            .collect();
        f.sort();
        f.dedup();
        f
    };

    let mut topics = Vec::with_capacity(raw.len());
    for t in raw {
        let pattern = parse_patterns(src, std::slice::from_ref(&t.pattern))?.remove(0);
        let ev = t.event.get_ref();
        if RESERVED_EVENTS.contains(&ev.as_str()) {
            return Err(err(
                t.event.span(),
                format!("event '{ev}' is the name of one of sluice's own frames"),
            ));
        }
        if ev.is_empty()
            || ev.len() > 64
            || !ev
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(err(
                t.event.span(),
                "event must be 1..64 of [A-Za-z0-9_.-]".into(),
            ));
        }
        let tiers_allowed = match &t.tiers {
            Some(list) => list
                .iter()
                .map(|n| tier_index(src, tiers, n))
                .collect::<Result<Vec<_>, _>>()?,
            None => (0..tiers.len()).collect(),
        };
        let mut fields: Vec<String> = Vec::new();
        let mut filters = Vec::with_capacity(t.filters.len());
        for (param, field) in t.filters {
            let i = match fields.iter().position(|f| *f == field) {
                Some(i) => i,
                None => {
                    fields.push(field);
                    fields.len() - 1
                }
            };
            filters.push((param, i));
        }
        for f in &route_fields {
            if !fields.contains(f) {
                fields.push(f.clone());
            }
        }
        topics.push(TopicRule {
            pattern,
            event: t.event.into_inner(),
            key: t.key,
            history: t.history,
            tiers: tiers_allowed,
            fields,
            filters,
        });
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;

    #[test]
    fn a_topic_event_may_not_be_named_like_sluices_own_frames() {
        for ev in RESERVED_EVENTS {
            let src = format!("[[topics]]\npattern = \"*\"\nevent = \"{ev}\"\n");
            let e = Settings::from_toml(&src).unwrap_err();
            assert_eq!((e.line, e.column), (3, 9), "{e}");
        }
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("odds/*").unwrap();
        assert!(p.matches("odds/nba"));
        assert!(p.matches("odds/nba/live"));
        assert!(!p.matches("odds"));
        assert!(!p.matches("oddsx/nba"));
        assert!(Pattern::parse("*").unwrap().matches("x"));
        assert!(Pattern::parse("a//b").is_none());
    }
}
