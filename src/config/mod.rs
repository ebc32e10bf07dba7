//! Configuration: the TOML file of SPEC §6, parsed strictly (unknown keys are
//! errors) into raw serde shapes, then validated once into [`Settings`].
//!
//! Cold module. Every error carries the line and column of the offending
//! value. Hot modules never see these raw shapes: they receive the validated
//! [`Settings`] (behind an `Arc`) and the small value types it holds.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;

use toml::Spanned;

mod cluster;
mod error;
mod raw;
mod routes;
mod template;
mod tiers;
mod topics;
pub mod values;

pub use cluster::{ClusterSettings, MAX_CLUSTER_NAME_BYTES, MAX_SNAPSHOT_S};
pub use error::ConfigError;
use error::find_span;
use raw::{RawConfig, RawMetering, RawSource};
pub use routes::{MatchValue, Route, parse_match};
pub use template::{Part, parse_template};
pub use tiers::{MAX_CADENCES, MAX_COALESCE_MS, MIN_COALESCE_MS, Tier};
use topics::parse_patterns;
pub use topics::{Pattern, RESERVED_EVENTS, TopicRule};

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
    "set-the-same-random-secret-on-every-node",
];

/// Shortest `token_secret` that [`Settings::warnings`] does not call
/// guessable (an HS256 secret can be searched offline from any token).
pub const MIN_TOKEN_SECRET_BYTES: usize = 16;

/// Most workers a node runs: worker interest in a topic is one bit of a `u64`.
pub const MAX_WORKERS: usize = 64;

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

#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub secret: KeySecret,
    pub tier: usize,
    pub role: Role,
    pub max_connections: u32,
    pub topics: Vec<Pattern>,
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
    /// A topic with no subscribers, no rows and no update for this long is
    /// freed (0: never).
    pub topic_idle_s: u32,
    /// Most topics holding nothing that one key (or all anonymous clients
    /// together) may have made by reading them (0: no cap).
    pub max_topics_per_key: u32,
    /// Where `/metrics`, `/healthz`, `/v1/topics` and `/v1/usage` are
    /// served apart from `listen` (which then serves no `/metrics`).
    pub admin_listen: Option<SocketAddr>,
    pub cors: Cors,
    pub auth_required: bool,
    pub anonymous_tier: usize,
    pub token_secret: Vec<u8>,
    /// `token_secret` was empty: the secret is random, made for this
    /// process (a reload keeps it, so that issued tokens stay valid).
    pub token_secret_random: bool,
    pub token_ttl_s: u32,
    pub tiers: Vec<Tier>,
    /// The distinct `coalesce_ms` of the tiers. Ascending as validated (0,
    /// the raw cadence, first when some tier is raw); a reload renumbers
    /// them to extend the running list ([`Settings::extend_cadences`]), so
    /// that an index keeps naming the same interval for the process's life.
    pub cadences: Vec<u32>,
    pub keys: Vec<Key>,
    pub topics: Vec<TopicRule>,
    pub routes: Vec<Route>,
    pub sources: Vec<Source>,
    /// `[cluster]`: `None` keeps the node on its own, in memory.
    pub cluster: Option<ClusterSettings>,
    /// `[metering]`; `None`: usage is not metered.
    pub metering: Option<Metering>,
}

/// What the hot stream code (workers, fan-out, wheel, permits) needs of the
/// configuration, as plain values: it never sees the config's shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// Renumbers this (reloaded) configuration's cadences so that they
    /// extend `running`, the running process's list, whose indices are in
    /// use in rings, groups and bit masks: an interval already running
    /// keeps its index, a new one is appended, and every tier's `cadence`
    /// follows. Intervals no tier uses any more stay in the list (their
    /// rings live on with the topics that have them). Refused when more
    /// than [`MAX_CADENCES`] intervals would have been in use since start.
    pub fn extend_cadences(&mut self, running: &[u32]) -> Result<(), String> {
        let mut cadences = running.to_vec();
        for &ms in &self.cadences {
            if !cadences.contains(&ms) {
                cadences.push(ms);
            }
        }
        if cadences.len() > MAX_CADENCES {
            return Err(format!(
                "at most {MAX_CADENCES} distinct coalesce_ms values may be used \
                 between two restarts; restart sluice to use new ones"
            ));
        }
        for t in &mut self.tiers {
            t.cadence = cadences
                .iter()
                .position(|&c| c == t.coalesce_ms)
                .expect("every tier's interval is in cadences");
        }
        self.cadences = cadences;
        Ok(())
    }

    /// The settings only a restart can change that differ between this
    /// (reloaded) configuration and the `running` one: `listen`,
    /// `workers` (the listeners and worker threads exist) and
    /// `sndbuf_bytes` (set on the listeners). Their running values are
    /// kept in `self`, so the rest of the reload sees the node as it is.
    pub fn keep_restart_only(&mut self, running: &Settings) -> Vec<&'static str> {
        let mut differ = Vec::new();
        if self.listen != running.listen {
            differ.push("listen");
            self.listen = running.listen;
        }
        if self.workers != running.workers {
            differ.push("workers");
            self.workers = running.workers;
        }
        if self.sndbuf_bytes != running.sndbuf_bytes {
            differ.push("sndbuf_bytes");
            self.sndbuf_bytes = running.sndbuf_bytes;
        }
        // A random secret is per process: keep the running one, or every
        // token issued so far would stop verifying.
        if self.token_secret_random && running.token_secret_random {
            self.token_secret = running.token_secret.clone();
        }
        differ
    }

    /// Parses and validates a configuration file's text.
    pub fn from_toml(src: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml_env(src, &|name: &str| std::env::var(name).ok())
    }

    /// [`Settings::from_toml`] with `${VAR}`s of `[[sources]]` looked up in
    /// `env` instead of the process environment.
    pub fn from_toml_env(
        src: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(src)
            .map_err(|e| ConfigError::at(src, e.span(), e.message().to_string()))?;
        validate(src, raw, env)
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
        if self.has_source(SourceKind::Demo) {
            out.push(
                "[[sources]] kind = \"demo\" publishes simulated odds and ticker rows: \
                 remove it in production"
                    .into(),
            );
        }
        out
    }

    /// True when some `[[sources]]` entry is of this kind.
    pub fn has_source(&self, kind: SourceKind) -> bool {
        self.sources.iter().any(|s| s.kind == kind)
    }

    /// The first `[[topics]]` rule whose pattern matches `topic`.
    pub fn topic_rule(&self, topic: &str) -> Option<&TopicRule> {
        self.topics.iter().find(|r| r.pattern.matches(topic))
    }
}

fn validate(
    src: &str,
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let err = |span: Range<usize>, msg: String| ConfigError::at(src, Some(span), msg);
    let s = raw.server;

    let listen: SocketAddr = s.listen.get_ref().parse().map_err(|_| {
        err(
            s.listen.span(),
            format!("listen: '{}' is not an IP:port address", s.listen.get_ref()),
        )
    })?;
    let admin_listen = match &s.admin_listen {
        None => None,
        Some(a) => Some(a.get_ref().parse::<SocketAddr>().map_err(|_| {
            err(
                a.span(),
                format!("admin_listen: '{}' is not an IP:port address", a.get_ref()),
            )
        })?),
    };
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

    let (tiers, cadences) = tiers::validate(src, raw.tiers)?;
    let tier_index = |name: &Spanned<String>| tiers::index(src, &tiers, name);

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
    let token_secret_random = a.token_secret.is_empty();
    let token_secret = if token_secret_random {
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

    let routes = routes::validate(src, raw.routes)?;
    let topics = topics::validate(src, raw.topics, &tiers, &routes)?;

    let mut sources: Vec<Source> = Vec::with_capacity(raw.sources.len());
    for so in raw.sources {
        let name_span = so.name.as_ref().map_or(so.kind.span(), |n| n.span());
        let source = validate_source(src, so, &topics, env)?;
        if sources.iter().any(|b| b.name == source.name) {
            return Err(err(
                name_span,
                format!("duplicate source name '{}'", source.name),
            ));
        }
        sources.push(source);
    }

    let cluster = match raw.cluster {
        Some(c) => Some(cluster::validate(src, c)?),
        None => None,
    };
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
        topic_idle_s: s.topic_idle_s,
        max_topics_per_key: s.max_topics_per_key,
        admin_listen,
        max_duration_s: s.max_duration_s,
        max_events: s.max_events,
        replay: s.replay.into_inner(),
        max_body_bytes: s.max_body_bytes,
        cors,
        auth_required: a.required,
        anonymous_tier,
        token_secret,
        token_secret_random,
        token_ttl_s: a.token_ttl_s,
        tiers,
        cadences,
        keys,
        topics,
        routes,
        sources,
        cluster,
        metering,
    })
}

/// One `[[sources]]` entry: the keys its kind takes, URL schemes, the
/// topic template, and `${VAR}` expansion through `env`.
fn validate_source(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid() {
        let s = Settings::from_toml(DEMO_CONFIG).expect("demo config validates");
        assert!(!s.auth_required);
        assert_eq!(s.sources.len(), 1);
        assert_eq!(s.sources[0].kind, SourceKind::Demo);
        assert_eq!(s.sources[0].name, "demo");
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

    const SOURCE_TOPICS: &str = "[[topics]]\npattern = \"odds/*\"\n";

    fn with_env(src: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml_env(src, &|name: &str| match name {
            "ORIGIN_TOKEN" => Some("s3cret-token".into()),
            "ODDS_KEY" => Some("k3y".into()),
            _ => None,
        })
    }

    #[test]
    fn an_sse_source_expands_env_and_keeps_secrets_out_of_debug() {
        let s = with_env(&format!(
            r#"{SOURCE_TOPICS}
[[sources]]
name = "odds-origin"
kind = "sse"
url = "https://origin.example:9000/stream?apiKey=${{ODDS_KEY}}"
headers = {{ Authorization = "Bearer ${{ORIGIN_TOKEN}}", X-Plain = "a$b" }}
events = ["odds_update"]
topic = "odds/{{sport_key}}"
rows = "/data"
snapshot_url = "https://origin.example:9000/snapshot"
"#
        ))
        .unwrap();
        let so = &s.sources[0];
        assert_eq!(so.kind, SourceKind::Sse);
        assert_eq!(
            so.url.expose(),
            "https://origin.example:9000/stream?apiKey=k3y"
        );
        assert_eq!(so.display_url(), "https://origin.example:9000/stream");
        assert_eq!(so.headers[0].0, "Authorization");
        assert_eq!(so.headers[0].1.expose(), "Bearer s3cret-token");
        assert_eq!(so.headers[1].1.expose(), "a$b");
        assert_eq!(so.idle_timeout_s, DEFAULT_IDLE_TIMEOUT_S);
        assert_eq!(so.backoff_max_ms, DEFAULT_BACKOFF_MAX_MS);
        assert_eq!(
            so.topic,
            vec![Part::Lit("odds/".into()), Part::Var("sport_key".into())]
        );
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(!debug.contains("k3y"), "{debug}");
    }

    #[test]
    fn a_missing_variable_is_named_and_no_value_is_shown() {
        let e = with_env(&format!(
            "{SOURCE_TOPICS}[[sources]]\nname = \"o\"\nkind = \"sse\"\nurl = \"http://o/s\"\ntopic = \"odds/x\"\nheaders = {{ A = \"${{ORIGIN_TOKEN}}\", B = \"${{NOPE_NOT_SET}}\" }}\n"
        ))
        .unwrap_err();
        assert_eq!(e.line, 8, "{e}");
        assert!(
            e.message
                .contains("headers.B: environment variable NOPE_NOT_SET is not set"),
            "{e}"
        );
        assert!(!e.message.contains("s3cret"), "{e}");
        assert_eq!(
            expand_env("a${X}b${Y}", |n| Some(n.to_lowercase())).unwrap(),
            "axby"
        );
        assert!(expand_env("${X", |_| Some(String::new())).is_err());
        assert!(expand_env("${1X}", |_| Some(String::new())).is_err());
        assert_eq!(expand_env("$X {Y}", |_| None).unwrap(), "$X {Y}");
    }

    #[test]
    fn each_kind_takes_its_own_keys_and_schemes() {
        let base = |kind: &str, extra: &str| {
            format!("{SOURCE_TOPICS}[[sources]]\nname = \"s\"\nkind = \"{kind}\"\n{extra}\n")
        };
        let ok = [
            ("sse", "url = \"http://o/s\"\ntopic = \"odds/a\""),
            (
                "sse",
                "url = \"https://o/s\"\ntopic = \"odds/{k}\"\nidle_timeout_s = 1\nbackoff_max_ms = 10",
            ),
            (
                "websocket",
                "url = \"ws://o/s\"\ntopic = \"odds/{k}\"\nsubscribe = '{\"op\":\"sub\"}'",
            ),
            (
                "websocket",
                "url = \"wss://o/s\"\ntopic = \"odds/{k}\"\nrows = \"\"",
            ),
            (
                "nats",
                "url = \"nats://127.0.0.1:4222\"\nsubjects = [\"odds.>\"]\ntopic = \"{subject}\"",
            ),
        ];
        for (kind, extra) in ok {
            with_env(&base(kind, extra)).unwrap_or_else(|e| panic!("{kind} {extra}: {e}"));
        }
        let bad = [
            (
                "sse",
                "url = \"ws://o/s\"\ntopic = \"odds/a\"",
                "http or https",
            ),
            (
                "sse",
                "url = \"http:/\"\ntopic = \"odds/a\"",
                "http or https",
            ),
            (
                "websocket",
                "url = \"http://o/s\"\ntopic = \"odds/a\"",
                "ws or wss",
            ),
            (
                "nats",
                "url = \"http://o\"\nsubjects = [\"a\"]\ntopic = \"odds/a\"",
                "nats or tls",
            ),
            (
                "nats",
                "url = \"nats://o\"\ntopic = \"odds/a\"",
                "needs subjects",
            ),
            (
                "nats",
                "url = \"nats://o\"\nsubjects = []\ntopic = \"odds/a\"",
                "subjects",
            ),
            (
                "nats",
                "url = \"nats://o\"\nsubjects = [\"a..b\"]\ntopic = \"odds/a\"",
                "subjects",
            ),
            (
                "nats",
                "url = \"nats://o\"\nsubjects = [\"a\"]\ntopic = \"odds/a\"\nheaders = { A = \"b\" }",
                "'headers' does not apply to a nats source",
            ),
            (
                "websocket",
                "url = \"ws://o\"\ntopic = \"odds/a\"\nevents = [\"x\"]",
                "'events' does not apply",
            ),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"odds/a\"\nsubscribe = \"x\"",
                "'subscribe' does not apply",
            ),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"odds/a\"\nsubjects = [\"x\"]",
                "'subjects' does not apply",
            ),
            ("sse", "url = \"http://o\"", "needs a topic"),
            ("sse", "topic = \"odds/a\"", "needs a url"),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"ticker/a\"",
                "matches no [[topics]] pattern",
            ),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"odds//a\"",
                "not a topic name",
            ),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"odds/{a b}\"",
                "topic must be",
            ),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"odds/a\"\nrows = \"data\"",
                "JSON pointer",
            ),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"odds/a\"\nidle_timeout_s = 0",
                "idle_timeout_s",
            ),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"odds/a\"\nbackoff_max_ms = 1",
                "backoff_max_ms",
            ),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"odds/a\"\nsnapshot_url = \"ws://o\"",
                "snapshot_url",
            ),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"odds/a\"\nheaders = { \"A B\" = \"x\" }",
                "not a header name",
            ),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"odds/a\"\nheaders = { A = \"x\\ny\" }",
                "control character",
            ),
            (
                "sse",
                "url = \"http://o\"\ntopic = \"odds/a\"\nbogus = 1",
                "unknown field",
            ),
            (
                "demo",
                "url = \"http://o\"",
                "'url' does not apply to a demo source",
            ),
            ("rss", "", "unknown source kind 'rss'"),
        ];
        for (kind, extra, want) in bad {
            let e = with_env(&base(kind, extra)).err();
            let msg = e.as_ref().map(|e| e.message.clone()).unwrap_or_default();
            assert!(msg.contains(want), "{kind} {extra:?}: {msg:?}");
        }
        // names: required, unique, label-safe
        let e = with_env(&format!(
            "{SOURCE_TOPICS}[[sources]]\nkind = \"sse\"\nurl = \"http://o\"\ntopic = \"odds/a\"\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("needs a name"), "{e}");
        let e = with_env(&format!(
            "{SOURCE_TOPICS}[[sources]]\nname = \"a b\"\nkind = \"demo\"\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("source name must be"), "{e}");
        let two = base("sse", "url = \"http://o\"\ntopic = \"odds/a\"");
        let e = with_env(&format!("{two}{}", two.replace(SOURCE_TOPICS, ""))).unwrap_err();
        assert!(e.message.contains("duplicate source name 's'"), "{e}");
        assert_eq!(e.line, 9, "{e}");
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
}
