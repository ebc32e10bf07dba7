//! Values that may hold credentials once `${VAR}`s are expanded: the
//! [`Secret`] wrapper that keeps them out of `Debug` and `Display`, the
//! expansion itself, and URL redaction for logs.
//!
//! Never reads the process environment (the lookup is handed in; only
//! `Settings::from_toml` passes the real one), never prints a secret's
//! value in an error, and never imports crate code.

use std::fmt;

/// A value that may hold a credential (a header value or URL after `${VAR}`
/// expansion): its `Debug` prints `***`, and it has no `Display`, so it
/// reaches a log line, an error body or a metric label only through an
/// explicit [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    /// The value itself, for the request that carries it and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A URL for a log line: scheme, host, port and path only. Anything that
/// does not parse as a URL shows as `<url>`.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let mut out = format!("{}://{}", u.scheme(), u.host_str().unwrap_or(""));
            if let Some(p) = u.port() {
                out.push_str(&format!(":{p}"));
            }
            out.push_str(u.path());
            out
        }
        Err(_) => "<url>".into(),
    }
}

/// Expands `${VAR}` from `lookup` (the environment). `Err` is the message
/// for the config error: it names a missing variable, never a value.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed '${' (write ${NAME})".to_string())?;
        let name = &after[..end];
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(
                "'${...}' must name an environment variable ([A-Za-z_][A-Za-z0-9_]*)".into(),
            );
        }
        let value =
            lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
