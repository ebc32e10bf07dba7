//! An incremental `text/event-stream` parser (the WHATWG HTML "event stream
//! interpretation"), for the upstream SSE source: bytes in any chunking,
//! lines ending in CRLF, LF or CR (a CRLF split across chunks is one line
//! end), an optional leading BOM, comments, `field: value` with one optional
//! space, multi-line `data:` joined with `\n`, `id` (ignored when it holds
//! NUL), `retry` (digits only).
//!
//! Cold module (ingest, off the workers). Bounded: an event whose lines or
//! data grow past `max_event_bytes` is not buffered; it comes out as
//! [`Parsed::Oversize`] so that the source counts it dropped.
//!
//! One deliberate difference from a browser: the last event id moves only
//! when an event is dispatched (the blank line), never on an `id:` line of
//! an event cut off by a disconnect, so resuming with it never skips an
//! event that was not taken.

/// What the parser found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A dispatched event with data (`event` defaults to `message`).
    Event {
        event: String,
        data: String,
        id: String,
    },
    /// An event too big to keep: dropped.
    Oversize,
    /// The origin's reconnection time in ms (`retry:`).
    Retry(u64),
}

#[derive(Debug)]
pub struct EventStream {
    max_event_bytes: usize,
    /// Bytes of the current line (no line end).
    line: Vec<u8>,
    /// The previous chunk ended in CR: a leading LF now ends nothing.
    after_cr: bool,
    /// At the start of the stream (a BOM may come).
    at_start: bool,
    /// The current line is too long: its bytes are skipped to its end.
    skipping: bool,
    event: String,
    data: String,
    id_buffer: String,
    /// The event in progress is over the limit.
    oversize: bool,
    last_event_id: String,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl EventStream {
    /// A parser that resumes after `last_event_id` (what `Last-Event-ID`
    /// carried).
    pub fn new(max_event_bytes: usize, last_event_id: String) -> EventStream {
        EventStream {
            max_event_bytes,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            skipping: false,
            event: String::new(),
            data: String::new(),
            id_buffer: last_event_id.clone(),
            oversize: false,
            last_event_id,
        }
    }

    /// The id of the last dispatched event (or the one resumed from).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Parses a chunk; what it completes goes to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Parsed>) {
        if self.at_start {
            // The BOM may itself be split over chunks: hold back a prefix.
            let have = self.line.len();
            let take = chunk.len().min(BOM.len().saturating_sub(have));
            self.line.extend_from_slice(&chunk[..take]);
            if BOM.starts_with(&self.line) && self.line.len() < BOM.len() {
                return;
            }
            self.at_start = false;
            let held = std::mem::take(&mut self.line);
            let rest = &chunk[take..];
            let held = if held.as_slice() == BOM {
                &[][..]
            } else {
                &held[..]
            };
            self.feed_lines(held, out);
            chunk = rest;
        }
        self.feed_lines(chunk, out);
    }

    fn feed_lines(&mut self, mut chunk: &[u8], out: &mut Vec<Parsed>) {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            match memchr::memchr2(b'\n', b'\r', chunk) {
                Some(i) => {
                    self.push_bytes(&chunk[..i]);
                    let cr = chunk[i] == b'\r';
                    chunk = &chunk[i + 1..];
                    if cr {
                        match chunk.first() {
                            Some(b'\n') => chunk = &chunk[1..],
                            Some(_) => {}
                            None => self.after_cr = true,
                        }
                    }
                    self.end_line(out);
                }
                None => {
                    self.push_bytes(chunk);
                    chunk = &[];
                }
            }
        }
    }

    fn push_bytes(&mut self, b: &[u8]) {
        if self.skipping {
            return;
        }
        let room = self
            .max_event_bytes
            .saturating_sub(self.data.len())
            .saturating_sub(self.line.len());
        if b.len() > room {
            // A long comment is skipped; any other long line spoils its event.
            let first = self.line.first().or(b.first());
            self.oversize |= first != Some(&b':');
            self.skipping = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(b);
        }
    }

    fn end_line(&mut self, out: &mut Vec<Parsed>) {
        if std::mem::take(&mut self.skipping) {
            return;
        }
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', &line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event_bytes {
                    self.oversize = true;
                    self.data.clear();
                } else if !self.oversize {
                    self.data.push_str(&value);
                    self.data.push('\n');
                }
            }
            b"id" if !value.contains('\0') => self.id_buffer = value.into_owned(),
            // Digits only: a number too big for u64 is "forever".
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                out.push(Parsed::Retry(value.parse().unwrap_or(u64::MAX)));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Parsed>) {
        self.last_event_id.clone_from(&self.id_buffer);
        let event = std::mem::take(&mut self.event);
        let mut data = std::mem::take(&mut self.data);
        if std::mem::take(&mut self.oversize) {
            out.push(Parsed::Oversize);
            return;
        }
        if data.is_empty() {
            return;
        }
        data.pop();
        out.push(Parsed::Event {
            event: if event.is_empty() {
                "message".into()
            } else {
                event
            },
            data,
            id: self.last_event_id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str, id: &str) -> Parsed {
        Parsed::Event {
            event: event.into(),
            data: data.into(),
            id: id.into(),
        }
    }

    /// Every split of `input` into two chunks gives the same result.
    fn parse_all_splits(input: &[u8], max: usize) -> Vec<Parsed> {
        let mut whole = Vec::new();
        EventStream::new(max, String::new()).feed(input, &mut whole);
        for i in 0..=input.len() {
            let mut p = EventStream::new(max, String::new());
            let mut got = Vec::new();
            p.feed(&input[..i], &mut got);
            p.feed(&input[i..], &mut got);
            assert_eq!(got, whole, "split at {i}");
        }
        // and byte by byte
        let mut p = EventStream::new(max, String::new());
        let mut got = Vec::new();
        for b in input {
            p.feed(std::slice::from_ref(b), &mut got);
        }
        assert_eq!(got, whole, "byte by byte");
        whole
    }

    #[test]
    fn lf_crlf_and_cr_line_ends_in_any_chunking() {
        let input =
            b"\xEF\xBB\xBFevent: a\r\ndata: 1\r\n\r\ndata:2\rdata: 3\r\rid: 7\nevent:b\ndata\n\n";
        assert_eq!(
            parse_all_splits(input, 1024),
            [
                ev("a", "1", ""),
                ev("message", "2\n3", ""),
                ev("b", "", "7")
            ]
        );
    }

    #[test]
    fn comments_unknown_fields_and_empty_events_are_skipped() {
        let input = b": hello\n\n:\nfoo: bar\nevent: x\n\ndata: {\"a\":1}\nid: 1\n\n";
        assert_eq!(
            parse_all_splits(input, 1024),
            [ev("message", "{\"a\":1}", "1")]
        );
    }

    #[test]
    fn multi_line_data_keeps_one_leading_space_only() {
        let input = b"data:  two\ndata\ndata: x:y\n\n";
        assert_eq!(
            parse_all_splits(input, 1024),
            [ev("message", " two\n\nx:y", "")]
        );
    }

    #[test]
    fn retry_takes_digits_only() {
        let input = b"retry: 250\nretry: 1x\nretry:\nretry: 99999999999999999999999\ndata: a\n\n";
        assert_eq!(
            parse_all_splits(input, 1024),
            [
                Parsed::Retry(250),
                Parsed::Retry(u64::MAX),
                ev("message", "a", "")
            ]
        );
    }

    #[test]
    fn last_event_id_moves_only_on_dispatch_and_skips_nul() {
        let mut p = EventStream::new(1024, "5".into());
        let mut out = Vec::new();
        p.feed(b"data: a\n\nid: 6\ndata: b\n", &mut out);
        assert_eq!(out, [ev("message", "a", "5")]);
        assert_eq!(p.last_event_id(), "5", "event 6 was cut off");
        p.feed(b"\nid: 7\0\ndata: c\n\nid\ndata: d\n\n", &mut out);
        assert_eq!(p.last_event_id(), "", "an empty id resets it");
        assert_eq!(
            out[1..],
            [
                ev("message", "b", "6"),
                ev("message", "c", "6"),
                ev("message", "d", "")
            ]
        );
        // an id-only event moves it too
        p.feed(b"id: 9\n\n", &mut out);
        assert_eq!(p.last_event_id(), "9");
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn oversize_events_are_reported_not_buffered() {
        let long = format!("data: {}\n\ndata: ok\n\n", "x".repeat(100));
        assert_eq!(
            parse_all_splits(long.as_bytes(), 32),
            [Parsed::Oversize, ev("message", "ok", "")]
        );
        let many = format!("{}\ndata: ok\n\n", "data: 1234567890\n".repeat(5));
        assert_eq!(
            parse_all_splits(many.as_bytes(), 32),
            [Parsed::Oversize, ev("message", "ok", "")]
        );
        // a long comment line is skipped without harm
        let comment = format!(":{}\ndata: ok\n\n", "c".repeat(100));
        let got = parse_all_splits(comment.as_bytes(), 32);
        assert_eq!(got.last(), Some(&ev("message", "ok", "")));
    }
}
