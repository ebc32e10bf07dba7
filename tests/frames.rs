//! Property tests of the SSE frame encoder (src/sse.rs): whatever a publisher
//! puts in a row, and whatever a key or tier is named, every frame reads, to
//! an EventSource, as exactly the one event the encoder meant: the fields it
//! wrote (`event`, `id`, one `data` line, `retry` where it belongs) and no
//! other, whatever the row's strings hold (CR, LF, U+2028, NUL, `data:`,
//! `event:`, `id:` ...).
//!
//! Rows go the way published rows go: a JSON body through
//! `sources::publish::parse_rows`, then the rows' bytes into a frame. The
//! frames are read by a small parser written from the WHATWG EventSource
//! rules (lines end at CRLF, LF or a bare CR), not by the test harness's
//! client, so a frame that only the harness would read right still fails.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Map, Value};
use sluice::sources::publish::parse_rows;
use sluice::sse;

// ------------------------------------------------------------ SSE parser

/// One dispatched event, and every field line that went into it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    event: String,
    data: String,
    id: String,
    fields: Vec<String>,
}

/// What a stream reads as: the events dispatched, the `retry` values set, the
/// comment lines, and any field lines left over without a blank line after
/// them (an EventSource discards those at the end of the stream).
#[derive(Debug, Default)]
struct Parsed {
    events: Vec<Event>,
    retries: Vec<u64>,
    comments: Vec<String>,
    pending: Vec<String>,
}

/// The WHATWG "event stream interpretation" over a whole stream.
fn parse_sse(bytes: &[u8]) -> Parsed {
    let text = std::str::from_utf8(bytes).expect("a frame is UTF-8");
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Parsed::default();
    let (mut event, mut data, mut last_id) = (String::new(), String::new(), String::new());
    let mut fields = Vec::new();
    let mut rest = text;
    loop {
        // A line ends at CRLF, LF or CR; text after the last end is an
        // incomplete line, never processed.
        let Some(end) = rest.find(['\r', '\n']) else {
            assert!(rest.is_empty(), "a frame ends inside a line: {rest:?}");
            break;
        };
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];

        if line.is_empty() {
            if !data.is_empty() {
                data.pop(); // the trailing LF
                out.events.push(Event {
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event.clone()
                    },
                    data: std::mem::take(&mut data),
                    id: last_id.clone(),
                    fields: std::mem::take(&mut fields),
                });
            }
            data.clear();
            event.clear();
            fields.clear();
            continue;
        }
        if let Some(c) = line.strip_prefix(':') {
            out.comments.push(c.to_string());
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        fields.push(name.to_string());
        match name {
            "event" => event = value.to_string(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => last_id = value.to_string(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                out.retries.push(value.parse().expect("digits"))
            }
            _ => {}
        }
    }
    out.pending = fields;
    out
}

/// The one event of a frame, checked to carry exactly `fields`.
fn one_event(frame: &[u8], fields: &[&str]) -> Event {
    assert!(
        !frame.contains(&b'\r'),
        "a raw CR in a frame: {:?}",
        String::from_utf8_lossy(frame)
    );
    let p = parse_sse(frame);
    assert_eq!(p.events.len(), 1, "{p:?}");
    assert!(p.comments.is_empty() && p.pending.is_empty(), "{p:?}");
    let e = p.events.into_iter().next().expect("one event");
    assert_eq!(e.fields, fields, "{e:?}");
    assert!(!e.data.contains('\n'), "one data line");
    e
}

// ------------------------------------------------------------ strategies

/// Text an SSE reader, a JSON encoder or a line splitter might trip on.
const NASTY: &[&str] = &[
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\r\r",
    "\u{2028}",
    "\u{2029}",
    "\u{85}",
    "\u{feff}",
    "\0",
    "\u{1}",
    "\u{1f}",
    "\u{7f}",
    "\t",
    "data:",
    "data: x",
    "event:",
    "event: error",
    "id:",
    "id: 9",
    "retry:",
    "retry: 1",
    ":",
    ": comment",
    "\"",
    "\\",
    "\\n",
    "\\r",
    "\\u000d",
    "</script>",
    "é",
    "😀",
    "\u{10ffff}",
];

fn nasty_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(NASTY).prop_map(str::to_string),
            2 => any::<String>(),
            1 => "[a-z]{0,8}",
        ],
        0..6,
    )
    .prop_map(|parts| parts.concat())
}

/// JSON values (integers within i64/u64: simd-json refuses larger ones).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (prop::num::f64::NORMAL | prop::num::f64::ZERO).prop_map(Value::from),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((nasty_string(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn json_row() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((nasty_string(), json_value()), 0..6)
        .prop_map(|kv| kv.into_iter().collect())
}

/// Event names as config.rs accepts them (`[A-Za-z0-9_.-]`, 1..64).
fn event_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,64}"
}

/// Topic names as `hub::topic_name_is_valid` accepts them.
fn topic_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~:@-]{1,16}(/[A-Za-z0-9._~:@-]{1,16}){0,3}"
}

/// Numbers compare by value, floats to within an ulp or two (serde_json,
/// without its `float_roundtrip` feature, reads `3e100` as
/// `3.0000000000000002e100`); everything else exactly.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y
                || match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => (x - y).abs() <= 1e-14 * x.abs().max(y.abs()),
                    _ => false,
                }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// A body of these rows as a publisher might send it: one object, an array,
/// or NDJSON.
fn body(rows: &[Map<String, Value>], shape: u8) -> (Vec<u8>, bool) {
    let text = |r: &Map<String, Value>| serde_json::to_string(r).expect("JSON");
    match (shape % 3, rows) {
        (0, [one]) => (text(one).into_bytes(), false),
        (2, _) => {
            let lines: Vec<String> = rows.iter().map(text).collect();
            (lines.join("\n").into_bytes(), true)
        }
        _ => (
            serde_json::to_vec(&Value::Array(
                rows.iter().cloned().map(Value::Object).collect(),
            ))
            .expect("JSON"),
            false,
        ),
    }
}

fn published(rows: &[Map<String, Value>], shape: u8) -> Vec<Bytes> {
    let (mut b, ndjson) = body(rows, shape);
    let parsed = parse_rows(&mut b, ndjson, &[], &[]).expect("a valid body is accepted");
    assert_eq!(parsed.len(), rows.len());
    parsed
        .iter()
        .map(|r| Bytes::copy_from_slice(r.json()))
        .collect()
}

/// The `data` of a frame: its envelope and rows.
fn check_body(data: &str, kind: &str, topic: &str, ts: u64, rows: &[Map<String, Value>]) {
    let v: Value = serde_json::from_str(data).expect("data is JSON");
    assert_eq!(v["type"], kind);
    assert_eq!(v["topic"], topic);
    assert_eq!(v["count"], rows.len());
    assert_eq!(v["timestamp"], ts);
    let got = v["data"].as_array().expect("data array");
    assert_eq!(got.len(), rows.len());
    for (g, want) in got.iter().zip(rows) {
        assert!(
            same_json(g, &Value::Object(want.clone())),
            "{g} != {want:?}"
        );
    }
}

// ------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn an_update_frame_is_one_event_whatever_its_rows_hold(
        rows in prop::collection::vec(json_row(), 1..5),
        shape in any::<u8>(),
        event in event_name(),
        topic in topic_name(),
        seq in any::<u64>(),
        ts in any::<u64>(),
    ) {
        let json = published(&rows, shape);
        let f = sse::update_frame(&event, &topic, seq, ts, json.iter().map(|b| &b[..]));
        let e = one_event(&f, &["event", "id", "data"]);
        prop_assert_eq!(&e.event, &event);
        prop_assert_eq!(e.id, seq.to_string());
        check_body(&e.data, &event, &topic, ts, &rows);
    }

    #[test]
    fn an_initial_state_frame_is_one_event_whatever_its_rows_hold(
        rows in prop::collection::vec(json_row(), 0..5),
        shape in any::<u8>(),
        topic in topic_name(),
        seq in any::<u64>(),
        ts in any::<u64>(),
    ) {
        let json = if rows.is_empty() { Vec::new() } else { published(&rows, shape) };
        let (f, _) = sse::initial_state_frame(&topic, seq, ts, json.iter().map(|b| &b[..]));
        let e = one_event(&f, &["event", "id", "data"]);
        prop_assert_eq!(e.event.as_str(), "initial_state");
        prop_assert_eq!(e.id, seq.to_string());
        check_body(&e.data, "initial_state", &topic, ts, &rows);
    }

    #[test]
    fn connected_and_error_frames_are_one_event_whatever_a_name_holds(
        tier in nasty_string(),
        topic in topic_name(),
        code in nasty_string(),
        message in nasty_string(),
        retry_ms in any::<u32>(),
        coalesce_ms in any::<u32>(),
        heartbeat_s in any::<u32>(),
        resumed in any::<bool>(),
        ts in any::<u64>(),
    ) {
        let f = sse::connected_frame(&sse::Connected {
            retry_ms,
            topic: &topic,
            tier: &tier,
            coalesce_ms,
            heartbeat_s,
            resumed,
            ts_ms: ts,
        });
        prop_assert_eq!(&parse_sse(&f).retries, &vec![u64::from(retry_ms)]);
        let e = one_event(&f, &["retry", "event", "data"]);
        prop_assert_eq!(e.event.as_str(), "connected");
        let v: Value = serde_json::from_str(&e.data).expect("JSON");
        prop_assert_eq!(&v["tier"], &Value::String(tier));
        prop_assert_eq!(&v["topic"], &Value::String(topic));

        let f = sse::error_frame(&code, &message);
        let e = one_event(&f, &["event", "data"]);
        prop_assert_eq!(e.event.as_str(), "error");
        let v: Value = serde_json::from_str(&e.data).expect("JSON");
        prop_assert_eq!(&v["error"]["code"], &Value::String(code));
        prop_assert_eq!(&v["error"]["message"], &Value::String(message));
    }

    /// Frames are whole: a stream of them reads as their events in order,
    /// heartbeats as comments only, and nothing left over.
    #[test]
    fn a_stream_of_frames_reads_as_their_events_in_order(
        rows in prop::collection::vec(json_row(), 1..4),
        event in event_name(),
        topic in topic_name(),
        retry_ms in any::<u32>(),
        unix_s in any::<u64>(),
    ) {
        let json = published(&rows, 1);
        let frames = [
            sse::connected_frame(&sse::Connected {
                retry_ms,
                topic: &topic,
                tier: "scale",
                coalesce_ms: 0,
                heartbeat_s: 15,
                resumed: false,
                ts_ms: 1,
            }),
            sse::initial_state_frame(&topic, 1, 2, json.iter().map(|b| &b[..])).0,
            sse::heartbeat(unix_s),
            sse::update_frame(&event, &topic, 2, 3, json.iter().map(|b| &b[..])),
            sse::update_frame(&event, &topic, 3, 4, json.iter().map(|b| &b[..]).take(1)),
            sse::timeout_frame(retry_ms),
            sse::limit_frame(retry_ms),
            sse::reconnect_frame(sse::ReconnectReason::SlowConsumer, retry_ms),
        ];
        let stream: Vec<u8> = frames.concat();
        let p = parse_sse(&stream);
        let names: Vec<&str> = p.events.iter().map(|e| e.event.as_str()).collect();
        prop_assert_eq!(
            names,
            vec!["connected", "initial_state", event.as_str(), event.as_str(), "timeout", "limit", "reconnect"]
        );
        let ids: Vec<&str> = p.events.iter().map(|e| e.id.as_str()).collect();
        // `id` persists across events until the next one sets it.
        prop_assert_eq!(ids, vec!["", "1", "2", "3", "3", "3", "3"]);
        prop_assert_eq!(p.comments, vec![format!(" heartbeat {unix_s}")]);
        prop_assert_eq!(p.retries, vec![u64::from(retry_ms); 2]);
        prop_assert!(p.pending.is_empty());
    }
}

/// The parser itself: CR, LF and CRLF all end lines, so a raw CR inside a
/// data line would split it (what the properties above rule out).
#[test]
fn the_reference_parser_splits_lines_at_cr_lf_and_crlf() {
    let p = parse_sse(b"event: a\rdata: x\r\ndata: y\nid: 7\r\r: c\n\ndata:z\n\n");
    assert_eq!(
        p.events,
        vec![
            Event {
                event: "a".into(),
                data: "x\ny".into(),
                id: "7".into(),
                fields: vec!["event".into(), "data".into(), "data".into(), "id".into()],
            },
            Event {
                event: "message".into(),
                data: "z".into(),
                id: "7".into(),
                fields: vec!["data".into()],
            },
        ]
    );
    assert_eq!(p.comments, vec![" c"]);
    // A row holding a raw CR would end the data line and forge a field.
    let p = parse_sse(b"event: u\ndata: {\"a\":\"\rid: 666\"}\n\n");
    assert_eq!(p.events[0].id, "666\"}");
    assert_eq!(p.events[0].fields, ["event", "data", "id"]);
}
