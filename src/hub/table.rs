//! A keyed topic's state table: the latest row per key, in the order keys
//! first appeared, at about 12 bytes per key besides the rows' encoded bytes.
//!
//! - The rows' encoded bytes ([`super::row`]) sit back to back in chunks of
//!   1 MiB (the first grows from 256 bytes, so a small table stays small),
//!   each record prefixed with its length, with no allocation or reference
//!   count per row. A row over 256 KiB gets an allocation of its own. A
//!   chunk is never reallocated: growing the state never copies it, and
//!   leaves no freed copies behind for the allocator to hold on to.
//! - `at` maps a position (the order keys first appeared) to its record's
//!   address: 4 bytes per key, in chunks of 4,096.
//! - An open-addressed index (linear probing, positions as slots, growth by
//!   half at 80% load) finds a position by key: 5–7.5 bytes per key. A row is
//!   its own key: the index hashes and compares records by their key fields'
//!   texts ([`RowRef::hash_key`], [`RowRef::same_key`]), so no key is ever
//!   copied. Keys are never removed, so positions stay valid.
//!
//! A new version of a row the same length as the last one is written over
//! it in place (an odds feed's usual update); any other goes at the end and
//! the old record becomes garbage, reclaimed by compacting once garbage
//! passes a quarter of the chunks' bytes. Addresses are `u32`s (2,048 chunks
//! of 1 MiB, or a big row's number), so a table holds at most about
//! [`MAX_TABLE_BYTES`]; a publish that would pass it is refused whole
//! ([`KeyedTable::reserve`]).
//!
//! Why not `hashbrown::HashTable<u32>` over a `Vec<Row>` (the layout before):
//! at a million keys its power-of-two buckets and control bytes cost 10.5
//! bytes per key, the `Vec<Row>` 16 and each row's `Arc` 16 more, about 55
//! bytes of fixed cost on a 20-byte row (tests/state_memory.rs). And why not
//! one `Vec<u8>`: growing it reallocates and copies, and mimalloc keeps the
//! freed copies resident for a while, which showed as 2.7x the JSON in RSS.
//!
//! Cold: runs once per published row under the topic lock, never per
//! connection.

use std::hash::BuildHasher;

use super::row::RowRef;

const CHUNK_BITS: u32 = 20;
/// Bytes of a full chunk.
const CHUNK: usize = 1 << CHUNK_BITS;
/// Chunks addressable below [`BIG`].
const MAX_CHUNKS: usize = 1 << (31 - CHUNK_BITS);
/// Address bit of a big row (its number in `bigs`).
const BIG: u32 = 1 << 31;
/// Longest record kept in a chunk.
const MAX_SMALL: usize = CHUNK / 4;
/// The first chunk's first size.
const FIRST_CHUNK: usize = 256;
/// Positions per chunk of `at`.
const AT_CHUNK: usize = 4096;

/// Most bytes a table's chunks hold (bytes of full chunks, less the tails
/// a chunk may leave unused).
pub const MAX_TABLE_BYTES: usize = MAX_CHUNKS * (CHUNK - MAX_SMALL);

/// An index slot with no position.
const EMPTY: u32 = u32::MAX;

/// Garbage bytes below which nothing is compacted.
const MIN_COMPACT: usize = 64 << 10;

/// The rows' bytes.
#[derive(Default)]
struct Records {
    /// Records (varint length, then the encoded row); only the last chunk
    /// takes new ones, and only the first ever grows (up to `CHUNK`).
    chunks: Vec<Vec<u8>>,
    /// Rows over `MAX_SMALL`, whole (empty: free).
    bigs: Vec<Box<[u8]>>,
    free_bigs: Vec<u32>,
    /// Chunk bytes of replaced records (the unused tails of full chunks,
    /// at most `MAX_SMALL` each, are not counted: compacting keeps them).
    garbage: usize,
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

impl Records {
    /// The row at `addr`, and its record's length in its chunk (0: big).
    fn get(&self, addr: u32) -> (&[u8], usize) {
        if addr & BIG != 0 {
            return (&self.bigs[(addr & !BIG) as usize], 0);
        }
        let chunk = &self.chunks[(addr >> CHUNK_BITS) as usize];
        let start = (addr as usize) & (CHUNK - 1);
        let (mut at, mut len, mut shift) = (start, 0usize, 0);
        loop {
            let b = chunk[at];
            at += 1;
            len |= usize::from(b & 0x7f) << shift;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        (&chunk[at..at + len], at - start + len)
    }

    /// Bytes the chunks hold, their unused tails included.
    fn chunk_bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }

    /// True when rows of `bytes` in all can be pushed.
    fn has_room(&self, bytes: usize, limit: usize) -> bool {
        // A full chunk holds at least CHUNK - MAX_SMALL bytes of records.
        let chunks = bytes.div_ceil(CHUNK - MAX_SMALL) + 1;
        self.chunks.len() + chunks <= MAX_CHUNKS
            && self.bigs.len() < (BIG - 1) as usize
            && self
                .chunks
                .iter()
                .map(Vec::len)
                .sum::<usize>()
                .checked_add(bytes)
                .is_some_and(|n| n <= limit)
    }

    /// Stores `row`; returns its address. The caller checked `has_room`.
    fn push(&mut self, row: &[u8]) -> u32 {
        if row.len() + 8 > MAX_SMALL {
            return match self.free_bigs.pop() {
                Some(i) => {
                    self.bigs[i as usize] = row.into();
                    BIG | i
                }
                None => {
                    self.bigs.push(row.into());
                    BIG | (self.bigs.len() - 1) as u32
                }
            };
        }
        let need = varint_len(row.len()) + row.len();
        let full = self
            .chunks
            .last()
            .is_none_or(|c| c.capacity() - c.len() < need);
        if full {
            let only = self.chunks.len() == 1;
            match self.chunks.last_mut() {
                // The first chunk grows (doubling) until it is a whole one.
                Some(c) if only && c.len() + need <= CHUNK => {
                    let to = (c.capacity() * 2).max(c.len() + need).min(CHUNK);
                    c.reserve_exact(to - c.len());
                }
                _ => {
                    let size = if self.chunks.is_empty() {
                        FIRST_CHUNK.max(need)
                    } else {
                        CHUNK
                    };
                    self.chunks.push(Vec::with_capacity(size));
                }
            }
        }
        debug_assert!(self.chunks.last().is_some_and(|c| c.len() + need <= CHUNK));
        let n = self.chunks.len() - 1;
        let c = &mut self.chunks[n];
        let addr = ((n as u32) << CHUNK_BITS) | c.len() as u32;
        put_varint(c, row.len());
        c.extend_from_slice(row);
        addr
    }

    /// Forgets the record at `addr`.
    fn free(&mut self, addr: u32) {
        if addr & BIG != 0 {
            let i = addr & !BIG;
            self.bigs[i as usize] = Box::default();
            self.free_bigs.push(i);
        } else {
            self.garbage += self.get(addr).1;
        }
    }

    /// Writes `row` over the record at `addr`, which has its length.
    fn overwrite(&mut self, addr: u32, row: &[u8]) {
        if addr & BIG != 0 {
            self.bigs[(addr & !BIG) as usize].copy_from_slice(row);
            return;
        }
        let (_, len) = self.get(addr);
        let chunk = &mut self.chunks[(addr >> CHUNK_BITS) as usize];
        let end = ((addr as usize) & (CHUNK - 1)) + len;
        chunk[end - row.len()..end].copy_from_slice(row);
    }
}

pub struct KeyedTable {
    records: Records,
    /// Position → its record's address, in chunks of `AT_CHUNK`.
    at: Vec<Vec<u32>>,
    len: usize,
    /// Linear-probing slots holding positions (`EMPTY`: free).
    index: Vec<u32>,
    /// Most bytes the chunks may hold.
    limit: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for KeyedTable {
    fn default() -> KeyedTable {
        KeyedTable::with_limit(MAX_TABLE_BYTES)
    }
}

impl KeyedTable {
    /// A table whose chunks hold at most `limit` bytes (tests use a small
    /// one).
    pub fn with_limit(limit: usize) -> KeyedTable {
        KeyedTable {
            records: Records::default(),
            at: Vec::new(),
            len: 0,
            index: Vec::new(),
            limit: limit.min(MAX_TABLE_BYTES),
            hasher: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn addr(&self, p: usize) -> u32 {
        self.at[p / AT_CHUNK][p % AT_CHUNK]
    }

    fn set_addr(&mut self, p: usize, addr: u32) {
        self.at[p / AT_CHUNK][p % AT_CHUNK] = addr;
    }

    /// The row at position `i`.
    pub fn get(&self, i: usize) -> RowRef<'_> {
        RowRef::new(self.records.get(self.addr(i)).0)
    }

    /// The rows, in the order their keys first appeared.
    pub fn iter(&self) -> impl Iterator<Item = RowRef<'_>> {
        self.at
            .iter()
            .flatten()
            .map(|&a| RowRef::new(self.records.get(a).0))
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
        if self.records.has_room(bytes, self.limit) {
            return true;
        }
        self.compact();
        self.records.has_room(bytes, self.limit)
    }

    /// Copies the live records, in position order, into new chunks (big
    /// rows move as they are).
    fn compact(&mut self) {
        let mut old = std::mem::take(&mut self.records);
        for p in 0..self.len {
            let a = self.addr(p);
            let new = if a & BIG != 0 {
                let row = std::mem::take(&mut old.bigs[(a & !BIG) as usize]);
                self.records.bigs.push(row);
                BIG | (self.records.bigs.len() - 1) as u32
            } else {
                self.records.push(old.get(a).0)
            };
            self.set_addr(p, new);
        }
    }

    /// Rebuilds the index at half as many slots again (at least 16).
    fn grow_index(&mut self) {
        let slots = (self.index.len() + self.index.len() / 2).max(16);
        self.index = vec![EMPTY; slots];
        for p in 0..self.len {
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
        if (self.len + 1) * 5 > self.index.len() * 4 {
            self.grow_index();
        }
        let hash = self.hash(row);
        let slots = self.index.len();
        let mut s = self.home(hash);
        let bytes = row.encoded();
        loop {
            let p = self.index[s];
            if p == EMPTY {
                break;
            }
            let p = p as usize;
            let a = self.addr(p);
            let old = RowRef::new(self.records.get(a).0);
            if old.same_key(row) {
                if old.encoded().len() == bytes.len() {
                    // Same length: over the old one, in place.
                    self.records.overwrite(a, bytes);
                } else {
                    self.records.free(a);
                    let new = self.records.push(bytes);
                    self.set_addr(p, new);
                    let garbage = self.records.garbage;
                    if garbage > MIN_COMPACT && garbage * 4 > self.records.chunk_bytes() {
                        self.compact();
                    }
                }
                return p;
            }
            s = if s + 1 == slots { 0 } else { s + 1 };
        }
        let p = self.len;
        let addr = self.records.push(bytes);
        if p.is_multiple_of(AT_CHUNK) {
            self.at.push(Vec::new());
        }
        let last = self.at.last_mut().expect("a chunk for position p");
        if last.len() == last.capacity() && last.capacity() < AT_CHUNK {
            last.reserve_exact((last.capacity() * 2).clamp(4, AT_CHUNK) - last.len());
        }
        last.push(addr);
        self.len += 1;
        // Fewer positions than addresses, so they fit in a u32 below EMPTY.
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

    fn jsons(t: &KeyedTable) -> Vec<String> {
        t.iter()
            .map(|r| String::from_utf8(r.json().to_vec()).unwrap())
            .collect()
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
        assert_eq!(t.iter().count(), 10_002);
    }

    #[test]
    fn rows_of_other_lengths_move_and_garbage_is_compacted() {
        let mut t = KeyedTable::default();
        let model: Vec<String> = (0..80_000).map(|i| format!("k{i}")).collect();
        let mut want = vec![String::new(); model.len()];
        // Rounds of updates whose lengths change, so records move to the
        // end, across chunks, garbage grows and is compacted several times.
        let mut compactions = 0;
        for round in 0..12usize {
            for (i, k) in model.iter().enumerate() {
                if (i + round) % 3 == 0 {
                    let v = "9".repeat(1 + (i * 7 + round) % 13);
                    want[i] = format!("{{\"v\":{v}}}");
                    let before = t.records.garbage;
                    assert_eq!(up(&mut t, &r(k, &v)), i);
                    if t.records.garbage < before {
                        compactions += 1;
                    }
                } else if round == 0 {
                    want[i] = "{\"v\":0}".into();
                    assert_eq!(up(&mut t, &r(k, "0")), i);
                }
            }
        }
        assert!(compactions >= 2, "{compactions}");
        assert!(t.records.chunks.len() > 1);
        assert_eq!(jsons(&t), want);
        for (i, k) in model.iter().enumerate() {
            assert_eq!(
                t.get(i).key().unwrap(),
                Row::new(b"{}", &[k], &[]).key().unwrap()
            );
        }
    }

    #[test]
    fn big_rows_live_on_their_own_and_their_slots_are_reused() {
        let mut t = KeyedTable::default();
        let big = |k: &str, c: char, n: usize| r(k, &format!("\"{}\"", c.to_string().repeat(n)));
        up(&mut t, &r("s", "1"));
        up(&mut t, &big("b", 'x', MAX_SMALL));
        up(&mut t, &big("b", 'y', MAX_SMALL)); // same length: in place
        assert_eq!(t.records.bigs.len(), 1);
        up(&mut t, &big("b", 'z', MAX_SMALL + 1)); // moves, reuses slot 0
        assert_eq!(t.records.bigs.len(), 1);
        up(&mut t, &r("b", "2")); // back into a chunk
        assert_eq!(t.records.free_bigs, vec![0]);
        up(&mut t, &big("c", 'w', 2 * CHUNK));
        assert_eq!(t.records.bigs.len(), 1);
        assert_eq!(
            jsons(&t)[..2],
            ["{\"v\":1}".to_string(), "{\"v\":2}".into()]
        );
        assert_eq!(t.get(2).json().len(), 2 * CHUNK + 8);
        t.compact();
        assert_eq!(t.get(2).json().len(), 2 * CHUNK + 8);
        assert_eq!(t.get(1).json(), b"{\"v\":2}");
    }

    #[test]
    fn a_small_table_stays_small_and_a_full_one_refuses() {
        let mut t = KeyedTable::default();
        up(&mut t, &r("a", "1"));
        assert_eq!(t.records.chunk_bytes(), FIRST_CHUNK);
        let mut t = KeyedTable::with_limit(200);
        let n = r("a", "1").view().encoded().len() + 1;
        let mut i = 0;
        while t.reserve(n) {
            t.upsert(r(&format!("{i:x}"), "1").view());
            i += 1;
        }
        assert_eq!(i, 200 / n);
        // A longer version of a row leaves garbage; a reserve that would
        // not fit compacts it away first.
        let mut t = KeyedTable::with_limit(FIRST_CHUNK);
        assert!(t.reserve(20));
        t.upsert(r("x", "1").view());
        assert!(t.reserve(20));
        t.upsert(r("x", "22").view());
        assert!(t.records.garbage > 0);
        let used = t.records.chunks[0].len();
        assert!(t.reserve(FIRST_CHUNK - used + 1));
        assert_eq!(t.records.garbage, 0);
        assert_eq!(t.get(0).json(), b"{\"v\":22}");
    }
}
