//! Admission: whether a request may do what it asks, as named steps in a
//! fixed order (pingora's request phases). A stream is admitted by
//! [`admit_stream`]: draining → target (route or `/v1/sse/{topic}`) →
//! authenticate → topic → authorize (token scope, key patterns, tier gate)
//! → filter → stream parameters → the key's stream slot, always last, so a
//! refused request never holds one. Snapshots, publishes and tokens use the
//! same steps ([`publish_target`], [`token_issuer`], [`authenticate`] …).
//!
//! Cold: once per request. Every refusal is an [`ApiError`].

use std::sync::Arc;

use crate::auth::{Principal, find_credential_in};
use crate::hub::filter::{Clause, Value};
use crate::hub::{Filter, Maker, Topic};
use crate::server::http::error::{ApiError, DRAINING, ErrorKind};
use crate::server::http::{Context, Request};
use crate::server::limits::KeySlot;
use crate::server::routes::{bind, fill, match_value};

/// Smallest and largest `heartbeat_s` a client may ask for.
pub const MIN_HEARTBEAT_S: u32 = 1;
pub const MAX_HEARTBEAT_S: u32 = 30;

/// A stream request's topic and its route's fixed filters (field, values).
pub struct Target {
    pub topic: String,
    pub fixed: Vec<(String, Vec<Value>)>,
}

/// A stream that passed every check, with what it starts from.
pub struct Admitted {
    pub topic: Arc<Topic>,
    /// Index into the settings' tiers.
    pub tier: usize,
    pub filter: Option<Filter>,
    pub heartbeat_s: u32,
    pub last_id: Option<u64>,
    /// The key's index (a key or a stream token), and its stream slot.
    pub key_index: Option<usize>,
    pub key: Option<KeySlot>,
    /// Admitted with a stream token.
    pub token: bool,
}

/// Every check of a stream request, in order.
pub fn admit_stream(
    ctx: &Context,
    req: &Request,
    target: Result<Target, ApiError>,
) -> Result<Admitted, ApiError> {
    if ctx.hub.is_draining() {
        return Err(DRAINING);
    }
    crate::server::http::api::not_starting()?;
    let target = target?;
    let principal = authenticate(ctx, req)?;
    let topic = lookup_topic(ctx, &target.topic, Maker::Reader(principal.key()))?;
    let tier = authorize(ctx, &principal, &topic.name)?;
    let filter = row_filter(&topic, req, &target.fixed)?;
    let (heartbeat_s, last_id) = stream_params(ctx, req)?;
    let key = match principal.key() {
        Some(k) => Some(
            KeySlot::take(&ctx.key_streams, k, ctx.settings.keys[k].max_connections).ok_or(
                ApiError::new(
                    ErrorKind::TooManyConnections,
                    "this key has max_connections streams open",
                ),
            )?,
        ),
        None => None,
    };
    Ok(Admitted {
        topic,
        tier,
        filter,
        heartbeat_s,
        last_id,
        key_index: principal.key(),
        key,
        token: matches!(principal, Principal::Token(_)),
    })
}

/// The stream a GET path names: the first `[[routes]]` template that
/// matches, else `/v1/sse/{topic}`. `None`: not a stream path.
pub fn stream_target(ctx: &Context, req: &Request) -> Option<Result<Target, ApiError>> {
    if ctx.admin {
        return None;
    }
    // sluice's own endpoints are never shadowed by a route
    let own = [
        "/healthz",
        "/metrics",
        "/v1/topics",
        "/v1/usage",
        "/v1/stream/token",
    ];
    if own.contains(&req.path.as_str())
        || req.path.starts_with("/v1/snapshot/")
        || req.path.starts_with("/v1/publish/")
    {
        return None;
    }
    for r in &ctx.settings.routes {
        let Some(vars) = bind(r, &req.path) else {
            continue;
        };
        // An empty variable counts as missing: it could only name nothing,
        // or, inside a `match` prefix, everything the prefix's literal allows.
        let lookup = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .or_else(|| req.query(name))
                .filter(|v| !v.is_empty())
        };
        let missing = ApiError::bad_request("a query parameter this URL needs is missing or empty");
        let topic = match fill(&r.topic, lookup) {
            Ok(t) => t,
            Err(_) => return Some(Err(missing)),
        };
        let mut fixed = Vec::with_capacity(r.fixed.len());
        for (field, values) in &r.fixed {
            // Each variable's text is one literal value (`routes::match_value`).
            match values.iter().map(|v| match_value(v, lookup)).collect() {
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

/// Who is asking: a key, a stream token, or nobody (`auth.required =
/// false`). Refused: 401.
pub fn authenticate(ctx: &Context, req: &Request) -> Result<Principal, ApiError> {
    let cred = find_credential_in(|name| req.header(name), &req.query);
    Ok(ctx.keys.authenticate(&ctx.settings, cred)?)
}

/// The topic a name refers to, made by `maker` if it does not exist yet
/// (400 invalid, 404 no pattern, 503 full or past the key's
/// `max_topics_per_key`).
pub fn lookup_topic(ctx: &Context, name: &str, maker: Maker) -> Result<Arc<Topic>, ApiError> {
    Ok(ctx.hub.topic_for(name, maker)?)
}

/// The token's scope, the key's `topics` patterns and the topic's `tiers`
/// gate (403). Returns the tier the request gets.
pub fn authorize(ctx: &Context, p: &Principal, topic: &str) -> Result<usize, ApiError> {
    let s = &ctx.settings;
    let (key, tier) = match p {
        Principal::Key(k) => (Some(*k), s.keys[*k].tier),
        Principal::Token(g) => {
            if g.topic.as_deref().is_some_and(|scope| scope != topic) {
                return Err(ApiError::forbidden(
                    "this stream token is for another topic",
                ));
            }
            (Some(g.key), g.tier)
        }
        Principal::Anonymous => (None, s.anonymous_tier),
    };
    if let Some(k) = key
        && !s.keys[k].topics.iter().any(|pat| pat.matches(topic))
    {
        return Err(ApiError::forbidden("this key may not use this topic"));
    }
    match s.topic_rule(topic) {
        Some(rule) if !rule.tiers.contains(&tier) => Err(ApiError::forbidden(
            "this tier may not subscribe to this topic",
        )),
        _ => Ok(tier),
    }
}

/// The row filter of a request: the route's fixed clauses, then one clause
/// per filter parameter of the topic that the query gives (all-of, so the
/// client only narrows). `None`: no filter.
pub fn row_filter(
    topic: &Topic,
    req: &Request,
    fixed: &[(String, Vec<Value>)],
) -> Result<Option<Filter>, ApiError> {
    let mut clauses = Vec::new();
    for (field, values) in fixed {
        let i = topic
            .fields
            .iter()
            .position(|f| f == field)
            .ok_or(ApiError::bad_request(
                "this route filters on a field the topic does not keep",
            ))?;
        clauses.push(Clause::new(i, values.clone())?);
    }
    for (param, i) in topic.filter_params.iter() {
        if let Some(v) = req.query(param) {
            clauses.push(Clause::parse(*i, v)?);
        }
    }
    Ok(Filter::new(clauses))
}

/// Parses `heartbeat_s` (1..30) and the resume id.
pub fn stream_params(ctx: &Context, req: &Request) -> Result<(u32, Option<u64>), ApiError> {
    let heartbeat_s = match req.query("heartbeat_s") {
        None => ctx.settings.heartbeat_s,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (MIN_HEARTBEAT_S..=MAX_HEARTBEAT_S).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "heartbeat_s must be an integer 1..30",
                ));
            }
        },
    };
    let last = req
        .header("last-event-id")
        .or_else(|| req.query("lastEventId"));
    // Unknown or malformed ids give a fresh initial state, never an error.
    let last_id = last.and_then(|s| s.trim().parse::<u64>().ok());
    Ok((heartbeat_s, last_id))
}

/// The topic a publish may write to, and the key publishing: a publisher
/// key, allowed on the topic.
pub fn publish_target(
    ctx: &Context,
    req: &Request,
    topic: &str,
) -> Result<(Arc<Topic>, usize), ApiError> {
    let principal = authenticate(ctx, req)?;
    let key = match principal {
        Principal::Anonymous => {
            return Err(ApiError::unauthorized("publishing needs a publisher key"));
        }
        Principal::Token(_) => {
            return Err(ApiError::forbidden("a stream token may only subscribe"));
        }
        Principal::Key(k) if !ctx.settings.keys[k].role.may_publish() => {
            return Err(ApiError::forbidden("this key may not publish"));
        }
        Principal::Key(k) => k,
    };
    let topic = lookup_topic(ctx, topic, Maker::Publisher)?;
    authorize(ctx, &principal, &topic.name)?;
    Ok((topic, key))
}

/// The key a stream token is issued for: any API key.
pub fn token_issuer(ctx: &Context, req: &Request) -> Result<usize, ApiError> {
    match authenticate(ctx, req)? {
        Principal::Key(k) => Ok(k),
        Principal::Anonymous => Err(ApiError::unauthorized("a stream token needs an API key")),
        Principal::Token(_) => Err(ApiError::forbidden("a stream token cannot issue tokens")),
    }
}

/// A `POST` admitted before its body is read.
pub enum PostAdmitted {
    /// No endpoint here takes a body.
    NoBody,
    /// `/v1/stream/token`: its key is checked again with the body.
    Token,
    /// `/v1/publish/{topic}`: the topic and publisher key, handed to the
    /// publish itself so that a publish is authenticated and looked up
    /// once (this was a third of the request's own work at 1,000 topics).
    Publish(Arc<Topic>, usize),
}

/// The checks a `POST` passes before its body is read: draining, then the
/// endpoint's authentication and permission.
pub fn admit_post(ctx: &Context, req: &Request) -> Result<PostAdmitted, ApiError> {
    if ctx.admin {
        return Ok(PostAdmitted::NoBody);
    }
    if ctx.hub.is_draining() {
        return Err(DRAINING);
    }
    if req.path == "/v1/stream/token" {
        token_issuer(ctx, req)?;
        return Ok(PostAdmitted::Token);
    }
    if let Some(topic) = req.path.strip_prefix("/v1/publish/") {
        let (topic, key) = publish_target(ctx, req, topic)?;
        return Ok(PostAdmitted::Publish(topic, key));
    }
    Ok(PostAdmitted::NoBody)
}
