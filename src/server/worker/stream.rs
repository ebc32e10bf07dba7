//! One SSE stream from its admission to its close: queue the response head,
//! `connected` and the replay or initial state, join the fan-out, then write
//! whatever the fan-out queues, in vectored batches, until the stream ends.
//! On the io_uring driver the worker's send ring does the writing
//! ([`super::sender`]) and the task only watches for the end; on the epoll
//! driver the task writes, with a write permit.
//!
//! Hot: the write loop runs per wake-up and allocates nothing (pooled
//! batches, shared frames). It imports no config, credentials or API code:
//! the request side hands it a [`StreamStart`] of plain values. Once a
//! stream starts, the request buffer is gone; the task holds its
//! `Subscriber`, the split socket and a 16-byte buffer watching for the
//! peer to close. Any error here closes this stream only.

use std::future::{Future, poll_fn};
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRent, OwnedReadHalf, Splitable};
use monoio::net::TcpStream;

use super::subscriber::{StreamAuth, SubState, Subscriber};
use super::{Worker, frame};
use crate::hub::{Filter, Start, Topic};
use crate::server::access::{self, CloseReason};
use crate::server::limits::{ConnSlot, KeySlot, StreamSlot};
use crate::sse;
use crate::time::unix_millis;

/// Bytes a stream's client may send after its request before it is closed.
pub const MAX_STREAM_INPUT_BYTES: usize = 4096;

/// An admitted stream, as the request side hands it over.
pub struct StreamStart<'a> {
    pub topic: Arc<Topic>,
    /// The tier's cadence (index into the topic's rings) and whether it is
    /// the raw tier (its writes go first).
    pub cadence: usize,
    pub raw_tier: bool,
    /// The tier (index into the settings' tiers), for metrics and logs.
    pub tier: usize,
    pub filter: Option<Filter>,
    pub last_id: Option<u64>,
    pub heartbeat_s: u32,
    pub max_duration_s: u32,
    /// The key's stream slot (`max_connections`), if the request had a key.
    pub key: Option<KeySlot>,
    /// Its key and tier, for reloads.
    pub auth: StreamAuth,
    /// The name its usage is metered under: its key's, or
    /// `metering::ANONYMOUS_KEY`.
    pub account: &'a str,
    /// The HTTP response head (status line and headers, CORS included).
    pub head: Bytes,
    /// The `connected` frame's fields; `resumed` is filled in here.
    pub connected: sse::Connected<'a>,
}

/// Starts a stream: queues its first frames before anything can yield (so
/// no live frame comes between them), joins the fan-out and spawns the
/// stream's task, which owns the socket from here on.
pub fn start(w: &Rc<Worker>, stream: TcpStream, conn: ConnSlot, s: StreamStart<'_>) {
    let mut sub = Subscriber::new(w.now(), s.heartbeat_s, s.max_duration_s, s.raw_tier);
    if let Some(m) = &w.meter {
        let tier = s.connected.tier;
        sub = sub.metered(Box::new(m.start(s.account, &s.topic, tier, s.head.len())));
    }
    let sub = Rc::new(sub);
    sub.set_auth(s.auth);
    if let Some(m) = &w.meter {
        m.track(&sub);
    }
    let start = w.subscribe(&s.topic, s.cadence, s.filter.map(Rc::new), &sub, s.last_id);
    sub.push(frame(s.head));
    let mut connected = s.connected;
    connected.resumed = matches!(start, Start::Replay(_));
    connected.ts_ms = unix_millis();
    sub.push(frame(sse::connected_frame(&connected)));
    let max_events = w.stream().max_events;
    match start {
        Start::Replay(frames) => {
            let max = if max_events == 0 {
                usize::MAX
            } else {
                max_events as usize
            };
            let n = frames.len().min(max);
            for f in frames.into_iter().take(n) {
                sub.push(frame(f));
            }
            sub.count_events(u32::try_from(n).unwrap_or(u32::MAX));
            if max_events != 0 && sub.events() >= max_events {
                let limit = frame(sse::limit_frame(max_events));
                sub.close_with(limit, w.now(), CloseReason::Limit);
            }
        }
        Start::Fresh(f) => sub.push(frame(f)),
    }
    w.schedule(&sub);
    w.counters.stream_opened(s.tier);
    let slot = StreamSlot::new(w, &s.topic, conn, s.key);
    if let Some(ring) = &w.sender {
        // The send ring may write to it from now on; its task detaches it
        // before the socket closes.
        ring.attach(&sub, stream.as_raw_fd());
    }
    // The stream lives on in a task of its own whose future is a third the
    // size of the request-handling one, which ends here with its buffers.
    monoio::spawn(run(slot, sub, stream));
}

/// Resolves when the peer closes (or errors, or sends too much).
async fn watch_peer(mut rd: OwnedReadHalf<TcpStream>) {
    let mut buf = Box::new([0u8; 16]);
    let mut total = 0usize;
    loop {
        let (res, b) = rd.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                total = total.saturating_add(n);
                if total > MAX_STREAM_INPUT_BYTES {
                    return;
                }
            }
        }
    }
}

/// A stream's task: writes what the fan-out queues on `sub` until the
/// stream ends; its slots give their counts back when it returns. One async
/// fn with no nested future of its own, so the task stays small for as long
/// as the stream lives.
pub(crate) async fn run(slot: StreamSlot, sub: Rc<Subscriber>, stream: TcpStream) {
    let w = &**slot.worker();
    let sub = &sub;
    'stream: {
        let (rd, mut wr) = stream.into_split();
        let mut peer = pin!(watch_peer(rd));
        loop {
            // Something to write (with the send ring: the rest of a short
            // send it handed over; without: the queue, once a permit comes),
            // or the end: the peer closed, or the stream is closing and
            // flushed, or aborted.
            let more = poll_fn(|cx| {
                if peer.as_mut().poll(cx).is_ready() {
                    sub.set_close_reason(CloseReason::ClientClosed);
                    return Poll::Ready(false);
                }
                if w.sender.is_some() {
                    match sub.state() {
                        SubState::Abort | SubState::Closed => return Poll::Ready(false),
                        _ if w.handed_over(sub) => return Poll::Ready(true),
                        SubState::Closing if !sub.busy.get() && !sub.has_queued() => {
                            return Poll::Ready(false);
                        }
                        _ => {}
                    }
                } else if sub.has_queued() {
                    if w.acquire_write(sub) {
                        return Poll::Ready(true);
                    }
                } else if sub.state() != SubState::Open {
                    return Poll::Ready(false);
                }
                sub.register(cx.waker());
                Poll::Pending
            })
            .await;
            if !more {
                break;
            }
            let mut batch = if w.sender.is_some() {
                let Some(b) = sub.batch.borrow_mut().take() else {
                    continue;
                };
                b
            } else {
                let mut b = w.take_batch();
                sub.take_into(&mut b);
                b
            };
            while !batch.is_empty() {
                let mut write = pin!(wr.writev(batch));
                let done = poll_fn(|cx| {
                    if let Poll::Ready(r) = write.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                    if sub.state() == SubState::Abort {
                        return Poll::Ready(None);
                    }
                    if peer.as_mut().poll(cx).is_ready() {
                        sub.set_close_reason(CloseReason::ClientClosed);
                        return Poll::Ready(None);
                    }
                    sub.register(cx.waker());
                    Poll::Pending
                })
                .await;
                // None: abandon the write in flight (dropping it cancels it) and
                // close, as monoio's cancel semantics ask.
                let Some((res, b)) = done else { break 'stream };
                batch = b;
                match res {
                    Ok(n) if n > 0 => {
                        sub.wrote(&batch, n);
                        w.counters.written(n);
                        batch.advance(n);
                        if !batch.is_empty() {
                            // A short write: the socket is full. The rest
                            // waits for the client without a permit.
                            w.write_stalled(sub);
                        }
                    }
                    _ => {
                        sub.set_close_reason(CloseReason::WriteError);
                        break 'stream;
                    }
                }
            }
            w.return_batch(batch);
            if w.sender.is_some() {
                w.handed_back(sub);
            } else {
                w.release_write(sub);
            }
        }
        let _ = wr.shutdown().await;
    }
    match &w.sender {
        // Its socket is closed by now, but no await came between: nothing
        // was submitted for it since.
        Some(s) => s.detach(w, sub),
        None => w.release_write(sub),
    }
    sub.set_closed();
    w.stream_ended(slot.topic());
    access::stream_closed(w, sub, &slot);
    if let Some(m) = &w.meter {
        m.stream_ended(sub);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::hub::Hub;

    /// What a stream's task holds for as long as the stream lives: its
    /// future (the socket halves, the peer watcher, one pinned write in
    /// flight) must stay a few hundred bytes, since 10k idle streams cost
    /// 10k of them. 448 is today's size plus a little; a change that grows
    /// it should be a choice, not an accident.
    #[test]
    fn a_streams_task_stays_small() {
        let s =
            Settings::from_toml("[server]\nworkers = 1\n[[topics]]\npattern = \"*\"\n").unwrap();
        let hub = Arc::new(Hub::new(Arc::new(s)));
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let w = Rc::new(Worker::new(0, hub, Default::default()));
            let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let sub = Rc::new(Subscriber::new(0, 15, 0, true));
            let c = TcpStream::connect(addr).await.unwrap();
            let topic = w.hub.topic("t").unwrap();
            let slot = StreamSlot::new(&w, &topic, ConnSlot::new(&w.counts).0, None);
            let task = run(slot, sub, c);
            let size = std::mem::size_of_val(&task);
            assert!(size <= 448, "the stream task grew to {size} bytes");
            std::mem::forget(task);
        });
    }
}
