//! Row filters (SPEC §2): a subscription's query filters and its route's
//! fixed `match`, as clauses over a topic's filter fields. A row passes when
//! it passes every clause; a clause passes when the row's field equals one of
//! its values, or starts with a value given as `prefix*`.
//!
//! Filters are canonical (clauses sorted by field, values sorted and
//! deduplicated) so that subscribers asking the same thing in a different
//! order compare equal and share one group and one encoded frame per worker.
//! A route's clause and a client's clause on the same field are both kept:
//! all-of means the client can only narrow what the route allows.
//!
//! Hot for [`Filter::passes`]: runs once per row per filtered group per frame,
//! never per connection; compares bytes, allocates nothing.

use super::row::RowRef;

/// Most values one filter parameter may list.
pub const MAX_FILTER_VALUES: usize = 64;
/// Longest filter value, in bytes.
pub const MAX_FILTER_VALUE_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl Value {
    fn text(&self) -> &str {
        match self {
            Value::Exact(t) | Value::Prefix(t) => t,
        }
    }

    fn matches(&self, v: &[u8]) -> bool {
        match self {
            Value::Exact(e) => e.as_bytes() == v,
            Value::Prefix(p) => v.starts_with(p.as_bytes()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Clause {
    /// Index into the topic's filter fields (and each row's `fields`).
    pub field: usize,
    pub values: Box<[Value]>,
}

/// Why a filter value list was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterError {
    Empty,
    TooMany,
    TooLong,
}

impl FilterError {
    pub fn message(self) -> &'static str {
        match self {
            FilterError::Empty => "a filter parameter needs at least one value",
            FilterError::TooMany => "too many values in one filter parameter",
            FilterError::TooLong => "a filter value is too long",
        }
    }
}

impl Clause {
    /// Parses comma-separated values (`a,b,user.*`) for one field.
    pub fn parse(field: usize, csv: &str) -> Result<Clause, FilterError> {
        let mut values = Vec::new();
        for v in csv.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            if v.len() > MAX_FILTER_VALUE_BYTES {
                return Err(FilterError::TooLong);
            }
            if values.len() == MAX_FILTER_VALUES {
                return Err(FilterError::TooMany);
            }
            values.push(match v.strip_suffix('*') {
                Some(p) => Value::Prefix(p.into()),
                None => Value::Exact(v.into()),
            });
        }
        Clause::new(field, values)
    }

    /// A clause of values taken as they are (a route's `match`, whose
    /// request-given text must not split or turn into a prefix).
    pub fn new(field: usize, mut values: Vec<Value>) -> Result<Clause, FilterError> {
        if values.is_empty() {
            return Err(FilterError::Empty);
        }
        if values.len() > MAX_FILTER_VALUES {
            return Err(FilterError::TooMany);
        }
        if values
            .iter()
            .any(|v| v.text().len() > MAX_FILTER_VALUE_BYTES)
        {
            return Err(FilterError::TooLong);
        }
        values.sort();
        values.dedup();
        Ok(Clause {
            field,
            values: values.into_boxed_slice(),
        })
    }
}

/// All-of over clauses. An empty filter passes everything (and is never
/// built: unfiltered subscribers carry `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Filter {
    clauses: Box<[Clause]>,
}

impl Filter {
    /// A canonical filter from clauses in any order; `None` when empty.
    pub fn new(mut clauses: Vec<Clause>) -> Option<Filter> {
        if clauses.is_empty() {
            return None;
        }
        clauses.sort_by(|a, b| a.field.cmp(&b.field).then(a.values.cmp(&b.values)));
        clauses.dedup();
        Some(Filter {
            clauses: clauses.into_boxed_slice(),
        })
    }

    /// True when `row` passes.
    pub fn passes<'r>(&self, row: impl Into<RowRef<'r>>) -> bool {
        let row = row.into();
        self.clauses.iter().all(|c| {
            row.field(c.field)
                .is_some_and(|v| c.values.iter().any(|want| want.matches(v)))
        })
    }
}

/// True when `filter` (if any) lets `row` through.
pub fn passes<'r>(filter: Option<&Filter>, row: impl Into<RowRef<'r>>) -> bool {
    filter.is_none_or(|f| f.passes(row))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Row;

    fn fields(v: &[Option<&str>]) -> Row {
        Row::new(b"{}", &[], v)
    }

    #[test]
    fn csv_prefix_and_all_of() {
        let f = Filter::new(vec![
            Clause::parse(0, "pinnacle, fanduel").unwrap(),
            Clause::parse(1, "user.*").unwrap(),
        ])
        .unwrap();
        assert!(f.passes(&fields(&[Some("fanduel"), Some("user.login")])));
        assert!(!f.passes(&fields(&[Some("novig"), Some("user.login")])));
        assert!(!f.passes(&fields(&[Some("pinnacle"), Some("admin.login")])));
        assert!(
            !f.passes(&fields(&[Some("pinnacle"), None])),
            "missing field"
        );
    }

    #[test]
    fn canonical_order_compares_equal() {
        let a = Filter::new(vec![
            Clause::parse(1, "b,a").unwrap(),
            Clause::parse(0, "x").unwrap(),
        ]);
        let b = Filter::new(vec![
            Clause::parse(0, "x").unwrap(),
            Clause::parse(1, "a,b,a").unwrap(),
        ]);
        assert_eq!(a, b);
        assert_eq!(Filter::new(vec![]), None);
    }

    #[test]
    fn route_and_client_clauses_on_one_field_only_narrow() {
        // route: alert.*; client asks for user.* too: nothing passes
        let f = Filter::new(vec![
            Clause::parse(0, "alert.*").unwrap(),
            Clause::parse(0, "user.*").unwrap(),
        ])
        .unwrap();
        assert!(!f.passes(&fields(&[Some("user.login")])));
        assert!(!f.passes(&fields(&[Some("alert.fire")])));
        let f = Filter::new(vec![
            Clause::parse(0, "alert.*").unwrap(),
            Clause::parse(0, "alert.fire").unwrap(),
        ])
        .unwrap();
        assert!(f.passes(&fields(&[Some("alert.fire")])));
        assert!(!f.passes(&fields(&[Some("alert.smoke")])));
    }

    #[test]
    fn values_taken_as_they_are_match_only_themselves() {
        let f = Filter::new(vec![
            Clause::new(
                0,
                vec![Value::Exact("a,b".into()), Value::Exact("*".into())],
            )
            .unwrap(),
        ])
        .unwrap();
        assert!(f.passes(&fields(&[Some("a,b")])));
        assert!(f.passes(&fields(&[Some("*")])));
        for other in ["a", "b", "", "x"] {
            assert!(!f.passes(&fields(&[Some(other)])), "{other}");
        }
        assert_eq!(Clause::new(0, vec![]).unwrap_err(), FilterError::Empty);
        let long = Value::Exact("x".repeat(MAX_FILTER_VALUE_BYTES + 1).into());
        assert_eq!(
            Clause::new(0, vec![long]).unwrap_err(),
            FilterError::TooLong
        );
    }

    #[test]
    fn bad_values() {
        assert_eq!(Clause::parse(0, "").unwrap_err(), FilterError::Empty);
        assert_eq!(Clause::parse(0, " , ").unwrap_err(), FilterError::Empty);
        let long = "x".repeat(MAX_FILTER_VALUE_BYTES + 1);
        assert_eq!(Clause::parse(0, &long).unwrap_err(), FilterError::TooLong);
        let many = vec!["a"; MAX_FILTER_VALUES + 1].join(",");
        // duplicates still count against the limit before dedup
        assert_eq!(Clause::parse(0, &many).unwrap_err(), FilterError::TooMany);
    }
}
