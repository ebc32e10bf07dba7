//! Logs (issue #12): an access line per closed stream and per refused
//! request, never a credential; `SLUICE_LOG_FORMAT=json`; syslog priority
//! prefixes when stderr is the journal (`JOURNAL_STREAM`); an invalid
//! `SLUICE_LOG` is reported and `info` kept.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Instant;

use common::*;

/// Waits for a log line containing `needle`; returns it.
fn line_with(s: &Server, needle: &str) -> String {
    let mut found = None;
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while found.is_none() {
        assert!(
            Instant::now() < deadline,
            "no log line with {needle}: {seen:#?}"
        );
        for l in s.logs() {
            if found.is_none() && l.contains(needle) {
                found = Some(l.clone());
            }
            seen.push(l);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    found.unwrap()
}

/// The `key=value` fields of a text log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[at..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        return Some(&quoted[..end]);
    }
    Some(rest.split(' ').next().unwrap_or(rest))
}

#[test]
fn a_closed_stream_logs_one_access_line_with_its_close_reason() {
    for driver in DRIVERS {
        let s = Server::start_with(
            &config(
                "max_events = 2",
                "[[keys]]\nname = \"lim\"\nkey = \"lk_secret\"\ntier = \"scale\"\n",
            ),
            driver,
        );
        // the client hangs up
        let mut c = s.subscribe("/v1/sse/logs/a", &[("X-API-Key", "sk_test")]);
        c.start();
        s.publish("logs/a", r#"{"n":1}"#);
        assert_eq!(c.next_event().unwrap().event(), "update");
        drop(c);
        let l = line_with(&s, "stream closed");
        assert!(l.contains(" INFO sluice::access: stream closed "), "{l}");
        assert_eq!(field(&l, "status"), Some("200"));
        assert_eq!(field(&l, "topic"), Some("logs/a"));
        assert_eq!(field(&l, "tier"), Some("scale"));
        assert_eq!(field(&l, "key"), Some("sub"));
        assert_eq!(field(&l, "events"), Some("1"));
        assert_eq!(field(&l, "close"), Some("client_closed"));
        assert!(
            field(&l, "duration_ms").unwrap().parse::<u64>().is_ok(),
            "{l}"
        );
        let bytes: u64 = field(&l, "bytes").unwrap().parse().unwrap();
        assert!(bytes > 100, "{l}");
        assert!(!l.contains("sk_test"), "{l}");

        // max_events: the server closes with `limit`
        let mut c = s.subscribe("/v1/sse/logs/b", &[("X-API-Key", "lk_secret")]);
        c.start();
        s.publish("logs/b", r#"{"n":1}"#);
        s.publish("logs/b", r#"{"n":2}"#);
        let rest = c.rest();
        assert_eq!(rest.last().unwrap().event(), "limit");
        let l = line_with(&s, "topic=\"logs/b\"");
        assert_eq!(field(&l, "close"), Some("limit"), "{l}");
        assert_eq!(field(&l, "key"), Some("lim"));
        assert_eq!(field(&l, "tier"), Some("scale"));
        assert_eq!(field(&l, "events"), Some("2"));

        // anonymous, closed by the drain
        let mut c = s.subscribe("/v1/sse/logs/c", &[]);
        c.start();
        s.signal(15);
        assert_eq!(c.rest().last().unwrap().event(), "reconnect");
        let l = line_with(&s, "topic=\"logs/c\"");
        assert_eq!(field(&l, "close"), Some("shutdown"), "{l}");
        assert_eq!(field(&l, "key"), Some("-"));
        assert_eq!(s.wait_exit().code(), Some(0));
    }
}

#[test]
fn a_stream_past_max_duration_closes_with_timeout() {
    let s = Server::start(&config("max_duration_s = 1", ""));
    let mut c = s.subscribe("/v1/sse/logs/t", &[]);
    c.start();
    assert_eq!(c.rest().last().unwrap().event(), "timeout");
    let l = line_with(&s, "stream closed");
    assert_eq!(field(&l, "close"), Some("timeout"), "{l}");
    assert_eq!(field(&l, "events"), Some("0"));
    let ms: u64 = field(&l, "duration_ms").unwrap().parse().unwrap();
    assert!(ms >= 1000, "{l}");
}

#[test]
fn a_refused_request_logs_status_code_reason_and_path_without_credentials() {
    let s = Server::start(&config("", ""));
    let c = s.subscribe("/v1/sse/logs/x?apiKey=wrong_secret_1", &[]);
    assert_eq!(c.status, 401);
    let l = line_with(&s, "request refused");
    assert!(l.contains(" INFO sluice::access: request refused "), "{l}");
    assert_eq!(field(&l, "status"), Some("401"));
    assert_eq!(field(&l, "code"), Some("unauthorized"));
    assert_eq!(field(&l, "method"), Some("GET"));
    assert_eq!(field(&l, "path"), Some("/v1/sse/logs/x"));
    assert!(field(&l, "reason").is_some_and(|r| !r.is_empty()), "{l}");

    let (st, _, _) = s.request(
        "POST",
        "/v1/publish/logs/x",
        &[("X-API-Key", "wrong_secret_2")],
        b"{}",
    );
    assert_eq!(st, 401);
    let l = line_with(&s, "request refused");
    assert_eq!(field(&l, "method"), Some("POST"));
    assert_eq!(field(&l, "path"), Some("/v1/publish/logs/x"));

    let (st, _, _) = s.request("GET", "/nope%0aINFO%20forged", &[], b"");
    assert_eq!(st, 404);
    let l = line_with(&s, "request refused");
    assert_eq!(field(&l, "code"), Some("not_found"));
    assert_eq!(field(&l, "path"), Some("/nope?INFO forged"), "{l}");

    let logs = s.logs().join("\n");
    assert!(!logs.contains("wrong_secret"), "{logs}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let s = Server::start_env(
        &config("", ""),
        Driver::Auto,
        &[("SLUICE_LOG_FORMAT", "json")],
    );
    let c = s.subscribe("/v1/sse/logs/j?apiKey=bad_key", &[]);
    assert_eq!(c.status, 401);
    let l = line_with(&s, "request refused");
    let logs = s.logs();
    for line in logs.iter().chain([&l]) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v["target"], "sluice::access");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["fields"]["message"], "request refused");
    assert_eq!(v["fields"]["status"], 401);
    assert_eq!(v["fields"]["code"], "unauthorized");
    assert_eq!(v["fields"]["path"], "/v1/sse/logs/j");
}

#[test]
fn an_invalid_sluice_log_is_named_and_info_kept() {
    let s = Server::start_env(
        &config("", ""),
        Driver::Auto,
        &[("SLUICE_LOG", "sluice=loud")],
    );
    let logs = s.logs();
    let bad: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("SLUICE_LOG=\"sluice=loud\""))
        .collect();
    assert_eq!(bad.len(), 1, "{logs:#?}");
    assert!(
        bad[0].contains(" WARN ") && bad[0].contains("info"),
        "{}",
        bad[0]
    );
    assert!(
        logs.iter()
            .any(|l| l.contains(" INFO ") && l.contains("listening on"))
    );
}

/// `JOURNAL_STREAM` naming the pipe that is sluice's stderr: each line
/// starts with its syslog priority and carries no timestamp (the journal
/// stamps it). A `JOURNAL_STREAM` that names another file changes nothing.
#[test]
fn journald_gets_syslog_priority_prefixes() {
    let (reader, writer) = std::io::pipe().unwrap();
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", reader.as_raw_fd())).unwrap();
    let id = {
        use std::os::unix::fs::MetadataExt;
        format!("{}:{}", meta.dev(), meta.ino())
    };
    let path = temp_path("journal.toml");
    std::fs::write(&path, config("", "")).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("JOURNAL_STREAM", &id)
        .env("SLUICE_LOG", "sluice=loud")
        .stdout(std::process::Stdio::null())
        .stderr(writer)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(reader).lines();
    let mut got = Vec::new();
    while !got.iter().any(|l: &String| l.contains("listening on")) {
        got.push(lines.next().expect("a line").expect("UTF-8"));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&path);
    let warn = got
        .iter()
        .find(|l| l.contains("SLUICE_LOG="))
        .expect("the warning");
    assert!(warn.starts_with("<4> WARN sluice::logging: "), "{warn}");
    let listening = got.iter().find(|l| l.contains("listening on")).unwrap();
    assert!(
        listening.starts_with("<6> INFO sluice::server: listening on "),
        "{listening}"
    );
    assert!(got.iter().all(|l| l.starts_with('<')), "{got:#?}");

    let s = Server::start_env(&config("", ""), Driver::Auto, &[("JOURNAL_STREAM", "1:1")]);
    let logs = s.logs();
    assert!(logs.iter().all(|l| !l.starts_with('<')), "{logs:#?}");
}
