//! The cluster link (`[cluster]`, SPEC §8): several nodes share one durable
//! log, a NATS JetStream stream, and every node applies it in order.
//!
//! Cold module. It runs on its own thread (`sluice-cluster`), a tokio
//! current-thread runtime for async-nats; workers never wait on it. What it
//! owns:
//!
//! * **Publishing.** [`crate::sources::publish::submit`] validates a body
//!   with the same parser as a single node, then [`Link::submit`] queues its
//!   rows (one compact JSON array) for this thread, which appends them to the
//!   stream on subject `<stream>.t.<topic>` ([`subject`]) with a
//!   `Nats-Msg-Id` header. The caller gets its id once JetStream has stored
//!   the update *and* this node has applied it (so a `202` is followed by the
//!   update on this node's streams and snapshots), or [`APPLY_WAIT`] at most
//!   after the store. A node that is not connected to NATS, or whose queue is
//!   full, refuses at once ([`ClusterError`], `503`): nothing is stored that
//!   the caller was told failed, except when an ack is lost after the store,
//!   which `Nats-Msg-Id` lets a retry with the same id de-duplicate.
//! * **Applying.** One ordered push consumer per node reads the stream from
//!   the first sequence this node has not applied and publishes each update
//!   to the hub with id `base + stream sequence` ([`Hub::publish_with_id`]),
//!   where `base` is the stream's creation time in unix microseconds. The
//!   sequence makes ids the same on every node, strictly increasing per
//!   topic, and never reused across restarts of nodes or of NATS; the base
//!   keeps that true if the stream is deleted and made again (a new stream
//!   starts at sequence 1 but at a later creation time), and puts cluster
//!   ids in the same range as a single node's clock-based ids. An update
//!   that this node's config cannot take (topic with no `[[topics]]`
//!   pattern, row without a key field) is skipped and counted: nodes must
//!   share their `[[topics]]`.
//! * **Start-up.** The node is `starting` (`/healthz` 503, streams and
//!   snapshots 503, no "listening" log line) until it has applied the stream
//!   up to the last sequence it had when the node started. With
//!   `snapshot_s`, it first loads the newest state snapshot of any node
//!   ([`snapshot`]) and replays only the stream after it.
//! * **Losing NATS.** async-nats reconnects by itself (backoff capped at
//!   [`MAX_RECONNECT_DELAY`]); meanwhile open streams go on from the hub,
//!   publishes get 503, and the ordered consumer resumes after the last
//!   sequence it delivered, without gap or repeat.
//!
//! Metrics: `sluice_cluster_connected` (0/1), `sluice_cluster_applied_seq`
//! (last stream sequence applied), `sluice_cluster_applied_total`,
//! `sluice_cluster_skipped_total`, `sluice_cluster_duplicates_total`
//! (publishes JetStream de-duplicated), `sluice_cluster_snapshots_total`
//! and `sluice_cluster_snapshot_restored_seq`.
//!
//! De-duplication: JetStream drops a message whose `Nats-Msg-Id` it has
//! stored within the stream's duplicate window ([`DUPLICATE_WINDOW`] for a
//! stream this node creates) and acks it with the first one's sequence, so
//! two nodes fronting the same origin that pass the same [`msg_id`] for the
//! same origin event store it once.

pub mod snapshot;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest;
use tokio::sync::{mpsc, oneshot};

use crate::config::ClusterSettings;
use crate::hub::Hub;
use crate::sources::publish::parse_rows;

/// Publishes queued for the cluster thread; past it a publish gets 503.
pub const PUBLISH_QUEUE: usize = 4096;
/// How long JetStream may take to answer (a publish's ack, an API call).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stored publish waits for this node to apply it before its
/// answer goes out anyway (it is stored; the node is behind).
pub const APPLY_WAIT: Duration = Duration::from_secs(2);
/// Longest pause between two attempts to reach NATS.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// The de-duplication window of a stream this node creates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Pause before a failed JetStream set-up step is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// Longest `Nats-Msg-Id` kept as given; longer ones are hashed.
pub const MAX_MSG_ID_BYTES: usize = 128;

/// Why the cluster log did not take a publish (all are `503 unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("too many publishes waiting for JetStream")]
    Busy,
    #[error("JetStream did not acknowledge the update")]
    NotStored,
    #[error("the cluster link has stopped")]
    Stopped,
}

impl ClusterError {
    /// The message of the `503` answer.
    pub fn message(self) -> &'static str {
        match self {
            ClusterError::Disconnected => "the cluster log (NATS) is unreachable; try again",
            ClusterError::Busy => "too many publishes waiting for the cluster log; try again",
            ClusterError::NotStored => "the cluster log did not store the update; try again",
            ClusterError::Stopped => "the cluster link has stopped",
        }
    }
}

static LINK: OnceLock<Arc<Link>> = OnceLock::new();

/// The process's cluster link, once [`start`] made it (`None`: one node).
pub fn link() -> Option<&'static Arc<Link>> {
    LINK.get()
}

/// True while a cluster node has not yet rebuilt its state from the stream.
pub fn starting() -> bool {
    link().is_some_and(|l| !l.is_ready())
}

/// What the rest of the node sees of the cluster thread.
pub struct Link {
    pub node: String,
    pub stream: String,
    tx: mpsc::Sender<Request>,
    ready: AtomicBool,
    connected: AtomicBool,
    /// The last stream sequence this node applied.
    applied: AtomicU64,
}

struct Request {
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

    /// The node has rebuilt its state from the stream.
    pub fn is_ready(&self) -> bool {
        // Acquire pairs with the Release in `set_ready`: whoever sees ready
        // also sees the state tables it was set after.
        self.ready.load(Ordering::Acquire)
    }

    fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The last stream sequence this node applied.
    pub fn applied(&self) -> u64 {
        // Relaxed: a gauge for /healthz.
        self.applied.load(Ordering::Relaxed)
    }

    /// The `"cluster"` object of `/healthz`.
    pub fn health_json(&self) -> String {
        let state = if !self.is_connected() {
            "down"
        } else if !self.is_ready() {
            "starting"
        } else {
            "up"
        };
        format!(
            r#"{{"node":"{}","stream":"{}","state":"{state}","applied":{}}}"#,
            self.node,
            self.stream,
            self.applied()
        )
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

/// The subject of `topic`'s updates: `<stream>.t.` and the topic with its
/// `/` as `.` and its `.` as `%2E` (topic names never hold `%`, `*`, `>` or
/// spaces, so this is injective and a valid subject).
pub fn subject(stream: &str, topic: &str) -> String {
    let mut s = String::with_capacity(stream.len() + 3 + topic.len() + 8);
    s.push_str(stream);
    s.push_str(".t.");
    for c in topic.chars() {
        match c {
            '/' => s.push('.'),
            '.' => s.push_str("%2E"),
            c => s.push(c),
        }
    }
    s
}

/// The topic of a subject made by [`subject`].
pub fn topic_of(stream: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(stream)?.strip_prefix(".t.")?;
    Some(rest.replace('.', "/").replace("%2E", "."))
}

/// Starts the cluster thread and registers the process's [`link`].
pub fn start(cfg: &ClusterSettings, hub: Arc<Hub>) -> io::Result<Arc<Link>> {
    let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
    let link = Arc::new(Link {
        node: cfg.node.clone(),
        stream: cfg.stream.clone(),
        tx,
        ready: AtomicBool::new(false),
        connected: AtomicBool::new(false),
        applied: AtomicU64::new(0),
    });
    if LINK.set(link.clone()).is_err() {
        return Err(io::Error::other("the cluster link is already running"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cfg = cfg.clone();
    let l = link.clone();
    std::thread::Builder::new()
        .name("sluice-cluster".into())
        .spawn(move || rt.block_on(run(l, hub, cfg, rx)))?;
    Ok(link)
}

/// The applied sequence and the publishes waiting for it.
#[derive(Default)]
struct Progress {
    applied: u64,
    waiters: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
}

type Shared = Arc<Mutex<Progress>>;

fn lock(p: &Shared) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(link: Arc<Link>, hub: Arc<Hub>, cfg: ClusterSettings, rx: mpsc::Receiver<Request>) {
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

/// Appends queued publishes to the stream; each ack is awaited on a task of
/// its own so that publishes pipeline.
async fn publish_loop(
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

/// Reads the stream in order from the first sequence not applied, for ever
/// (an ordered consumer that ends is made again after the last sequence).
#[allow(clippy::too_many_arguments)]
async fn apply_loop(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_topics_injectively() {
        for (topic, subj) in [
            ("odds/basketball_nba", "S.t.odds.basketball_nba"),
            ("events/0x.abc", "S.t.events.0x%2Eabc"),
            ("a.b/c", "S.t.a%2Eb.c"),
            ("x~y:z@w-v_", "S.t.x~y:z@w-v_"),
        ] {
            assert_eq!(subject("S", topic), subj);
            assert_eq!(topic_of("S", subj).as_deref(), Some(topic));
        }
        assert_eq!(topic_of("S", "T.t.a"), None);
        assert_eq!(topic_of("S", "S.x.a"), None);
    }

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
