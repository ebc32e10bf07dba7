//! Wall-clock helpers. Cold: called once per update or per tick, never per
//! connection.

use std::time::{SystemTime, UNIX_EPOCH};

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

pub fn unix_micros() -> u64 {
    since_epoch().as_micros() as u64
}

pub fn unix_millis() -> u64 {
    since_epoch().as_millis() as u64
}

pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds on the monotonic clock since the process first asked, plus
/// one (never 0, so that 0 can mean "never").
pub fn mono_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let elapsed = ORIGIN.get_or_init(std::time::Instant::now).elapsed();
    u64::try_from(elapsed.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}
