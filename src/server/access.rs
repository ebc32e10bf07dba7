//! Access lines (`target: "sluice::access"`, level info): one per closed
//! stream and one per refused request, and why a stream closed
//! ([`CloseReason`], which the metrics count by tier too).
//!
//! Cold module: called once when a stream ends or a request is refused,
//! never per event. Lines carry key names, never a credential: a refused
//! request is logged by its method and path, without the query string
//! (`apiKey=`, `token=`), and client-supplied text is cleaned of control
//! characters and capped.

use std::borrow::Cow;

use crate::server::http::{ApiError, Method, Request};
use crate::server::limits::StreamSlot;
use crate::server::worker::Worker;
use crate::server::worker::subscriber::Subscriber;

/// Why a stream ended. The first reason set wins: a stream told `timeout`
/// whose client then hangs up closed for `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the connection (or sent more than it may).
    ClientClosed,
    /// `max_duration_s` reached (`event: timeout`).
    Timeout,
    /// `max_events` reached (`event: limit`).
    Limit,
    /// The client did not keep up (`event: reconnect`, `slow_consumer`, or
    /// a socket that did not drain for `slow_consumer_s`).
    SlowConsumer,
    /// The node drains (`event: reconnect`, reason `shutdown`).
    Shutdown,
    /// A reload changed the stream's tier (`event: reconnect`, `reload`).
    Reload,
    /// Closed with `event: error` (e.g. its key was removed by a reload).
    Error,
    /// A write to the socket failed.
    WriteError,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::ClientClosed,
        CloseReason::Timeout,
        CloseReason::Limit,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
        CloseReason::Reload,
        CloseReason::Error,
        CloseReason::WriteError,
    ];

    /// The reason's name in logs, metrics and usage records.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Timeout => "timeout",
            CloseReason::Limit => "limit",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Reload => "reload",
            CloseReason::Error => "error",
            CloseReason::WriteError => "write_error",
        }
    }
}

/// Most bytes of a client-supplied path in a log line.
pub const MAX_LOGGED_PATH_BYTES: usize = 256;

/// A stream's task has ended: count it and log its access line.
pub fn stream_closed(w: &Worker, sub: &Subscriber, slot: &StreamSlot) {
    let reason = sub.ended_because();
    let tier = sub.tier();
    w.counters.stream_closed(tier, reason);
    let settings = w.hub.settings();
    let topic = slot.topic();
    let tier_name = settings.tiers.get(tier).map_or("-", |t| t.name.as_str());
    let key = sub
        .auth()
        .key
        .and_then(|k| settings.keys.get(k as usize))
        .map_or("-", |k| k.name.as_str());
    tracing::info!(
        target: "sluice::access",
        status = 200u16,
        topic = &*topic.name,
        tier = tier_name,
        key,
        duration_ms = w.now().saturating_sub(sub.started()),
        events = sub.events(),
        bytes = sub.bytes(),
        close = reason.as_str(),
        "stream closed"
    );
}

/// A request was answered with an error status (`req`: `None` when its
/// head could not be parsed).
pub fn refused(req: Option<&Request>, e: &ApiError) {
    let (method, path) = match req {
        Some(r) => (method_name(r.method), clean(&r.path)),
        None => ("-", Cow::Borrowed("-")),
    };
    tracing::info!(
        target: "sluice::access",
        status = e.status(),
        code = e.code(),
        reason = e.message,
        method,
        path = &*path,
        "request refused"
    );
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Options => "OPTIONS",
        Method::Other => "OTHER",
    }
}

/// `s` without control characters (each becomes `?`), cut to
/// `MAX_LOGGED_PATH_BYTES` (then ending in `…`).
pub fn clean(s: &str) -> Cow<'_, str> {
    let long = s.len() > MAX_LOGGED_PATH_BYTES;
    if !long && !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut end = s.len().min(MAX_LOGGED_PATH_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = s[..end]
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if long {
        out.push('…');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_and_capped() {
        assert_eq!(clean("/v1/sse/a"), "/v1/sse/a");
        assert_eq!(clean("/a\r\nINFO forged\x1b[0m"), "/a??INFO forged?[0m");
        let long = format!("/{}", "é".repeat(200));
        let c = clean(&long);
        assert!(c.len() <= MAX_LOGGED_PATH_BYTES + '…'.len_utf8());
        assert!(c.ends_with('…'));
    }

    #[test]
    fn every_reason_has_its_index() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.as_str());
        }
    }
}
