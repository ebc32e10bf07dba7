//! Every count that bounds what connections may hold, as guard types that
//! take their count when made and give it back in `Drop`, so no exit path
//! can leak one.
//!
//! Cold: taken once per connection, request or stream, never per event.
//! The node-wide counts are atomics shared by the workers (the `Hub`'s
//! `connections`, `streams`, `pending` and per-key stream counts; they are
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
//! * [`KeySlot`]: a stream of an API key (the key's `max_connections`).
//! * [`StreamSlot`]: an open stream, on its worker, node and topic, holding
//!   its key's slot.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::hub::{Hub, Topic};
use crate::server::worker::Worker;

/// An open client connection, counted on its node.
pub struct ConnSlot {
    hub: Arc<Hub>,
}

impl ConnSlot {
    /// Counts a connection; also returns how many were open before it.
    pub fn new(hub: &Arc<Hub>) -> (ConnSlot, usize) {
        let before = hub.connections.fetch_add(1, Ordering::Relaxed);
        (ConnSlot { hub: hub.clone() }, before)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.hub.connections.fetch_sub(1, Ordering::Relaxed);
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
    hub: Arc<Hub>,
    by_ip: Rc<PendingByIp>,
    ip: IpAddr,
}

impl PendingSlot {
    /// Counts a connection from `ip`; refused past either cap.
    pub fn take(
        hub: &Arc<Hub>,
        by_ip: &Rc<PendingByIp>,
        ip: IpAddr,
    ) -> Result<PendingSlot, PendingRefusal> {
        let s = hub.settings();
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
        let prev = hub.pending.fetch_add(1, Ordering::Relaxed);
        let slot = PendingSlot {
            hub: hub.clone(),
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
        self.hub.pending.fetch_sub(1, Ordering::Relaxed);
        let mut counts = self.by_ip.0.borrow_mut();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// One stream of API key `key` (index into the settings' keys).
pub struct KeySlot {
    hub: Arc<Hub>,
    key: usize,
}

impl KeySlot {
    /// `None` when the key already has its `max_connections` streams open.
    pub fn take(hub: &Arc<Hub>, key: usize) -> Option<KeySlot> {
        hub.acquire_key_stream(key).then(|| KeySlot {
            hub: hub.clone(),
            key,
        })
    }
}

impl KeySlot {
    /// The key's index into the settings' keys.
    pub fn index(&self) -> usize {
        self.key
    }
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        self.hub.release_key_stream(self.key);
    }
}

/// An open stream, counted on its worker, its node and its topic, with
/// its connection's and its key's slots. It lives in the stream's task for
/// the whole stream, so it is kept small (24 bytes): the two slots it takes
/// over are held as the worker's hub and a key index.
pub struct StreamSlot {
    worker: Rc<Worker>,
    topic: Arc<Topic>,
    /// Index of the key whose stream count this holds (`NO_KEY`: none).
    key: u32,
}

/// `StreamSlot::key` of a stream without a key.
const NO_KEY: u32 = u32::MAX;

impl StreamSlot {
    pub fn new(
        worker: &Rc<Worker>,
        topic: &Arc<Topic>,
        conn: ConnSlot,
        key: Option<KeySlot>,
    ) -> StreamSlot {
        worker.streams.set(worker.streams.get() + 1);
        worker.hub.streams.fetch_add(1, Ordering::Relaxed);
        topic.subscribers.fetch_add(1, Ordering::Relaxed);
        // The connection's and the key's counts now belong to this slot,
        // released in its Drop.
        std::mem::forget(conn);
        let key = match key {
            Some(k) => {
                let i = u32::try_from(k.key).expect("fewer than u32::MAX keys");
                std::mem::forget(k);
                i
            }
            None => NO_KEY,
        };
        StreamSlot {
            worker: worker.clone(),
            topic: topic.clone(),
            key,
        }
    }

    /// The worker the stream runs on.
    pub fn worker(&self) -> &Rc<Worker> {
        &self.worker
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.key != NO_KEY {
            self.worker.hub.release_key_stream(self.key as usize);
        }
        self.worker.hub.connections.fetch_sub(1, Ordering::Relaxed);
        self.topic.subscribers.fetch_sub(1, Ordering::Relaxed);
        self.worker.hub.streams.fetch_sub(1, Ordering::Relaxed);
        self.worker.streams.set(self.worker.streams.get() - 1);
    }
}
