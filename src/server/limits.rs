//! Counts that bound what connections may hold, as guard types that give
//! their count back in `Drop`.
//!
//! Cold: taken once per connection or request, never per event. Today it
//! owns the bound on connections that are not streams (reading a request
//! or kept alive between requests): per node (`max_pending_connections`,
//! an atomic shared by the workers) and per client address
//! (`max_pending_per_ip`, counted per worker: `SO_REUSEPORT` spreads one
//! address's connections over the workers by their ports, so each worker
//! allows its share, rounded up).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::server::worker::Worker;

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
    w: Rc<Worker>,
    ip: IpAddr,
}

impl PendingSlot {
    pub fn take(w: &Rc<Worker>, ip: IpAddr) -> Result<PendingSlot, PendingRefusal> {
        let per_worker = w
            .settings
            .max_pending_per_ip
            .div_ceil(w.settings.workers.max(1));
        {
            let mut by_ip = w.pending_by_ip.0.borrow_mut();
            let n = by_ip.entry(ip).or_insert(0);
            if *n as usize >= per_worker {
                if *n == 0 {
                    by_ip.remove(&ip);
                }
                return Err(PendingRefusal::Address);
            }
            *n += 1;
        }
        // Relaxed: a count with no other data to order; an increment that
        // overshoots is undone at once.
        let prev = w.hub.pending.fetch_add(1, Ordering::Relaxed);
        let slot = PendingSlot { w: w.clone(), ip };
        if prev >= w.settings.max_pending_connections {
            drop(slot);
            return Err(PendingRefusal::Node);
        }
        Ok(slot)
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.w.hub.pending.fetch_sub(1, Ordering::Relaxed);
        let mut by_ip = self.w.pending_by_ip.0.borrow_mut();
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}
