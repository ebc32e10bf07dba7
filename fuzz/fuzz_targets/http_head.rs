//! Request heads: `server::http::parse` on arbitrary bytes, and
//! `percent_decode` on the target it would see.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::server::http::parse::{self as http, MAX_HEAD_BYTES, MAX_TARGET_BYTES, percent_decode};

fuzz_target!(|data: &[u8]| {
    match http::parse(data) {
        Ok(Some(req)) => {
            assert!(req.head_len <= data.len(), "head_len past the input");
            assert!(req.head_len <= MAX_HEAD_BYTES);
            assert!(req.path.len() <= MAX_TARGET_BYTES);
            assert!(!(req.chunked && req.content_length.is_some()));
            // The head is a prefix: parsing just it gives the same request.
            let again = http::parse(&data[..req.head_len])
                .expect("a complete head parses alone")
                .expect("a complete head is complete alone");
            assert_eq!(again.head_len, req.head_len);
            assert_eq!(again.path, req.path);
            assert_eq!(again.query, req.query);
        }
        Ok(None) => assert!(data.len() < MAX_HEAD_BYTES),
        Err(_) => {}
    }

    if let Ok(s) = std::str::from_utf8(data) {
        for plus in [false, true] {
            if let Some(d) = percent_decode(s, plus) {
                // Decoding never grows the text.
                assert!(d.len() <= s.len());
                if !s.contains('%') && (!plus || !s.contains('+')) {
                    assert_eq!(d, s);
                }
            }
        }
    }
});
