//! The upstream SSE source (`kind = "sse"`): a long-lived client of an
//! origin's `text/event-stream`.
//!
//! Each connection: GET `url` with the configured headers,
//! `Accept: text/event-stream` and, after the first event with an id,
//! `Last-Event-ID`; a 2xx `text/event-stream` answer (plain or chunked) is
//! read as it comes ([`EventStream`]); then `snapshot_url`'s rows are
//! upserted, then every event whose type `events` takes is mapped
//! ([`Mapper`]). The origin's `retry:` is the backoff's base.
//!
//! The connection ends on an error, a non-2xx answer, a close, or
//! `idle_timeout_s` without a byte (comments count); the next attempt
//! waits a full-jitter backoff ([`Backoff`]).
//!
//! Cold module: runs on the sources thread.

use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};

use crate::sources::backoff::Backoff;
use crate::sources::event_stream::{EventStream, Parsed};
use crate::sources::health::State;
use crate::sources::upstream::{Ctx, SourceError, describe, log_end};

/// Runs the source until the node drains.
pub async fn run(mut ctx: Ctx) {
    let mut backoff = Backoff::new(u64::from(ctx.source.backoff_max_ms));
    let mut last_id = String::new();
    let mut first = true;
    while !ctx.hub.is_draining() {
        if !first {
            ctx.health.reconnect();
        }
        first = false;
        ctx.health.set_state(State::Connecting);
        let mut delivered = false;
        let end = connect(&mut ctx, &mut backoff, &mut last_id, &mut delivered).await;
        if delivered {
            backoff.reset();
        }
        ctx.health.set_state(State::Backoff);
        let delay = backoff.next_delay();
        log_end(&ctx, &end, delay);
        tokio::time::sleep(delay).await;
    }
}

/// One connection, until it ends. `Ok`: the origin closed it (or the node
/// drains).
async fn connect(
    ctx: &mut Ctx,
    backoff: &mut Backoff,
    last_id: &mut String,
    delivered: &mut bool,
) -> Result<(), SourceError> {
    let idle_s = ctx.source.idle_timeout_s;
    let idle = ctx.idle();
    let mut req = ctx
        .http
        .get(ctx.source.url.expose())
        .header(ACCEPT, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache");
    for (k, v) in ctx.headers() {
        req = req.header(k, v);
    }
    if !last_id.is_empty() {
        req = req.header("Last-Event-ID", last_id.as_str());
    }
    let mut resp = tokio::time::timeout(idle, req.send())
        .await
        .map_err(|_| SourceError::Idle(idle_s))?
        .map_err(|e| SourceError::Http(describe(e)))?;
    if !resp.status().is_success() || resp.status().as_u16() == 204 {
        return Err(SourceError::Status(resp.status().as_u16()));
    }
    let ctype = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ctype.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("text/event-stream") {
        return Err(SourceError::NotEventStream(
            ctype.chars().take(64).collect(),
        ));
    }
    ctx.load_snapshot().await?;
    ctx.health.set_state(State::Up);
    tracing::info!(source = %ctx.source.name, resumed = !last_id.is_empty(), "source connected");

    let mut parser = EventStream::new(ctx.hub.settings().max_body_bytes, last_id.clone());
    let mut out = Vec::new();
    loop {
        let chunk = tokio::time::timeout(idle, resp.chunk())
            .await
            .map_err(|_| SourceError::Idle(idle_s))?
            .map_err(|e| SourceError::Http(describe(e)))?;
        let Some(chunk) = chunk else {
            return Ok(());
        };
        parser.feed(&chunk, &mut out);
        for p in out.drain(..) {
            match p {
                Parsed::Retry(ms) => backoff.set_base(ms),
                Parsed::Oversize => {
                    *delivered = true;
                    ctx.mapper.oversize(&ctx.health);
                }
                Parsed::Event { event, data, .. } => {
                    let taken = ctx.source.events.is_empty() || ctx.source.events.contains(&event);
                    if taken {
                        *delivered = true;
                        ctx.mapper
                            .take(&ctx.hub, &ctx.health, data.as_bytes(), None);
                    }
                }
            }
        }
        // Only ids of events already handled: resuming never skips one.
        if parser.last_event_id() != last_id.as_str() {
            last_id.clear();
            last_id.push_str(parser.last_event_id());
        }
        if ctx.hub.is_draining() {
            return Ok(());
        }
    }
}
