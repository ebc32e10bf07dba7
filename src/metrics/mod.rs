//! Metrics (`GET /metrics`, Prometheus text): the `metrics` facade with the
//! Prometheus recorder, rendered by our own handler (no second HTTP server),
//! then the standard `process_*` families.
//!
//! Hot paths never look a metric up: each worker builds its handles
//! ([`WorkerCounters`]) once, counts in plain `Cell`s and flushes them once
//! a second on its tick; the fan-out adds to its two histograms once per
//! frame per cadence, never per connection, in cells of its own as well
//! (`frames`, which writes those two families). Names follow
//! `sluice_<area>_<what>_<unit>`; counters end in `_total`. Every family has
//! HELP and TYPE. Labels are bounded: tier and source names
//! from the config, status codes, close reasons, worker ids; never a topic,
//! never a key's secret.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::sync::OnceLock;

use metrics::{Counter, Gauge, Unit, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::Settings;
use crate::server::access::CloseReason;

mod frames;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// Unix time (s) when the recorder was installed, as the server started:
/// `process_start_time_seconds` (the unit's `ProcSubset=pid` hides
/// /proc/stat, whose boot time the kernel's start tick would need).
static STARTED: OnceLock<f64> = OnceLock::new();

/// Buckets of `sluice_sse_publish_latency_seconds` (the frames' stamps are
/// in milliseconds: the first bucket holds every frame fanned out within
/// the millisecond it was published).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of `sluice_sse_frame_bytes`.
pub const FRAME_BYTES_BUCKETS: &[f64] = &[
    128.0, 512.0, 2048.0, 8192.0, 32768.0, 131072.0, 524288.0, 2097152.0, 8388608.0,
];

/// Installs the global recorder and describes every family (once per
/// process; later calls do nothing). The recorder holds no histogram (the
/// two there are, `frames` counts), so nothing needs its upkeep thread.
pub fn install() {
    STARTED.get_or_init(|| crate::time::unix_millis() as f64 / 1000.0);
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle());
        describe();
        gauge!("sluice_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        for result in ["ok", "error"] {
            counter!("sluice_reloads_total", "result" => result).increment(0);
        }
        handle
    });
}

/// HELP and TYPE of every family.
fn describe() {
    describe_counter!(
        "sluice_http_responses_total",
        "HTTP responses sent, by status (stream heads count as 200)."
    );
    describe_counter!(
        "sluice_http_refused_total",
        "Requests refused, by SPEC error code (bad_request, unauthorized, ...)."
    );
    describe_counter!(
        "sluice_publish_updates_total",
        "Updates published, by source (http, demo, or a [[sources]] name)."
    );
    describe_counter!(
        "sluice_publish_rows_total",
        "Rows published, by source (http, demo, or a [[sources]] name)."
    );
    describe_counter!(
        "sluice_sse_frames_delivered_total",
        "Update frames queued on streams, by tier."
    );
    describe_counter!("sluice_sse_streams_total", "SSE streams opened, by tier.");
    describe_counter!(
        "sluice_sse_stream_closes_total",
        "SSE streams closed, by tier and reason."
    );
    describe_gauge!(
        "sluice_sse_streams_open",
        "Open SSE streams, by tier (updated once a second)."
    );
    describe_counter!(
        "sluice_sse_slow_consumers_total",
        "Streams closed because their client did not keep up."
    );
    describe_counter!(
        "sluice_sse_written_bytes_total",
        Unit::Bytes,
        "Bytes written to SSE streams (heads, frames, heartbeats)."
    );
    // sluice_sse_publish_latency_seconds and sluice_sse_frame_bytes: in
    // `frames`, which writes their HELP and TYPE.
    describe_counter!(
        "sluice_ring_lag_resyncs_total",
        "Times a worker fell a whole ring behind and resent initial states."
    );
    describe_gauge!(
        "sluice_ring_lag_frames",
        "Most frames a worker found waiting in one ring at a fan-out during the last second, by worker."
    );
    describe_gauge!("sluice_connections_open", "Open client connections.");
    describe_gauge!("sluice_hub_topics", "Topics held by the node.");
    describe_gauge!("sluice_workers_up", "Workers whose accept loop runs.");
    describe_counter!(
        "sluice_reloads_total",
        "Configuration reloads (SIGHUP), by result."
    );
    describe_gauge!(
        "sluice_build_info",
        "The running build: always 1, labelled by version."
    );
}

/// The Prometheus text of every metric.
pub fn render() -> String {
    let mut out = HANDLE.get().map(|h| h.render()).unwrap_or_default();
    frames::render(&mut out);
    render_process(&mut out);
    out
}

/// Counts one refused request by its SPEC code (and its status).
pub fn refused(e: &crate::server::http::ApiError) {
    http_response(e.status());
    counter!("sluice_http_refused_total", "code" => e.code()).increment(1);
}

thread_local! {
    /// This thread's handles of `sluice_http_responses_total`, by status (a
    /// lookup in the registry hashes the key and allocates its label; a
    /// publish answered 202 did that per request).
    static RESPONSES: RefCell<Vec<(u16, Counter)>> = const { RefCell::new(Vec::new()) };
    /// This thread's handles of the publish counters, by source.
    static PUBLISHED: RefCell<Vec<(Box<str>, [Counter; 2])>> = const { RefCell::new(Vec::new()) };
}

/// Counts one HTTP response by status.
pub fn http_response(status: u16) {
    RESPONSES.with_borrow_mut(|cache| {
        if let Some((_, c)) = cache.iter().find(|(s, _)| *s == status) {
            c.increment(1);
            return;
        }
        let c = counter!("sluice_http_responses_total", "status" => status.to_string());
        c.increment(1);
        cache.push((status, c));
    });
}

/// Counts one accepted publish by its source (`http`, `demo`, or a
/// configured source's name: a bounded set).
pub fn published(source: &str, rows: usize) {
    PUBLISHED.with_borrow_mut(|cache| {
        let i = match cache.iter().position(|(s, _)| &**s == source) {
            Some(i) => i,
            None => {
                let label = source.to_string();
                cache.push((
                    source.into(),
                    [
                        counter!("sluice_publish_updates_total", "source" => label.clone()),
                        counter!("sluice_publish_rows_total", "source" => label),
                    ],
                ));
                cache.len() - 1
            }
        };
        let [updates, rows_total] = &cache[i].1;
        updates.increment(1);
        rows_total.increment(rows as u64);
    });
}

/// Counts one configuration reload (the reload's own code calls it).
pub fn reloaded(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter!("sluice_reloads_total", "result" => result).increment(1);
}

/// Node-level gauges, set when `/metrics` is rendered.
pub fn set_node_gauges(connections: usize, topics: usize, workers_up: usize) {
    gauge!("sluice_connections_open").set(connections as f64);
    gauge!("sluice_hub_topics").set(topics as f64);
    gauge!("sluice_workers_up").set(workers_up as f64);
}

/// One tier's counts on one worker, and their handles.
struct TierCounters {
    frames: Cell<u64>,
    opened: Cell<u64>,
    closed: [Cell<u64>; CloseReason::ALL.len()],
    frames_h: Counter,
    streams_h: Counter,
    open_h: Gauge,
    closes_h: [Counter; CloseReason::ALL.len()],
    /// `sluice_sse_publish_latency_seconds` and `sluice_sse_frame_bytes`.
    hists: frames::Local,
}

impl TierCounters {
    fn new(tier: &str) -> TierCounters {
        let t = tier.to_string();
        TierCounters {
            frames: Cell::new(0),
            opened: Cell::new(0),
            closed: Default::default(),
            frames_h: counter!("sluice_sse_frames_delivered_total", "tier" => t.clone()),
            streams_h: counter!("sluice_sse_streams_total", "tier" => t.clone()),
            open_h: gauge!("sluice_sse_streams_open", "tier" => t.clone()),
            closes_h: CloseReason::ALL.map(|r| {
                counter!("sluice_sse_stream_closes_total", "tier" => t.clone(), "reason" => r.as_str())
            }),
            hists: frames::Local::new(&t),
        }
    }

    fn flush(&self) {
        self.frames_h.increment(self.frames.take());
        let opened = self.opened.take();
        self.streams_h.increment(opened);
        let mut closed = 0;
        for (c, h) in self.closed.iter().zip(&self.closes_h) {
            let n = c.take();
            closed += n;
            h.increment(n);
        }
        self.open_h.increment(opened as f64);
        self.open_h.decrement(closed as f64);
        self.hists.flush();
    }
}

/// Per-worker counts, flushed to the recorder once a second, and the
/// worker's metric handles (looked up once, when the worker starts).
pub struct WorkerCounters {
    pub lag_resyncs: Cell<u64>,
    pub slow_consumers: Cell<u64>,
    written_bytes: Cell<u64>,
    /// Most frames found waiting in one ring since the last flush.
    ring_lag: Cell<u64>,
    tiers: Box<[TierCounters]>,
    /// Per cadence (`Settings::cadences`), the tiers that read its ring.
    cadence_tiers: Box<[Box<[usize]>]>,
    lag_resyncs_h: Counter,
    slow_consumers_h: Counter,
    written_bytes_h: Counter,
    ring_lag_h: Gauge,
}

impl WorkerCounters {
    pub fn new(worker: usize, settings: &Settings) -> WorkerCounters {
        let cadence_tiers = (0..settings.cadences.len())
            .map(|c| {
                settings
                    .tiers
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.cadence == c)
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        WorkerCounters {
            lag_resyncs: Cell::new(0),
            slow_consumers: Cell::new(0),
            written_bytes: Cell::new(0),
            ring_lag: Cell::new(0),
            tiers: settings
                .tiers
                .iter()
                .map(|t| TierCounters::new(&t.name))
                .collect(),
            cadence_tiers,
            lag_resyncs_h: counter!("sluice_ring_lag_resyncs_total"),
            slow_consumers_h: counter!("sluice_sse_slow_consumers_total"),
            written_bytes_h: counter!("sluice_sse_written_bytes_total"),
            ring_lag_h: gauge!("sluice_ring_lag_frames", "worker" => worker.to_string()),
        }
    }

    /// One update frame queued on a stream of `tier`.
    #[inline]
    pub fn delivered(&self, tier: usize) {
        if let Some(t) = self.tiers.get(tier) {
            t.frames.set(t.frames.get() + 1);
        }
    }

    /// One frame of `cadence`'s ring fanned out by this worker, `latency_ms`
    /// after its publish (or tick), `bytes` long. Once per frame, never per
    /// connection.
    pub fn fanned_out(&self, cadence: usize, latency_ms: u64, bytes: usize) {
        let Some(tiers) = self.cadence_tiers.get(cadence) else {
            return;
        };
        for &t in tiers.iter() {
            self.tiers[t].hists.record(latency_ms, bytes);
        }
    }

    /// A fan-out found `frames` waiting in a ring.
    #[inline]
    pub fn ring_backlog(&self, frames: u64) {
        if frames > self.ring_lag.get() {
            self.ring_lag.set(frames);
        }
    }

    /// `n` bytes written to a stream.
    #[inline]
    pub fn written(&self, n: usize) {
        self.written_bytes
            .set(self.written_bytes.get().saturating_add(n as u64));
    }

    /// A stream of `tier` opened.
    pub fn stream_opened(&self, tier: usize) {
        if let Some(t) = self.tiers.get(tier) {
            t.opened.set(t.opened.get() + 1);
        }
    }

    /// A stream of `tier` closed for `reason`.
    pub fn stream_closed(&self, tier: usize, reason: CloseReason) {
        if let Some(t) = self.tiers.get(tier) {
            let c = &t.closed[reason as usize];
            c.set(c.get() + 1);
        }
    }

    pub fn flush(&self) {
        self.lag_resyncs_h.increment(self.lag_resyncs.take());
        self.slow_consumers_h.increment(self.slow_consumers.take());
        self.written_bytes_h.increment(self.written_bytes.take());
        self.ring_lag_h.set(self.ring_lag.take() as f64);
        for t in self.tiers.iter() {
            t.flush();
        }
    }
}

/// The process's resources, read from /proc when rendered.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
}

/// The clock tick of /proc's times (`USER_HZ`, what `sysconf(_SC_CLK_TCK)`
/// answers on x86-64 and aarch64 Linux).
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    /// Reads /proc/self (None where /proc is not there).
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let mut s = ProcessStats {
            cpu_seconds: cpu_seconds(&stat)?,
            start_time_seconds: *STARTED.get_or_init(|| crate::time::unix_millis() as f64 / 1000.0),
            ..ProcessStats::default()
        };
        s.resident_bytes = status_kib(&status, "VmRSS:").unwrap_or(0) * 1024;
        s.virtual_bytes = status_kib(&status, "VmSize:").unwrap_or(0) * 1024;
        s.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        s.max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(0);
        Some(s)
    }
}

/// CPU seconds (user + system, every thread) from `/proc/self/stat`:
/// fields 14 and 15, counted after the command name, which may itself hold
/// spaces and parentheses.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // field 3 (state) is the first after the name
    let mut f = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime.saturating_add(stime) as f64 / USER_HZ)
}

/// A `kB` line of `/proc/self/status`.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// The standard `process_*` families (names as every Prometheus client
/// library writes them, so that stock dashboards work). Written here: the
/// facade has no float counter for `process_cpu_seconds_total`.
fn render_process(out: &mut String) {
    let Some(s) = ProcessStats::read() else {
        return;
    };
    let families: [(&str, &str, &str, String); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            format!("{}", s.cpu_seconds),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            s.resident_bytes.to_string(),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            s.virtual_bytes.to_string(),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            s.open_fds.to_string(),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            s.max_fds.to_string(),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            format!("{}", s.start_time_seconds),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_after_a_command_name_with_spaces() {
        // pid (comm) state ppid ... utime(14) stime(15) ...
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 9 0 1000 123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(cpu_seconds(stat), Some(4.0));
        assert_eq!(cpu_seconds("42 (x) S 1"), None);
        let status = "Name:\tsluice\nVmSize:\t  123456 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(4096));
        assert_eq!(status_kib(status, "VmSize:"), Some(123_456));
    }

    #[test]
    fn this_process_reads_its_own_stats() {
        let s = ProcessStats::read().expect("/proc is there");
        assert!(s.resident_bytes > 0 && s.open_fds >= 3 && s.max_fds >= s.open_fds);
        assert!(s.start_time_seconds > 1.0e9, "{s:?}");
    }
}
