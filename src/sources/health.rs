//! Source health (SPEC §7): per upstream source its state (`up`,
//! `connecting`, `backoff`), when that state began, when its last message
//! came, and how often it reconnected; `/healthz` lists them and `/metrics`
//! shows them per source name.
//!
//! Cold module: a source updates its entry once per message or state change,
//! `/healthz` and `/metrics` read it once per request. The registry is
//! process-wide, like the metrics recorder it feeds: one server runs per
//! process, and the workers need no ingest type to read it.
//!
//! Metric labels carry the configured source name only (never a URL, a
//! header or a message's content).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{counter, gauge};

use crate::config::SourceKind;
use crate::time::unix_millis;

/// Where a source's connection to its origin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connected, and taking messages.
    Up,
    /// Opening a connection (or loading its snapshot).
    Connecting,
    /// Waiting before the next attempt, after an error, a close or silence.
    Backoff,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Connecting => "connecting",
            State::Backoff => "backoff",
        }
    }
}

/// One source's health. Counters are atomics (Relaxed: each is a number
/// read on its own by `/healthz` and `/metrics`; nothing is ordered by
/// them); the state and its start change together under a small mutex.
#[derive(Debug)]
pub struct SourceHealth {
    pub name: String,
    pub kind: SourceKind,
    state: Mutex<(State, u64)>,
    /// Unix ms of the last message; 0: none yet.
    last_message_ms: AtomicU64,
    reconnects: AtomicU64,
}

impl SourceHealth {
    fn new(name: &str, kind: SourceKind) -> SourceHealth {
        let h = SourceHealth {
            name: name.to_string(),
            kind,
            state: Mutex::new((State::Connecting, unix_millis())),
            last_message_ms: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        };
        gauge!("sluice_source_up", "source" => h.name.clone()).set(0.0);
        // Present from the start, so that a rate over them has a zero.
        for name in [
            "sluice_source_messages_total",
            "sluice_source_rows_total",
            "sluice_source_messages_dropped_total",
            "sluice_source_reconnects_total",
        ] {
            counter!(name, "source" => h.name.clone()).absolute(0);
        }
        h
    }

    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Moves to `state` (its `since` is now, unless it already was in it).
    pub fn set_state(&self, state: State) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 != state {
            *s = (state, unix_millis());
            gauge!("sluice_source_up", "source" => self.name.clone()).set(if state == State::Up {
                1.0
            } else {
                0.0
            });
        }
    }

    /// A message arrived (mapped or not: it shows the origin is alive).
    pub fn message(&self) {
        self.last_message_ms.store(unix_millis(), Ordering::Relaxed);
        counter!("sluice_source_messages_total", "source" => self.name.clone()).increment(1);
    }

    /// Rows of a message were published.
    pub fn rows(&self, n: usize) {
        counter!("sluice_source_rows_total", "source" => self.name.clone()).increment(n as u64);
    }

    /// A message did not map to rows and was dropped.
    pub fn dropped(&self) {
        counter!("sluice_source_messages_dropped_total", "source" => self.name.clone())
            .increment(1);
    }

    /// A connection attempt after the first.
    pub fn reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        counter!("sluice_source_reconnects_total", "source" => self.name.clone()).increment(1);
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Unix ms of the last message, if any came.
    pub fn last_message_ms(&self) -> Option<u64> {
        match self.last_message_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }

    fn push_json(&self, out: &mut String) {
        let (state, since) = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Names are [A-Za-z0-9_.-] (config validation): no escaping needed.
        let _ = write!(
            out,
            r#"{{"name":"{}","kind":"{}","state":"{}","since":{since},"last_message_ms":"#,
            self.name,
            self.kind.as_str(),
            state.as_str()
        );
        match self.last_message_ms() {
            Some(ms) => {
                let _ = write!(out, "{ms}");
            }
            None => out.push_str("null"),
        }
        let _ = write!(out, r#","reconnects":{}}}"#, self.reconnects());
    }
}

/// The sources of this process.
#[derive(Debug, Default)]
pub struct Registry {
    sources: Mutex<Vec<Arc<SourceHealth>>>,
}

static REGISTRY: Registry = Registry {
    sources: Mutex::new(Vec::new()),
};

/// The process's registry (what `/healthz` and `/metrics` read).
pub fn registry() -> &'static Registry {
    &REGISTRY
}

impl Registry {
    /// Adds a source (state `connecting`), or gives back the entry of that
    /// name.
    pub fn register(&self, name: &str, kind: SourceKind) -> Arc<SourceHealth> {
        let mut list = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = list.iter().find(|h| h.name == name) {
            return h.clone();
        }
        let h = Arc::new(SourceHealth::new(name, kind));
        list.push(h.clone());
        h
    }

    /// `/healthz`'s `"sources"` array, and whether every source is up.
    pub fn healthz(&self) -> (String, bool) {
        let list = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::from("[");
        let mut all_up = true;
        for (i, h) in list.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            h.push_json(&mut out);
            all_up &= h.state() == State::Up;
        }
        out.push(']');
        (out, all_up)
    }

    /// Sets the gauges that depend on the time of reading
    /// (`sluice_source_last_message_age_seconds`); `/metrics` calls it
    /// before rendering.
    pub fn set_gauges(&self) {
        let now = unix_millis();
        let list = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        for h in list.iter() {
            if let Some(ms) = h.last_message_ms() {
                gauge!("sluice_source_last_message_age_seconds", "source" => h.name.clone())
                    .set(now.saturating_sub(ms) as f64 / 1000.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_lists_each_source_and_is_up_only_when_all_are() {
        let r = Registry::default();
        let (json, up) = r.healthz();
        assert_eq!(json, "[]");
        assert!(up);
        let a = r.register("a", SourceKind::Sse);
        let b = r.register("b", SourceKind::Nats);
        assert!(Arc::ptr_eq(&a, &r.register("a", SourceKind::Sse)));
        a.set_state(State::Up);
        let (json, up) = r.healthz();
        assert!(!up, "b is connecting");
        let v: Vec<&str> = json.split("},{").collect();
        assert_eq!(v.len(), 2, "{json}");
        assert!(
            json.starts_with(r#"[{"name":"a","kind":"sse","state":"up","since":"#),
            "{json}"
        );
        assert!(
            json.contains(r#""last_message_ms":null,"reconnects":0}"#),
            "{json}"
        );
        b.set_state(State::Up);
        b.reconnect();
        b.message();
        let (json, up) = r.healthz();
        assert!(up);
        assert!(json.contains(r#""kind":"nats","state":"up""#), "{json}");
        assert!(json.ends_with(r#","reconnects":1}]"#), "{json}");
        assert!(b.last_message_ms().is_some());
        b.set_state(State::Backoff);
        assert!(!r.healthz().1);
    }
}
