//! [`ConfigError`]: a configuration error with the 1-based line and column
//! of the offending value, and the helpers that find that position.
//!
//! Owns only the error type and positions. Never validates anything and
//! never imports crate code (config is a leaf).

use std::fmt;
use std::ops::Range;

/// A configuration error with its position in the file (1-based).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl ConfigError {
    /// The error `message` at the start of `span` in `src` (line 1, column
    /// 1 without a span).
    pub(super) fn at(src: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        let (line, column) = match span {
            Some(s) => line_col(src, s.start),
            None => (1, 1),
        };
        ConfigError {
            line,
            column,
            message: message.into(),
        }
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// The span of the first occurrence of `needle` in `src`, for errors about
/// values that serde gives no position for.
pub(super) fn find_span(src: &str, needle: &str) -> Option<Range<usize>> {
    src.find(needle).map(|i| i..i + needle.len())
}
