//! The upstream sources' runtime: one thread, `sluice-sources`, running a
//! current-thread tokio runtime with one task per `[[sources]]` entry of
//! kind `sse`, `websocket` or `nats`, and what those tasks share (the HTTP
//! client, the snapshot fetch, errors that never carry a secret).
//!
//! Cold module: ingest is not the per-connection path. The workers never
//! wait on this thread: a source that is down only stops its own rows, and
//! `/healthz` says so (`degraded`). The runtime is tokio because the
//! clients are (reqwest, tokio-tungstenite, async-nats); the serving path
//! stays on the monoio workers.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};

use crate::config::{Source, SourceKind};
use crate::hub::Hub;
use crate::sources::health::{self, SourceHealth};
use crate::sources::mapping::Mapper;

/// How long a TCP (and TLS) connect to an origin may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest snapshot body (or `max_body_bytes`, when that is larger).
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

/// Why a connection to an origin ended. The texts name no URL, header or
/// message content: they may be logged.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Http(String),
    #[error("origin answered {0}")]
    Status(u16),
    #[error("origin answered Content-Type {0:?}, not text/event-stream")]
    NotEventStream(String),
    #[error("no bytes from the origin for {0} s (idle_timeout_s)")]
    Idle(u32),
    #[error("snapshot: {0}")]
    Snapshot(Box<SourceError>),
    #[error("snapshot is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    WebSocket(String),
    #[error("the origin closed the connection")]
    Closed,
}

/// A reqwest error as text: its chain, without the URL (which may carry a
/// key in its query).
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What a source task holds.
pub struct Ctx {
    pub hub: Arc<Hub>,
    pub source: Source,
    pub health: Arc<SourceHealth>,
    pub mapper: Mapper,
    pub http: reqwest::Client,
}

impl Ctx {
    pub fn idle(&self) -> Duration {
        Duration::from_secs(u64::from(self.source.idle_timeout_s))
    }

    /// The configured headers, marked sensitive (kept out of `Debug`).
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.source
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes()).ok()?;
                let mut value = HeaderValue::from_str(v.expose()).ok()?;
                value.set_sensitive(true);
                Some((name, value))
            })
            .collect()
    }

    /// GETs `snapshot_url` (with the source's headers) and upserts its rows
    /// (mapped like a message). Nothing to do without one.
    pub async fn load_snapshot(&mut self) -> Result<(), SourceError> {
        let Some(url) = &self.source.snapshot_url else {
            return Ok(());
        };
        let mut req = self.http.get(url.expose()).header(
            reqwest::header::ACCEPT,
            "application/json, application/x-ndjson",
        );
        for (k, v) in self.headers() {
            req = req.header(k, v);
        }
        let snap = |e: SourceError| SourceError::Snapshot(Box::new(e));
        let idle = self.idle();
        let mut resp = tokio::time::timeout(idle, req.send())
            .await
            .map_err(|_| snap(SourceError::Idle(self.source.idle_timeout_s)))?
            .map_err(|e| snap(SourceError::Http(describe(e))))?;
        if !resp.status().is_success() {
            return Err(snap(SourceError::Status(resp.status().as_u16())));
        }
        let cap = MAX_SNAPSHOT_BYTES.max(self.hub.settings().max_body_bytes);
        let mut body = Vec::new();
        loop {
            let chunk = tokio::time::timeout(idle, resp.chunk())
                .await
                .map_err(|_| snap(SourceError::Idle(self.source.idle_timeout_s)))?
                .map_err(|e| snap(SourceError::Http(describe(e))))?;
            let Some(chunk) = chunk else { break };
            if body.len().saturating_add(chunk.len()) > cap {
                return Err(snap(SourceError::TooLarge(cap)));
            }
            body.extend_from_slice(&chunk);
        }
        let rows = self
            .mapper
            .take_capped(&self.hub, &self.health, &body, None, cap);
        tracing::info!(source = %self.source.name, rows, "snapshot loaded");
        Ok(())
    }
}

/// Logs how a connection ended and how long the source waits.
pub fn log_end(ctx: &Ctx, end: &Result<(), SourceError>, delay: Duration) {
    let delay_ms = delay.as_millis() as u64;
    match end {
        Ok(()) => tracing::info!(
            source = %ctx.source.name,
            delay_ms,
            "source disconnected; reconnecting"
        ),
        Err(e) => tracing::warn!(
            source = %ctx.source.name,
            url = %ctx.source.display_url(),
            error = %e,
            delay_ms,
            "source connection failed; reconnecting"
        ),
    }
}

/// Registers the sources' health and starts their thread.
pub fn spawn(hub: Arc<Hub>, sources: Vec<Source>) -> std::io::Result<()> {
    // One TLS provider for reqwest, tokio-tungstenite and async-nats
    // (ring; aws-lc is not built). Already installed: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .http1_only()
        .tcp_nodelay(true)
        // A stream holds its connection for hours; an idle pooled one to
        // an origin that may restart at any time is only a stale socket.
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| std::io::Error::other(describe(e)))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let max_message_bytes = hub.settings().max_body_bytes;
    let tasks: Vec<Ctx> = sources
        .into_iter()
        .map(|source| Ctx {
            health: health::registry().register(&source.name, source.kind),
            mapper: Mapper::new(&source, max_message_bytes),
            hub: hub.clone(),
            http: http.clone(),
            source,
        })
        .collect();
    std::thread::Builder::new()
        .name("sluice-sources".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut set = tokio::task::JoinSet::new();
                for ctx in tasks {
                    tracing::info!(
                        source = %ctx.source.name,
                        kind = ctx.source.kind.as_str(),
                        url = %ctx.source.display_url(),
                        "source starting"
                    );
                    match ctx.source.kind {
                        SourceKind::Sse => set.spawn(crate::sources::sse::run(ctx)),
                        SourceKind::WebSocket => set.spawn(crate::sources::websocket::run(ctx)),
                        SourceKind::Nats => set.spawn(crate::sources::nats::run(ctx)),
                        SourceKind::Demo => continue,
                    };
                }
                while set.join_next().await.is_some() {}
            });
        })?;
    Ok(())
}
