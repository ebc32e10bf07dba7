//! One client connection: read and route HTTP/1.1 requests (keep-alive for
//! everything but streams), then, for `GET /v1/sse/{topic}`, become an SSE
//! stream: queue the head, `connected` and start frames, join the worker's
//! group for the topic and write whatever the fan-out queues, in batches.
//!
//! Hot for the stream write loop: it writes the shared frames queued on its
//! [`Subscriber`] with one vectored write per wake-up and allocates nothing.
//! Once a stream starts, the request buffer is dropped; the connection holds
//! only its `Subscriber`, its split halves and a 64-byte buffer watching for
//! the peer to close. Any error here closes this connection only.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::{BufMut, Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, Splitable};
use monoio::net::TcpStream;

use crate::auth::{AuthError, Principal, Role, find_credential};
use crate::hub::{Start, TopicError};
use crate::metrics;
use crate::server::http::{self, Chunked, HttpError, Method, Request};
use crate::server::worker::{SubState, Subscriber, Worker, frame};
use crate::sources::publish::parse_rows;
use crate::sse;
use crate::time::unix_millis;

/// First read buffer of a connection (grows up to `http::MAX_HEAD_BYTES`,
/// or the body limit for a publish).
const INITIAL_READ_BYTES: usize = 2048;
/// Bytes a stream's client may send after its request before it is closed.
const MAX_STREAM_INPUT_BYTES: usize = 4096;

/// Counts a connection on its worker and node while it lives.
struct ConnGuard(Rc<Worker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.hub.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted connection until it closes.
pub async fn serve(w: Rc<Worker>, mut stream: TcpStream) {
    let guard = ConnGuard(w.clone());
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(INITIAL_READ_BYTES);
    loop {
        // Read one request head.
        let req = loop {
            match http::parse(&buf) {
                Ok(Some(req)) => break req,
                Ok(None) => {}
                Err(e) => {
                    let (status, msg) = match e {
                        HttpError::Malformed(m) => (400, m),
                        HttpError::HeadersTooLarge => (431, "request head too large"),
                    };
                    tracing::debug!(status, msg, "bad request head");
                    send_error(&w, &mut stream, status, msg, false, None).await;
                    return;
                }
            }
            match read_more(&mut stream, buf, http::MAX_HEAD_BYTES).await {
                Some(b) => buf = b,
                None => return,
            }
        };
        let keep_alive = req.keep_alive && !w.is_draining();

        let sse_topic = req
            .path
            .strip_prefix("/v1/sse/")
            .filter(|_| req.method != Method::Options);
        if let Some(topic) = sse_topic {
            if req.method != Method::Get {
                send_error(&w, &mut stream, 405, "use GET", false, req.header("origin")).await;
                return;
            }
            drop(buf);
            let topic = topic.to_string();
            stream_sse(w, stream, req, &topic, guard).await;
            return;
        }

        // Requests with a body: read it whole first.
        let body = if req.method == Method::Post {
            match read_body(&w, &mut stream, &mut buf, &req).await {
                Some(b) => b,
                None => return,
            }
        } else {
            buf.drain(..req.head_len);
            Vec::new()
        };
        let out = route(&w, &req, body, keep_alive);
        if stream.write_all(out.freeze()).await.0.is_err() || !keep_alive {
            return;
        }
    }
}

/// Reads more bytes into `buf` (up to `limit` in all); `None` on close,
/// error, or a full buffer.
async fn read_more(stream: &mut TcpStream, mut buf: Vec<u8>, limit: usize) -> Option<Vec<u8>> {
    let len = buf.len();
    if len >= limit {
        return None;
    }
    if buf.capacity() - len < 1024 {
        buf.reserve((len).max(1024).min(limit - len));
    }
    let cap = buf.capacity().min(limit);
    let (res, slice) = stream
        .read(monoio::buf::IoBufMut::slice_mut(buf, len..cap))
        .await;
    let buf = slice.into_inner();
    match res {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(buf),
    }
}

/// Reads a request body (Content-Length or chunked) into a `Vec`, leaving
/// any pipelined bytes after it in `buf`. Sends 413 / 400 itself.
async fn read_body(
    w: &Rc<Worker>,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    req: &Request,
) -> Option<Vec<u8>> {
    let limit = w.settings.max_body_bytes;
    let origin = req.header("origin");
    if let Some(len) = req.content_length {
        if len > limit {
            send_error(w, stream, 413, "body exceeds max_body_bytes", false, origin).await;
            return None;
        }
        let need = req.head_len + len;
        while buf.len() < need {
            let b = read_more(stream, std::mem::take(buf), need).await?;
            *buf = b;
        }
        let body = buf[req.head_len..need].to_vec();
        buf.drain(..need);
        return Some(body);
    }
    if !req.chunked {
        buf.drain(..req.head_len);
        return Some(Vec::new());
    }
    loop {
        match http::decode_chunked(&buf[req.head_len..], limit) {
            Chunked::Done(body, used) => {
                buf.drain(..req.head_len + used);
                return Some(body);
            }
            Chunked::Partial => {
                let max = req.head_len + limit + 64 * 1024;
                let b = read_more(stream, std::mem::take(buf), max).await?;
                *buf = b;
            }
            Chunked::TooLarge => {
                send_error(w, stream, 413, "body exceeds max_body_bytes", false, origin).await;
                return None;
            }
            Chunked::Malformed => {
                send_error(w, stream, 400, "malformed chunked body", false, origin).await;
                return None;
            }
        }
    }
}

async fn send_error(
    w: &Worker,
    stream: &mut TcpStream,
    status: u16,
    msg: &str,
    keep_alive: bool,
    origin: Option<&str>,
) {
    metrics::http_response(status);
    let out = http::error_response(status, msg, keep_alive, &w.settings.cors, origin);
    let _ = stream.write_all(out.freeze()).await;
}

/// Answers a non-streaming request.
fn route(w: &Worker, req: &Request, body: Vec<u8>, keep_alive: bool) -> BytesMut {
    let origin = req.header("origin");
    let cors = &w.settings.cors;
    let (status, out) = match route_inner(w, req, body) {
        Ok((status, ctype, body)) => {
            let extra = if req.method == Method::Options {
                PREFLIGHT_HEADERS
            } else {
                ""
            };
            (
                status,
                http::response(status, ctype, &body, keep_alive, cors, origin, extra),
            )
        }
        Err((status, msg)) => (
            status,
            http::error_response(status, msg, keep_alive, cors, origin),
        ),
    };
    metrics::http_response(status);
    out
}

/// What a CORS preflight allows.
const PREFLIGHT_HEADERS: &str = "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n\
Access-Control-Allow-Headers: Authorization, X-API-Key, X-Consumer-Key, Last-Event-ID, Content-Type, Cache-Control\r\n\
Access-Control-Max-Age: 600\r\nAllow: GET, POST, OPTIONS\r\n";

type Routed = Result<(u16, &'static str, Bytes), (u16, &'static str)>;

fn route_inner(w: &Worker, req: &Request, body: Vec<u8>) -> Routed {
    let path = req.path.as_str();
    if req.method == Method::Options {
        return preflight(w, req);
    }
    if path == "/healthz" {
        method(req, Method::Get)?;
        return Ok(if w.hub.is_draining() {
            (
                503,
                "application/json",
                Bytes::from_static(br#"{"status":"draining"}"#),
            )
        } else {
            let s = format!(
                r#"{{"status":"ok","workers":{},"connections":{},"streams":{}}}"#,
                w.settings.workers,
                w.hub.connections.load(Ordering::Relaxed),
                w.hub.streams.load(Ordering::Relaxed)
            );
            (200, "application/json", Bytes::from(s))
        });
    }
    if w.hub.is_draining() {
        return Err((503, "server is draining"));
    }
    if path == "/metrics" {
        method(req, Method::Get)?;
        metrics::set_node_gauges(
            w.hub.connections.load(Ordering::Relaxed),
            w.hub.streams.load(Ordering::Relaxed),
            w.hub.topics().len(),
        );
        return Ok((
            200,
            "text/plain; version=0.0.4",
            Bytes::from(metrics::render()),
        ));
    }
    if path == "/" {
        method(req, Method::Get)?;
        return Ok((
            200,
            "text/plain; charset=utf-8",
            Bytes::from_static(INDEX.as_bytes()),
        ));
    }
    if let Some(topic) = path.strip_prefix("/v1/snapshot/") {
        method(req, Method::Get)?;
        let principal = authenticate(w, req)?;
        let topic = lookup_topic(w, topic)?;
        allowed(w, principal, &topic.name)?;
        return Ok((200, "application/json", topic.snapshot_json()));
    }
    if let Some(topic) = path.strip_prefix("/v1/publish/") {
        method(req, Method::Post)?;
        let principal = authenticate(w, req)?;
        match principal {
            Principal::Anonymous => return Err((401, "publishing needs a publisher key")),
            Principal::Key(k) if !w.settings.keys[k].role.may_publish() => {
                return Err((403, "this key may not publish"));
            }
            Principal::Key(_) => {}
        }
        let topic = lookup_topic(w, topic)?;
        allowed(w, principal, &topic.name)?;
        let ndjson = req.header("content-type").is_some_and(|c| {
            c.starts_with("application/x-ndjson") || c.starts_with("application/ndjson")
        });
        let mut body = body;
        let rows = parse_rows(&mut body, ndjson, &topic.key_fields).map_err(|e| {
            tracing::debug!(error = %e, "publish refused");
            (400, publish_error_message(&e))
        })?;
        let seq = w.hub.publish(&topic, &rows);
        metrics::published(rows.len());
        let s = format!(r#"{{"accepted":{},"id":"{seq}"}}"#, rows.len());
        return Ok((202, "application/json", Bytes::from(s)));
    }
    if path == "/v1/topics" {
        method(req, Method::Get)?;
        match authenticate(w, req)? {
            Principal::Key(k) if w.settings.keys[k].role == Role::Admin => {}
            Principal::Key(_) => return Err((403, "listing topics needs an admin key")),
            Principal::Anonymous => return Err((401, "listing topics needs an admin key")),
        }
        let mut s = String::from(r#"{"topics":["#);
        for (i, t) in w.hub.topics().iter().enumerate() {
            let (seq, rows) = t.stats();
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                r#"{{"topic":"{}","id":"{seq}","rows":{rows},"subscribers":{}}}"#,
                t.name,
                t.subscribers.load(Ordering::Relaxed)
            ));
        }
        s.push_str("]}");
        return Ok((200, "application/json", Bytes::from(s)));
    }
    Err((404, "no such endpoint"))
}

const INDEX: &str = "sluice: Server-Sent Events edge proxy\n\n\
GET  /v1/sse/{topic}        stream (text/event-stream)\n\
GET  /v1/snapshot/{topic}   state table as JSON\n\
POST /v1/publish/{topic}    publish rows (publisher key)\n\
GET  /v1/topics             topics (admin key)\n\
GET  /healthz  GET /metrics\n";

fn publish_error_message(e: &crate::sources::publish::PublishError) -> &'static str {
    use crate::sources::publish::PublishError as P;
    match e {
        P::Empty => "body has no rows",
        P::Json(_) => "body is not valid JSON",
        P::NotAnObject(_) => "every row must be a JSON object",
        P::MissingKey(..) => "a row lacks one of the topic's key fields",
        P::TooManyRows => "too many rows in one publish",
    }
}

fn method(req: &Request, m: Method) -> Result<(), (u16, &'static str)> {
    if req.method == m || (m == Method::Get && req.method == Method::Head) {
        Ok(())
    } else {
        Err((405, "method not allowed"))
    }
}

fn preflight(w: &Worker, req: &Request) -> Routed {
    match req.header("origin") {
        Some(o) if w.settings.cors.allow(o).is_none() => Err((403, "origin not allowed")),
        _ => Ok((204, "text/plain", Bytes::new())),
    }
}

fn authenticate(w: &Worker, req: &Request) -> Result<Principal, (u16, &'static str)> {
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let query: Vec<(&str, &str)> = req
        .query
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let cred = find_credential(&headers, &query);
    w.keys
        .authenticate(&w.settings, cred)
        .map_err(|e: AuthError| (401, e.message()))
}

fn lookup_topic(w: &Worker, name: &str) -> Result<Arc<crate::hub::Topic>, (u16, &'static str)> {
    w.hub.topic(name).map_err(|e| match e {
        TopicError::Invalid => (400, "invalid topic name"),
        TopicError::NotFound => (404, "no such topic"),
        TopicError::TooMany => (503, "too many topics on this node"),
    })
}

use std::sync::Arc;

/// The key's `topics` patterns and the topic's `tiers` gate (403).
fn allowed(w: &Worker, p: Principal, topic: &str) -> Result<usize, (u16, &'static str)> {
    let tier = match p {
        Principal::Key(k) => {
            let key = &w.settings.keys[k];
            if !key.topics.iter().any(|pat| pat.matches(topic)) {
                return Err((403, "this key may not use this topic"));
            }
            key.tier
        }
        Principal::Anonymous => w.settings.anonymous_tier,
    };
    match w.settings.topic_rule(topic) {
        Some(rule) if !rule.tiers.contains(&tier) => {
            Err((403, "this tier may not subscribe to this topic"))
        }
        _ => Ok(tier),
    }
}

/// Parses `heartbeat_s` (1..30) and the resume id.
fn stream_params(w: &Worker, req: &Request) -> Result<(u32, Option<u64>), (u16, &'static str)> {
    let heartbeat_s = match req.query("heartbeat_s") {
        None => w.settings.heartbeat_s,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=30).contains(&n) => n,
            _ => return Err((400, "heartbeat_s must be an integer 1..30")),
        },
    };
    let last = req
        .header("last-event-id")
        .or_else(|| req.query("lastEventId"));
    // Unknown or malformed ids give a fresh initial state, never an error.
    let last_id = last.and_then(|s| s.trim().parse::<u64>().ok());
    Ok((heartbeat_s, last_id))
}

/// Runs one SSE stream until it ends.
async fn stream_sse(
    w: Rc<Worker>,
    mut stream: TcpStream,
    req: Request,
    topic_name: &str,
    guard: ConnGuard,
) {
    let origin = req.header("origin");
    let checked = (|| {
        if w.hub.is_draining() {
            return Err((503, "server is draining"));
        }
        let principal = authenticate(&w, &req)?;
        let topic = lookup_topic(&w, topic_name)?;
        let tier = allowed(&w, principal, &topic.name)?;
        let (heartbeat_s, last_id) = stream_params(&w, &req)?;
        Ok((topic, tier, heartbeat_s, last_id))
    })();
    let (topic, tier, heartbeat_s, last_id) = match checked {
        Ok(v) => v,
        Err((status, msg)) => {
            send_error(&w, &mut stream, status, msg, false, origin).await;
            return;
        }
    };
    metrics::http_response(200);

    let s = &w.settings;
    let sub = Rc::new(Subscriber::new(w.now(), heartbeat_s, s.max_duration_s));
    let start = w.subscribe(&topic, &sub, last_id);

    // Head, `connected`, then the replay or initial state: queued before
    // anything can yield, so no live frame comes between them.
    let mut head = BytesMut::with_capacity(256);
    head.put_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n",
    );
    http::cors_headers(&mut head, &s.cors, origin);
    head.put_slice(b"\r\n");
    sub.push(frame(head.freeze()));
    let resumed = matches!(start, Start::Replay(_));
    sub.push(frame(sse::connected_frame(&sse::Connected {
        retry_ms: s.retry_ms,
        topic: &topic.name,
        tier: &s.tiers[tier].name,
        // Every stream is raw until coalesced tiers land.
        coalesce_ms: 0,
        heartbeat_s,
        resumed,
        ts_ms: unix_millis(),
    })));
    match start {
        Start::Replay(frames) => {
            let max = if s.max_events == 0 {
                usize::MAX
            } else {
                s.max_events as usize
            };
            let n = frames.len().min(max);
            for f in frames.into_iter().take(n) {
                sub.push(frame(f));
            }
            sub.count_events(n as u32);
            if s.max_events != 0 && sub.events() >= s.max_events {
                sub.close_with(frame(sse::limit_frame(s.max_events)), w.now());
            }
        }
        Start::Fresh(f) => sub.push(frame(f)),
    }
    w.schedule(&sub);
    w.streams.set(w.streams.get() + 1);
    w.hub.streams.fetch_add(1, Ordering::Relaxed);
    topic.subscribers.fetch_add(1, Ordering::Relaxed);
    // The stream lives on in a task of its own whose future is a third the
    // size of this request-handling one, which ends here with its buffers.
    monoio::spawn(run_stream(guard, sub, topic, stream));
}

/// Resolves when the peer closes (or errors, or sends too much).
async fn watch_peer(mut rd: OwnedReadHalf<TcpStream>) {
    let mut buf = Box::new([0u8; 16]);
    let mut total = 0;
    loop {
        let (res, b) = rd.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                total += n;
                if total > MAX_STREAM_INPUT_BYTES {
                    return;
                }
            }
        }
    }
}

/// A stream's task: writes what the fan-out queues on `sub` until the
/// stream ends, then does the bookkeeping. One async fn with no nested
/// future of its own, so the task stays small for as long as the stream lives.
async fn run_stream(
    guard: ConnGuard,
    sub: Rc<Subscriber>,
    topic: Arc<crate::hub::Topic>,
    stream: TcpStream,
) {
    let w = &*guard.0;
    let sub = &sub;
    'stream: {
        let (rd, mut wr) = stream.into_split();
        let mut peer = pin!(watch_peer(rd));
        loop {
            let more = poll_fn(|cx| {
                if peer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                if sub.has_queued() {
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
            let mut batch = w.take_batch();
            sub.take_into(&mut batch);
            while !batch.is_empty() {
                let mut write = pin!(wr.writev(batch));
                let done = poll_fn(|cx| {
                    if let Poll::Ready(r) = write.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                    if sub.state() == SubState::Abort || peer.as_mut().poll(cx).is_ready() {
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
                        batch.advance(n);
                    }
                    _ => break 'stream,
                }
            }
            w.return_batch(batch);
            w.release_write(sub);
        }
        let _ = wr.shutdown().await;
    }
    w.release_write(sub);
    sub.set_closed();
    topic.subscribers.fetch_sub(1, Ordering::Relaxed);
    w.hub.streams.fetch_sub(1, Ordering::Relaxed);
    w.streams.set(w.streams.get() - 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Keys;
    use crate::config::Settings;
    use crate::hub::Hub;

    #[test]
    fn a_streams_task_stays_small() {
        let s =
            Settings::from_toml("[server]\nworkers = 1\n[[topics]]\npattern = \"*\"\n").unwrap();
        let keys = Arc::new(Keys::new(&s.keys));
        let hub = Arc::new(Hub::new(Arc::new(s)));
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let w = Rc::new(Worker::new(0, hub, keys));
            let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let c = TcpStream::connect(addr).await.unwrap();
            let sub = Rc::new(Subscriber::new(0, 15, 0));
            eprintln!(
                "serve future: {}",
                std::mem::size_of_val(&serve(w.clone(), c))
            );
            eprintln!("subscriber: {}", std::mem::size_of::<Subscriber>());
            eprintln!("request: {}", std::mem::size_of::<Request>());
            let c = TcpStream::connect(addr).await.unwrap();
            let topic = w.hub.topic("t").unwrap();
            let stream = run_stream(ConnGuard(w.clone()), sub, topic, c);
            eprintln!("run_stream future: {}", std::mem::size_of_val(&stream));
            // what run_stream's task holds for as long as the stream lives
            assert!(
                std::mem::size_of_val(&stream) <= 448,
                "the stream task grew"
            );
            std::mem::forget(stream);
        });
    }
}
