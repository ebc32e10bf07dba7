//! Configuration: the TOML file of SPEC §6, parsed strictly (unknown keys are
//! errors) into raw serde shapes, then validated once into [`Settings`].
//!
//! Cold module, and a leaf: nothing in `config` imports the rest of the
//! crate (the crate imports config, never the reverse). Every error carries
//! the line and column of the offending value. Hot modules never see the
//! raw shapes: they receive the validated [`Settings`] (behind an `Arc`),
//! or plain values such as [`StreamSettings`] with its `Duration`s.
//!
//! This file owns [`Settings`], the loading glue and the reload helpers
//! ([`Settings::extend_cadences`], [`Settings::keep_restart_only`]); it is
//! the only place that reads the process environment (`${VAR}`s, in
//! [`Settings::from_toml`]). Each section is turned from its raw shape into
//! typed settings by one function of its own file, called in the order
//! below (which decides the error reported for a file with several):
//!
//! * `server`: `[server]`: listeners, limits, deadlines, [`Cors`].
//! * `tiers`: `[tiers]`: [`Tier`]s and their cadences.
//! * `keys`: `[auth]` and `[[keys]]`: the token secret, the anonymous
//!   tier, [`Key`]s, and the warnings about published secrets.
//! * `routes`: `[[routes]]`: [`Route`]s (matching a request against them is
//!   `server::routes`, at request time).
//! * `topics`: `[[topics]]`: [`TopicRule`]s and [`Pattern`]s.
//! * `sources`: `[[sources]]`: [`Source`]s.
//! * `cluster`: `[cluster]`: [`ClusterSettings`].
//! * `metering`: `[metering]`: [`Metering`].
//!
//! Beside them: `raw` (the serde shapes exactly as read), `error`
//! ([`ConfigError`] and positions), `template` (the `{var}` syntax),
//! `secret` ([`Secret`], `${VAR}` expansion, URL redaction) and
//! [`values`] (roles, key digests and the topic-name rule that `auth` and
//! `hub` share).
//!
//! Imports run one way, so there are no cycles: this file imports the
//! sections; `metering` → `keys`; `keys` and `sources` → `topics`;
//! `topics` → `routes`; `keys` and `topics` → `tiers`; every section →
//! `raw`, `error` and the helpers, which import nothing of `config`. No
//! section imports this file (only test modules reach back for
//! `Settings::from_toml`). Every public name keeps its `config::` path
//! through the re-exports below.

use std::net::SocketAddr;

use raw::RawConfig;

mod cluster;
mod error;
mod keys;
mod metering;
mod raw;
mod routes;
mod secret;
mod server;
mod sources;
mod template;
mod tiers;
mod topics;
pub mod values;

pub use cluster::{ClusterSettings, MAX_CLUSTER_NAME_BYTES, MAX_SNAPSHOT_S};
pub use error::ConfigError;
pub use keys::{EXAMPLE_SECRETS, Key, MIN_TOKEN_SECRET_BYTES};
pub use metering::{ANONYMOUS_KEY, MAX_FLUSH_S, Metering};
pub use routes::{MatchValue, Route, parse_match};
pub use secret::{Secret, expand_env, redact_url};
pub use server::{Cors, MAX_WORKERS};
pub use sources::{
    DEFAULT_BACKOFF_MAX_MS, DEFAULT_IDLE_TIMEOUT_S, MAX_BACKOFF_MAX_MS, MAX_IDLE_TIMEOUT_S,
    MAX_SOURCE_NAME_BYTES, MIN_BACKOFF_MAX_MS, Source, SourceKind,
};
pub use template::{Part, parse_template};
pub use tiers::{MAX_CADENCES, MAX_COALESCE_MS, MIN_COALESCE_MS, Tier};
pub use topics::{Pattern, RESERVED_EVENTS, TopicRule};
pub use values::{KeySecret, Role};

/// The built-in demo configuration (`sluice serve` without `--config`).
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

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
        let mut out = keys::secret_warnings(&self.token_secret, &self.keys);
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

/// Each section through its own `validate`, in the order of the module
/// docs: a later section may use an earlier one's result (tiers by name,
/// topics for sources, keys for metering).
fn validate(
    src: &str,
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let s = server::validate(src, raw.server)?;
    let (tiers, cadences) = tiers::validate(src, raw.tiers)?;

    let a = keys::validate_auth(src, raw.auth, &tiers)?;
    let keys = keys::validate_keys(src, raw.keys, &tiers)?;

    let routes = routes::validate(src, raw.routes)?;
    let topics = topics::validate(src, raw.topics, &tiers, &routes)?;

    let sources = sources::validate(src, raw.sources, &topics, env)?;

    let cluster = match raw.cluster {
        Some(c) => Some(cluster::validate(src, c)?),
        None => None,
    };
    let metering = metering::validate(src, raw.metering, &keys, a.required)?;

    Ok(Settings {
        listen: s.listen,
        workers: s.workers,
        max_connections: s.max_connections,
        retry_ms: s.retry_ms,
        heartbeat_s: s.heartbeat_s,
        slow_consumer_s: s.slow_consumer_s,
        header_timeout_s: s.header_timeout_s,
        body_timeout_s: s.body_timeout_s,
        keepalive_timeout_s: s.keepalive_timeout_s,
        max_pending_connections: s.max_pending_connections,
        max_pending_per_ip: s.max_pending_per_ip,
        sndbuf_bytes: s.sndbuf_bytes,
        topic_idle_s: s.topic_idle_s,
        max_topics_per_key: s.max_topics_per_key,
        admin_listen: s.admin_listen,
        max_duration_s: s.max_duration_s,
        max_events: s.max_events,
        replay: s.replay,
        max_body_bytes: s.max_body_bytes,
        cors: s.cors,
        auth_required: a.required,
        anonymous_tier: a.anonymous_tier,
        token_secret: a.token_secret,
        token_secret_random: a.token_secret_random,
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
}
