//! `sluice bench`'s command line: [`Args`], loopback-only [`Url`]s, the
//! duration, rate and address-range parsers, and [`USAGE`].
//!
//! Cold: runs once, before the load starts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::sys;

/// Above this many connections and without `--source-ips`, connections are
/// spread over 127.0.0.1, 127.0.0.2, … (one address per this many).
pub const CONNECTIONS_PER_SOURCE_IP: usize = 25_000;
/// Default `--read-interval`, in ms.
pub const DEFAULT_READ_INTERVAL_MS: u64 = 200;
/// Default `--max-errors-pct`.
pub const DEFAULT_MAX_ERRORS_PCT: f64 = 1.0;

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
  --max-errors-pct 1        the run fails (exit status 2) when more than this percentage of
                            connections failed to open, of open connections had an error later
                            (a failed reconnect, a failed read), or of publishes failed; and
                            whenever no connection was established at all (default 1)
  --json                    print the summary as one JSON object
Only loopback targets (127.0.0.0/8, ::1) are accepted.
Latency is taken from live updates only: rows of an initial_state, or replayed after a
reconnect (published before that connection was opened), are counted apart as stale.
Exit status: 0 the run passed; 1 bad arguments or the bench could not run; 2 the run
failed (see --max-errors-pct; the summary is printed all the same, the reasons on stderr).";

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
    /// Highest error percentage of any class that still passes the run.
    pub max_errors_pct: f64,
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
            max_errors_pct: DEFAULT_MAX_ERRORS_PCT,
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
                "--max-errors-pct" => {
                    let v = val()?;
                    a.max_errors_pct = v
                        .strip_suffix('%')
                        .unwrap_or(v)
                        .parse()
                        .ok()
                        .filter(|p: &f64| (0.0..=100.0).contains(p))
                        .with_context(|| {
                            format!("--max-errors-pct: a number in 0..100, not '{v}'")
                        })?;
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
            a.threads = sys::allowed_cpus().len().min(a.connections).max(1);
        }
        Ok(a)
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

    #[test]
    fn error_thresholds_are_percentages() {
        let url = ["--url", "http://127.0.0.1:1/"];
        let parse = |v: &str| Args::parse(&[url[0], url[1], "--max-errors-pct", v]);
        assert_eq!(
            Args::parse(&url).unwrap().max_errors_pct,
            DEFAULT_MAX_ERRORS_PCT
        );
        assert_eq!(parse("0").unwrap().max_errors_pct, 0.0);
        assert_eq!(parse("2.5%").unwrap().max_errors_pct, 2.5);
        for bad in ["-1", "101", "many", "NaN"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
