//! Stream writes the worker submits itself, on the io_uring driver: one
//! io_uring of the worker's own, its connections registered as fixed files,
//! and one `io_uring_enter` for up to [`SUBMIT_BATCH`] sends.
//!
//! Hot module, with `unsafe` (an SQE names memory the kernel reads; its
//! completion carries the subscriber as a raw `Rc`). Why: with a write per
//! stream task, each delivery cost two task polls and wake-ups, a monoio op
//! (slab entry, shared fd, waker), a write permit and an `IORING_OP_WRITEV`
//! (the file looked up, its flags read, an fsnotify): about a quarter of the
//! worker's CPU in `scripts/profile.sh` with 100 and 1,000 topics. Here the
//! fan-out queues a frame and puts the stream in a ready queue (no wake-up);
//! the send task takes the ready streams in turn, fills each one's pooled
//! batch, pushes an `IORING_OP_SEND` (one frame) or `SENDMSG` (several) on
//! the stream's fixed file, and submits them together.
//!
//! Every send carries `MSG_DONTWAIT`, so it completes inside the submit:
//! whole, short, or `EAGAIN` on a full socket; its completion is reaped right
//! after. A short or refused send hands the rest of its batch to the
//! stream's own task, which writes it with monoio (waiting for the socket to
//! drain, without a permit) and then gives the stream back. So nothing of
//! this ring is in flight between two flushes, and no completion needs a
//! wake-up of its own.
//!
//! Invariants: a stream has at most one send in flight (`Subscriber::op`,
//! its `user_data`), and its batch (the frames, iovecs and `msghdr` the SQE
//! names) stays in `Subscriber::batch` until that send completes. Every SQE's
//! `user_data` is `Rc::into_raw` of its subscriber, taken back exactly once
//! by its completion, so neither the subscriber nor its batch can go while
//! the kernel may read them. A stream is submitted only between
//! [`Sender::attach`] (as its task is spawned) and [`Sender::detach`] (as
//! its task ends, before the socket closes), and only inside
//! [`Sender::flush`], which submits before it returns: no SQE can outlive
//! the descriptor it names.
//!
//! Fairness: the raw tier's streams go first, every `BULK_TURN`-th to a
//! coalesced one (as the write permits do on the epoll driver), and one turn
//! of the send task submits at most [`TURN_SENDS`] before it yields, so a
//! fan-out to 10,000 streams does not hold up publishes and accepts.
//!
//! Slow consumers: a send that goes short marks its stream stalled (the
//! worker's `stalled` list, looked at once a second as on the permit path);
//! its task's write past `slow_consumer_s` is abandoned and the stream
//! closed.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};

use io_uring::{IoUring, Probe, opcode, squeue, types};

use super::permits::BULK_TURN;
use super::subscriber::{SubState, Subscriber};
use super::{NOT_WRITING, Worker};
use crate::server::access::CloseReason;

/// Sends submitted by one `io_uring_enter`.
pub const SUBMIT_BATCH: usize = 64;
/// Sends one turn of the send task submits before it lets the worker's other
/// tasks run (publishes, accepts, the wheel): at a few µs of kernel time per
/// loopback send, about a millisecond.
pub const TURN_SENDS: usize = 256;
/// Ready streams a send turn takes at once; with more, it first lets the
/// worker's monoio ring submit what it holds ([`send_loop`]). The write
/// permits let 32 writes go ahead of a response.
pub const GATE_ABOVE: usize = 32;
/// Submission queue entries of a worker's send ring (one submit's sends, and
/// a cancel).
const SQ_ENTRIES: u32 = 128;
/// Most fixed-file slots a worker registers (also capped by `RLIMIT_NOFILE`,
/// as the kernel requires). Streams beyond them send on their descriptor.
const MAX_FIXED_FILES: u32 = 1 << 16;
/// `Subscriber::slot` of a stream without a fixed file.
pub(super) const NO_SLOT: u32 = u32::MAX;
/// `user_data` of a cancel (its own completion is ignored; no subscriber's
/// address).
const CANCEL: u64 = u64::MAX;
/// Flags of every send: never wait (a full socket answers `EAGAIN` at once
/// rather than parking the send in the kernel), never raise `SIGPIPE`.
const SEND_FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// One worker's send ring and the streams waiting to use it.
pub struct Sender {
    ring: RefCell<IoUring>,
    /// Slots `0..fixed_files` are registered (sparse) as fixed files.
    fixed_files: u32,
    /// Slots never handed out yet start here.
    next_slot: Cell<u32>,
    /// Slots given back by ended streams.
    free_slots: RefCell<Vec<u32>>,
    /// Streams with frames queued and no send in flight: raw tier, then
    /// coalesced ones.
    ready: [RefCell<VecDeque<Rc<Subscriber>>>; 2],
    /// Picks from `ready` so far (every `BULK_TURN`-th goes coalesced first).
    picks: Cell<u32>,
    /// Sends submitted and not yet completed (0 between flushes, unless a
    /// kernel parked one: then the wheel reaps it).
    in_flight: Cell<usize>,
    /// The send task's waker while it waits for a ready stream.
    waker: Cell<Option<Waker>>,
    /// A submit failed other than transiently (logged once).
    warned: Cell<bool>,
}

impl Sender {
    /// A send ring with room for `max_streams` fixed files (fewer if the
    /// descriptor limit is lower). Fails where the kernel lacks `SEND`,
    /// `SENDMSG` or `ASYNC_CANCEL`; the worker then writes from each
    /// stream's task instead.
    pub fn new(max_streams: u32) -> io::Result<Sender> {
        let ring = IoUring::builder().build(SQ_ENTRIES)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [
            opcode::Send::CODE,
            opcode::SendMsg::CODE,
            opcode::AsyncCancel::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring opcode {code} is not supported"),
                ));
            }
        }
        let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| u32::try_from(soft).unwrap_or(u32::MAX))
            .unwrap_or(0);
        let want = max_streams.min(MAX_FIXED_FILES).min(nofile);
        // Without a fixed-file table every stream sends on its descriptor.
        let fixed_files = if want > 0 && ring.submitter().register_files_sparse(want).is_ok() {
            want
        } else {
            0
        };
        Ok(Sender {
            ring: RefCell::new(ring),
            fixed_files,
            next_slot: Cell::new(0),
            free_slots: RefCell::new(Vec::new()),
            ready: [RefCell::new(VecDeque::new()), RefCell::new(VecDeque::new())],
            picks: Cell::new(0),
            in_flight: Cell::new(0),
            waker: Cell::new(None),
            warned: Cell::new(false),
        })
    }

    /// Fixed-file slots registered (0: none; streams use their descriptor).
    pub fn fixed_files(&self) -> u32 {
        self.fixed_files
    }

    /// A stream starts (its task is about to be spawned): its socket is `fd`
    /// from now until [`Sender::detach`]. Registers it as a fixed file if a
    /// slot is free, and sends what the stream has queued.
    pub(super) fn attach(&self, sub: &Rc<Subscriber>, fd: RawFd) {
        sub.fd.set(fd);
        if let Some(slot) = self.take_slot() {
            let ring = self.ring.borrow();
            match ring.submitter().register_files_update(slot, &[fd]) {
                Ok(1) => sub.slot.set(slot),
                _ => self.free_slots.borrow_mut().push(slot),
            }
        }
        if sub.has_queued() {
            self.ready(sub);
        }
    }

    fn take_slot(&self) -> Option<u32> {
        if let Some(slot) = self.free_slots.borrow_mut().pop() {
            return Some(slot);
        }
        let next = self.next_slot.get();
        if next < self.fixed_files {
            self.next_slot.set(next + 1);
            Some(next)
        } else {
            None
        }
    }

    /// A stream's task ends (before its socket closes): nothing more is
    /// submitted for it and its fixed file is released. (A send still in
    /// flight, which only a kernel that parks `MSG_DONTWAIT` sends could
    /// leave, is cancelled; its completion gives the batch back.)
    pub(super) fn detach(&self, w: &Worker, sub: &Subscriber) {
        sub.fd.set(-1);
        sub.busy.set(false);
        let slot = sub.slot.replace(NO_SLOT);
        let mut ring = self.ring.borrow_mut();
        // A send in flight holds its own reference to the file, so the slot
        // can be cleared (and reused) at once.
        if slot != NO_SLOT {
            match ring.submitter().register_files_update(slot, &[-1]) {
                Ok(_) => self.free_slots.borrow_mut().push(slot),
                // The slot (and the socket it holds open) stays taken.
                Err(e) => tracing::warn!(error = %e, slot, "cannot release a fixed file"),
            }
        }
        let op = sub.op.get();
        if op == 0 {
            // A rest handed over and never written.
            if let Some(mut b) = sub.batch.borrow_mut().take() {
                b.clear();
                w.return_batch(b);
            }
        } else {
            let cancel = opcode::AsyncCancel::new(op).build().user_data(CANCEL);
            // SAFETY: a cancel names no memory; its target is found by
            // `user_data` alone.
            if unsafe { ring.submission().push(&cancel) }.is_ok() {
                let _ = ring.submit();
            }
        }
    }

    /// After the fan-out (or the wheel, or a close) queued frames on `sub`:
    /// puts it in the ready queue unless it is already there or sending, and
    /// wakes the send task. No wake-up of the stream's own task.
    pub(super) fn ready(&self, sub: &Rc<Subscriber>) {
        if sub.busy.get() || sub.fd.get() < 0 {
            // Already queued, sending, or writing a rest in its task (each
            // looks at the queue when done), or its task has not attached
            // yet (attaching looks at it).
            return;
        }
        sub.busy.set(true);
        self.push_ready(sub.clone());
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn push_ready(&self, sub: Rc<Subscriber>) {
        self.ready[usize::from(!sub.raw_tier)]
            .borrow_mut()
            .push_back(sub);
    }

    fn ready_len(&self) -> usize {
        self.ready.iter().map(|q| q.borrow().len()).sum()
    }

    fn has_ready(&self) -> bool {
        self.ready.iter().any(|q| !q.borrow().is_empty())
    }

    /// The next ready stream: raw tier first, but every `BULK_TURN`-th pick
    /// goes to a coalesced one if any waits.
    fn pop_ready(&self) -> Option<Rc<Subscriber>> {
        let turn = self.picks.get().wrapping_add(1);
        self.picks.set(turn);
        let order: [usize; 2] = if turn.is_multiple_of(BULK_TURN) {
            [1, 0]
        } else {
            [0, 1]
        };
        order
            .into_iter()
            .find_map(|class| self.ready[class].borrow_mut().pop_front())
    }

    /// Submits sends for ready streams, [`SUBMIT_BATCH`] per
    /// `io_uring_enter`, handling each submit's completions before the next,
    /// until none is ready or [`TURN_SENDS`] went out. True when streams are
    /// still ready (the caller yields, then flushes again).
    pub(super) fn flush(&self, w: &Worker) -> bool {
        let now = w.now();
        let mut sent = 0;
        let mut ring = self.ring.borrow_mut();
        let (submitter, mut sq, mut cq) = ring.split();
        while sent < TURN_SENDS {
            let mut pushed = 0;
            while pushed < SUBMIT_BATCH && sent + pushed < TURN_SENDS && !sq.is_full() {
                let Some(sub) = self.pop_ready() else { break };
                let Some(entry) = self.prepare(w, &sub, now) else {
                    continue;
                };
                // SAFETY: the entry names the batch now in `sub.batch`
                // (frames, iovecs, msghdr), which stays there, unchanged,
                // until this send's completion, and its `user_data` holds a
                // strong count of `sub` until then (the module's
                // invariants).
                if unsafe { sq.push(&entry) }.is_err() {
                    // Unreachable (checked not full): undone as a failure.
                    let sub = self.take_back(entry.get_user_data());
                    self.fail(w, &sub);
                    continue;
                }
                self.in_flight.set(self.in_flight.get() + 1);
                pushed += 1;
            }
            sq.sync();
            if sq.is_empty() {
                // Nothing pushed, and nothing left over from a failed submit.
                break;
            }
            // The sends run inside this call (`MSG_DONTWAIT`).
            if let Err(e) = submitter.submit() {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) && !self.warned.replace(true)
                {
                    tracing::warn!(error = %e, "io_uring submit of stream sends failed");
                }
                // The entries stay queued; the next flush submits them.
                return true;
            }
            sent += pushed;
            cq.sync();
            for cqe in &mut cq {
                self.complete(w, cqe.user_data(), cqe.result());
            }
            if pushed == 0 {
                // Only a failed submit's leftovers went: the ready ones wait
                // for the next turn.
                return self.has_ready();
            }
        }
        self.has_ready()
    }

    /// Reaps completions a flush did not see (none, unless the kernel parked
    /// a send): the wheel calls it on every tick while any is in flight.
    pub(super) fn reap(&self, w: &Worker) {
        if self.in_flight.get() == 0 {
            return;
        }
        let mut ring = self.ring.borrow_mut();
        let mut cq = ring.completion();
        for cqe in &mut cq {
            self.complete(w, cqe.user_data(), cqe.result());
        }
        drop(cq);
        drop(ring);
        if self.has_ready()
            && let Some(waker) = self.waker.take()
        {
            waker.wake();
        }
    }

    /// The SQE that sends `sub`'s queued frames, or `None` when there is
    /// nothing to send (the stream leaves the ready state).
    fn prepare(&self, w: &Worker, sub: &Rc<Subscriber>, now: u64) -> Option<squeue::Entry> {
        let fd = sub.fd.get();
        if fd < 0 || matches!(sub.state.get(), SubState::Abort | SubState::Closed) {
            sub.busy.set(false);
            return None;
        }
        let mut held = sub.batch.borrow_mut();
        if held.is_some() {
            // Its task is writing a rest it was handed; it gives the stream
            // back when done.
            return None;
        }
        let mut b = w.take_batch();
        sub.take_into(&mut b);
        if b.is_empty() {
            w.return_batch(b);
            sub.busy.set(false);
            if sub.state.get() != SubState::Open {
                // Closing and flushed: its task shuts the socket.
                sub.wake();
            }
            return None;
        }
        sub.write_since.set(now);
        let batch = held.insert(b);
        let slot = sub.slot.get();
        let entry = match batch.first() {
            Some((ptr, len)) if batch.len() == 1 => {
                // A frame over 4 GiB goes in several sends.
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                if slot == NO_SLOT {
                    opcode::Send::new(types::Fd(fd), ptr, len)
                        .flags(SEND_FLAGS)
                        .build()
                } else {
                    opcode::Send::new(types::Fixed(slot), ptr, len)
                        .flags(SEND_FLAGS)
                        .build()
                }
            }
            _ => {
                let msg = batch.msghdr();
                // The flags are small positive constants.
                let flags = SEND_FLAGS as u32;
                if slot == NO_SLOT {
                    opcode::SendMsg::new(types::Fd(fd), msg)
                        .flags(flags)
                        .build()
                } else {
                    opcode::SendMsg::new(types::Fixed(slot), msg)
                        .flags(flags)
                        .build()
                }
            }
        };
        let user_data = Rc::into_raw(sub.clone()) as u64;
        sub.op.set(user_data);
        Some(entry.user_data(user_data))
    }

    /// Takes back the strong count a send's `user_data` holds.
    fn take_back(&self, user_data: u64) -> Rc<Subscriber> {
        // SAFETY: every `user_data` other than `CANCEL` is `Rc::into_raw` of
        // a subscriber (`prepare`), and each send completes exactly once (no
        // multishot), so this takes back exactly the count its send held.
        let sub = unsafe { Rc::from_raw(user_data as *const Subscriber) };
        sub.op.set(0);
        sub
    }

    /// One completion.
    fn complete(&self, w: &Worker, user_data: u64, res: i32) {
        if user_data == CANCEL {
            return;
        }
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        let sub = self.take_back(user_data);
        let attached = sub.fd.get() >= 0;
        if res == -libc::EAGAIN && attached {
            // The socket is full: its task sends the batch when it drains.
            self.hand_over(w, &sub);
            return;
        }
        let Ok(n @ 1..) = usize::try_from(res) else {
            self.fail(w, &sub);
            return;
        };
        let mut held = sub.batch.borrow_mut();
        let Some(batch) = held.as_mut() else {
            drop(held);
            self.fail(w, &sub);
            return;
        };
        sub.wrote(batch, n);
        w.counters.written(n);
        batch.advance(n);
        if !batch.is_empty() {
            drop(held);
            if attached {
                // Short: the socket is full; its task sends the rest.
                self.hand_over(w, &sub);
            } else {
                self.fail(w, &sub);
            }
            return;
        }
        if let Some(b) = held.take() {
            w.return_batch(b);
        }
        drop(held);
        sub.write_since.set(NOT_WRITING);
        if attached
            && sub.has_queued()
            && !matches!(sub.state.get(), SubState::Abort | SubState::Closed)
        {
            // More came meanwhile: it goes again, behind the others.
            self.push_ready(sub);
        } else {
            sub.busy.set(false);
            if attached && sub.state.get() != SubState::Open {
                // Closing and flushed (or aborted): its task ends it.
                sub.wake();
            }
        }
    }

    /// A send went short or found its socket full: the rest of the batch
    /// stays in `sub.batch` for the stream's task (which writes it when the
    /// socket drains, then gives the stream back, [`Worker::handed_back`]);
    /// the stream counts as stalled (closed as a slow consumer if it stays
    /// so). It stays busy meanwhile: the fan-out only queues.
    fn hand_over(&self, w: &Worker, sub: &Rc<Subscriber>) {
        let mut held = sub.batch.borrow_mut();
        if let Some(b) = held.as_mut()
            && !b.stalled
        {
            b.stalled = true;
            w.stalled.borrow_mut().push(sub.clone());
        }
        drop(held);
        sub.wake();
    }

    /// A send failed: the batch goes back, and a stream whose task still
    /// runs is aborted (a write error).
    fn fail(&self, w: &Worker, sub: &Rc<Subscriber>) {
        if let Some(mut b) = sub.batch.borrow_mut().take() {
            b.clear();
            w.return_batch(b);
        }
        sub.busy.set(false);
        sub.write_since.set(NOT_WRITING);
        if sub.fd.get() >= 0 {
            sub.set_close_reason(CloseReason::WriteError);
            if sub.state.get() != SubState::Closed {
                sub.state.set(SubState::Abort);
            }
            sub.wake();
        }
    }
}

impl Worker {
    /// The rest of a batch the send ring handed over (a short send), if any:
    /// what `sub`'s task writes itself.
    pub(super) fn handed_over(&self, sub: &Subscriber) -> bool {
        sub.op.get() == 0 && sub.batch.borrow().is_some()
    }

    /// `sub`'s task wrote the rest it was handed: the stream goes back to
    /// the send ring (if more is queued) or idles.
    pub(super) fn handed_back(&self, sub: &Rc<Subscriber>) {
        sub.write_since.set(NOT_WRITING);
        sub.busy.set(false);
        if sub.has_queued()
            && let Some(s) = &self.sender
        {
            s.ready(sub);
        }
    }
}

/// Submits the ready streams' sends, a turn at a time. A turn of more than
/// [`GATE_ABOVE`] sends first waits for the worker's own ring to submit: the
/// I/O the same loop turn queued there (a publish's response, reads,
/// accepts) goes to the kernel before the fan-out's sends, as it did when
/// stream tasks wrote 32 at a time, rather than a whole fan-out later. The
/// wait is a `POLLOUT` poll on an unbound datagram socket, which is always
/// writable: it completes in the submit that carries it, behind everything
/// queued before it. Smaller turns go at once (the wait would cost more
/// than the sends delay anything).
pub async fn send_loop(w: Rc<Worker>) {
    let Some(s) = w.sender.as_ref() else { return };
    let gate = match monoio::net::unix::UnixDatagram::unbound() {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(error = %e, "no submit gate for the send ring; sends go first");
            None
        }
    };
    loop {
        poll_fn(|cx| {
            if s.has_ready() {
                Poll::Ready(())
            } else {
                s.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        let mut first = true;
        loop {
            if !first || s.ready_len() > GATE_ABOVE {
                match &gate {
                    Some(g) => {
                        if g.writable(true).await.is_err() {
                            yield_now().await;
                        }
                    }
                    None => yield_now().await,
                }
            }
            first = false;
            if !s.flush(&w) {
                break;
            }
        }
    }
}

/// Lets the worker's other tasks run once.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}
