//! The row-key encoding (`hub::row_key`) on arbitrary field tuples: it is
//! injective (decode gives the tuple back, so two distinct tuples never
//! share a key), and decoding arbitrary text never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::hub::row_key::{decode, encode};

fuzz_target!(|input: (Vec<String>, String)| {
    let (fields, text) = input;
    let key = encode(fields.iter().map(String::as_str));
    let back = decode(&key).expect("an encoded key decodes");
    assert_eq!(back, fields.iter().map(String::as_str).collect::<Vec<_>>());
    let _ = decode(&text);
});
