//! The NATS source (`kind = "nats"`): core NATS subjects (async-nats), each
//! message's body parsed like a publish body (an object, an array of
//! objects, or NDJSON) and mapped ([`Mapper`]) with `{subject}` in the
//! topic template standing for its subject, dots turned into `/`.
//!
//! The client reconnects by itself and restores the subscriptions; its
//! delays come from here (full jitter up to `backoff_max_ms`), and its
//! connection events drive the source's health and the snapshot (loaded on
//! every connect, before the messages that wait meanwhile). Silence is
//! found by the client's pings: `idle_timeout_s` is its ping interval, and
//! a connection whose pings go unanswered is reconnected.
//!
//! Credentials in the URL (`nats://user:pass@host`, `nats://token@host`)
//! are handed to the client as options and taken out of the address, so
//! that the client's own logs never show them.
//!
//! Cold module: runs on the sources thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use crate::sources::backoff::{DEFAULT_BASE_MS, full_jitter};
use crate::sources::health::State;
use crate::sources::upstream::{CONNECT_TIMEOUT, Ctx, log_end};

/// Runs the source until the node drains.
pub async fn run(mut ctx: Ctx) {
    let Some((address, options)) = client_options(&ctx) else {
        // Config validation parsed this URL already.
        tracing::error!(source = %ctx.source.name, "nats url does not parse; source stopped");
        return;
    };
    let (connected_tx, mut connected) = tokio::sync::mpsc::unbounded_channel::<()>();
    let health = ctx.health.clone();
    let name = ctx.source.name.clone();
    let options = options.event_callback(move |event| {
        let health = health.clone();
        let connected_tx = connected_tx.clone();
        let name = name.clone();
        async move {
            match event {
                async_nats::Event::Connected => {
                    health.set_state(State::Connecting);
                    let _ = connected_tx.send(());
                }
                async_nats::Event::Disconnected => {
                    health.set_state(State::Backoff);
                    tracing::warn!(source = %name, "source disconnected; reconnecting");
                }
                // async-nats logs each event itself (info)
                async_nats::Event::ClientError(e) => {
                    tracing::debug!(source = %name, error = %e, "nats client error");
                }
                other => tracing::warn!(source = %name, event = %other, "nats event"),
            }
        }
    });
    let client = match options.connect(address.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(source = %ctx.source.name, error = %e, "nats client failed; source stopped");
            return;
        }
    };
    let mut subs = Vec::with_capacity(ctx.source.subjects.len());
    for subject in ctx.source.subjects.clone() {
        match client.subscribe(subject).await {
            Ok(s) => subs.push(s),
            Err(e) => {
                tracing::error!(source = %ctx.source.name, error = %e, "nats subscribe failed; source stopped");
                return;
            }
        }
    }
    let mut messages = futures_util::stream::select_all(subs);
    while !ctx.hub.is_draining() {
        tokio::select! {
            biased;
            Some(()) = connected.recv() => {
                match ctx.load_snapshot().await {
                    Ok(()) => {}
                    // The live messages still come; the next connect tries
                    // the snapshot again.
                    Err(e) => log_end(&ctx, &Err(e), Duration::ZERO),
                }
                ctx.health.set_state(State::Up);
                tracing::info!(source = %ctx.source.name, "source connected");
            }
            msg = messages.next() => {
                let Some(msg) = msg else {
                    tracing::error!(source = %ctx.source.name, "nats subscriptions ended; source stopped");
                    ctx.health.set_state(State::Backoff);
                    return;
                };
                ctx.mapper.take(&ctx.hub, &ctx.health, &msg.payload, Some(msg.subject.as_str()));
            }
        }
    }
}

/// The address without credentials, and the client's options (auth,
/// pings, backoff).
fn client_options(ctx: &Ctx) -> Option<(String, async_nats::ConnectOptions)> {
    let mut url = reqwest::Url::parse(ctx.source.url.expose()).ok()?;
    let user = percent_decode(url.username());
    let pass = url.password().map(percent_decode);
    let mut options = match (user.is_empty(), pass) {
        (true, _) => async_nats::ConnectOptions::new(),
        (false, Some(pass)) => async_nats::ConnectOptions::with_user_and_password(user, pass),
        (false, None) => async_nats::ConnectOptions::with_token(user),
    };
    url.set_username("").ok()?;
    url.set_password(None).ok()?;
    let first = Arc::new(AtomicBool::new(true));
    let health = ctx.health.clone();
    let max_ms = u64::from(ctx.source.backoff_max_ms);
    options = options
        .name("sluice")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(CONNECT_TIMEOUT)
        .ping_interval(ctx.idle())
        .reconnect_delay_callback(move |attempts| {
            // Called before every attempt; the first one of the process
            // is the initial connect, not a reconnect. Relaxed: only this
            // callback touches the flag, from the client's one task.
            if first.swap(false, Ordering::Relaxed) {
                return Duration::ZERO;
            }
            health.reconnect();
            health.set_state(State::Backoff);
            full_jitter(attempts, DEFAULT_BASE_MS, max_ms)
        });
    Some((url.to_string(), options))
}

/// `%XX` escapes of a URL's user info, decoded (invalid ones kept).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_of_user_info() {
        assert_eq!(percent_decode("a%40b%3A"), "a@b:");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
