//! Write permits: at most `WRITE_PERMITS` stream writes in flight per
//! worker, handed out raw tier first (every `BULK_TURN`-th to a coalesced
//! stream), and never held by a write that cannot progress: a short write
//! or a write still in flight after a whole `PERMIT_STALL` while others
//! wait gives its permit back and goes on without one. A write in flight
//! for `slow_consumer_s` closes its stream as a slow consumer.
//!
//! Only where stream tasks write (the epoll driver, or `SLUICE_SEND_RING=0`):
//! on io_uring the worker's send ring submits the writes itself, a bounded
//! number per turn, and needs no permits ([`super::sender`]).
//!
//! Hot: a permit is taken and given back once per write (a batch of
//! frames), with no allocation once the queues have grown.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use super::subscriber::{SubState, Subscriber};
use super::{NOT_WRITING, Worker};
use crate::server::access::CloseReason;

/// Most stream writes a worker has in flight at once. Under light load no
/// connection ever waits for one; when the worker saturates, connections
/// queue for a permit in FIFO order and frames that arrive meanwhile join
/// their next write, so a write carries several frames and the kernel's
/// per-segment cost is paid once for them.
///
/// 32 measured best on the 2-core machine (scripts/peer-bench.sh fanout-1k
/// and fanout-10k): 512 let one loop turn run ~4 ms of inline sends, which
/// delayed publishes and capped the 1k × 200/s case at 115 events/s; 16–128
/// all kept up with 200/s at the same CPU per delivery.
pub const WRITE_PERMITS: usize = 32;
/// One permit in BULK_TURN goes to a waiting coalesced-tier stream ahead of
/// waiting raw-tier ones (the others go raw first).
///
/// Measured with scripts/tier-bench.py (10,000 subscribers: 1,000 raw, 4,500
/// at 0.5 s, 4,500 at 1 s; 500 updates/s; server on one core, which this
/// load overcommits): plain FIFO let each coalesced tick's 9,000 writes of
/// 60–125 KB delay raw frames (raw p99 658 ms); raw always first starved the
/// coalesced tiers until they were cut off as slow consumers; 8 and 4 gave
/// raw p99 475 / 58–67 ms with coalesced p99 up to 7 s; 2 gave raw p99 57 ms
/// and coalesced p99 0.8 s / 2.4 s, every frame delivered.
pub const BULK_TURN: u32 = 2;
/// How often, while streams wait for a write permit, the worker looks for
/// permits held by writes that cannot progress (a socket whose buffer is
/// full: a client that stopped reading). A write that still holds its
/// permit after a whole interval gives it back and goes on without one.
pub const PERMIT_STALL: Duration = Duration::from_millis(5);

impl Worker {
    /// Takes a write permit for `sub`, or queues it for the next one (it is
    /// woken when handed one). True when it holds a permit.
    pub fn acquire_write(&self, sub: &Rc<Subscriber>) -> bool {
        if sub.permit.get() {
            return true;
        }
        if self.take_free_permit(sub) {
            sub.busy.set(true);
            return true;
        }
        if !sub.busy.get() {
            sub.busy.set(true);
            self.wait_for_permit(sub);
        }
        false
    }
    /// Takes a free permit for `sub` unless someone of its class or a more
    /// urgent one is already waiting.
    pub(super) fn take_free_permit(&self, sub: &Rc<Subscriber>) -> bool {
        let free = self.permits.get() > 0
            && self.permit_queues[0].borrow().is_empty()
            && (sub.raw_tier || self.permit_queues[1].borrow().is_empty());
        if free {
            self.permits.set(self.permits.get() - 1);
            self.grant(sub);
        }
        free
    }
    /// Gives `sub` a permit (taken from the pool or passed on).
    pub(super) fn grant(&self, sub: &Rc<Subscriber>) {
        sub.permit.set(true);
        sub.write_since.set(self.now());
        sub.permit_epoch.set(self.reap_epoch.get());
        self.holders.borrow_mut().push(sub.clone());
    }
    pub(super) fn wait_for_permit(&self, sub: &Rc<Subscriber>) {
        let class = usize::from(!sub.raw_tier);
        self.permit_queues[class]
            .borrow_mut()
            .push_back(sub.clone());
        if !self.reaper_running.replace(true)
            && let Some(waker) = self.reaper_waker.take()
        {
            waker.wake();
        }
    }
    /// After the fan-out queued a frame on `sub`: hands it a write permit
    /// and wakes it, or puts it in the permit queue without waking it (it is
    /// woken once, when a permit comes). A busy connection looks at its
    /// queue when its write ends and needs nothing.
    pub(super) fn nudge(&self, sub: &Rc<Subscriber>) {
        if let Some(s) = &self.sender {
            s.ready(sub);
            return;
        }
        if sub.busy.get() {
            return;
        }
        sub.busy.set(true);
        if self.take_free_permit(sub) {
            sub.wake();
        } else {
            self.wait_for_permit(sub);
        }
    }
    /// After a frame was queued on `sub` outside the fan-out (a heartbeat,
    /// a closing frame): the send ring takes it, or its task is woken (and
    /// takes a permit itself).
    pub(super) fn kick(&self, sub: &Rc<Subscriber>) {
        match &self.sender {
            Some(s) => s.ready(sub),
            None => sub.wake(),
        }
    }
    /// Ends `sub`'s write: its permit goes to the first live waiter, raw
    /// tier first.
    pub fn release_write(&self, sub: &Subscriber) {
        sub.busy.set(false);
        sub.write_since.set(NOT_WRITING);
        if sub.permit.replace(false) {
            self.drop_holder(sub);
            self.pass_permit();
        }
    }
    /// `sub`'s write went short: its socket is full, so the rest of the
    /// batch waits for the client to read. It goes on without a permit.
    pub fn write_stalled(&self, sub: &Rc<Subscriber>) {
        if sub.write_since.get() == NOT_WRITING {
            sub.write_since.set(self.now());
        }
        if sub.permit.replace(false) {
            self.drop_holder(sub);
            self.stalled.borrow_mut().push(sub.clone());
            self.pass_permit();
        }
    }
    pub(super) fn drop_holder(&self, sub: &Subscriber) {
        let mut holders = self.holders.borrow_mut();
        if let Some(i) = holders.iter().position(|h| std::ptr::eq(&**h, sub)) {
            holders.swap_remove(i);
        }
    }
    /// Hands a free permit to the first live waiter, else back to the pool.
    pub(super) fn pass_permit(&self) {
        // Every BULK_TURN-th permit goes to a coalesced stream even while
        // raw ones wait, so that an overloaded worker slows the raw tier
        // (whose frames then batch) rather than starving coalesced ones.
        let turn = self.release_count.get().wrapping_add(1);
        self.release_count.set(turn);
        let order: [usize; 2] = if turn.is_multiple_of(BULK_TURN) {
            [1, 0]
        } else {
            [0, 1]
        };
        for class in order {
            let next = {
                let mut q = self.permit_queues[class].borrow_mut();
                loop {
                    match q.pop_front() {
                        Some(n) if n.state.get() == SubState::Closed => continue,
                        other => break other,
                    }
                }
            };
            if let Some(next) = next {
                self.grant(&next);
                next.wake();
                return;
            }
        }
        self.permits.set(self.permits.get() + 1);
    }
    /// One run of the permit reaper: a holder that took its permit before
    /// the previous run has been writing for a whole `PERMIT_STALL` while
    /// others wait; its socket is full, so its permit goes to a waiter.
    /// False when nobody waits any more (the reaper stops).
    pub(super) fn reap_stalled_permits(&self) -> bool {
        let epoch = self.reap_epoch.get().wrapping_add(1);
        self.reap_epoch.set(epoch);
        if self.permit_queues.iter().all(|q| q.borrow().is_empty()) {
            return false;
        }
        loop {
            let stuck = self
                .holders
                .borrow()
                .iter()
                .find(|h| epoch.wrapping_sub(h.permit_epoch.get()) >= 2)
                .cloned();
            match stuck {
                Some(h) => self.write_stalled(&h),
                None => return true,
            }
        }
    }

    /// Closes streams whose socket has not drained for `slow_consumer_s`:
    /// a write (with a permit, or stalled without one) still in flight that
    /// long after it began (its start stamped rounded up, `now` rounded
    /// down: never early; checked once a second, so up to a second late).
    /// Their socket is full, so no closing frame could reach them; the close
    /// is counted as a slow consumer.
    pub(super) fn close_stalled(&self, now: u64) {
        let limit = u64::try_from(self.stream().slow_consumer.as_millis()).unwrap_or(u64::MAX);
        let overdue = |sub: &Subscriber| {
            let since = sub.write_since.get();
            since != NOT_WRITING && now.saturating_sub(since) >= limit
        };
        let abort = |sub: &Subscriber| {
            if sub.state.get() != SubState::Abort {
                sub.set_close_reason(CloseReason::SlowConsumer);
                sub.state.set(SubState::Abort);
                sub.wake();
                self.counters
                    .slow_consumers
                    .set(self.counters.slow_consumers.get() + 1);
            }
        };
        for h in self.holders.borrow().iter() {
            if overdue(h) {
                abort(h);
            }
        }
        self.stalled.borrow_mut().retain(|sub| {
            if sub.state.get() == SubState::Closed || sub.permit.get() {
                return false;
            }
            if sub.write_since.get() == NOT_WRITING {
                return false;
            }
            if overdue(sub) {
                abort(sub);
                return false;
            }
            true
        });
    }
}

/// Takes permits back from writes that cannot progress, every
/// `PERMIT_STALL` for as long as streams wait for one; sleeps otherwise.
pub async fn reap_loop(w: Rc<Worker>) {
    loop {
        poll_fn(|cx| {
            if w.reaper_running.get() {
                Poll::Ready(())
            } else {
                w.reaper_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        loop {
            monoio::time::sleep(PERMIT_STALL).await;
            if !w.reap_stalled_permits() {
                w.reaper_running.set(false);
                break;
            }
        }
    }
}
