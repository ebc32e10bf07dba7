//! Reconnect delays: exponential backoff with full jitter. The n-th
//! attempt after a failure waits `random(0, min(max, base × 2^n))`, so that
//! many edges that lost one origin come back spread out instead of together.
//!
//! Cold module. The backoff restarts from `base` once a connection has
//! delivered a message (a connection the origin accepts and then closes at
//! once keeps backing off); an SSE origin's `retry:` sets `base`.

use std::time::Duration;

/// `base` when the origin says nothing (`retry:`).
pub const DEFAULT_BASE_MS: u64 = 1000;

#[derive(Debug)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    /// Failed attempts since the last connection that delivered a message.
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(max_ms: u64) -> Backoff {
        Backoff {
            base_ms: DEFAULT_BASE_MS.min(max_ms),
            max_ms,
            attempt: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// The origin's reconnection time (`retry:`), capped at the maximum.
    pub fn set_base(&mut self, ms: u64) {
        self.base_ms = ms.min(self.max_ms);
    }

    /// A connection delivered a message: the next failure starts over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The longest the next delay may be: `min(max, base × 2^attempt)`.
    pub fn cap_ms(&self) -> u64 {
        let factor = 1u64.checked_shl(self.attempt.min(63)).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// The delay before the next attempt (and one attempt more).
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap_ms();
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(self.rng.u64(0..=cap))
    }
}

/// The delay for the `attempt`-th consecutive attempt (1-based), without
/// state: for clients that count attempts themselves (async-nats).
pub fn full_jitter(attempt: usize, base_ms: u64, max_ms: u64) -> Duration {
    let n = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(63);
    let cap = base_ms
        .min(max_ms)
        .saturating_mul(1u64.checked_shl(n).unwrap_or(u64::MAX))
        .min(max_ms);
    Duration::from_millis(fastrand::u64(0..=cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_double_up_to_the_maximum_and_restart_after_a_reset() {
        let mut b = Backoff::new(30_000);
        let mut caps = Vec::new();
        for _ in 0..8 {
            caps.push(b.cap_ms());
            let d = b.next_delay();
            assert!(d.as_millis() as u64 <= *caps.last().unwrap());
        }
        assert_eq!(
            caps,
            [1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]
        );
        b.reset();
        assert_eq!(b.cap_ms(), 1000);
        b.set_base(50);
        assert_eq!(b.cap_ms(), 50);
        b.set_base(u64::MAX);
        assert_eq!(b.cap_ms(), 30_000);
        for _ in 0..200 {
            b.next_delay();
        }
        assert_eq!(b.cap_ms(), 30_000, "no overflow after many attempts");
    }

    #[test]
    fn delays_are_jittered_over_the_whole_range() {
        let mut b = Backoff::new(1000);
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..400 {
            b.reset();
            let d = b.next_delay().as_millis();
            assert!(d <= 1000);
            seen_low |= d < 250;
            seen_high |= d > 750;
        }
        assert!(seen_low && seen_high);
        assert!(full_jitter(1, 1000, 300) <= Duration::from_millis(300));
        assert!(full_jitter(usize::MAX, 1000, 300) <= Duration::from_millis(300));
    }
}
