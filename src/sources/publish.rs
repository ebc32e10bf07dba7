//! Publish bodies (SPEC §3 `POST /v1/publish`): one JSON object, a JSON array
//! of objects, or NDJSON, parsed once with simd-json into [`Row`]s holding
//! each row's compact JSON bytes and its state-table key.
//!
//! All or nothing: any invalid row rejects the whole body. Runs once per
//! publish, never per connection. The demo feed publishes through here too.

use bytes::Bytes;
use simd_json::BorrowedValue;
use simd_json::prelude::*;

use crate::hub::Row;

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
}

/// Parses a body into rows. `body` is used as simd-json's scratch space.
pub fn parse_rows(
    body: &mut [u8],
    ndjson: bool,
    key_fields: &[String],
) -> Result<Vec<Row>, PublishError> {
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
                push_row(&mut rows, &v, key_fields)?;
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
                    push_row(&mut rows, item, key_fields)?;
                }
            }
            None => push_row(&mut rows, &v, key_fields)?,
        }
    }
    if rows.is_empty() {
        return Err(PublishError::Empty);
    }
    Ok(rows)
}

fn push_row(
    rows: &mut Vec<Row>,
    v: &BorrowedValue<'_>,
    key_fields: &[String],
) -> Result<(), PublishError> {
    let n = rows.len();
    if n >= MAX_ROWS_PER_PUBLISH {
        return Err(PublishError::TooManyRows);
    }
    let obj = v.as_object().ok_or(PublishError::NotAnObject(n))?;
    let key = if key_fields.is_empty() {
        None
    } else {
        let mut key = String::new();
        for (i, field) in key_fields.iter().enumerate() {
            let value = obj
                .get(field.as_str())
                .ok_or_else(|| PublishError::MissingKey(n, field.clone()))?;
            if i > 0 {
                key.push('\u{1f}');
            }
            match value.as_str() {
                Some(s) => key.push_str(s),
                None => key.push_str(&value.encode()),
            }
        }
        Some(key.into_boxed_str())
    };
    rows.push(Row {
        json: Bytes::from(v.encode().into_bytes()),
        key,
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
        let rows = parse_rows(&mut b, false, &[]).unwrap();
        assert_eq!(&rows[0].json[..], br#"{"a":1,"b":[1,2]}"#);

        let mut b = br#"[{"id":"x","v":1},{"id":7,"v":2}]"#.to_vec();
        let rows = parse_rows(&mut b, false, &keys(&["id"])).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key.as_deref(), Some("x"));
        assert_eq!(rows[1].key.as_deref(), Some("7"));

        let mut b = b"{\"a\":1}\n\n{\"a\":2}\r\n".to_vec();
        let rows = parse_rows(&mut b, true, &[]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[1].json[..], br#"{"a":2}"#);
    }

    #[test]
    fn all_or_nothing() {
        let mut b = br#"[{"a":1}, 3]"#.to_vec();
        assert_eq!(
            parse_rows(&mut b, false, &[]).unwrap_err(),
            PublishError::NotAnObject(1)
        );
        let mut b = br#"[{"id":1},{"x":2}]"#.to_vec();
        assert_eq!(
            parse_rows(&mut b, false, &keys(&["id"])).unwrap_err(),
            PublishError::MissingKey(1, "id".into())
        );
        let mut b = br#"{"a":"#.to_vec();
        assert!(matches!(
            parse_rows(&mut b, false, &[]),
            Err(PublishError::Json(_))
        ));
        let mut b = b"  ".to_vec();
        assert_eq!(
            parse_rows(&mut b, false, &[]).unwrap_err(),
            PublishError::Empty
        );
        let mut b = b"[]".to_vec();
        assert_eq!(
            parse_rows(&mut b, false, &[]).unwrap_err(),
            PublishError::Empty
        );
    }
}
