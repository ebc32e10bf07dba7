//! The worker-side half of one SSE connection: its queue of shared frames,
//! its state, and what the wheel and the permits need to know of it.
//!
//! Hot: the fan-out queues on it per event (a `VecDeque` push of an `Rc`, no
//! allocation once the queue has grown). Shared (`Rc`) between its filter
//! group, the timer wheel, the permit queues and its stream task, all on
//! one worker thread.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::task::Waker;

use super::iovec::{Frame, FrameBatch};
use super::meter::StreamMeter;
use super::sender::NO_SLOT;
use super::wheel::secs_to_ms;
use super::{CLOSE_GRACE_S, NOT_WRITING};
use crate::server::access::CloseReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    Open,
    /// Closing frame queued: flush the queue, then close.
    Closing,
    /// Close now, abandoning any write in flight.
    Abort,
    /// The connection task has ended.
    Closed,
}

/// Whose a stream is, as indices into the configuration of its worker's
/// request side when it was admitted (and, after a reload, into the
/// reloaded one): what a reload needs to find the streams of a removed key
/// or a changed tier. Plain numbers: the hot side never reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamAuth {
    /// Index of the stream's key (`None`: anonymous).
    pub key: Option<u32>,
    /// Index of the stream's tier.
    pub tier: u32,
    /// Admitted with a stream token of the key (whose tier may be
    /// narrower than the key's).
    pub token: bool,
}

/// The worker-side half of one SSE connection, shared (`Rc`) between its
/// group, the timer wheel and the connection task.
///
/// `repr(C)`, hot fields first: what the fan-out reads and writes per frame
/// (the queue, its byte count, the state and flags, the socket, the tier,
/// the clocks) sits in its first 96 bytes, 112 of the `Rc`'s
/// allocation with the counts: two or three cache lines, where Rust's own
/// order spread them over all four.
#[repr(C)]
pub struct Subscriber {
    // hot: the fan-out and the send ring
    pub(super) queue: RefCell<VecDeque<Frame>>,
    pub(super) queued_bytes: Cell<usize>,
    pub(super) state: Cell<SubState>,
    /// Waiting in the worker's permit queue (or the send ring's ready
    /// queue), or writing: the fan-out need not wake it (it looks at its
    /// queue when the write ends).
    pub(super) busy: Cell<bool>,
    /// A raw-tier stream: waits for write permits ahead of coalesced ones.
    pub(super) raw_tier: bool,
    /// Holds one of the worker's write permits.
    pub(super) permit: Cell<bool>,
    /// Send ring only ([`super::sender`]): its socket while its task runs
    /// (-1 before and after).
    pub(super) fd: Cell<RawFd>,
    /// Update frames queued on it (fan-out and replays), for `max_events`.
    pub(super) events: Cell<u32>,
    /// Send ring only: its fixed-file slot (`NO_SLOT`: none).
    pub(super) slot: Cell<u32>,
    /// Worker clock (ms) of the last frame queued: silence counts from here.
    pub(super) last_write: Cell<u64>,
    /// Its key and tier (the fan-out counts deliveries by tier; reloads
    /// read the rest).
    pub(super) auth: Cell<StreamAuth>,
    /// Send ring only: the `user_data` of its operation in flight (0: none).
    pub(super) op: Cell<u64>,
    /// Send ring only: the batch that operation sends, kept here until it
    /// completes.
    pub(super) batch: RefCell<Option<Box<FrameBatch>>>,
    /// Worker tick at which its current write began (`NOT_WRITING`: none).
    /// A write still in flight `slow_consumer_s` later means the socket has
    /// not drained for that long.
    pub(super) write_since: Cell<u64>,
    /// Bytes written to its socket (the response head included): read by
    /// the access log, and by metering less the head.
    pub(super) bytes: Cell<u64>,
    /// Its usage record's identity and what was folded into its key's
    /// account so far (`None`: metering is off).
    pub(super) meter: Option<Box<StreamMeter>>,
    // cold: timers, writes in the stream's task, close, metering
    pub(super) waker: Cell<Option<Waker>>,
    /// Worker clock (ms) when the stream started.
    pub(super) started: u64,
    /// Worker clock (ms) at which `max_duration_s` is reached (`u64::MAX`:
    /// never). A reload moves it (counted from `started`).
    pub(super) deadline: Cell<u64>,
    /// Worker clock (ms) after which a closing connection is aborted.
    pub(super) close_deadline: Cell<u64>,
    pub(super) heartbeat_s: u32,
    /// The permit reaper's epoch when this stream took its permit.
    pub(super) permit_epoch: Cell<u32>,
    /// Why it is closing; the first reason set wins.
    pub(super) close_reason: Cell<Option<CloseReason>>,
    /// Metered streams only: update frames written whole.
    pub(super) sent_events: Cell<u64>,
}

impl Subscriber {
    /// A stream starting at `now` ([`Worker::now`]).
    pub fn new(now: u64, heartbeat_s: u32, max_duration_s: u32, raw_tier: bool) -> Subscriber {
        Subscriber {
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            waker: Cell::new(None),
            state: Cell::new(SubState::Open),
            events: Cell::new(0),
            last_write: Cell::new(now),
            started: now,
            deadline: Cell::new(deadline(now, max_duration_s)),
            close_deadline: Cell::new(u64::MAX),
            heartbeat_s,
            permit: Cell::new(false),
            busy: Cell::new(false),
            permit_epoch: Cell::new(0),
            write_since: Cell::new(NOT_WRITING),
            raw_tier,
            bytes: Cell::new(0),
            close_reason: Cell::new(None),
            auth: Cell::new(StreamAuth::default()),
            sent_events: Cell::new(0),
            meter: None,
            fd: Cell::new(-1),
            slot: Cell::new(NO_SLOT),
            op: Cell::new(0),
            batch: RefCell::new(None),
        }
    }

    /// The same stream, metered.
    pub fn metered(mut self, meter: Box<StreamMeter>) -> Subscriber {
        self.meter = Some(meter);
        self
    }

    /// Counts a write of `n` bytes from `batch` (call before the batch
    /// advances): the bytes, and for a metered stream the update frames it
    /// completed (a look at each completed frame's head).
    pub fn wrote(&self, batch: &FrameBatch, n: usize) {
        self.bytes.set(self.bytes.get().saturating_add(n as u64));
        if self.meter.is_some() {
            self.sent_events
                .set(self.sent_events.get() + batch.completed_updates(n));
        }
    }

    /// Its tier (index into the settings' tiers), for metrics and logs.
    pub fn tier(&self) -> usize {
        self.auth.get().tier as usize
    }

    /// Worker clock (ms) when the stream started.
    pub fn started(&self) -> u64 {
        self.started
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get()
    }

    /// Why the stream ended, for its access line and usage record: the
    /// reason recorded, else the client went away.
    pub fn ended_because(&self) -> CloseReason {
        self.close_reason.get().unwrap_or(CloseReason::ClientClosed)
    }

    /// Why the stream ends when its worker stops with it still recorded as
    /// open: `shutdown` unless it had already closed or given a reason.
    pub fn ended_at_stop(&self) -> CloseReason {
        match self.close_reason.get() {
            None if self.state() != SubState::Closed => CloseReason::Shutdown,
            _ => self.ended_because(),
        }
    }

    /// Records why the stream ends, unless a reason is already recorded.
    pub fn set_close_reason(&self, reason: CloseReason) {
        if self.close_reason.get().is_none() {
            self.close_reason.set(Some(reason));
        }
    }

    /// Records whose the stream is (at its start, and by a reload).
    pub fn set_auth(&self, auth: StreamAuth) {
        self.auth.set(auth);
    }

    pub fn auth(&self) -> StreamAuth {
        self.auth.get()
    }

    /// A reload's `max_duration_s`, counted from the stream's start. A
    /// deadline it brings forward is noticed when the stream's wheel entry
    /// next comes up (its next heartbeat at the latest).
    pub(super) fn set_max_duration(&self, max_duration_s: u32) {
        self.deadline.set(deadline(self.started, max_duration_s));
    }

    pub fn state(&self) -> SubState {
        self.state.get()
    }

    pub fn has_queued(&self) -> bool {
        self.queued_bytes.get() > 0
    }

    /// The connection task's waker, kept until the next push.
    pub fn register(&self, waker: &Waker) {
        let old = self.waker.take();
        match old {
            Some(w) if w.will_wake(waker) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }

    pub(super) fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Queues a frame (no wake; callers wake once after queueing).
    pub fn push(&self, frame: Frame) {
        self.queued_bytes.set(self.queued_bytes.get() + frame.len());
        self.queue.borrow_mut().push_back(frame);
    }

    /// Takes queued frames into a write batch.
    pub fn take_into(&self, batch: &mut FrameBatch) {
        let n = batch.fill(&mut self.queue.borrow_mut());
        self.queued_bytes.set(self.queued_bytes.get() - n);
    }

    /// Counts update frames sent outside the fan-out (a replay).
    pub fn count_events(&self, n: u32) {
        self.events.set(self.events.get().saturating_add(n));
    }

    pub fn events(&self) -> u32 {
        self.events.get()
    }

    /// Queues a closing frame and lets the connection flush, then close.
    pub fn close_with(&self, frame: Frame, now: u64, reason: CloseReason) {
        if self.state.get() == SubState::Open {
            self.set_close_reason(reason);
            self.push(frame);
            self.state.set(SubState::Closing);
            self.close_deadline
                .set(now.saturating_add(secs_to_ms(CLOSE_GRACE_S)));
            self.wake();
        }
    }

    /// When the stream next needs the wheel: its next heartbeat, or its max
    /// duration if that comes first; once closing, its close deadline.
    pub(super) fn next_due(&self) -> u64 {
        match self.state.get() {
            SubState::Open => self
                .last_write
                .get()
                .saturating_add(secs_to_ms(self.heartbeat_s))
                .min(self.deadline.get()),
            _ => self.close_deadline.get(),
        }
    }

    /// Marks the connection task ended.
    pub fn set_closed(&self) {
        self.state.set(SubState::Closed);
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
    }
}

/// The worker clock at which a stream started at `started` reaches
/// `max_duration_s` (0: never).
fn deadline(started: u64, max_duration_s: u32) -> u64 {
    if max_duration_s == 0 {
        u64::MAX
    } else {
        started.saturating_add(secs_to_ms(max_duration_s))
    }
}

/// `retry_ms` spread by ±25% so that reconnects spread out.
pub fn jittered_retry(retry_ms: u32) -> u32 {
    let spread = retry_ms / 4;
    retry_ms - spread + fastrand::u32(0..=spread * 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// Where the fan-out's fields of a [`Subscriber`] end (the `Rc`'s two
    /// counts come before them).
    const HOT_BYTES: usize = 136;

    #[test]
    fn the_fan_outs_fields_come_first() {
        let hot = [
            offset_of!(Subscriber, queue) + size_of::<RefCell<VecDeque<Frame>>>(),
            offset_of!(Subscriber, queued_bytes) + 8,
            offset_of!(Subscriber, state) + 1,
            offset_of!(Subscriber, busy) + 1,
            offset_of!(Subscriber, raw_tier) + 1,
            offset_of!(Subscriber, permit) + 1,
            offset_of!(Subscriber, fd) + 4,
            offset_of!(Subscriber, events) + 4,
            offset_of!(Subscriber, slot) + 4,
            offset_of!(Subscriber, last_write) + 8,
            offset_of!(Subscriber, auth) + size_of::<StreamAuth>(),
            offset_of!(Subscriber, op) + 8,
            offset_of!(Subscriber, batch) + size_of::<RefCell<Option<Box<FrameBatch>>>>(),
            offset_of!(Subscriber, write_since) + 8,
            offset_of!(Subscriber, bytes) + 8,
            offset_of!(Subscriber, meter) + 8,
        ];
        assert_eq!(hot.iter().max(), Some(&HOT_BYTES));
        for cold in [
            offset_of!(Subscriber, waker),
            offset_of!(Subscriber, deadline),
            offset_of!(Subscriber, close_reason),
            offset_of!(Subscriber, sent_events),
        ] {
            assert!(cold >= HOT_BYTES);
        }
    }
}
