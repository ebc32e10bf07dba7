//! One published row in one exact-size allocation: its compact JSON, its
//! state-table key fields and its filter fields, with a few bytes of header
//! and no other fixed buffer.
//!
//! Layout of the encoded row (the bytes of a [`Row`]'s `Arc<[u8]>`, 16 bytes
//! of reference counts in front, or one record of a keyed state table's
//! arena, see [`super::table`]):
//!
//! ```text
//! varint H | header (H bytes) | json
//! header  = varint A, [varint F if A & 2], [varint T if A & 1],
//!           F × desc (filter fields), K × desc (key fields),
//!           inline texts (T bytes, in descriptor order)
//!           where A = K << 2 | (F > 0) << 1 | (T > 0)
//! desc    = 0 (field absent) | varint 1 + (len << 1 | inline) [varint offset]
//! ```
//!
//! A field whose text appears verbatim in the JSON (a number, `true`, a
//! string with nothing to escape: almost every key) is an `offset` into it; a
//! field whose text differs from its JSON form (a string with escapes) is
//! `inline`: its text follows the descriptors. So a row of a topic keyed by
//! `id` with no filters costs 4 bytes besides its JSON (`H`, `A`, and the
//! key's length and offset), plus the `Arc`'s 16. Filter fields come first:
//! filters read them per row per filtered group and frame, keys are read
//! once per publish.
//!
//! [`RowRef`] reads an encoded row wherever it lives; [`Row`] owns one.
//!
//! Key semantics (see [`super::row_key`]): a key is the tuple of its fields'
//! texts. [`RowRef::same_key`] and [`RowRef::hash_key`] compare and hash that
//! tuple field by field (each with its length), which is equality of the
//! injective `row_key` encoding without building it.
//!
//! Cold to build (once per published row, never per connection); `json()` is
//! read per row per encoded frame in O(1), `field(i)` in O(i).

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
    /// The next `len` bytes of the builder's texts of its kind.
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
    key_texts: Vec<u8>,
    field_texts: Vec<u8>,
    head: Vec<u8>,
    out: Vec<u8>,
}

/// `d` for `text`: an offset when the JSON holds `text` at `at`, else inline
/// (appended to `texts`).
fn desc(json: &[u8], texts: &mut Vec<u8>, text: &[u8], at: Option<usize>) -> Desc {
    if let Some(offset) = at
        && json.get(offset..offset.saturating_add(text.len())) == Some(text)
    {
        return Desc::InJson {
            offset,
            len: text.len(),
        };
    }
    texts.extend_from_slice(text);
    Desc::Inline { len: text.len() }
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
        self.key_texts.clear();
        self.field_texts.clear();
    }

    /// Adds the next key field: its text, and where in the JSON it may
    /// appear verbatim (checked; copied inline when it does not).
    pub fn key_field(&mut self, text: &[u8], at: Option<usize>) {
        let d = desc(&self.json, &mut self.key_texts, text, at);
        self.keys.push(d);
    }

    /// Adds the next filter field (`None`: the row lacks it).
    pub fn filter_field(&mut self, text: Option<&[u8]>, at: Option<usize>) {
        let d = match text {
            Some(t) => desc(&self.json, &mut self.field_texts, t, at),
            None => Desc::Absent,
        };
        self.fields.push(d);
    }

    /// The row, in one allocation of exactly its size.
    pub fn finish(&mut self) -> Row {
        let texts = [&self.field_texts[..], &self.key_texts[..]];
        encode(
            &mut self.head,
            &mut self.out,
            &self.fields,
            &self.keys,
            texts,
            &self.json,
        );
        // `Arc<[u8]>::from(&[u8])` allocates exactly the slice (plus the
        // counts) and copies it; `out` is scratch.
        Row(Arc::from(&self.out[..]))
    }
}

/// Writes the encoded row (see the module doc) into `out`, with `head` as
/// scratch.
fn encode(
    head: &mut Vec<u8>,
    out: &mut Vec<u8>,
    fields: &[Desc],
    keys: &[Desc],
    texts: [&[u8]; 2],
    json: &[u8],
) {
    let t = texts[0].len() + texts[1].len();
    head.clear();
    put_varint(
        head,
        (keys.len() << 2) | usize::from(!fields.is_empty()) << 1 | usize::from(t > 0),
    );
    if !fields.is_empty() {
        put_varint(head, fields.len());
    }
    if t > 0 {
        put_varint(head, t);
    }
    for d in fields.iter().chain(keys) {
        put_desc(head, *d);
    }
    head.extend_from_slice(texts[0]);
    head.extend_from_slice(texts[1]);
    out.clear();
    out.reserve_exact(10 + head.len() + json.len());
    put_varint(out, head.len());
    out.extend_from_slice(head);
    out.extend_from_slice(json);
}

fn put_desc(out: &mut Vec<u8>, d: Desc) {
    match d {
        Desc::Absent => put_varint(out, 0),
        Desc::InJson { offset, len } => {
            put_varint(out, 1 + (len << 1));
            put_varint(out, offset);
        }
        Desc::Inline { len } => put_varint(out, 1 + ((len << 1) | 1)),
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
#[inline]
fn varint(buf: &[u8], at: &mut usize) -> usize {
    let b = buf[*at];
    *at += 1;
    if b < 0x80 {
        return usize::from(b);
    }
    let mut n = usize::from(b & 0x7f);
    let mut shift = 7;
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
    /// Descriptors of the next run (the key fields after the filters).
    then: usize,
}

impl<'a> Iterator for Texts<'a> {
    type Item = Option<&'a [u8]>;

    #[inline]
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

/// An encoded row, read where it lies (a [`Row`]'s allocation or a state
/// table's arena).
#[derive(Clone, Copy)]
pub struct RowRef<'a>(&'a [u8]);

impl Row {
    /// A row from its parts, every field inline (tests, the bench, sources
    /// that already hold the texts).
    pub fn new(json: &[u8], key: &[&str], fields: &[Option<&str>]) -> Row {
        let mut texts = [Vec::new(), Vec::new()];
        let fields: Vec<Desc> = fields
            .iter()
            .map(|f| match f {
                Some(t) => {
                    texts[0].extend_from_slice(t.as_bytes());
                    Desc::Inline { len: t.len() }
                }
                None => Desc::Absent,
            })
            .collect();
        let keys: Vec<Desc> = key
            .iter()
            .map(|k| {
                texts[1].extend_from_slice(k.as_bytes());
                Desc::Inline { len: k.len() }
            })
            .collect();
        let (mut head, mut out) = (Vec::new(), Vec::new());
        encode(
            &mut head,
            &mut out,
            &fields,
            &keys,
            [&texts[0], &texts[1]],
            json,
        );
        Row(Arc::from(&out[..]))
    }

    /// A row holding a copy of an encoded row.
    pub fn from_ref(r: RowRef<'_>) -> Row {
        Row(Arc::from(r.0))
    }

    /// The row, to read.
    #[inline]
    pub fn view(&self) -> RowRef<'_> {
        RowRef(&self.0)
    }

    /// The row's compact JSON.
    #[inline]
    pub fn json(&self) -> &[u8] {
        self.view().json()
    }

    /// Bytes this row holds on the heap (its allocation with its counts).
    pub fn heap_bytes(&self) -> usize {
        self.0.len() + 2 * std::mem::size_of::<usize>()
    }

    /// The text of filter field `i` (`None`: the row lacks it).
    #[inline]
    pub fn field(&self, i: usize) -> Option<&[u8]> {
        self.view().field(i)
    }

    /// The texts of the key fields, in order (none for a keyless topic).
    pub fn key_texts(&self) -> Texts<'_> {
        self.view().key_texts()
    }

    /// The row's state-table key in `row_key` form (`None`: keyless).
    pub fn key(&self) -> Option<Box<str>> {
        self.view().key()
    }

    /// True when both rows have the same key (tuple of field texts).
    pub fn same_key(&self, other: &Row) -> bool {
        self.view().same_key(other.view())
    }

    /// Hashes the key as the tuple of its fields' texts.
    pub fn hash_key<H: Hasher>(&self, state: &mut H) {
        self.view().hash_key(state)
    }
}

/// The header's counts: (F, K, T, where the descriptors start, where the
/// JSON starts).
struct Shape {
    nfields: usize,
    nkeys: usize,
    descs: usize,
    texts: usize,
    json: usize,
}

impl<'a> RowRef<'a> {
    /// A view of the encoded row that is exactly `buf` (a state table's
    /// record, written from [`RowRef::encoded`]).
    #[inline]
    pub(super) fn new(buf: &'a [u8]) -> RowRef<'a> {
        RowRef(buf)
    }

    /// The encoded bytes.
    #[inline]
    pub fn encoded(self) -> &'a [u8] {
        self.0
    }

    #[inline]
    fn shape(self) -> Shape {
        let mut at = 0;
        let h = varint(self.0, &mut at);
        let json = at + h;
        let a = varint(self.0, &mut at);
        let nfields = if a & 2 != 0 {
            varint(self.0, &mut at)
        } else {
            0
        };
        let t = if a & 1 != 0 {
            varint(self.0, &mut at)
        } else {
            0
        };
        Shape {
            nfields,
            nkeys: a >> 2,
            descs: at,
            texts: json - t,
            json,
        }
    }

    /// The row's compact JSON.
    #[inline]
    pub fn json(self) -> &'a [u8] {
        let mut at = 0;
        let h = varint(self.0, &mut at);
        &self.0[at + h..]
    }

    /// The filter fields' texts, in order.
    #[inline]
    fn field_texts(self) -> Texts<'a> {
        let s = self.shape();
        Texts {
            buf: self.0,
            at: s.descs,
            left: s.nfields,
            inline_at: s.texts,
            json: s.json,
            then: s.nkeys,
        }
    }

    /// The text of filter field `i` (`None`: the row lacks it).
    #[inline]
    pub fn field(self, i: usize) -> Option<&'a [u8]> {
        self.field_texts().nth(i).flatten()
    }

    /// The texts of the key fields, in order (none for a keyless topic).
    pub fn key_texts(self) -> Texts<'a> {
        let mut fields = self.field_texts();
        for _ in fields.by_ref() {}
        Texts {
            left: fields.then,
            then: 0,
            ..fields
        }
    }

    /// The row's state-table key in `row_key` form (`None`: keyless).
    pub fn key(self) -> Option<Box<str>> {
        let mut texts = self.key_texts().flatten().peekable();
        texts.peek()?;
        Some(super::row_key::encode(
            texts.map(|t| std::str::from_utf8(t).unwrap_or("\u{fffd}")),
        ))
    }

    /// Hashes the key as the tuple of its fields' texts.
    pub fn hash_key<H: Hasher>(self, state: &mut H) {
        for t in self.key_texts().flatten() {
            // `[u8]`'s Hash writes the length first: ("ab","") ≠ ("a","b").
            t.hash(state);
        }
    }

    /// True when both rows have the same key (tuple of field texts).
    pub fn same_key(self, other: RowRef<'_>) -> bool {
        self.key_texts().eq(other.key_texts())
    }
}

impl<'a> From<&'a Row> for RowRef<'a> {
    fn from(r: &'a Row) -> RowRef<'a> {
        r.view()
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
        // varint 3; header: A (one key), desc, offset 6; the JSON
        assert_eq!(r.0.len(), 1 + 3 + 19);
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
