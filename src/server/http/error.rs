//! One error type for every refused request (SPEC §4): a kind with a stable
//! status and code, and a fixed message.
//!
//! Cold: built once per refused request. The message is `&'static str`, so a
//! refusal allocates nothing until its body is written. Module errors
//! (request head, chunked body, credentials, topic names, filters, publish
//! bodies) convert with `From`, so a handler uses `?` and the SPEC code is
//! never guessed from a status. Metrics count refusals by `code()`.

use crate::auth::AuthError;
use crate::hub::TopicError;
use crate::hub::filter::FilterError;
use crate::server::http::chunked::ChunkError;
use crate::server::http::parse::HttpError;
use crate::sources::publish::PublishError;

/// What kind of refusal (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    TooManyConnections,
    HeadersTooLarge,
    Unavailable,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::TooManyConnections => 429,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::Unavailable => 503,
        }
    }

    /// The SPEC §4 code, as sent in `{"error":{"code":...}}`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::TooManyConnections => "too_many_connections",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::Unavailable => "unavailable",
        }
    }
}

/// A refused request: its kind and the message sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: &'static str,
}

impl ApiError {
    pub const fn new(kind: ErrorKind, message: &'static str) -> ApiError {
        ApiError { kind, message }
    }
    pub fn status(&self) -> u16 {
        self.kind.status()
    }
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
    pub const fn bad_request(message: &'static str) -> ApiError {
        ApiError::new(ErrorKind::BadRequest, message)
    }
    pub const fn unauthorized(message: &'static str) -> ApiError {
        ApiError::new(ErrorKind::Unauthorized, message)
    }
    pub const fn forbidden(message: &'static str) -> ApiError {
        ApiError::new(ErrorKind::Forbidden, message)
    }
    pub const fn not_found(message: &'static str) -> ApiError {
        ApiError::new(ErrorKind::NotFound, message)
    }
    pub const fn unavailable(message: &'static str) -> ApiError {
        ApiError::new(ErrorKind::Unavailable, message)
    }
}

/// The refusal every request gets while the node drains.
pub const DRAINING: ApiError = ApiError::unavailable("server is draining");

impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> ApiError {
        match e {
            HttpError::Malformed(m) => ApiError::bad_request(m),
            HttpError::HeadersTooLarge => {
                ApiError::new(ErrorKind::HeadersTooLarge, "request head too large")
            }
        }
    }
}

impl From<ChunkError> for ApiError {
    fn from(e: ChunkError) -> ApiError {
        match e {
            ChunkError::TooLarge => {
                ApiError::new(ErrorKind::PayloadTooLarge, "body exceeds max_body_bytes")
            }
            ChunkError::Malformed(m) => ApiError::bad_request(m),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        ApiError::unauthorized(e.message())
    }
}

impl From<TopicError> for ApiError {
    fn from(e: TopicError) -> ApiError {
        match e {
            TopicError::Invalid => ApiError::bad_request("invalid topic name"),
            TopicError::NotFound => ApiError::not_found("no such topic"),
            TopicError::TooMany => ApiError::unavailable("too many topics on this node"),
            TopicError::KeyCap => ApiError::unavailable(
                "this key has made too many topics that hold nothing; try again later",
            ),
        }
    }
}

impl From<FilterError> for ApiError {
    fn from(e: FilterError) -> ApiError {
        ApiError::bad_request(e.message())
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> ApiError {
        match e {
            PublishError::Empty => ApiError::bad_request("body has no rows"),
            PublishError::Json(_) => ApiError::bad_request("body is not valid JSON"),
            PublishError::NotAnObject(_) => {
                ApiError::bad_request("every row must be a JSON object")
            }
            PublishError::MissingKey(..) => {
                ApiError::bad_request("a row lacks one of the topic's key fields")
            }
            PublishError::TooManyRows => ApiError::bad_request("too many rows in one publish"),
            // `[cluster]`: the log could not store it (NATS lost).
            PublishError::Unavailable(c) => ApiError::unavailable(c.message()),
            PublishError::StateFull(_) => ApiError::unavailable("the topic's state table is full"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_the_spec_status_and_code() {
        let pairs = [
            (ErrorKind::BadRequest, 400, "bad_request"),
            (ErrorKind::Unauthorized, 401, "unauthorized"),
            (ErrorKind::Forbidden, 403, "forbidden"),
            (ErrorKind::NotFound, 404, "not_found"),
            (ErrorKind::MethodNotAllowed, 405, "method_not_allowed"),
            (ErrorKind::PayloadTooLarge, 413, "payload_too_large"),
            (ErrorKind::TooManyConnections, 429, "too_many_connections"),
            (ErrorKind::HeadersTooLarge, 431, "headers_too_large"),
            (ErrorKind::Unavailable, 503, "unavailable"),
        ];
        for (kind, status, code) in pairs {
            assert_eq!((kind.status(), kind.code()), (status, code));
        }
    }

    #[test]
    fn module_errors_map_to_their_kinds() {
        assert_eq!(ApiError::from(TopicError::TooMany).status(), 503);
        assert_eq!(ApiError::from(TopicError::NotFound).code(), "not_found");
        assert_eq!(ApiError::from(ChunkError::TooLarge).status(), 413);
        assert_eq!(ApiError::from(HttpError::HeadersTooLarge).status(), 431);
        assert_eq!(ApiError::from(AuthError::Forged).code(), "unauthorized");
        assert_eq!(ApiError::from(PublishError::Empty).status(), 400);
    }
}
