//! `sluice bench` against a running sluice: it must count exactly what an
//! independent SSE client counts, and see the gaps a test provokes.

mod common;

use std::process::{Command, Stdio};

use common::*;

fn healthz_streams(s: &Server) -> u64 {
    let (_, _, body) = s.request("GET", "/healthz", &[], b"");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["streams"].as_u64().unwrap_or(0)
}

/// Starts `sluice bench` with `args`; returns the child (stdout piped).
fn bench(args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice bench")
}

/// The exit status, the JSON summary and stderr of a finished bench.
fn outcome(child: std::process::Child) -> (Option<i32>, serde_json::Value, String) {
    let out = child.wait_with_output().expect("bench ran");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let sum = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("one JSON summary ({e}); stderr: {stderr}"));
    (out.status.code(), sum, stderr)
}

fn summary(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("bench ran");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON summary")
}

#[test]
fn bench_counts_what_an_independent_client_counts_and_sees_a_provoked_gap() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("", ""), driver);
        let mut client = s.subscribe("/v1/sse/b/t", &[]);
        client.start();
        let url = format!("http://{}/v1/sse/b/t", s.addr);
        let mut args = vec![
            "--url",
            url.as_str(),
            "-c",
            "3",
            "-d",
            "3s",
            "--threads",
            "2",
        ];
        if driver == Driver::Epoll {
            args.extend(["--read-interval", "0"]);
        }
        let child = bench(&args);
        eventually("the bench's 3 streams", || healthz_streams(&s) == 4);
        // one-row updates carrying seq 1..=20, with 13 left out: one gap
        let seqs: Vec<u64> = (1..=20).filter(|&n| n != 13).collect();
        for n in &seqs {
            s.publish("b/t", &format!(r#"{{"seq":{n},"v":"x"}}"#));
        }
        let mut mine = 2; // connected + initial_state
        for n in &seqs {
            let f = client.next_event().unwrap();
            assert_eq!(f.json()["data"][0]["seq"], *n);
            mine += 1;
        }
        let sum = summary(child);
        assert_eq!(sum["established"], 3, "{sum}");
        assert_eq!(sum["failed"], 0, "{sum}");
        assert_eq!(sum["events"], 3 * mine, "{sum}");
        assert_eq!(sum["gaps"], 3, "one gap on each stream: {sum}");
        assert_eq!(sum["duplicates"], 0, "{sum}");
        assert!(sum["cpu_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn bench_publishes_at_a_rate_and_measures_latency() {
    let s = Server::start(&config("", ""));
    let sub = format!("http://{}/v1/sse/b/lat", s.addr);
    let publ = format!("http://{}/v1/publish/b/lat", s.addr);
    let sum = summary(bench(&[
        "--url",
        &sub,
        "-c",
        "4",
        "-d",
        "2s",
        "--publish",
        &publ,
        "--rate",
        "50/s",
        "--publish-key",
        "pk_test",
    ]));
    let published = sum["published"].as_u64().unwrap();
    assert!((90..=100).contains(&published), "{sum}");
    assert_eq!(sum["publish_errors"], 0, "{sum}");
    // every published row reached every stream, in order, once
    assert_eq!(
        sum["events"].as_u64().unwrap(),
        4 * (2 + published),
        "{sum}"
    );
    assert_eq!(sum["gaps"], 0, "{sum}");
    assert_eq!(sum["duplicates"], 0, "{sum}");
    // connection 0 is the latency probe: one sample per published row
    assert_eq!(sum["lat_ms"]["count"].as_u64().unwrap(), published, "{sum}");
    assert!(sum["lat_ms"]["p50"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_reports_refused_streams_and_bad_arguments() {
    let s = Server::start(&config("", ""));
    let url = format!("http://{}/v1/sse/nope%20topic", s.addr);
    let (code, sum, stderr) = outcome(bench(&["--url", &url, "-c", "2", "-d", "500ms"]));
    assert_eq!(sum["failed"], 2, "{sum}");
    assert_eq!(sum["fail_reasons"]["status 400"], 2, "{sum}");
    assert_eq!(code, Some(2), "no stream opened: the run failed");
    assert!(
        stderr.contains("no connection was established (2 of 2 failed: status 400 ×2)"),
        "{stderr}"
    );

    for bad in [
        vec!["--url", "http://10.1.2.3:80/x"],
        vec!["--url", "http://127.0.0.1:1/", "-c", "0"],
        vec!["-c", "1"],
        vec!["--url", "http://127.0.0.1:1/", "--rate", "fast"],
        vec!["--url", "http://127.0.0.1:1/", "--max-errors-pct", "101"],
    ] {
        let out = Command::new(BIN).arg("bench").args(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(!out.stderr.is_empty());
    }
}

/// Client addresses of established TCP connections to `port`, from
/// /proc/net/tcp (hex `0100007F:PORT` is 127.0.0.1).
fn client_addrs_to(port: u16) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, state) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let rport = u16::from_str_radix(remote.split(':').nth(1)?, 16).ok()?;
            if rport != port || *state != "01" {
                return None;
            }
            let ip = u32::from_str_radix(local.split(':').next()?, 16).ok()?;
            Some(std::net::Ipv4Addr::from(ip.swap_bytes()).to_string())
        })
        .collect()
}

#[test]
fn bench_spreads_connections_over_source_addresses() {
    let s = Server::start(&config("", ""));
    let url = format!("http://{}/v1/sse/b/src", s.addr);
    let child = bench(&[
        "--url",
        &url,
        "-c",
        "6",
        "-d",
        "2s",
        "--source-ips",
        "127.0.0.2-127.0.0.4",
    ]);
    let mut seen = Vec::new();
    eventually("6 streams from 3 source addresses", || {
        seen = client_addrs_to(s.addr.port());
        seen.len() == 6
    });
    seen.sort();
    assert_eq!(
        seen,
        [
            "127.0.0.2",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.4"
        ]
    );
    let sum = summary(child);
    assert_eq!(sum["established"], 6, "{sum}");
}

#[test]
fn bench_fails_when_nothing_listens() {
    // a port that was just free: nothing accepts on it
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let url = format!("http://{addr}/v1/sse/x");
    let (code, sum, stderr) = outcome(bench(&["--url", &url, "-c", "3", "-d", "200ms"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(sum["established"], 0, "{sum}");
    assert_eq!(sum["failed"], 3, "{sum}");
    assert_eq!(
        sum["fail_reasons"]["connect: connection refused"], 3,
        "{sum}"
    );
    assert_eq!(sum["ok"], false, "{sum}");
    assert!(
        stderr.contains("sluice bench: FAILED: no connection was established"),
        "{stderr}"
    );
}

#[test]
fn bench_fails_past_max_errors_pct_and_passes_within_it() {
    let s = Server::start(&config("", ""));
    let good = format!("http://{}/v1/sse/b/mix", s.addr);
    let bad = format!("http://{}/v1/sse/nope%20topic", s.addr);
    // connections go round robin over the URLs: 2 of 4 are refused (50%)
    let args = ["--url", &good, "--url", &bad, "-c", "4", "-d", "300ms"];
    let (code, sum, stderr) = outcome(bench(&args));
    assert_eq!(code, Some(2), "{sum}");
    assert_eq!(sum["established"], 2, "{sum}");
    assert_eq!(sum["error_pct"]["connect"], 50.0, "{sum}");
    assert!(
        stderr.contains("2 of 4 connections failed to open (50.0% > --max-errors-pct 1)"),
        "{stderr}"
    );
    let mut lenient = args.to_vec();
    lenient.extend(["--max-errors-pct", "50"]);
    let sum = summary(bench(&lenient));
    assert_eq!(sum["failed"], 2, "{sum}");
    assert_eq!(sum["ok"], true, "{sum}");
    assert_eq!(sum["max_errors_pct"], 50.0, "{sum}");
}

#[test]
fn bench_latency_counts_live_updates_only_not_the_initial_state() {
    let s = Server::start(&config("", ""));
    // rows published long ago (ts_ns of 2001): every stream's initial state
    // carries them
    for n in 1..=3 {
        s.publish(
            "b/old",
            &format!(r#"{{"ts_ns":1000000000000000000,"old":{n}}}"#),
        );
    }
    let sub = format!("http://{}/v1/sse/b/old", s.addr);
    let publ = format!("http://{}/v1/publish/b/old", s.addr);
    let sum = summary(bench(&[
        "--url",
        &sub,
        "-c",
        "4",
        "-d",
        "1s",
        "--publish",
        &publ,
        "--rate",
        "20/s",
        "--publish-key",
        "pk_test",
    ]));
    let published = sum["published"].as_u64().unwrap();
    assert!(published > 0, "{sum}");
    // each stream: connected, the initial state, then every published row
    assert_eq!(
        sum["events"].as_u64().unwrap(),
        4 * (2 + published),
        "{sum}"
    );
    // connection 0 is the one probe: one sample per live row; its initial
    // state is counted apart
    assert_eq!(sum["lat_ms"]["count"].as_u64().unwrap(), published, "{sum}");
    assert_eq!(sum["lat_excluded"], 1, "{sum}");
    let bars = sum["lat_hist"].as_array().expect("a latency histogram");
    let in_bars: u64 = bars.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(in_bars, published, "{sum}");
    assert!(bars.iter().all(|b| b["le_ms"].is_f64()), "{sum}");
    // the other numbers of the report
    assert_eq!(sum["connect_ms"]["count"], 4, "{sum}");
    for q in ["p50", "p90", "p99", "max"] {
        assert!(sum["connect_ms"][q].as_f64().unwrap() > 0.0, "{q}: {sum}");
    }
    assert!(sum["mb_per_s"].as_f64().unwrap() > 0.0, "{sum}");
    assert_eq!(sum["errors"], 0, "{sum}");
    assert_eq!(sum["ok"], true, "{sum}");
    assert_eq!(sum["problems"], serde_json::json!([]), "{sum}");
}
