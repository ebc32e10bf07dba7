//! Publish bodies (SPEC §3 `POST /v1/publish`): one JSON object, a JSON array
//! of objects, or NDJSON, parsed once with simd-json into [`Row`]s holding
//! each row's compact JSON bytes and its state-table key (its key fields'
//! texts, encoded by [`row_key`] so that distinct tuples never share a key).
//!
//! All or nothing: any invalid row rejects the whole body. Runs once per
//! publish, never per connection. The demo feed publishes through here too.
//!
//! With `[cluster]`, [`submit`] validates the body the same way, then hands
//! its rows (as one compact JSON array) to the cluster link instead of the
//! hub: the update is applied, on every node, when it comes back from the
//! JetStream log with its id ([`crate::cluster`]).

use bytes::Bytes;
use simd_json::BorrowedValue;
use simd_json::prelude::*;

use std::sync::Arc;

use crate::hub::{Hub, Row, Topic, row_key};

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
    let id = hub.publish(topic, rows);
    crate::metrics::published(source, n);
    Ok(Submitted::Applied(Accepted { rows: n, id }))
}

/// The rows as one compact JSON array (what the cluster log stores).
pub fn join_rows(rows: &[Row]) -> Bytes {
    let len = rows.iter().map(|r| r.json.len() + 1).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&r.json);
    }
    out.push(b']');
    Bytes::from(out)
}

/// Parses a body into rows, keeping each row's state-table key and its
/// values of the topic's filter fields. `body` is simd-json's scratch space.
pub fn parse_rows(
    body: &mut [u8],
    ndjson: bool,
    key_fields: &[String],
    filter_fields: &[String],
) -> Result<Vec<Row>, PublishError> {
    let spec = Fields {
        key: key_fields,
        filter: filter_fields,
    };
    let mut rows = Vec::new();
    if ndjson {
        let mut start = 0;
        while start < body.len() {
            let end = body[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(body.len(), |i| start + i);
            let line = &mut body[start..end];
            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                let v = simd_json::to_borrowed_value(line)
                    .map_err(|e| PublishError::Json(e.to_string()))?;
                push_row(&mut rows, &v, &spec)?;
            }
            start = end + 1;
        }
    } else {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(PublishError::Empty);
        }
        let v =
            simd_json::to_borrowed_value(body).map_err(|e| PublishError::Json(e.to_string()))?;
        match v.as_array() {
            Some(items) => {
                if items.len() > MAX_ROWS_PER_PUBLISH {
                    return Err(PublishError::TooManyRows);
                }
                rows.reserve(items.len());
                for item in items {
                    push_row(&mut rows, item, &spec)?;
                }
            }
            None => push_row(&mut rows, &v, &spec)?,
        }
    }
    if rows.is_empty() {
        return Err(PublishError::Empty);
    }
    Ok(rows)
}

struct Fields<'a> {
    key: &'a [String],
    filter: &'a [String],
}

/// A field's value as filters and keys compare it: a string's text, or the
/// compact JSON of anything else (`7`, `true`).
fn field_text(out: &mut String, value: &BorrowedValue<'_>) {
    match value.as_str() {
        Some(s) => out.push_str(s),
        None => out.push_str(&value.encode()),
    }
}

fn push_row(
    rows: &mut Vec<Row>,
    v: &BorrowedValue<'_>,
    spec: &Fields<'_>,
) -> Result<(), PublishError> {
    let key_fields = spec.key;
    let n = rows.len();
    if n >= MAX_ROWS_PER_PUBLISH {
        return Err(PublishError::TooManyRows);
    }
    let obj = v.as_object().ok_or(PublishError::NotAnObject(n))?;
    let key = if key_fields.is_empty() {
        None
    } else {
        let mut key = String::new();
        for field in key_fields {
            let value = obj
                .get(field.as_str())
                .ok_or_else(|| PublishError::MissingKey(n, field.clone()))?;
            match value.as_str() {
                Some(s) => row_key::push_field(&mut key, s),
                None => row_key::push_field(&mut key, &value.encode()),
            }
        }
        Some(key.into_boxed_str())
    };
    let fields = spec
        .filter
        .iter()
        .map(|f| {
            obj.get(f.as_str()).map(|value| {
                let mut s = String::new();
                field_text(&mut s, value);
                s.into_boxed_str()
            })
        })
        .collect();
    rows.push(Row {
        json: Bytes::from(v.encode().into_bytes()),
        key,
        fields,
    });
    Ok(())
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
        assert_eq!(&rows[0].json[..], br#"{"a":1,"b":[1,2]}"#);

        let mut b = br#"[{"id":"x","v":1},{"id":7,"v":2}]"#.to_vec();
        let rows = parse_rows(&mut b, false, &keys(&["id"]), &[]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key.as_deref(), Some("1:x"));
        assert_eq!(rows[1].key.as_deref(), Some("1:7"));

        let mut b = b"{\"a\":1}\n\n{\"a\":2}\r\n".to_vec();
        let rows = parse_rows(&mut b, true, &[], &[]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[1].json[..], br#"{"a":2}"#);
    }

    #[test]
    fn composite_keys_holding_the_old_separator_stay_distinct() {
        let k = keys(&["a", "b"]);
        let mut b = br#"[{"a":"x\u001fy","b":"z"},{"a":"x","b":"y\u001fz"},{"a":"x\u001fy\u001fz","b":""}]"#
            .to_vec();
        let rows = parse_rows(&mut b, false, &k, &[]).unwrap();
        let got: Vec<&str> = rows.iter().map(|r| r.key.as_deref().unwrap()).collect();
        assert_eq!(
            got,
            ["3:x\u{1f}y1:z", "1:x3:y\u{1f}z", "5:x\u{1f}y\u{1f}z0:"]
        );
        for r in &rows {
            assert!(row_key::decode(r.key.as_deref().unwrap()).is_some());
        }
    }

    #[test]
    fn a_key_field_is_its_text_so_a_string_and_a_number_can_be_one_key() {
        let k = keys(&["a", "b"]);
        let mut b = br#"[{"a":1,"b":"q"},{"a":"1","b":"q"},{"a":1.0,"b":"q"},{"a":true,"b":"q"},{"a":"true","b":"q"}]"#.to_vec();
        let rows = parse_rows(&mut b, false, &k, &[]).unwrap();
        let got: Vec<&str> = rows.iter().map(|r| r.key.as_deref().unwrap()).collect();
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
        assert_eq!(again[1].key, rows[1].key);
    }

    #[test]
    fn filter_fields_are_kept_as_text() {
        let mut b = br#"{"book":"novig","n":7,"ok":true}"#.to_vec();
        let rows = parse_rows(&mut b, false, &[], &keys(&["book", "n", "ok", "gone"])).unwrap();
        let f: Vec<Option<&str>> = rows[0].fields.iter().map(|x| x.as_deref()).collect();
        assert_eq!(f, vec![Some("novig"), Some("7"), Some("true"), None]);
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
