//! A keyed topic's state table: the latest row per key, in the order keys
//! first appeared, at about 12 bytes per key besides the rows' encoded bytes.
//!
//! - The rows' encoded bytes ([`super::row`]) sit back to back in one arena,
//!   each record prefixed with its length, with no allocation or reference
//!   count per row.
//! - `at` maps a position (the order keys first appeared) to its record's
//!   offset: 4 bytes per key.
//! - An open-addressed index (linear probing, positions as slots, growth by
//!   half at 80% load) finds a position by key: 5–7.5 bytes per key. A row is
//!   its own key: the index hashes and compares records by their key fields'
//!   texts ([`RowRef::hash_key`], [`RowRef::same_key`]), so no key is ever
//!   copied. Keys are never removed, so positions stay valid.
//!
//! A new version of a row the same length as the last one is written over
//! it in place (an odds feed's usual update); any other goes at the end and
//! the old record becomes garbage, reclaimed by compacting once garbage
//! passes a quarter of the arena. The arena and `at` grow by an eighth, not
//! by doubling, so spare capacity stays small. Records are addressed with
//! `u32` offsets: a table holds at most [`MAX_TABLE_BYTES`], and a publish
//! that would pass it is refused whole ([`KeyedTable::reserve`]).
//!
//! Why not `hashbrown::HashTable<u32>` over a `Vec<Row>` (the layout before):
//! at a million keys its power-of-two buckets and control bytes cost 10.5
//! bytes per key, the `Vec<Row>` 16 and each row's `Arc` 16 more, about 55
//! bytes of fixed cost on a 20-byte row (tests/state_memory.rs).
//!
//! Cold: runs once per published row under the topic lock, never per
//! connection.

use std::hash::BuildHasher;

use super::row::RowRef;

/// Most bytes a table's arena holds (records are addressed with `u32`).
pub const MAX_TABLE_BYTES: usize = u32::MAX as usize;

/// An index slot with no position.
const EMPTY: u32 = u32::MAX;

/// Arena bytes below which garbage is never compacted.
const MIN_COMPACT: usize = 64 << 10;

pub struct KeyedTable {
    /// Records: varint length, then the encoded row.
    arena: Vec<u8>,
    /// Position → offset of its record in `arena`.
    at: Vec<u32>,
    /// Linear-probing slots holding positions (`EMPTY`: free).
    index: Vec<u32>,
    /// Bytes of records no position points at.
    garbage: usize,
    /// Most bytes `arena` may hold.
    limit: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for KeyedTable {
    fn default() -> KeyedTable {
        KeyedTable::with_limit(MAX_TABLE_BYTES)
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_len(mut n: usize) -> usize {
    let mut l = 1;
    while n >= 0x80 {
        n >>= 7;
        l += 1;
    }
    l
}

/// Grows `v` (when it is full) by an eighth of its length, at least
/// `need` more and at least `min`.
fn grow<T>(v: &mut Vec<T>, need: usize, min: usize) {
    if v.capacity() - v.len() < need {
        v.reserve_exact(need.max(v.len() / 8).max(min));
    }
}

impl KeyedTable {
    /// A table whose arena holds at most `limit` bytes (tests use a small
    /// one).
    pub fn with_limit(limit: usize) -> KeyedTable {
        KeyedTable {
            arena: Vec::new(),
            at: Vec::new(),
            index: Vec::new(),
            garbage: 0,
            limit: limit.min(MAX_TABLE_BYTES),
            hasher: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// The record at `offset`: (its row, its whole length with the prefix).
    fn record_at(&self, offset: usize) -> (RowRef<'_>, usize) {
        let mut at = offset;
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = self.arena[at];
            at += 1;
            len |= usize::from(b & 0x7f) << shift;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        (RowRef::new(&self.arena[at..at + len]), at - offset + len)
    }

    /// The row at position `i`.
    pub fn get(&self, i: usize) -> RowRef<'_> {
        self.record_at(self.at[i] as usize).0
    }

    /// The rows, in the order their keys first appeared.
    pub fn iter(&self) -> impl Iterator<Item = RowRef<'_>> {
        self.at.iter().map(|&o| self.record_at(o as usize).0)
    }

    fn hash(&self, row: RowRef<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        row.hash_key(&mut h);
        std::hash::Hasher::finish(&h)
    }

    /// The first slot to probe for `hash` (multiply-shift onto any size).
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.index.len() as u128) >> 64) as usize
    }

    /// Makes room for upserts of rows of `bytes` encoded bytes in all (each
    /// row counted with its length prefix: add 10 per row), compacting the
    /// garbage when that is needed. False when the table would pass its
    /// limit: the caller refuses the whole publish.
    pub fn reserve(&mut self, bytes: usize) -> bool {
        let fits = |t: &KeyedTable| {
            t.arena
                .len()
                .checked_add(bytes)
                .is_some_and(|n| n <= t.limit)
        };
        if fits(self) {
            return true;
        }
        self.compact();
        fits(self)
    }

    /// Copies the live records, in position order, into a new arena of
    /// exactly their size.
    fn compact(&mut self) {
        let live = self.arena.len() - self.garbage;
        let mut arena = Vec::with_capacity(live);
        for i in 0..self.at.len() {
            let o = self.at[i] as usize;
            let (_, len) = self.record_at(o);
            // `arena` holds at most what `self.arena` held, so offsets fit.
            self.at[i] = arena.len() as u32;
            arena.extend_from_slice(&self.arena[o..o + len]);
        }
        self.arena = arena;
        self.garbage = 0;
    }

    /// Appends `row`'s record; returns its offset. The caller has reserved
    /// room ([`KeyedTable::reserve`]).
    fn append(&mut self, row: RowRef<'_>) -> u32 {
        let bytes = row.encoded();
        let need = varint_len(bytes.len()) + bytes.len();
        assert!(
            self.arena.len() + need <= self.limit,
            "KeyedTable::reserve was called for this row"
        );
        grow(&mut self.arena, need, 4096);
        let offset = self.arena.len() as u32;
        put_varint(&mut self.arena, bytes.len());
        self.arena.extend_from_slice(bytes);
        offset
    }

    /// Rebuilds the index at half as many slots again (at least 16).
    fn grow_index(&mut self) {
        let slots = (self.index.len() + self.index.len() / 2).max(16);
        self.index = vec![EMPTY; slots];
        for p in 0..self.at.len() {
            let mut s = self.home(self.hash(self.get(p)));
            while self.index[s] != EMPTY {
                s = if s + 1 == slots { 0 } else { s + 1 };
            }
            self.index[s] = p as u32;
        }
    }

    /// Puts `row` in its key's place (a new key goes last); returns the
    /// position. The caller has reserved room ([`KeyedTable::reserve`]).
    pub fn upsert(&mut self, row: RowRef<'_>) -> usize {
        if (self.at.len() + 1) * 5 > self.index.len() * 4 {
            self.grow_index();
        }
        let hash = self.hash(row);
        let slots = self.index.len();
        let mut s = self.home(hash);
        loop {
            let p = self.index[s];
            if p == EMPTY {
                break;
            }
            let (old, old_len) = self.record_at(self.at[p as usize] as usize);
            if old.same_key(row) {
                let p = p as usize;
                let n = row.encoded().len();
                if old.encoded().len() == n {
                    // Same length: over the old one, in place.
                    let start = self.at[p] as usize + old_len - n;
                    self.arena[start..start + n].copy_from_slice(row.encoded());
                } else {
                    self.garbage += old_len;
                    self.at[p] = self.append(row);
                    if self.garbage > MIN_COMPACT && self.garbage * 4 > self.arena.len() {
                        self.compact();
                    }
                }
                return p;
            }
            s = if s + 1 == slots { 0 } else { s + 1 };
        }
        let p = self.at.len();
        let offset = self.append(row);
        grow(&mut self.at, 1, 16);
        self.at.push(offset);
        // Fewer positions than arena bytes, so they fit in a u32 below
        // EMPTY.
        self.index[s] = p as u32;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Row;

    fn r(k: &str, v: &str) -> Row {
        Row::new(format!("{{\"v\":{v}}}").as_bytes(), &[k], &[])
    }

    fn up(t: &mut KeyedTable, row: &Row) -> usize {
        assert!(t.reserve(row.view().encoded().len() + 10));
        t.upsert(row.view())
    }

    #[test]
    fn upserts_keep_first_appearance_order() {
        let mut t = KeyedTable::default();
        assert_eq!(up(&mut t, &r("a", "1")), 0);
        assert_eq!(up(&mut t, &r("b", "1")), 1);
        assert_eq!(up(&mut t, &r("a", "2")), 0);
        for i in 0..10_000 {
            up(&mut t, &r(&format!("k{i}"), &i.to_string()));
        }
        assert_eq!(up(&mut t, &r("k5000", "7")), 5002);
        assert_eq!(t.len(), 10_002);
        let first: Vec<&[u8]> = t.iter().take(2).map(RowRef::json).collect();
        assert_eq!(first, vec![&b"{\"v\":2}"[..], b"{\"v\":1}"]);
        assert_eq!(t.get(5002).json(), b"{\"v\":7}");
    }

    #[test]
    fn rows_of_other_lengths_move_and_garbage_is_compacted() {
        let mut t = KeyedTable::default();
        let model: Vec<String> = (0..2_000).map(|i| format!("k{i}")).collect();
        let mut want = vec![String::new(); model.len()];
        // Rounds of updates whose lengths change, so records move to the
        // end, garbage grows and the arena is compacted several times.
        for round in 0..40usize {
            for (i, k) in model.iter().enumerate() {
                if (i + round) % 3 == 0 {
                    let v = "9".repeat(1 + (i * 7 + round) % 13);
                    want[i] = format!("{{\"v\":{v}}}");
                    assert_eq!(up(&mut t, &r(k, &v)), i);
                } else if round == 0 {
                    want[i] = "{\"v\":0}".into();
                    assert_eq!(up(&mut t, &r(k, "0")), i);
                }
            }
        }
        assert!(t.garbage * 4 <= t.arena.len() || t.garbage <= MIN_COMPACT);
        let got: Vec<String> = t
            .iter()
            .map(|r| String::from_utf8(r.json().to_vec()).unwrap())
            .collect();
        assert_eq!(got, want);
        for (i, k) in model.iter().enumerate() {
            assert_eq!(
                t.get(i).key().unwrap(),
                Row::new(b"{}", &[k], &[]).key().unwrap()
            );
        }
    }

    #[test]
    fn a_full_table_refuses_until_compaction_makes_room() {
        let mut t = KeyedTable::with_limit(200);
        let a = r("a", "1");
        let n = a.view().encoded().len() + 1;
        for i in 0..200 / n {
            assert!(t.reserve(n), "{i}");
            t.upsert(r(&format!("{i:x}"), "1").view());
        }
        assert!(!t.reserve(n), "past the limit");
        // A longer version of one row leaves its old record as garbage; a
        // reserve compacts it away.
        let len = t.len();
        let mut t2 = KeyedTable::with_limit(64);
        assert!(t2.reserve(20));
        t2.upsert(r("x", "1").view());
        assert!(t2.reserve(20));
        t2.upsert(r("x", "22").view());
        assert!(t2.garbage > 0);
        assert!(t2.reserve(40));
        assert_eq!(t2.garbage, 0);
        assert_eq!(t2.get(0).json(), b"{\"v\":22}");
        assert_eq!(len, t.len());
    }
}
