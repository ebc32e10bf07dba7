//! Templates: text with `{name}` variables, split into [`Part`]s. Route
//! paths, route topics and `match` values, and a source's topic are
//! templates.
//!
//! Owns only the template syntax. Never fills a template (request-time
//! routing does that in `server::routes`, a source's rows in
//! `sources::mapping`) and never imports crate code.

/// One piece of a route template: literal text or a `{name}` variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    Var(String),
}

/// Splits `a/{b}/c{d}` into parts (variables are `{name}`, names of
/// `[A-Za-z0-9_]`).
pub fn parse_template(s: &str) -> Option<Vec<Part>> {
    let mut parts = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let end = rest.find('}')?;
                let name = &rest[1..end];
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return None;
                }
                parts.push(Part::Var(name.to_string()));
                rest = &rest[end + 1..];
            }
            Some(i) => {
                // A `}` outside a variable is refused, before a `{` as
                // anywhere else (the fuzz target `route_params` found
                // `}{f}` accepted while `}` alone was not).
                if rest[..i].contains('}') {
                    return None;
                }
                parts.push(Part::Lit(rest[..i].to_string()));
                rest = &rest[i..];
            }
            None => {
                if rest.contains('}') {
                    return None;
                }
                parts.push(Part::Lit(rest.to_string()));
                rest = "";
            }
        }
    }
    Some(parts)
}
