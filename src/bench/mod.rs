//! `sluice bench`: a wrk-style SSE load generator. It holds many SSE
//! connections on its own thread-per-core monoio runtimes (built as the
//! server's are, by `server::runtime`: io_uring, epoll where io_uring is
//! missing or `SLUICE_DRIVER=epoll`), optionally publishes at a fixed rate
//! rows that carry their send time, and reports what it received:
//! connections, events, bytes, rates, publish-to-receive latency
//! (hdrhistogram), gaps and duplicates, reconnects, and its own CPU time.
//!
//! Cold for sluice, hot for itself: per connection one read buffer and a
//! [`scan::Scanner`]; per read one pass of `memchr` and a few counters; no
//! allocation per event. `anyhow` is allowed here (STYLE.md).
//!
//! Accounting:
//! - an *event* is what an EventSource dispatches (a block with `data:`),
//!   `connected` and `initial_state` included;
//! - *latency* is taken from the first `"ts_ns":` of an event's data (the
//!   publish time in CLOCK_REALTIME ns, as written by `--publish` or the
//!   peer harness's ssepub), on probe connections only (every
//!   [`PROBE_EVERY`]th, never read-paced), and of live updates only: an
//!   `initial_state`, or a row published before its connection was opened
//!   (a replay after a reconnect), is counted in `lat_excluded` instead, so
//!   that a rerun against a topic with state does not report the age of
//!   that state;
//! - *connect time* runs from the TCP connect to a `200` response head, for
//!   every stream opened (reconnects included);
//! - *read pacing*: other connections read at most once per
//!   `--read-interval` unless a read filled the buffer. On loopback a
//!   reader's CPU goes mostly to its reads and the window-update ACKs they
//!   trigger (which the reader's thread carries through the server's TCP
//!   stack); reading several events at once is what makes the generator
//!   cheaper than the server it measures.
//! - a *duplicate* is an event whose `id:` is not above the last id seen on
//!   that stream (across its reconnects, which send `Last-Event-ID`);
//! - a *gap* is a jump in the `"seq":` of one-row events (`"count":1`) on one
//!   stream: `seq` n followed by n + k counts k − 1 missing. Rows of coalesced
//!   frames skip versions by design and are not checked. An initial state
//!   restarts the check.
//! - *errors*: streams that failed to open (`failed`), errors of opened
//!   streams (failed reads and reconnects) and failed publishes; the run
//!   fails ([`Summary::problems`], exit status 2) when no stream opened or
//!   any of the three passes `--max-errors-pct` of its total. Gaps and
//!   duplicates are reported, never fatal: a server may resync a lagging
//!   reader from its state by design.
//!
//! Layout: this file runs the threads and gathers their counts; `args`
//! parses the command line, `client` holds the SSE streams (connect, read
//! head, read body), `publisher` posts the timed rows, `scan` finds events
//! in the bytes, `report` writes the summary, and `sys` has the few system
//! calls (and the only `unsafe`).

mod args;
mod client;
mod publisher;
mod report;
pub mod scan;
mod sys;

use std::cell::RefCell;
use std::io::{IsTerminal, Write as _};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;

pub use args::{
    Args, CONNECTIONS_PER_SOURCE_IP, DEFAULT_MAX_ERRORS_PCT, DEFAULT_READ_INTERVAL_MS, USAGE, Url,
};
pub use client::PROBE_EVERY;
use client::{PACER_SLOTS, Pacer};
pub use report::{Bar, Quantiles, Summary};

use crate::server::runtime::{self, Driver};

/// Counters shared with the progress line (one set per thread, summed).
#[derive(Default)]
struct Live {
    /// Connections that have had two events (`connected` and the initial
    /// state on sluice), and when the last of them did (µs since start).
    ready: AtomicU64,
    all_ready_us: AtomicU64,
    established: AtomicU64,
    failed: AtomicU64,
    open: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// Reasons with how often each happened, in order of first occurrence.
type Reasons = Vec<(String, u64)>;

fn tally(reasons: &mut Reasons, reason: &str, n: u64) {
    match reasons.iter_mut().find(|(r, _)| r == reason) {
        Some((_, k)) => *k += n,
        None => reasons.push((reason.to_string(), n)),
    }
}

/// A histogram of µs from 1 µs to an hour, at 3 significant digits.
fn us_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What one runtime thread measured.
struct ThreadStats {
    /// Publish-to-receive latency of live updates on probes (µs).
    lat: Histogram<u64>,
    /// Events on probes whose `ts_ns` was left out of `lat`: initial
    /// states, and rows published before their connection was opened.
    lat_excluded: u64,
    /// Time from connect to a `200` head, of every stream opened (µs).
    connect: Histogram<u64>,
    gaps: u64,
    duplicates: u64,
    reconnects: u64,
    published: u64,
    publish_errors: u64,
    publish_late: u64,
    /// Why streams failed to open at their first attempt.
    fail_reasons: Reasons,
    /// Why opened streams had errors later (failed reads and reconnects).
    error_reasons: Reasons,
}

impl ThreadStats {
    fn new() -> ThreadStats {
        ThreadStats {
            lat: us_histogram(),
            lat_excluded: 0,
            connect: us_histogram(),
            gaps: 0,
            duplicates: 0,
            reconnects: 0,
            published: 0,
            publish_errors: 0,
            publish_late: 0,
            fail_reasons: Vec::new(),
            error_reasons: Vec::new(),
        }
    }

    fn fail(&mut self, reason: &str) {
        tally(&mut self.fail_reasons, reason, 1);
    }

    fn error(&mut self, reason: &str) {
        tally(&mut self.error_reasons, reason, 1);
    }

    /// Adds another thread's counts to these.
    fn merge(&mut self, other: ThreadStats) -> anyhow::Result<()> {
        self.lat.add(&other.lat).context("merge histograms")?;
        self.connect
            .add(&other.connect)
            .context("merge histograms")?;
        self.lat_excluded += other.lat_excluded;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.reconnects += other.reconnects;
        self.published += other.published;
        self.publish_errors += other.publish_errors;
        self.publish_late += other.publish_late;
        for (r, n) in other.fail_reasons {
            tally(&mut self.fail_reasons, &r, n);
        }
        for (r, n) in other.error_reasons {
            tally(&mut self.error_reasons, &r, n);
        }
        Ok(())
    }
}

/// One thread's shared context.
struct Ctx {
    t0: Instant,
    pacer: Pacer,
    args: Arc<Args>,
    live: Arc<Live>,
    stats: RefCell<ThreadStats>,
    stop: Arc<AtomicBool>,
    request_extra: String,
}

/// Runs the benchmark to the end and returns its summary.
pub fn run(args: Args) -> anyhow::Result<Summary> {
    let args = Arc::new(args);
    let live = Arc::new(Live::default());
    let stop = Arc::new(AtomicBool::new(false));
    let cpus = sys::allowed_cpus();
    let cpu0 = sys::process_cpu_s();
    let t0 = Instant::now();
    let ramp_s = args.ramp_per_s.map_or(0.0, |r| args.connections as f64 / r);
    // Publishing stops at `deadline`; reading goes on a little longer so
    // that paced connections read what was sent before it.
    let deadline = t0 + Duration::from_secs_f64(ramp_s) + args.duration;
    let end = deadline + args.read_interval * 2 + Duration::from_millis(50);

    let mut threads = Vec::with_capacity(args.threads);
    for t in 0..args.threads {
        let (args, live, stop) = (args.clone(), live.clone(), stop.clone());
        let cpu = (args.threads > 1).then(|| cpus[t % cpus.len()]);
        threads.push(
            std::thread::Builder::new()
                .name(format!("sluice-bench-{t}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    }
                    run_thread(t, args, live, stop, t0, deadline, end)
                })
                .context("cannot start a bench thread")?,
        );
    }

    let progress = !args.json && std::io::stderr().is_terminal();
    let mut last = (Instant::now(), 0u64);
    while Instant::now() < end {
        std::thread::sleep(
            Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())),
        );
        if progress && last.0.elapsed() >= Duration::from_secs(1) {
            let ev = live.events.load(Ordering::Relaxed);
            let rate = (ev - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), ev);
            eprint!(
                "\r{:>6.1}s  connections {}/{} up, {} failed  events/s {:>9.0}  errors {}   ",
                t0.elapsed().as_secs_f64(),
                live.open.load(Ordering::Relaxed),
                args.connections,
                live.failed.load(Ordering::Relaxed),
                rate,
                live.errors.load(Ordering::Relaxed),
            );
            let _ = std::io::stderr().flush();
        }
    }
    stop.store(true, Ordering::Release);
    if progress {
        eprintln!();
    }
    let open_at_end = live.open.load(Ordering::Relaxed);
    let window_s = t0.elapsed().as_secs_f64();
    let mut all = ThreadStats::new();
    for t in threads {
        let st = t
            .join()
            .map_err(|_| anyhow::anyhow!("a bench thread panicked"))??;
        all.merge(st)?;
    }
    let cpu_s = sys::process_cpu_s() - cpu0;
    let events = live.events.load(Ordering::Relaxed);
    let bytes = live.bytes.load(Ordering::Relaxed);
    Ok(Summary {
        connections: args.connections,
        established: live.established.load(Ordering::Relaxed),
        failed: live.failed.load(Ordering::Relaxed),
        fail_reasons: all.fail_reasons,
        errors: live.errors.load(Ordering::Relaxed),
        error_reasons: all.error_reasons,
        connect_ms: Quantiles::of(&all.connect),
        open_at_end,
        all_ready_s: match live.all_ready_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us as f64 / 1e6),
        },
        events,
        bytes,
        window_s,
        events_per_s: events as f64 / window_s,
        mb_per_s: bytes as f64 / 1e6 / window_s,
        lat_ms: Quantiles::of(&all.lat),
        lat_hist: report::bars(&all.lat),
        lat_excluded: all.lat_excluded,
        gaps: all.gaps,
        duplicates: all.duplicates,
        reconnects: all.reconnects,
        published: all.published,
        publish_errors: all.publish_errors,
        publish_late: all.publish_late,
        cpu_s,
        threads: args.threads,
        max_errors_pct: args.max_errors_pct,
    })
}

fn run_thread(
    t: usize,
    args: Arc<Args>,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
    t0: Instant,
    deadline: Instant,
    end: Instant,
) -> anyhow::Result<ThreadStats> {
    let mut request_extra = String::new();
    for h in &args.headers {
        request_extra.push_str(h);
        request_extra.push_str("\r\n");
    }
    let ctx = Rc::new(Ctx {
        t0,
        pacer: Pacer::new(),
        args,
        live,
        stats: RefCell::new(ThreadStats::new()),
        stop,
        request_extra,
    });
    let main = {
        let ctx = ctx.clone();
        async move { thread_main(t, ctx, deadline, end).await }
    };
    runtime::block_on(Driver::from_env(), main).context("cannot start a runtime")?;
    // The runtime (and every connection on it) is gone: the stats are ours.
    let stats = std::mem::replace(&mut *ctx.stats.borrow_mut(), ThreadStats::new());
    Ok(stats)
}

/// Opens this thread's share of the connections at its share of the ramp,
/// runs the publisher on thread 0 until `deadline`, and returns at `end`.
async fn thread_main(t: usize, ctx: Rc<Ctx>, deadline: Instant, end: Instant) {
    let a = &ctx.args;
    if t == 0 && !a.publish.is_empty() {
        monoio::spawn(publisher::publish_loop(ctx.clone(), deadline));
    }
    if !a.read_interval.is_zero() {
        let ctx = ctx.clone();
        let every = a.read_interval / PACER_SLOTS as u32;
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(every).await;
                ctx.pacer.tick();
            }
        });
    }
    let mine: Vec<usize> = (t..a.connections).step_by(a.threads).collect();
    let per_thread_rate = a.ramp_per_s.map(|r| r / a.threads as f64);
    let start = Instant::now();
    for (k, &i) in mine.iter().enumerate() {
        if let Some(rate) = per_thread_rate {
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                monoio::time::sleep(due - now).await;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        monoio::spawn(client::stream_loop(ctx.clone(), i));
    }
    let now = Instant::now();
    if end > now {
        monoio::time::sleep(end - now).await;
    }
}
