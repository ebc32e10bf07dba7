//! Fault injection for the end-to-end tests: `SLUICE_TEST_PANIC=KIND` makes
//! one named place panic, so that the tests can check what the process does
//! when a thread dies (it must exit non-zero at once, naming the thread);
//! `SLUICE_TEST_STALL=worker` makes the worker serving `GET /__sluice/stall`
//! block its thread for good, so that they can check what a stuck worker
//! does to the systemd watchdog and `/healthz`.
//!
//! Cold: read once per process; each place checks it off the hot path
//! (an unknown URL, the coalescer's tick). Panic KINDs: `request` (a worker
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

/// True when `SLUICE_TEST_STALL` names `kind`.
pub fn stall_injected(kind: &str) -> bool {
    static KIND: OnceLock<Option<String>> = OnceLock::new();
    KIND.get_or_init(|| std::env::var("SLUICE_TEST_STALL").ok())
        .as_deref()
        == Some(kind)
}

/// Blocks the calling thread for good (an injected stuck worker).
pub fn stall_forever() -> ! {
    tracing::warn!("injected fault (SLUICE_TEST_STALL): this thread stops here");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
