//! The vectored write batch of one connection: queued frames handed to the
//! kernel in one write without copying them into a per-connection buffer:
//! an io_uring `IORING_OP_SEND` (one frame) or `IORING_OP_SENDMSG` (several)
//! that the worker submits itself ([`super::sender`]), or, on the epoll
//! driver, a `writev(2)` of the stream's task.
//!
//! Hot module; one of the places with `unsafe` (the `IoVecBuf` contract of
//! monoio; the `msghdr` a `SENDMSG` reads). The batch owns an `Rc` of every
//! frame it points into, and batches are pooled per worker
//! (`Worker::take_batch`): only connections with a write in flight hold
//! one, and a write allocates nothing once the pool is warm.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

/// A frame as a worker shares it among its connections: one `Rc` per worker
/// per frame, so queueing it on a connection is a non-atomic increment.
pub type Frame = Rc<Bytes>;

/// Most frames one write hands to the kernel (well under `IOV_MAX`).
pub const MAX_IOVECS: usize = 64;

pub struct FrameBatch {
    frames: Vec<Frame>,
    iovecs: Vec<libc::iovec>,
    /// What a `SENDMSG` of the batch reads ([`FrameBatch::msghdr`]): it
    /// points at `iovecs`, and the batch is boxed, so it stays put while the
    /// kernel holds it.
    msg: libc::msghdr,
    /// A write of this batch went short (its socket was full): counted once
    /// as a stalled write.
    pub(super) stalled: bool,
}

impl Default for FrameBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameBatch {
    pub fn new() -> FrameBatch {
        FrameBatch {
            frames: Vec::new(),
            iovecs: Vec::new(),
            // SAFETY: `msghdr` is plain data (pointers and integers), for
            // which all zeroes is a valid value: no name, no iovecs, no
            // control data.
            msg: unsafe { std::mem::zeroed() },
            stalled: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.iovecs.is_empty()
    }

    /// Frames (whole or partly written) still in the batch.
    pub fn len(&self) -> usize {
        self.iovecs.len()
    }

    /// The bytes of the first frame still to write: what a `SEND` of a
    /// one-frame batch hands to the kernel. Valid while the batch is not
    /// changed (the frame is held by the batch).
    pub fn first(&self) -> Option<(*const u8, usize)> {
        self.iovecs
            .first()
            .map(|v| (v.iov_base as *const u8, v.iov_len))
    }

    /// The `msghdr` of a `SENDMSG` of the whole batch. Valid while the batch
    /// is neither changed nor dropped (it points into the batch's own heap
    /// buffers, which do not move when the box does).
    pub fn msghdr(&mut self) -> *const libc::msghdr {
        self.msg.msg_iov = self.iovecs.as_mut_ptr();
        // `msg_iovlen`'s type differs between libcs (usize or c_int); at most
        // MAX_IOVECS, so the cast never truncates.
        self.msg.msg_iovlen = self.iovecs.len() as _;
        &self.msg
    }

    /// Drops whatever the batch still holds (a write abandoned).
    pub fn clear(&mut self) {
        self.iovecs.clear();
        self.frames.clear();
        self.stalled = false;
    }

    /// Moves up to `MAX_IOVECS` frames from the front of `queue` into the
    /// batch; returns the bytes taken.
    pub fn fill(&mut self, queue: &mut VecDeque<Frame>) -> usize {
        debug_assert!(self.is_empty());
        self.stalled = false;
        let mut bytes = 0;
        while self.frames.len() < MAX_IOVECS {
            let Some(frame) = queue.pop_front() else {
                break;
            };
            bytes += frame.len();
            self.iovecs.push(libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            });
            self.frames.push(frame);
        }
        bytes
    }

    /// Accounts for `n` bytes written: drops the frames fully sent and moves
    /// the first iovec past a partial one. Returns true when all was sent.
    pub fn advance(&mut self, mut n: usize) -> bool {
        let mut done = 0;
        while done < self.iovecs.len() && n >= self.iovecs[done].iov_len {
            n -= self.iovecs[done].iov_len;
            done += 1;
        }
        self.iovecs.drain(..done);
        self.frames.drain(..done);
        if let Some(first) = self.iovecs.first_mut() {
            // n < first.iov_len here, so the new base stays inside the frame
            // that `self.frames[0]` keeps alive.
            first.iov_base = first.iov_base.wrapping_add(n);
            first.iov_len -= n;
        }
        self.iovecs.is_empty()
    }

    /// How many update frames ([`crate::sse::is_update`]) the first `n`
    /// bytes written complete (call before [`FrameBatch::advance`]). Only
    /// metered streams ask: it reads the head of each completed frame.
    pub fn completed_updates(&self, mut n: usize) -> u64 {
        let mut updates = 0;
        for (v, f) in self.iovecs.iter().zip(&self.frames) {
            if n < v.iov_len {
                break;
            }
            n -= v.iov_len;
            updates += u64::from(crate::sse::is_update(f));
        }
        updates
    }

    /// Bytes still to write.
    pub fn remaining(&self) -> usize {
        self.iovecs.iter().map(|v| v.iov_len).sum()
    }
}

// SAFETY: `iovecs[i]` always points into `frames[i]` (set in `fill`, moved
// forward within the same frame in `advance`), and every frame is an
// `Rc<Bytes>` whose heap bytes never move while the `Rc` is held. While the
// runtime owns the batch (during a write) nothing mutates it, and the `Vec`s'
// heap buffers do not move when the batch (or its box) is moved. So the
// pointer and length returned describe `iovecs.len()` valid iovecs for as
// long as the runtime holds the value.
unsafe impl monoio::buf::IoVecBuf for Box<FrameBatch> {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &'static str) -> Frame {
        Rc::new(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn partial_writes_advance_within_and_across_frames() {
        let mut q: VecDeque<Frame> = [frame("abc"), frame("de"), frame("fgh")]
            .into_iter()
            .collect();
        let mut b = FrameBatch::new();
        assert_eq!(b.fill(&mut q), 8);
        assert!(q.is_empty());
        assert!(!b.advance(4)); // abc + d
        assert_eq!(b.remaining(), 4);
        let off = b.iovecs[0].iov_base as usize - b.frames[0].as_ptr() as usize;
        let first = &b.frames[0][off..off + b.iovecs[0].iov_len];
        assert_eq!(first, b"e");
        assert!(!b.advance(1));
        assert!(b.advance(3));
        assert!(b.is_empty());
    }

    #[test]
    fn completed_updates_counts_whole_update_frames_only() {
        let hb = ": heartbeat 1\n\n";
        let up = "event: update\nid: 1\ndata: {\"data\":[]}\n\n";
        let (h, u) = (hb.len(), up.len());
        let mut q: VecDeque<Frame> = [frame(hb), frame(up), frame(up)].into_iter().collect();
        let mut b = FrameBatch::new();
        assert_eq!(b.fill(&mut q), h + 2 * u);
        assert_eq!(b.completed_updates(h), 0);
        assert_eq!(b.completed_updates(h + u - 1), 0);
        assert_eq!(b.completed_updates(h + u), 1);
        assert_eq!(b.completed_updates(h + 2 * u), 2);
        // A frame begun by one write and completed by the next counts once.
        b.advance(h + 3);
        assert_eq!(b.completed_updates(u - 4), 0);
        assert_eq!(b.completed_updates(u - 3), 1);
        b.advance(u - 3);
        assert_eq!(b.completed_updates(u), 1);
    }

    #[test]
    fn fill_takes_at_most_max_iovecs() {
        let mut q: VecDeque<Frame> = (0..MAX_IOVECS + 5).map(|_| frame("x")).collect();
        let mut b = FrameBatch::new();
        assert_eq!(b.fill(&mut q), MAX_IOVECS);
        assert_eq!(q.len(), 5);
    }
}
