//! The coalescer's clock: one tick per coalesced cadence (a tier's
//! `coalesce_ms`), aligned to the wall clock so that every topic of a tier
//! flushes at the same instants (`unix ms % coalesce_ms == 0`), whatever
//! the publish rate.
//!
//! Cold module: it runs `Hub::flush_cadence` once per tick, which builds one
//! frame per changed topic (not per subscriber, not per update). The clock is
//! injected (`Coalescer::run_due(now_ms)`), so tests drive it without sleeps;
//! [`spawn`] runs it on its own thread against the real clock, with the
//! hub's once-a-second sweep (`Hub::sweep`: unused encoded states, idle
//! topics) between ticks.

use std::sync::Arc;
use std::time::Duration;

use super::Hub;
use crate::time::unix_millis;

/// Ticks of every coalesced cadence.
pub struct Coalescer {
    /// (cadence index, interval ms, next tick in unix ms)
    due: Vec<(usize, u64, u64)>,
    /// Cadence indices seen so far (the node's table only grows).
    known: usize,
}

impl Coalescer {
    pub fn new(cadences: &[u32], now_ms: u64) -> Coalescer {
        let mut co = Coalescer {
            due: Vec::new(),
            known: 0,
        };
        co.extend(cadences, now_ms);
        co
    }

    /// Starts ticking the cadences a reload appended to the node's table
    /// (`cadences` extends the one this was made from).
    pub fn extend(&mut self, cadences: &[u32], now_ms: u64) {
        for (c, &ms) in cadences.iter().enumerate().skip(self.known) {
            if ms > 0 {
                let ms = u64::from(ms);
                self.due.push((c, ms, next_tick(now_ms, ms)));
            }
        }
        self.known = self.known.max(cadences.len());
    }

    /// Flushes every cadence whose tick has come, and returns when the next
    /// tick is due (unix ms).
    pub fn run_due(&mut self, hub: &Hub, now_ms: u64) -> u64 {
        let mut next = u64::MAX;
        for (c, ms, due) in self.due.iter_mut() {
            if now_ms >= *due {
                // Frames carry the tick's own instant, so every topic of a
                // tier flushed by one tick has the same timestamp.
                hub.flush_cadence(*c, now_ms - now_ms % *ms);
                *due = next_tick(now_ms, *ms);
            }
            next = next.min(*due);
        }
        next
    }
}

/// The first multiple of `interval` after `now`.
fn next_tick(now_ms: u64, interval_ms: u64) -> u64 {
    (now_ms / interval_ms + 1) * interval_ms
}

/// Milliseconds between two runs of `Hub::sweep`.
pub const SWEEP_MS: u64 = 1000;

/// Runs the coalescer on its own thread until the hub drains. It runs even
/// when no tier coalesces yet, since a reload may add one, and the same
/// thread runs the hub's once-a-second sweep.
pub fn spawn(hub: Arc<Hub>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut co = Coalescer::new(&hub.cadences(), unix_millis());
    std::thread::Builder::new()
        .name("sluice-coalesce".into())
        .spawn(move || {
            let mut next_sweep = unix_millis() + SWEEP_MS;
            while !hub.is_draining() {
                if crate::fault::injected("coalescer") {
                    panic!("injected fault (SLUICE_TEST_PANIC=coalescer)");
                }
                co.extend(&hub.cadences(), unix_millis());
                let now = unix_millis();
                let mut next = co.run_due(&hub, now);
                if now >= next_sweep {
                    hub.sweep(now);
                    next_sweep = now + SWEEP_MS;
                }
                next = next.min(next_sweep);
                let wait = next.saturating_sub(unix_millis());
                std::thread::sleep(Duration::from_millis(wait.clamp(1, 100)));
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::hub::{Read, Row, Start};

    fn hub() -> Hub {
        let s = Settings::from_toml(
            "[server]\nworkers = 1\nreplay = 64\n[auth]\nanonymous_tier = \"raw\"\n\
             [tiers.raw]\ncoalesce_ms = 0\n[tiers.half]\ncoalesce_ms = 500\n[tiers.one]\ncoalesce_ms = 1000\n\
             [[topics]]\npattern = \"k/*\"\nkey = [\"id\"]\n\
             [[topics]]\npattern = \"l/*\"\nhistory = 100\n",
        )
        .unwrap();
        Hub::new(Arc::new(s))
    }

    fn row(id: u32, v: u32) -> Row {
        Row::new(
            format!("{{\"id\":{id},\"v\":{v}}}").as_bytes(),
            &[&id.to_string()],
            &[],
        )
    }

    fn frames(hub: &Hub, name: &str, c: usize) -> Vec<String> {
        let t = hub.topic(name).unwrap();
        let ring = t.ring(c).unwrap();
        (0..ring.tail())
            .filter_map(|p| match ring.read(p) {
                Read::Frame(e) => Some(String::from_utf8(e.frame.to_vec()).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ticks_align_to_multiples_of_the_interval() {
        let h = hub();
        let mut co = Coalescer::new(&h.settings().cadences, 10_250);
        // cadences: [0, 500, 1000]
        assert_eq!(co.run_due(&h, 10_250), 10_500);
        assert_eq!(co.run_due(&h, 10_500), 11_000);
        assert_eq!(co.run_due(&h, 11_000), 11_500);
        assert_eq!(next_tick(999, 1000), 1000);
        assert_eq!(next_tick(1000, 1000), 2000);
    }

    #[test]
    fn one_frame_per_tick_with_the_latest_version_of_each_changed_key() {
        let h = hub();
        let t = h.topic("k/a").unwrap();
        let (start, _) = t.start(2, None, None); // the 1 s cadence
        assert!(matches!(start, Start::Fresh(_)));
        let mut co = Coalescer::new(&h.settings().cadences, 0);
        let mut last = 0;
        for i in 0..1000u32 {
            // 1,000 updates over one second, three keys
            last = h.publish(&t, vec![row(i % 3, i)]).unwrap();
            co.run_due(&h, u64::from(i));
        }
        assert!(frames(&h, "k/a", 2).is_empty(), "no tick yet");
        co.run_due(&h, 1000);
        let f = frames(&h, "k/a", 2);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with(&format!("event: update\nid: {last}\n")),
            "{}",
            f[0]
        );
        assert!(
            f[0].contains(r#""count":3,"#)
                && f[0].contains(r#""data":[{"id":0,"v":999},{"id":1,"v":997},{"id":2,"v":998}]"#),
            "{}",
            f[0]
        );
        // nothing changed: no frame at the next tick
        co.run_due(&h, 2000);
        assert_eq!(frames(&h, "k/a", 2).len(), 1);
        // the last frame equals the state table
        let snap = String::from_utf8(t.snapshot_json(None).to_vec()).unwrap();
        assert!(snap.ends_with(r#""data":[{"id":0,"v":999},{"id":1,"v":997},{"id":2,"v":998}]}"#));
    }

    #[test]
    fn cadences_a_reload_appends_start_ticking() {
        let h = hub();
        let mut co = Coalescer::new(&[0, 500], 0);
        assert_eq!(co.run_due(&h, 0), 500);
        co.extend(&[0, 500, 1000, 200], 100);
        assert_eq!(co.run_due(&h, 100), 200);
        assert_eq!(co.due.len(), 3);
    }

    #[test]
    fn inactive_cadences_build_nothing() {
        let h = hub();
        let t = h.topic("k/b").unwrap();
        t.start(1, None, None); // only the 0.5 s cadence is active
        let mut co = Coalescer::new(&h.settings().cadences, 0);
        h.publish(&t, vec![row(1, 1)]).unwrap();
        co.run_due(&h, 1000);
        assert!(t.ring(0).is_some(), "the raw cadence is always on");
        assert!(t.ring(2).is_none(), "nobody asked for the 1 s cadence");
        assert_eq!(frames(&h, "k/b", 1).len(), 1);
    }

    #[test]
    fn keyless_frames_carry_every_row_in_order_and_new_subscribers_get_them_once() {
        let h = hub();
        let t = h.topic("l/a").unwrap();
        t.start(1, None, None);
        let mut co = Coalescer::new(&h.settings().cadences, 0);
        h.publish(&t, vec![row(1, 1)]).unwrap();
        co.run_due(&h, 500);
        h.publish(&t, vec![row(2, 2), row(3, 3)]).unwrap();
        // a subscriber joining between ticks: its initial state holds row 1
        // only; rows 2 and 3 come with the next frame, once
        let (start, pos) = t.start(1, None, None);
        let Start::Fresh(init) = start else {
            panic!("fresh")
        };
        let init = String::from_utf8(init.to_vec()).unwrap();
        assert!(
            init.ends_with("\"data\":[{\"id\":1,\"v\":1}]}\n\n"),
            "{init}"
        );
        co.run_due(&h, 1000);
        let f = frames(&h, "l/a", 1);
        assert_eq!(f.len(), 2);
        assert_eq!(pos, 1, "the new subscriber starts at the second frame");
        assert!(
            f[1].contains(r#""data":[{"id":2,"v":2},{"id":3,"v":3}]"#),
            "{}",
            f[1]
        );
    }

    #[test]
    fn resume_in_a_coalesced_ring_replays_whole_frames_once() {
        let h = hub();
        let t = h.topic("k/c").unwrap();
        t.start(1, None, None);
        let mut co = Coalescer::new(&h.settings().cadences, 0);
        let mut ids = Vec::new();
        for tick in 1..=3u64 {
            h.publish(&t, vec![row(1, tick as u32)]).unwrap();
            co.run_due(&h, tick * 500);
            ids.push(t.stats().0);
        }
        match t.start(1, None, Some(ids[0])) {
            (Start::Replay(f), 3) => {
                assert_eq!(f.len(), 2);
                assert!(f[0].starts_with(format!("event: update\nid: {}\n", ids[1]).as_bytes()));
            }
            _ => panic!("expected a replay"),
        }
    }
}
