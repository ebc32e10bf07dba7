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
//!
//! Files: this one holds the public link API (the limits, [`ClusterError`],
//! [`Link`] and its state, subject names, [`start`]); `startup.rs` the
//! cluster thread's body (connecting, the stream, the snapshot, readiness);
//! `publish.rs` the publish side ([`Link::submit`], the publish loop,
//! [`msg_id`]); `apply.rs` the apply side (the ordered consumer); and
//! `snapshot.rs` the state snapshots.

mod apply;
mod publish;
pub mod snapshot;
mod startup;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::ClusterSettings;
use crate::hub::Hub;
use publish::Request;
pub use publish::{Pending, msg_id};
use startup::run;

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

impl Link {
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
}
