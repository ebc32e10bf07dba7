//! `[[sources]]` (SPEC §7), validated into [`Source`]s: the keys each
//! kind takes, URL schemes, header names, the topic template, and `${VAR}`
//! expansion through the lookup it is handed.
//!
//! Owns the section's checks, limits and defaults. Never connects to an
//! origin (the `sources` subsystem does, with these settings), never puts
//! an expanded value in an error message, and never imports crate code.

use std::ops::Range;

use toml::Spanned;

use super::error::ConfigError;
use super::raw::RawSource;
use super::secret::{Secret, expand_env, redact_url};
use super::template::{Part, parse_template};
use super::topics::TopicRule;
use super::values::topic_name_is_valid;

/// What a `[[sources]]` entry reads from (its `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The built-in simulated feed.
    Demo,
    /// An origin's `text/event-stream`.
    Sse,
    /// JSON text messages over a WebSocket.
    WebSocket,
    /// Core NATS subjects.
    Nats,
}

impl SourceKind {
    /// The name the config, `/healthz` and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Demo => "demo",
            SourceKind::Sse => "sse",
            SourceKind::WebSocket => "websocket",
            SourceKind::Nats => "nats",
        }
    }
}

/// Default `idle_timeout_s` of a source.
pub const DEFAULT_IDLE_TIMEOUT_S: u32 = 30;
/// Default `backoff_max_ms` of a source.
pub const DEFAULT_BACKOFF_MAX_MS: u32 = 30_000;
/// Smallest `backoff_max_ms` (a source never reconnects in a tight loop).
pub const MIN_BACKOFF_MAX_MS: u32 = 10;
/// Largest `backoff_max_ms` (one day).
pub const MAX_BACKOFF_MAX_MS: u32 = 86_400_000;
/// Largest `idle_timeout_s` (one day).
pub const MAX_IDLE_TIMEOUT_S: u32 = 86_400;
/// Longest source name (it is a metric label and a log field).
pub const MAX_SOURCE_NAME_BYTES: usize = 64;

/// One `[[sources]]` entry, validated (SPEC §7). `${VAR}`s in `url`,
/// `snapshot_url` and `headers` are already expanded from the environment,
/// which is why those are [`Secret`]s: log them with
/// [`Source::display_url`], never whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Unique; `/healthz`, metric labels and logs show it.
    pub name: String,
    pub kind: SourceKind,
    /// Empty for the demo.
    pub url: Secret,
    /// Header name → value (sse, websocket).
    pub headers: Vec<(String, Secret)>,
    /// sse: the event types taken (empty: all).
    pub events: Vec<String>,
    /// websocket: the text message sent after every connect.
    pub subscribe: Option<String>,
    /// nats: the subjects subscribed to.
    pub subjects: Vec<String>,
    /// The topic template (`{field}` over row fields; nats also `{subject}`).
    pub topic: Vec<Part>,
    /// JSON pointer to a message's rows (`""`: the message itself).
    pub rows: String,
    pub snapshot_url: Option<Secret>,
    pub idle_timeout_s: u32,
    pub backoff_max_ms: u32,
}

impl Source {
    /// `url` without what may carry a credential (user info, query,
    /// fragment): scheme, host, port and path, for logs.
    pub fn display_url(&self) -> String {
        redact_url(self.url.expose())
    }
}

/// `[[sources]]`: each entry validated, names unique (the error points at
/// the second use of a name).
pub(super) fn validate(
    src: &str,
    raw: Vec<RawSource>,
    topics: &[TopicRule],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Source>, ConfigError> {
    let err = |span: Range<usize>, msg: String| ConfigError::at(src, Some(span), msg);
    let mut sources: Vec<Source> = Vec::with_capacity(raw.len());
    for so in raw {
        let name_span = so.name.as_ref().map_or(so.kind.span(), |n| n.span());
        let source = validate_one(src, so, topics, env)?;
        if sources.iter().any(|b| b.name == source.name) {
            return Err(err(
                name_span,
                format!("duplicate source name '{}'", source.name),
            ));
        }
        sources.push(source);
    }
    Ok(sources)
}

/// One `[[sources]]` entry: the keys its kind takes, URL schemes, the
/// topic template, and `${VAR}` expansion through `env`.
fn validate_one(
    src: &str,
    so: RawSource,
    topics: &[TopicRule],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Source, ConfigError> {
    let err = |span: Range<usize>, msg: String| ConfigError::at(src, Some(span), msg);
    let kind = match so.kind.get_ref().as_str() {
        "demo" => SourceKind::Demo,
        "sse" => SourceKind::Sse,
        "websocket" => SourceKind::WebSocket,
        "nats" => SourceKind::Nats,
        other => {
            return Err(err(
                so.kind.span(),
                format!("unknown source kind '{other}' (demo, sse, websocket or nats)"),
            ));
        }
    };
    let k = kind.as_str();
    // Keys a kind does not take are errors, like unknown keys.
    let not_for = |present: Option<Range<usize>>, key: &str, ok: &[SourceKind]| match present {
        Some(span) if !ok.contains(&kind) => {
            Err(err(span, format!("'{key}' does not apply to a {k} source")))
        }
        _ => Ok(()),
    };
    use SourceKind::{Demo, Nats, Sse, WebSocket};
    let upstream = [Sse, WebSocket, Nats];
    not_for(so.url.as_ref().map(|v| v.span()), "url", &upstream)?;
    not_for(
        so.headers.as_ref().map(|v| v.span()),
        "headers",
        &[Sse, WebSocket],
    )?;
    not_for(so.events.as_ref().map(|v| v.span()), "events", &[Sse])?;
    not_for(
        so.subscribe.as_ref().map(|v| v.span()),
        "subscribe",
        &[WebSocket],
    )?;
    not_for(so.subjects.as_ref().map(|v| v.span()), "subjects", &[Nats])?;
    not_for(so.topic.as_ref().map(|v| v.span()), "topic", &upstream)?;
    not_for(so.rows.as_ref().map(|v| v.span()), "rows", &upstream)?;
    not_for(
        so.snapshot_url.as_ref().map(|v| v.span()),
        "snapshot_url",
        &upstream,
    )?;
    not_for(
        so.idle_timeout_s.as_ref().map(|v| v.span()),
        "idle_timeout_s",
        &upstream,
    )?;
    not_for(
        so.backoff_max_ms.as_ref().map(|v| v.span()),
        "backoff_max_ms",
        &upstream,
    )?;

    let name = match &so.name {
        Some(n) => {
            let v = n.get_ref();
            if v.is_empty()
                || v.len() > MAX_SOURCE_NAME_BYTES
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(err(
                    n.span(),
                    format!("source name must be 1..{MAX_SOURCE_NAME_BYTES} of [A-Za-z0-9_.-]"),
                ));
            }
            v.clone()
        }
        None if kind == Demo => "demo".into(),
        None => {
            return Err(err(
                so.kind.span(),
                format!("a {k} source needs a name (unique; shown in /healthz and metrics)"),
            ));
        }
    };
    if kind == Demo {
        return Ok(Source {
            name,
            kind,
            url: Secret::default(),
            headers: Vec::new(),
            events: Vec::new(),
            subscribe: None,
            subjects: Vec::new(),
            topic: Vec::new(),
            rows: String::new(),
            snapshot_url: None,
            idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
        });
    }

    // A URL after `${VAR}` expansion, with one of the kind's schemes. The
    // messages name the key and the schemes, never the expanded text.
    let check_url = |raw: &Spanned<String>, key: &str, schemes: &[&str]| {
        let text =
            expand_env(raw.get_ref(), env).map_err(|m| err(raw.span(), format!("{key}: {m}")))?;
        let ok = reqwest::Url::parse(&text).ok().is_some_and(|u| {
            schemes.contains(&u.scheme()) && u.host_str().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            return Err(err(
                raw.span(),
                format!("{key} must be an absolute {} URL", schemes.join(" or ")),
            ));
        }
        Ok(Secret::new(text))
    };
    let Some(raw_url) = &so.url else {
        return Err(err(so.kind.span(), format!("a {k} source needs a url")));
    };
    let url = match kind {
        Sse => check_url(raw_url, "url", &["http", "https"])?,
        WebSocket => check_url(raw_url, "url", &["ws", "wss"])?,
        _ => check_url(raw_url, "url", &["nats", "tls"])?,
    };
    let snapshot_url = match &so.snapshot_url {
        Some(u) => Some(check_url(u, "snapshot_url", &["http", "https"])?),
        None => None,
    };

    let mut headers = Vec::new();
    if let Some(h) = &so.headers {
        for (hname, value) in h.get_ref() {
            if hname.is_empty()
                || !hname
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err(err(
                    h.span(),
                    format!("headers: '{hname}' is not a header name"),
                ));
            }
            let value = expand_env(value, env)
                .map_err(|m| err(h.span(), format!("headers.{hname}: {m}")))?;
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(err(
                    h.span(),
                    format!("headers.{hname}: the value holds a control character"),
                ));
            }
            headers.push((hname.clone(), Secret::new(value)));
        }
    }

    let events = match &so.events {
        Some(e) => {
            if e.get_ref()
                .iter()
                .any(|ev| ev.is_empty() || ev.bytes().any(|b| b == b'\r' || b == b'\n'))
            {
                return Err(err(
                    e.span(),
                    "events: names must be non-empty single lines".into(),
                ));
            }
            e.get_ref().clone()
        }
        None => Vec::new(),
    };
    let subscribe = so.subscribe.as_ref().map(|s| s.get_ref().clone());
    let subjects = match (&so.subjects, kind) {
        (Some(list), Nats) => {
            let bad = list.get_ref().is_empty()
                || list.get_ref().iter().any(|s| {
                    s.is_empty()
                        || s.starts_with('.')
                        || s.ends_with('.')
                        || s.contains("..")
                        || s.bytes()
                            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                });
            if bad {
                return Err(err(
                    list.span(),
                    "subjects: at least one NATS subject (tokens joined by '.', '*' and '>' wildcards)"
                        .into(),
                ));
            }
            list.get_ref().clone()
        }
        (None, Nats) => {
            return Err(err(so.kind.span(), "a nats source needs subjects".into()));
        }
        _ => Vec::new(),
    };

    let Some(raw_topic) = &so.topic else {
        return Err(err(
            so.kind.span(),
            format!(
                "a {k} source needs a topic (a name, or a template like \"odds/{{sport_key}}\")"
            ),
        ));
    };
    let topic = parse_template(raw_topic.get_ref())
        .filter(|parts| {
            !parts.is_empty()
                && parts.iter().all(|p| match p {
                    Part::Lit(l) => l
                        .bytes()
                        .all(|b| b == b'/' || b.is_ascii_alphanumeric() || b"._~:@-".contains(&b)),
                    Part::Var(_) => true,
                })
        })
        .ok_or_else(|| {
            err(
                raw_topic.span(),
                "topic must be a topic name with optional {field} variables".into(),
            )
        })?;
    if let [Part::Lit(fixed)] = topic.as_slice() {
        if !topic_name_is_valid(fixed) {
            return Err(err(
                raw_topic.span(),
                format!("'{fixed}' is not a topic name"),
            ));
        }
        if !topics.iter().any(|r| r.pattern.matches(fixed)) {
            return Err(err(
                raw_topic.span(),
                format!("topic '{fixed}' matches no [[topics]] pattern"),
            ));
        }
    }
    let rows = match &so.rows {
        Some(r) => {
            let v = r.get_ref();
            if !v.is_empty() && !v.starts_with('/') {
                return Err(err(
                    r.span(),
                    "rows must be a JSON pointer: \"\" or starting with '/'".into(),
                ));
            }
            v.clone()
        }
        None => String::new(),
    };
    let idle_timeout_s = match &so.idle_timeout_s {
        Some(v) if !(1..=MAX_IDLE_TIMEOUT_S).contains(v.get_ref()) => {
            return Err(err(
                v.span(),
                format!("idle_timeout_s must be 1..{MAX_IDLE_TIMEOUT_S}"),
            ));
        }
        Some(v) => *v.get_ref(),
        None => DEFAULT_IDLE_TIMEOUT_S,
    };
    let backoff_max_ms = match &so.backoff_max_ms {
        Some(v) if !(MIN_BACKOFF_MAX_MS..=MAX_BACKOFF_MAX_MS).contains(v.get_ref()) => {
            return Err(err(
                v.span(),
                format!("backoff_max_ms must be {MIN_BACKOFF_MAX_MS}..{MAX_BACKOFF_MAX_MS}"),
            ));
        }
        Some(v) => *v.get_ref(),
        None => DEFAULT_BACKOFF_MAX_MS,
    };
    Ok(Source {
        name,
        kind,
        url,
        headers,
        events,
        subscribe,
        subjects,
        topic,
        rows,
        snapshot_url,
        idle_timeout_s,
        backoff_max_ms,
    })
}

#[cfg(test)]
mod tests;
