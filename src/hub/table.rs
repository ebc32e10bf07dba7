//! A keyed topic's state table: the latest row per key, in the order keys
//! first appeared, at about 27 bytes per key besides the rows themselves.
//!
//! The rows sit in one `Vec<Row>` (16 bytes each); a `hashbrown::HashTable`
//! of `u32` positions into it (4 bytes and a control byte per slot) finds a
//! row by key. A row is its own key: the index hashes and compares rows by
//! their key fields' texts (`Row::hash_key`, `Row::same_key`), so no key is
//! ever copied. Keys are never removed (a topic's state only grows or is
//! replaced row by row), so positions stay valid.
//!
//! Cold: runs once per published row under the topic lock, never per
//! connection. (An `IndexSet<Row>` cost ~63 bytes per key at a million
//! keys: a stored hash, `usize` positions and entries reserved to match the
//! index's capacity.)

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::Row;

#[derive(Default)]
pub struct KeyedTable {
    rows: Vec<Row>,
    index: HashTable<u32>,
    hasher: std::collections::hash_map::RandomState,
}

impl KeyedTable {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Puts `row` in its key's place (a new key goes last); returns the
    /// position.
    pub fn upsert(&mut self, row: Row) -> usize {
        let hasher = &self.hasher;
        let hash = |r: &Row| {
            let mut h = hasher.build_hasher();
            r.hash_key(&mut h);
            std::hash::Hasher::finish(&h)
        };
        let rows = &self.rows;
        let entry = self.index.entry(
            hash(&row),
            |&i| rows[i as usize].same_key(&row),
            |&i| hash(&rows[i as usize]),
        );
        match entry {
            Entry::Occupied(e) => {
                let i = *e.get() as usize;
                self.rows[i] = row;
                i
            }
            Entry::Vacant(v) => {
                let i = self.rows.len();
                // A table of 2^32 rows would need hundreds of GB before it
                // got here.
                let pos = u32::try_from(i).expect("a topic holds fewer than 2^32 keys");
                v.insert(pos);
                self.rows.push(row);
                i
            }
        }
    }

    pub fn get(&self, i: usize) -> &Row {
        &self.rows[i]
    }

    /// The rows, in the order their keys first appeared.
    pub fn iter(&self) -> std::slice::Iter<'_, Row> {
        self.rows.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_keep_first_appearance_order() {
        let mut t = KeyedTable::default();
        let r = |k: &str, v: u32| Row::new(format!("{{\"v\":{v}}}").as_bytes(), &[k], &[]);
        assert_eq!(t.upsert(r("a", 1)), 0);
        assert_eq!(t.upsert(r("b", 1)), 1);
        assert_eq!(t.upsert(r("a", 2)), 0);
        for i in 0..10_000 {
            t.upsert(r(&format!("k{i}"), i));
        }
        assert_eq!(t.upsert(r("k5000", 7)), 5002);
        assert_eq!(t.len(), 10_002);
        let first: Vec<&[u8]> = t.iter().take(2).map(Row::json).collect();
        assert_eq!(first, vec![&b"{\"v\":2}"[..], b"{\"v\":1}"]);
        assert_eq!(t.get(5002).json(), b"{\"v\":7}");
    }
}
