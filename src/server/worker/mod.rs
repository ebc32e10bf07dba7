//! One worker: a pinned OS thread running a monoio runtime (io_uring, or
//! epoll where io_uring is unavailable) with its own `SO_REUSEPORT` listener.
//! It owns its connections outright; no other thread touches them.
//!
//! Hot module. Subscribers are grouped by topic, then cadence (the tier's
//! `coalesce_ms`, one ring and one cursor per worker each), then filter. The
//! fan-out path (`Worker::advance`) reads each new ring frame once, gives
//! each filter group its frame (the shared one, or one re-joined from the
//! rows' bytes for the whole group, or none when no row passes) and queues
//! the same [`Frame`] (an `Rc`, one per group per frame) on every member: no
//! allocation, no lock, no syscall per connection per event. On the io_uring
//! driver the worker then submits the members' sends itself, many per
//! `io_uring_enter`, on fixed files ([`sender`]); on the epoll driver each
//! stream's task writes, with a write permit ([`permits`]). Heartbeats, max-duration and
//! closing grace run off a timer wheel ticked every `TICK_MS`; connections are
//! bucketed by their next deadline, never scanned.
//!
//! Timers are never early. The worker's clock is milliseconds on the
//! monotonic clock since the worker started ([`Worker::now`]): events are
//! stamped rounded up (a stream's start, its last write) and deadlines are
//! checked against the clock read at the tick rounded down, so a stream
//! started at 0.9 s with `max_duration_s = 2` gets its `timeout` at the
//! first tick at or after 2.9 s, and a heartbeat goes out only once the
//! stream has been silent for `heartbeat_s`. Tests inject the clock
//! ([`Worker::set_clock`]).

pub mod fanout;
pub mod iovec;
pub mod meter;
pub mod permits;
pub mod sender;
pub mod stream;
pub mod subscriber;
#[cfg(test)]
mod tests;
pub mod wheel;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;

use crate::config::StreamSettings;
use crate::hub::{Hub, Topic};
use crate::metrics::WorkerCounters;
use crate::server::access::CloseReason;
use crate::server::limits::NodeCounts;
use crate::sse::{self, ReconnectReason};
use crate::time::unix_secs;
use fanout::Groups;
pub use iovec::Frame;
use iovec::FrameBatch;
use subscriber::{Subscriber, jittered_retry};
use wheel::secs_to_ms;

pub use permits::{BULK_TURN, PERMIT_STALL, WRITE_PERMITS};
pub use subscriber::{StreamAuth, SubState};
pub use wheel::TICK_MS;

/// Most bytes queued on one connection before it is a slow consumer.
pub const MAX_QUEUED_BYTES: usize = 1 << 20;
/// Seconds a closing connection gets to flush its last frames.
pub const CLOSE_GRACE_S: u32 = 5;
/// Seconds a draining worker waits for its streams to flush and close.
pub const DRAIN_GRACE_S: u32 = 5;
/// `write_since` of a stream with no write in flight.
const NOT_WRITING: u64 = u64::MAX;

/// Frames built once per worker and shared by all its connections.
struct SharedFrames {
    heartbeat: Frame,
    timeout: Frame,
    limit: Frame,
}

pub struct Worker {
    pub id: usize,
    pub hub: Arc<Hub>,
    /// The node's connection and stream counts (`server::limits`).
    pub counts: Arc<NodeCounts>,
    /// What the stream code needs of the configuration ([`Worker::stream`];
    /// a reload replaces it, [`Worker::reload`]).
    stream: Cell<StreamSettings>,
    groups: RefCell<Groups>,
    wheel: RefCell<Vec<Vec<Rc<Subscriber>>>>,
    /// The clock's zero: when the worker started.
    origin: Instant,
    /// An injected clock (ms) that replaces the monotonic one (tests).
    manual_clock: Cell<Option<u64>>,
    /// The last wheel tick processed (`tick × TICK_MS` ms on the clock).
    ticked: Cell<u64>,
    /// The clock's whole second at the last once-a-second chores.
    second: Cell<u64>,
    /// The unix second the shared heartbeat frame carries.
    heartbeat_unix_s: Cell<u64>,
    frames: RefCell<SharedFrames>,
    /// Open SSE streams on this worker.
    pub streams: Cell<usize>,
    /// Worker clock (ms) when draining started.
    draining_since: Cell<Option<u64>>,
    pub counters: WorkerCounters,
    permits: Cell<usize>,
    /// Streams waiting for a write permit: raw-tier ones (`urgent`) first,
    /// then coalesced ones. A coalesced tick queues a write on every one of
    /// its subscribers at once; raw frames must not wait behind that burst.
    permit_queues: [RefCell<VecDeque<Rc<Subscriber>>>; 2],
    release_count: Cell<u32>,
    /// Streams holding a write permit (at most `WRITE_PERMITS`).
    holders: RefCell<Vec<Rc<Subscriber>>>,
    /// Streams whose write is blocked on a full socket, without a permit;
    /// closed as slow consumers after `slow_consumer_s`.
    stalled: RefCell<Vec<Rc<Subscriber>>>,
    /// Runs of the permit reaper; the reaper runs only while streams wait.
    reap_epoch: Cell<u32>,
    reaper_running: Cell<bool>,
    /// The reaper task's waker while it sleeps (nobody waits for a permit).
    reaper_waker: Cell<Option<Waker>>,
    /// Empty write batches, kept for the next writer. Boxed: the box is
    /// what a write hands to the kernel and gets back, so the pool keeps it.
    #[allow(clippy::vec_box)]
    batches: RefCell<Vec<Box<FrameBatch>>>,
    /// Usage metering (`None`: off).
    pub meter: Option<meter::WorkerMeter>,
    /// The send ring (io_uring driver; `None`: each stream's task writes).
    sender: Option<sender::Sender>,
    /// Topics (group keys) whose streams ended since the last sweep.
    ended_in: RefCell<Vec<usize>>,
}

impl Worker {
    pub fn new(id: usize, hub: Arc<Hub>, counts: Arc<NodeCounts>) -> Worker {
        let stream = hub.settings().stream();
        let counters = WorkerCounters::new(id, &hub.settings());
        let unix_s = unix_secs();
        let max_duration_s = u32::try_from(stream.max_duration.as_secs()).unwrap_or(u32::MAX);
        let frames = SharedFrames {
            heartbeat: Rc::new(sse::heartbeat(unix_s)),
            timeout: Rc::new(sse::timeout_frame(max_duration_s)),
            limit: Rc::new(sse::limit_frame(stream.max_events)),
        };
        Worker {
            id,
            hub,
            counts,
            stream: Cell::new(stream),
            groups: RefCell::new(Groups::new()),
            wheel: RefCell::new((0..wheel::WHEEL_SLOTS).map(|_| Vec::new()).collect()),
            origin: Instant::now(),
            manual_clock: Cell::new(None),
            ticked: Cell::new(0),
            second: Cell::new(0),
            heartbeat_unix_s: Cell::new(unix_s),
            frames: RefCell::new(frames),
            streams: Cell::new(0),
            draining_since: Cell::new(None),
            counters,
            permits: Cell::new(WRITE_PERMITS),
            permit_queues: [RefCell::new(VecDeque::new()), RefCell::new(VecDeque::new())],
            release_count: Cell::new(0),
            holders: RefCell::new(Vec::with_capacity(WRITE_PERMITS)),
            stalled: RefCell::new(Vec::new()),
            reap_epoch: Cell::new(0),
            reaper_running: Cell::new(false),
            reaper_waker: Cell::new(None),
            batches: RefCell::new(Vec::new()),
            meter: crate::metering::sender().map(|tx| meter::WorkerMeter::new(id, tx)),
            sender: None,
            ended_in: RefCell::new(Vec::new()),
        }
    }

    /// A worker whose fan-out submits its streams' sends itself
    /// ([`sender`]); on a kernel without what that needs, one whose stream
    /// tasks write (logged once).
    pub fn with_send_ring(id: usize, hub: Arc<Hub>, counts: Arc<NodeCounts>) -> Worker {
        let mut w = Worker::new(id, hub, counts);
        let max_streams = u32::try_from(w.hub.settings().max_connections).unwrap_or(u32::MAX);
        match sender::Sender::new(max_streams) {
            Ok(s) => {
                if id == 0 {
                    tracing::info!(
                        fixed_files = s.fixed_files(),
                        "stream sends on the workers' own io_uring"
                    );
                }
                w.sender = Some(s);
            }
            Err(e) => {
                if id == 0 {
                    tracing::warn!(error = %e, "no send ring; stream tasks write");
                }
            }
        }
        w
    }

    /// Whether the worker submits its streams' sends itself.
    pub fn has_send_ring(&self) -> bool {
        self.sender.is_some()
    }

    /// An empty write batch from the pool (allocated only while the pool is
    /// cold: only writes in flight, at most `WRITE_PERMITS` or one send
    /// ring submit, and stalled ones hold one).
    pub fn take_batch(&self) -> Box<FrameBatch> {
        self.batches.borrow_mut().pop().unwrap_or_default()
    }
    /// Gives a batch back once its write has ended.
    pub fn return_batch(&self, batch: Box<FrameBatch>) {
        if batch.is_empty() {
            self.batches.borrow_mut().push(batch);
        }
    }
    /// The stream settings in force.
    pub fn stream(&self) -> StreamSettings {
        self.stream.get()
    }
    pub fn is_draining(&self) -> bool {
        self.draining_since.get().is_some()
    }
    /// Takes the topics whose rings advanced from the inbox and fans out.
    pub fn on_inbox(&self) {
        let inbox = self.hub.inbox(self.id);
        while let Some(topic) = inbox.pop() {
            topic.dequeued(self.id);
            self.advance(&topic);
        }
        if inbox.shutdown_requested() && !self.is_draining() {
            self.start_drain();
        }
    }
    /// Tells every stream to reconnect (reason `shutdown`), jittered.
    fn start_drain(&self) {
        let now = self.now();
        self.draining_since.set(Some(now));
        let groups = std::mem::take(&mut *self.groups.borrow_mut());
        for (_, tg) in groups {
            for m in tg.members() {
                let retry = jittered_retry(self.stream().retry_ms);
                self.close(
                    m,
                    Rc::new(sse::reconnect_frame(ReconnectReason::Shutdown, retry)),
                    now,
                    CloseReason::Shutdown,
                );
            }
            for cg in &tg.cadences {
                tg.topic.remove_interest(self.id, cg.cadence);
            }
        }
    }
    /// Applies a reloaded configuration to this worker's streams, on its
    /// own thread (`server::reload` calls it): `stream` is in force from
    /// now on for every stream (limits count from each stream's start;
    /// `max_events` is checked at the stream's next update), and `decide`
    /// says, for every open stream by its topic and [`StreamAuth`], whether
    /// it goes on (with its indices into the new configuration), is told to
    /// reconnect (reason `reload`, jittered retry) or ends with a frame.
    /// Cold: once per reload; streams that go on are not touched otherwise.
    pub fn reload(
        &self,
        stream: StreamSettings,
        mut decide: impl FnMut(&Topic, StreamAuth) -> Verdict,
    ) -> Reloaded {
        self.stream.set(stream);
        let max_duration_s = u32::try_from(stream.max_duration.as_secs()).unwrap_or(u32::MAX);
        {
            let mut f = self.frames.borrow_mut();
            f.timeout = Rc::new(sse::timeout_frame(max_duration_s));
            f.limit = Rc::new(sse::limit_frame(stream.max_events));
        }
        let now = self.now();
        let mut done = Reloaded::default();
        let groups = self.groups.borrow();
        for tg in groups.values() {
            for m in tg.members() {
                if m.state() != SubState::Open {
                    continue;
                }
                match decide(&tg.topic, m.auth()) {
                    Verdict::Keep(auth) => {
                        m.set_auth(auth);
                        m.set_max_duration(max_duration_s);
                        done.kept += 1;
                    }
                    Verdict::Reconnect => {
                        let retry = jittered_retry(stream.retry_ms);
                        let f = sse::reconnect_frame(ReconnectReason::Reload, retry);
                        self.close(m, Rc::new(f), now, CloseReason::Reload);
                        done.reconnected += 1;
                    }
                    Verdict::End(frame) => {
                        self.close(m, frame, now, CloseReason::Error);
                        done.ended += 1;
                    }
                }
            }
        }
        done
    }

    /// The worker stops: usage records for the streams it still has.
    pub fn finish_metering(&self) {
        if let Some(m) = &self.meter {
            m.finish();
        }
    }
    /// True once a draining worker may stop.
    pub fn drained(&self) -> bool {
        match self.draining_since.get() {
            Some(since) => {
                self.streams.get() == 0
                    || self.clock().0 >= since.saturating_add(secs_to_ms(DRAIN_GRACE_S))
            }
            None => false,
        }
    }
}

/// What a reload does to one stream ([`Worker::reload`]).
pub enum Verdict {
    /// It goes on, with these indices into the new configuration.
    Keep(StreamAuth),
    /// `event: reconnect`, reason `reload`, with a jittered retry; then it
    /// closes.
    Reconnect,
    /// This closing frame (an `event: error`), then it closes.
    End(Frame),
}

/// What a reload did to one worker's open streams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    pub kept: usize,
    pub reconnected: usize,
    pub ended: usize,
}

/// A frame from bytes built for one connection.
pub fn frame(bytes: Bytes) -> Frame {
    Rc::new(bytes)
}
