//! The publish side of the cluster link: [`Link::submit`] queues a
//! validated update for the cluster thread, whose publish loop appends it
//! to the stream with its `Nats-Msg-Id` and answers the caller once
//! JetStream has stored it and this node has applied it (or after
//! [`APPLY_WAIT`]); and the de-duplication ids ([`msg_id`]).
//!
//! Cold. `submit` runs on the caller's thread (a worker, a source) and must
//! never wait there: it only `try_send`s to a bounded queue and refuses
//! when NATS is down or the queue is full. Nothing here applies an update
//! to the hub: only the apply side does, in stream order.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream;
use bytes::Bytes;
use sha2::Digest;
use tokio::sync::{mpsc, oneshot};

use super::{APPLY_WAIT, ClusterError, Link, MAX_MSG_ID_BYTES, Shared, lock, subject};

pub(super) struct Request {
    subject: String,
    rows: Bytes,
    msg_id: String,
    reply: oneshot::Sender<Result<u64, ClusterError>>,
}

/// A publish on its way to the log: its id once stored.
pub struct Pending(oneshot::Receiver<Result<u64, ClusterError>>);

impl Pending {
    /// Awaitable from any runtime (monoio workers, tokio sources).
    pub async fn wait(self) -> Result<u64, ClusterError> {
        self.0.await.unwrap_or(Err(ClusterError::Stopped))
    }

    /// Blocks the calling thread until the answer comes: for a source's own
    /// thread. (Unlike tokio's `blocking_recv` it does not panic inside an
    /// async runtime, but it does block that runtime's thread: use
    /// [`Pending::wait`] there.)
    pub fn wait_blocking(self) -> Result<u64, ClusterError> {
        block_on(self.wait())
    }
}

/// Runs a future to completion on the calling thread, parking it between
/// polls.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

impl Link {
    /// Queues `rows` (a JSON array of compact rows) of `topic` for the log.
    /// `msg_id`: JetStream's de-duplication id (`None`: a random one).
    pub fn submit(
        &self,
        topic: &str,
        rows: Bytes,
        msg_id: Option<&str>,
    ) -> Result<Pending, ClusterError> {
        // Acquire pairs with the Release stores of the connection events.
        if !self.connected.load(Ordering::Acquire) {
            return Err(ClusterError::Disconnected);
        }
        let msg_id = match msg_id {
            Some(m) if m.len() <= MAX_MSG_ID_BYTES => m.to_string(),
            Some(m) => hashed_id(m.as_bytes()),
            None => format!(
                "{}-{:016x}{:016x}",
                self.node,
                fastrand::u64(..),
                fastrand::u64(..)
            ),
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Request {
                subject: subject(&self.stream, topic),
                rows,
                msg_id,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ClusterError::Busy,
                mpsc::error::TrySendError::Closed(_) => ClusterError::Stopped,
            })?;
        Ok(Pending(rx))
    }
}

/// A stable `Nats-Msg-Id` for an update from an upstream source: the
/// source's name and the origin's event id when it has one, else a hash of
/// the topic and rows (then two equal updates of one source within the
/// duplicate window count as one).
pub fn msg_id(source: &str, origin_id: Option<&str>, topic: &str, rows: &[u8]) -> String {
    match origin_id {
        Some(id) => {
            let m = format!("{source}:{id}");
            if m.len() <= MAX_MSG_ID_BYTES {
                m
            } else {
                hashed_id(m.as_bytes())
            }
        }
        None => {
            let mut h = sha2::Sha256::new();
            h.update(source.as_bytes());
            h.update([0]);
            h.update(topic.as_bytes());
            h.update([0]);
            h.update(rows);
            format!("{source}:h:{}", hex::encode(&h.finalize()[..16]))
        }
    }
}

fn hashed_id(b: &[u8]) -> String {
    format!("h:{}", hex::encode(&sha2::Sha256::digest(b)[..16]))
}

/// Appends queued publishes to the stream; each ack is awaited on a task of
/// its own so that publishes pipeline.
pub(super) async fn publish_loop(
    js: jetstream::Context,
    client: async_nats::Client,
    base: u64,
    progress: Shared,
    node: String,
    mut rx: mpsc::Receiver<Request>,
) {
    while let Some(req) = rx.recv().await {
        if client.connection_state() != async_nats::connection::State::Connected {
            let _ = req.reply.send(Err(ClusterError::Disconnected));
            continue;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", req.msg_id.as_str());
        headers.insert("Sluice-Node", node.as_str());
        match js
            .publish_with_headers(req.subject, headers, req.rows)
            .await
        {
            Ok(ack) => {
                let progress = progress.clone();
                tokio::spawn(async move {
                    let r = match ack.await {
                        Ok(ack) => {
                            if ack.duplicate {
                                metrics::counter!("sluice_cluster_duplicates_total").increment(1);
                            }
                            wait_applied(&progress, ack.sequence).await;
                            Ok(base.saturating_add(ack.sequence))
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "publish not acknowledged");
                            Err(ClusterError::NotStored)
                        }
                    };
                    let _ = req.reply.send(r);
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "publish not sent");
                let _ = req.reply.send(Err(ClusterError::NotStored));
            }
        }
    }
}

/// Returns once this node applied stream sequence `seq`, or after
/// [`APPLY_WAIT`].
async fn wait_applied(progress: &Shared, seq: u64) {
    let rx = {
        let mut p = lock(progress);
        if p.applied >= seq {
            return;
        }
        let (tx, rx) = oneshot::channel();
        p.waiters.entry(seq).or_default().push(tx);
        rx
    };
    let _ = tokio::time::timeout(APPLY_WAIT, rx).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_publish_can_be_waited_for_from_another_thread() {
        let (tx, rx) = oneshot::channel();
        let t = std::thread::spawn(move || Pending(rx).wait_blocking());
        tx.send(Ok(7)).unwrap();
        assert_eq!(t.join().unwrap(), Ok(7));
        let (tx, rx) = oneshot::channel::<Result<u64, ClusterError>>();
        drop(tx);
        assert_eq!(Pending(rx).wait_blocking(), Err(ClusterError::Stopped));
    }

    #[test]
    fn message_ids_are_stable_and_bounded() {
        let a = msg_id("origin", Some("42"), "t", b"[]");
        assert_eq!(a, "origin:42");
        assert_eq!(a, msg_id("origin", Some("42"), "u", b"[{}]"));
        let h = msg_id("origin", None, "t", b"[{\"a\":1}]");
        assert_eq!(h, msg_id("origin", None, "t", b"[{\"a\":1}]"));
        assert_ne!(h, msg_id("origin", None, "t2", b"[{\"a\":1}]"));
        let long = "x".repeat(500);
        assert!(msg_id("origin", Some(&long), "t", b"[]").len() <= MAX_MSG_ID_BYTES);
    }
}
