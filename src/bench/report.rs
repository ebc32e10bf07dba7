//! `sluice bench`'s report: the [`Summary`] of a run, as text for a person
//! or as one JSON object for scripts, and its verdict
//! ([`Summary::problems`]: what makes the run fail).
//!
//! Cold: runs once, at the end.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Bars of the latency histogram (as oha draws it: equal widths from the
/// lowest sample to the highest).
pub const HISTOGRAM_BARS: usize = 11;
/// Characters of the longest bar in the text report.
const BAR_WIDTH: u64 = 40;

/// Percentiles of a histogram of µs, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Quantiles {
    /// The percentiles of `h` (µs); all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Quantiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Quantiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"count\":{},\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3},\"mean\":{:.3}}}",
            self.count, self.p50, self.p90, self.p99, self.p999, self.max, self.mean
        )
    }
}

/// One bar of a histogram: the samples above the previous bar's bound and
/// up to `le_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub le_ms: f64,
    pub count: u64,
}

/// `h` (µs) as [`HISTOGRAM_BARS`] bars of equal width from its lowest to
/// its highest sample (one bar when they are equal, none when it is empty).
pub fn bars(h: &Histogram<u64>) -> Vec<Bar> {
    if h.is_empty() {
        return Vec::new();
    }
    let (lo, hi) = (h.min(), h.max());
    let n = if hi > lo { HISTOGRAM_BARS } else { 1 };
    let width = (hi - lo) as f64 / n as f64;
    let mut out: Vec<Bar> = (1..=n)
        .map(|i| Bar {
            le_ms: (lo as f64 + width * i as f64) / 1000.0,
            count: 0,
        })
        .collect();
    for v in h.iter_recorded() {
        let value = v.value_iterated_to().clamp(lo, hi);
        let i = if width > 0.0 {
            (((value - lo) as f64 / width).ceil() as usize).saturating_sub(1)
        } else {
            0
        };
        out[i.min(n - 1)].count += v.count_at_value();
    }
    out
}

/// The summary of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub connections: usize,
    pub established: u64,
    /// Streams whose first attempt failed (they are not retried).
    pub failed: u64,
    pub fail_reasons: Vec<(String, u64)>,
    /// Errors of opened streams: failed reads and failed reconnects.
    pub errors: u64,
    pub error_reasons: Vec<(String, u64)>,
    /// From connect to a `200` response head, over every stream opened.
    pub connect_ms: Quantiles,
    pub open_at_end: u64,
    /// Seconds from start until every connection had two events (`None`:
    /// some never did).
    pub all_ready_s: Option<f64>,
    pub events: u64,
    /// Bytes of SSE received (de-chunked).
    pub bytes: u64,
    pub window_s: f64,
    pub events_per_s: f64,
    pub mb_per_s: f64,
    /// Publish-to-receive latency of live updates on probe connections.
    pub lat_ms: Quantiles,
    pub lat_hist: Vec<Bar>,
    /// Events on probes whose `ts_ns` was left out of the latency: initial
    /// states, and rows published before their connection was opened.
    pub lat_excluded: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub reconnects: u64,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_late: u64,
    pub cpu_s: f64,
    pub threads: usize,
    /// `--max-errors-pct`.
    pub max_errors_pct: f64,
}

/// `n` as a percentage of `of` (0 when `of` is 0).
fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

fn json_reasons(reasons: &[(String, u64)]) -> String {
    let items: Vec<String> = reasons
        .iter()
        .map(|(r, n)| format!("\"{}\":{n}", r.replace(['"', '\\'], "'")))
        .collect();
    format!("{{{}}}", items.join(","))
}

impl Summary {
    pub fn events_per_cpu_s(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.events as f64 / self.cpu_s
        } else {
            0.0
        }
    }

    /// Error percentages: of connections that failed to open, of errors
    /// per opened connection, and of publishes that failed.
    pub fn error_pct(&self) -> [(&'static str, f64); 3] {
        [
            ("connect", pct(self.failed, self.connections as u64)),
            ("stream", pct(self.errors, self.established)),
            (
                "publish",
                pct(self.publish_errors, self.published + self.publish_errors),
            ),
        ]
    }

    /// Why the run failed; empty when it passed. It fails when no
    /// connection was established, or when an error percentage passes
    /// `--max-errors-pct`.
    pub fn problems(&self) -> Vec<String> {
        let max = self.max_errors_pct;
        let mut out = Vec::new();
        if self.established == 0 {
            let why: Vec<String> = self
                .fail_reasons
                .iter()
                .map(|(r, n)| format!("{r} ×{n}"))
                .collect();
            out.push(format!(
                "no connection was established ({} of {} failed: {})",
                self.failed,
                self.connections,
                if why.is_empty() {
                    "none tried".to_string()
                } else {
                    why.join(", ")
                }
            ));
        }
        for (class, p) in self.error_pct() {
            if p <= max || (class == "connect" && self.established == 0) {
                continue;
            }
            out.push(match class {
                "connect" => format!(
                    "{} of {} connections failed to open ({p:.1}% > --max-errors-pct {max})",
                    self.failed, self.connections
                ),
                "stream" => format!(
                    "{} errors on {} open connections ({p:.1}% > --max-errors-pct {max})",
                    self.errors, self.established
                ),
                _ => format!(
                    "{} of {} publishes failed ({p:.1}% > --max-errors-pct {max})",
                    self.publish_errors,
                    self.published + self.publish_errors
                ),
            });
        }
        out
    }

    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(1024);
        let _ = write!(
            s,
            "{{\"tool\":\"sluice-bench\",\"connections\":{},\"established\":{},\"failed\":{},\
             \"fail_reasons\":{},\"errors\":{},\"error_reasons\":{},\"connect_ms\":{},\
             \"open_at_end\":{},\"all_ready_s\":{},\"events\":{},\"bytes\":{},\"window_s\":{:.3},\
             \"events_per_s\":{:.1},\"mb_per_s\":{:.3},\"lat_ms\":{},\"lat_excluded\":{},\"lat_hist\":[",
            self.connections,
            self.established,
            self.failed,
            json_reasons(&self.fail_reasons),
            self.errors,
            json_reasons(&self.error_reasons),
            self.connect_ms.json(),
            self.open_at_end,
            self.all_ready_s
                .map_or("null".to_string(), |s| format!("{s:.3}")),
            self.events,
            self.bytes,
            self.window_s,
            self.events_per_s,
            self.mb_per_s,
            self.lat_ms.json(),
            self.lat_excluded,
        );
        for (i, b) in self.lat_hist.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}{{\"le_ms\":{:.3},\"count\":{}}}", b.le_ms, b.count);
        }
        let _ = write!(
            s,
            "],\"gaps\":{},\"duplicates\":{},\"reconnects\":{},\"published\":{},\
             \"publish_errors\":{},\"publish_late\":{},\"cpu_s\":{:.3},\
             \"events_per_cpu_s\":{:.0},\"threads\":{},\"max_errors_pct\":{},\"error_pct\":{{",
            self.gaps,
            self.duplicates,
            self.reconnects,
            self.published,
            self.publish_errors,
            self.publish_late,
            self.cpu_s,
            self.events_per_cpu_s(),
            self.threads,
            self.max_errors_pct,
        );
        for (i, (class, p)) in self.error_pct().iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}\"{class}\":{p:.3}");
        }
        let problems = self.problems();
        let _ = write!(s, "}},\"ok\":{},\"problems\":[", problems.is_empty());
        for (i, p) in problems.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}\"{}\"", p.replace(['"', '\\'], "'"));
        }
        s.push_str("]}");
        s
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "connections  {} asked, {} established, {} failed, {} open at the end",
            self.connections, self.established, self.failed, self.open_at_end
        );
        for (r, n) in &self.fail_reasons {
            let _ = writeln!(s, "  failed: {r} ×{n}");
        }
        let c = &self.connect_ms;
        if c.count > 0 {
            let _ = writeln!(
                s,
                "connect ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  ({} opened: TCP connect to response head)",
                c.p50, c.p90, c.p99, c.max, c.count
            );
        }
        if let Some(t) = self.all_ready_s {
            let _ = writeln!(
                s,
                "ready        every connection had its first two events after {t:.3} s"
            );
        }
        let _ = writeln!(
            s,
            "events       {} in {:.1} s = {:.0}/s, {:.1} MB = {:.2} MB/s",
            self.events,
            self.window_s,
            self.events_per_s,
            self.bytes as f64 / 1e6,
            self.mb_per_s
        );
        let l = &self.lat_ms;
        if l.count > 0 {
            let _ = writeln!(
                s,
                "latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} live updates on probe connections)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count
            );
            let top = self.lat_hist.iter().map(|b| b.count).max().unwrap_or(0);
            for b in &self.lat_hist {
                let bar = (b.count * BAR_WIDTH).checked_div(top).unwrap_or(0) as usize;
                let _ = writeln!(
                    s,
                    "  {:>10.3} [{:>7}] |{}",
                    b.le_ms,
                    b.count,
                    "■".repeat(bar)
                );
            }
        }
        if self.lat_excluded > 0 {
            let _ = writeln!(
                s,
                "  ({} stale rows left out: initial states, replays)",
                self.lat_excluded
            );
        }
        let _ = writeln!(
            s,
            "stream       {} gaps, {} duplicates, {} reconnects, {} errors",
            self.gaps, self.duplicates, self.reconnects, self.errors
        );
        for (r, n) in &self.error_reasons {
            let _ = writeln!(s, "  error: {r} ×{n}");
        }
        if self.published > 0 || self.publish_errors > 0 {
            let _ = writeln!(
                s,
                "publish      {} sent, {} errors, {} late by >1 ms",
                self.published, self.publish_errors, self.publish_late
            );
        }
        let _ = writeln!(
            s,
            "bench cpu    {:.2} s on {} threads = {:.0} events per CPU second",
            self.cpu_s,
            self.threads,
            self.events_per_cpu_s()
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn bars_split_the_range_evenly_and_hold_every_sample() {
        assert!(bars(&hist(&[])).is_empty());
        let one = bars(&hist(&[500, 500]));
        assert_eq!(
            one,
            [Bar {
                le_ms: 0.5,
                count: 2
            }]
        );
        // 100..=1200 µs: eleven bars 100 µs wide
        let b = bars(&hist(&[100, 150, 200, 650, 1200, 1200]));
        assert_eq!(b.len(), HISTOGRAM_BARS);
        assert_eq!(
            b[0],
            Bar {
                le_ms: 0.2,
                count: 3
            },
            "{b:?}"
        );
        assert_eq!(b[5].count, 1, "650 µs is in (600, 700]: {b:?}");
        assert_eq!(
            b[10],
            Bar {
                le_ms: 1.2,
                count: 2
            }
        );
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), 6);
    }

    fn summary() -> Summary {
        Summary {
            connections: 100,
            established: 100,
            failed: 0,
            fail_reasons: Vec::new(),
            errors: 0,
            error_reasons: Vec::new(),
            connect_ms: Quantiles::default(),
            open_at_end: 100,
            all_ready_s: None,
            events: 0,
            bytes: 0,
            window_s: 1.0,
            events_per_s: 0.0,
            mb_per_s: 0.0,
            lat_ms: Quantiles::default(),
            lat_hist: Vec::new(),
            lat_excluded: 0,
            gaps: 0,
            duplicates: 0,
            reconnects: 0,
            published: 0,
            publish_errors: 0,
            publish_late: 0,
            cpu_s: 0.0,
            threads: 1,
            max_errors_pct: 1.0,
        }
    }

    #[test]
    fn a_run_fails_past_the_error_threshold_or_without_any_connection() {
        let ok = summary();
        assert!(ok.problems().is_empty());
        let at_threshold = Summary {
            established: 99,
            failed: 1,
            published: 99,
            publish_errors: 1,
            ..summary()
        };
        assert!(at_threshold.problems().is_empty(), "1% is not above 1%");
        let failed = Summary {
            established: 98,
            failed: 2,
            ..summary()
        };
        assert_eq!(failed.problems().len(), 1, "{:?}", failed.problems());
        let read_errors = Summary {
            errors: 5,
            ..summary()
        };
        assert!(read_errors.problems()[0].contains("5 errors on 100 open connections"));
        let publish = Summary {
            published: 10,
            publish_errors: 1,
            ..summary()
        };
        assert!(publish.problems()[0].contains("1 of 11 publishes failed"));
        let none = Summary {
            established: 0,
            failed: 100,
            fail_reasons: vec![("connect: connection refused".into(), 100)],
            ..summary()
        };
        assert_eq!(
            none.problems(),
            ["no connection was established (100 of 100 failed: connect: connection refused ×100)"]
        );
        let lenient = Summary {
            max_errors_pct: 100.0,
            ..none
        };
        assert_eq!(lenient.problems().len(), 1, "no connection fails any run");
    }

    #[test]
    fn the_json_summary_is_valid_and_carries_the_verdict() {
        let mut s = Summary {
            failed: 3,
            fail_reasons: vec![("status \"400\"".into(), 3)],
            lat_hist: vec![Bar {
                le_ms: 1.0,
                count: 2,
            }],
            ..summary()
        };
        s.established = 97;
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).expect("valid JSON");
        assert_eq!(v["ok"], false);
        assert_eq!(v["problems"].as_array().unwrap().len(), 1);
        assert_eq!(v["error_pct"]["connect"], 3.0);
        assert_eq!(v["fail_reasons"]["status '400'"], 3);
        assert_eq!(v["lat_hist"][0]["count"], 2);
        assert_eq!(v["connect_ms"]["count"], 0);
    }
}
