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
//!   [`PROBE_EVERY`]th, never read-paced);
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
//!   frames skip versions by design and are not checked.

pub mod scan;

use std::cell::RefCell;
use std::io::{IsTerminal, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use scan::{Event, Scanner};

use crate::server::chunked::{ChunkedDecoder, Progress};
use crate::server::runtime::{self, Driver};

/// Read buffer per connection.
const READ_BYTES: usize = 16 * 1024;
/// Longest response head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Above this many connections and without `--source-ips`, connections are
/// spread over 127.0.0.1, 127.0.0.2, … (one address per this many).
pub const CONNECTIONS_PER_SOURCE_IP: usize = 25_000;
/// Default `--read-interval`, in ms.
pub const DEFAULT_READ_INTERVAL_MS: u64 = 200;
/// Every PROBE_EVERY-th connection is a latency probe: it reads as soon as
/// data arrives (never paced) and only probes feed the latency histogram,
/// so pacing the others does not distort latency.
pub const PROBE_EVERY: usize = 50;
/// Longest wait before reconnecting a stream the server closed.
const MAX_RETRY_MS: u64 = 5000;

pub const USAGE: &str = "usage: sluice bench --url URL [options]
  --url URL                 SSE URL (repeatable; connections are spread over them round robin).
                            With --topics, each {topic} in URL is replaced by every topic in turn.
  --topics a,b,c            topic list for a URL template containing {topic}
  -c, --connections N       SSE connections to hold (default 100)
  -d, --duration 30s        how long to run after the ramp (s, ms or m suffix; default 10s)
  --ramp N/s                connections opened per second (default: all at once)
  -H, --header 'K: V'       extra request header (repeatable)
  --source-ips A-B          bind client sockets to 127.0.0.x addresses A..B (e.g. 127.0.0.1-127.0.0.20)
                            so that more than ~28,000 connections do not run out of ephemeral ports
                            (default above 25,000 connections: one address per 25,000)
  --publish URL             also POST rows to URL at --rate, each carrying ts_ns and seq,
                            from the moment every connection is up until the end; with
                            --topics, a {topic} in URL makes the publishes go to each topic in turn
  --rate R/s                publish rate (default 10/s)
  --publish-key K           X-API-Key for --publish
  --threads N               runtime threads (default: one per CPU this process may run on)
  --read-interval 200ms     least time between two reads of one connection (default 200ms, 0: none).
                            Events that arrive meanwhile are read together, which saves the
                            reads and window-update ACKs that dominate a reader's CPU. Every
                            50th connection is a latency probe that is never paced; latency
                            comes from the probes only.
  --json                    print the summary as one JSON object
Only loopback targets (127.0.0.0/8, ::1) are accepted.";

/// What `sluice bench` was asked to do.
#[derive(Debug, Clone)]
pub struct Args {
    pub urls: Vec<Url>,
    pub connections: usize,
    pub duration: Duration,
    pub ramp_per_s: Option<f64>,
    pub headers: Vec<String>,
    pub source_ips: Vec<Ipv4Addr>,
    /// Publish URLs, used in turn (one per topic with `--topics`).
    pub publish: Vec<Url>,
    pub rate: f64,
    pub publish_key: Option<String>,
    pub threads: usize,
    pub json: bool,
    /// Least time between two reads of one connection (0: read at once).
    pub read_interval: Duration,
}

/// An `http://` URL on loopback.
#[derive(Debug, Clone)]
pub struct Url {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> anyhow::Result<Url> {
        let rest = s
            .strip_prefix("http://")
            .with_context(|| format!("{s}: only http:// URLs"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>().with_context(|| format!("{s}: bad port"))?,
            ),
            _ => (authority, 80),
        };
        let ip: IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            h => h
                .parse()
                .with_context(|| format!("{s}: the host must be a loopback IP or localhost"))?,
        };
        if !ip.is_loopback() {
            bail!("{s}: refusing a non-loopback target (bench only talks to 127.0.0.0/8 and ::1)");
        }
        Ok(Url {
            addr: SocketAddr::new(ip, port),
            host: authority.to_string(),
            path: path.to_string(),
        })
    }
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().with_context(|| format!("bad duration '{s}'"))?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => bail!("bad duration unit in '{s}' (s, ms or m)"),
    };
    if !(secs > 0.0 && secs <= 86_400.0) {
        bail!("duration must be in (0, 24h]");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_rate(s: &str) -> anyhow::Result<f64> {
    let n: f64 = s
        .strip_suffix("/s")
        .unwrap_or(s)
        .parse()
        .with_context(|| format!("bad rate '{s}' (e.g. 500/s)"))?;
    if !(n > 0.0 && n <= 1_000_000.0) {
        bail!("rate must be in (0, 1000000]/s");
    }
    Ok(n)
}

fn parse_ip_range(s: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: Ipv4Addr = a.parse().with_context(|| format!("bad address '{a}'"))?;
    let b: Ipv4Addr = b.parse().with_context(|| format!("bad address '{b}'"))?;
    let (a, b) = (u32::from(a), u32::from(b));
    if b < a || b - a > 65_535 {
        bail!("bad source range '{s}'");
    }
    let ips: Vec<Ipv4Addr> = (a..=b).map(Ipv4Addr::from).collect();
    if let Some(ip) = ips.iter().find(|ip| !ip.is_loopback()) {
        bail!("source address {ip} is not loopback");
    }
    Ok(ips)
}

/// CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the
    // calling thread and we read it only on success.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

impl Args {
    pub fn parse(args: &[&str]) -> anyhow::Result<Args> {
        let mut urls = Vec::new();
        let mut publish: Option<String> = None;
        let mut topics: Option<Vec<String>> = None;
        let mut a = Args {
            urls: Vec::new(),
            connections: 100,
            duration: Duration::from_secs(10),
            ramp_per_s: None,
            headers: Vec::new(),
            source_ips: Vec::new(),
            publish: Vec::new(),
            rate: 10.0,
            publish_key: None,
            threads: 0,
            json: false,
            read_interval: Duration::from_millis(DEFAULT_READ_INTERVAL_MS),
        };
        let mut it = args.iter();
        while let Some(&k) = it.next() {
            let mut val = || {
                it.next()
                    .copied()
                    .with_context(|| format!("{k} needs a value\n{USAGE}"))
            };
            match k {
                "--url" => urls.push(val()?.to_string()),
                "--topics" => {
                    topics = Some(
                        val()?
                            .split(',')
                            .filter(|t| !t.is_empty())
                            .map(String::from)
                            .collect(),
                    )
                }
                "-c" | "--connections" => {
                    a.connections = val()?.parse().context("--connections: a number")?;
                    if !(1..=2_000_000).contains(&a.connections) {
                        bail!("--connections must be 1..2000000");
                    }
                }
                "-d" | "--duration" => a.duration = parse_duration(val()?)?,
                "--ramp" => a.ramp_per_s = Some(parse_rate(val()?)?),
                "-H" | "--header" => {
                    let h = val()?;
                    if !h.contains(':') || h.contains('\r') || h.contains('\n') {
                        bail!("bad header '{h}' (want 'Name: value')");
                    }
                    a.headers.push(h.to_string());
                }
                "--source-ips" => a.source_ips = parse_ip_range(val()?)?,
                "--publish" => publish = Some(val()?.to_string()),
                "--rate" => a.rate = parse_rate(val()?)?,
                "--publish-key" => a.publish_key = Some(val()?.to_string()),
                "--threads" => {
                    a.threads = val()?.parse().context("--threads: a number")?;
                    if !(1..=256).contains(&a.threads) {
                        bail!("--threads must be 1..256");
                    }
                }
                "--json" => a.json = true,
                "--read-interval" => {
                    let v = val()?;
                    a.read_interval = if v == "0" {
                        Duration::ZERO
                    } else {
                        parse_duration(v)?
                    };
                }
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown option {other}\n{USAGE}"),
            }
        }
        if urls.is_empty() {
            bail!("--url is required\n{USAGE}");
        }
        for u in &urls {
            match &topics {
                Some(ts) if u.contains("{topic}") => {
                    for t in ts {
                        a.urls.push(Url::parse(&u.replace("{topic}", t))?);
                    }
                }
                _ => a.urls.push(Url::parse(u)?),
            }
        }
        if let Some(p) = publish {
            match &topics {
                Some(ts) if p.contains("{topic}") => {
                    for t in ts {
                        a.publish.push(Url::parse(&p.replace("{topic}", t))?);
                    }
                }
                _ => a.publish.push(Url::parse(&p)?),
            }
        }
        if a.source_ips.is_empty() && a.connections > CONNECTIONS_PER_SOURCE_IP {
            // One loopback source address per 25,000 connections: each gets
            // its own ephemeral port range (~28,000 ports by default).
            let k = a.connections.div_ceil(CONNECTIONS_PER_SOURCE_IP) as u32;
            a.source_ips = (1..=k)
                .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) - 1 + i))
                .collect();
        }
        if a.threads == 0 {
            a.threads = allowed_cpus().len().min(a.connections).max(1);
        }
        Ok(a)
    }
}

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

/// What one runtime thread measured.
struct ThreadStats {
    hist: Histogram<u64>,
    gaps: u64,
    duplicates: u64,
    reconnects: u64,
    published: u64,
    publish_errors: u64,
    publish_late: u64,
    fail_reasons: Vec<(String, u64)>,
}

impl ThreadStats {
    fn new() -> ThreadStats {
        ThreadStats {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            gaps: 0,
            duplicates: 0,
            reconnects: 0,
            published: 0,
            publish_errors: 0,
            publish_late: 0,
            fail_reasons: Vec::new(),
        }
    }

    fn fail(&mut self, reason: &str) {
        match self.fail_reasons.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += 1,
            None => self.fail_reasons.push((reason.to_string(), 1)),
        }
    }
}

/// Read pacing: a connection that has just read waits for its slot's next
/// tick before it reads again, so that events arriving meanwhile come in one
/// read. Connections are spread over [`PACER_SLOTS`] slots ticked in turn
/// (one timer per thread, not per connection), so each tick wakes a slice of
/// the connections rather than all of them at once.
struct Pacer {
    generation: [std::cell::Cell<u64>; PACER_SLOTS],
    waiters: [RefCell<Vec<std::task::Waker>>; PACER_SLOTS],
    next: std::cell::Cell<usize>,
}

/// Slots of the read pacer.
const PACER_SLOTS: usize = 10;

impl Pacer {
    fn new() -> Pacer {
        Pacer {
            generation: Default::default(),
            waiters: Default::default(),
            next: std::cell::Cell::new(0),
        }
    }

    /// Resolves at slot `slot`'s next tick.
    async fn next_tick(&self, slot: usize) {
        let start = self.generation[slot].get();
        std::future::poll_fn(|cx| {
            if self.generation[slot].get() != start {
                std::task::Poll::Ready(())
            } else {
                self.waiters[slot].borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Ticks the next slot (call every interval / PACER_SLOTS).
    fn tick(&self) {
        let slot = self.next.get();
        self.next.set((slot + 1) % PACER_SLOTS);
        self.generation[slot].set(self.generation[slot].get() + 1);
        let waiters = std::mem::take(&mut *self.waiters[slot].borrow_mut());
        for w in waiters {
            w.wake();
        }
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

fn process_cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs the benchmark to the end and returns its summary.
pub fn run(args: Args) -> anyhow::Result<Summary> {
    let args = Arc::new(args);
    let live = Arc::new(Live::default());
    let stop = Arc::new(AtomicBool::new(false));
    let cpus = allowed_cpus();
    let cpu0 = process_cpu_s();
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
    let mut hist = ThreadStats::new();
    for t in threads {
        let st = t
            .join()
            .map_err(|_| anyhow::anyhow!("a bench thread panicked"))??;
        hist.hist.add(&st.hist).context("merge histograms")?;
        hist.gaps += st.gaps;
        hist.duplicates += st.duplicates;
        hist.reconnects += st.reconnects;
        hist.published += st.published;
        hist.publish_errors += st.publish_errors;
        hist.publish_late += st.publish_late;
        for (r, n) in st.fail_reasons {
            for _ in 0..n {
                hist.fail(&r);
            }
        }
    }
    let cpu_s = process_cpu_s() - cpu0;
    let h = &hist.hist;
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let events = live.events.load(Ordering::Relaxed);
    Ok(Summary {
        connections: args.connections,
        established: live.established.load(Ordering::Relaxed),
        failed: live.failed.load(Ordering::Relaxed),
        fail_reasons: hist.fail_reasons,
        open_at_end,
        all_ready_s: match live.all_ready_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us as f64 / 1e6),
        },
        events,
        bytes: live.bytes.load(Ordering::Relaxed),
        window_s,
        events_per_s: events as f64 / window_s,
        lat_ms: [
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            h.max() as f64 / 1000.0,
            h.mean() / 1000.0,
        ],
        lat_count: h.len(),
        gaps: hist.gaps,
        duplicates: hist.duplicates,
        reconnects: hist.reconnects,
        published: hist.published,
        publish_errors: hist.publish_errors,
        publish_late: hist.publish_late,
        cpu_s,
        threads: args.threads,
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
        monoio::spawn(publish_loop(ctx.clone(), deadline));
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
        monoio::spawn(stream_loop(ctx.clone(), i));
    }
    let now = Instant::now();
    if end > now {
        monoio::time::sleep(end - now).await;
    }
}

/// Connects from the right source address.
async fn connect(ctx: &Ctx, addr: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    let ips = &ctx.args.source_ips;
    if ips.is_empty() || !addr.is_ipv4() {
        return TcpStream::connect_addr(addr).await;
    }
    let src = ips[i % ips.len()];
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    // Each source address gets its own ephemeral port range: bind the
    // address now, the port at connect.
    set_bind_address_no_port(&socket)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let std_stream: std::net::TcpStream = socket.into();
    let stream = TcpStream::from_std(std_stream)?;
    stream.writable(false).await?;
    // A failed connect leaves the socket unconnected.
    stream.peer_addr()?;
    Ok(stream)
}

/// `IP_BIND_ADDRESS_NO_PORT`: bind(2) picks the address only, and connect(2)
/// the port, per (source, destination) pair.
fn set_bind_address_no_port(socket: &socket2::Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the fd is owned by `socket`, which outlives the call; the
    // option value is a c_int whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One SSE stream, reconnected (with `Last-Event-ID`) when the server
/// closes it, until the run stops.
async fn stream_loop(ctx: Rc<Ctx>, i: usize) {
    let url = ctx.args.urls[i % ctx.args.urls.len()].clone();
    let probe = i.is_multiple_of(PROBE_EVERY);
    let live = &ctx.live;
    let mut last_id: Option<u64> = None;
    let mut last_seq: Option<u64> = None;
    let mut scanner = Scanner::default();
    let mut buf = vec![0u8; READ_BYTES];
    let mut first = true;
    let mut seen: u64 = 0;
    loop {
        if ctx.stop.load(Ordering::Acquire) {
            return;
        }
        let mut stream = match connect(&ctx, url.addr, i).await {
            Ok(s) => s,
            Err(e) => {
                if first {
                    live.failed.fetch_add(1, Ordering::Relaxed);
                    ctx.stats
                        .borrow_mut()
                        .fail(&format!("connect: {}", e.kind()));
                    return;
                }
                live.errors.fetch_add(1, Ordering::Relaxed);
                monoio::time::sleep(Duration::from_millis(MAX_RETRY_MS)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n{}",
            url.path, url.host, ctx.request_extra
        );
        if let Some(id) = last_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        if stream.write_all(req.into_bytes()).await.0.is_err() {
            live.errors.fetch_add(1, Ordering::Relaxed);
            if first {
                live.failed.fetch_add(1, Ordering::Relaxed);
                ctx.stats.borrow_mut().fail("write request");
                return;
            }
            continue;
        }
        // The response head.
        let mut head: Vec<u8> = Vec::new();
        let body_start = loop {
            let (res, b) = stream.read(buf).await;
            buf = b;
            let n = match res {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            if n == 0 {
                break None;
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
                break Some(end + 4);
            }
            if head.len() > MAX_HEAD_BYTES {
                break None;
            }
        };
        let status = head
            .split(|&b| b == b' ')
            .nth(1)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok());
        let ok = body_start.is_some() && status == Some(200);
        let chunked = body_start.is_some_and(|end| {
            memchr::memmem::find(
                &head[..end].to_ascii_lowercase(),
                b"transfer-encoding: chunked",
            )
            .is_some()
        });
        if !ok {
            let reason = match (body_start, status) {
                (None, _) => "no response head".to_string(),
                (_, Some(s)) => format!("status {s}"),
                (_, None) => "bad status line".to_string(),
            };
            if first {
                live.failed.fetch_add(1, Ordering::Relaxed);
                ctx.stats.borrow_mut().fail(&reason);
                return;
            }
            live.errors.fetch_add(1, Ordering::Relaxed);
            monoio::time::sleep(Duration::from_millis(MAX_RETRY_MS)).await;
            continue;
        }
        if first {
            live.established.fetch_add(1, Ordering::Relaxed);
            first = false;
        } else {
            ctx.stats.borrow_mut().reconnects += 1;
        }
        live.open.fetch_add(1, Ordering::Relaxed);
        let body_start = body_start.unwrap_or(head.len());
        let mut on_bytes = |data: &[u8], scanner: &mut Scanner| {
            let mut events = 0u64;
            let now = now_ns();
            let mut st = ctx.stats.borrow_mut();
            scanner.feed(data, |ev: Event| {
                events += 1;
                if let Some(id) = ev.id {
                    if last_id.is_some_and(|l| id <= l) {
                        st.duplicates += 1;
                    }
                    last_id = Some(id);
                }
                if probe && let Some(ts) = ev.ts_ns {
                    let us = now.saturating_sub(ts) / 1000;
                    st.hist.saturating_record(us.max(1));
                }
                if ev.count == Some(1)
                    && let Some(seq) = ev.seq
                {
                    if let Some(prev) = last_seq {
                        if seq <= prev {
                            if ev.id.is_none() {
                                st.duplicates += 1;
                            }
                        } else if seq > prev + 1 {
                            st.gaps += seq - prev - 1;
                        }
                    }
                    last_seq = Some(seq.max(last_seq.unwrap_or(0)));
                }
            });
            live.events.fetch_add(events, Ordering::Relaxed);
            live.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            if seen < 2 && seen + events >= 2 {
                let ready = live.ready.fetch_add(1, Ordering::Relaxed) + 1;
                if ready == ctx.args.connections as u64 {
                    let us = ctx.t0.elapsed().as_micros() as u64;
                    live.all_ready_us.store(us.max(1), Ordering::Relaxed);
                }
            }
            seen += events;
        };
        // The body, de-chunked when the server streams chunked.
        let mut dechunk = chunked.then(|| ChunkedDecoder::new(usize::MAX));
        let mut body = |data: &[u8], scanner: &mut Scanner| -> bool {
            match dechunk.as_mut() {
                None => {
                    on_bytes(data, scanner);
                    true
                }
                Some(d) => matches!(d.feed(data, |p| on_bytes(p, scanner)), Ok(Progress::More)),
            }
        };
        let mut open = body(&head[body_start..], &mut scanner);
        drop(head);
        let paced = !probe && !ctx.args.read_interval.is_zero();
        while open {
            let (res, b) = stream.read(buf).await;
            buf = b;
            let full = match res {
                Ok(n) if n > 0 => {
                    open = body(&buf[..n], &mut scanner);
                    n == buf.capacity()
                }
                _ => break,
            };
            if paced && !full {
                ctx.pacer.next_tick(i % PACER_SLOTS).await;
            }
        }
        live.open.fetch_sub(1, Ordering::Relaxed);
        scanner.reset();
        if ctx.stop.load(Ordering::Acquire) {
            return;
        }
        // The server ended the stream: come back as an EventSource would.
        let wait = scanner.retry_ms.unwrap_or(1000).min(MAX_RETRY_MS);
        monoio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Publishes `rate` rows per second (one request at a time on a keep-alive
/// connection), each `{"ts_ns":…,"seq":…}` plus padding to a typical row.
async fn publish_loop(ctx: Rc<Ctx>, deadline: Instant) {
    // Publish once every stream is up (or has failed), so that each one
    // sees every published row.
    let live = &ctx.live;
    while live.established.load(Ordering::Relaxed) + live.failed.load(Ordering::Relaxed)
        < ctx.args.connections as u64
        && Instant::now() < deadline
    {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    let period = Duration::from_secs_f64(1.0 / ctx.args.rate);
    let start = Instant::now();
    let key = ctx
        .args
        .publish_key
        .as_deref()
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    let mut stream: Option<TcpStream> = None;
    let mut buf = vec![0u8; 4096];
    let mut seq: u64 = 0;
    loop {
        let due = start + period * seq as u32;
        if due >= deadline || ctx.stop.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        if due > now {
            monoio::time::sleep(due - now).await;
        } else if now - due > Duration::from_millis(1) {
            ctx.stats.borrow_mut().publish_late += 1;
        }
        // Publishes go to each URL in turn; `seq` counts per URL (topic),
        // so that every stream sees 1, 2, 3, … and gaps are real.
        let n = ctx.args.publish.len() as u64;
        let url = &ctx.args.publish[(seq % n) as usize];
        let topic_seq = seq / n + 1;
        seq += 1;
        let body = format!(
            "{{\"ts_ns\":{},\"seq\":{topic_seq},\"type\":\"bench\",\"event_id\":\"ev-{:05}\",\"market\":\"match_winner\",\"book\":\"bench\",\"price\":{}}}",
            now_ns(),
            topic_seq % 1000,
            100 + topic_seq % 400
        );
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{key}\r\n{body}",
            url.path,
            url.host,
            body.len()
        );
        if stream.is_none() {
            stream = TcpStream::connect_addr(url.addr).await.ok();
        }
        let Some(s) = stream.as_mut() else {
            ctx.stats.borrow_mut().publish_errors += 1;
            continue;
        };
        let mut ok = s.write_all(req.into_bytes()).await.0.is_ok();
        if ok {
            // Read one response: the head, then Content-Length bytes.
            let mut got: Vec<u8> = Vec::new();
            ok = loop {
                let (res, b) = s.read(buf).await;
                buf = b;
                match res {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break false,
                }
                if let Some(end) = memchr::memmem::find(&got, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break head.starts_with("http/1.1 2");
                    }
                }
            };
        }
        let mut st = ctx.stats.borrow_mut();
        if ok {
            st.published += 1;
        } else {
            st.publish_errors += 1;
            stream = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_durations_rates_ranges() {
        let u = Url::parse("http://127.0.0.1:8080/v1/sse/a?x=1").unwrap();
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(u.path, "/v1/sse/a?x=1");
        assert_eq!(Url::parse("http://localhost:9/").unwrap().addr.port(), 9);
        assert!(Url::parse("http://10.0.0.1:80/").is_err(), "not loopback");
        assert!(Url::parse("https://127.0.0.1/").is_err());
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_rate("500/s").unwrap(), 500.0);
        assert_eq!(parse_ip_range("127.0.0.1-127.0.0.3").unwrap().len(), 3);
        assert!(parse_ip_range("127.0.0.1-10.0.0.1").is_err());
    }

    #[test]
    fn many_connections_spread_over_source_addresses() {
        let a = Args::parse(&["--url", "http://127.0.0.1:1/", "-c", "60000"]).unwrap();
        let ips: Vec<String> = a.source_ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
        let a = Args::parse(&["--url", "http://127.0.0.1:1/", "-c", "25000"]).unwrap();
        assert!(a.source_ips.is_empty());
    }

    #[test]
    fn topic_lists_expand_url_templates() {
        let a = Args::parse(&[
            "--url",
            "http://127.0.0.1:1/v1/sse/{topic}",
            "--topics",
            "a,b",
            "-c",
            "4",
            "--threads",
            "1",
        ])
        .unwrap();
        let paths: Vec<&str> = a.urls.iter().map(|u| u.path.as_str()).collect();
        assert_eq!(paths, ["/v1/sse/a", "/v1/sse/b"]);
        assert!(Args::parse(&["-c", "1"]).is_err(), "--url is required");
        assert!(Args::parse(&["--url", "http://127.0.0.1:1/", "-H", "bad"]).is_err());
    }
}
