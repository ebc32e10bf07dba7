//! Filter parameters (`hub::filter`): `Clause::parse` on arbitrary value
//! lists and `Filter::passes` on arbitrary rows, against a direct reading of
//! SPEC §2 (comma-separated values, `prefix*`, all clauses must pass).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice::hub::filter::{
    Clause, Filter, FilterError, MAX_FILTER_VALUE_BYTES, MAX_FILTER_VALUES, Value,
};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    params: Vec<(u8, &'a str)>,
    rows: Vec<Vec<Option<&'a str>>>,
}

/// SPEC's reading of one value list, or why the parameter is refused.
fn reference_values(csv: &str) -> Result<Vec<&str>, FilterError> {
    let vals: Vec<&str> = csv
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if vals.is_empty() {
        return Err(FilterError::Empty);
    }
    // The first offence in list order decides which error.
    for (i, v) in vals.iter().enumerate() {
        if v.len() > MAX_FILTER_VALUE_BYTES {
            return Err(FilterError::TooLong);
        }
        if i == MAX_FILTER_VALUES {
            return Err(FilterError::TooMany);
        }
    }
    Ok(vals)
}

fn reference_match(vals: &[&str], field: Option<&str>) -> bool {
    let Some(f) = field else { return false };
    vals.iter().any(|v| match v.strip_suffix('*') {
        Some(p) => f.starts_with(p),
        None => f == *v,
    })
}

fuzz_target!(|input: Input<'_>| {
    let mut clauses = Vec::new();
    let mut refs = Vec::new();
    for &(field, csv) in input.params.iter().take(8) {
        let field = usize::from(field % 6);
        let parsed = Clause::parse(field, csv);
        let want = reference_values(csv);
        match (&parsed, &want) {
            (Ok(c), Ok(vals)) => {
                assert_eq!(c.field, field);
                assert!(!c.values.is_empty() && c.values.len() <= MAX_FILTER_VALUES);
                assert!(c.values.windows(2).all(|w| w[0] < w[1]), "sorted, no dups");
                for v in c.values.iter() {
                    let (Value::Exact(s) | Value::Prefix(s)) = v;
                    assert!(s.len() <= MAX_FILTER_VALUE_BYTES && !s.contains(','));
                }
                // Value order does not matter.
                let rev: Vec<&str> = vals.iter().rev().copied().collect();
                assert_eq!(Clause::parse(field, &rev.join(",")).as_ref(), Ok(c));
                refs.push((field, vals.clone()));
            }
            (Err(a), Err(b)) => assert_eq!(a, b, "{csv:?}"),
            _ => panic!("{csv:?}: parse {parsed:?}, reference {want:?}"),
        }
        if let Ok(c) = parsed {
            clauses.push(c);
        }
    }

    let mut rev = clauses.clone();
    rev.reverse();
    let filter = Filter::new(clauses);
    // Clause order does not matter either.
    assert_eq!(filter, Filter::new(rev));
    assert_eq!(filter.is_none(), refs.is_empty());

    for row in input.rows.iter().take(16) {
        let fields: Vec<Option<&str>> = row.iter().map(|f| f.as_deref()).collect();
        let fields = sluice::hub::Row::new(b"{}", &[], &fields);
        let want = refs
            .iter()
            .all(|(field, vals)| reference_match(vals, row.get(*field).copied().flatten()));
        assert_eq!(
            sluice::hub::filter::passes(filter.as_ref(), &fields),
            want,
            "{refs:?} {row:?}"
        );
    }
});
