//! The fan-out: a worker's subscribers grouped by topic, then cadence (one
//! ring cursor each), then filter, and the walk that queues each new ring
//! frame on every member.
//!
//! Hot: per frame, one `Rc` per filter group and one queue push per member;
//! no allocation, lock or syscall per connection per event. A cadence that
//! falls a full ring behind resynchronises every member from the state.

use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;

use super::iovec::Frame;
use super::subscriber::{SubState, Subscriber, jittered_retry};
use super::{MAX_QUEUED_BYTES, Worker};
use crate::hub::{Filter, Read, Start, Topic};
use crate::server::access::CloseReason;
use crate::sse::{self, ReconnectReason};
use crate::time::unix_millis;

/// Subscribers that share one frame: same topic, cadence and filter.
pub(super) struct FilterGroup {
    pub(super) filter: Option<Rc<Filter>>,
    pub(super) members: Vec<Rc<Subscriber>>,
}

/// The worker's cursor into one ring of a topic, and the groups reading it.
pub(super) struct CadenceGroup {
    pub(super) cadence: usize,
    pub(super) cursor: u64,
    pub(super) groups: Vec<FilterGroup>,
}

/// A worker's subscribers of one topic.
pub(super) struct TopicGroups {
    pub(super) topic: Arc<Topic>,
    pub(super) cadences: Vec<CadenceGroup>,
}

impl TopicGroups {
    /// Drops closed members and emptied groups (and worker `w`'s interest in
    /// cadences left without any); true when none is left.
    pub(super) fn sweep(&mut self, w: usize) -> bool {
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

    pub(super) fn members(&self) -> impl Iterator<Item = &Rc<Subscriber>> {
        self.cadences
            .iter()
            .flat_map(|cg| cg.groups.iter().flat_map(|g| g.members.iter()))
    }
}

/// The key of a topic in a worker's group map.
fn topic_key(topic: &Arc<Topic>) -> usize {
    Arc::as_ptr(topic) as usize
}

/// A worker's groups, by topic.
pub(super) type Groups = HashMap<usize, TopicGroups>;

impl Worker {
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
    pub(super) fn advance_cadence(&self, topic: &Arc<Topic>, cadence: usize, upto: u64) {
        let mut groups = self.groups.borrow_mut();
        let Some(tg) = groups.get_mut(&topic_key(topic)) else {
            return;
        };
        if let Some(cg) = tg.cadences.iter_mut().find(|c| c.cadence == cadence) {
            self.advance_group(topic, cg, upto);
        }
    }
    /// Delivers the frames of one ring below position `upto`.
    pub(super) fn advance_group(&self, topic: &Topic, cg: &mut CadenceGroup, upto: u64) {
        let Some(ring) = topic.ring(cg.cadence) else {
            return;
        };
        let now = self.now();
        let max_events = self.stream().max_events;
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
    pub(super) fn fan_out(
        &self,
        members: &mut Vec<Rc<Subscriber>>,
        frame: &Frame,
        now: u64,
        max_events: u32,
    ) -> u64 {
        // A pass that only reads each member's hot fields first (a field in
        // each of their cache lines, see `Subscriber`): its loads do not
        // depend on each other, so the misses of members not touched since
        // the topic's last frame overlap, where the loop below and the send
        // ring, one member after another, would wait for each in turn.
        let touched = members
            .iter()
            .filter(|m| {
                m.queued_bytes.get() < MAX_QUEUED_BYTES
                    && m.state.get() == SubState::Open
                    && m.meter.is_none()
            })
            .count();
        std::hint::black_box(touched);
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
                self.counters.delivered(m.tier());
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
    pub(super) fn queue(&self, m: &Rc<Subscriber>, frame: &Frame, now: u64) -> bool {
        // A frame alone always fits; past the bound with frames already
        // waiting, the client is not keeping up.
        let queued = m.queued_bytes.get();
        if queued > 0 && queued + frame.len() > MAX_QUEUED_BYTES {
            m.queue.borrow_mut().clear();
            m.queued_bytes.set(0);
            let retry = jittered_retry(self.stream().retry_ms);
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
    pub(super) fn close(&self, m: &Rc<Subscriber>, frame: Frame, now: u64, reason: CloseReason) {
        if m.state.get() == SubState::Open {
            m.close_with(frame, now, reason);
            self.put(m.clone(), m.close_deadline.get());
            if let Some(s) = &self.sender {
                s.ready(m);
            }
        }
    }

    /// A stream of `topic` ended: the next sweep looks at its groups.
    pub(super) fn stream_ended(&self, topic: &Arc<Topic>) {
        self.ended_in.borrow_mut().push(topic_key(topic));
    }

    /// Drops the closed members of the topics whose streams ended since the
    /// last sweep, and groups left empty (with the worker's interest in
    /// them, so the hub stops waking it for them). Topics whose streams all
    /// go on cost nothing: the fan-out drops a member that closes
    /// meanwhile. Returns the topics looked at.
    pub(super) fn sweep_groups(&self) -> usize {
        let mut ended = self.ended_in.take();
        ended.sort_unstable();
        ended.dedup();
        let mut groups = self.groups.borrow_mut();
        for key in &ended {
            if let Some(tg) = groups.get_mut(key)
                && tg.sweep(self.id)
            {
                groups.remove(key);
            }
        }
        let looked = ended.len();
        ended.clear();
        // Keep the list's capacity for the next second's ends.
        let mut slot = self.ended_in.borrow_mut();
        if slot.is_empty() {
            *slot = ended;
        }
        looked
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
