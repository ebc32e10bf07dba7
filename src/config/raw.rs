//! The configuration file's shapes exactly as serde reads them from TOML
//! (SPEC §6): every table `deny_unknown_fields`, the defaults of omitted
//! keys, and `Spanned` values where an error must point at the value.
//!
//! Owns only these shapes and their defaults. Never validates (each
//! section's module turns its raw shape into typed settings), never leaves
//! `config` (hot code never sees a raw shape) and never imports crate code.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file: every section optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) auth: RawAuth,
    pub(super) tiers: Option<BTreeMap<String, RawTier>>,
    pub(super) keys: Vec<RawKey>,
    pub(super) topics: Vec<RawTopic>,
    pub(super) routes: Vec<RawRoute>,
    pub(super) sources: Vec<RawSource>,
    pub(super) cluster: Option<RawCluster>,
    pub(super) metering: Option<RawMetering>,
}

/// `[server]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) listen: Spanned<String>,
    pub(super) workers: usize,
    pub(super) max_connections: usize,
    pub(super) retry_ms: u32,
    pub(super) heartbeat_s: Spanned<u32>,
    pub(super) max_duration_s: u32,
    pub(super) max_events: u32,
    pub(super) replay: Spanned<usize>,
    pub(super) max_body_bytes: usize,
    pub(super) cors_origins: Vec<String>,
    pub(super) slow_consumer_s: Spanned<u32>,
    pub(super) header_timeout_s: Spanned<u32>,
    pub(super) body_timeout_s: Spanned<u32>,
    pub(super) keepalive_timeout_s: Spanned<u32>,
    pub(super) max_pending_connections: usize,
    pub(super) max_pending_per_ip: usize,
    pub(super) sndbuf_bytes: usize,
    pub(super) topic_idle_s: u32,
    pub(super) max_topics_per_key: u32,
    pub(super) admin_listen: Option<Spanned<String>>,
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
            topic_idle_s: 300,
            max_topics_per_key: 1000,
            admin_listen: None,
        }
    }
}

/// `[auth]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    pub(super) required: bool,
    pub(super) anonymous_tier: Spanned<String>,
    pub(super) token_secret: String,
    pub(super) token_ttl_s: u32,
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

/// One `[tiers.<name>]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTier {
    pub(super) coalesce_ms: u32,
}

/// One `[[keys]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub(super) name: Spanned<String>,
    pub(super) key: Option<String>,
    pub(super) key_sha256: Option<Spanned<String>>,
    pub(super) tier: Spanned<String>,
    #[serde(default = "default_role")]
    pub(super) role: Spanned<String>,
    #[serde(default)]
    pub(super) max_connections: u32,
    #[serde(default = "default_patterns")]
    pub(super) topics: Vec<Spanned<String>>,
}

fn default_role() -> Spanned<String> {
    Spanned::new(0..0, "subscriber".into())
}

fn default_patterns() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "*".into())]
}

/// One `[[topics]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTopic {
    pub(super) pattern: Spanned<String>,
    #[serde(default = "default_event")]
    pub(super) event: Spanned<String>,
    #[serde(default)]
    pub(super) key: Vec<String>,
    #[serde(default)]
    pub(super) history: usize,
    pub(super) tiers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) filters: BTreeMap<String, String>,
}

fn default_event() -> Spanned<String> {
    Spanned::new(0..0, "update".into())
}

/// One `[[routes]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) path: Spanned<String>,
    pub(super) topic: Spanned<String>,
    #[serde(rename = "match", default)]
    pub(super) fixed: BTreeMap<String, String>,
}

/// `[cluster]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) nats_url: Spanned<String>,
    #[serde(default = "default_stream")]
    pub(super) stream: Spanned<String>,
    pub(super) node: Spanned<String>,
    #[serde(default = "default_snapshot_s")]
    pub(super) snapshot_s: Spanned<u32>,
}

fn default_stream() -> Spanned<String> {
    Spanned::new(0..0, "SLUICE".into())
}

fn default_snapshot_s() -> Spanned<u32> {
    Spanned::new(0..0, 60)
}

/// One `[[sources]]` entry: every key of every kind, each optional; the
/// kind decides which it takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) kind: Spanned<String>,
    pub(super) name: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) headers: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) events: Option<Spanned<Vec<String>>>,
    pub(super) subscribe: Option<Spanned<String>>,
    pub(super) subjects: Option<Spanned<Vec<String>>>,
    pub(super) topic: Option<Spanned<String>>,
    pub(super) rows: Option<Spanned<String>>,
    pub(super) snapshot_url: Option<Spanned<String>>,
    pub(super) idle_timeout_s: Option<Spanned<u32>>,
    pub(super) backoff_max_ms: Option<Spanned<u32>>,
}

/// `[metering]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetering {
    pub(super) path: Spanned<String>,
    #[serde(default = "default_flush_s")]
    pub(super) flush_s: Spanned<u32>,
}

fn default_flush_s() -> Spanned<u32> {
    Spanned::new(0..0, 10)
}
