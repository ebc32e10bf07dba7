//! The WebSocket source (`kind = "websocket"`): JSON text messages from an
//! origin's `ws://` or `wss://` endpoint (tokio-tungstenite, rustls).
//!
//! Each connection: the handshake with the configured headers, the
//! `subscribe` text message if any, `snapshot_url`'s rows, then every text
//! message is mapped ([`Mapper`]); binary messages, and text messages over
//! `max_body_bytes`, are dropped and counted.
//! Pings from the origin are answered (tungstenite queues the pong, sent
//! on the next read); the source pings the origin after a third of
//! `idle_timeout_s` without a frame, so that a quiet but alive origin is
//! told apart from a dead one. A close, an error or `idle_timeout_s`
//! without a frame ends the connection; the next one waits a full-jitter
//! backoff.
//!
//! Cold module: runs on the sources thread.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::sources::backoff::Backoff;
use crate::sources::health::State;
use crate::sources::upstream::{Ctx, SourceError, log_end};

/// Largest WebSocket message read at all (or `max_body_bytes`, when that
/// is larger); one past it is a protocol error that ends the connection.
pub const MAX_WS_MESSAGE_BYTES: usize = 16 << 20;

/// Runs the source until the node drains.
pub async fn run(mut ctx: Ctx) {
    let mut backoff = Backoff::new(u64::from(ctx.source.backoff_max_ms));
    let mut first = true;
    while !ctx.hub.is_draining() {
        if !first {
            ctx.health.reconnect();
        }
        first = false;
        ctx.health.set_state(State::Connecting);
        let mut delivered = false;
        let end = connect(&mut ctx, &mut delivered).await;
        if delivered {
            backoff.reset();
        }
        ctx.health.set_state(State::Backoff);
        let delay = backoff.next_delay();
        log_end(&ctx, &end, delay);
        tokio::time::sleep(delay).await;
    }
}

/// A tungstenite error as text. Its messages carry no URL or header
/// values; an HTTP answer shows as its status only.
fn ws_error(e: tungstenite::Error) -> SourceError {
    match e {
        tungstenite::Error::Http(resp) => SourceError::Status(resp.status().as_u16()),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            SourceError::Closed
        }
        other => SourceError::WebSocket(other.to_string()),
    }
}

async fn connect(ctx: &mut Ctx, delivered: &mut bool) -> Result<(), SourceError> {
    let idle_s = ctx.source.idle_timeout_s;
    let idle = ctx.idle();
    let ping_every = (idle / 3).max(Duration::from_millis(500));
    let mut request = ctx
        .source
        .url
        .expose()
        .into_client_request()
        .map_err(ws_error)?;
    for (k, v) in ctx.headers() {
        request.headers_mut().insert(k, v);
    }
    // A message over max_body_bytes is dropped and counted by the mapper;
    // only one past this hard cap ends the connection.
    let max = MAX_WS_MESSAGE_BYTES.max(ctx.hub.settings().max_body_bytes);
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let (mut ws, _) = tokio::time::timeout(
        idle,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .map_err(|_| SourceError::Idle(idle_s))?
    .map_err(ws_error)?;
    if let Some(sub) = &ctx.source.subscribe {
        ws.send(Message::text(sub.as_str()))
            .await
            .map_err(ws_error)?;
    }
    ctx.load_snapshot().await?;
    ctx.health.set_state(State::Up);
    tracing::info!(source = %ctx.source.name, "source connected");

    let mut last_frame = Instant::now();
    let mut pinged = false;
    loop {
        let ping_at = last_frame + ping_every;
        let dead_at = last_frame + idle;
        let msg = tokio::select! {
            msg = ws.next() => msg,
            _ = tokio::time::sleep_until(dead_at) => return Err(SourceError::Idle(idle_s)),
            _ = tokio::time::sleep_until(ping_at), if !pinged => {
                pinged = true;
                ws.send(Message::Ping(Default::default())).await.map_err(ws_error)?;
                continue;
            }
        };
        let Some(msg) = msg else {
            return Err(SourceError::Closed);
        };
        last_frame = Instant::now();
        pinged = false;
        match msg.map_err(ws_error)? {
            Message::Text(text) => {
                *delivered = true;
                ctx.mapper
                    .take(&ctx.hub, &ctx.health, text.as_bytes(), None);
            }
            Message::Binary(_) => {
                *delivered = true;
                ctx.mapper.not_json(&ctx.health);
            }
            Message::Close(_) => return Ok(()),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        if ctx.hub.is_draining() {
            let _ = ws.close(None).await;
            return Ok(());
        }
    }
}
