//! Metrics (`GET /metrics`, Prometheus text): the `metrics` facade with the
//! Prometheus recorder, rendered by our own handler (no second HTTP server).
//!
//! Hot paths never touch the facade: workers count in plain `Cell`s
//! ([`WorkerCounters`]) and flush them once a second on their tick. Names
//! follow `sluice_<area>_<what>_<unit>`; counters end in `_total`. Labels
//! carry key names and worker ids, never a secret.

use std::cell::Cell;
use std::sync::OnceLock;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder (once per process; later calls do nothing).
pub fn install() {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
    });
}

/// The Prometheus text of every metric.
pub fn render() -> String {
    HANDLE.get().map(|h| h.render()).unwrap_or_default()
}

/// Per-worker counts, flushed to the recorder once a second.
#[derive(Default)]
pub struct WorkerCounters {
    pub delivered: Cell<u64>,
    pub lag_resyncs: Cell<u64>,
    pub slow_consumers: Cell<u64>,
}

impl WorkerCounters {
    pub fn flush(&self, streams: usize) {
        counter!("sluice_sse_frames_delivered_total").increment(self.delivered.take());
        counter!("sluice_ring_lag_resyncs_total").increment(self.lag_resyncs.take());
        counter!("sluice_sse_slow_consumers_total").increment(self.slow_consumers.take());
        let _ = streams;
    }
}

/// Counts one refused request by its SPEC code (and its status).
pub fn refused(e: &crate::server::http::ApiError) {
    http_response(e.status());
    counter!("sluice_http_refused_total", "code" => e.code()).increment(1);
}

/// Counts one HTTP response by status.
pub fn http_response(status: u16) {
    counter!("sluice_http_responses_total", "status" => status.to_string()).increment(1);
}

/// Counts one accepted publish by its source (`http`, `demo`, or a
/// configured source's name: a bounded set).
pub fn published(source: &str, rows: usize) {
    counter!("sluice_publish_updates_total", "source" => source.to_string()).increment(1);
    counter!("sluice_publish_rows_total", "source" => source.to_string()).increment(rows as u64);
}

/// Node-level gauges, set when `/metrics` is rendered.
pub fn set_node_gauges(connections: usize, streams: usize, topics: usize) {
    gauge!("sluice_connections_open").set(connections as f64);
    gauge!("sluice_sse_streams_open").set(streams as f64);
    gauge!("sluice_hub_topics").set(topics as f64);
}

/// Counts one reload (`SIGHUP`) by its result: `ok`, or `error` (nothing
/// changed).
pub fn reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter!("sluice_reloads_total", "result" => result).increment(1);
}
