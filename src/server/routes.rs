//! Request-time routing (`[[routes]]`): whether a request path matches a
//! route, and the topic and fixed filter values its variables make. The
//! routes themselves are parsed and validated by `config`.
//!
//! Cold: once per stream request. A variable's text is always one literal
//! piece of one value: a `,` or `*` in it cannot add values or make a
//! prefix, so a client cannot widen a route's `match`.

use crate::config::{MatchValue, Part, Route};
use crate::hub::filter::Value;

/// The variables bound by `path` if it matches `route`. A trailing `/` on
/// either side is ignored.
pub fn bind<'r, 'p>(route: &'r Route, path: &'p str) -> Option<Vec<(&'r str, &'p str)>> {
    let path = path.strip_prefix('/')?;
    let path = path.strip_suffix('/').unwrap_or(path);
    let mut segs = path.split('/');
    let mut vars = Vec::new();
    for part in &route.path {
        let seg = segs.next()?;
        match part {
            Part::Lit(l) if l == seg => {}
            Part::Var(v) if !seg.is_empty() => vars.push((v.as_str(), seg)),
            _ => return None,
        }
    }
    segs.next().is_none().then_some(vars)
}

/// Fills a template's variables; `Err` names the first missing one.
pub fn fill<'p, 'v>(
    parts: &'p [Part],
    lookup: impl Fn(&str) -> Option<&'v str>,
) -> Result<String, &'p str> {
    let mut out = String::new();
    for p in parts {
        match p {
            Part::Lit(l) => out.push_str(l),
            Part::Var(v) => out.push_str(lookup(v).ok_or(v.as_str())?),
        }
    }
    Ok(out)
}

/// The filter value of one `match` value for one request; `Err` names the
/// first variable that `lookup` lacks.
pub fn match_value<'p, 'v>(
    value: &'p MatchValue,
    lookup: impl Fn(&str) -> Option<&'v str>,
) -> Result<Value, &'p str> {
    let text = fill(&value.parts, lookup)?.into_boxed_str();
    Ok(if value.prefix {
        Value::Prefix(text)
    } else {
        Value::Exact(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn route(toml: &str) -> Route {
        let s = Settings::from_toml(&format!("[[routes]]\n{toml}")).unwrap();
        s.routes[0].clone()
    }

    /// The route's `match` values for a path and query.
    fn match_values(r: &Route, path: &str, query: &[(&str, &str)]) -> Option<Vec<Vec<Value>>> {
        let vars = bind(r, path)?;
        let lookup = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .or_else(|| query.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
        };
        r.fixed
            .iter()
            .map(|(_, vs)| vs.iter().map(|v| match_value(v, lookup)).collect())
            .collect::<Result<_, _>>()
            .ok()
    }

    fn exact(s: &str) -> Value {
        Value::Exact(s.into())
    }

    #[test]
    fn commas_and_stars_in_route_variables_are_literal() {
        let r = route("path = \"/sse/{game}\"\ntopic = \"games\"\nmatch = { slug = \"{game}\" }");
        assert_eq!(
            match_values(&r, "/sse/crash", &[]),
            Some(vec![vec![exact("crash")]])
        );
        assert_eq!(
            match_values(&r, "/sse/a,b", &[]),
            Some(vec![vec![exact("a,b")]])
        );
        assert_eq!(
            match_values(&r, "/sse/*", &[]),
            Some(vec![vec![exact("*")]])
        );
        assert_eq!(
            match_values(&r, "/sse/a*", &[]),
            Some(vec![vec![exact("a*")]])
        );
        assert_eq!(match_values(&r, "/sse/a/b", &[]), None, "one segment");

        // from the query, and inside a prefix the config asks for
        let r = route(
            "path = \"/by\"\ntopic = \"t\"\nmatch = { kind = \"game, {k}.*\", slug = \"{s}\" }",
        );
        assert_eq!(
            match_values(&r, "/by", &[("k", "a,b*"), ("s", ", *")]),
            Some(vec![
                vec![exact("game"), Value::Prefix("a,b*.".into())],
                vec![exact(", *")],
            ])
        );
        assert_eq!(match_values(&r, "/by", &[("k", "x")]), None, "s is missing");
    }

    #[test]
    fn paths_bind_whole_segments_only() {
        let r = route("path = \"/odds/{sport}/live\"\ntopic = \"odds/{sport}\"");
        assert_eq!(bind(&r, "/odds/nba/live"), Some(vec![("sport", "nba")]));
        assert_eq!(bind(&r, "/odds/nba/live/"), Some(vec![("sport", "nba")]));
        assert_eq!(bind(&r, "/odds//live"), None, "an empty variable");
        assert_eq!(bind(&r, "/odds/nba"), None, "too short");
        assert_eq!(bind(&r, "/odds/nba/live/x"), None, "too long");
        assert_eq!(bind(&r, "odds/nba/live"), None, "not absolute");
        let vars = bind(&r, "/odds/nba/live").unwrap();
        let lookup = |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        assert_eq!(fill(&r.topic, lookup), Ok("odds/nba".to_string()));
        assert_eq!(fill(&r.topic, |_| None), Err("sport"));
    }
}
