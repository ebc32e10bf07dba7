//! The config loader: `config::Settings::from_toml` on arbitrary UTF-8
//! (seeded with config/*.toml, with a dictionary of SPEC §6 keys).
//! Any text is either a `Settings` or an error with a position inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::config::{MAX_WORKERS, Settings};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match Settings::from_toml(src) {
        Ok(s) => {
            assert!(!s.tiers.is_empty());
            assert!(s.workers >= 1 && s.workers <= MAX_WORKERS);
            assert!(s.anonymous_tier < s.tiers.len());
            assert!((1..=30).contains(&s.heartbeat_s));
            for t in &s.tiers {
                assert_eq!(s.cadences[t.cadence], t.coalesce_ms);
            }
            for k in &s.keys {
                assert!(k.tier < s.tiers.len());
            }
            for r in &s.topics {
                assert!(r.tiers.iter().all(|&t| t < s.tiers.len()));
                assert!(r.filters.iter().all(|&(_, i)| i < r.fields.len()));
            }
            assert!(!s.token_secret.is_empty());
        }
        Err(e) => {
            assert!(e.line >= 1 && e.column >= 1);
            assert!(e.line <= src.lines().count().max(1) + 1, "{e}");
            let _ = e.to_string();
        }
    }
});
