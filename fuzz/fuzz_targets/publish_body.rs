//! Publish bodies: `sources::publish::parse_rows` on arbitrary bytes, as one
//! JSON document and as NDJSON, with and without key and filter fields.
//!
//! The first input byte picks the mode; the rest is the body. Every accepted
//! row must be compact JSON on one line (it is copied verbatim into an SSE
//! `data:` line), and must parse back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sources::publish::{MAX_ROWS_PER_PUBLISH, parse_rows};

const KEYS: [&[&str]; 4] = [&[], &["id"], &["a", "b"], &["id", "id"]];
const FILTERS: [&[&str]; 3] = [&[], &["kind"], &["a", "kind", "x"]];

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let ndjson = mode & 1 == 1;
    let key_fields = strings(KEYS[usize::from(mode >> 1) % KEYS.len()]);
    let filter_fields = strings(FILTERS[usize::from(mode >> 3) % FILTERS.len()]);

    let mut buf = body.to_vec();
    let Ok(rows) = parse_rows(&mut buf, ndjson, &key_fields, &filter_fields) else {
        return;
    };
    assert!(!rows.is_empty() && rows.len() <= MAX_ROWS_PER_PUBLISH);
    for row in &rows {
        let json = row.json();
        assert!(json.starts_with(b"{") && json.ends_with(b"}"), "{json:?}");
        // No raw control byte: in particular no CR or LF, either of which
        // would end the SSE data line. (Valid JSON never needs them raw.)
        assert!(
            !json.iter().any(|&b| b < 0x20),
            "raw control byte in a row: {:?}",
            String::from_utf8_lossy(json)
        );
        assert!(std::str::from_utf8(json).is_ok(), "row is not UTF-8");
        assert_eq!(row.key().is_some(), !key_fields.is_empty());
        let fields: Vec<Option<&[u8]>> = (0..filter_fields.len()).map(|i| row.field(i)).collect();

        // A row's bytes are a fixed point: parsing them again (alone, in
        // either mode) yields the same bytes, key and fields.
        for nd in [false, true] {
            let mut again = json.to_vec();
            let back = parse_rows(&mut again, nd, &key_fields, &filter_fields)
                .expect("a row parses again");
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].json(), json);
            assert_eq!(back[0].key(), row.key());
            let back_fields: Vec<Option<&[u8]>> =
                (0..filter_fields.len()).map(|i| back[0].field(i)).collect();
            assert_eq!(back_fields, fields);
        }
    }
});
