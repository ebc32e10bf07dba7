//! SSE frame encoding (SPEC §2): every frame is built here, once, into one
//! contiguous buffer holding its SSE framing (`event:`, `id:`, `retry:`, the
//! single `data:` line) and its compact JSON.
//!
//! Hot module for update frames: an update frame is built once per topic (and
//! tier), never per connection; rows are joined from their pre-encoded bytes,
//! never re-serialised. Per-connection frames (`connected`, closing frames
//! with jitter) are built only when a connection starts or ends.
//!
//! Invariant: topic names and event names are validated to contain no
//! character that needs JSON escaping, so they are copied verbatim.

use bytes::{BufMut, Bytes, BytesMut};

/// `event: initial_state` with `id: SEQ`, and where its JSON (the body of
/// `GET /v1/snapshot`) lies in it, so that one buffer serves both.
pub fn initial_state_frame<'a>(
    topic: &str,
    seq: u64,
    ts_ms: u64,
    rows: impl Iterator<Item = &'a [u8]> + Clone,
) -> (Bytes, std::ops::Range<usize>) {
    let (count, len) = measure(rows.clone());
    let mut out = BytesMut::with_capacity(96 + topic.len() + len);
    out.put_slice(b"event: initial_state\nid: ");
    put_u64(&mut out, seq);
    out.put_slice(b"\ndata: ");
    let start = out.len();
    body(&mut out, "initial_state", topic, ts_ms, count, rows);
    let end = out.len();
    out.put_slice(b"\n\n");
    (out.freeze(), start..end)
}

/// An update frame: `event: NAME`, `id: SEQ`, the rows' pre-encoded bytes
/// joined by commas (a filtered group passes only the rows it keeps).
pub fn update_frame<'a>(
    event: &str,
    topic: &str,
    seq: u64,
    ts_ms: u64,
    rows: impl Iterator<Item = &'a [u8]> + Clone,
) -> Bytes {
    let (count, len) = measure(rows.clone());
    // The fixed text (75 bytes) and three numbers of up to 20 digits: the
    // frame is written without growing.
    let cap = 135 + event.len() * 2 + topic.len() + len;
    let mut out = BytesMut::with_capacity(cap);
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_slice(b"\nid: ");
    put_u64(&mut out, seq);
    out.put_slice(b"\ndata: ");
    body(&mut out, event, topic, ts_ms, count, rows);
    out.put_slice(b"\n\n");
    debug_assert!(out.len() <= cap, "{} > {cap}", out.len());
    out.freeze()
}

/// True for an update frame ([`update_frame`], a replayed one included).
/// Of the frames sluice writes, only update frames and initial states end
/// their data with the rows' `]}`, and initial states begin with their
/// fixed `event:` line: two fixed-size compares, no scan (the metering asks
/// this of every frame a metered stream's write completes).
pub fn is_update(frame: &[u8]) -> bool {
    frame.ends_with(b"]}\n\n") && !frame.starts_with(b"event: initial_state\n")
}

/// Number of rows and their bytes with separators.
fn measure<'a>(rows: impl Iterator<Item = &'a [u8]>) -> (usize, usize) {
    rows.fold((0, 0), |(n, len), r| (n + 1, len + r.len() + 1))
}

fn body<'a>(
    out: &mut BytesMut,
    kind: &str,
    topic: &str,
    ts_ms: u64,
    count: usize,
    rows: impl Iterator<Item = &'a [u8]>,
) {
    out.put_slice(b"{\"type\":\"");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\",\"topic\":\"");
    out.put_slice(topic.as_bytes());
    out.put_slice(b"\",\"count\":");
    put_u64(out, count as u64);
    out.put_slice(b",\"timestamp\":");
    put_u64(out, ts_ms);
    out.put_slice(b",\"data\":[");
    for (i, row) in rows.enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(row);
    }
    out.put_slice(b"]}");
}

/// The fields of a `connected` frame.
pub struct Connected<'a> {
    pub retry_ms: u32,
    pub topic: &'a str,
    pub tier: &'a str,
    pub coalesce_ms: u32,
    pub heartbeat_s: u32,
    pub resumed: bool,
    pub ts_ms: u64,
}

/// `retry:` and `event: connected` (SPEC §2 frame 1).
pub fn connected_frame(c: &Connected<'_>) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(b"retry: ");
    put_u64(&mut out, c.retry_ms.into());
    out.put_slice(b"\nevent: connected\ndata: {\"type\":\"connected\",\"topic\":\"");
    out.put_slice(c.topic.as_bytes());
    out.put_slice(b"\",\"tier\":\"");
    json_str_body(&mut out, c.tier);
    out.put_slice(b"\",\"push_mode\":\"");
    out.put_slice(if c.coalesce_ms == 0 {
        b"raw"
    } else {
        b"coalesced"
    });
    out.put_slice(b"\",\"min_push_interval_s\":");
    put_seconds(&mut out, c.coalesce_ms);
    out.put_slice(b",\"transport\":\"sse\",\"heartbeat_s\":");
    put_u64(&mut out, c.heartbeat_s.into());
    out.put_slice(b",\"resumed\":");
    out.put_slice(if c.resumed { b"true" } else { b"false" });
    out.put_slice(b",\"timestamp\":");
    put_u64(&mut out, c.ts_ms);
    out.put_slice(b"}\n\n");
    out.freeze()
}

/// `: heartbeat <unix seconds>` and a blank line.
pub fn heartbeat(unix_s: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(32);
    out.put_slice(b": heartbeat ");
    put_u64(&mut out, unix_s);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// `event: timeout` (the connection reached `max_duration_s`).
pub fn timeout_frame(max_duration_s: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(80);
    out.put_slice(b"event: timeout\ndata: {\"type\":\"timeout\",\"max_duration_s\":");
    put_u64(&mut out, max_duration_s.into());
    out.put_slice(b"}\n\n");
    out.freeze()
}

/// `event: limit` (the connection received `max_events` update frames).
pub fn limit_frame(max_events: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(80);
    out.put_slice(b"event: limit\ndata: {\"type\":\"limit\",\"max_events\":");
    put_u64(&mut out, max_events.into());
    out.put_slice(b"}\n\n");
    out.freeze()
}

/// Why the server asks a client to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectReason {
    Shutdown,
    Reload,
    SlowConsumer,
}

impl ReconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReconnectReason::Shutdown => "shutdown",
            ReconnectReason::Reload => "reload",
            ReconnectReason::SlowConsumer => "slow_consumer",
        }
    }
}

/// `event: reconnect` with `retry: R`.
pub fn reconnect_frame(reason: ReconnectReason, retry_ms: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    out.put_slice(b"event: reconnect\nretry: ");
    put_u64(&mut out, retry_ms.into());
    out.put_slice(b"\ndata: {\"type\":\"reconnect\",\"reason\":\"");
    out.put_slice(reason.as_str().as_bytes());
    out.put_slice(b"\",\"retry_ms\":");
    put_u64(&mut out, retry_ms.into());
    out.put_slice(b"}\n\n");
    out.freeze()
}

/// `event: error` with `{"error":{"code":C,"message":M}}`.
pub fn error_frame(code: &str, message: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + message.len());
    out.put_slice(b"event: error\ndata: ");
    error_json(&mut out, code, message);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// `{"error":{"code":C,"message":M}}` (SPEC §4).
pub fn error_json(out: &mut BytesMut, code: &str, message: &str) {
    out.put_slice(b"{\"error\":{\"code\":\"");
    json_str_body(out, code);
    out.put_slice(b"\",\"message\":\"");
    json_str_body(out, message);
    out.put_slice(b"\"}}");
}

/// Writes `s` escaped for the inside of a JSON string.
pub fn json_str_body(out: &mut BytesMut, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'"' => out.put_slice(b"\\\""),
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.put_slice(b"\\u00");
                out.put_u8(HEX[(b >> 4) as usize]);
                out.put_u8(HEX[(b & 15) as usize]);
            }
            _ => out.put_u8(b),
        }
    }
}

pub fn put_u64(out: &mut BytesMut, n: u64) {
    let mut b = itoa::Buffer::new();
    out.put_slice(b.format(n).as_bytes());
}

/// Milliseconds as seconds with up to three decimals (`0.0`, `0.5`, `1.0`).
fn put_seconds(out: &mut BytesMut, ms: u32) {
    put_u64(out, (ms / 1000).into());
    out.put_u8(b'.');
    let frac = ms % 1000;
    if frac == 0 {
        out.put_u8(b'0');
    } else {
        let s = format!("{frac:03}");
        out.put_slice(s.trim_end_matches('0').as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_frame_exact_bytes() {
        let rows = [
            Bytes::from_static(br#"{"a":1}"#),
            Bytes::from_static(br#"{"a":2}"#),
        ];
        let f = update_frame(
            "odds_update",
            "odds/nba",
            42,
            1700,
            rows.iter().map(|r| &r[..]),
        );
        assert_eq!(
            &f[..],
            b"event: odds_update\nid: 42\ndata: {\"type\":\"odds_update\",\"topic\":\"odds/nba\",\"count\":2,\"timestamp\":1700,\"data\":[{\"a\":1},{\"a\":2}]}\n\n"
        );
    }

    #[test]
    fn update_frame_fits_its_first_allocation_at_the_largest_numbers() {
        // `update_frame` asserts (debug builds) that it never grew.
        let rows = [Bytes::from_static(b"{}")];
        let f = update_frame("u", "t", u64::MAX, u64::MAX, rows.iter().map(|r| &r[..]));
        assert!(f.ends_with(b"[{}]}\n\n"));
        update_frame("u", "t", u64::MAX, u64::MAX, std::iter::empty());
    }

    #[test]
    fn initial_state_of_nothing() {
        let (f, body) = initial_state_frame("t", 0, 5, std::iter::empty());
        assert_eq!(
            &f[..],
            b"event: initial_state\nid: 0\ndata: {\"type\":\"initial_state\",\"topic\":\"t\",\"count\":0,\"timestamp\":5,\"data\":[]}\n\n"
        );
        assert_eq!(
            &f[body],
            b"{\"type\":\"initial_state\",\"topic\":\"t\",\"count\":0,\"timestamp\":5,\"data\":[]}"
        );
    }

    #[test]
    fn connected_frame_exact_bytes() {
        let f = connected_frame(&Connected {
            retry_ms: 3000,
            topic: "ticker/AAPL",
            tier: "enterprise",
            coalesce_ms: 500,
            heartbeat_s: 15,
            resumed: false,
            ts_ms: 9,
        });
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            "retry: 3000\nevent: connected\ndata: {\"type\":\"connected\",\"topic\":\"ticker/AAPL\",\"tier\":\"enterprise\",\"push_mode\":\"coalesced\",\"min_push_interval_s\":0.5,\"transport\":\"sse\",\"heartbeat_s\":15,\"resumed\":false,\"timestamp\":9}\n\n"
        );
    }

    #[test]
    fn only_update_frames_are_updates() {
        let rows: [&[u8]; 1] = [br#"{"a":1}"#];
        assert!(is_update(&update_frame(
            "update",
            "t",
            1,
            2,
            rows.iter().copied()
        )));
        let none: [&[u8]; 0] = [];
        assert!(is_update(&update_frame(
            "odds_update",
            "t",
            1,
            2,
            none.iter().copied()
        )));
        let c = Connected {
            retry_ms: 1,
            topic: "t",
            tier: "scale",
            coalesce_ms: 0,
            heartbeat_s: 15,
            resumed: false,
            ts_ms: 9,
        };
        for other in [
            initial_state_frame("t", 3, 5, rows.iter().copied()).0,
            connected_frame(&c),
            heartbeat(17),
            timeout_frame(5),
            limit_frame(5),
            reconnect_frame(ReconnectReason::Shutdown, 3000),
            error_frame("unauthorized", "gone"),
            Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
            Bytes::from_static(b"event: update"),
            Bytes::new(),
        ] {
            assert!(!is_update(&other), "{other:?}");
        }
    }

    #[test]
    fn closing_frames() {
        assert_eq!(
            &reconnect_frame(ReconnectReason::SlowConsumer, 3100)[..],
            b"event: reconnect\nretry: 3100\ndata: {\"type\":\"reconnect\",\"reason\":\"slow_consumer\",\"retry_ms\":3100}\n\n"
        );
        assert_eq!(&heartbeat(17)[..], b": heartbeat 17\n\n");
        assert_eq!(
            &error_frame("x", "a \"q\"\n")[..],
            b"event: error\ndata: {\"error\":{\"code\":\"x\",\"message\":\"a \\\"q\\\"\\n\"}}\n\n"
        );
    }
}
