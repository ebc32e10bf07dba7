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
use crate::config::fill;
use crate::hub::filter::Clause;
use crate::hub::{Filter, Maker, Start, Topic, TopicError};
use crate::metrics;
use crate::server::chunked::{ChunkError, ChunkedDecoder, Progress};
use crate::server::http::{self, HttpError, Method, Request};
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
                    send_error(&w, &mut stream, None, status, msg).await;
                    return;
                }
            }
            match read_more(&mut stream, buf, http::MAX_HEAD_BYTES).await {
                Some(b) => buf = b,
                None => return,
            }
        };
        let keep_alive = req.keep_alive && !w.is_draining();

        // Only POST takes a body. Any other request that announces one is
        // refused and the connection closed, so that its body can never be
        // read as the next request.
        if req.has_body() && req.method != Method::Post {
            send_error(
                &w,
                &mut stream,
                Some(&req),
                400,
                "this method takes no request body",
            )
            .await;
            return;
        }

        let target = if req.method == Method::Options {
            None
        } else {
            stream_target(&w, &req)
        };
        if let Some(target) = target {
            if req.method != Method::Get {
                send_error(&w, &mut stream, Some(&req), 405, "use GET").await;
                return;
            }
            drop(buf);
            stream_sse(w, stream, req, target, guard).await;
            return;
        }

        let body = if req.method == Method::Post {
            // Authenticate and admit before a byte of the body is read.
            match admit_post(&w, &req) {
                Err((status, msg)) => {
                    send_error(&w, &mut stream, Some(&req), status, msg).await;
                    return;
                }
                Ok(false) => {
                    // Not an endpoint that takes a body: answer (404 or 405)
                    // without reading it, and close.
                    let (out, body) = route(&w, &req, Vec::new(), false);
                    let _ = write_response(&mut stream, out, body).await;
                    close_gracefully(&mut stream).await;
                    return;
                }
                Ok(true) => {}
            }
            if req.expect_continue
                && req.has_body()
                && stream
                    .write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])
                    .await
                    .0
                    .is_err()
            {
                return;
            }
            match read_body(&w, &mut stream, &mut buf, &req).await {
                Some(b) => b,
                None => return,
            }
        } else {
            buf.drain(..req.head_len);
            Vec::new()
        };
        let (out, body) = route(&w, &req, body, keep_alive);
        if !write_response(&mut stream, out, body).await || !keep_alive {
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
        buf.reserve(len.max(1024).min(limit - len));
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

/// Bytes read at a time from a chunked body.
const CHUNKED_READ_BYTES: usize = 64 * 1024;

/// Reads a request body (Content-Length or chunked) into a `Vec`, leaving
/// any pipelined bytes after it in `buf`. Sends 413 / 400 itself.
async fn read_body(
    w: &Rc<Worker>,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    req: &Request,
) -> Option<Vec<u8>> {
    let limit = w.settings.max_body_bytes;
    if let Some(len) = req.content_length {
        if len > limit {
            send_error(w, stream, Some(req), 413, "body exceeds max_body_bytes").await;
            return None;
        }
        // Cannot overflow: head_len <= MAX_HEAD_BYTES and len <= limit.
        let need = req.head_len.checked_add(len)?;
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
    // Streaming: each byte is decoded once, then dropped from `buf`.
    let mut decoder = ChunkedDecoder::new(limit);
    let mut body = Vec::new();
    let mut wire = 0usize;
    let max_wire = limit
        .saturating_mul(MAX_CHUNKED_OVERHEAD)
        .saturating_add(CHUNKED_READ_BYTES);
    let mut pos = req.head_len;
    loop {
        let fed = decoder.feed(&buf[pos..], |p| body.extend_from_slice(p));
        let (status, msg) = match fed {
            Ok(Progress::Done(n)) => {
                buf.drain(..pos + n);
                return Some(body);
            }
            Ok(Progress::More) => {
                wire = wire.saturating_add(buf.len() - pos);
                if wire > max_wire {
                    (400, "chunked framing too large for its body")
                } else {
                    buf.clear();
                    pos = 0;
                    *buf = read_more(stream, std::mem::take(buf), CHUNKED_READ_BYTES).await?;
                    continue;
                }
            }
            Err(ChunkError::TooLarge) => (413, "body exceeds max_body_bytes"),
            Err(ChunkError::Malformed(m)) => (400, m),
        };
        tracing::debug!(status, msg, "bad chunked body");
        send_error(w, stream, Some(req), status, msg).await;
        return None;
    }
}

/// A chunked body may take this many times its decoded size on the wire
/// (chunk sizes, extensions, CRLFs) before it is refused.
const MAX_CHUNKED_OVERHEAD: usize = 8;

/// Sends an error response and closes the connection gracefully (any
/// unread request bytes are drained for a moment, so that the close does
/// not reset the connection before the client reads the answer).
async fn send_error(
    w: &Worker,
    stream: &mut TcpStream,
    req: Option<&Request>,
    status: u16,
    msg: &str,
) {
    metrics::http_response(status);
    let origin = req.and_then(|r| r.header("origin"));
    let mut out = http::error_response(status, msg, false, &w.settings.cors, origin);
    if req.is_some_and(|r| r.method == Method::Head) {
        out = http::head_only(out);
    }
    if stream.write_all(out.freeze()).await.0.is_ok() {
        close_gracefully(stream).await;
    }
}

/// How long a connection being closed by the server is drained before the
/// close: closing with unread bytes would send a reset that can destroy the
/// last response before the client reads it.
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// Shuts down the write side, then reads and drops what the peer still
/// sends, for at most [`CLOSE_LINGER`].
pub async fn close_gracefully(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let _ = monoio::time::timeout(CLOSE_LINGER, async {
        let mut buf = Box::new([0u8; 512]);
        loop {
            let (res, b) = stream.read(buf).await;
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                break;
            }
        }
    })
    .await;
}

/// The checks a `POST` passes before its body is read: draining, then the
/// endpoint's authentication and permission. `Ok(true)`: read the body and
/// route; `Ok(false)`: no endpoint here takes a body.
fn admit_post(w: &Worker, req: &Request) -> Result<bool, (u16, &'static str)> {
    if w.hub.is_draining() {
        return Err((503, "server is draining"));
    }
    if req.path == "/v1/stream/token" {
        token_issuer(w, req)?;
        return Ok(true);
    }
    if let Some(topic) = req.path.strip_prefix("/v1/publish/") {
        publish_target(w, req, topic)?;
        return Ok(true);
    }
    Ok(false)
}

/// Bodies up to this size are copied after the response head (one write);
/// larger ones (snapshots) are written from their own, shared, buffer.
const COPIED_BODY_BYTES: usize = 16 * 1024;

/// Writes a response: its head (and small body), then a large body from its
/// own buffer. False when the connection failed.
async fn write_response(stream: &mut TcpStream, head: BytesMut, body: Bytes) -> bool {
    if stream.write_all(head.freeze()).await.0.is_err() {
        return false;
    }
    body.is_empty() || stream.write_all(body).await.0.is_ok()
}

/// Answers a non-streaming request: the response, and a large body to send
/// after it from its own buffer (empty when the body is in the response).
fn route(w: &Worker, req: &Request, body: Vec<u8>, keep_alive: bool) -> (BytesMut, Bytes) {
    let origin = req.header("origin");
    let cors = &w.settings.cors;
    let head_only = req.method == Method::Head;
    let (status, out, body) = match route_inner(w, req, body) {
        Ok((status, ctype, body)) => {
            let extra = if req.method == Method::Options {
                PREFLIGHT_HEADERS
            } else {
                ""
            };
            if body.len() > COPIED_BODY_BYTES {
                let mut out = BytesMut::with_capacity(256);
                http::response_head(
                    &mut out,
                    status,
                    ctype,
                    body.len(),
                    keep_alive,
                    cors,
                    origin,
                    extra,
                );
                (status, out, if head_only { Bytes::new() } else { body })
            } else {
                let out = http::response(status, ctype, &body, keep_alive, cors, origin, extra);
                (status, out, Bytes::new())
            }
        }
        Err((status, msg)) => (
            status,
            http::error_response(status, msg, keep_alive, cors, origin),
            Bytes::new(),
        ),
    };
    metrics::http_response(status);
    if head_only {
        (http::head_only(out), body)
    } else {
        (out, body)
    }
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
        let up = w.hub.workers_up.load(Ordering::Relaxed);
        let (status, state) = if w.hub.is_draining() {
            (503, "draining")
        } else if up < w.settings.workers {
            (503, "starting")
        } else {
            (200, "ok")
        };
        let s = format!(
            r#"{{"status":"{state}","workers":{up},"connections":{},"streams":{}}}"#,
            w.hub.connections.load(Ordering::Relaxed),
            w.hub.streams.load(Ordering::Relaxed)
        );
        return Ok((status, "application/json", Bytes::from(s)));
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
        // The page streams the demo topics with the demo keys: a config
        // without the demo feed gets the plain index, browsers included.
        let demo = w
            .settings
            .sources
            .contains(&crate::config::SourceKind::Demo);
        let html = req
            .header("accept")
            .is_some_and(|a| a.contains("text/html"));
        return Ok(if demo && html {
            (
                200,
                "text/html; charset=utf-8",
                Bytes::from_static(DEMO_PAGE.as_bytes()),
            )
        } else {
            (
                200,
                "text/plain; charset=utf-8",
                Bytes::from_static(INDEX.as_bytes()),
            )
        });
    }
    if let Some(topic) = path.strip_prefix("/v1/snapshot/") {
        method(req, Method::Get)?;
        let principal = authenticate(w, req)?;
        let topic = lookup_topic(w, topic, Maker::Reader(principal.key()))?;
        allowed(w, &principal, &topic.name)?;
        let filter = row_filter(&topic, req, &[])?;
        return Ok((
            200,
            "application/json",
            topic.snapshot_json(filter.as_ref()),
        ));
    }
    if path == "/v1/stream/token" {
        method(req, Method::Post)?;
        return stream_token(w, req, body);
    }
    if let Some(topic) = path.strip_prefix("/v1/publish/") {
        method(req, Method::Post)?;
        let topic = publish_target(w, req, topic)?;
        let ndjson = req.header("content-type").is_some_and(|c| {
            c.starts_with("application/x-ndjson") || c.starts_with("application/ndjson")
        });
        let mut body = body;
        let rows =
            parse_rows(&mut body, ndjson, &topic.key_fields, &topic.fields).map_err(|e| {
                tracing::debug!(error = %e, "publish refused");
                (400, publish_error_message(&e))
            })?;
        let accepted = rows.len();
        let seq = w.hub.publish(&topic, rows);
        metrics::published(accepted);
        let s = format!(r#"{{"accepted":{accepted},"id":"{seq}"}}"#);
        return Ok((202, "application/json", Bytes::from(s)));
    }
    if path == "/v1/topics" {
        method(req, Method::Get)?;
        match authenticate(w, req)? {
            Principal::Key(k) if w.settings.keys[k].role == Role::Admin => {}
            Principal::Key(_) | Principal::Token(_) => {
                return Err((403, "listing topics needs an admin key"));
            }
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
    if path == "/__sluice/panic" && crate::fault::injected("request") {
        panic!("injected fault (SLUICE_TEST_PANIC=request)");
    }
    Err((404, "no such endpoint"))
}

const INDEX: &str = "sluice: Server-Sent Events edge proxy\n\n\
GET  /v1/sse/{topic}        stream (text/event-stream)\n\
GET  /v1/snapshot/{topic}   state table as JSON\n\
POST /v1/publish/{topic}    publish rows (publisher key)\n\
POST /v1/stream/token       a short-lived token for ?token= (any key)\n\
GET  /v1/topics             topics (admin key)\n\
GET  /healthz  GET /metrics\n\
Open / in a browser for the live demo page.\n";

/// The demo page (`GET /` from a browser): EventSource, a tier switch and
/// the frames as they arrive.
const DEMO_PAGE: &str = include_str!("demo.html");

/// The topic a publish may write to: a publisher key, allowed on it.
fn publish_target(
    w: &Worker,
    req: &Request,
    topic: &str,
) -> Result<Arc<Topic>, (u16, &'static str)> {
    let principal = authenticate(w, req)?;
    match principal {
        Principal::Anonymous => return Err((401, "publishing needs a publisher key")),
        Principal::Token(_) => return Err((403, "a stream token may only subscribe")),
        Principal::Key(k) if !w.settings.keys[k].role.may_publish() => {
            return Err((403, "this key may not publish"));
        }
        Principal::Key(_) => {}
    }
    let topic = lookup_topic(w, topic, Maker::Publisher)?;
    allowed(w, &principal, &topic.name)?;
    Ok(topic)
}

/// The key a stream token is issued for: any API key.
fn token_issuer(w: &Worker, req: &Request) -> Result<usize, (u16, &'static str)> {
    match authenticate(w, req)? {
        Principal::Key(k) => Ok(k),
        Principal::Anonymous => Err((401, "a stream token needs an API key")),
        Principal::Token(_) => Err((403, "a stream token cannot issue tokens")),
    }
}

/// `POST /v1/stream/token`: any API key; an optional `{"topic":T}` scopes it.
fn stream_token(w: &Worker, req: &Request, mut body: Vec<u8>) -> Routed {
    let key = token_issuer(w, req)?;
    let mut scope = None;
    if body.iter().any(|b| !b.is_ascii_whitespace()) {
        use simd_json::prelude::*;
        let v = simd_json::to_borrowed_value(&mut body).map_err(|_| {
            (
                400,
                "body must be a JSON object like {\"topic\":\"odds/x\"}",
            )
        })?;
        let obj = v.as_object().ok_or((400, "body must be a JSON object"))?;
        match obj.get("topic") {
            None => {}
            Some(t) => {
                let t = t.as_str().ok_or((400, "topic must be a string"))?;
                let topic = lookup_topic(w, t, Maker::Reader(Some(key)))?;
                allowed(w, &Principal::Key(key), &topic.name)?;
                scope = Some(topic.name.to_string());
            }
        }
    }
    let token = w
        .keys
        .issue_token(&w.settings, key, scope.as_deref(), crate::time::unix_secs());
    let s = format!(
        r#"{{"token":"{token}","expires_in":{}}}"#,
        w.settings.token_ttl_s
    );
    Ok((200, "application/json", Bytes::from(s)))
}

/// A stream request's topic and its route's fixed filters (field, values).
struct Target {
    topic: String,
    fixed: Vec<(String, String)>,
}

/// The stream a GET path names: the first `[[routes]]` template that
/// matches, else `/v1/sse/{topic}`. `None`: not a stream path.
fn stream_target(w: &Worker, req: &Request) -> Option<Result<Target, (u16, &'static str)>> {
    // sluice's own endpoints are never shadowed by a route
    let own = ["/healthz", "/metrics", "/v1/topics", "/v1/stream/token"];
    if own.contains(&req.path.as_str())
        || req.path.starts_with("/v1/snapshot/")
        || req.path.starts_with("/v1/publish/")
    {
        return None;
    }
    for r in &w.settings.routes {
        let Some(vars) = r.bind(&req.path) else {
            continue;
        };
        let lookup = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .or_else(|| req.query(name))
        };
        let missing = (400, "a query parameter this URL needs is missing");
        let topic = match fill(&r.topic, lookup) {
            Ok(t) => t,
            Err(_) => return Some(Err(missing)),
        };
        let mut fixed = Vec::with_capacity(r.fixed.len());
        for (field, values) in &r.fixed {
            match fill(values, lookup) {
                Ok(v) => fixed.push((field.clone(), v)),
                Err(_) => return Some(Err(missing)),
            }
        }
        return Some(Ok(Target { topic, fixed }));
    }
    req.path.strip_prefix("/v1/sse/").map(|t| {
        Ok(Target {
            topic: t.to_string(),
            fixed: Vec::new(),
        })
    })
}

/// The row filter of a request: the route's fixed clauses, then one clause
/// per filter parameter of the topic that the query gives (all-of, so the
/// client only narrows). `None`: no filter.
fn row_filter(
    topic: &Topic,
    req: &Request,
    fixed: &[(String, String)],
) -> Result<Option<Filter>, (u16, &'static str)> {
    let mut clauses = Vec::new();
    for (field, values) in fixed {
        let i = topic
            .fields
            .iter()
            .position(|f| f == field)
            .ok_or((400, "this route filters on a field the topic does not keep"))?;
        clauses.push(Clause::parse(i, values).map_err(|e| (400, e.message()))?);
    }
    for (param, i) in topic.filter_params.iter() {
        if let Some(v) = req.query(param) {
            clauses.push(Clause::parse(*i, v).map_err(|e| (400, e.message()))?);
        }
    }
    Ok(Filter::new(clauses))
}

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

fn lookup_topic(w: &Worker, name: &str, maker: Maker) -> Result<Arc<Topic>, (u16, &'static str)> {
    w.hub.topic_for(name, maker).map_err(|e| match e {
        TopicError::Invalid => (400, "invalid topic name"),
        TopicError::NotFound => (404, "no such topic"),
        TopicError::TooMany => (503, "too many topics on this node"),
        TopicError::KeyCap => (
            503,
            "this key has made too many topics that hold nothing; try again later",
        ),
    })
}

use std::sync::Arc;

/// The token's scope, the key's `topics` patterns and the topic's `tiers`
/// gate (403). Returns the tier the request gets.
fn allowed(w: &Worker, p: &Principal, topic: &str) -> Result<usize, (u16, &'static str)> {
    let (key, tier) = match p {
        Principal::Key(k) => (Some(*k), w.settings.keys[*k].tier),
        Principal::Token(g) => {
            if g.topic.as_deref().is_some_and(|scope| scope != topic) {
                return Err((403, "this stream token is for another topic"));
            }
            (Some(g.key), g.tier)
        }
        Principal::Anonymous => (None, w.settings.anonymous_tier),
    };
    if let Some(k) = key
        && !w.settings.keys[k]
            .topics
            .iter()
            .any(|pat| pat.matches(topic))
    {
        return Err((403, "this key may not use this topic"));
    }
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
    target: Result<Target, (u16, &'static str)>,
    guard: ConnGuard,
) {
    let origin = req.header("origin");
    let checked = (|| {
        if w.hub.is_draining() {
            return Err((503, "server is draining"));
        }
        let target = target?;
        let principal = authenticate(&w, &req)?;
        let topic = lookup_topic(&w, &target.topic, Maker::Reader(principal.key()))?;
        let tier = allowed(&w, &principal, &topic.name)?;
        let filter = row_filter(&topic, &req, &target.fixed)?;
        let (heartbeat_s, last_id) = stream_params(&w, &req)?;
        // Last: a counted stream must reach `run_stream`, which uncounts it.
        let key = principal.key();
        if let Some(k) = key
            && !w.hub.acquire_key_stream(k)
        {
            return Err((429, "this key has max_connections streams open"));
        }
        Ok((topic, tier, filter, heartbeat_s, last_id, key))
    })();
    let (topic, tier, filter, heartbeat_s, last_id, key) = match checked {
        Ok(v) => v,
        Err((status, msg)) => {
            send_error(&w, &mut stream, Some(&req), status, msg).await;
            return;
        }
    };
    metrics::http_response(200);

    let s = &w.settings;
    let tier = &s.tiers[tier];
    let sub = Rc::new(Subscriber::new(
        w.now(),
        heartbeat_s,
        s.max_duration_s,
        key,
        tier.coalesce_ms == 0,
    ));
    let start = w.subscribe(&topic, tier.cadence, filter.map(Rc::new), &sub, last_id);

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
        tier: &tier.name,
        coalesce_ms: tier.coalesce_ms,
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
async fn run_stream(guard: ConnGuard, sub: Rc<Subscriber>, topic: Arc<Topic>, stream: TcpStream) {
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
    if let Some(k) = sub.key {
        w.hub.release_key_stream(k);
    }
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
            let sub = Rc::new(Subscriber::new(0, 15, 0, None, true));
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
