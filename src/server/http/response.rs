//! Whole HTTP/1.1 responses (status line, headers, body) and CORS headers.
//!
//! Cold: once per answered request, never per event.

use bytes::{BufMut, BytesMut};

use crate::config::Cors;
use crate::server::http::error::ApiError;
use crate::sse;

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// CORS headers for a request's `Origin`, if that origin is allowed: `*`
/// when any origin is, else the listed origin echoed, with `Vary: Origin`.
pub fn cors_headers(out: &mut BytesMut, cors: &Cors, origin: Option<&str>) {
    if let Some(allowed) = origin.and_then(|o| cors.allow(o)) {
        out.put_slice(b"Access-Control-Allow-Origin: ");
        out.put_slice(allowed.as_bytes());
        if allowed != "*" {
            out.put_slice(b"\r\nVary: Origin");
        }
        out.put_slice(b"\r\nAccess-Control-Expose-Headers: Content-Type\r\n");
    }
}

/// A whole response with a body.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    cors: &Cors,
    origin: Option<&str>,
    extra: &str,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(192 + body.len());
    response_head(
        &mut out,
        status,
        content_type,
        body.len(),
        keep_alive,
        cors,
        origin,
        extra,
    );
    out.put_slice(body);
    out
}

/// The head of a response whose body of `body_len` bytes is sent after it
/// from its own buffer (a shared snapshot is never copied per request).
#[allow(clippy::too_many_arguments)]
pub fn response_head(
    out: &mut BytesMut,
    status: u16,
    content_type: &str,
    body_len: usize,
    keep_alive: bool,
    cors: &Cors,
    origin: Option<&str>,
    extra: &str,
) {
    out.put_slice(b"HTTP/1.1 ");
    sse::put_u64(out, status.into());
    out.put_u8(b' ');
    out.put_slice(reason(status).as_bytes());
    out.put_slice(b"\r\n");
    if status != 204 {
        out.put_slice(b"Content-Type: ");
        out.put_slice(content_type.as_bytes());
        out.put_slice(b"\r\nContent-Length: ");
        sse::put_u64(out, body_len as u64);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Cache-Control: no-store\r\n");
    out.put_slice(if keep_alive {
        b"Connection: keep-alive\r\n" as &[u8]
    } else {
        b"Connection: close\r\n"
    });
    cors_headers(out, cors, origin);
    out.put_slice(extra.as_bytes());
    out.put_slice(b"\r\n");
}

/// The head of a whole response, without its body (the answer to `HEAD`:
/// the same headers as `GET`, `Content-Length` included, and no body).
pub fn head_only(mut out: BytesMut) -> BytesMut {
    if let Some(end) = memchr::memmem::find(&out, b"\r\n\r\n") {
        out.truncate(end + 4);
    }
    out
}

/// A JSON error response (SPEC §4).
pub fn error_response(
    e: &ApiError,
    keep_alive: bool,
    cors: &Cors,
    origin: Option<&str>,
) -> BytesMut {
    let status = e.status();
    let mut body = BytesMut::with_capacity(64 + e.message.len());
    sse::error_json(&mut body, e.code(), e.message);
    let extra = if status == 405 {
        "Allow: GET, POST, OPTIONS\r\n"
    } else {
        ""
    };
    response(
        status,
        "application/json",
        &body,
        keep_alive,
        cors,
        origin,
        extra,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::http::error::ApiError;

    #[test]
    fn error_body_is_spec_shaped() {
        let r = error_response(
            &ApiError::not_found("no such topic"),
            false,
            &Cors::Any,
            None,
        );
        let text = String::from_utf8(r.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.ends_with(
            "\r\n\r\n{\"error\":{\"code\":\"not_found\",\"message\":\"no such topic\"}}"
        ));
    }

    #[test]
    fn a_head_answer_keeps_the_headers_and_drops_the_body() {
        let r = response(200, "text/plain", b"hello", true, &Cors::Any, None, "");
        let h = head_only(r);
        let text = String::from_utf8(h.to_vec()).unwrap();
        assert!(text.contains("Content-Length: 5\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }
}
