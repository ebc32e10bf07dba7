//! The body of the `sluice-cluster` thread: connects to NATS (the link's
//! `connected` flag follows the connection's events), opens the stream
//! (made if missing), restores the newest snapshot, marks the node ready
//! when there is nothing to replay, then starts the publish loop and the
//! snapshot keeper and runs the apply loop for ever.
//!
//! Cold, on the cluster thread's tokio runtime. It must never give up:
//! each set-up step is retried until NATS and JetStream answer, while the
//! node stays `starting`; and no worker ever waits on it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio::sync::mpsc;

use super::apply::apply_loop;
use super::publish::{Request, publish_loop};
use super::{
    ACK_TIMEOUT, DUPLICATE_WINDOW, Link, MAX_RECONNECT_DELAY, Progress, RETRY, Shared, snapshot,
};
use crate::config::ClusterSettings;
use crate::hub::Hub;

pub(super) async fn run(
    link: Arc<Link>,
    hub: Arc<Hub>,
    cfg: ClusterSettings,
    rx: mpsc::Receiver<Request>,
) {
    let events = link.clone();
    let opts = async_nats::ConnectOptions::new()
        .name(format!("sluice {}", cfg.node))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|n| {
            Duration::from_millis(100)
                .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
                .min(MAX_RECONNECT_DELAY)
        })
        .event_callback(move |ev| {
            let link = events.clone();
            async move {
                match ev {
                    async_nats::Event::Connected => {
                        link.connected.store(true, Ordering::Release);
                        metrics::gauge!("sluice_cluster_connected").set(1.0);
                        tracing::info!(node = %link.node, "connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        link.connected.store(false, Ordering::Release);
                        metrics::gauge!("sluice_cluster_connected").set(0.0);
                        tracing::warn!(
                            "lost NATS: open streams go on, publishes get 503 until it is back"
                        );
                    }
                    async_nats::Event::Closed => {
                        link.connected.store(false, Ordering::Release);
                    }
                    other => tracing::debug!(event = %other, "NATS"),
                }
            }
        });
    let client = loop {
        match opts.clone().connect(cfg.nats_url.as_str()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, url = %cfg.nats_url, "cannot connect to NATS");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client.clone());

    let stream = open_stream(&js, &cfg).await;
    let info = stream.cached_info().clone();
    let base = stream_base(&info);
    tracing::info!(
        stream = %cfg.stream,
        first = info.state.first_sequence,
        last = info.state.last_sequence,
        "cluster stream open"
    );

    // Start-up: the newest snapshot, then the stream after it.
    let mut applied = 0;
    if cfg.snapshot_s > 0 {
        applied = snapshot::restore(&js, &cfg, &hub, base).await;
    }
    let target = info.state.last_sequence;
    if applied > 0 && info.state.first_sequence > applied + 1 {
        tracing::error!(
            snapshot = applied,
            first = info.state.first_sequence,
            "the stream no longer holds the updates after the newest snapshot \
             (its limits removed them): state tables miss them"
        );
    } else if applied == 0 && info.state.first_sequence > 1 {
        tracing::warn!(
            first = info.state.first_sequence,
            "the stream's limits removed its first updates: state tables hold what remains"
        );
    }
    let progress: Shared = Arc::new(Mutex::new(Progress {
        applied,
        ..Progress::default()
    }));
    link.applied.store(applied, Ordering::Relaxed);
    if info.state.messages == 0 || target <= applied {
        link.set_ready();
    }

    tokio::spawn(publish_loop(
        js.clone(),
        client.clone(),
        base,
        progress.clone(),
        link.node.clone(),
        rx,
    ));
    if cfg.snapshot_s > 0 {
        tokio::spawn(snapshot::keep(
            js.clone(),
            cfg.clone(),
            hub.clone(),
            base,
            link.clone(),
        ));
    }
    apply_loop(&link, &hub, &stream, &client, &cfg, base, target, &progress).await;
}

/// The stream, made if missing (retried until NATS and JetStream answer).
async fn open_stream(js: &jetstream::Context, cfg: &ClusterSettings) -> stream::Stream {
    let mut failures = 0u32;
    loop {
        let config = stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![format!("{}.>", cfg.stream)],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        match js.get_or_create_stream(config).await {
            Ok(s) => return s,
            Err(e) => {
                // once, then every 30th try: NATS may take a while to come up
                if failures.is_multiple_of(30) {
                    tracing::warn!(
                        error = %e,
                        stream = %cfg.stream,
                        "cannot open the JetStream stream (is nats-server running with JetStream, -js?); retrying"
                    );
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// The stream's creation time in unix microseconds: ids are `base + seq`.
fn stream_base(info: &stream::Info) -> u64 {
    u64::try_from(info.created.unix_timestamp_nanos() / 1000).unwrap_or(0)
}
