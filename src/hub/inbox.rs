//! One worker's inbox: the topics whose rings advanced, the wake-up of the
//! worker's fan-out task, a shutdown flag and a reload wake-up.
//!
//! Hot: a publisher pushes a topic and wakes the worker once per publish
//! per worker (never per connection); the worker pops topics. Lock-free
//! (a `SegQueue` and atomics); never blocks either side.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use crossbeam_queue::SegQueue;

use super::Topic;

/// A wake-up from another thread: a flag, and the waker of the one task
/// that waits for it.
pub(super) struct Signal {
    pub(super) flag: AtomicBool,
    pub(super) waker: Mutex<Option<Waker>>,
}

impl Signal {
    pub(super) fn new() -> Signal {
        Signal {
            flag: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    pub(super) fn notify(&self) {
        // Release pairs with the Acquire swap in `poll`: the task that sees
        // the flag also sees what was written before the notify.
        if !self.flag.swap(true, Ordering::Release)
            && let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            w.wake();
        }
    }

    pub(super) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        if self.flag.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// One worker's inbox: topics whose rings advanced, and a waker; the
/// shutdown flag; and a second wake-up for configuration reloads, which a
/// cold task of the worker waits on (`server::reload`), apart from the
/// fan-out.
pub struct Inbox {
    pub(super) topics: SegQueue<Arc<Topic>>,
    pub(super) ready: Signal,
    pub(super) shutdown: AtomicBool,
    pub(super) reload: Signal,
}

impl Inbox {
    pub(super) fn new() -> Inbox {
        Inbox {
            topics: SegQueue::new(),
            ready: Signal::new(),
            shutdown: AtomicBool::new(false),
            reload: Signal::new(),
        }
    }

    pub(super) fn notify(&self) {
        self.ready.notify();
    }

    /// Ready when something was queued or shutdown was asked since the last
    /// ready poll.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.ready.poll(cx)
    }

    /// Ready when a reload was published since the last ready poll.
    pub fn poll_reload(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.reload.poll(cx)
    }

    pub fn pop(&self) -> Option<Arc<Topic>> {
        self.topics.pop()
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}
