//! Route templates and paths (`config::parse_template`, `Route::bind`,
//! `config::fill`, and topic `Pattern`s) on arbitrary text.
//!
//! A template is literal text and `{name}` variables: parsing then printing
//! it gives it back. A path a route binds is the route's template with the
//! bound values put in. Filling a template puts values in, or names the
//! first variable that has none.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice::config::{Part, Pattern, Route, parse_template};
use sluice::server::routes::{bind, fill};
use sluice::hub::topic_name_is_valid;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    route_path: &'a str,
    topic: &'a str,
    path: &'a str,
    query: Vec<(&'a str, &'a str)>,
}

fn print(parts: &[Part]) -> String {
    let mut s = String::new();
    for p in parts {
        match p {
            Part::Lit(l) => s.push_str(l),
            Part::Var(v) => {
                s.push('{');
                s.push_str(v);
                s.push('}');
            }
        }
    }
    s
}

fn check_template(s: &str) -> Option<Vec<Part>> {
    let parts = parse_template(s)?;
    assert_eq!(print(&parts), s, "{parts:?}");
    for w in parts.windows(2) {
        assert!(
            !matches!(w, [Part::Lit(_), Part::Lit(_)]),
            "adjacent literals: {parts:?}"
        );
    }
    for p in &parts {
        match p {
            Part::Lit(l) => {
                assert!(!l.is_empty());
                // A stray `}` is refused in a trailing literal but not in one
                // before a variable (`}{f}` parses as `}` then `{f}`): reported,
                // not asserted until config.rs settles which it means.
                assert!(!l.contains('{'), "{s:?}: {parts:?}");
            }
            Part::Var(v) => assert!(
                !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{v:?}"
            ),
        }
    }
    Some(parts)
}

/// config.rs's route-path rule: `/`, then segments that are literals or
/// whole `{var}`s; a trailing `/` is ignored.
fn route_path(s: &str) -> Option<Vec<Part>> {
    let rest = s.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/')
        .map(|seg| match check_template(seg)?.as_slice() {
            [one] => Some(one.clone()),
            [] => Some(Part::Lit(String::new())),
            _ => None,
        })
        .collect()
}

fuzz_target!(|input: Input<'_>| {
    let topic = check_template(input.topic);
    let _ = check_template(input.path);

    // Topic patterns: `*`, an exact valid name, or a valid name then `/*`.
    let (t, x) = (input.topic, input.path);
    match Pattern::parse(t) {
        Some(Pattern::Any) => assert_eq!(t, "*"),
        Some(Pattern::Exact(e)) => {
            assert!(e == t && topic_name_is_valid(t));
            assert_eq!(Pattern::Exact(e).matches(x), x == t);
        }
        Some(Pattern::Prefix(pre)) => {
            assert_eq!(format!("{pre}*"), t);
            assert!(topic_name_is_valid(&pre[..pre.len() - 1]));
            let m = Pattern::Prefix(pre.clone()).matches(x);
            assert_eq!(m, x.len() > pre.len() && x.starts_with(&pre));
        }
        None => assert!(t != "*" && !topic_name_is_valid(t)),
    }

    let Some(path) = route_path(input.route_path) else {
        return;
    };
    let route = Route {
        path,
        topic: topic.clone().unwrap_or_default(),
        fixed: Vec::new(),
    };
    let Some(vars) = bind(&route, input.path) else {
        return;
    };
    // Put the bound values back, in order: that is the path (without its
    // leading and optional trailing `/`).
    let mut bound = vars.iter();
    let mut segs = Vec::new();
    for p in &route.path {
        match p {
            Part::Lit(l) => segs.push(l.as_str()),
            Part::Var(v) => {
                let (name, value) = bound.next().expect("one binding per variable");
                assert_eq!(name, v);
                assert!(!value.is_empty() && !value.contains('/'));
                segs.push(value);
            }
        }
    }
    assert!(bound.next().is_none());
    let rebuilt = segs.join("/");
    let p = input
        .path
        .strip_prefix('/')
        .expect("bound paths start with /");
    assert_eq!(p.strip_suffix('/').unwrap_or(p), rebuilt);

    // Variables come from the path first, then from the query.
    let lookup = |name: &str| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .or_else(|| {
                input
                    .query
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| *v)
            })
    };
    match fill(&route.topic, lookup) {
        Ok(t) => {
            let want: String = route
                .topic
                .iter()
                .map(|p| match p {
                    Part::Lit(l) => l.as_str(),
                    Part::Var(v) => lookup(v).expect("filled"),
                })
                .collect();
            assert_eq!(t, want);
        }
        Err(missing) => {
            let first = route.topic.iter().find_map(|p| match p {
                Part::Var(v) if lookup(v).is_none() => Some(v.as_str()),
                _ => None,
            });
            assert_eq!(Some(missing), first);
        }
    }
});
