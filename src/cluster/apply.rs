//! The apply side of the cluster link: one ordered push consumer reads
//! the stream from the first sequence this node has not applied and
//! publishes each update to the hub with id `base + sequence`, wakes the
//! publishes waiting for that sequence, and marks the node ready once it
//! has caught up with the stream as it was at start.
//!
//! Cold, on the cluster thread. It must never apply a sequence twice or
//! out of order (a sequence at or below the last applied is dropped), nor
//! write to the stream.

use std::sync::atomic::Ordering;

use async_nats::jetstream::{consumer::DeliverPolicy, consumer::push, stream};
use futures_util::StreamExt;

use super::{Link, RETRY, Shared, lock, topic_of};
use crate::config::ClusterSettings;
use crate::hub::Hub;
use crate::sources::publish::parse_rows;

/// Reads the stream in order from the first sequence not applied, for ever
/// (an ordered consumer that ends is made again after the last sequence).
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply_loop(
    link: &Link,
    hub: &Hub,
    stream: &stream::Stream,
    client: &async_nats::Client,
    cfg: &ClusterSettings,
    base: u64,
    target: u64,
    progress: &Shared,
) {
    let mut applied = lock(progress).applied;
    loop {
        let config = push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy: if applied == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: applied + 1,
                }
            },
            ..Default::default()
        };
        let consumer = match stream.create_consumer(config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "cannot make the ordered consumer; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the ordered consumer; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        while let Some(m) = messages.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "ordered consumer");
                    continue;
                }
            };
            let (seq, pending) = match m.info() {
                Ok(i) => (i.stream_sequence, i.pending),
                Err(_) => continue,
            };
            if seq <= applied {
                continue;
            }
            apply(hub, &cfg.stream, m.subject.as_str(), &m.payload, base + seq);
            applied = seq;
            // Relaxed: a gauge; readiness has its own ordering.
            link.applied.store(seq, Ordering::Relaxed);
            metrics::gauge!("sluice_cluster_applied_seq").set(seq as f64);
            let woken = {
                let mut p = lock(progress);
                p.applied = seq;
                let later = p.waiters.split_off(&(seq + 1));
                std::mem::replace(&mut p.waiters, later)
            };
            for tx in woken.into_values().flatten() {
                let _ = tx.send(());
            }
            if !link.is_ready() && (seq >= target || pending == 0) {
                tracing::info!(applied = seq, "cluster state rebuilt from the stream");
                link.set_ready();
            }
        }
        tracing::warn!(
            after = applied,
            "the stream's ordered consumer ended; making it again"
        );
    }
}

/// Applies one message of the log to the hub with id `id`.
fn apply(hub: &Hub, stream: &str, subject: &str, payload: &[u8], id: u64) {
    let Some(name) = topic_of(stream, subject) else {
        metrics::counter!("sluice_cluster_skipped_total").increment(1);
        tracing::warn!(
            subject,
            "cluster message on a subject that names no topic; skipped"
        );
        return;
    };
    let topic = match hub.topic(&name) {
        Ok(t) => t,
        Err(e) => {
            metrics::counter!("sluice_cluster_skipped_total").increment(1);
            tracing::warn!(topic = %name, error = ?e, "cluster update this node's [[topics]] cannot take; skipped");
            return;
        }
    };
    let mut body = payload.to_vec();
    match parse_rows(&mut body, false, &topic.key_fields, &topic.fields) {
        Ok(rows) => match hub.publish_with_id(&topic, rows, id) {
            Ok(_) => metrics::counter!("sluice_cluster_applied_total").increment(1),
            Err(e) => {
                metrics::counter!("sluice_cluster_skipped_total").increment(1);
                tracing::error!(topic = %name, error = %e, "cluster update not applied");
            }
        },
        Err(e) => {
            metrics::counter!("sluice_cluster_skipped_total").increment(1);
            tracing::warn!(topic = %name, error = %e, "cluster update this node's [[topics]] cannot take; skipped");
        }
    }
}
