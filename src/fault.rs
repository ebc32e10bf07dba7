//! Fault injection for the end-to-end tests: `SLUICE_TEST_PANIC=KIND` makes
//! one named place panic, so that the tests can check what the process does
//! when a thread dies (it must exit non-zero at once, naming the thread).
//!
//! Cold: read once per process; each place checks it off the hot path
//! (an unknown URL, the coalescer's tick). KINDs: `request` (a worker
//! panics serving `GET /__sluice/panic`), `coalescer` (the coalescer thread
//! panics on its first tick).

use std::sync::OnceLock;

/// True when `SLUICE_TEST_PANIC` names `kind`.
pub fn injected(kind: &str) -> bool {
    static KIND: OnceLock<Option<String>> = OnceLock::new();
    KIND.get_or_init(|| std::env::var("SLUICE_TEST_PANIC").ok())
        .as_deref()
        == Some(kind)
}
