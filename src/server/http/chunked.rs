//! One streaming decoder for `Transfer-Encoding: chunked` bodies, used by the
//! server (publish and token bodies) and by `sluice bench` (chunked SSE
//! responses).
//!
//! Cold for the server (once per request body), warm for the load
//! generator. It is a byte-level state machine fed whatever bytes arrived:
//! it never rescans what it has seen, keeps no partial line and allocates
//! nothing (the payload goes to a callback).
//!
//! Why not `httparse::parse_chunk_size`: that function needs the whole size
//! line in one buffer, so a streaming caller would have to keep and rescan
//! partial lines; the state machine below reads each byte once. It follows
//! the same grammar (RFC 9112 §7.1) and the fuzz target `chunked` checks it
//! against `httparse::parse_chunk_size` on whole inputs.
//!
//! Every number from the network is bounded before use: a chunk size has
//! at most [`MAX_SIZE_DIGITS`] hex digits and the body at most the caller's
//! `limit` bytes (checked before a chunk's data is taken, so an oversized
//! chunk is refused at its size line); extension and trailer lines are
//! capped. Line ends must be CRLF: a bare LF is refused, so that no proxy
//! in front can read the framing differently (request smuggling).

/// Most hex digits in a chunk size (leading zeros included).
pub const MAX_SIZE_DIGITS: u32 = 16;
/// Longest chunk-extension, in bytes (it is ignored).
pub const MAX_EXTENSION_BYTES: u32 = 1024;
/// Most bytes of trailer fields after the last chunk (they are ignored).
pub const MAX_TRAILER_BYTES: u32 = 8 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The decoded body would pass the caller's limit (413).
    TooLarge,
    /// Not valid chunked encoding (400); the text says what.
    Malformed(&'static str),
}

/// How far a body got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Every byte given was used; the body goes on.
    More,
    /// The body (with its trailers) ended after this many bytes of the
    /// input; any bytes after them belong to the next message.
    Done(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size,
    /// Spaces or tabs after the size digits (before `;` or CR).
    SizeSpace,
    /// In a chunk extension, up to CR.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// Taking `remaining` bytes of chunk data.
    Data,
    /// After a chunk's data: CR then LF.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// In a trailer line, up to CR.
    Trailer,
    TrailerLf,
    /// The final line's CR came: LF ends the body.
    EndLf,
    Done,
}

/// A chunked body being decoded; feed it bytes as they arrive.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// The chunk size being read, then the data still to take.
    remaining: u64,
    digits: u32,
    /// Bytes of the current extension, or of all trailers so far.
    line: u32,
    /// Body bytes decoded so far.
    body: u64,
    limit: u64,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies over `limit` bytes.
    pub fn new(limit: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size,
            remaining: 0,
            digits: 0,
            line: 0,
            body: 0,
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
        }
    }

    /// Body bytes decoded so far.
    pub fn body_len(&self) -> u64 {
        self.body
    }

    /// True once the last chunk and its trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, handing each piece of body data to `payload` in
    /// order. After `Done` or an error, feeding more is an error.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut payload: impl FnMut(&[u8]),
    ) -> Result<Progress, ChunkError> {
        use State::*;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                Size => match hex_digit(b) {
                    Some(d) => {
                        if self.digits == MAX_SIZE_DIGITS {
                            return Err(ChunkError::Malformed("chunk size has too many digits"));
                        }
                        self.digits += 1;
                        // Cannot overflow: at most 16 hex digits.
                        self.remaining = self.remaining << 4 | u64::from(d);
                    }
                    None if self.digits == 0 => {
                        return Err(ChunkError::Malformed("chunk size is not hex"));
                    }
                    None => {
                        self.end_size()?;
                        self.state = match b {
                            b'\r' => SizeLf,
                            b';' => Extension,
                            b' ' | b'\t' => SizeSpace,
                            _ => return Err(ChunkError::Malformed("bad chunk size line")),
                        };
                    }
                },
                SizeSpace => {
                    self.state = match b {
                        b' ' | b'\t' => SizeSpace,
                        b';' => Extension,
                        b'\r' => SizeLf,
                        _ => return Err(ChunkError::Malformed("bad chunk size line")),
                    }
                }
                Extension => {
                    if b == b'\r' {
                        self.state = SizeLf;
                    } else if b == b'\n' {
                        return Err(ChunkError::Malformed("chunk line must end with CRLF"));
                    } else {
                        self.line += 1;
                        if self.line > MAX_EXTENSION_BYTES {
                            return Err(ChunkError::Malformed("chunk extension too long"));
                        }
                    }
                }
                SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed("chunk line must end with CRLF"));
                    }
                    self.line = 0;
                    self.digits = 0;
                    self.state = if self.remaining == 0 {
                        TrailerStart
                    } else {
                        Data
                    };
                }
                Data => {
                    let avail = input.len() - i;
                    // `remaining` may exceed usize on 32-bit targets; take the smaller.
                    let n = usize::try_from(self.remaining).map_or(avail, |r| r.min(avail));
                    payload(&input[i..i + n]);
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = DataCr;
                    }
                    i += n;
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::Malformed("chunk data must end with CRLF"));
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed("chunk data must end with CRLF"));
                    }
                    self.state = Size;
                }
                TrailerStart | Trailer => {
                    self.line += 1;
                    if self.line > MAX_TRAILER_BYTES {
                        return Err(ChunkError::Malformed("chunk trailers too long"));
                    }
                    self.state = match (self.state, b) {
                        (TrailerStart, b'\r') => EndLf,
                        (Trailer, b'\r') => TrailerLf,
                        (_, b'\n') => {
                            return Err(ChunkError::Malformed("trailer must end with CRLF"));
                        }
                        _ => Trailer,
                    };
                }
                TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed("trailer must end with CRLF"));
                    }
                    self.state = TrailerStart;
                }
                EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed("chunked body must end with CRLF"));
                    }
                    self.state = Done;
                    return Ok(Progress::Done(i + 1));
                }
                Done => return Err(ChunkError::Malformed("bytes after the end of the body")),
            }
            i += 1;
        }
        Ok(Progress::More)
    }

    /// A size line's digits are complete: check the body limit before any
    /// of the chunk's data is taken.
    fn end_size(&mut self) -> Result<(), ChunkError> {
        match self.body.checked_add(self.remaining) {
            Some(total) if total <= self.limit => {
                self.body = total;
                Ok(())
            }
            _ => Err(ChunkError::TooLarge),
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(
        input: &[u8],
        piece: usize,
        limit: usize,
    ) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::new(limit);
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let end = (at + piece).min(input.len());
            match d.feed(&input[at..end], |p| out.extend_from_slice(p))? {
                Progress::Done(n) => return Ok((out, at + n)),
                Progress::More => at = end,
            }
        }
        Err(ChunkError::Malformed("incomplete"))
    }

    #[test]
    fn bodies_decode_the_same_in_any_split_and_leave_the_next_request() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\nA \t; x\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n";
        for piece in [1, 2, 3, 5, 7, 100] {
            let (out, used) = decode_in_pieces(body, piece, 100).unwrap();
            assert_eq!(out, b"hello, world0123456789", "piece {piece}");
            assert_eq!(&body[used..], b"GET / HTTP/1.1\r\n", "piece {piece}");
        }
    }

    #[test]
    fn a_huge_chunk_size_is_too_large_not_a_panic() {
        for size in [
            "ffffffffffffffff",
            "FFFFFFFFFFFFFFFF",
            "8000000000000000",
            "65",
        ] {
            let input = format!("{size}\r\nabc");
            assert_eq!(
                decode_in_pieces(input.as_bytes(), 1, 100),
                Err(ChunkError::TooLarge),
                "{size}"
            );
        }
        // the limit counts the whole body, not one chunk
        assert_eq!(
            decode_in_pieces(b"3\r\nabc\r\n3\r\nabc\r\n0\r\n\r\n", 4, 5),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(
            decode_in_pieces(b"3\r\nabc\r\n2\r\nab\r\n0\r\n\r\n", 4, 5)
                .unwrap()
                .0,
            b"abcab"
        );
    }

    #[test]
    fn too_many_digits_bad_digits_and_bare_lf_are_malformed() {
        for bad in [
            &b"00000000000000001\r\nx\r\n0\r\n\r\n"[..],
            b"zz\r\n",
            b"\r\n",
            b"-1\r\n",
            b"+1\r\nx\r\n0\r\n\r\n",
            b"1\nx\r\n0\r\n\r\n",
            b"1\r\nx\n0\r\n\r\n",
            b"1\r\nxy\r\n",
            b"0\r\nX: 1\n\r\n",
            b"0\r\n\n",
            b"1 2\r\n",
        ] {
            assert!(
                matches!(decode_in_pieces(bad, 1, 100), Err(ChunkError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn long_extensions_and_trailers_are_refused() {
        let long_ext = format!(
            "1;{}\r\nx\r\n0\r\n\r\n",
            "e".repeat(MAX_EXTENSION_BYTES as usize + 1)
        );
        assert!(matches!(
            decode_in_pieces(long_ext.as_bytes(), 64, 100),
            Err(ChunkError::Malformed(_))
        ));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..2000 {
            trailers.extend_from_slice(b"X-A: b\r\n");
        }
        trailers.extend_from_slice(b"\r\n");
        assert!(matches!(
            decode_in_pieces(&trailers, 64, 100),
            Err(ChunkError::Malformed(_))
        ));
    }

    #[test]
    fn a_body_fed_one_byte_at_a_time_decodes() {
        // The decoder holds no partial line, so a slow client costs each
        // byte once (the old decoder rescanned from byte 0 on every read).
        let mut body = Vec::new();
        for _ in 0..10_000 {
            body.extend_from_slice(b"1\r\nx\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let (out, used) = decode_in_pieces(&body, 1, 1 << 20).unwrap();
        assert_eq!(out.len(), 10_000);
        assert_eq!(used, body.len());
    }
}
