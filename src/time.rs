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
