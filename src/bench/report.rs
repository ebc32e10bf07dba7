//! `sluice bench`'s report: the [`Summary`] of a run, as text for a person
//! or as one JSON object for scripts.
//!
//! Cold: runs once, at the end.

/// The summary of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub connections: usize,
    pub established: u64,
    pub failed: u64,
    pub fail_reasons: Vec<(String, u64)>,
    pub open_at_end: u64,
    /// Seconds from start until every connection had two events (`None`:
    /// some never did).
    pub all_ready_s: Option<f64>,
    pub events: u64,
    pub bytes: u64,
    pub window_s: f64,
    pub events_per_s: f64,
    pub lat_ms: [f64; 6],
    pub lat_count: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub reconnects: u64,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_late: u64,
    pub cpu_s: f64,
    pub threads: usize,
}

impl Summary {
    pub fn events_per_cpu_s(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.events as f64 / self.cpu_s
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> String {
        let reasons: Vec<String> = self
            .fail_reasons
            .iter()
            .map(|(r, n)| format!("\"{}\":{n}", r.replace('"', "'")))
            .collect();
        format!(
            concat!(
                "{{\"tool\":\"sluice-bench\",\"connections\":{},\"established\":{},\"failed\":{},",
                "\"fail_reasons\":{{{}}},\"open_at_end\":{},\"all_ready_s\":{},\"events\":{},\"bytes\":{},\"window_s\":{:.3},",
                "\"events_per_s\":{:.1},\"lat_ms\":{{\"count\":{},\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},",
                "\"p999\":{:.3},\"max\":{:.3},\"mean\":{:.3}}},\"gaps\":{},\"duplicates\":{},\"reconnects\":{},",
                "\"published\":{},\"publish_errors\":{},\"publish_late\":{},\"cpu_s\":{:.3},",
                "\"events_per_cpu_s\":{:.0},\"threads\":{}}}"
            ),
            self.connections,
            self.established,
            self.failed,
            reasons.join(","),
            self.open_at_end,
            self.all_ready_s
                .map_or("null".to_string(), |s| format!("{s:.3}")),
            self.events,
            self.bytes,
            self.window_s,
            self.events_per_s,
            self.lat_count,
            self.lat_ms[0],
            self.lat_ms[1],
            self.lat_ms[2],
            self.lat_ms[3],
            self.lat_ms[4],
            self.lat_ms[5],
            self.gaps,
            self.duplicates,
            self.reconnects,
            self.published,
            self.publish_errors,
            self.publish_late,
            self.cpu_s,
            self.events_per_cpu_s(),
            self.threads,
        )
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "connections  {} asked, {} established, {} failed, {} open at the end\n",
            self.connections, self.established, self.failed, self.open_at_end
        ));
        for (r, n) in &self.fail_reasons {
            s.push_str(&format!("  failed: {r} ×{n}\n"));
        }
        if let Some(t) = self.all_ready_s {
            s.push_str(&format!(
                "ready        every connection had its first two events after {t:.3} s\n"
            ));
        }
        s.push_str(&format!(
            "events       {} in {:.1} s = {:.0}/s, {:.1} MB\n",
            self.events,
            self.window_s,
            self.events_per_s,
            self.bytes as f64 / 1e6
        ));
        if self.lat_count > 0 {
            s.push_str(&format!(
                "latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} samples on probe connections)\n",
                self.lat_ms[0], self.lat_ms[1], self.lat_ms[2], self.lat_ms[3], self.lat_ms[4], self.lat_count
            ));
        }
        s.push_str(&format!(
            "stream       {} gaps, {} duplicates, {} reconnects\n",
            self.gaps, self.duplicates, self.reconnects
        ));
        if self.published > 0 || self.publish_errors > 0 {
            s.push_str(&format!(
                "publish      {} sent, {} errors, {} late by >1 ms\n",
                self.published, self.publish_errors, self.publish_late
            ));
        }
        s.push_str(&format!(
            "bench cpu    {:.2} s on {} threads = {:.0} events per CPU second\n",
            self.cpu_s,
            self.threads,
            self.events_per_cpu_s()
        ));
        s
    }
}
