//! `[[routes]]`: extra URL layouts, parsed and validated into [`Route`]s
//! (path template, topic template, fixed `match` filters).
//!
//! Owns the shapes of a validated route and the config's own `match`
//! syntax. Never routes a request: binding a request path to a route and
//! filling its templates is `server::routes`, at request time. Never
//! imports crate code.

use std::ops::Range;

use super::error::ConfigError;
use super::raw::RawRoute;
use super::template::{Part, parse_template};

/// An extra URL layout (`[[routes]]`): a path template whose `/`-separated
/// segments are literals or whole-segment `{var}`s, the topic it names, and
/// fixed filters (`match`, values may use the variables) the client cannot
/// widen. Variables of the topic or `match` that the path lacks are taken
/// from the query parameter of the same name.
#[derive(Debug, Clone)]
pub struct Route {
    pub path: Vec<Part>,
    pub topic: Vec<Part>,
    /// row field → its accepted values (the config's comma-separated list)
    pub fixed: Vec<(String, Vec<MatchValue>)>,
}

/// One value of a route's `match`: a template, matched exactly or, when the
/// config wrote it ending in `*`, as a prefix. Only the config's own text
/// splits values at `,` and makes prefixes: a variable's text from the
/// request is one literal piece of one value, so `/sse/a,b` or `/sse/*` for
/// `match = { slug = "{game}" }` asks for the slug `a,b` or `*` and cannot
/// widen the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchValue {
    pub parts: Vec<Part>,
    pub prefix: bool,
}

/// A `match` value list: comma-separated templates, each ending in `*` for
/// a prefix. `None` when a template is malformed or the list is empty.
pub fn parse_match(s: &str) -> Option<Vec<MatchValue>> {
    let values = s
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let (v, prefix) = match v.strip_suffix('*') {
                Some(p) => (p, true),
                None => (v, false),
            };
            Some(MatchValue {
                parts: parse_template(v)?,
                prefix,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    (!values.is_empty()).then_some(values)
}

/// A route path: `/`, then segments that are literals or whole `{var}`s.
fn parse_route_path(s: &str) -> Option<Vec<Part>> {
    let rest = s.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/')
        .map(|seg| match parse_template(seg)?.as_slice() {
            [one] => Some(one.clone()),
            [] => Some(Part::Lit(String::new())),
            _ => None,
        })
        .collect()
}

/// `[[routes]]`: each path, topic and `match` parsed; errors point at the
/// path or the topic.
pub(super) fn validate(src: &str, raw: Vec<RawRoute>) -> Result<Vec<Route>, ConfigError> {
    let err = |span: Range<usize>, msg: String| ConfigError::at(src, Some(span), msg);
    let mut routes = Vec::with_capacity(raw.len());
    for r in raw {
        let Some(path) = parse_route_path(r.path.get_ref()) else {
            return Err(err(
                r.path.span(),
                "route path must start with '/' and use whole-segment {variables}".into(),
            ));
        };
        let topic = parse_template(r.topic.get_ref()).ok_or_else(|| {
            err(
                r.topic.span(),
                "route topic must be a topic name with {variables}".into(),
            )
        })?;
        let mut fixed = Vec::with_capacity(r.fixed.len());
        for (field, v) in r.fixed {
            let values = parse_match(&v).ok_or_else(|| {
                err(
                    r.topic.span(),
                    format!("route match '{field}': bad template '{v}'"),
                )
            })?;
            fixed.push((field, values));
        }
        routes.push(Route { path, topic, fixed });
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;

    #[test]
    fn the_configs_own_match_text_is_a_list_with_prefixes() {
        assert_eq!(
            parse_match(" game , alert.* ,, "),
            Some(vec![
                MatchValue {
                    parts: vec![Part::Lit("game".into())],
                    prefix: false
                },
                MatchValue {
                    parts: vec![Part::Lit("alert.".into())],
                    prefix: true
                },
            ])
        );
        assert_eq!(parse_match(" , "), None);
        assert_eq!(parse_match("{bad name}"), None);
        let e = Settings::from_toml(
            "[[routes]]\npath = \"/a\"\ntopic = \"t\"\nmatch = { k = \",\" }\n",
        )
        .unwrap_err();
        assert!(e.message.contains("route match 'k'"), "{e}");
    }
}
