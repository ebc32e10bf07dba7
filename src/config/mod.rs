//! Configuration: the TOML file of SPEC §6, parsed strictly (unknown keys are
//! errors) into raw serde shapes, then validated once into [`Settings`].
//!
//! Cold module. Every error carries the line and column of the offending
//! value. Hot modules never see these raw shapes: they receive the validated
//! [`Settings`] (behind an `Arc`) and the small value types it holds.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

pub mod values;

use values::topic_name_is_valid;
pub use values::{KeySecret, Role};

/// The built-in demo configuration (`sluice serve` without `--config`).
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// Secrets that ship in this repository's example configs, README and
/// docs, and the usual stand-ins: [`Settings::warnings`] flags a
/// `token_secret` or key that uses one.
pub const EXAMPLE_SECRETS: &[&str] = &[
    "change-me",
    "change_me",
    "changeme",
    "secret",
    "test",
    "password",
    "sk_live_acme",
    "sk_live_example",
    "sk_live_xxxxx",
    "pk_live_scale",
    "pk_live_enterprise",
    "pk_live_business",
    "pk_publisher_change_me",
    "demo-scale",
    "demo-enterprise",
    "demo-business",
    "demo-publisher",
    "demo-admin",
    "demo-public-key-2026",
];

/// Shortest `token_secret` that [`Settings::warnings`] does not call
/// guessable (an HS256 secret can be searched offline from any token).
pub const MIN_TOKEN_SECRET_BYTES: usize = 16;

/// Most workers a node runs: worker interest in a topic is one bit of a `u64`.
pub const MAX_WORKERS: usize = 64;

/// A configuration error with its position in the file (1-based).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl ConfigError {
    fn at(src: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        let (line, column) = match span {
            Some(s) => line_col(src, s.start),
            None => (1, 1),
        };
        ConfigError {
            line,
            column,
            message: message.into(),
        }
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

// ---------------------------------------------------------------- raw shapes

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    auth: RawAuth,
    tiers: Option<BTreeMap<String, RawTier>>,
    keys: Vec<RawKey>,
    topics: Vec<RawTopic>,
    routes: Vec<RawRoute>,
    sources: Vec<RawSource>,
    metering: Option<RawMetering>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: Spanned<String>,
    workers: usize,
    max_connections: usize,
    retry_ms: u32,
    heartbeat_s: Spanned<u32>,
    max_duration_s: u32,
    max_events: u32,
    replay: Spanned<usize>,
    max_body_bytes: usize,
    cors_origins: Vec<String>,
    slow_consumer_s: Spanned<u32>,
    header_timeout_s: Spanned<u32>,
    body_timeout_s: Spanned<u32>,
    keepalive_timeout_s: Spanned<u32>,
    max_pending_connections: usize,
    max_pending_per_ip: usize,
    sndbuf_bytes: usize,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: Spanned::new(0..0, "127.0.0.1:8080".into()),
            workers: 0,
            max_connections: 200_000,
            retry_ms: 3000,
            heartbeat_s: Spanned::new(0..0, 15),
            max_duration_s: 1800,
            max_events: 10_000,
            replay: Spanned::new(0..0, 1024),
            max_body_bytes: 1 << 20,
            cors_origins: vec!["*".into()],
            slow_consumer_s: Spanned::new(0..0, 5),
            header_timeout_s: Spanned::new(0..0, 10),
            body_timeout_s: Spanned::new(0..0, 30),
            keepalive_timeout_s: Spanned::new(0..0, 60),
            max_pending_connections: 4096,
            max_pending_per_ip: 256,
            sndbuf_bytes: 128 * 1024,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    required: bool,
    anonymous_tier: Spanned<String>,
    token_secret: String,
    token_ttl_s: u32,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            required: true,
            anonymous_tier: Spanned::new(0..0, "business".into()),
            token_secret: String::new(),
            token_ttl_s: 60,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    coalesce_ms: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: Spanned<String>,
    key: Option<String>,
    key_sha256: Option<Spanned<String>>,
    tier: Spanned<String>,
    #[serde(default = "default_role")]
    role: Spanned<String>,
    #[serde(default)]
    max_connections: u32,
    #[serde(default = "default_patterns")]
    topics: Vec<Spanned<String>>,
}

fn default_role() -> Spanned<String> {
    Spanned::new(0..0, "subscriber".into())
}

fn default_patterns() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "*".into())]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    pattern: Spanned<String>,
    #[serde(default = "default_event")]
    event: Spanned<String>,
    #[serde(default)]
    key: Vec<String>,
    #[serde(default)]
    history: usize,
    tiers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    filters: BTreeMap<String, String>,
}

fn default_event() -> Spanned<String> {
    Spanned::new(0..0, "update".into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Spanned<String>,
    topic: Spanned<String>,
    #[serde(rename = "match", default)]
    fixed: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetering {
    path: Spanned<String>,
    #[serde(default = "default_flush_s")]
    flush_s: Spanned<u32>,
}

fn default_flush_s() -> Spanned<u32> {
    Spanned::new(0..0, 10)
}

// ---------------------------------------------------------------- validated

/// Which origins get CORS headers.
#[derive(Debug, Clone)]
pub enum Cors {
    /// `cors_origins` holds `"*"`: every origin, answered with a literal `*`.
    Any,
    /// Only these origins, compared whole and byte for byte (so
    /// `https://a.example` allows neither `https://a.example.evil.com` nor
    /// `http://a.example`); an allowed origin is echoed.
    List(Vec<String>),
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if
    /// allowed: `*` when any origin is, else the origin itself when it is
    /// one of the list. A request's `Origin` is never echoed unless the list
    /// names it.
    pub fn allow<'a>(&self, origin: &'a str) -> Option<&'a str> {
        match self {
            Cors::Any => Some("*"),
            Cors::List(list) => list.iter().any(|o| o == origin).then_some(origin),
        }
    }
}

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

#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    pub coalesce_ms: u32,
    /// Index into [`Settings::cadences`]: tiers with the same `coalesce_ms`
    /// share one ring and one frame per tick.
    pub cadence: usize,
}

/// Longest coalescing interval a tier may have.
pub const MAX_COALESCE_MS: u32 = 3_600_000;
/// Shortest non-zero coalescing interval.
pub const MIN_COALESCE_MS: u32 = 10;
/// Most distinct `coalesce_ms` values (a state-table row keeps one dirty bit
/// per cadence).
pub const MAX_CADENCES: usize = 32;

#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub secret: KeySecret,
    pub tier: usize,
    pub role: Role,
    pub max_connections: u32,
    pub topics: Vec<Pattern>,
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

/// One piece of a route template: literal text or a `{name}` variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    Var(String),
}

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

/// `[metering]` (SPEC §9): usage records appended to `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metering {
    pub path: std::path::PathBuf,
    /// Seconds between two `fdatasync`s of the file.
    pub flush_s: u32,
}

/// Longest `flush_s`.
pub const MAX_FLUSH_S: u32 = 3600;
/// The key name usage records give streams without a key (`auth.required =
/// false`); no configured key may take it while metering is on.
pub const ANONYMOUS_KEY: &str = "anonymous";
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Demo,
}

/// The validated configuration. Built once; a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub workers: usize,
    pub max_connections: usize,
    pub retry_ms: u32,
    pub heartbeat_s: u32,
    pub max_duration_s: u32,
    pub max_events: u32,
    pub replay: usize,
    pub max_body_bytes: usize,
    /// A stream whose socket has not drained for this long is closed.
    pub slow_consumer_s: u32,
    /// A request head must arrive whole within this of the connection (or
    /// of its first byte, on a kept-alive connection).
    pub header_timeout_s: u32,
    /// A request body must arrive whole within this of its head.
    pub body_timeout_s: u32,
    /// A kept-alive connection may wait this long for its next request.
    pub keepalive_timeout_s: u32,
    /// Connections that are not streams (reading a request, or kept alive
    /// between requests), per node and per client address.
    pub max_pending_connections: usize,
    pub max_pending_per_ip: usize,
    /// SO_SNDBUF of client sockets (0: the kernel's autotuning).
    pub sndbuf_bytes: usize,
    pub cors: Cors,
    pub auth_required: bool,
    pub anonymous_tier: usize,
    pub token_secret: Vec<u8>,
    pub token_ttl_s: u32,
    pub tiers: Vec<Tier>,
    /// The distinct `coalesce_ms` of the tiers, ascending (0, the raw
    /// cadence, first when some tier is raw).
    pub cadences: Vec<u32>,
    pub keys: Vec<Key>,
    pub topics: Vec<TopicRule>,
    pub routes: Vec<Route>,
    pub sources: Vec<SourceKind>,
    /// `[metering]`; `None`: usage is not metered.
    pub metering: Option<Metering>,
}

/// What the hot stream code (workers, fan-out, wheel, permits) needs of the
/// configuration, as plain values: it never sees the config's shapes.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub retry_ms: u32,
    /// `max_events`; 0: no limit.
    pub max_events: u32,
    /// `max_duration_s`; zero: streams never time out.
    pub max_duration: std::time::Duration,
    /// `slow_consumer_s`.
    pub slow_consumer: std::time::Duration,
}

impl Settings {
    /// The slice of the settings the stream code uses.
    pub fn stream(&self) -> StreamSettings {
        StreamSettings {
            retry_ms: self.retry_ms,
            max_events: self.max_events,
            max_duration: std::time::Duration::from_secs(self.max_duration_s.into()),
            slow_consumer: std::time::Duration::from_secs(self.slow_consumer_s.into()),
        }
    }

    /// Parses and validates a configuration file's text.
    pub fn from_toml(src: &str) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(src)
            .map_err(|e| ConfigError::at(src, e.span(), e.message().to_string()))?;
        validate(src, raw)
    }

    /// What `check-config` and `serve --config` warn about: secrets that
    /// were published as examples (anyone could use them), placeholders
    /// that no key matches, a guessable `token_secret`, the demo source.
    /// The file is valid all the same.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let secret = &self.token_secret;
        // Secrets are named, never printed, even published ones.
        if EXAMPLE_SECRETS
            .iter()
            .any(|e| e.as_bytes() == secret.as_slice())
        {
            out.push(
                "auth.token_secret is a published example: anyone can mint stream tokens \
                 with it; set a random one (openssl rand -hex 32), or \"\" for a random \
                 secret per process"
                    .into(),
            );
        } else if secret.len() < MIN_TOKEN_SECRET_BYTES {
            out.push(format!(
                "auth.token_secret has {} bytes: a short secret can be guessed from any \
                 token; use at least {MIN_TOKEN_SECRET_BYTES} random bytes (openssl rand -hex 32)",
                secret.len()
            ));
        }
        for k in &self.keys {
            if EXAMPLE_SECRETS.iter().any(|e| k.secret.is(e)) {
                out.push(format!(
                    "key '{}' uses a published example secret: anyone can use it; set a \
                     random one (openssl rand -hex 24), preferably as key_sha256",
                    k.name
                ));
            } else if k.secret.is_placeholder() {
                out.push(format!(
                    "key '{}' has the placeholder key_sha256 of zeros: no key matches it; \
                     set the SHA-256 of a real key (printf %s \"$KEY\" | sha256sum)",
                    k.name
                ));
            }
        }
        if self.sources.contains(&SourceKind::Demo) {
            out.push(
                "[[sources]] kind = \"demo\" publishes simulated odds and ticker rows: \
                 remove it in production"
                    .into(),
            );
        }
        out
    }

    /// The first `[[topics]]` rule whose pattern matches `topic`.
    pub fn topic_rule(&self, topic: &str) -> Option<&TopicRule> {
        self.topics.iter().find(|r| r.pattern.matches(topic))
    }
}

fn validate(src: &str, raw: RawConfig) -> Result<Settings, ConfigError> {
    let err = |span: Range<usize>, msg: String| ConfigError::at(src, Some(span), msg);
    let s = raw.server;

    let listen: SocketAddr = s.listen.get_ref().parse().map_err(|_| {
        err(
            s.listen.span(),
            format!("listen: '{}' is not an IP:port address", s.listen.get_ref()),
        )
    })?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = if s.workers == 0 {
        cores.min(MAX_WORKERS)
    } else {
        s.workers
    };
    if workers > MAX_WORKERS {
        return Err(ConfigError::at(
            src,
            None,
            format!("workers: at most {MAX_WORKERS}"),
        ));
    }
    for (name, v, max) in [
        ("slow_consumer_s", &s.slow_consumer_s, 3600),
        ("header_timeout_s", &s.header_timeout_s, 3600),
        ("body_timeout_s", &s.body_timeout_s, 3600),
        ("keepalive_timeout_s", &s.keepalive_timeout_s, 3600),
    ] {
        if !(1..=max).contains(v.get_ref()) {
            return Err(ConfigError::at(
                src,
                Some(v.span()),
                format!("{name} must be 1..{max}"),
            ));
        }
    }
    if s.max_pending_connections == 0 || s.max_pending_per_ip == 0 {
        return Err(ConfigError::at(
            src,
            find_span(src, "max_pending"),
            "max_pending_connections and max_pending_per_ip must be at least 1",
        ));
    }
    if !(1..=30).contains(s.heartbeat_s.get_ref()) {
        return Err(err(
            s.heartbeat_s.span(),
            "heartbeat_s must be 1..30".into(),
        ));
    }
    if !(16..=1 << 20).contains(s.replay.get_ref()) {
        return Err(err(s.replay.span(), "replay must be 16..1048576".into()));
    }
    let cors = if s.cors_origins.iter().any(|o| o == "*") {
        Cors::Any
    } else {
        Cors::List(s.cors_origins)
    };

    // Tiers: SPEC's three by default.
    let raw_tiers: Vec<(String, u32)> = match raw.tiers {
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
    let tier_index = |name: &Spanned<String>| -> Result<usize, ConfigError> {
        tiers
            .iter()
            .position(|t| t.name == *name.get_ref())
            .ok_or_else(|| err(name.span(), format!("unknown tier '{}'", name.get_ref())))
    };

    let a = raw.auth;
    // The anonymous tier matters only when keys are optional; its default
    // ("business") need not exist when they are required.
    let anonymous_tier = match tier_index(&a.anonymous_tier) {
        Ok(t) => t,
        Err(_) if a.required && a.anonymous_tier.span().is_empty() => 0,
        Err(e) => {
            return Err(ConfigError {
                message: format!("auth.anonymous_tier: {}", e.message),
                ..e
            });
        }
    };
    let token_secret = if a.token_secret.is_empty() {
        // A per-process secret from the kernel's CSPRNG (tokens then die
        // with the process, which is what an empty secret asks for).
        let mut b = vec![0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").map_err(|e| {
                ConfigError::at(
                    src,
                    None,
                    format!("token_secret: cannot read /dev/urandom: {e}"),
                )
            })?,
            &mut b,
        )
        .map_err(|e| ConfigError::at(src, None, format!("token_secret: {e}")))?;
        b
    } else {
        a.token_secret.into_bytes()
    };

    let mut keys = Vec::with_capacity(raw.keys.len());
    for k in raw.keys {
        let secret = match (k.key, k.key_sha256) {
            (Some(plain), None) if !plain.is_empty() => KeySecret::plain(&plain),
            (None, Some(hex)) => KeySecret::from_sha256_hex(hex.get_ref())
                .ok_or_else(|| err(hex.span(), "key_sha256 must be 64 hex digits".into()))?,
            _ => {
                return Err(err(
                    k.name.span(),
                    format!(
                        "key '{}': give exactly one of key or key_sha256",
                        k.name.get_ref()
                    ),
                ));
            }
        };
        let role = Role::parse(k.role.get_ref()).ok_or_else(|| {
            err(
                k.role.span(),
                "role must be subscriber, publisher or admin".into(),
            )
        })?;
        let topics = parse_patterns(src, &k.topics)?;
        if keys.iter().any(|o: &Key| o.name == *k.name.get_ref()) {
            return Err(err(
                k.name.span(),
                format!("duplicate key name '{}'", k.name.get_ref()),
            ));
        }
        keys.push(Key {
            name: k.name.into_inner(),
            secret,
            tier: tier_index(&k.tier)?,
            role,
            max_connections: k.max_connections,
            topics,
        });
    }

    let mut routes = Vec::with_capacity(raw.routes.len());
    for r in raw.routes {
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
    let route_fields: Vec<String> = {
        let mut f: Vec<String> = routes
            .iter()
            .flat_map(|r| r.fixed.iter().map(|(field, _)| field.clone()))
            .collect();
        f.sort();
        f.dedup();
        f
    };

    let mut topics = Vec::with_capacity(raw.topics.len());
    for t in raw.topics {
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
            Some(list) => list.iter().map(tier_index).collect::<Result<Vec<_>, _>>()?,
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

    let mut sources = Vec::with_capacity(raw.sources.len());
    for so in raw.sources {
        match so.kind.get_ref().as_str() {
            "demo" => sources.push(SourceKind::Demo),
            other => {
                return Err(err(
                    so.kind.span(),
                    format!("unknown source kind '{other}' (this build has: demo)"),
                ));
            }
        }
    }

    let metering = validate_metering(src, raw.metering, &keys, a.required)?;

    Ok(Settings {
        listen,
        workers,
        max_connections: s.max_connections,
        retry_ms: s.retry_ms,
        heartbeat_s: s.heartbeat_s.into_inner(),
        slow_consumer_s: s.slow_consumer_s.into_inner(),
        header_timeout_s: s.header_timeout_s.into_inner(),
        body_timeout_s: s.body_timeout_s.into_inner(),
        keepalive_timeout_s: s.keepalive_timeout_s.into_inner(),
        max_pending_connections: s.max_pending_connections,
        max_pending_per_ip: s.max_pending_per_ip,
        sndbuf_bytes: s.sndbuf_bytes,
        max_duration_s: s.max_duration_s,
        max_events: s.max_events,
        replay: s.replay.into_inner(),
        max_body_bytes: s.max_body_bytes,
        cors,
        auth_required: a.required,
        anonymous_tier,
        token_secret,
        token_ttl_s: a.token_ttl_s,
        tiers,
        cadences,
        keys,
        topics,
        routes,
        sources,
        metering,
    })
}

/// `[metering]`: a path and `flush_s` 1..MAX_FLUSH_S; with optional keys,
/// no key may be named [`ANONYMOUS_KEY`].
fn validate_metering(
    src: &str,
    raw: Option<RawMetering>,
    keys: &[Key],
    auth_required: bool,
) -> Result<Option<Metering>, ConfigError> {
    let Some(m) = raw else {
        return Ok(None);
    };
    if m.path.get_ref().trim().is_empty() {
        return Err(ConfigError::at(
            src,
            Some(m.path.span()),
            "metering.path must name a file",
        ));
    }
    if !(1..=MAX_FLUSH_S).contains(m.flush_s.get_ref()) {
        return Err(ConfigError::at(
            src,
            Some(m.flush_s.span()).filter(|s| !s.is_empty()),
            format!("metering.flush_s must be 1..{MAX_FLUSH_S}"),
        ));
    }
    if !auth_required && keys.iter().any(|k| k.name == ANONYMOUS_KEY) {
        return Err(ConfigError::at(
            src,
            find_span(src, &format!("\"{ANONYMOUS_KEY}\"")),
            format!(
                "key name '{ANONYMOUS_KEY}' is reserved: usage records name streams \
                 without a key so (auth.required = false)"
            ),
        ));
    }
    Ok(Some(Metering {
        path: m.path.into_inner().into(),
        flush_s: m.flush_s.into_inner(),
    }))
}

/// The span of the first occurrence of `needle` in `src`, for errors about
/// values that serde gives no position for.
fn find_span(src: &str, needle: &str) -> Option<Range<usize>> {
    src.find(needle).map(|i| i..i + needle.len())
}

fn parse_patterns(src: &str, list: &[Spanned<String>]) -> Result<Vec<Pattern>, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid() {
        let s = Settings::from_toml(DEMO_CONFIG).expect("demo config validates");
        assert!(!s.auth_required);
        assert_eq!(s.sources, vec![SourceKind::Demo]);
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let e = Settings::from_toml("[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn unknown_tier_points_at_the_value() {
        let src = "[[keys]]\nname = \"a\"\nkey = \"k\"\ntier = \"gold\"\n";
        let e = Settings::from_toml(src).unwrap_err();
        assert_eq!((e.line, e.column), (4, 8), "{e}");
        assert!(e.message.contains("unknown tier 'gold'"), "{e}");
    }

    #[test]
    fn heartbeat_out_of_range() {
        let e = Settings::from_toml("[server]\nheartbeat_s = 31\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

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

    #[test]
    fn cors_echoes_only_listed_origins_and_answers_star_for_any() {
        let list = Cors::List(vec!["https://a.example".into()]);
        assert_eq!(list.allow("https://a.example"), Some("https://a.example"));
        for other in [
            "https://a.example.evil.com",
            "https://evil.example",
            "http://a.example",
            "https://a.example:443",
            "https://a.example/",
            "https://A.example",
            "https://xa.example",
            "null",
            "",
        ] {
            assert_eq!(list.allow(other), None, "{other}");
        }
        assert_eq!(Cors::Any.allow("https://evil.example"), Some("*"));
        let s = Settings::from_toml("[server]\ncors_origins = [\"https://a.example\", \"*\"]\n")
            .unwrap();
        assert!(matches!(s.cors, Cors::Any));
        let s = Settings::from_toml("[server]\ncors_origins = []\n").unwrap();
        assert_eq!(s.cors.allow("https://a.example"), None);
    }

    #[test]
    fn metering_section() {
        let s = Settings::from_toml("[metering]\npath = \"/tmp/u.jsonl\"\n").unwrap();
        let m = s.metering.unwrap();
        assert_eq!(m.path, std::path::PathBuf::from("/tmp/u.jsonl"));
        assert_eq!(m.flush_s, 10);
        assert!(Settings::from_toml("").unwrap().metering.is_none());
        let e = Settings::from_toml("[metering]\npath = \"/tmp/u\"\nflush_s = 0\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 11), "{e}");
        let e = Settings::from_toml("[metering]\npath = \" \"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = Settings::from_toml("[metering]\nflush_s = 1\n").unwrap_err();
        assert!(e.message.contains("path"), "{e}");
        let e = Settings::from_toml("[metering]\npath = \"/tmp/u\"\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        // Streams without a key are metered as "anonymous": no key may be.
        let anon = "[auth]\nrequired = false\nanonymous_tier = \"scale\"\n\
                    [[keys]]\nname = \"anonymous\"\nkey = \"k\"\ntier = \"scale\"\n";
        assert!(Settings::from_toml(anon).is_ok());
        let e = Settings::from_toml(&format!("{anon}[metering]\npath = \"/tmp/u\"\n")).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("reserved"), "{e}");
    }

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
