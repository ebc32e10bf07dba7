//! `[server]`, validated into the node's listeners, worker count, limits,
//! deadlines and CORS policy.
//!
//! Owns the section's checks and [`Cors`]. Never binds a socket or starts a
//! worker (the `server` subsystem does, with these settings), reads
//! nothing but the number of CPUs (the default `workers`), and never
//! imports crate code.

use std::net::SocketAddr;
use std::ops::Range;

use super::error::{ConfigError, find_span};
use super::raw::RawServer;

/// Most workers a node runs: worker interest in a topic is one bit of a `u64`.
pub const MAX_WORKERS: usize = 64;

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

/// `[server]`, validated: the fields of `Settings` that bear the same
/// names.
pub(super) struct Server {
    pub(super) listen: SocketAddr,
    pub(super) admin_listen: Option<SocketAddr>,
    /// `workers`, or the number of CPUs (at most [`MAX_WORKERS`]) for 0.
    pub(super) workers: usize,
    pub(super) max_connections: usize,
    pub(super) retry_ms: u32,
    pub(super) heartbeat_s: u32,
    pub(super) max_duration_s: u32,
    pub(super) max_events: u32,
    pub(super) replay: usize,
    pub(super) max_body_bytes: usize,
    pub(super) cors: Cors,
    pub(super) slow_consumer_s: u32,
    pub(super) header_timeout_s: u32,
    pub(super) body_timeout_s: u32,
    pub(super) keepalive_timeout_s: u32,
    pub(super) max_pending_connections: usize,
    pub(super) max_pending_per_ip: usize,
    pub(super) sndbuf_bytes: usize,
    pub(super) topic_idle_s: u32,
    pub(super) max_topics_per_key: u32,
}

/// `[server]`: the addresses parse, `workers` is at most [`MAX_WORKERS`],
/// deadlines, pending caps, `heartbeat_s` and `replay` are in range.
pub(super) fn validate(src: &str, raw: RawServer) -> Result<Server, ConfigError> {
    let err = |span: Range<usize>, msg: String| ConfigError::at(src, Some(span), msg);
    let s = raw;

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
    Ok(Server {
        listen,
        admin_listen,
        workers,
        max_connections: s.max_connections,
        retry_ms: s.retry_ms,
        heartbeat_s: s.heartbeat_s.into_inner(),
        max_duration_s: s.max_duration_s,
        max_events: s.max_events,
        replay: s.replay.into_inner(),
        max_body_bytes: s.max_body_bytes,
        cors,
        slow_consumer_s: s.slow_consumer_s.into_inner(),
        header_timeout_s: s.header_timeout_s.into_inner(),
        body_timeout_s: s.body_timeout_s.into_inner(),
        keepalive_timeout_s: s.keepalive_timeout_s.into_inner(),
        max_pending_connections: s.max_pending_connections,
        max_pending_per_ip: s.max_pending_per_ip,
        sndbuf_bytes: s.sndbuf_bytes,
        topic_idle_s: s.topic_idle_s,
        max_topics_per_key: s.max_topics_per_key,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;

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
    fn heartbeat_out_of_range() {
        let e = Settings::from_toml("[server]\nheartbeat_s = 31\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }
}
