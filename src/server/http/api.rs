//! The REST endpoints (SPEC §3): a request is parsed into an [`Endpoint`]
//! once, then answered by one function per endpoint (mini-redis's `cmd/`).
//!
//! Cold: once per request. Handlers return the response body or an
//! [`ApiError`]; [`route`] turns either into the whole response (CORS and
//! `HEAD` handled once, refusals counted by code).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use crate::auth::{Principal, Role};
use crate::hub::{Maker, Topic};
use crate::metrics;
use crate::server::http::admission::{
    authenticate, authorize, lookup_topic, publish_target, row_filter, token_issuer,
};
use crate::server::http::error::{ApiError, DRAINING, ErrorKind};
use crate::server::http::response::{
    error_response, head_only as head_only_response, response, response_head,
};
use crate::server::http::{Context, Method, Request};
use crate::server::{access, admin};
use crate::sources::publish::{Accepted, Format, PublishError, Submitted, submit};

/// What a CORS preflight allows.
const PREFLIGHT_HEADERS: &str = "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n\
Access-Control-Allow-Headers: Authorization, X-API-Key, X-Consumer-Key, Last-Event-ID, Content-Type, Cache-Control\r\n\
Access-Control-Max-Age: 600\r\nAllow: GET, POST, OPTIONS\r\n";

const INDEX: &str = "sluice: Server-Sent Events edge proxy\n\n\
GET  /v1/sse/{topic}        stream (text/event-stream)\n\
GET  /v1/snapshot/{topic}   state table as JSON\n\
POST /v1/publish/{topic}    publish rows (publisher key)\n\
POST /v1/stream/token       a short-lived token for ?token= (any key)\n\
GET  /v1/topics             topics (admin key)\n\
GET  /v1/usage              usage per key since start (admin key, [metering])\n\
GET  /healthz  GET /metrics\n";

/// The demo page (`GET /` from a browser, when the demo feed runs):
/// one EventSource, a tier switch and the frames as they arrive.
const DEMO_PAGE: &str = include_str!("demo.html");

/// A successful answer: status, content type, body.
type Answer = (u16, &'static str, Bytes);

/// The endpoints other than streams, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Preflight,
    Healthz,
    Metrics,
    Index,
    Snapshot(&'a str),
    StreamToken,
    Publish(&'a str),
    Topics,
    Usage,
    /// `GET /__sluice/panic` with `SLUICE_TEST_PANIC=request` (tests).
    InjectedPanic,
    /// `GET /__sluice/stall` with `SLUICE_TEST_STALL=worker` (tests).
    InjectedStall,
    NotFound,
}

impl<'a> Endpoint<'a> {
    /// The endpoint a request names (streams are told apart before this).
    pub fn of(req: &'a Request) -> Endpoint<'a> {
        let path = req.path.as_str();
        if req.method == Method::Options {
            return Endpoint::Preflight;
        }
        match path {
            "/healthz" => Endpoint::Healthz,
            "/metrics" => Endpoint::Metrics,
            "/" => Endpoint::Index,
            "/v1/stream/token" => Endpoint::StreamToken,
            "/v1/topics" => Endpoint::Topics,
            "/v1/usage" => Endpoint::Usage,
            "/__sluice/panic" if crate::fault::injected("request") => Endpoint::InjectedPanic,
            "/__sluice/stall" if crate::fault::stall_injected("worker") => Endpoint::InjectedStall,
            _ => {
                if let Some(t) = path.strip_prefix("/v1/snapshot/") {
                    Endpoint::Snapshot(t)
                } else if let Some(t) = path.strip_prefix("/v1/publish/") {
                    Endpoint::Publish(t)
                } else {
                    Endpoint::NotFound
                }
            }
        }
    }

    /// The method the endpoint takes (`GET` ones answer `HEAD` too).
    fn method(self) -> Option<Method> {
        match self {
            Endpoint::Preflight
            | Endpoint::NotFound
            | Endpoint::InjectedPanic
            | Endpoint::InjectedStall => None,
            Endpoint::StreamToken | Endpoint::Publish(_) => Some(Method::Post),
            _ => Some(Method::Get),
        }
    }

    /// Answered while the node drains (health checks must see it drain).
    fn while_draining(self) -> bool {
        matches!(self, Endpoint::Healthz | Endpoint::Preflight)
    }
}

/// A response, or a publish whose answer waits for the cluster log.
pub enum Reply {
    /// A response, and a large body to send after it from its own buffer
    /// (empty when the body is in the response).
    Now(BytesMut, Bytes),
    /// `[cluster]`: the `202` waits until JetStream has stored the update.
    Stored(Submitted),
}

/// A publish's topic and key, as [`admit_post`] found them.
///
/// [`admit_post`]: crate::server::http::admission::admit_post
pub type PublishTarget = (Arc<Topic>, usize);

/// Answers a non-streaming request with a whole response (or, for a
/// `[cluster]` publish, with the update on its way to the log). A publish
/// admitted before its body was read comes with its `target`.
pub fn route(
    ctx: &Context,
    req: &Request,
    body: Vec<u8>,
    target: Option<PublishTarget>,
    keep_alive: bool,
) -> Reply {
    match answer(ctx, req, body, target) {
        Ok(Answered::Stored(s)) => Reply::Stored(s),
        Ok(Answered::Now(a)) => {
            let (out, body) = respond(ctx, req, Ok(a), keep_alive);
            Reply::Now(out, body)
        }
        Err(e) => {
            let (out, body) = respond(ctx, req, Err(e), keep_alive);
            Reply::Now(out, body)
        }
    }
}

/// The `202` of a publish the cluster log has stored, or its refusal.
pub fn stored(
    ctx: &Context,
    req: &Request,
    r: Result<Accepted, PublishError>,
    keep_alive: bool,
) -> BytesMut {
    respond(
        ctx,
        req,
        r.map(accepted).map_err(ApiError::from),
        keep_alive,
    )
    .0
}

fn accepted(Accepted { rows, id }: Accepted) -> Answer {
    // {"accepted":<rows>,"id":"<id>"}, without the formatting machinery
    let mut b = itoa::Buffer::new();
    let mut s = Vec::with_capacity(64);
    s.extend_from_slice(br#"{"accepted":"#);
    s.extend_from_slice(b.format(rows).as_bytes());
    s.extend_from_slice(br#","id":""#);
    s.extend_from_slice(b.format(id).as_bytes());
    s.extend_from_slice(br#""}"#);
    (202, "application/json", Bytes::from(s))
}

/// What a handler made of a request: an answer now, or a stored publish.
enum Answered {
    Now(Answer),
    Stored(Submitted),
}

impl From<Answer> for Answered {
    fn from(a: Answer) -> Answered {
        Answered::Now(a)
    }
}

/// Bodies up to this size are copied after the response head (one write);
/// larger ones (snapshots, shared by every request for the same state) are
/// written from their own buffer, never copied per request.
const COPIED_BODY_BYTES: usize = 16 * 1024;

/// Encodes an answer or a refusal: the response, and a large body to send
/// after it from its own buffer (empty when the body is in the response).
fn respond(
    ctx: &Context,
    req: &Request,
    answer: Result<Answer, ApiError>,
    keep_alive: bool,
) -> (BytesMut, Bytes) {
    let origin = req.header("origin");
    let cors = &ctx.settings.cors;
    let head_only = req.method == Method::Head;
    let (out, body) = match answer {
        Ok((status, ctype, body)) => {
            let extra = if req.method == Method::Options {
                PREFLIGHT_HEADERS
            } else {
                ""
            };
            metrics::http_response(status);
            if body.len() > COPIED_BODY_BYTES {
                let mut out = BytesMut::with_capacity(256);
                response_head(
                    &mut out,
                    status,
                    ctype,
                    body.len(),
                    keep_alive,
                    cors,
                    origin,
                    extra,
                );
                (out, if head_only { Bytes::new() } else { body })
            } else {
                let out = response(status, ctype, &body, keep_alive, cors, origin, extra);
                (out, Bytes::new())
            }
        }
        Err(e) => {
            metrics::refused(&e);
            access::refused(Some(req), &e);
            (error_response(&e, keep_alive, cors, origin), Bytes::new())
        }
    };
    if head_only {
        (head_only_response(out), body)
    } else {
        (out, body)
    }
}

fn answer(
    ctx: &Context,
    req: &Request,
    body: Vec<u8>,
    target: Option<PublishTarget>,
) -> Result<Answered, ApiError> {
    if !admin::serves(&ctx.settings, ctx.admin, &req.path) {
        return Err(ApiError::not_found("no such endpoint"));
    }
    let endpoint = Endpoint::of(req);
    if let Some(m) = endpoint.method()
        && !(req.method == m || (m == Method::Get && req.method == Method::Head))
    {
        return Err(ApiError::new(
            ErrorKind::MethodNotAllowed,
            "method not allowed",
        ));
    }
    if ctx.hub.is_draining() && !endpoint.while_draining() {
        return Err(DRAINING);
    }
    match endpoint {
        Endpoint::Preflight => preflight(ctx, req).map(Answered::from),
        Endpoint::Healthz => Ok(healthz(ctx).into()),
        Endpoint::Metrics => Ok(metrics_text(ctx).into()),
        Endpoint::Index => Ok(index(ctx, req).into()),
        Endpoint::Snapshot(topic) => snapshot(ctx, req, topic).map(Answered::from),
        Endpoint::StreamToken => stream_token(ctx, req, body).map(Answered::from),
        Endpoint::Publish(topic) => publish(ctx, req, topic, target, body),
        Endpoint::Topics => topics(ctx, req).map(Answered::from),
        Endpoint::Usage => usage(ctx, req).map(Answered::from),
        Endpoint::InjectedPanic => panic!("injected fault (SLUICE_TEST_PANIC=request)"),
        Endpoint::InjectedStall => crate::fault::stall_forever(),
        Endpoint::NotFound => Err(ApiError::not_found("no such endpoint")),
    }
}

fn preflight(ctx: &Context, req: &Request) -> Result<Answer, ApiError> {
    match req.header("origin") {
        Some(o) if ctx.settings.cors.allow(o).is_none() => {
            Err(ApiError::forbidden("origin not allowed"))
        }
        _ => Ok((204, "text/plain", Bytes::new())),
    }
}

/// `GET /healthz`: 200 only while every worker runs and the node is not
/// draining (SPEC §3).
fn healthz(ctx: &Context) -> Answer {
    let hub = &ctx.hub;
    let up = hub.workers_up.load(Ordering::Relaxed);
    let cluster = crate::cluster::link();
    // SPEC §7: a source that is not up degrades the node (still 200).
    let (sources, sources_up) = crate::sources::health::registry().healthz();
    let (status, state) = if hub.is_draining() {
        (503, "draining")
    } else if up < ctx.settings.workers || crate::cluster::starting() {
        (503, "starting")
    } else if hub
        .stalled_worker(crate::time::mono_ms(), crate::server::WORKER_STALL_MS)
        .is_some()
    {
        (503, "stalled")
    } else if cluster.is_some_and(|c| !c.is_connected()) || !sources_up {
        (200, "degraded")
    } else {
        (200, "ok")
    };
    let mut s = format!(
        r#"{{"status":"{state}","workers":{up},"connections":{},"streams":{},"sources":{sources}"#,
        ctx.counts.connections(),
        ctx.counts.streams()
    );
    if let Some(c) = cluster {
        s.push_str(r#","cluster":"#);
        s.push_str(&c.health_json());
    }
    s.push('}');
    (status, "application/json", Bytes::from(s))
}

fn metrics_text(ctx: &Context) -> Answer {
    let hub = &ctx.hub;
    metrics::set_node_gauges(
        ctx.counts.connections(),
        hub.topic_count(),
        hub.workers_up.load(Ordering::Relaxed),
    );
    crate::sources::health::registry().set_gauges();
    (
        200,
        "text/plain; version=0.0.4",
        Bytes::from(metrics::render()),
    )
}

/// `GET /`: the demo page for browsers when the demo feed runs (it streams
/// the demo topics with the demo keys), else a plain-text index.
fn index(ctx: &Context, req: &Request) -> Answer {
    let demo = ctx.settings.has_source(crate::config::SourceKind::Demo);
    let html = req
        .header("accept")
        .is_some_and(|a| a.contains("text/html"));
    if demo && html {
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
    }
}

/// `GET /v1/snapshot/{topic}`: the initial state as JSON, filtered.
fn snapshot(ctx: &Context, req: &Request, topic: &str) -> Result<Answer, ApiError> {
    not_starting()?;
    let principal = authenticate(ctx, req)?;
    let topic = lookup_topic(ctx, topic, Maker::Reader(principal.key()))?;
    authorize(ctx, &principal, &topic.name)?;
    let filter = row_filter(&topic, req, &[])?;
    Ok((
        200,
        "application/json",
        topic.snapshot_json(filter.as_ref()),
    ))
}

/// `POST /v1/publish/{topic}`: through the one publish entry point. With
/// `[cluster]` the update goes to the log first and is answered once
/// stored; a retry with the same `Idempotency-Key` within the stream's
/// duplicate window is stored once and answered with the same id.
fn publish(
    ctx: &Context,
    req: &Request,
    topic: &str,
    target: Option<PublishTarget>,
    body: Vec<u8>,
) -> Result<Answered, ApiError> {
    let (topic, key) = match target {
        Some(t) => t,
        None => publish_target(ctx, req, topic)?,
    };
    let ndjson = req.header("content-type").is_some_and(|c| {
        c.starts_with("application/x-ndjson") || c.starts_with("application/ndjson")
    });
    let format = if ndjson { Format::Ndjson } else { Format::Json };
    let mut body = body;
    let msg_id = req
        .header("idempotency-key")
        .map(|k| crate::cluster::msg_id("http", Some(&format!("{}:{k}", topic.name)), "", b""));
    let submitted = submit(
        &ctx.hub,
        &topic,
        &mut body,
        format,
        "http",
        msg_id.as_deref(),
    )
    .inspect_err(|e| tracing::debug!(error = %e, "publish refused"))?;
    let rows = match &submitted {
        Submitted::Applied(a) => a.rows,
        Submitted::Stored { rows, .. } => *rows,
    };
    crate::metering::published(&ctx.settings.keys[key].name, rows);
    Ok(match submitted {
        Submitted::Applied(a) => Answered::Now(accepted(a)),
        stored => Answered::Stored(stored),
    })
}

/// `503` while a `[cluster]` node rebuilds its state from the stream.
pub fn not_starting() -> Result<(), ApiError> {
    if crate::cluster::starting() {
        Err(ApiError::unavailable(
            "node is starting: rebuilding state from the cluster log",
        ))
    } else {
        Ok(())
    }
}

/// `POST /v1/stream/token`: any API key; an optional `{"topic":T}` scopes it.
fn stream_token(ctx: &Context, req: &Request, mut body: Vec<u8>) -> Result<Answer, ApiError> {
    let key = token_issuer(ctx, req)?;
    let mut scope = None;
    if body.iter().any(|b| !b.is_ascii_whitespace()) {
        use simd_json::prelude::*;
        let v = simd_json::to_borrowed_value(&mut body).map_err(|_| {
            ApiError::bad_request("body must be a JSON object like {\"topic\":\"odds/x\"}")
        })?;
        let obj = v
            .as_object()
            .ok_or(ApiError::bad_request("body must be a JSON object"))?;
        if let Some(t) = obj.get("topic") {
            let t = t
                .as_str()
                .ok_or(ApiError::bad_request("topic must be a string"))?;
            let topic = lookup_topic(ctx, t, Maker::Reader(Some(key)))?;
            authorize(ctx, &Principal::Key(key), &topic.name)?;
            scope = Some(topic.name.to_string());
        }
    }
    let token = ctx.keys.issue_token(
        &ctx.settings,
        key,
        scope.as_deref(),
        crate::time::unix_secs(),
    );
    let s = format!(
        r#"{{"token":"{token}","expires_in":{}}}"#,
        ctx.settings.token_ttl_s
    );
    Ok((200, "application/json", Bytes::from(s)))
}

/// Admin keys only: 401 without a key, 403 with another one.
fn require_admin(ctx: &Context, req: &Request, refusal: &'static str) -> Result<(), ApiError> {
    match authenticate(ctx, req)? {
        Principal::Key(k) if ctx.settings.keys[k].role == Role::Admin => Ok(()),
        Principal::Key(_) | Principal::Token(_) => Err(ApiError::forbidden(refusal)),
        Principal::Anonymous => Err(ApiError::unauthorized(refusal)),
    }
}

/// `GET /v1/topics`: admin keys only.
fn topics(ctx: &Context, req: &Request) -> Result<Answer, ApiError> {
    require_admin(ctx, req, "listing topics needs an admin key")?;
    let mut s = String::from(r#"{"topics":["#);
    for (i, t) in ctx.hub.topics().iter().enumerate() {
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
    Ok((200, "application/json", Bytes::from(s)))
}

/// `GET /v1/usage` (SPEC §9): admin keys only; every configured key and
/// any other name metered (`anonymous`), since start. 404 without
/// `[metering]`.
fn usage(ctx: &Context, req: &Request) -> Result<Answer, ApiError> {
    require_admin(ctx, req, "usage needs an admin key")?;
    let names = ctx.settings.keys.iter().map(|k| k.name.as_str());
    let body = crate::metering::usage_json(names).ok_or(ApiError::not_found(
        "usage is not metered: the config has no [metering] section",
    ))?;
    Ok((200, "application/json", Bytes::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::http::parse::parse;

    fn req(text: &str) -> Request {
        parse(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn a_publish_is_answered_with_its_rows_and_id() {
        let (status, ctype, body) = accepted(Accepted {
            rows: 3,
            id: u64::MAX,
        });
        assert_eq!((status, ctype), (202, "application/json"));
        assert_eq!(&body[..], br#"{"accepted":3,"id":"18446744073709551615"}"#);
    }

    #[test]
    fn paths_name_their_endpoints() {
        let cases = [
            ("GET /healthz HTTP/1.1\r\n\r\n", Endpoint::Healthz),
            ("GET /metrics HTTP/1.1\r\n\r\n", Endpoint::Metrics),
            ("GET / HTTP/1.1\r\n\r\n", Endpoint::Index),
            (
                "GET /v1/snapshot/a/b HTTP/1.1\r\n\r\n",
                Endpoint::Snapshot("a/b"),
            ),
            (
                "POST /v1/publish/x HTTP/1.1\r\n\r\n",
                Endpoint::Publish("x"),
            ),
            (
                "POST /v1/stream/token HTTP/1.1\r\n\r\n",
                Endpoint::StreamToken,
            ),
            ("GET /v1/topics HTTP/1.1\r\n\r\n", Endpoint::Topics),
            ("GET /v1/usage HTTP/1.1\r\n\r\n", Endpoint::Usage),
            ("OPTIONS /v1/sse/x HTTP/1.1\r\n\r\n", Endpoint::Preflight),
            ("GET /__sluice/panic HTTP/1.1\r\n\r\n", Endpoint::NotFound),
            ("GET /nothing HTTP/1.1\r\n\r\n", Endpoint::NotFound),
        ];
        for (text, want) in cases {
            let r = req(text);
            assert_eq!(Endpoint::of(&r), want, "{text}");
        }
    }
}
