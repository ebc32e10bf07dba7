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
//! allocation, no lock, no syscall per connection per event. Heartbeats, max-duration and
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

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::Keys;
use crate::config::Settings;
use crate::hub::{Filter, Hub, Read, Start, Topic};
use crate::metrics::WorkerCounters;
use crate::server::access::CloseReason;
use crate::server::iovec::{Frame, FrameBatch};
use crate::sse::{self, ReconnectReason};
use crate::time::{unix_millis, unix_secs};

/// Most bytes queued on one connection before it is a slow consumer.
pub const MAX_QUEUED_BYTES: usize = 1 << 20;
/// Seconds a closing connection gets to flush its last frames.
pub const CLOSE_GRACE_S: u32 = 5;
/// Seconds a draining worker waits for its streams to flush and close.
pub const DRAIN_GRACE_S: u32 = 5;
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
/// `write_since` of a stream with no write in flight.
const NOT_WRITING: u64 = u64::MAX;
/// Milliseconds between two ticks of the timer wheel: how late (never how
/// early) a heartbeat or a closing deadline may fire.
pub const TICK_MS: u64 = 100;
/// Slots of the timer wheel. Any number works (an entry seen before its
/// time goes back in); more slots than the longest wait (heartbeat_s 30 s =
/// 300 ticks) means an entry is looked at once, when due.
const WHEEL_SLOTS: usize = 512;

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

/// The worker-side half of one SSE connection, shared (`Rc`) between its
/// group, the timer wheel and the connection task.
pub struct Subscriber {
    queue: RefCell<VecDeque<Frame>>,
    queued_bytes: Cell<usize>,
    waker: Cell<Option<Waker>>,
    state: Cell<SubState>,
    events: Cell<u32>,
    /// Worker clock (ms) of the last frame queued: silence counts from here.
    last_write: Cell<u64>,
    /// Worker clock (ms) at which `max_duration_s` is reached (`u64::MAX`:
    /// never).
    deadline: u64,
    /// Worker clock (ms) after which a closing connection is aborted.
    close_deadline: Cell<u64>,
    heartbeat_s: u32,
    /// Holds one of the worker's write permits.
    permit: Cell<bool>,
    /// Waiting in the worker's permit queue, or writing: the fan-out need
    /// not wake it (it looks at its queue when the write ends).
    busy: Cell<bool>,
    /// The permit reaper's epoch when this stream took its permit.
    permit_epoch: Cell<u32>,
    /// Worker tick at which its current write began (`NOT_WRITING`: none).
    /// A write still in flight `slow_consumer_s` later means the socket has
    /// not drained for that long.
    write_since: Cell<u64>,
    /// The key whose `max_connections` this stream counts against.
    pub key: Option<usize>,
    /// A raw-tier stream: waits for write permits ahead of coalesced ones.
    urgent: bool,
    /// Its tier (index into `Settings::tiers`), for metrics and logs.
    tier: usize,
    /// Worker clock (ms) when it started.
    started: u64,
    /// Bytes written to its socket.
    bytes: Cell<u64>,
    /// Why it is closing; the first reason set wins.
    close_reason: Cell<Option<CloseReason>>,
}

impl Subscriber {
    /// A stream starting at `now` ([`Worker::now`]).
    pub fn new(
        now: u64,
        heartbeat_s: u32,
        max_duration_s: u32,
        key: Option<usize>,
        urgent: bool,
    ) -> Subscriber {
        let deadline = if max_duration_s == 0 {
            u64::MAX
        } else {
            now.saturating_add(secs_to_ms(max_duration_s))
        };
        Subscriber {
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            waker: Cell::new(None),
            state: Cell::new(SubState::Open),
            events: Cell::new(0),
            last_write: Cell::new(now),
            deadline,
            close_deadline: Cell::new(u64::MAX),
            heartbeat_s,
            permit: Cell::new(false),
            busy: Cell::new(false),
            permit_epoch: Cell::new(0),
            write_since: Cell::new(NOT_WRITING),
            key,
            urgent,
            tier: 0,
            started: now,
            bytes: Cell::new(0),
            close_reason: Cell::new(None),
        }
    }

    /// The same stream, of tier `tier` (index into `Settings::tiers`).
    pub fn with_tier(mut self, tier: usize) -> Subscriber {
        self.tier = tier;
        self
    }

    pub fn tier(&self) -> usize {
        self.tier
    }

    /// Worker clock (ms) when the stream started.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Counts bytes written to the socket.
    pub fn wrote(&self, n: usize) {
        self.bytes.set(self.bytes.get().saturating_add(n as u64));
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get()
    }

    /// Records why the stream ends, unless a reason is already recorded.
    pub fn set_close_reason(&self, reason: CloseReason) {
        if self.close_reason.get().is_none() {
            self.close_reason.set(Some(reason));
        }
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

    fn wake(&self) {
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
    fn next_due(&self) -> u64 {
        match self.state.get() {
            SubState::Open => self
                .last_write
                .get()
                .saturating_add(secs_to_ms(self.heartbeat_s))
                .min(self.deadline),
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

/// Subscribers that share one frame: same topic, cadence and filter.
struct FilterGroup {
    filter: Option<Rc<Filter>>,
    members: Vec<Rc<Subscriber>>,
}

/// The worker's cursor into one ring of a topic, and the groups reading it.
struct CadenceGroup {
    cadence: usize,
    cursor: u64,
    groups: Vec<FilterGroup>,
}

/// A worker's subscribers of one topic.
struct TopicGroups {
    topic: Arc<Topic>,
    cadences: Vec<CadenceGroup>,
}

impl TopicGroups {
    /// Drops closed members and emptied groups (and worker `w`'s interest in
    /// cadences left without any); true when none is left.
    fn sweep(&mut self, w: usize) -> bool {
        let topic = &self.topic;
        self.cadences.retain_mut(|cg| {
            cg.groups.retain_mut(|g| {
                g.members.retain(|m| m.state.get() == SubState::Open);
                !g.members.is_empty()
            });
            if cg.groups.is_empty() {
                topic.remove_interest(w, cg.cadence);
            }
            !cg.groups.is_empty()
        });
        self.cadences.is_empty()
    }

    fn members(&self) -> impl Iterator<Item = &Rc<Subscriber>> {
        self.cadences
            .iter()
            .flat_map(|cg| cg.groups.iter().flat_map(|g| g.members.iter()))
    }
}

/// Frames built once per worker and shared by all its connections.
struct SharedFrames {
    heartbeat: Frame,
    timeout: Frame,
    limit: Frame,
}

pub struct Worker {
    pub id: usize,
    /// Serves the admin listener (`server::admin`): its endpoints only, no
    /// streams, no fan-out.
    pub admin: bool,
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    pub keys: Arc<Keys>,
    groups: RefCell<HashMap<usize, TopicGroups>>,
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
    /// Refused connections being answered (`server::refuse`).
    pub refusing: Cell<usize>,
    /// This worker's connections that are not streams, by address.
    pub pending_by_ip: crate::server::limits::PendingByIp,
    /// Empty write batches, kept for the next writer. Boxed: the box is
    /// what a write hands to the kernel and gets back, so the pool keeps it.
    #[allow(clippy::vec_box)]
    batches: RefCell<Vec<Box<FrameBatch>>>,
}

fn topic_key(topic: &Arc<Topic>) -> usize {
    Arc::as_ptr(topic) as usize
}

impl Worker {
    pub fn new(id: usize, hub: Arc<Hub>, keys: Arc<Keys>) -> Worker {
        let settings = hub.settings().clone();
        let unix_s = unix_secs();
        let frames = SharedFrames {
            heartbeat: Rc::new(sse::heartbeat(unix_s)),
            timeout: Rc::new(sse::timeout_frame(settings.max_duration_s)),
            limit: Rc::new(sse::limit_frame(settings.max_events)),
        };
        let counters = WorkerCounters::new(id, &settings);
        Worker {
            id,
            admin: false,
            hub,
            settings,
            keys,
            groups: RefCell::new(HashMap::new()),
            wheel: RefCell::new((0..WHEEL_SLOTS).map(|_| Vec::new()).collect()),
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
            refusing: Cell::new(0),
            pending_by_ip: Default::default(),
            batches: RefCell::new(Vec::new()),
        }
    }

    /// An empty write batch from the pool (allocated only while the pool is
    /// cold: there are never more than `WRITE_PERMITS` in use).
    pub fn take_batch(&self) -> Box<FrameBatch> {
        self.batches.borrow_mut().pop().unwrap_or_default()
    }

    /// Gives a batch back once its write has ended.
    pub fn return_batch(&self, batch: Box<FrameBatch>) {
        if batch.is_empty() {
            self.batches.borrow_mut().push(batch);
        }
    }

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
    fn take_free_permit(&self, sub: &Rc<Subscriber>) -> bool {
        let free = self.permits.get() > 0
            && self.permit_queues[0].borrow().is_empty()
            && (sub.urgent || self.permit_queues[1].borrow().is_empty());
        if free {
            self.permits.set(self.permits.get() - 1);
            self.grant(sub);
        }
        free
    }

    /// Gives `sub` a permit (taken from the pool or passed on).
    fn grant(&self, sub: &Rc<Subscriber>) {
        sub.permit.set(true);
        sub.write_since.set(self.now());
        sub.permit_epoch.set(self.reap_epoch.get());
        self.holders.borrow_mut().push(sub.clone());
    }

    fn wait_for_permit(&self, sub: &Rc<Subscriber>) {
        let class = usize::from(!sub.urgent);
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
    fn nudge(&self, sub: &Rc<Subscriber>) {
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

    fn drop_holder(&self, sub: &Subscriber) {
        let mut holders = self.holders.borrow_mut();
        if let Some(i) = holders.iter().position(|h| std::ptr::eq(&**h, sub)) {
            holders.swap_remove(i);
        }
    }

    /// Hands a free permit to the first live waiter, else back to the pool.
    fn pass_permit(&self) {
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
    fn reap_stalled_permits(&self) -> bool {
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

    /// The worker's clock, in ms since it started, rounded up: what stamps
    /// an event (a stream's start, a write), so that a deadline counted from
    /// it never comes early.
    pub fn now(&self) -> u64 {
        self.clock().1
    }

    /// The clock rounded down and rounded up (equal when injected).
    fn clock(&self) -> (u64, u64) {
        if let Some(ms) = self.manual_clock.get() {
            return (ms, ms);
        }
        let d = self.origin.elapsed();
        let floor = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let ceil = if d.subsec_nanos().is_multiple_of(1_000_000) {
            floor
        } else {
            floor.saturating_add(1)
        };
        (floor, ceil)
    }

    /// Replaces the monotonic clock by `ms` from now on (tests drive the
    /// wheel with it and [`Worker::tick`], without sleeping).
    pub fn set_clock(&self, ms: u64) {
        self.manual_clock.set(Some(ms));
    }

    /// How long until the wheel's next tick is due.
    fn until_next_tick(&self) -> Duration {
        let next = Duration::from_millis((self.ticked.get() + 1).saturating_mul(TICK_MS));
        next.saturating_sub(self.origin.elapsed())
    }

    pub fn is_draining(&self) -> bool {
        self.draining_since.get().is_some()
    }

    /// Adds a subscriber to the group of its topic, cadence and filter, and
    /// returns how it starts. The caller queues the start frames before
    /// yielding, so no live frame can come between them.
    pub fn subscribe(
        &self,
        topic: &Arc<Topic>,
        cadence: usize,
        filter: Option<Rc<Filter>>,
        sub: &Rc<Subscriber>,
        last_id: Option<u64>,
    ) -> Start {
        topic.add_interest(self.id, cadence);
        loop {
            let (start, pos) = topic.start(cadence, filter.as_deref(), last_id);
            // Bring the cadence's cursor to `pos` so the new member sees
            // exactly the frames after its start.
            self.advance_cadence(topic, cadence, pos);
            let mut groups = self.groups.borrow_mut();
            let tg = groups
                .entry(topic_key(topic))
                .or_insert_with(|| TopicGroups {
                    topic: topic.clone(),
                    cadences: Vec::new(),
                });
            let cg = match tg.cadences.iter().position(|c| c.cadence == cadence) {
                Some(i) => &mut tg.cadences[i],
                None => {
                    tg.cadences.push(CadenceGroup {
                        cadence,
                        cursor: pos,
                        groups: Vec::new(),
                    });
                    tg.cadences.last_mut().expect("just pushed")
                }
            };
            if cg.cursor == pos {
                match cg.groups.iter_mut().find(|g| g.filter == filter) {
                    Some(g) => g.members.push(sub.clone()),
                    None => cg.groups.push(FilterGroup {
                        filter,
                        members: vec![sub.clone()],
                    }),
                }
                return start;
            }
            // The cadence resynchronised past `pos` (it lagged a full
            // ring): take a newer start.
        }
    }

    /// Delivers every new frame of every ring of `topic` to this worker's
    /// subscribers of it.
    pub fn advance(&self, topic: &Arc<Topic>) {
        let mut groups = self.groups.borrow_mut();
        let Some(tg) = groups.get_mut(&topic_key(topic)) else {
            return;
        };
        for cg in tg.cadences.iter_mut() {
            self.advance_group(topic, cg, u64::MAX);
        }
    }

    fn advance_cadence(&self, topic: &Arc<Topic>, cadence: usize, upto: u64) {
        let mut groups = self.groups.borrow_mut();
        let Some(tg) = groups.get_mut(&topic_key(topic)) else {
            return;
        };
        if let Some(cg) = tg.cadences.iter_mut().find(|c| c.cadence == cadence) {
            self.advance_group(topic, cg, upto);
        }
    }

    /// Delivers the frames of one ring below position `upto`.
    fn advance_group(&self, topic: &Topic, cg: &mut CadenceGroup, upto: u64) {
        let Some(ring) = topic.ring(cg.cadence) else {
            return;
        };
        let now = self.now();
        let max_events = self.settings.max_events;
        let tail = ring.tail().min(upto);
        if cg.cursor >= tail {
            return;
        }
        self.counters.ring_backlog(tail - cg.cursor);
        let now_unix = unix_millis();
        while cg.cursor < tail {
            match ring.read(cg.cursor) {
                Read::Frame(entry) => {
                    cg.cursor += 1;
                    let mut shared: Option<Frame> = None;
                    let mut delivered = 0;
                    for g in cg.groups.iter_mut() {
                        let frame = match &g.filter {
                            None => shared
                                .get_or_insert_with(|| Rc::new(entry.frame.clone()))
                                .clone(),
                            Some(f) => match topic.filtered_frame(&entry, Some(f)) {
                                Some(bytes) => Rc::new(bytes),
                                None => continue,
                            },
                        };
                        delivered += self.fan_out(&mut g.members, &frame, now, max_events);
                    }
                    if delivered > 0 {
                        self.counters.fanned_out(
                            cg.cadence,
                            now_unix.saturating_sub(entry.ts_ms),
                            entry.frame.len(),
                        );
                    }
                }
                Read::Lagged => {
                    // The worker fell a full ring behind: every member gets a
                    // fresh initial state and the cadence continues from it.
                    let filters: Vec<Option<&Filter>> =
                        cg.groups.iter().map(|g| g.filter.as_deref()).collect();
                    let (states, pos) = topic.initial_states(cg.cadence, &filters);
                    for (g, state) in cg.groups.iter().zip(states) {
                        let frame: Frame = Rc::new(state);
                        for m in &g.members {
                            self.queue(m, &frame, now);
                            self.nudge(m);
                        }
                    }
                    cg.cursor = pos;
                    self.counters
                        .lag_resyncs
                        .set(self.counters.lag_resyncs.get() + 1);
                    break;
                }
                Read::Empty => break,
            }
        }
    }

    /// Queues one update frame on every member; drops members that are gone.
    fn fan_out(
        &self,
        members: &mut Vec<Rc<Subscriber>>,
        frame: &Frame,
        now: u64,
        max_events: u32,
    ) -> u64 {
        let mut delivered = 0;
        let mut i = 0;
        while i < members.len() {
            let m = &members[i];
            if m.state.get() != SubState::Open {
                members.swap_remove(i);
                continue;
            }
            if self.queue(m, frame, now) {
                delivered += 1;
                self.counters.delivered(m.tier);
                let n = m.events.get() + 1;
                m.events.set(n);
                if max_events != 0 && n >= max_events {
                    let limit = self.frames.borrow().limit.clone();
                    self.close(m, limit, now, CloseReason::Limit);
                }
            }
            self.nudge(m);
            i += 1;
        }
        delivered
    }

    /// Queues a frame on one subscriber, or tells a slow one to reconnect.
    fn queue(&self, m: &Rc<Subscriber>, frame: &Frame, now: u64) -> bool {
        // A frame alone always fits; past the bound with frames already
        // waiting, the client is not keeping up.
        let queued = m.queued_bytes.get();
        if queued > 0 && queued + frame.len() > MAX_QUEUED_BYTES {
            m.queue.borrow_mut().clear();
            m.queued_bytes.set(0);
            let retry = jittered_retry(self.settings.retry_ms);
            self.close(
                m,
                Rc::new(sse::reconnect_frame(ReconnectReason::SlowConsumer, retry)),
                now,
                CloseReason::SlowConsumer,
            );
            self.counters
                .slow_consumers
                .set(self.counters.slow_consumers.get() + 1);
            return false;
        }
        m.push(frame.clone());
        m.last_write.set(now);
        true
    }

    /// Queues a closing frame on an open stream and files it under its close
    /// deadline (its wheel entry may be as far as a heartbeat away).
    fn close(&self, m: &Rc<Subscriber>, frame: Frame, now: u64, reason: CloseReason) {
        if m.state.get() == SubState::Open {
            m.close_with(frame, now, reason);
            self.put(m.clone(), m.close_deadline.get());
        }
    }

    /// Puts a new subscriber on the timer wheel.
    pub fn schedule(&self, sub: &Rc<Subscriber>) {
        self.put(sub.clone(), sub.next_due());
    }

    /// Files `sub` under the first tick at or after `due_ms` (and after the
    /// last tick processed, whose slot was already taken).
    fn put(&self, sub: Rc<Subscriber>, due_ms: u64) {
        let at = due_ms.div_ceil(TICK_MS).max(self.ticked.get() + 1);
        self.wheel.borrow_mut()[(at % WHEEL_SLOTS as u64) as usize].push(sub);
    }

    /// Runs every wheel tick due by the clock (several when the worker was
    /// late): heartbeats, max durations, closing grace; and once a second
    /// the group sweep and the metrics.
    pub fn tick(&self) {
        let (now, stamp) = self.clock();
        let target = now / TICK_MS;
        let last = self.ticked.get();
        if target > last {
            let unix_s = unix_secs();
            if unix_s != self.heartbeat_unix_s.get() {
                self.heartbeat_unix_s.set(unix_s);
                self.frames.borrow_mut().heartbeat = Rc::new(sse::heartbeat(unix_s));
            }
            // Past a whole turn of the wheel, one turn visits every slot.
            let first = (last + 1).max(target.saturating_sub(WHEEL_SLOTS as u64 - 1));
            for t in first..=target {
                self.ticked.set(t);
                self.run_slot(t, now, stamp);
            }
        }
        let second = now / 1000;
        if second != self.second.get() {
            self.second.set(second);
            self.close_stalled(now);
            self.sweep_groups();
            self.counters.flush();
        }
    }

    /// One tick's slot. `now` is the clock rounded down (deadlines are due
    /// when it reaches them), `stamp` rounded up (what a heartbeat records).
    fn run_slot(&self, t: u64, now: u64, stamp: u64) {
        let (heartbeat, timeout) = {
            let f = self.frames.borrow();
            (f.heartbeat.clone(), f.timeout.clone())
        };
        let slot = (t % WHEEL_SLOTS as u64) as usize;
        let mut due = std::mem::take(&mut self.wheel.borrow_mut()[slot]);
        for sub in due.drain(..) {
            match sub.state.get() {
                SubState::Closed => {}
                // The connection task closes as soon as it sees Abort.
                SubState::Abort => sub.wake(),
                SubState::Closing => {
                    if now >= sub.close_deadline.get() {
                        sub.state.set(SubState::Abort);
                        sub.wake();
                    } else {
                        let at = sub.close_deadline.get();
                        self.put(sub, at);
                    }
                }
                SubState::Open => {
                    if now >= sub.deadline {
                        sub.close_with(timeout.clone(), stamp, CloseReason::Timeout);
                        let at = sub.close_deadline.get();
                        self.put(sub, at);
                        continue;
                    }
                    if now.saturating_sub(sub.last_write.get()) >= secs_to_ms(sub.heartbeat_s) {
                        sub.push(heartbeat.clone());
                        sub.last_write.set(stamp);
                        sub.wake();
                    }
                    let at = sub.next_due();
                    self.put(sub, at);
                }
            }
        }
        // Give the emptied Vec (and its capacity) back to its slot.
        let mut wheel = self.wheel.borrow_mut();
        if wheel[slot].is_empty() {
            wheel[slot] = due;
        }
    }

    /// Closes streams whose socket has not drained for `slow_consumer_s`:
    /// a write (with a permit, or stalled without one) still in flight that
    /// long after it began (its start stamped rounded up, `now` rounded
    /// down: never early; checked once a second, so up to a second late).
    /// Their socket is full, so no closing frame could reach them; the close
    /// is counted as a slow consumer.
    fn close_stalled(&self, now: u64) {
        let limit = u64::from(self.settings.slow_consumer_s) * 1000;
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

    /// Drops closed members of idle groups, and groups left empty.
    fn sweep_groups(&self) {
        let id = self.id;
        self.groups.borrow_mut().retain(|_, tg| !tg.sweep(id));
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
                let retry = jittered_retry(self.settings.retry_ms);
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

/// `retry_ms` spread by ±25% so that reconnects spread out.
pub fn jittered_retry(retry_ms: u32) -> u32 {
    let spread = retry_ms / 4;
    retry_ms - spread + fastrand::u32(0..=spread * 2)
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

/// Fans out whenever the hub queues a topic for this worker.
pub async fn fanout_loop(w: Rc<Worker>) {
    let inbox = w.hub.inbox(w.id);
    loop {
        poll_fn(|cx| inbox.poll_ready(cx)).await;
        w.on_inbox();
    }
}

/// Ticks the wheel every `TICK_MS` on the worker's monotonic clock. A
/// wake-up that comes early or late is harmless: `tick` runs what the clock
/// says is due. Each tick is the worker's heartbeat (`Hub::beat`): the
/// systemd watchdog is fed only while every worker's loop turns.
pub async fn tick_loop(w: Rc<Worker>) {
    loop {
        monoio::time::sleep(w.until_next_tick().max(Duration::from_millis(1))).await;
        w.tick();
        w.hub.beat(w.id, crate::time::mono_ms());
    }
}

fn secs_to_ms(s: u32) -> u64 {
    u64::from(s) * 1000
}

/// A frame from bytes built for one connection.
pub fn frame(bytes: Bytes) -> Frame {
    Rc::new(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Row;

    fn worker(extra: &str) -> (Rc<Worker>, Arc<Hub>) {
        let s = Settings::from_toml(&format!(
            "[server]\nworkers = 1\nreplay = 16\n{extra}\n[[topics]]\npattern = \"*\"\n"
        ))
        .unwrap();
        let keys = Arc::new(Keys::new(&s.keys));
        let hub = Arc::new(Hub::new(Arc::new(s)));
        (Rc::new(Worker::new(0, hub.clone(), keys)), hub)
    }

    fn drain(sub: &Subscriber) -> Vec<String> {
        sub.queued_bytes.set(0);
        sub.queue
            .borrow_mut()
            .drain(..)
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
            .collect()
    }

    fn publish(hub: &Hub, t: &Arc<Topic>, n: u32) -> u64 {
        hub.publish(
            t,
            vec![Row {
                json: Bytes::from(format!("{{\"n\":{n}}}")),
                key: None,
                fields: Box::new([]),
            }],
        )
    }

    #[test]
    fn members_get_every_frame_once_in_order() {
        let (w, hub) = worker("");
        let t = hub.topic("a").unwrap();
        let subs: Vec<_> = (0..3)
            .map(|_| Rc::new(Subscriber::new(0, 15, 0, None, true)))
            .collect();
        for s in &subs {
            assert!(matches!(w.subscribe(&t, 0, None, s, None), Start::Fresh(_)));
        }
        let ids: Vec<u64> = (0..5).map(|n| publish(&hub, &t, n)).collect();
        w.on_inbox();
        for s in &subs {
            let frames = drain(s);
            assert_eq!(frames.len(), 5);
            for (f, id) in frames.iter().zip(&ids) {
                assert!(f.contains(&format!("\nid: {id}\n")), "{f}");
            }
        }
    }

    #[test]
    fn a_filter_group_shares_one_rejoined_frame_and_skips_empty_ones() {
        let (w, hub) = worker("[[topics]]\npattern = \"f/*\"\nfilters = { books = \"book\" }");
        let t = hub.topic("f/a").unwrap();
        let filter = |csv: &str| {
            Some(Rc::new(
                Filter::new(vec![crate::hub::filter::Clause::parse(0, csv).unwrap()]).unwrap(),
            ))
        };
        let subs: Vec<_> = (0..3)
            .map(|_| Rc::new(Subscriber::new(0, 15, 0, None, true)))
            .collect();
        // two with the same filter (values in another order), one unfiltered
        w.subscribe(&t, 0, filter("a,b"), &subs[0], None);
        w.subscribe(&t, 0, filter("b,a"), &subs[1], None);
        w.subscribe(&t, 0, None, &subs[2], None);
        for s in &subs {
            drain(s);
        }
        let row = |book: &str| Row {
            json: Bytes::from(format!("{{\"book\":\"{book}\"}}")),
            key: None,
            fields: Box::new([Some(book.into())]),
        };
        hub.publish(&t, vec![row("a"), row("z")]);
        hub.publish(&t, vec![row("z")]);
        w.on_inbox();
        let f0 = subs[0].queue.borrow()[0].clone();
        let f1 = subs[1].queue.borrow()[0].clone();
        assert!(Rc::ptr_eq(&f0, &f1), "one frame for the group");
        assert_eq!(
            subs[0].queue.borrow().len(),
            1,
            "the all-z update is not sent"
        );
        let text = std::str::from_utf8(&f0).unwrap();
        assert!(text.contains("\"count\":1,"), "{text}");
        assert!(text.ends_with("\"data\":[{\"book\":\"a\"}]}\n\n"), "{text}");
        assert_eq!(subs[2].queue.borrow().len(), 2, "unfiltered: both updates");
    }

    #[test]
    fn lagging_worker_resyncs_from_state() {
        let (w, hub) = worker("");
        let t = hub.topic("a").unwrap();
        let s = Rc::new(Subscriber::new(0, 15, 0, None, true));
        w.subscribe(&t, 0, None, &s, None);
        for n in 0..40 {
            publish(&hub, &t, n); // 40 > 16 ring slots, no fan-out in between
        }
        w.on_inbox();
        let frames = drain(&s);
        assert_eq!(frames.len(), 1);
        assert!(
            frames[0].starts_with("event: initial_state\n"),
            "{}",
            frames[0]
        );
        publish(&hub, &t, 99);
        w.on_inbox();
        assert_eq!(drain(&s).len(), 1);
    }

    #[test]
    fn limit_frame_after_max_events_then_nothing() {
        let (w, hub) = worker("max_events = 2");
        let t = hub.topic("a").unwrap();
        let s = Rc::new(Subscriber::new(0, 15, 0, None, true));
        w.subscribe(&t, 0, None, &s, None);
        for n in 0..4 {
            publish(&hub, &t, n);
        }
        w.on_inbox();
        let frames = drain(&s);
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert_eq!(
            frames[2],
            "event: limit\ndata: {\"type\":\"limit\",\"max_events\":2}\n\n"
        );
        assert_eq!(s.state(), SubState::Closing);
    }

    /// Sets the injected clock and runs the ticks due by it.
    fn tick_at(w: &Worker, ms: u64) {
        w.set_clock(ms);
        w.tick();
    }

    #[test]
    fn heartbeat_when_silent_and_timeout_at_max_duration() {
        let (w, hub) = worker("heartbeat_s = 2\nmax_duration_s = 5");
        w.set_clock(0);
        let t = hub.topic("a").unwrap();
        let s = Rc::new(Subscriber::new(w.now(), 2, 5, None, true));
        w.subscribe(&t, 0, None, &s, None);
        w.schedule(&s);
        tick_at(&w, 1000);
        assert!(drain(&s).is_empty());
        tick_at(&w, 2000); // silent for 2 s
        let f = drain(&s);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].starts_with(": heartbeat ") && f[0].ends_with("\n\n"),
            "{f:?}"
        );
        tick_at(&w, 3000);
        publish(&hub, &t, 1);
        w.on_inbox(); // a write at 3 s postpones the heartbeat to 5 s
        assert_eq!(drain(&s).len(), 1);
        tick_at(&w, 4000);
        assert!(drain(&s).is_empty());
        tick_at(&w, 5000); // max duration
        let f = drain(&s);
        assert_eq!(
            f,
            vec!["event: timeout\ndata: {\"type\":\"timeout\",\"max_duration_s\":5}\n\n"]
        );
    }

    /// What a subscriber got, tick by tick, while the clock runs from
    /// `from` to `to` ms in `step` ms steps.
    fn run_clock(w: &Worker, s: &Subscriber, from: u64, to: u64, step: u64) -> Vec<(u64, String)> {
        let mut got = Vec::new();
        let mut ms = from;
        while ms <= to {
            tick_at(w, ms);
            for f in drain(s) {
                let kind = if f.starts_with(": heartbeat ") {
                    "heartbeat".to_string()
                } else {
                    f.lines().next().unwrap_or("").to_string()
                };
                got.push((ms, kind));
            }
            ms += step;
        }
        got
    }

    #[test]
    fn a_stream_started_mid_second_is_not_timed_out_or_heartbeated_early() {
        let (w, hub) = worker("heartbeat_s = 1\nmax_duration_s = 2");
        let t = hub.topic("a").unwrap();
        // The worker ticked at 0.8 s; the stream starts at 0.9 s.
        tick_at(&w, 800);
        w.set_clock(900);
        let s = Rc::new(Subscriber::new(w.now(), 1, 2, None, true));
        w.subscribe(&t, 0, None, &s, None);
        w.schedule(&s);
        assert!(drain(&s).is_empty());
        let got = run_clock(&w, &s, 905, 4000, 5);
        assert_eq!(
            got,
            vec![
                (1900, "heartbeat".to_string()),
                (2900, "event: timeout".to_string())
            ],
            "a heartbeat after 1 s of silence, the timeout after 2 s, each at the first tick"
        );
        assert_eq!(s.state(), SubState::Closing);
    }

    #[test]
    fn a_write_mid_tick_postpones_the_heartbeat_by_a_whole_interval() {
        let (w, hub) = worker("heartbeat_s = 2\nmax_duration_s = 0");
        let t = hub.topic("a").unwrap();
        w.set_clock(0);
        let s = Rc::new(Subscriber::new(w.now(), 2, 0, None, true));
        w.subscribe(&t, 0, None, &s, None);
        w.schedule(&s);
        tick_at(&w, 1200);
        w.set_clock(1234);
        publish(&hub, &t, 1);
        w.on_inbox();
        assert_eq!(drain(&s).len(), 1);
        let got = run_clock(&w, &s, 1235, 5300, 1);
        assert_eq!(
            got,
            vec![
                (3300, "heartbeat".to_string()),
                (5300, "heartbeat".to_string())
            ]
        );
    }

    #[test]
    fn a_late_worker_catches_up_once_and_never_fires_early() {
        let (w, hub) = worker("heartbeat_s = 3\nmax_duration_s = 100");
        let t = hub.topic("a").unwrap();
        w.set_clock(50);
        let subs: Vec<_> = (0..3)
            .map(|_| Rc::new(Subscriber::new(w.now(), 3, 100, None, true)))
            .collect();
        for s in &subs {
            w.subscribe(&t, 0, None, s, None);
            w.schedule(s);
        }
        // The worker stalls for 10 s: one heartbeat each, not one per
        // missed interval.
        tick_at(&w, 10_000);
        for s in &subs {
            assert_eq!(drain(s).len(), 1);
        }
        // ... then for longer than a turn of the wheel: still one, and the
        // max duration fires on the first tick after it.
        tick_at(&w, 99_000);
        for s in &subs {
            assert_eq!(drain(s).len(), 1);
        }
        tick_at(&w, 100_049);
        assert!(drain(&subs[0]).is_empty(), "max duration is at 100.05 s");
        tick_at(&w, 100_100);
        for s in &subs {
            assert_eq!(
                drain(s),
                vec!["event: timeout\ndata: {\"type\":\"timeout\",\"max_duration_s\":100}\n\n"]
            );
        }
    }

    #[test]
    fn a_closing_stream_is_aborted_after_its_grace_not_before() {
        let (w, hub) = worker("max_events = 1");
        let t = hub.topic("a").unwrap();
        w.set_clock(0);
        let s = Rc::new(Subscriber::new(w.now(), 15, 0, None, true));
        w.subscribe(&t, 0, None, &s, None);
        w.schedule(&s);
        w.set_clock(250);
        publish(&hub, &t, 1);
        w.on_inbox(); // limit reached at 0.25 s: closing, 5 s of grace
        assert_eq!(s.state(), SubState::Closing);
        // the grace ends at 5.25 s: aborted on the first tick after
        let close_at = 250 + u64::from(CLOSE_GRACE_S) * 1000;
        let mut ms = 300;
        while ms < close_at + 2 * TICK_MS {
            tick_at(&w, ms);
            assert_eq!(
                s.state() == SubState::Abort,
                ms >= close_at.next_multiple_of(TICK_MS),
                "at {ms} ms"
            );
            ms += 10;
        }
    }

    #[test]
    fn raw_streams_get_permits_first_but_coalesced_ones_get_every_other() {
        let (w, _) = worker("");
        let sub = |urgent| Rc::new(Subscriber::new(0, 15, 0, None, urgent));
        let holders: Vec<_> = (0..WRITE_PERMITS).map(|_| sub(true)).collect();
        for h in &holders {
            assert!(w.acquire_write(h));
        }
        let (bulk0, raw0, bulk1, raw1) = (sub(false), sub(true), sub(false), sub(true));
        let waiting = [&bulk0, &raw0, &bulk1, &raw1];
        for s in waiting {
            assert!(!w.acquire_write(s), "no permit left");
        }
        let mut order = Vec::new();
        for h in holders.iter().take(4) {
            w.release_write(h);
            let next = (0..4)
                .find(|i| waiting[*i].permit.get() && !order.contains(i))
                .expect("the released permit went to a waiter");
            order.push(next);
        }
        // raw first, but every second permit is a coalesced turn
        assert_eq!(order, vec![1, 0, 3, 2]);
    }

    #[test]
    fn permits_held_by_writes_that_cannot_progress_go_to_waiters() {
        let (w, _) = worker("");
        let sub = || Rc::new(Subscriber::new(0, 15, 0, None, true));
        let stuck: Vec<_> = (0..WRITE_PERMITS).map(|_| sub()).collect();
        for s in &stuck {
            assert!(w.acquire_write(s));
        }
        let waiter = sub();
        assert!(!w.acquire_write(&waiter));
        // A holder keeps its permit through the reaper run after it took it
        // (its write may have just begun) ...
        assert!(w.reap_stalled_permits());
        assert!(!waiter.permit.get());
        // ... and gives it back after a whole interval without finishing.
        assert!(w.reap_stalled_permits());
        assert!(waiter.permit.get(), "the waiter got a permit");
        assert!(stuck.iter().all(|s| !s.permit.get()));
        // A stalled write that ends gives nothing back twice.
        for s in &stuck {
            w.release_write(s);
        }
        w.release_write(&waiter);
        assert_eq!(w.permits.get(), WRITE_PERMITS);
        // Nobody waits: the reaper stops.
        assert!(!w.reap_stalled_permits());
    }

    #[test]
    fn a_write_in_flight_past_slow_consumer_s_is_aborted() {
        let (w, _) = worker("slow_consumer_s = 2");
        w.set_clock(900);
        let s = Rc::new(Subscriber::new(w.now(), 15, 0, None, true));
        assert!(w.acquire_write(&s)); // its write begins at 0.9 s
        w.set_clock(2_000);
        w.tick();
        w.set_clock(2_899);
        w.tick(); // not yet 2 s
        assert_eq!(s.state(), SubState::Open);
        w.set_clock(3_000);
        w.tick(); // 2.1 s, seen at the next whole second
        assert_eq!(s.state(), SubState::Abort);
    }

    #[test]
    fn slow_consumer_is_told_to_reconnect() {
        let (w, hub) = worker("");
        let t = hub.topic("a").unwrap();
        let s = Rc::new(Subscriber::new(0, 15, 0, None, true));
        w.subscribe(&t, 0, None, &s, None);
        let big = "x".repeat(200_000);
        for _ in 0..8 {
            hub.publish(
                &t,
                vec![Row {
                    json: Bytes::from(format!("\"{big}\"")),
                    key: None,
                    fields: Box::new([]),
                }],
            );
            w.on_inbox();
        }
        let frames = drain(&s);
        assert_eq!(frames.len(), 1, "queue dropped, reconnect queued");
        assert!(
            frames[0].contains("\"reason\":\"slow_consumer\""),
            "{}",
            frames[0]
        );
        assert_eq!(s.state(), SubState::Closing);
    }
}
