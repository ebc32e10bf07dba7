//! The admin listener (`[server] admin_listen`): `/metrics`, `/healthz`,
//! `/v1/topics` and `/v1/usage` on an address of their own (a loopback or
//! private one), and no `/metrics` on `listen`.
//!
//! Cold module: one thread (`sluice-admin`) with its own small runtime
//! (epoll) and a request [`Context`] marked `admin` that serves those endpoints
//! through the same request code as the workers, and nothing else (no
//! streams, no fan-out). It keeps answering when a worker is stuck (its
//! `/healthz` then says `stalled`) and when the node is at its connection
//! limit, and scrapes cost the workers nothing.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;
use monoio::{LegacyDriver, RuntimeBuilder};

use crate::config::Settings;
use crate::hub::Hub;
use crate::server::http::{Context, Contexts, conn};
use crate::server::limits::{ConnSlot, NodeCounts, PendingSlot};
use crate::server::reload::Published;
use crate::server::worker::Worker;
use crate::server::{ServerError, listener};

/// What the admin listener serves.
pub const ADMIN_PATHS: [&str; 4] = ["/metrics", "/healthz", "/v1/topics", "/v1/usage"];

/// Whether a listener serves `path`: the admin one only its endpoints; the
/// public one everything but `/metrics` when there is an admin listener.
pub fn serves(settings: &Settings, admin: bool, path: &str) -> bool {
    if admin {
        ADMIN_PATHS.contains(&path)
    } else {
        settings.admin_listen.is_none() || path != "/metrics"
    }
}

/// Binds `addr` and serves it from a thread of its own; returns the bound
/// address (the config may say port 0).
pub fn spawn(
    addr: SocketAddr,
    hub: Arc<Hub>,
    counts: Arc<NodeCounts>,
    published: Arc<Published>,
) -> Result<SocketAddr, ServerError> {
    listener::ensure_free(addr).map_err(|e| ServerError::Bind(addr, e))?;
    let listener = listener::bind(addr, 0).map_err(|e| ServerError::Bind(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServerError::Bind(addr, e))?;
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            let rt = RuntimeBuilder::<LegacyDriver>::new().enable_timer().build();
            match rt {
                Ok(mut rt) => rt.block_on(serve(listener, hub, counts, published)),
                Err(e) => tracing::error!(error = %e, "cannot start the admin listener"),
            }
        })
        .map_err(ServerError::Thread)?;
    Ok(bound)
}

/// Serves the admin endpoints; each connection takes the configuration in
/// force when it is accepted (a reload applies to the next one).
async fn serve(
    listener: std::net::TcpListener,
    hub: Arc<Hub>,
    counts: Arc<NodeCounts>,
    published: Arc<Published>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot use the admin listener");
            return;
        }
    };
    let w = Rc::new(Worker::new(0, hub, counts));
    let (mut generation, config) = published.latest();
    let mut ctx = Context::new(w, &config);
    ctx.admin = true;
    let ctxs = Rc::new(Contexts::new(ctx));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (latest, config) = published.latest();
                if latest != generation {
                    generation = latest;
                    ctxs.replace(ctxs.current().with_config(&config));
                }
                let ctx = ctxs.current();
                // Counted like any connection, but never refused for the
                // node's limit.
                let (slot, _) = ConnSlot::new(&ctx.counts);
                match PendingSlot::take(&ctx.counts, &ctx.settings, &ctx.pending_by_ip, peer.ip()) {
                    Ok(pending) => {
                        monoio::spawn(conn::serve(ctxs.clone(), stream, slot, pending));
                    }
                    Err(why) => {
                        monoio::spawn(listener::refuse(ctx.clone(), stream, slot, why.message()));
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
