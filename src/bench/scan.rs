//! A streaming SSE scanner for the load generator: counts events as an
//! EventSource would dispatch them (a blank line after at least one `data:`
//! line), and pulls from each event only what the report needs: its `id:`,
//! `retry:`, whether it is an `initial_state`, and from the start of its
//! data the first `"ts_ns":`, `"seq":` and `"count":` numbers.
//!
//! Hot for the load generator: it runs on every byte received, never
//! allocates after construction, and looks at no more than the first
//! [`LINE_HEAD`] bytes of a line (a 100 KB coalesced frame costs one
//! `memchr` pass, not a parse). Lines may end in LF, CRLF or CR-LF split
//! across reads.

/// Bytes of a line kept when it spans reads (enough for an envelope's
/// `type`, `topic`, `count`, `timestamp` and the first row's `ts_ns`).
pub const LINE_HEAD: usize = 512;

/// What one dispatched event carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<u64>,
    /// `"ts_ns":N` in the data (the publish time, CLOCK_REALTIME ns).
    pub ts_ns: Option<u64>,
    /// `"seq":N` in the data (the publisher's sequence number).
    pub seq: Option<u64>,
    /// `"count":N` in the data (rows in the frame).
    pub count: Option<u64>,
    /// `event: initial_state`: rows of the state table, published before
    /// the stream began.
    pub initial_state: bool,
}

/// The scanner's state between reads.
pub struct Scanner {
    head: [u8; LINE_HEAD],
    head_len: usize,
    /// The current line is split across reads.
    partial: bool,
    pending: Event,
    has_data: bool,
    /// Last `retry:` value seen (ms).
    pub retry_ms: Option<u64>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            head: [0; LINE_HEAD],
            head_len: 0,
            partial: false,
            pending: Event::default(),
            has_data: false,
            retry_ms: None,
        }
    }
}

impl Scanner {
    /// Forgets a half-read line or event (a new connection starts clean);
    /// keeps the last `retry:`.
    pub fn reset(&mut self) {
        *self = Scanner {
            retry_ms: self.retry_ms,
            ..Scanner::default()
        };
    }

    /// Feeds received bytes; calls `on_event` for each dispatched event.
    pub fn feed(&mut self, mut data: &[u8], mut on_event: impl FnMut(Event)) {
        while !data.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    let line = &data[..i];
                    if self.partial {
                        self.keep(line);
                        let (head, len) = (self.head, self.head_len);
                        self.partial = false;
                        self.head_len = 0;
                        self.line(&head[..len], &mut on_event);
                    } else {
                        self.line(line, &mut on_event);
                    }
                    data = &data[i + 1..];
                }
                None => {
                    self.keep(data);
                    self.partial = true;
                    return;
                }
            }
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(LINE_HEAD - self.head_len);
        self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
        self.head_len += n;
    }

    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(Event)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                on_event(self.pending);
            }
            self.pending = Event::default();
            self.has_data = false;
            return;
        }
        let head = &line[..line.len().min(LINE_HEAD)];
        if let Some(v) = field(head, b"data") {
            if !self.has_data {
                self.has_data = true;
                self.pending.ts_ns = number_after(v, b"\"ts_ns\":");
                self.pending.seq = number_after(v, b"\"seq\":");
                self.pending.count = number_after(v, b"\"count\":");
            }
        } else if let Some(v) = field(head, b"event") {
            self.pending.initial_state = v == b"initial_state";
        } else if let Some(v) = field(head, b"id") {
            self.pending.id = parse_u64(v);
        } else if let Some(v) = field(head, b"retry") {
            self.retry_ms = parse_u64(v).or(self.retry_ms);
        }
    }
}

/// The value of `name: value` (one optional space after the colon).
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// The unsigned integer right after the first `key` in `hay`.
fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(hay, key)? + key.len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    parse_u64(&hay[at..at + digits])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(input: &[u8], piece: usize) -> Vec<Event> {
        let mut s = Scanner::default();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            s.feed(chunk, |e| out.push(e));
        }
        out
    }

    #[test]
    fn events_fields_and_splits() {
        let input = b"retry: 3000\nevent: connected\ndata: {\"type\":\"connected\"}\n\n\
: heartbeat 17\n\n\
event: update\r\nid: 42\r\ndata: {\"type\":\"update\",\"count\":1,\"data\":[{\"ts_ns\":123,\"seq\":7}]}\r\n\r\n\
id: 43\nevent: x\n\n";
        for piece in [1, 2, 3, 7, 64, 4096] {
            let ev = scan_in_pieces(input, piece);
            assert_eq!(
                ev.len(),
                2,
                "piece {piece}: a comment and a data-less block are not events"
            );
            assert_eq!(ev[0], Event::default());
            assert_eq!(
                ev[1],
                Event {
                    id: Some(42),
                    ts_ns: Some(123),
                    seq: Some(7),
                    count: Some(1),
                    initial_state: false,
                },
                "piece {piece}"
            );
        }
        let mut s = Scanner::default();
        s.feed(input, |_| {});
        assert_eq!(s.retry_ms, Some(3000));
    }

    #[test]
    fn initial_states_are_told_from_updates() {
        let input =
            b"event: initial_state\nid: 5\ndata: {\"count\":1,\"data\":[{\"ts_ns\":9}]}\n\n\
event: update\nid: 6\ndata: {\"count\":1,\"data\":[{\"ts_ns\":10}]}\n\n\
id: 7\ndata: {}\n\n";
        for piece in [1, 5, 4096] {
            let ev = scan_in_pieces(input, piece);
            let states: Vec<bool> = ev.iter().map(|e| e.initial_state).collect();
            assert_eq!(states, [true, false, false], "piece {piece}");
        }
    }

    #[test]
    fn long_data_lines_cost_a_pass_and_keep_their_head() {
        let mut frame = b"id: 9\ndata: {\"count\":2,\"data\":[{\"ts_ns\":5,\"seq\":1}".to_vec();
        frame.extend(std::iter::repeat_n(b'x', 200_000));
        frame.extend(b"]}\n\n");
        for piece in [100, 8192] {
            let ev = scan_in_pieces(&frame, piece);
            assert_eq!(ev.len(), 1);
            assert_eq!(ev[0].ts_ns, Some(5));
            assert_eq!(ev[0].count, Some(2));
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"1a"), None);
        assert_eq!(number_after(b"{\"seq\":12,", b"\"seq\":"), Some(12));
        assert_eq!(number_after(b"{\"seq\":-1}", b"\"seq\":"), None);
    }
}
