//! `sluice bench`'s SSE client: one task per connection, which connects
//! (from the right source address), sends the request, reads the response
//! head and then the body, plain or chunked, through a [`Scanner`]; and
//! reconnects with `Last-Event-ID`, as an EventSource does, when the server
//! ends the stream.
//!
//! Hot for the load generator: per connection one read buffer and one
//! scanner; per read one scan and a few counters; no allocation per event.
//! [`Pacer`] spaces the reads of non-probe connections.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::Ctx;
use super::args::Url;
use super::scan::{Event, Scanner};
use super::sys;
use crate::server::http::chunked::{ChunkedDecoder, Progress};

/// Read buffer per connection.
const READ_BYTES: usize = 16 * 1024;
/// Longest response head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Every PROBE_EVERY-th connection is a latency probe: it reads as soon as
/// data arrives (never paced) and only probes feed the latency histogram,
/// so pacing the others does not distort latency.
pub const PROBE_EVERY: usize = 50;
/// Longest wait before reconnecting a stream the server closed.
const MAX_RETRY_MS: u64 = 5000;
/// Slots of the read pacer.
pub(super) const PACER_SLOTS: usize = 10;

/// Read pacing: a connection that has just read waits for its slot's next
/// tick before it reads again, so that events arriving meanwhile come in one
/// read. Connections are spread over [`PACER_SLOTS`] slots ticked in turn
/// (one timer per thread, not per connection), so each tick wakes a slice of
/// the connections rather than all of them at once.
pub(super) struct Pacer {
    generation: [Cell<u64>; PACER_SLOTS],
    waiters: [RefCell<Vec<Waker>>; PACER_SLOTS],
    next: Cell<usize>,
}

impl Pacer {
    pub(super) fn new() -> Pacer {
        Pacer {
            generation: Default::default(),
            waiters: Default::default(),
            next: Cell::new(0),
        }
    }

    /// Resolves at slot `slot`'s next tick.
    async fn next_tick(&self, slot: usize) {
        let start = self.generation[slot].get();
        std::future::poll_fn(|cx| {
            if self.generation[slot].get() != start {
                Poll::Ready(())
            } else {
                self.waiters[slot].borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Ticks the next slot (call every interval / PACER_SLOTS).
    pub(super) fn tick(&self) {
        let slot = self.next.get();
        self.next.set((slot + 1) % PACER_SLOTS);
        self.generation[slot].set(self.generation[slot].get() + 1);
        let waiters = std::mem::take(&mut *self.waiters[slot].borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

/// Connects from the right source address.
async fn connect(ctx: &Ctx, addr: SocketAddr, i: usize) -> io::Result<TcpStream> {
    let ips = &ctx.args.source_ips;
    if ips.is_empty() || !addr.is_ipv4() {
        return TcpStream::connect_addr(addr).await;
    }
    let src = ips[i % ips.len()];
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    // Each source address gets its own ephemeral port range: bind the
    // address now, the port at connect.
    sys::set_bind_address_no_port(&socket)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let std_stream: std::net::TcpStream = socket.into();
    let stream = TcpStream::from_std(std_stream)?;
    stream.writable(false).await?;
    // A failed connect leaves the socket unconnected.
    stream.peer_addr()?;
    Ok(stream)
}

/// Why an attempt to open a stream failed (its text is the reason
/// reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenError {
    Connect(io::ErrorKind),
    WriteRequest,
    /// The connection ended, failed or passed [`MAX_HEAD_BYTES`] before
    /// the end of the response head.
    NoHead,
    BadStatusLine,
    Status(u16),
}

impl OpenError {
    fn reason(self) -> String {
        match self {
            OpenError::Connect(kind) => format!("connect: {kind}"),
            OpenError::WriteRequest => "write request".to_string(),
            OpenError::NoHead => "no response head".to_string(),
            OpenError::BadStatusLine => "bad status line".to_string(),
            OpenError::Status(s) => format!("status {s}"),
        }
    }
}

/// A `200` response head, with whatever of the body came in its reads.
struct Head {
    bytes: Vec<u8>,
    body_start: usize,
    chunked: bool,
}

/// Reads a response head into a new buffer (through `buf`); only a `200`
/// is a stream.
async fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Head, OpenError> {
    let mut bytes: Vec<u8> = Vec::new();
    let body_start = loop {
        let (res, b) = conn.read(std::mem::take(buf)).await;
        *buf = b;
        let n = match res {
            Ok(n) if n > 0 => n,
            _ => return Err(OpenError::NoHead),
        };
        bytes.extend_from_slice(&buf[..n]);
        if let Some(end) = memchr::memmem::find(&bytes, b"\r\n\r\n") {
            break end + 4;
        }
        if bytes.len() > MAX_HEAD_BYTES {
            return Err(OpenError::NoHead);
        }
    };
    let status = bytes
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200) => {}
        Some(s) => return Err(OpenError::Status(s)),
        None => return Err(OpenError::BadStatusLine),
    }
    let chunked = memchr::memmem::find(
        &bytes[..body_start].to_ascii_lowercase(),
        b"transfer-encoding: chunked",
    )
    .is_some();
    Ok(Head {
        bytes,
        body_start,
        chunked,
    })
}

/// One stream's state across its reconnects.
struct Stream {
    ctx: Rc<Ctx>,
    /// The connection's number (0..connections).
    i: usize,
    url: Url,
    /// A latency probe: never paced, and the only source of latency.
    probe: bool,
    /// The last `id:` seen, sent back as `Last-Event-ID`.
    last_id: Option<u64>,
    /// The highest `"seq":` of a one-row event seen.
    last_seq: Option<u64>,
    scanner: Scanner,
    /// Events seen over every connection of this stream.
    seen: u64,
    /// When the current connection was opened (CLOCK_REALTIME ns): rows
    /// published before it are replays or state, not live updates.
    opened_ns: u64,
}

/// One SSE stream, reconnected (with `Last-Event-ID`) when the server
/// closes it, until the run stops. A stream whose first attempt fails is
/// counted failed and given up; later failed attempts are errors, retried
/// after [`MAX_RETRY_MS`].
pub(super) async fn stream_loop(ctx: Rc<Ctx>, i: usize) {
    let mut s = Stream {
        url: ctx.args.urls[i % ctx.args.urls.len()].clone(),
        probe: i.is_multiple_of(PROBE_EVERY),
        ctx,
        i,
        last_id: None,
        last_seq: None,
        scanner: Scanner::default(),
        seen: 0,
        opened_ns: 0,
    };
    let live = s.ctx.live.clone();
    let mut buf = vec![0u8; READ_BYTES];
    let mut first = true;
    loop {
        if s.ctx.stop.load(Ordering::Acquire) {
            return;
        }
        s.opened_ns = sys::now_ns();
        let started = Instant::now();
        let (mut conn, head) = match s.open(&mut buf).await {
            Ok(opened) => opened,
            Err(why) => {
                if first {
                    live.failed.fetch_add(1, Ordering::Relaxed);
                    s.ctx.stats.borrow_mut().fail(&why.reason());
                    return;
                }
                live.errors.fetch_add(1, Ordering::Relaxed);
                s.ctx
                    .stats
                    .borrow_mut()
                    .error(&format!("reconnect: {}", why.reason()));
                monoio::time::sleep(Duration::from_millis(MAX_RETRY_MS)).await;
                continue;
            }
        };
        let connect_us = started.elapsed().as_micros() as u64;
        s.ctx
            .stats
            .borrow_mut()
            .connect
            .saturating_record(connect_us.max(1));
        if first {
            live.established.fetch_add(1, Ordering::Relaxed);
            first = false;
        } else {
            s.ctx.stats.borrow_mut().reconnects += 1;
        }
        live.open.fetch_add(1, Ordering::Relaxed);
        let read = s.read_body(&mut conn, head, &mut buf).await;
        live.open.fetch_sub(1, Ordering::Relaxed);
        if let Err(e) = read {
            live.errors.fetch_add(1, Ordering::Relaxed);
            s.ctx
                .stats
                .borrow_mut()
                .error(&format!("read: {}", e.kind()));
        }
        s.scanner.reset();
        if s.ctx.stop.load(Ordering::Acquire) {
            return;
        }
        // The server ended the stream: come back as an EventSource would.
        let wait = s.scanner.retry_ms.unwrap_or(1000).min(MAX_RETRY_MS);
        monoio::time::sleep(Duration::from_millis(wait)).await;
    }
}

impl Stream {
    /// Connects, sends the request and reads a `200` head.
    async fn open(&self, buf: &mut Vec<u8>) -> Result<(TcpStream, Head), OpenError> {
        let mut conn = connect(&self.ctx, self.url.addr, self.i)
            .await
            .map_err(|e| OpenError::Connect(e.kind()))?;
        let _ = conn.set_nodelay(true);
        if conn.write_all(self.request().into_bytes()).await.0.is_err() {
            return Err(OpenError::WriteRequest);
        }
        let head = read_head(&mut conn, buf).await?;
        Ok((conn, head))
    }

    fn request(&self) -> String {
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n{}",
            self.url.path, self.url.host, self.ctx.request_extra
        );
        if let Some(id) = self.last_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        req
    }

    /// Reads the body (what came with the head first) until the server
    /// ends it; an error if a read failed.
    async fn read_body(
        &mut self,
        conn: &mut TcpStream,
        head: Head,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        let mut dechunk = head.chunked.then(|| ChunkedDecoder::new(usize::MAX));
        let mut open = self.body(&mut dechunk, &head.bytes[head.body_start..]);
        drop(head);
        let paced = !self.probe && !self.ctx.args.read_interval.is_zero();
        while open {
            let (res, b) = conn.read(std::mem::take(buf)).await;
            *buf = b;
            let n = match res {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) => return Err(e),
            };
            open = self.body(&mut dechunk, &buf[..n]);
            let full = n == buf.capacity();
            if paced && !full {
                self.ctx.pacer.next_tick(self.i % PACER_SLOTS).await;
            }
        }
        Ok(())
    }

    /// Takes body bytes, de-chunked when the server streams chunked; false
    /// once the body has ended (or its chunking is broken).
    fn body(&mut self, dechunk: &mut Option<ChunkedDecoder>, data: &[u8]) -> bool {
        match dechunk.as_mut() {
            None => {
                self.payload(data);
                true
            }
            Some(d) => matches!(d.feed(data, |p| self.payload(p)), Ok(Progress::More)),
        }
    }

    /// Counts the events in SSE payload bytes: ids, duplicates, gaps and
    /// (on probes) the latency of live updates. An initial state restarts
    /// the `seq` check: it holds rows of the past (of an earlier run, say),
    /// not the next row of this one.
    fn payload(&mut self, data: &[u8]) {
        let ctx = &*self.ctx;
        let live = &ctx.live;
        let (probe, opened_ns) = (self.probe, self.opened_ns);
        let mut events = 0u64;
        let now = sys::now_ns();
        let mut st = ctx.stats.borrow_mut();
        let (last_id, last_seq) = (&mut self.last_id, &mut self.last_seq);
        self.scanner.feed(data, |ev: Event| {
            events += 1;
            if let Some(id) = ev.id {
                if last_id.is_some_and(|l| id <= l) {
                    st.duplicates += 1;
                }
                *last_id = Some(id);
            }
            if probe && let Some(ts) = ev.ts_ns {
                if ev.initial_state || ts < opened_ns {
                    st.lat_excluded += 1;
                } else {
                    let us = now.saturating_sub(ts) / 1000;
                    st.lat.saturating_record(us.max(1));
                }
            }
            if ev.initial_state {
                *last_seq = None;
            } else if ev.count == Some(1)
                && let Some(seq) = ev.seq
            {
                if let Some(prev) = *last_seq {
                    if seq <= prev {
                        if ev.id.is_none() {
                            st.duplicates += 1;
                        }
                    } else if seq > prev + 1 {
                        st.gaps += seq - prev - 1;
                    }
                }
                *last_seq = Some(seq.max(last_seq.unwrap_or(0)));
            }
        });
        live.events.fetch_add(events, Ordering::Relaxed);
        live.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.seen < 2 && self.seen + events >= 2 {
            let ready = live.ready.fetch_add(1, Ordering::Relaxed) + 1;
            if ready == ctx.args.connections as u64 {
                let us = ctx.t0.elapsed().as_micros() as u64;
                live.all_ready_us.store(us.max(1), Ordering::Relaxed);
            }
        }
        self.seen += events;
    }
}
