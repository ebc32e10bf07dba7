//! State-table row keys: a keyed topic's key fields of one row, encoded as
//! one string that the state table maps to the row.
//!
//! The encoding is injective: two different tuples of field texts always give
//! two different keys, whatever bytes the fields hold. Each field is written
//! as its length in bytes (decimal), `:`, then its text (`["a:b","c"]` →
//! `3:a:b1:c`). Reading a key back from the start recovers every field
//! exactly ([`decode`]), so no choice of separator or escape inside a field
//! can make two rows share a key and one silently replace the other.
//!
//! A field's text is what filters compare too: a JSON string's text, or the
//! compact JSON of any other value. So the string `"7"` and the number `7`
//! are the same key (as they are the same filter value), while `7` and `7.0`,
//! or `true` and `"True"`, are not.
//!
//! Cold: runs once per published row, never per connection.

/// Appends one field to a key being built (`len:text`).
pub fn push_field(key: &mut String, text: &str) {
    let mut digits = itoa::Buffer::new();
    key.push_str(digits.format(text.len()));
    key.push(':');
    key.push_str(text);
}

/// The key of a tuple of field texts.
pub fn encode<'a>(fields: impl IntoIterator<Item = &'a str>) -> Box<str> {
    let mut key = String::new();
    for f in fields {
        push_field(&mut key, f);
    }
    key.into_boxed_str()
}

/// The field texts of a key made by [`encode`]; `None` when `key` is not one.
pub fn decode(key: &str) -> Option<Vec<&str>> {
    let mut fields = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        let colon = rest.find(':')?;
        let digits = &rest[..colon];
        // Exactly what `push_field` writes: no sign, no leading zero.
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        let len: usize = digits.parse().ok()?;
        let end = (colon + 1).checked_add(len)?;
        fields.push(rest.get(colon + 1..end)?);
        rest = &rest[end..];
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn fields_holding_separators_do_not_collide() {
        // Joined with U+001F (the old scheme) these were both "x\u{1f}y\u{1f}z".
        let a = encode(["x\u{1f}y", "z"]);
        let b = encode(["x", "y\u{1f}z"]);
        assert_ne!(a, b);
        // Lengths and colons inside fields.
        let c = encode(["1:a", "b"]);
        let d = encode(["1", "a1:b"]);
        assert_ne!(c, d);
        assert_ne!(encode(["", "ab"]), encode(["a", "b"]));
        assert_ne!(encode(["ab", ""]), encode(["a", "b"]));
        assert_eq!(&*encode(["a:b", "c"]), "3:a:b1:c");
        assert_eq!(&*encode(["é"]), "2:é", "lengths are in bytes");
    }

    #[test]
    fn decode_reverses_encode_and_refuses_other_strings() {
        for t in [
            vec![],
            vec![""],
            vec!["", ""],
            vec!["x\u{1f}y", "z"],
            vec!["10:", "::", "é\u{0}"],
        ] {
            assert_eq!(decode(&encode(t.iter().copied())), Some(t));
        }
        for bad in [
            "x",
            "1:",
            "2:a",
            ":a",
            "01:a",
            "+1:a",
            "1a",
            "99999999999999999999999:",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    /// Random tuples over an alphabet rich in digits, colons and separators:
    /// distinct tuples get distinct keys, and every key decodes to its tuple.
    #[test]
    fn distinct_tuples_get_distinct_keys() {
        const ALPHABET: &[&str] = &["", "0", "1", "2", ":", "\u{1f}", "a", "é", "10", "1:"];
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let mut seen: HashMap<Box<str>, Vec<String>> = HashMap::new();
        for _ in 0..50_000 {
            let arity = rng.usize(0..4);
            let tuple: Vec<String> = (0..arity)
                .map(|_| {
                    (0..rng.usize(0..4))
                        .map(|_| ALPHABET[rng.usize(..ALPHABET.len())])
                        .collect()
                })
                .collect();
            let key = encode(tuple.iter().map(String::as_str));
            let back: Vec<String> = decode(&key)
                .expect("a key decodes")
                .into_iter()
                .map(String::from)
                .collect();
            assert_eq!(back, tuple);
            if let Some(other) = seen.insert(key.clone(), tuple.clone()) {
                assert_eq!(other, tuple, "two tuples share the key {key:?}");
            }
        }
        assert!(seen.len() > 10_000, "the generator covers many tuples");
    }
}
