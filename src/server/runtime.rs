//! The one way sluice builds a monoio runtime, used by the server's workers
//! and by `sluice bench`'s threads alike (after monolake's
//! `RuntimeWrapper`): the driver is picked once from `SLUICE_DRIVER`, every
//! runtime has timers and [`URING_ENTRIES`], and io_uring falls back to
//! epoll where the kernel (or a seccomp filter, or `RLIMIT_MEMLOCK`) refuses
//! it.
//!
//! Cold: runs once per thread at start. Logs one line per outcome (io_uring,
//! epoll by choice, epoll by fallback), however many threads build one.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

/// io_uring submission queue entries per runtime (under epoll: events
/// taken per `epoll_wait`).
pub const URING_ENTRIES: u32 = 4096;

/// Which I/O driver to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring where available, else epoll (with one log line).
    Auto,
    /// epoll only (`SLUICE_DRIVER=epoll` or `legacy`, monoio's name for it;
    /// the tests use it to cover both drivers).
    Epoll,
}

impl Driver {
    /// `SLUICE_DRIVER=epoll|legacy` picks epoll; anything else, or nothing,
    /// picks [`Driver::Auto`].
    pub fn from_env() -> Driver {
        Driver::from_name(std::env::var("SLUICE_DRIVER").ok().as_deref())
    }

    fn from_name(name: Option<&str>) -> Driver {
        match name {
            Some("epoll") | Some("legacy") => Driver::Epoll,
            _ => Driver::Auto,
        }
    }
}

/// A monoio runtime on one of the two drivers.
pub enum Runtime {
    IoUring(monoio::Runtime<TimeDriver<IoUringDriver>>),
    Epoll(monoio::Runtime<TimeDriver<LegacyDriver>>),
}

/// Outcomes already logged, one bit each (see [`log_once`]).
static LOGGED: AtomicU8 = AtomicU8::new(0);
const LOGGED_URING: u8 = 1;
const LOGGED_EPOLL: u8 = 2;
const LOGGED_FALLBACK: u8 = 4;

/// True the first time `outcome` happens in this process. Relaxed: the bit
/// guards nothing but a log line.
fn log_once(outcome: u8) -> bool {
    LOGGED.fetch_or(outcome, Ordering::Relaxed) & outcome == 0
}

impl Runtime {
    /// Builds a runtime with timers on `driver`: under [`Driver::Auto`],
    /// io_uring, or epoll if io_uring cannot be set up.
    pub fn new(driver: Driver) -> io::Result<Runtime> {
        if driver == Driver::Auto {
            match RuntimeBuilder::<IoUringDriver>::new()
                .with_entries(URING_ENTRIES)
                .enable_timer()
                .build()
            {
                Ok(rt) => {
                    if log_once(LOGGED_URING) {
                        tracing::info!("io_uring driver");
                    }
                    return Ok(Runtime::IoUring(rt));
                }
                Err(e) => {
                    if log_once(LOGGED_FALLBACK) {
                        tracing::warn!(error = %e, "io_uring is unavailable; using the epoll driver");
                    }
                }
            }
        } else if log_once(LOGGED_EPOLL) {
            tracing::info!("epoll driver (chosen by SLUICE_DRIVER)");
        }
        RuntimeBuilder::<LegacyDriver>::new()
            .with_entries(URING_ENTRIES)
            .enable_timer()
            .build()
            .map(Runtime::Epoll)
    }

    /// Whether this runtime runs on io_uring (else on epoll).
    pub fn is_io_uring(&self) -> bool {
        matches!(self, Runtime::IoUring(_))
    }

    /// Runs `fut` to completion on this thread.
    pub fn block_on<F: Future>(&mut self, fut: F) -> F::Output {
        match self {
            Runtime::IoUring(rt) => rt.block_on(fut),
            Runtime::Epoll(rt) => rt.block_on(fut),
        }
    }
}

/// Builds a runtime on `driver` and runs `fut` on it.
pub fn block_on<F: Future>(driver: Driver, fut: F) -> io::Result<F::Output> {
    Ok(Runtime::new(driver)?.block_on(fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_and_legacy_both_force_epoll() {
        assert_eq!(Driver::from_name(Some("epoll")), Driver::Epoll);
        assert_eq!(Driver::from_name(Some("legacy")), Driver::Epoll);
        assert_eq!(Driver::from_name(Some("uring")), Driver::Auto);
        assert_eq!(Driver::from_name(None), Driver::Auto);
    }

    #[test]
    fn a_forced_epoll_runtime_runs_timers() {
        let mut rt = Runtime::new(Driver::Epoll).expect("epoll runtime");
        assert!(!rt.is_io_uring());
        let out = rt.block_on(async {
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            7
        });
        assert_eq!(out, 7);
        let auto = block_on(Driver::Auto, async { 8 }).expect("some runtime");
        assert_eq!(auto, 8);
    }
}
