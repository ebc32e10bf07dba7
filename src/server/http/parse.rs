//! HTTP/1.1 request heads: httparse into a capped buffer.
//!
//! Cold: once per request, never per event. Limits are the named constants
//! below: a head larger than `MAX_HEAD_BYTES` or with more than
//! `MAX_HEADERS` headers is 431; a malformed head is 400. Sizes from the
//! network are bounded before they are parsed (`Content-Length` digits).
//! Parsing copies the request's path, query and headers out of the buffer,
//! so the read buffer can be dropped as soon as a stream starts. The
//! headers' names and values are copied into one string (two allocations
//! for all of them, not two per header). A kept-alive connection hands each
//! request's strings back ([`Request::recycle`]) for its next head to fill
//! ([`parse_reusing`]), so its requests after the first allocate nothing
//! here unless they have a query or a percent-escaped path.

/// Largest request head (request line and headers), in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers one request may carry.
pub const MAX_HEADERS: usize = 48;
/// Longest request target (path and query), in bytes.
pub const MAX_TARGET_BYTES: usize = 4096;
/// Most digits in a `Content-Length` (any larger is refused as malformed
/// before it is parsed; the body limit then applies).
pub const MAX_CONTENT_LENGTH_DIGITS: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Options,
    Other,
}

/// A parsed request head, owning what handlers need.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Percent-decoded path, without the query.
    pub path: String,
    /// Percent-decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    /// Header names and values (values trimmed), one after the other.
    header_text: String,
    /// Where each header's name and value are in `header_text`, in order.
    header_spans: Vec<HeaderSpan>,
    pub content_length: Option<usize>,
    pub chunked: bool,
    /// `Expect: 100-continue`: the client waits for `100 Continue` before
    /// it sends its body.
    pub expect_continue: bool,
    pub keep_alive: bool,
    /// Bytes of the head in the buffer (the body starts there).
    pub head_len: usize,
}

impl Request {
    /// True when a body follows the head (chunked, or a non-zero length).
    pub fn has_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }

    /// The first header called `name` (any case), its value trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Header names and values, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        let t = &self.header_text;
        self.header_spans.iter().map(move |h| {
            let (n, v) = (h.name_end as usize, h.value_end as usize);
            (&t[h.start as usize..n], &t[n..v])
        })
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One header in a request's `header_text`: its name is
/// `start..name_end`, its value `name_end..value_end` (offsets fit: the
/// head is at most `MAX_HEAD_BYTES`).
#[derive(Debug, Clone, Copy)]
struct HeaderSpan {
    start: u32,
    name_end: u32,
    value_end: u32,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// 400: not HTTP/1.x, bad syntax, bad Content-Length.
    Malformed(&'static str),
    /// 431: too many headers, or a head over `MAX_HEAD_BYTES`.
    HeadersTooLarge,
}

/// A finished request's emptied strings, for the next head on its
/// connection ([`parse_reusing`]).
#[derive(Debug, Default)]
pub struct Spare {
    path: String,
    header_text: String,
    header_spans: Vec<HeaderSpan>,
}

impl Request {
    /// Gives this request's strings back, emptied, for the next one.
    pub fn recycle(self) -> Spare {
        let Request {
            mut path,
            mut header_text,
            mut header_spans,
            ..
        } = self;
        path.clear();
        header_text.clear();
        header_spans.clear();
        Spare {
            path,
            header_text,
            header_spans,
        }
    }
}

/// Parses a request head from the start of `buf`: `Ok(None)` when more bytes
/// are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Request>, HttpError> {
    parse_reusing(buf, &mut Spare::default())
}

/// [`parse`], filling the strings a previous request gave back (taken
/// from `spare` only when a request is made).
pub fn parse_reusing(buf: &[u8], spare: &mut Spare) -> Result<Option<Request>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD_BYTES {
                Err(HttpError::HeadersTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(_) => return Err(HttpError::Malformed("malformed HTTP request")),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(HttpError::HeadersTooLarge);
    }
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/");
    if target.len() > MAX_TARGET_BYTES {
        return Err(HttpError::HeadersTooLarge);
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let mut path = std::mem::take(&mut spare.path);
    path.clear();
    if raw_path.contains('%') {
        path.push_str(
            &percent_decode(raw_path, false)
                .ok_or(HttpError::Malformed("bad percent-encoding in path"))?,
        );
    } else {
        path.push_str(raw_path);
    }
    let mut query = Vec::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k =
            percent_decode(k, true).ok_or(HttpError::Malformed("bad percent-encoding in query"))?;
        let v =
            percent_decode(v, true).ok_or(HttpError::Malformed("bad percent-encoding in query"))?;
        query.push((k, v));
    }

    let http10 = req.version == Some(0);
    let mut keep_alive = !http10;
    let mut content_length = None;
    let mut chunked = false;
    let mut expect_continue = false;
    let text_len: usize = req
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len())
        .sum();
    let mut header_text = std::mem::take(&mut spare.header_text);
    header_text.clear();
    header_text.reserve(text_len);
    let mut header_spans = std::mem::take(&mut spare.header_spans);
    header_spans.clear();
    header_spans.reserve(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed("header value is not UTF-8"))?;
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n =
                parse_content_length(value).ok_or(HttpError::Malformed("bad Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else {
                return Err(HttpError::Malformed("unsupported Transfer-Encoding"));
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            if value.eq_ignore_ascii_case("100-continue") {
                expect_continue = true;
            } else {
                return Err(HttpError::Malformed("unsupported Expect"));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        }
        // Cannot overflow or truncate: the text is at most the head's
        // length, which is at most MAX_HEAD_BYTES.
        let start = header_text.len() as u32;
        header_text.push_str(h.name);
        let name_end = header_text.len() as u32;
        header_text.push_str(value);
        header_spans.push(HeaderSpan {
            start,
            name_end,
            value_end: header_text.len() as u32,
        });
    }
    if chunked && content_length.is_some() {
        return Err(HttpError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if chunked && http10 {
        return Err(HttpError::Malformed("HTTP/1.0 has no chunked encoding"));
    }
    Ok(Some(Request {
        method,
        path,
        query,
        header_text,
        header_spans,
        content_length,
        chunked,
        expect_continue,
        keep_alive,
        head_len,
    }))
}

/// A `Content-Length` value: ASCII digits only (no sign, no list), at most
/// `MAX_CONTENT_LENGTH_DIGITS` of them, so the value always fits.
fn parse_content_length(v: &str) -> Option<usize> {
    if v.is_empty() || v.len() > MAX_CONTENT_LENGTH_DIGITS || !v.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    v.parse().ok()
}

/// Decodes `%XX` (and `+` as space in queries). `None` on a bad escape or
/// on bytes that are not UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    if !s.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_then_complete_with_crlf_split() {
        let full = b"GET /v1/sse/odds/nba?apiKey=a%2Bb&x=1+2 HTTP/1.1\r\nHost: h\r\nLast-Event-ID: 7\r\n\r\n";
        for cut in [10, full.len() - 3, full.len() - 1] {
            assert!(parse(&full[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let r = parse(full).unwrap().unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/v1/sse/odds/nba");
        assert_eq!(r.query("apiKey"), Some("a+b"));
        assert_eq!(r.query("x"), Some("1 2"));
        assert_eq!(r.header("last-event-id"), Some("7"));
        assert_eq!(r.head_len, full.len());
        assert!(r.keep_alive);
    }

    #[test]
    fn headers_keep_their_order_and_the_first_of_a_name_wins() {
        let head = b"POST /v1/publish/t HTTP/1.1\r\nHost: h\r\nX-API-Key:  k1 \r\nx-api-key: k2\r\nEmpty:\r\n\r\n";
        let r = parse(head).unwrap().unwrap();
        let all: Vec<(&str, &str)> = r.headers().collect();
        assert_eq!(
            all,
            [
                ("Host", "h"),
                ("X-API-Key", "k1"),
                ("x-api-key", "k2"),
                ("Empty", "")
            ]
        );
        assert_eq!(r.header("X-Api-Key"), Some("k1"));
        assert_eq!(r.header("empty"), Some(""));
        assert_eq!(r.header("origin"), None);
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let two = b"GET /healthz HTTP/1.1\r\n\r\nGET /metrics HTTP/1.0\r\n\r\n";
        let a = parse(two).unwrap().unwrap();
        assert_eq!(a.path, "/healthz");
        let b = parse(&two[a.head_len..]).unwrap().unwrap();
        assert_eq!(b.path, "/metrics");
        assert!(!b.keep_alive, "HTTP/1.0 closes by default");
    }

    #[test]
    fn limits_and_garbage() {
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many).unwrap_err(), HttpError::HeadersTooLarge);
        let big = vec![b'a'; MAX_HEAD_BYTES];
        assert!(parse(&big).is_err());
        assert!(matches!(
            parse(b"\x16\x03\x01garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET /%zz HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn a_recycled_request_leaves_nothing_in_the_next() {
        let first = b"POST /v1/publish/a%2Fb HTTP/1.1\r\nX-API-Key: k1\r\nContent-Length: 2\r\nOrigin: o\r\n\r\n{}";
        let mut spare = Spare::default();
        let r = parse_reusing(first, &mut spare).unwrap().unwrap();
        assert_eq!(r.path, "/v1/publish/a/b");
        assert_eq!(r.header("origin"), Some("o"));
        spare = r.recycle();
        assert!(spare.header_text.capacity() > 0);
        // a partial head takes nothing from the spare
        assert!(
            parse_reusing(b"GET /x HTTP/1.1\r\n", &mut spare)
                .unwrap()
                .is_none()
        );
        assert!(spare.header_text.capacity() > 0);
        let second = b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n";
        let r = parse_reusing(second, &mut spare).unwrap().unwrap();
        assert_eq!(r.path, "/healthz");
        assert_eq!(r.headers().collect::<Vec<_>>(), vec![("Host", "h")]);
        assert_eq!(r.header("x-api-key"), None);
        assert_eq!(r.content_length, None);
    }
}
