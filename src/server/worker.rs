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
//! closing grace run off a timer wheel ticked once a second; connections are
//! bucketed by their next deadline, never scanned.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;

use crate::auth::Keys;
use crate::config::Settings;
use crate::hub::{Filter, Hub, Read, Start, Topic};
use crate::metrics::WorkerCounters;
use crate::server::iovec::{Frame, FrameBatch};
use crate::sse::{self, ReconnectReason};
use crate::time::unix_secs;

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
/// Slots of the timer wheel (must exceed the largest heartbeat_s, 30).
const WHEEL_SLOTS: usize = 64;

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
    last_write: Cell<u32>,
    /// Worker tick at which `max_duration_s` is reached (`u32::MAX`: never).
    deadline: u32,
    /// Worker tick after which a closing connection is aborted.
    close_deadline: Cell<u32>,
    heartbeat_s: u32,
    /// Holds one of the worker's write permits.
    permit: Cell<bool>,
    /// Waiting in the worker's permit queue, or writing: the fan-out need
    /// not wake it (it looks at its queue when the write ends).
    busy: Cell<bool>,
    /// The key whose `max_connections` this stream counts against.
    pub key: Option<usize>,
    /// A raw-tier stream: waits for write permits ahead of coalesced ones.
    urgent: bool,
}

impl Subscriber {
    pub fn new(
        now: u32,
        heartbeat_s: u32,
        max_duration_s: u32,
        key: Option<usize>,
        urgent: bool,
    ) -> Subscriber {
        let deadline = if max_duration_s == 0 {
            u32::MAX
        } else {
            now.saturating_add(max_duration_s)
        };
        Subscriber {
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            waker: Cell::new(None),
            state: Cell::new(SubState::Open),
            events: Cell::new(0),
            last_write: Cell::new(now),
            deadline,
            close_deadline: Cell::new(u32::MAX),
            heartbeat_s,
            permit: Cell::new(false),
            busy: Cell::new(false),
            key,
            urgent,
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
    pub fn close_with(&self, frame: Frame, now: u32) {
        if self.state.get() == SubState::Open {
            self.push(frame);
            self.state.set(SubState::Closing);
            self.close_deadline.set(now + CLOSE_GRACE_S);
            self.wake();
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
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    pub keys: Arc<Keys>,
    groups: RefCell<HashMap<usize, TopicGroups>>,
    wheel: RefCell<Vec<Vec<Rc<Subscriber>>>>,
    /// Seconds since the worker started (its tick count).
    now: Cell<u32>,
    frames: RefCell<SharedFrames>,
    /// Open SSE streams on this worker.
    pub streams: Cell<usize>,
    draining_since: Cell<Option<u32>>,
    pub counters: WorkerCounters,
    permits: Cell<usize>,
    /// Streams waiting for a write permit: raw-tier ones (`urgent`) first,
    /// then coalesced ones. A coalesced tick queues a write on every one of
    /// its subscribers at once; raw frames must not wait behind that burst.
    permit_queues: [RefCell<VecDeque<Rc<Subscriber>>>; 2],
    release_count: Cell<u32>,
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
        let frames = SharedFrames {
            heartbeat: Rc::new(sse::heartbeat(unix_secs())),
            timeout: Rc::new(sse::timeout_frame(settings.max_duration_s)),
            limit: Rc::new(sse::limit_frame(settings.max_events)),
        };
        Worker {
            id,
            hub,
            settings,
            keys,
            groups: RefCell::new(HashMap::new()),
            wheel: RefCell::new((0..WHEEL_SLOTS).map(|_| Vec::new()).collect()),
            now: Cell::new(0),
            frames: RefCell::new(frames),
            streams: Cell::new(0),
            draining_since: Cell::new(None),
            counters: WorkerCounters::default(),
            permits: Cell::new(WRITE_PERMITS),
            permit_queues: [RefCell::new(VecDeque::new()), RefCell::new(VecDeque::new())],
            release_count: Cell::new(0),
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
    fn take_free_permit(&self, sub: &Subscriber) -> bool {
        let free = self.permits.get() > 0
            && self.permit_queues[0].borrow().is_empty()
            && (sub.urgent || self.permit_queues[1].borrow().is_empty());
        if free {
            self.permits.set(self.permits.get() - 1);
            sub.permit.set(true);
        }
        free
    }

    fn wait_for_permit(&self, sub: &Rc<Subscriber>) {
        let class = usize::from(!sub.urgent);
        self.permit_queues[class]
            .borrow_mut()
            .push_back(sub.clone());
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
        if !sub.permit.replace(false) {
            return;
        }
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
            let mut q = self.permit_queues[class].borrow_mut();
            while let Some(next) = q.pop_front() {
                if next.state.get() != SubState::Closed {
                    next.permit.set(true);
                    next.wake();
                    return;
                }
            }
        }
        self.permits.set(self.permits.get() + 1);
    }

    pub fn now(&self) -> u32 {
        self.now.get()
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
        let now = self.now.get();
        let max_events = self.settings.max_events;
        let tail = ring.tail().min(upto);
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
                    self.counters
                        .delivered
                        .set(self.counters.delivered.get() + delivered);
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
        now: u32,
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
                let n = m.events.get() + 1;
                m.events.set(n);
                if max_events != 0 && n >= max_events {
                    let limit = self.frames.borrow().limit.clone();
                    m.close_with(limit, now);
                }
            }
            self.nudge(m);
            i += 1;
        }
        delivered
    }

    /// Queues a frame on one subscriber, or tells a slow one to reconnect.
    fn queue(&self, m: &Subscriber, frame: &Frame, now: u32) -> bool {
        // A frame alone always fits; past the bound with frames already
        // waiting, the client is not keeping up.
        let queued = m.queued_bytes.get();
        if queued > 0 && queued + frame.len() > MAX_QUEUED_BYTES {
            m.queue.borrow_mut().clear();
            m.queued_bytes.set(0);
            let retry = jittered_retry(self.settings.retry_ms);
            m.close_with(
                Rc::new(sse::reconnect_frame(ReconnectReason::SlowConsumer, retry)),
                now,
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

    /// Puts a new subscriber on the timer wheel.
    pub fn schedule(&self, sub: &Rc<Subscriber>) {
        let now = self.now.get();
        let at = (now + sub.heartbeat_s).min(sub.deadline).max(now + 1);
        self.wheel.borrow_mut()[at as usize % WHEEL_SLOTS].push(sub.clone());
    }

    /// Once a second: heartbeats, max durations, closing grace, metrics.
    pub fn tick(&self) {
        let now = self.now.get() + 1;
        self.now.set(now);
        let heartbeat: Frame = Rc::new(sse::heartbeat(unix_secs()));
        self.frames.borrow_mut().heartbeat = heartbeat.clone();
        let timeout = self.frames.borrow().timeout.clone();

        let slot = now as usize % WHEEL_SLOTS;
        let mut due = std::mem::take(&mut self.wheel.borrow_mut()[slot]);
        for sub in due.drain(..) {
            let next = match sub.state.get() {
                SubState::Closed => continue,
                SubState::Closing | SubState::Abort => {
                    if now >= sub.close_deadline.get() {
                        sub.state.set(SubState::Abort);
                        sub.wake();
                    }
                    now + 1
                }
                SubState::Open => {
                    if now >= sub.deadline {
                        sub.close_with(timeout.clone(), now);
                        now + 1
                    } else {
                        if now - sub.last_write.get() >= sub.heartbeat_s {
                            sub.push(heartbeat.clone());
                            sub.last_write.set(now);
                            sub.wake();
                        }
                        (sub.last_write.get() + sub.heartbeat_s)
                            .min(sub.deadline)
                            .max(now + 1)
                    }
                }
            };
            self.wheel.borrow_mut()[next as usize % WHEEL_SLOTS].push(sub);
        }
        // Give the emptied Vec (and its capacity) back to its slot.
        let mut wheel = self.wheel.borrow_mut();
        if wheel[slot].is_empty() {
            wheel[slot] = due;
        }
        drop(wheel);

        self.sweep_groups();
        self.counters.flush(self.streams.get());
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
        let now = self.now.get();
        self.draining_since.set(Some(now));
        let groups = std::mem::take(&mut *self.groups.borrow_mut());
        for (_, tg) in groups {
            for m in tg.members() {
                let retry = jittered_retry(self.settings.retry_ms);
                m.close_with(
                    Rc::new(sse::reconnect_frame(ReconnectReason::Shutdown, retry)),
                    now,
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
            Some(since) => self.streams.get() == 0 || self.now.get() >= since + DRAIN_GRACE_S,
            None => false,
        }
    }
}

/// `retry_ms` spread by ±25% so that reconnects spread out.
pub fn jittered_retry(retry_ms: u32) -> u32 {
    let spread = retry_ms / 4;
    retry_ms - spread + fastrand::u32(0..=spread * 2)
}

/// Fans out whenever the hub queues a topic for this worker.
pub async fn fanout_loop(w: Rc<Worker>) {
    let inbox = w.hub.inbox(w.id);
    loop {
        poll_fn(|cx| inbox.poll_ready(cx)).await;
        w.on_inbox();
    }
}

/// Ticks once a second, on the wall clock's second boundary.
pub async fn tick_loop(w: Rc<Worker>) {
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        monoio::time::sleep(Duration::from_nanos(
            1_000_000_000 - u64::from(nanos) + 1_000,
        ))
        .await;
        w.tick();
    }
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
            vec![Row::new(format!("{{\"n\":{n}}}").as_bytes(), &[], &[])],
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
        let row = |book: &str| {
            Row::new(
                format!("{{\"book\":\"{book}\"}}").as_bytes(),
                &[],
                &[Some(book)],
            )
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

    #[test]
    fn heartbeat_when_silent_and_timeout_at_max_duration() {
        let (w, hub) = worker("heartbeat_s = 2\nmax_duration_s = 5");
        let t = hub.topic("a").unwrap();
        let s = Rc::new(Subscriber::new(w.now(), 2, 5, None, true));
        w.subscribe(&t, 0, None, &s, None);
        w.schedule(&s);
        w.tick(); // 1
        assert!(drain(&s).is_empty());
        w.tick(); // 2: silent for 2 s
        let f = drain(&s);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].starts_with(": heartbeat ") && f[0].ends_with("\n\n"),
            "{f:?}"
        );
        w.tick(); // 3
        publish(&hub, &t, 1);
        w.on_inbox(); // a write at 3 postpones the heartbeat to 5
        assert_eq!(drain(&s).len(), 1);
        w.tick(); // 4
        assert!(drain(&s).is_empty());
        w.tick(); // 5: max duration
        let f = drain(&s);
        assert_eq!(
            f,
            vec!["event: timeout\ndata: {\"type\":\"timeout\",\"max_duration_s\":5}\n\n"]
        );
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
    fn slow_consumer_is_told_to_reconnect() {
        let (w, hub) = worker("");
        let t = hub.topic("a").unwrap();
        let s = Rc::new(Subscriber::new(0, 15, 0, None, true));
        w.subscribe(&t, 0, None, &s, None);
        let big = "x".repeat(200_000);
        for _ in 0..8 {
            hub.publish(
                &t,
                vec![Row::new(format!("\"{big}\"").as_bytes(), &[], &[])],
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
