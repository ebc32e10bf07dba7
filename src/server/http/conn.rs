//! One client connection: read HTTP/1.1 requests (keep-alive for everything
//! but streams), answer them through [`api`](super::api), or hand the socket
//! to the hot side as a stream (`server::worker::stream`).
//!
//! Cold: per request. It protects the node: deadlines on heads, bodies and
//! idle keep-alive; bodies read only after admission; a body on a method
//! that takes none refused and the connection closed (never parsed as the
//! next request); refusals closed gracefully so the answer is not reset
//! away. Any error here closes this connection only.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::metrics;
use crate::server::access;
use crate::server::http::admission::{
    Admitted, PostAdmitted, admit_post, admit_stream, stream_target,
};
use crate::server::http::api::{Reply, route, stored};
use crate::server::http::chunked::{ChunkedDecoder, Progress};
use crate::server::http::error::{ApiError, ErrorKind};
use crate::server::http::parse::{self, MAX_HEAD_BYTES};
use crate::server::http::response::{cors_headers, error_response, head_only};
use crate::server::http::{Context, Contexts, Method, Request};
use crate::server::limits::{ConnSlot, PendingSlot};
use crate::server::worker::StreamAuth;
use crate::server::worker::stream::{self, StreamStart};
use crate::sse;

/// First read buffer of a connection (grows up to `MAX_HEAD_BYTES`, or the
/// body limit for a publish).
const INITIAL_READ_BYTES: usize = 2048;
/// Bytes read at a time from a chunked body.
const CHUNKED_READ_BYTES: usize = 64 * 1024;
/// A chunked body may take this many times its decoded size on the wire
/// (chunk sizes, extensions, CRLFs) before it is refused.
const MAX_CHUNKED_OVERHEAD: usize = 8;
/// How long a connection being closed by the server is drained before the
/// close: closing with unread bytes would send a reset that can destroy the
/// last response before the client reads it.
pub const CLOSE_LINGER: Duration = Duration::from_millis(250);

/// Serves one accepted connection until it closes. `pending` counts it as a
/// connection that is not a stream (`server::limits`) until it becomes one.
///
/// Deadlines (config, seconds): a request head must arrive whole within
/// `header_timeout_s` of the connection, or of its first byte on a
/// kept-alive connection, which may wait `keepalive_timeout_s` for that
/// byte; a body within `body_timeout_s` of its head. A connection past a
/// deadline is closed without an answer (the client has gone quiet).
///
/// Each request is served with the worker's context current once its head
/// has arrived (a reload applies from the next request on).
pub async fn serve(
    ctxs: Rc<Contexts>,
    mut stream: TcpStream,
    conn: ConnSlot,
    pending: PendingSlot,
) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(INITIAL_READ_BYTES);
    let mut first = true;
    let mut spare = parse::Spare::default();
    loop {
        let ctx = ctxs.current(); // for the deadlines only
        let header_timeout = Duration::from_secs(ctx.settings.header_timeout_s.into());
        // Read one request head. The clock is read once per request (a
        // publish whose head comes in one read reads it nowhere else here).
        let mut deadline = Instant::now()
            + if first || !buf.is_empty() {
                header_timeout
            } else {
                Duration::from_secs(ctx.settings.keepalive_timeout_s.into())
            };
        first = false;
        let mut idle = buf.is_empty();
        let req = loop {
            match parse::parse_reusing(&buf, &mut spare) {
                Ok(Some(req)) => break req,
                Ok(None) => {}
                Err(e) => {
                    let e = ApiError::from(e);
                    tracing::debug!(status = e.status(), msg = e.message, "bad request head");
                    send_error(&ctx, &mut stream, None, &e).await;
                    return;
                }
            }
            if idle && !buf.is_empty() {
                // The first bytes of a request on a kept-alive connection
                // came and its head is not whole: from them, it has
                // `header_timeout_s`.
                deadline = deadline.min(Instant::now() + header_timeout);
                idle = false;
            }
            let read = read_more(&mut stream, buf, MAX_HEAD_BYTES);
            match monoio::time::timeout_at(deadline.into(), read).await {
                Ok(Some(b)) => buf = b,
                Ok(None) | Err(_) => return,
            }
        };
        // The request is served with the context current now, after its
        // head: a stream is admitted and joins its worker with no await in
        // between, so the key and tier indices it records are those of the
        // configuration its worker has when it joins (`server::reload`).
        let ctx = ctxs.current();
        let keep_alive = req.keep_alive && !ctx.hub.is_draining();

        // Only POST takes a body. Any other request that announces one is
        // refused and the connection closed, so that its body can never be
        // read as the next request.
        if req.has_body() && req.method != Method::Post {
            let e = ApiError::bad_request("this method takes no request body");
            send_error(&ctx, &mut stream, Some(&req), &e).await;
            return;
        }

        let target = if req.method == Method::Options {
            None
        } else {
            stream_target(&ctx, &req)
        };
        if let Some(target) = target {
            if req.method != Method::Get {
                let e = ApiError::new(ErrorKind::MethodNotAllowed, "use GET");
                send_error(&ctx, &mut stream, Some(&req), &e).await;
                return;
            }
            drop(buf);
            drop(pending);
            match admit_stream(&ctx, &req, target) {
                Ok(admitted) => begin_stream(&ctx, stream, conn, &req, admitted),
                Err(e) => send_error(&ctx, &mut stream, Some(&req), &e).await,
            }
            return;
        }

        let mut target = None;
        let body = if req.method == Method::Post {
            // Authenticate and admit before a byte of the body is read.
            match admit_post(&ctx, &req) {
                Err(e) => {
                    send_error(&ctx, &mut stream, Some(&req), &e).await;
                    return;
                }
                Ok(PostAdmitted::NoBody) => {
                    // Not an endpoint that takes a body: answer (404 or 405)
                    // without reading it, and close.
                    if let Reply::Now(out, body) = route(&ctx, &req, Vec::new(), None, false) {
                        let _ = write_response(&mut stream, out, body).await;
                    }
                    close_gracefully(&mut stream).await;
                    return;
                }
                Ok(PostAdmitted::Token) => {}
                Ok(PostAdmitted::Publish(topic, key)) => target = Some((topic, key)),
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
            if let Some(b) = buffered_body(&ctx, &mut buf, &req) {
                b
            } else {
                let body_timeout = Duration::from_secs(ctx.settings.body_timeout_s.into());
                let read = read_body(&ctx, &mut stream, &mut buf, &req);
                match monoio::time::timeout(body_timeout, read).await {
                    Ok(Some(b)) => b,
                    Ok(None) | Err(_) => return,
                }
            }
        } else {
            buf.drain(..req.head_len);
            Vec::new()
        };
        let (out, body) = match route(&ctx, &req, body, target, keep_alive) {
            Reply::Now(out, body) => (out, body),
            // `[cluster]`: the 202 waits for JetStream to store the update.
            Reply::Stored(s) => (stored(&ctx, &req, s.wait().await, keep_alive), Bytes::new()),
        };
        if !write_response(&mut stream, out, body).await || !keep_alive {
            return;
        }
        spare = req.recycle();
    }
}

/// Writes a response: its head (and small body), then a large body from its
/// own buffer. False when the connection failed.
async fn write_response(stream: &mut TcpStream, head: BytesMut, body: Bytes) -> bool {
    if stream.write_all(head.freeze()).await.0.is_err() {
        return false;
    }
    body.is_empty() || stream.write_all(body).await.0.is_ok()
}

/// Hands an admitted stream to the hot side: the response head (CORS for
/// the request's origin) and the `connected` frame's fields as plain values.
fn begin_stream(ctx: &Context, stream: TcpStream, conn: ConnSlot, req: &Request, a: Admitted) {
    metrics::http_response(200);
    let s = &ctx.settings;
    let tier = &s.tiers[a.tier];
    let mut head = BytesMut::with_capacity(256);
    head.put_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n",
    );
    cors_headers(&mut head, &s.cors, req.header("origin"));
    head.put_slice(b"\r\n");
    let account = match a.key_index {
        Some(k) => s.keys[k].name.as_str(),
        None => crate::metering::ANONYMOUS_KEY,
    };
    let start = StreamStart {
        topic: a.topic.clone(),
        cadence: tier.cadence,
        raw_tier: tier.coalesce_ms == 0,
        tier: a.tier,
        filter: a.filter,
        last_id: a.last_id,
        heartbeat_s: a.heartbeat_s,
        max_duration_s: s.max_duration_s,
        account,
        key: a.key,
        auth: StreamAuth {
            key: a.key_index.and_then(|k| u32::try_from(k).ok()),
            tier: u32::try_from(a.tier).unwrap_or(u32::MAX),
            token: a.token,
        },
        head: head.freeze(),
        connected: sse::Connected {
            retry_ms: s.retry_ms,
            topic: &a.topic.name,
            tier: &tier.name,
            coalesce_ms: tier.coalesce_ms,
            heartbeat_s: a.heartbeat_s,
            resumed: false,
            ts_ms: 0,
        },
    };
    stream::start(&ctx.worker, stream, conn, start);
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

/// A `Content-Length` body already read with its head (a small publish
/// usually is): taken without a read, a deadline or a future. `None`: read
/// it with [`read_body`], which also refuses one over the limit.
fn buffered_body(ctx: &Context, buf: &mut Vec<u8>, req: &Request) -> Option<Vec<u8>> {
    let len = req.content_length?;
    let need = req.head_len.checked_add(len)?;
    if len > ctx.settings.max_body_bytes || buf.len() < need {
        return None;
    }
    let body = buf[req.head_len..need].to_vec();
    buf.drain(..need);
    Some(body)
}

/// Reads a request body (Content-Length or chunked) into a `Vec`, leaving
/// any pipelined bytes after it in `buf`. Sends 413 / 400 itself.
async fn read_body(
    ctx: &Context,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    req: &Request,
) -> Option<Vec<u8>> {
    let limit = ctx.settings.max_body_bytes;
    let too_large = ApiError::new(ErrorKind::PayloadTooLarge, "body exceeds max_body_bytes");
    if let Some(len) = req.content_length {
        if len > limit {
            send_error(ctx, stream, Some(req), &too_large).await;
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
        let e = match fed {
            Ok(Progress::Done(n)) => {
                buf.drain(..pos + n);
                return Some(body);
            }
            Ok(Progress::More) => {
                wire = wire.saturating_add(buf.len() - pos);
                if wire > max_wire {
                    ApiError::bad_request("chunked framing too large for its body")
                } else {
                    buf.clear();
                    pos = 0;
                    *buf = read_more(stream, std::mem::take(buf), CHUNKED_READ_BYTES).await?;
                    continue;
                }
            }
            Err(e) => ApiError::from(e),
        };
        tracing::debug!(status = e.status(), msg = e.message, "bad chunked body");
        send_error(ctx, stream, Some(req), &e).await;
        return None;
    }
}

/// Sends an error response and closes the connection gracefully (any
/// unread request bytes are drained for a moment, so that the close does
/// not reset the connection before the client reads the answer).
async fn send_error(ctx: &Context, stream: &mut TcpStream, req: Option<&Request>, e: &ApiError) {
    metrics::refused(e);
    access::refused(req, e);
    let origin = req.and_then(|r| r.header("origin"));
    let mut out = error_response(e, false, &ctx.settings.cors, origin);
    if req.is_some_and(|r| r.method == Method::Head) {
        out = head_only(out);
    }
    if stream.write_all(out.freeze()).await.0.is_ok() {
        close_gracefully(stream).await;
    }
}

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
