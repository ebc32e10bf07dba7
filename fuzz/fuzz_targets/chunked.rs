//! The streaming chunked-body decoder (`server::http::chunked::ChunkedDecoder`),
//! fed the input in pieces, against a whole-input reference decoder built on
//! `httparse::parse_chunk_size` plus the decoder's documented stricter rules
//! (at least one size digit, CRLF line ends only, extension and trailer caps).
//!
//! Input: 2 bytes of body limit, 2 split points, then the body. The decoder
//! must give the same answer however the input is split; `Done(n)` must
//! match the reference's body and length exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::server::http::chunked::{
    ChunkError, ChunkedDecoder, MAX_EXTENSION_BYTES, MAX_TRAILER_BYTES, Progress,
};

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The body, and the input bytes it used.
    Done(Vec<u8>, usize),
    /// All input used, the body goes on.
    More,
    TooLarge,
    Malformed,
}

fn decode(input: &[u8], cuts: &[usize], limit: usize) -> Outcome {
    let mut d = ChunkedDecoder::new(limit);
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        match d.feed(&input[start..end], |p| out.extend_from_slice(p)) {
            Ok(Progress::Done(n)) => {
                assert!(n >= 1 && n <= end - start, "Done({n}) past its piece");
                assert!(d.is_done());
                assert_eq!(d.body_len(), out.len() as u64);
                return Outcome::Done(out, start + n);
            }
            Ok(Progress::More) => start = end,
            Err(ChunkError::TooLarge) => return Outcome::TooLarge,
            Err(ChunkError::Malformed(_)) => return Outcome::Malformed,
        }
    }
    assert!(!d.is_done());
    Outcome::More
}

#[derive(Debug)]
enum Ref {
    /// The whole body (not checked against any limit) and its length.
    Done(Vec<u8>, usize),
    /// Needs more input.
    Incomplete,
    Malformed,
}

/// RFC 9112 §7.1 over the whole input: size lines by httparse, the rest by
/// hand.
fn reference(buf: &[u8]) -> Ref {
    let mut body = Vec::new();
    let mut i = 0;
    loop {
        let rest = &buf[i..];
        let (n, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(x)) => x,
            Ok(httparse::Status::Partial) => return Ref::Incomplete,
            Err(_) => return Ref::Malformed,
        };
        let line = &rest[..n - 2];
        // httparse also takes an empty size (`\r\n` is 0), a bare LF inside
        // an extension, and any extension length.
        if !line.first().is_some_and(u8::is_ascii_hexdigit) || line.contains(&b'\n') {
            return Ref::Malformed;
        }
        if let Some(semi) = line.iter().position(|&b| b == b';')
            && line.len() - semi - 1 > MAX_EXTENSION_BYTES as usize
        {
            return Ref::Malformed;
        }
        i += n;
        if size == 0 {
            break;
        }
        let Ok(size) = usize::try_from(size) else {
            return Ref::Incomplete;
        };
        let Some(end) = i.checked_add(size) else {
            return Ref::Incomplete;
        };
        let Some(data) = buf.get(i..end) else {
            return Ref::Incomplete;
        };
        body.extend_from_slice(data);
        i = end;
        match buf.get(i..i + 2) {
            Some(b"\r\n") => i += 2,
            Some(_) => return Ref::Malformed,
            None if buf[i..].iter().all(|&b| b == b'\r') => return Ref::Incomplete,
            None => return Ref::Malformed,
        }
    }
    // Trailer lines, then an empty line; every line ends CRLF. The cap
    // counts each line's bytes and its CR.
    let mut trailer = 0usize;
    loop {
        let rest = &buf[i..];
        let Some(cr) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
            trailer += rest.len();
            return if trailer > MAX_TRAILER_BYTES as usize {
                Ref::Malformed
            } else {
                Ref::Incomplete
            };
        };
        trailer += cr + 1;
        if rest[cr] == b'\n' || trailer > MAX_TRAILER_BYTES as usize {
            return Ref::Malformed;
        }
        match rest.get(cr + 1) {
            Some(b'\n') => {}
            Some(_) => return Ref::Malformed,
            None => return Ref::Incomplete,
        }
        i += cr + 2;
        if cr == 0 {
            return Ref::Done(body, i);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [l0, l1, c0, c1, input @ ..] = data else {
        return;
    };
    let limit = match u16::from_le_bytes([*l0, *l1]) {
        u16::MAX => usize::MAX,
        l => usize::from(l),
    };
    let mut cuts = [
        usize::from(*c0) % (input.len() + 1),
        usize::from(*c1) % (input.len() + 1),
    ];
    cuts.sort_unstable();

    let whole = decode(input, &[], limit);
    let split = decode(input, &cuts, limit);
    assert_eq!(whole, split, "cut at {cuts:?}");
    let bytewise: Vec<usize> = (1..input.len()).collect();
    if input.len() <= 256 {
        assert_eq!(whole, decode(input, &bytewise, limit), "byte by byte");
    }

    match (&whole, reference(input)) {
        (Outcome::Done(b, n), Ref::Done(rb, rn)) => {
            assert_eq!((b, *n), (&rb, rn));
            assert!(b.len() <= limit);
        }
        (Outcome::TooLarge, Ref::Done(rb, _)) => assert!(rb.len() > limit),
        // The decoder refuses an oversized chunk at its size line, before
        // the rest of the body (which may be bad or missing) is seen.
        (Outcome::TooLarge, Ref::Incomplete | Ref::Malformed) => {}
        (Outcome::Malformed, Ref::Malformed) => {}
        // A line that is bad (or too long) before its end: the decoder says
        // so at once, the reference only once the line is complete.
        (Outcome::Malformed, Ref::Incomplete) => {}
        (Outcome::More, Ref::Incomplete) => {}
        (got, want) => panic!("decoder {got:?}, reference {want:?}"),
    }
});
