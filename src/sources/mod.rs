//! Where updates come from (SPEC §7). Every way in ends in
//! [`publish::accept`], so a row from any source is validated, numbered,
//! framed and counted exactly like a `POST /v1/publish` row:
//!
//! * [`publish`]: `POST /v1/publish` bodies, and the entry point itself;
//! * [`demo`]: the built-in simulated feed (its own thread);
//! * upstream sources ([`upstream`]), kept connected to an origin on one
//!   thread, `sluice-sources`, off the workers: [`sse`] (an origin's
//!   `text/event-stream`, parsed by [`event_stream`]), [`websocket`] and
//!   [`nats`]; each maps its messages to rows and topics ([`mapping`]),
//!   reconnects with full-jitter [`backoff`], and reports its [`health`].
//!
//! Nothing here runs on the per-connection path, and a source that is down
//! never blocks publishing or streaming: it only degrades `/healthz`.

pub mod backoff;
pub mod demo;
pub mod event_stream;
pub mod health;
pub mod mapping;
pub mod nats;
pub mod publish;
pub mod sse;
pub mod upstream;
pub mod websocket;

use std::sync::Arc;

use crate::config::SourceKind;
use crate::hub::Hub;

/// Starts the configured sources: the demo feed on its thread, the
/// upstream ones on the sources thread. Their health entries exist when
/// this returns, so `/healthz` lists them from the first request.
pub fn start(hub: &Arc<Hub>) -> std::io::Result<()> {
    let settings = hub.settings().clone();
    if settings.has_source(SourceKind::Demo) {
        demo::spawn(hub.clone())?;
    }
    let upstream: Vec<_> = settings
        .sources
        .iter()
        .filter(|s| s.kind != SourceKind::Demo)
        .cloned()
        .collect();
    if upstream.is_empty() {
        return Ok(());
    }
    upstream::spawn(hub.clone(), upstream)
}
