//! Every count that bounds what connections may hold, as guard types that
//! take their count when made and give it back in `Drop`, so no exit path
//! can leak one.
//!
//! Cold: taken once per connection, request or stream, never per event.
//! The node-wide counts are atomics shared by the workers ([`NodeCounts`]
//! and the per-key stream counts of [`KeyStreams`]; only the guards here
//! change them, everything else reads them; they are
//! gauges with nothing else to order, so every operation on them is
//! `Relaxed`, and an increment that overshoots a cap is undone before anyone
//! acts on it); the per-worker ones are `Cell`s.
//!
//! * [`ConnSlot`]: an open client connection (`max_connections`).
//! * [`PendingSlot`]: a connection that is not a stream: reading a request
//!   or kept alive between requests (`max_pending_connections` per node,
//!   `max_pending_per_ip` per client address, counted per worker:
//!   `SO_REUSEPORT` spreads one address's connections over the workers by
//!   their ports, so each worker allows its share, rounded up).
//! * [`KeySlot`]: a stream of an API key (the key's `max_connections`),
//!   counted in the key's counter of [`KeyStreams`]. A reload builds a new
//!   table that carries each counter over to the key of the same name, so
//!   a kept key's count goes on, and a slot always gives its count back to
//!   the counter it took it from, whatever reloads came in between.
//! * [`StreamSlot`]: an open stream, on its worker, node and topic, holding
//!   its key's slot.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::config::{Key, Settings};
use crate::hub::Topic;
use crate::server::worker::Worker;

/// The node's counts, shared by every worker and the admin listener.
#[derive(Default)]
pub struct NodeCounts {
    /// Open client connections (streams included).
    connections: AtomicUsize,
    /// Open SSE streams.
    streams: AtomicUsize,
    /// Connections that are not streams ([`PendingSlot`]).
    pending: AtomicUsize,
}

impl NodeCounts {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

/// An open client connection, counted on its node.
pub struct ConnSlot {
    counts: Arc<NodeCounts>,
}

impl ConnSlot {
    /// Counts a connection; also returns how many were open before it.
    pub fn new(counts: &Arc<NodeCounts>) -> (ConnSlot, usize) {
        let before = counts.connections.fetch_add(1, Ordering::Relaxed);
        (
            ConnSlot {
                counts: counts.clone(),
            },
            before,
        )
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.counts.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per worker: connections that are not streams, by client address.
#[derive(Default)]
pub struct PendingByIp(RefCell<HashMap<IpAddr, u32>>);

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingRefusal {
    Node,
    Address,
}

impl PendingRefusal {
    pub fn message(self) -> &'static str {
        match self {
            PendingRefusal::Node => "too many connections are reading a request on this node",
            PendingRefusal::Address => "too many unfinished requests from this address",
        }
    }
}

/// A connection that is not a stream, counted on its node and address
/// until it becomes a stream or closes.
pub struct PendingSlot {
    counts: Arc<NodeCounts>,
    by_ip: Rc<PendingByIp>,
    ip: IpAddr,
}

impl PendingSlot {
    /// Counts a connection from `ip`; refused past either cap.
    pub fn take(
        counts: &Arc<NodeCounts>,
        s: &Settings,
        by_ip: &Rc<PendingByIp>,
        ip: IpAddr,
    ) -> Result<PendingSlot, PendingRefusal> {
        let per_worker = s.max_pending_per_ip.div_ceil(s.workers.max(1));
        {
            let mut counts = by_ip.0.borrow_mut();
            let n = counts.entry(ip).or_insert(0);
            if *n as usize >= per_worker {
                if *n == 0 {
                    counts.remove(&ip);
                }
                return Err(PendingRefusal::Address);
            }
            *n += 1;
        }
        let prev = counts.pending.fetch_add(1, Ordering::Relaxed);
        let slot = PendingSlot {
            counts: counts.clone(),
            by_ip: by_ip.clone(),
            ip,
        };
        if prev >= s.max_pending_connections {
            drop(slot);
            return Err(PendingRefusal::Node);
        }
        Ok(slot)
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.counts.pending.fetch_sub(1, Ordering::Relaxed);
        let mut counts = self.by_ip.0.borrow_mut();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Open streams per API key, across every worker, by the key's index in
/// one configuration's `keys` (one table per configuration: its indices
/// are that configuration's).
pub struct KeyStreams(Box<[Arc<AtomicU32>]>);

impl KeyStreams {
    pub fn new(keys: &[Key]) -> KeyStreams {
        KeyStreams(keys.iter().map(|_| Arc::default()).collect())
    }

    /// The table of a reloaded configuration's `keys`: a key whose name
    /// `old` (this table's keys) has keeps its counter, a new key starts at
    /// zero. A removed key's counter lives on in its open streams' slots
    /// until they close.
    pub fn carried_over(&self, old: &[Key], keys: &[Key]) -> KeyStreams {
        KeyStreams(
            keys.iter()
                .map(|k| match old.iter().position(|o| o.name == k.name) {
                    Some(i) => self.0[i].clone(),
                    None => Arc::default(),
                })
                .collect(),
        )
    }

    /// Open streams of key `k`.
    pub fn open(&self, k: usize) -> u32 {
        self.0[k].load(Ordering::Relaxed)
    }
}

/// One stream of an API key, counted in that key's counter.
pub struct KeySlot {
    count: Arc<AtomicU32>,
}

impl KeySlot {
    /// Counts a stream of key `k`; `None` (and nothing counted) when the key
    /// already has `max_connections` streams open (0: no cap).
    pub fn take(table: &KeyStreams, k: usize, max_connections: u32) -> Option<KeySlot> {
        let count = &table.0[k];
        // Relaxed: the count is the only shared state; an increment that
        // overshoots is undone before anyone acts on it.
        let prev = count.fetch_add(1, Ordering::Relaxed);
        if max_connections != 0 && prev >= max_connections {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(KeySlot {
            count: count.clone(),
        })
    }
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open stream, counted on its worker, its node and its topic, with
/// its connection's and its key's slots. It lives in the stream's task for
/// the whole stream, so it is kept small (24 bytes): the two slots it takes
/// over are held as the worker's node counts and the key's counter.
pub struct StreamSlot {
    worker: Rc<Worker>,
    topic: Arc<Topic>,
    /// The key's slot (its counter), if the stream has a key: held for its
    /// `Drop`.
    _key: Option<KeySlot>,
}

impl StreamSlot {
    pub fn new(
        worker: &Rc<Worker>,
        topic: &Arc<Topic>,
        conn: ConnSlot,
        key: Option<KeySlot>,
    ) -> StreamSlot {
        worker.streams.set(worker.streams.get() + 1);
        worker.counts.streams.fetch_add(1, Ordering::Relaxed);
        topic.subscribers.fetch_add(1, Ordering::Relaxed);
        // The connection's count now belongs to this slot, released in its
        // Drop (the key slot gives its own back when the slot drops).
        std::mem::forget(conn);
        StreamSlot {
            worker: worker.clone(),
            topic: topic.clone(),
            _key: key,
        }
    }

    /// The worker the stream runs on.
    pub fn worker(&self) -> &Rc<Worker> {
        &self.worker
    }

    pub fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.worker
            .counts
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        self.topic.subscribers.fetch_sub(1, Ordering::Relaxed);
        self.worker.counts.streams.fetch_sub(1, Ordering::Relaxed);
        self.worker.streams.set(self.worker.streams.get() - 1);
    }
}
