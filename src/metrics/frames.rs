//! The two per-frame histograms, `sluice_sse_publish_latency_seconds` and
//! `sluice_sse_frame_bytes`, counted by sluice itself rather than by the
//! recorder: a worker adds a frame to plain `Cell` buckets ([`Local`]),
//! folds them into the tier's shared atomics once a second on its tick
//! ([`Local::flush`]), and `/metrics` writes them out ([`render`]) in the
//! recorder's own format.
//!
//! Why: the recorder's histogram keeps every sample until a scrape or its
//! upkeep, pinning a crossbeam epoch and taking a zeroed block from the
//! allocator as it goes. With one frame per publish (1,000 topics) that was
//! about 4% of the worker's user-space CPU (`TOPICS=1000 RECORD=user
//! scripts/profile.sh 1000 10000 15`). Here a frame costs a bucket search
//! over the fixed bounds and three cell increments. The buckets, `_sum` and
//! `_count` are exact (latency in whole milliseconds, as frames are
//! stamped).

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{FRAME_BYTES_BUCKETS, LATENCY_BUCKETS};

const LATENCY: &str = "sluice_sse_publish_latency_seconds";
const BYTES: &str = "sluice_sse_frame_bytes";
const LATENCY_HELP: &str = "Seconds from a frame's publish (coalesced tiers: its tick) to its fan-out onto a worker's streams, by tier; once per frame per worker.";
const BYTES_HELP: &str =
    "Size of the update frames fanned out, by tier; once per frame per worker.";

/// Every tier's shared counts, in the order tiers were first seen (a
/// reload that adds a tier appends it; one that drops a tier keeps its
/// counts, as the recorder kept a dropped tier's series).
static TIERS: Mutex<Vec<Arc<Shared>>> = Mutex::new(Vec::new());

/// One histogram's counts: per bucket (not cumulative), the `+Inf` bucket
/// last, and the sum of the values in whole units (ms or bytes).
struct Counts {
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Counts {
    fn new(bounds: &[f64]) -> Counts {
        Counts {
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }
}

/// One tier's two histograms, shared by the workers.
struct Shared {
    tier: String,
    latency: Counts,
    bytes: Counts,
}

/// The shared counts of `tier`, made on first use.
fn shared(tier: &str) -> Arc<Shared> {
    let mut tiers = TIERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = tiers.iter().find(|s| s.tier == tier) {
        return s.clone();
    }
    let s = Arc::new(Shared {
        tier: tier.to_string(),
        latency: Counts::new(LATENCY_BUCKETS),
        bytes: Counts::new(FRAME_BYTES_BUCKETS),
    });
    tiers.push(s.clone());
    s
}

/// One histogram's counts on one worker since its last flush.
struct LocalCounts {
    buckets: Box<[Cell<u64>]>,
    sum: Cell<u64>,
}

impl LocalCounts {
    fn new(bounds: &[f64]) -> LocalCounts {
        LocalCounts {
            buckets: (0..=bounds.len()).map(|_| Cell::new(0)).collect(),
            sum: Cell::new(0),
        }
    }

    #[inline]
    fn add(&self, bounds: &[f64], value: f64, units: u64) {
        // Prometheus buckets are `le`: a value on a bound counts in it.
        let i = bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(bounds.len());
        let c = &self.buckets[i];
        c.set(c.get() + 1);
        self.sum.set(self.sum.get().saturating_add(units));
    }

    fn flush(&self, into: &Counts) {
        for (c, s) in self.buckets.iter().zip(into.buckets.iter()) {
            let n = c.take();
            if n != 0 {
                s.fetch_add(n, Ordering::Relaxed);
            }
        }
        into.sum.fetch_add(self.sum.take(), Ordering::Relaxed);
    }
}

/// One tier's histograms on one worker.
pub struct Local {
    shared: Arc<Shared>,
    latency: LocalCounts,
    bytes: LocalCounts,
}

impl Local {
    pub fn new(tier: &str) -> Local {
        Local {
            shared: shared(tier),
            latency: LocalCounts::new(LATENCY_BUCKETS),
            bytes: LocalCounts::new(FRAME_BYTES_BUCKETS),
        }
    }

    /// One frame fanned out `latency_ms` after its publish, `bytes` long.
    #[inline]
    pub fn record(&self, latency_ms: u64, bytes: usize) {
        self.latency
            .add(LATENCY_BUCKETS, latency_ms as f64 / 1000.0, latency_ms);
        self.bytes
            .add(FRAME_BYTES_BUCKETS, bytes as f64, bytes as u64);
    }

    /// Adds this worker's counts to the tier's (once a second).
    pub fn flush(&self) {
        self.latency.flush(&self.shared.latency);
        self.bytes.flush(&self.shared.bytes);
    }
}

/// A family's name, HELP, bounds, units per rendered unit, and counts.
type Family = (
    &'static str,
    &'static str,
    &'static [f64],
    f64,
    fn(&Shared) -> &Counts,
);

/// Appends both families, every tier seen so far, in the text format the
/// recorder writes (HELP, TYPE, cumulative `_bucket`s with `+Inf`, `_sum`,
/// `_count`).
pub fn render(out: &mut String) {
    let tiers = TIERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if tiers.is_empty() {
        return;
    }
    let families: [Family; 2] = [
        (LATENCY, LATENCY_HELP, LATENCY_BUCKETS, 1000.0, |s| {
            &s.latency
        }),
        (BYTES, BYTES_HELP, FRAME_BYTES_BUCKETS, 1.0, |s| &s.bytes),
    ];
    for (name, help, bounds, per_unit, counts) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for s in &tiers {
            let c = counts(s);
            let tier = &s.tier;
            let mut total = 0u64;
            for (i, n) in c.buckets.iter().enumerate() {
                total = total.saturating_add(n.load(Ordering::Relaxed));
                let le = match bounds.get(i) {
                    Some(b) => b.to_string(),
                    None => "+Inf".to_string(),
                };
                let _ = writeln!(out, "{name}_bucket{{tier=\"{tier}\",le=\"{le}\"}} {total}");
            }
            let sum = c.sum.load(Ordering::Relaxed) as f64 / per_unit;
            let _ = writeln!(out, "{name}_sum{{tier=\"{tier}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{tier=\"{tier}\"}} {total}");
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix} in\n{text}"))
    }

    #[test]
    fn frames_land_in_their_buckets_once_flushed() {
        let tier = "frames-test-tier";
        let a = Local::new(tier);
        let b = Local::new(tier);
        a.record(0, 100); // le 0.001, le 128
        a.record(1, 128); // on the bounds: le 0.001, le 128
        b.record(3, 600); // le 0.005, le 2048
        b.record(60_000, 10 << 20); // past the last bounds: +Inf both
        let mut before = String::new();
        render(&mut before);
        assert!(before.contains(&format!("{LATENCY}_count{{tier=\"{tier}\"}} 0")));
        a.flush();
        b.flush();
        let mut text = String::new();
        render(&mut text);
        let l = |suffix: &str| line(&text, &format!("{LATENCY}{suffix}")).to_string();
        let by = |suffix: &str| line(&text, &format!("{BYTES}{suffix}")).to_string();
        let t = format!("tier=\"{tier}\"");
        assert_eq!(
            l(&format!("_bucket{{{t},le=\"0.001\"}}")),
            format!("{LATENCY}_bucket{{{t},le=\"0.001\"}} 2")
        );
        assert!(l(&format!("_bucket{{{t},le=\"0.0025\"}}")).ends_with(" 2"));
        assert!(l(&format!("_bucket{{{t},le=\"0.005\"}}")).ends_with(" 3"));
        assert!(l(&format!("_bucket{{{t},le=\"10\"}}")).ends_with(" 3"));
        assert!(l(&format!("_bucket{{{t},le=\"+Inf\"}}")).ends_with(" 4"));
        assert!(l(&format!("_sum{{{t}}}")).ends_with(" 60.004"));
        assert!(l(&format!("_count{{{t}}}")).ends_with(" 4"));
        assert!(by(&format!("_bucket{{{t},le=\"128\"}}")).ends_with(" 2"));
        assert!(by(&format!("_bucket{{{t},le=\"2048\"}}")).ends_with(" 3"));
        assert!(by(&format!("_bucket{{{t},le=\"8388608\"}}")).ends_with(" 3"));
        assert!(by(&format!("_bucket{{{t},le=\"+Inf\"}}")).ends_with(" 4"));
        assert!(
            by(&format!("_sum{{{t}}}")).ends_with(&format!(" {}", 100 + 128 + 600 + (10 << 20)))
        );
        assert_eq!(
            text.matches(&format!("# TYPE {LATENCY} histogram")).count(),
            1
        );
        // flushed counts are not counted twice
        a.flush();
        let mut again = String::new();
        render(&mut again);
        assert!(line(&again, &format!("{LATENCY}_count{{{t}}}")).ends_with(" 4"));
    }
}
