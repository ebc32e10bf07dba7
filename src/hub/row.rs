//! One published row in one exact-size allocation: its compact JSON, its
//! state-table key fields and its filter fields, with a few bytes of header
//! and no other fixed buffer.
//!
//! Layout of the shared buffer (`Arc<[u8]>`, 16 bytes of reference counts
//! in front):
//!
//! ```text
//! varint H | header (H bytes) | json
//! header  = varint T, varint nkey, nkey × desc, varint nfields, nfields × desc,
//!           inline texts (T bytes)
//! desc    = 0 (field absent) | varint 1 + (len << 1 | inline) [varint offset]
//! ```
//!
//! A field whose text appears verbatim in the JSON (a number, `true`, a
//! string with nothing to escape: almost every key) is an `offset` into it; a
//! field whose text differs from its JSON form (a string with escapes) is
//! `inline`: its text follows the descriptors, in field order. So a row of a
//! topic keyed by `id` with no filters costs 16 + ~6 + its JSON bytes.
//!
//! Key semantics (see [`super::row_key`]): a key is the tuple of its fields'
//! texts. [`Row::same_key`] and [`Row::hash_key`] compare and hash that
//! tuple field by field (each with its length), which is equality of the
//! injective `row_key` encoding without building it.
//!
//! Cold to build (once per published row, never per connection); `json()` is
//! read per row per encoded frame, in O(1).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// One published row. Cloning is one reference count.
#[derive(Clone)]
pub struct Row(Arc<[u8]>);

/// Where a field's text is, while a row is being built.
#[derive(Clone, Copy)]
enum Desc {
    Absent,
    /// `len` bytes at `offset` in the JSON.
    InJson {
        offset: usize,
        len: usize,
    },
    /// The next `len` bytes of the builder's texts.
    Inline {
        len: usize,
    },
}

/// Builds rows with reused scratch buffers: the JSON is written into
/// [`RowBuilder::json`], fields are added in order, and [`RowBuilder::finish`]
/// copies the whole row into its one allocation.
#[derive(Default)]
pub struct RowBuilder {
    /// The row's compact JSON, written by the caller.
    pub json: Vec<u8>,
    keys: Vec<Desc>,
    fields: Vec<Desc>,
    texts: Vec<u8>,
    out: Vec<u8>,
}

impl RowBuilder {
    pub fn new() -> RowBuilder {
        RowBuilder::default()
    }

    /// Starts a new row.
    pub fn clear(&mut self) {
        self.json.clear();
        self.keys.clear();
        self.fields.clear();
        self.texts.clear();
    }

    fn desc(&mut self, text: &[u8], at: Option<usize>) -> Desc {
        if let Some(offset) = at
            && self.json.get(offset..offset.saturating_add(text.len())) == Some(text)
        {
            return Desc::InJson {
                offset,
                len: text.len(),
            };
        }
        self.texts.extend_from_slice(text);
        Desc::Inline { len: text.len() }
    }

    /// Adds the next key field: its text, and where in the JSON it may
    /// appear verbatim (checked; copied inline when it does not).
    pub fn key_field(&mut self, text: &[u8], at: Option<usize>) {
        let d = self.desc(text, at);
        self.keys.push(d);
    }

    /// Adds the next filter field (`None`: the row lacks it).
    pub fn filter_field(&mut self, text: Option<&[u8]>, at: Option<usize>) {
        let d = match text {
            Some(t) => self.desc(t, at),
            None => Desc::Absent,
        };
        self.fields.push(d);
    }

    /// The row, in one allocation of exactly its size.
    pub fn finish(&mut self) -> Row {
        let mut head = Vec::new();
        std::mem::swap(&mut head, &mut self.out);
        head.clear();
        put_varint(&mut head, self.texts.len());
        put_varint(&mut head, self.keys.len());
        for d in &self.keys {
            put_desc(&mut head, *d);
        }
        put_varint(&mut head, self.fields.len());
        for d in &self.fields {
            put_desc(&mut head, *d);
        }
        head.extend_from_slice(&self.texts);
        let mut buf = Vec::with_capacity(head.len() + 10 + self.json.len());
        put_varint(&mut buf, head.len());
        buf.extend_from_slice(&head);
        buf.extend_from_slice(&self.json);
        self.out = head;
        // `Arc<[u8]>::from(&[u8])` allocates exactly the slice (plus the
        // counts) and copies it; `buf` is scratch.
        Row(Arc::from(&buf[..]))
    }
}

fn put_desc(out: &mut Vec<u8>, d: Desc) {
    match d {
        Desc::Absent => put_varint(out, 0),
        Desc::InJson { offset, len } => {
            put_varint(out, 1 + (len << 1));
            put_varint(out, offset);
        }
        Desc::Inline { len, .. } => put_varint(out, 1 + ((len << 1) | 1)),
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a varint written by `put_varint` at `*at`. Rows are only built by
/// `RowBuilder`, so the bytes are always well formed.
fn varint(buf: &[u8], at: &mut usize) -> usize {
    let mut n = 0usize;
    let mut shift = 0;
    loop {
        let b = buf[*at];
        *at += 1;
        n |= usize::from(b & 0x7f) << shift;
        if b < 0x80 {
            return n;
        }
        shift += 7;
    }
}

/// The texts of a run of field descriptors, in order (`None`: absent).
pub struct Texts<'a> {
    buf: &'a [u8],
    /// Next descriptor.
    at: usize,
    left: usize,
    /// Next inline text.
    inline_at: usize,
    json: usize,
}

impl<'a> Iterator for Texts<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Option<&'a [u8]>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let d = varint(self.buf, &mut self.at);
        if d == 0 {
            return Some(None);
        }
        let len = (d - 1) >> 1;
        let start = if (d - 1) & 1 == 1 {
            let s = self.inline_at;
            self.inline_at += len;
            s
        } else {
            self.json + varint(self.buf, &mut self.at)
        };
        Some(Some(&self.buf[start..start + len]))
    }
}

impl Row {
    /// A row from its parts, every field inline (tests, the bench, sources
    /// that already hold the texts).
    pub fn new(json: &[u8], key: &[&str], fields: &[Option<&str>]) -> Row {
        let mut b = RowBuilder::new();
        b.json.extend_from_slice(json);
        for k in key {
            b.key_field(k.as_bytes(), None);
        }
        for f in fields {
            b.filter_field(f.map(str::as_bytes), None);
        }
        b.finish()
    }

    /// Where the header's descriptors and the JSON start, and the texts'
    /// length.
    fn split(&self) -> (usize, usize, usize) {
        let mut at = 0;
        let h = varint(&self.0, &mut at);
        let json = at + h;
        let t = varint(&self.0, &mut at);
        (at, json, t)
    }

    /// The row's compact JSON.
    pub fn json(&self) -> &[u8] {
        let (_, json, _) = self.split();
        &self.0[json..]
    }

    /// Bytes this row holds on the heap (its allocation with its counts).
    pub fn heap_bytes(&self) -> usize {
        self.0.len() + 2 * std::mem::size_of::<usize>()
    }

    /// The texts of the key fields, in order (none for a keyless topic).
    pub fn key_texts(&self) -> Texts<'_> {
        let (mut at, json, t) = self.split();
        let left = varint(&self.0, &mut at);
        Texts {
            buf: &self.0,
            at,
            left,
            inline_at: json - t,
            json,
        }
    }

    /// The row's state-table key in `row_key` form (`None`: keyless).
    pub fn key(&self) -> Option<Box<str>> {
        let mut texts = self.key_texts().flatten().peekable();
        texts.peek()?;
        Some(super::row_key::encode(
            texts.map(|t| std::str::from_utf8(t).unwrap_or("\u{fffd}")),
        ))
    }

    /// The text of filter field `i` (`None`: the row lacks it).
    pub fn field(&self, i: usize) -> Option<&[u8]> {
        let mut keys = self.key_texts();
        for _ in keys.by_ref() {}
        let left = varint(&self.0, &mut keys.at);
        Texts { left, ..keys }.nth(i).flatten()
    }
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("json", &String::from_utf8_lossy(self.json()))
            .field("key", &self.key())
            .finish()
    }
}

impl Row {
    /// Hashes the key as the tuple of its fields' texts.
    pub fn hash_key<H: Hasher>(&self, state: &mut H) {
        for t in self.key_texts().flatten() {
            // `[u8]`'s Hash writes the length first: ("ab","") ≠ ("a","b").
            t.hash(state);
        }
    }

    /// True when both rows have the same key (tuple of field texts).
    pub fn same_key(&self, other: &Row) -> bool {
        self.key_texts().eq(other.key_texts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_read_back() {
        let r = Row::new(
            br#"{"a":1}"#,
            &["x", "y\u{1f}z"],
            &[Some("p"), None, Some("")],
        );
        assert_eq!(r.json(), br#"{"a":1}"#);
        assert_eq!(
            r.key_texts().flatten().collect::<Vec<_>>(),
            vec![&b"x"[..], b"y\x1fz"]
        );
        assert_eq!(r.key().as_deref(), Some("1:x3:y\u{1f}z"));
        assert_eq!(r.field(0), Some(&b"p"[..]));
        assert_eq!(r.field(1), None);
        assert_eq!(r.field(2), Some(&b""[..]));
        assert_eq!(r.field(3), None);
        let keyless = Row::new(b"{}", &[], &[]);
        assert_eq!(keyless.key(), None);
        assert_eq!(keyless.json(), b"{}");
    }

    #[test]
    fn fields_found_in_the_json_are_not_copied() {
        let mut b = RowBuilder::new();
        b.json.extend_from_slice(br#"{"id":123456,"v":1}"#);
        b.key_field(b"123456", Some(6));
        // a wrong offset is caught and the text kept inline
        b.filter_field(Some(b"77"), Some(6));
        let r = b.finish();
        assert_eq!(
            r.key_texts().flatten().collect::<Vec<_>>(),
            vec![&b"123456"[..]]
        );
        assert_eq!(r.field(0), Some(&b"77"[..]));
        let mut b = RowBuilder::new();
        b.json.extend_from_slice(br#"{"id":123456,"v":1}"#);
        b.key_field(b"123456", Some(6));
        let r = b.finish();
        // varint 5; header: T 0, nkey 1, desc, offset 6, nfields 0; the JSON
        assert_eq!(r.0.len(), 1 + 5 + 19);
    }

    #[test]
    fn keys_compare_as_tuples() {
        let k = |t: &[&str]| Row::new(b"{}", t, &[]);
        assert!(k(&["a", "b"]).same_key(&k(&["a", "b"])));
        assert!(!k(&["ab", ""]).same_key(&k(&["a", "b"])));
        assert!(!k(&["a"]).same_key(&k(&["a", ""])));
        let h = |r: &Row| {
            let mut s = std::collections::hash_map::DefaultHasher::new();
            r.hash_key(&mut s);
            s.finish()
        };
        assert_eq!(h(&k(&["a", "b"])), h(&k(&["a", "b"])));
        assert_ne!(h(&k(&["ab", ""])), h(&k(&["a", "b"])));
    }

    #[test]
    fn long_fields_use_multi_byte_lengths() {
        let big = "k".repeat(70_000);
        let json = format!("{{\"id\":\"{big}\"}}");
        let mut b = RowBuilder::new();
        b.json.extend_from_slice(json.as_bytes());
        b.key_field(big.as_bytes(), Some(7));
        b.filter_field(Some(b"q\"x"), None);
        let r = b.finish();
        assert_eq!(r.json(), json.as_bytes());
        assert_eq!(
            r.key_texts().flatten().collect::<Vec<_>>(),
            vec![big.as_bytes()]
        );
        assert_eq!(r.field(0), Some(&b"q\"x"[..]));
    }
}
