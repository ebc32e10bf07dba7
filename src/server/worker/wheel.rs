//! Time on a worker: its millisecond clock and the timer wheel that sends
//! heartbeats, ends streams at `max_duration_s` and aborts closing streams
//! after their grace, ticked every `TICK_MS`. Streams are bucketed by their
//! next deadline, never scanned; one shared heartbeat frame per second.
//!
//! Timers are never early: events are stamped with the clock rounded up,
//! deadlines checked against it rounded down. Tests inject the clock
//! ([`Worker::set_clock`]).

use std::rc::Rc;
use std::time::Duration;

use super::Worker;
use super::subscriber::{SubState, Subscriber};
use crate::server::access::CloseReason;
use crate::sse;
use crate::time::unix_secs;

/// Milliseconds between two ticks of the timer wheel: how late (never how
/// early) a heartbeat or a closing deadline may fire.
pub const TICK_MS: u64 = 100;
/// Slots of the timer wheel. Any number works (an entry seen before its
/// time goes back in); more slots than the longest wait (heartbeat_s 30 s =
/// 300 ticks) means an entry is looked at once, when due.
pub(super) const WHEEL_SLOTS: usize = 512;

impl Worker {
    /// The worker's clock, in ms since it started, rounded up: what stamps
    /// an event (a stream's start, a write), so that a deadline counted from
    /// it never comes early.
    pub fn now(&self) -> u64 {
        self.clock().1
    }
    /// The clock rounded down and rounded up (equal when injected).
    pub(super) fn clock(&self) -> (u64, u64) {
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
    pub(super) fn until_next_tick(&self) -> Duration {
        let next = Duration::from_millis((self.ticked.get() + 1).saturating_mul(TICK_MS));
        next.saturating_sub(self.origin.elapsed())
    }
    /// Puts a new subscriber on the timer wheel.
    pub fn schedule(&self, sub: &Rc<Subscriber>) {
        self.put(sub.clone(), sub.next_due());
    }
    /// Files `sub` under the first tick at or after `due_ms` (and after the
    /// last tick processed, whose slot was already taken).
    pub(super) fn put(&self, sub: Rc<Subscriber>, due_ms: u64) {
        let at = due_ms.div_ceil(TICK_MS).max(self.ticked.get() + 1);
        self.wheel.borrow_mut()[(at % WHEEL_SLOTS as u64) as usize].push(sub);
    }
    /// Runs every wheel tick due by the clock (several when the worker was
    /// late): heartbeats, max durations, closing grace; and once a second
    /// the group sweep, the metrics and the usage folds.
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
        if let Some(s) = &self.sender {
            s.reap(self);
        }
        let second = now / 1000;
        if second != self.second.get() {
            self.second.set(second);
            self.close_stalled(now);
            self.sweep_groups();
            self.counters.flush();
            if let Some(m) = &self.meter {
                m.tick();
            }
        }
    }
    /// One tick's slot. `now` is the clock rounded down (deadlines are due
    /// when it reaches them), `stamp` rounded up (what a heartbeat records).
    pub(super) fn run_slot(&self, t: u64, now: u64, stamp: u64) {
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
                    if now >= sub.deadline.get() {
                        sub.close_with(timeout.clone(), stamp, CloseReason::Timeout);
                        self.kick(&sub);
                        let at = sub.close_deadline.get();
                        self.put(sub, at);
                        continue;
                    }
                    if now.saturating_sub(sub.last_write.get()) >= secs_to_ms(sub.heartbeat_s) {
                        sub.push(heartbeat.clone());
                        sub.last_write.set(stamp);
                        self.kick(&sub);
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
}

/// Ticks the wheel every `TICK_MS` on the worker's monotonic clock. A
/// wake-up that comes early or late is harmless: `tick` runs what the clock
/// says is due.
pub async fn tick_loop(w: Rc<Worker>) {
    loop {
        monoio::time::sleep(w.until_next_tick().max(Duration::from_millis(1))).await;
        w.tick();
        // The worker's heartbeat: the systemd watchdog is fed only while
        // every worker's loop turns.
        w.hub.beat(w.id, crate::time::mono_ms());
    }
}

pub(super) fn secs_to_ms(s: u32) -> u64 {
    u64::from(s) * 1000
}
