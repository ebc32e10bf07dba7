//! Publish bodies (SPEC §3 `POST /v1/publish`): one JSON object, a JSON array
//! of objects, or NDJSON, parsed once with simd-json into [`Row`]s holding
//! each row's compact JSON bytes, its state-table key fields' texts (a key
//! is their tuple, see [`crate::hub::row_key`], so that distinct tuples never
//! share a key) and its filter fields' texts. Each row's JSON is written
//! into a reused buffer, with simd-json's writer, noting where each value
//! starts, so that fields can point into it ([`crate::hub::row`]); the row
//! is then copied once into its own exact-size allocation.
//!
//! All or nothing: any invalid row rejects the whole body. Runs once per
//! publish, never per connection. The demo feed publishes through here too.
//!
//! With `[cluster]`, [`submit`] validates the body the same way, then hands
//! its rows (as one compact JSON array) to the cluster link instead of the
//! hub: the update is applied, on every node, when it comes back from the
//! JetStream log with its id ([`crate::cluster`]).

use std::borrow::Cow;

use simd_json::prelude::*;
use simd_json::tape::{Object, Value};
use simd_json::{BorrowedValue, Buffers, Tape};

use std::sync::Arc;

use bytes::Bytes;

use crate::hub::{Hub, Row, RowBuilder, Topic};

/// Most rows one publish may carry.
pub const MAX_ROWS_PER_PUBLISH: usize = 100_000;

/// Why a publish body was refused (400 with this message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("body is empty")]
    Empty,
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("row {0} is not a JSON object")]
    NotAnObject(usize),
    #[error("row {0} has no key field '{1}'")]
    MissingKey(usize, String),
    #[error("too many rows (at most {MAX_ROWS_PER_PUBLISH})")]
    TooManyRows,
    /// The topic's state table is full; nothing was applied (503).
    #[error(transparent)]
    StateFull(#[from] crate::hub::StateFull),
    /// Cluster mode: the JetStream log could not store the update (503).
    #[error("the cluster log is unavailable: {0}")]
    Unavailable(crate::cluster::ClusterError),
}

/// How a publish body lays out its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object, or a JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// What a publish added: its rows and the update's sequence id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub rows: usize,
    pub id: u64,
}

/// The one way rows enter the hub, for every source (`POST /v1/publish`,
/// the demo, upstream feeds): parse and validate the body against the
/// topic's key and filter fields, publish it as one update, count it in
/// the metrics under `source`. All or nothing: an invalid body publishes
/// nothing. `body` is simd-json's scratch space.
///
/// With `[cluster]` this blocks the calling thread until JetStream has
/// stored the update (and this node applied it): call it from a source's own
/// thread, never from a worker or inside an async runtime (use [`submit`] and
/// [`Submitted::wait`] there).
pub fn accept(
    hub: &Hub,
    topic: &Arc<Topic>,
    body: &mut [u8],
    format: Format,
    source: &str,
) -> Result<Accepted, PublishError> {
    submit(hub, topic, body, format, source, None)?.wait_blocking()
}

/// What [`submit`] did with a valid body.
pub enum Submitted {
    /// Without `[cluster]`: applied to the hub, with its id.
    Applied(Accepted),
    /// With `[cluster]`: on its way to the JetStream log; the id comes when
    /// it is stored.
    Stored {
        rows: usize,
        source: Box<str>,
        pending: crate::cluster::Pending,
    },
}

impl Submitted {
    /// The update's id once it is stored (cluster), or at once.
    pub async fn wait(self) -> Result<Accepted, PublishError> {
        match self {
            Submitted::Applied(a) => Ok(a),
            Submitted::Stored {
                rows,
                source,
                pending,
            } => stored(rows, &source, pending.wait().await),
        }
    }

    /// [`Submitted::wait`] for a thread outside any async runtime.
    pub fn wait_blocking(self) -> Result<Accepted, PublishError> {
        match self {
            Submitted::Applied(a) => Ok(a),
            Submitted::Stored {
                rows,
                source,
                pending,
            } => stored(rows, &source, pending.wait_blocking()),
        }
    }
}

fn stored(
    rows: usize,
    source: &str,
    id: Result<u64, crate::cluster::ClusterError>,
) -> Result<Accepted, PublishError> {
    let id = id.map_err(PublishError::Unavailable)?;
    crate::metrics::published(source, rows);
    Ok(Accepted { rows, id })
}

/// [`accept`] without waiting: validates the body, then applies it (one
/// node) or hands it to the cluster link (`[cluster]`), where `msg_id`
/// names it for JetStream's de-duplication: two nodes that submit the same
/// `msg_id` within the stream's duplicate window store it once (upstream
/// sources pass [`crate::cluster::msg_id`] of the origin's event; `None`: a
/// random id, for HTTP publishes).
pub fn submit(
    hub: &Hub,
    topic: &Arc<Topic>,
    body: &mut [u8],
    format: Format,
    source: &str,
    msg_id: Option<&str>,
) -> Result<Submitted, PublishError> {
    let rows = parse_rows(
        body,
        format == Format::Ndjson,
        &topic.key_fields,
        &topic.fields,
    )?;
    let n = rows.len();
    if let Some(link) = crate::cluster::link() {
        let pending = link
            .submit(&topic.name, join_rows(&rows), msg_id)
            .map_err(PublishError::Unavailable)?;
        return Ok(Submitted::Stored {
            rows: n,
            source: source.into(),
            pending,
        });
    }
    let id = hub.publish(topic, rows)?;
    crate::metrics::published(source, n);
    Ok(Submitted::Applied(Accepted { rows: n, id }))
}

/// The rows as one compact JSON array (what the cluster log stores).
pub fn join_rows(rows: &[Row]) -> Bytes {
    let len = rows.iter().map(|r| r.json().len() + 1).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r.json());
    }
    out.push(b']');
    Bytes::from(out)
}

/// Parses a body into rows, keeping each row's state-table key and its
/// values of the topic's filter fields. `body` is simd-json's scratch space.
///
/// simd-json parses into a tape (a flat list of nodes, no map or vector per
/// object), with buffers kept per thread: a one-row publish allocates only
/// its rows.
pub fn parse_rows(
    body: &mut [u8],
    ndjson: bool,
    key_fields: &[String],
    filter_fields: &[String],
) -> Result<Vec<Row>, PublishError> {
    // Taken out of the thread's slot for the call (a nested call, which
    // nothing makes, would start from empty scratch instead of panicking).
    let mut scratch = SCRATCH.with(|s| s.take()).unwrap_or_default();
    let rows = parse_with(&mut scratch, body, ndjson, key_fields, filter_fields);
    if body.len() <= MAX_KEPT_SCRATCH_BODY {
        SCRATCH.with(|s| s.set(Some(scratch)));
    }
    rows
}

/// Bodies up to this size leave their parse buffers to the next publish on
/// the thread (larger ones free theirs, so a rare large body does not pin
/// its buffers).
const MAX_KEPT_SCRATCH_BODY: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::Cell<Option<Scratch>> = const { std::cell::Cell::new(None) };
}

/// What a parse reuses: simd-json's buffers and tape, the row builder.
#[derive(Default)]
struct Scratch {
    buffers: Buffers,
    /// Empty between parses (its nodes borrow from the body being parsed).
    tape: Option<Tape<'static>>,
    builder: RowBuilder,
    /// Per member of the row being encoded: where its value's JSON starts
    /// and ends.
    spans: Vec<(usize, usize)>,
    text: Vec<u8>,
}

fn parse_with(
    scratch: &mut Scratch,
    body: &mut [u8],
    ndjson: bool,
    key_fields: &[String],
    filter_fields: &[String],
) -> Result<Vec<Row>, PublishError> {
    let spec = Fields {
        key: key_fields,
        filter: filter_fields,
    };
    let mut tape: Tape<'_> = scratch.tape.take().unwrap_or_else(Tape::null).reset();
    let mut rows = Vec::new();
    let result = if ndjson {
        let mut start = 0;
        let mut result = Ok(());
        while start < body.len() {
            let end = body[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(body.len(), |i| start + i);
            let line = &mut body[start..end];
            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                // Each line's tape borrows that line only.
                let mut line_tape: Tape<'_> = tape.reset();
                result = simd_json::fill_tape(line, &mut scratch.buffers, &mut line_tape)
                    .map_err(|e| PublishError::Json(e.to_string()))
                    .and_then(|()| push_row(&mut rows, line_tape.as_value(), &spec, scratch));
                tape = line_tape.reset();
                if result.is_err() {
                    break;
                }
            }
            start = end + 1;
        }
        result
    } else if body.iter().all(|b| b.is_ascii_whitespace()) {
        Err(PublishError::Empty)
    } else {
        match simd_json::fill_tape(body, &mut scratch.buffers, &mut tape) {
            Err(e) => Err(PublishError::Json(e.to_string())),
            Ok(()) => {
                let v = tape.as_value();
                match v.as_array() {
                    Some(items) if items.len() > MAX_ROWS_PER_PUBLISH => {
                        Err(PublishError::TooManyRows)
                    }
                    Some(items) => {
                        rows.reserve(items.len());
                        items
                            .iter()
                            .try_for_each(|item| push_row(&mut rows, item, &spec, scratch))
                    }
                    None => push_row(&mut rows, v, &spec, scratch),
                }
            }
        }
    };
    scratch.tape = Some(tape.reset());
    result?;
    if rows.is_empty() {
        return Err(PublishError::Empty);
    }
    Ok(rows)
}

/// Which fields to keep of each row.
struct Fields<'a> {
    key: &'a [String],
    filter: &'a [String],
}

/// Writes a field's text as filters and keys compare it (a string's text,
/// or the compact JSON of anything else) into `text`, and returns where in
/// the row's JSON that text may appear verbatim (`span`: where the value's
/// JSON is).
fn field_text(
    value: &Value<'_, '_>,
    span: (usize, usize),
    json: &[u8],
    text: &mut Vec<u8>,
) -> usize {
    text.clear();
    match value.as_str() {
        // a string's text sits between its quotes unless it was escaped
        // (the builder checks the bytes before it points at them)
        Some(s) => {
            text.extend_from_slice(s.as_bytes());
            span.0 + 1
        }
        None => {
            text.extend_from_slice(&json[span.0..span.1]);
            span.0
        }
    }
}

/// The first member of `obj` called `name` (as simd-json's `get` finds
/// it), with its index.
fn member<'t, 'i>(obj: &Object<'t, 'i>, name: &str) -> Option<(usize, Value<'t, 'i>)> {
    obj.iter()
        .enumerate()
        .find(|(_, (k, _))| *k == name)
        .map(|(i, (_, v))| (i, v))
}

fn push_row(
    rows: &mut Vec<Row>,
    v: Value<'_, '_>,
    spec: &Fields<'_>,
    scratch: &mut Scratch,
) -> Result<(), PublishError> {
    let n = rows.len();
    if n >= MAX_ROWS_PER_PUBLISH {
        return Err(PublishError::TooManyRows);
    }
    let obj = v.as_object().ok_or(PublishError::NotAnObject(n))?;
    for field in spec.key {
        if member(&obj, field).is_none() {
            return Err(PublishError::MissingKey(n, field.clone()));
        }
    }
    // The row's compact JSON, written member by member exactly as
    // simd-json's `encode` would (same writer, same order), noting where
    // each value starts so that key and filter fields can point into it.
    let b = &mut scratch.builder;
    b.clear();
    scratch.spans.clear();
    let json = &mut b.json;
    json.push(b'{');
    for (i, (name, value)) in obj.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        write_key(json, name);
        json.push(b':');
        let start = json.len();
        write_json(json, value);
        scratch.spans.push((start, json.len()));
    }
    json.push(b'}');
    let text = &mut scratch.text;
    for field in spec.key {
        let (i, value) = member(&obj, field).expect("checked above");
        let at = field_text(&value, scratch.spans[i], &b.json, text);
        b.key_field(text, Some(at));
    }
    for field in spec.filter {
        match member(&obj, field) {
            Some((i, value)) => {
                let at = field_text(&value, scratch.spans[i], &b.json, text);
                b.filter_field(Some(text), Some(at));
            }
            None => b.filter_field(None, None),
        }
    }
    rows.push(b.finish());
    Ok(())
}

/// Appends a member name as a JSON string, as simd-json's writer would: a
/// name that needs no escape is copied as it is.
fn write_key(out: &mut Vec<u8>, name: &str) {
    if name.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.push(b'"');
    } else {
        BorrowedValue::String(Cow::Borrowed(name))
            .write(out)
            .expect("writing to a Vec does not fail");
    }
}

/// Appends a value's compact JSON (writing to a `Vec` cannot fail).
fn write_json(out: &mut Vec<u8>, v: Value<'_, '_>) {
    v.write(out).expect("writing to a Vec does not fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn object_array_and_ndjson() {
        let mut b = br#" { "a" : 1, "b":[1, 2] } "#.to_vec();
        let rows = parse_rows(&mut b, false, &[], &[]).unwrap();
        assert_eq!(&rows[0].json(), br#"{"a":1,"b":[1,2]}"#);

        let mut b = br#"[{"id":"x","v":1},{"id":7,"v":2}]"#.to_vec();
        let rows = parse_rows(&mut b, false, &keys(&["id"]), &[]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key().as_deref(), Some("1:x"));
        assert_eq!(rows[1].key().as_deref(), Some("1:7"));

        let mut b = b"{\"a\":1}\n\n{\"a\":2}\r\n".to_vec();
        let rows = parse_rows(&mut b, true, &[], &[]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[1].json(), br#"{"a":2}"#);
    }

    #[test]
    fn composite_keys_holding_the_old_separator_stay_distinct() {
        let k = keys(&["a", "b"]);
        let mut b = br#"[{"a":"x\u001fy","b":"z"},{"a":"x","b":"y\u001fz"},{"a":"x\u001fy\u001fz","b":""}]"#
            .to_vec();
        let rows = parse_rows(&mut b, false, &k, &[]).unwrap();
        let got: Vec<String> = rows.iter().map(|r| r.key().unwrap().into()).collect();
        assert_eq!(
            got,
            ["3:x\u{1f}y1:z", "1:x3:y\u{1f}z", "5:x\u{1f}y\u{1f}z0:"]
        );
        for r in &rows {
            assert!(crate::hub::row_key::decode(&r.key().unwrap()).is_some());
        }
    }

    #[test]
    fn a_key_field_is_its_text_so_a_string_and_a_number_can_be_one_key() {
        let k = keys(&["a", "b"]);
        let mut b = br#"[{"a":1,"b":"q"},{"a":"1","b":"q"},{"a":1.0,"b":"q"},{"a":true,"b":"q"},{"a":"true","b":"q"}]"#.to_vec();
        let rows = parse_rows(&mut b, false, &k, &[]).unwrap();
        let got: Vec<String> = rows.iter().map(|r| r.key().unwrap().into()).collect();
        assert_eq!(
            got,
            ["1:11:q", "1:11:q", "3:1.01:q", "4:true1:q", "4:true1:q"]
        );
    }

    #[test]
    fn joined_rows_parse_back_to_the_same_rows() {
        let k = keys(&["id"]);
        let mut b = b"{\"id\":1, \"v\":\"a\\nb\"}\n{\"id\":2}".to_vec();
        let rows = parse_rows(&mut b, true, &k, &[]).unwrap();
        let joined = join_rows(&rows);
        assert_eq!(&joined[..], br#"[{"id":1,"v":"a\nb"},{"id":2}]"#);
        let again = parse_rows(&mut joined.to_vec(), false, &k, &[]).unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(again[1].key(), rows[1].key());
    }

    #[test]
    fn filter_fields_are_kept_as_text() {
        let mut b = br#"{"book":"novig","n":7,"ok":true}"#.to_vec();
        let rows = parse_rows(&mut b, false, &[], &keys(&["book", "n", "ok", "gone"])).unwrap();
        let f: Vec<Option<&[u8]>> = (0..4).map(|i| rows[0].field(i)).collect();
        assert_eq!(
            f,
            vec![Some(&b"novig"[..]), Some(b"7"), Some(b"true"), None]
        );
    }

    #[test]
    fn rows_are_encoded_as_simd_json_encodes_them() {
        let bodies = [
            r#"{"a":"q\"\\\n\u0001é/","b":[1,{"c":null}],"d":1.5e3,"e":-0,"f":true,"\"k":{}}"#,
            r#"{"id":"x","a":"plain"}"#,
            r#"{"é/k":1,"a\u0001\\":2,"\t":3}"#,
            r#"{}"#,
        ];
        for body in bodies {
            let mut b = body.as_bytes().to_vec();
            let rows = parse_rows(&mut b, false, &[], &keys(&["a", "d", "b"])).unwrap();
            let mut b2 = body.as_bytes().to_vec();
            let v = simd_json::to_borrowed_value(&mut b2).unwrap();
            assert_eq!(rows[0].json(), v.encode().as_bytes(), "{body}");
        }
        let mut b = bodies[0].as_bytes().to_vec();
        let rows = parse_rows(&mut b, false, &[], &keys(&["a", "d", "b"])).unwrap();
        assert_eq!(rows[0].field(0), Some("q\"\\\n\u{1}é/".as_bytes()));
        assert_eq!(rows[0].field(1), Some(&b"1500.0"[..]));
        assert_eq!(rows[0].field(2), Some(&br#"[1,{"c":null}]"#[..]));
    }

    #[test]
    fn a_row_costs_its_json_and_a_few_bytes() {
        // keyed by a number and a plain string: both point into the JSON
        let mut b = br#"{"id":123456,"s":"abc","v":1}"#.to_vec();
        let rows = parse_rows(&mut b, false, &keys(&["id", "s"]), &keys(&["s"])).unwrap();
        let r = &rows[0];
        assert_eq!(r.key().as_deref(), Some("6:1234563:abc"));
        assert_eq!(r.field(0), Some(&b"abc"[..]));
        let json = r.json().len();
        assert!(
            r.heap_bytes() <= json + 16 + 12,
            "{} bytes for {json} bytes of JSON",
            r.heap_bytes()
        );
    }

    #[test]
    fn all_or_nothing() {
        let mut b = br#"[{"a":1}, 3]"#.to_vec();
        assert_eq!(
            parse_rows(&mut b, false, &[], &[]).unwrap_err(),
            PublishError::NotAnObject(1)
        );
        let mut b = br#"[{"id":1},{"x":2}]"#.to_vec();
        assert_eq!(
            parse_rows(&mut b, false, &keys(&["id"]), &[]).unwrap_err(),
            PublishError::MissingKey(1, "id".into())
        );
        let mut b = br#"{"a":"#.to_vec();
        assert!(matches!(
            parse_rows(&mut b, false, &[], &[]),
            Err(PublishError::Json(_))
        ));
        let mut b = b"  ".to_vec();
        assert_eq!(
            parse_rows(&mut b, false, &[], &[]).unwrap_err(),
            PublishError::Empty
        );
        let mut b = b"[]".to_vec();
        assert_eq!(
            parse_rows(&mut b, false, &[], &[]).unwrap_err(),
            PublishError::Empty
        );
    }
}
