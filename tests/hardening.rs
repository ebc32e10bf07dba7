//! Hostile requests (issue #8): sizes that overflow, bodies where none
//! belongs, HEAD framing, unauthenticated bodies, `Expect: 100-continue`,
//! and what the process does when a thread dies.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn error_code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("error body is JSON");
    v["error"]["code"].as_str().expect("error.code").to_string()
}

/// Reads one response with a `Content-Length` body from a keep-alive
/// connection: (head, body).
fn read_response(c: &mut TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut byte).expect("read head");
        assert!(
            n == 1,
            "closed mid-head: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).expect("read body");
    (head, String::from_utf8(body).unwrap())
}

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c
}

#[test]
fn a_huge_chunk_size_is_refused_and_every_worker_lives() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("", ""), driver);
        let mut stream = s.subscribe("/v1/sse/calm", &[]);
        stream.start();
        // Enough connections to reach both workers several times over.
        for _ in 0..16 {
            // Unauthenticated: refused before the body is looked at.
            let resp = raw(
                s.addr,
                b"POST /v1/publish/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc\r\n",
            );
            let (st, _, body) = split_response(resp.as_bytes());
            assert_eq!(
                (st, error_code(&body).as_str()),
                (401, "unauthorized"),
                "{resp}"
            );
            // A publisher's: the size is checked against max_body_bytes.
            for size in ["ffffffffffffffff", "fffffffffffffffff0", "8000000000000001"] {
                let req = format!(
                    "POST /v1/publish/x HTTP/1.1\r\nX-API-Key: pk_test\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nabc\r\n"
                );
                let resp = raw(s.addr, req.as_bytes());
                let (st, _, _) = split_response(resp.as_bytes());
                assert!(st == 413 || st == 400, "{size}: {resp}");
            }
        }
        let (st, _, body) = s.request("GET", "/healthz", &[], b"");
        assert_eq!(st, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["workers"], 2);
        let id = s.publish("calm", r#"{"after":"attack"}"#);
        assert_eq!(stream.next_event().unwrap().id, Some(id));
        assert!(s.stop().success());
    }
}

#[test]
fn chunked_publish_still_works_and_keeps_the_connection() {
    let s = Server::start(&config("", ""));
    let mut c = connect(&s);
    let body = "7\r\n{\"a\":1}\r\n0\r\n\r\n";
    for _ in 0..2 {
        write!(
            c,
            "POST /v1/publish/chunky HTTP/1.1\r\nX-API-Key: pk_test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        )
        .unwrap();
        let (head, resp) = read_response(&mut c);
        assert!(head.starts_with("HTTP/1.1 202 "), "{head}{resp}");
    }
    let (st, _, snap) = s.request("GET", "/v1/snapshot/chunky", &[], b"");
    assert_eq!(st, 200);
    assert!(snap.contains(r#""count":2"#), "{snap}");
}

#[test]
fn content_length_with_a_sign_or_a_list_is_refused() {
    let s = Server::start(&config("", ""));
    for cl in ["+9", "-1", "9, 9", " ", "0x10", "99999999999999999999999"] {
        let req = format!(
            "POST /v1/publish/x HTTP/1.1\r\nX-API-Key: pk_test\r\nContent-Length: {cl}\r\n\r\n{{\"a\":123}}"
        );
        let resp = raw(s.addr, req.as_bytes());
        let (st, _, body) = split_response(resp.as_bytes());
        assert_eq!(
            (st, error_code(&body).as_str()),
            (400, "bad_request"),
            "{cl}: {resp}"
        );
    }
}

#[test]
fn an_unauthenticated_body_is_never_read() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("", ""), driver);
        for (path, headers) in [
            ("/v1/publish/x", ""),
            ("/v1/publish/x", "X-API-Key: sk_test\r\n"), // a subscriber: 403
            ("/v1/publish/x", "X-API-Key: wrong\r\n"),
            ("/v1/stream/token", ""),
            ("/v1/nothing", "X-API-Key: pk_test\r\n"),
        ] {
            // The head promises a large body that never comes: the answer
            // must not wait for it.
            let mut c = connect(&s);
            write!(
                c,
                "POST {path} HTTP/1.1\r\n{headers}Content-Length: 1000000\r\n\r\n"
            )
            .unwrap();
            let mut out = Vec::new();
            c.read_to_end(&mut out)
                .expect("answered and closed, not waiting for the body");
            let (st, head, body) = split_response(&out);
            assert!(matches!(st, 401 | 403 | 404), "{path}: {head}{body}");
            assert!(head.contains("Connection: close"), "{head}");
        }
    }
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let s = Server::start(&config("", ""));
    let mut c = connect(&s);
    let body = br#"{"c":100}"#;
    write!(
        c,
        "POST /v1/publish/cont HTTP/1.1\r\nX-API-Key: pk_test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut interim = [0u8; 25];
    c.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(body).unwrap();
    let (head, resp) = read_response(&mut c);
    assert!(head.starts_with("HTTP/1.1 202 "), "{head}{resp}");

    // Refused before the body: no 100, the error straight away.
    let mut c = connect(&s);
    c.write_all(
        b"POST /v1/publish/cont HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n",
    )
    .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let (st, _, _) = split_response(&out);
    assert_eq!(st, 401);
}

#[test]
fn a_body_on_get_head_or_options_is_never_read_as_a_request() {
    let s = Server::start(&config("", ""));
    let smuggled = "GET /v1/topics HTTP/1.1\r\nX-API-Key: ak_test\r\n\r\n";
    for method in ["GET", "HEAD", "OPTIONS"] {
        for framing in [
            format!("Content-Length: {}\r\n\r\n{smuggled}", smuggled.len()),
            format!(
                "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
        ] {
            let req = format!("{method} /healthz HTTP/1.1\r\nHost: h\r\n{framing}");
            let resp = raw(s.addr, req.as_bytes());
            assert_eq!(
                resp.matches("HTTP/1.1 ").count(),
                1,
                "{method}: one answer only: {resp}"
            );
            assert!(resp.starts_with("HTTP/1.1 400 "), "{method}: {resp}");
            assert!(!resp.contains("\"topics\""), "{resp}");
        }
    }
    // The same on a stream path.
    let req = format!(
        "GET /v1/sse/x HTTP/1.1\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let resp = raw(s.addr, req.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
}

#[test]
fn head_answers_carry_headers_only_and_keep_alive_framing() {
    let s = Server::start(&config("", ""));
    s.publish("h", r#"{"x":1}"#);
    let mut c = connect(&s);
    for path in ["/healthz", "/v1/snapshot/h", "/v1/nothing", "/metrics"] {
        c.write_all(
            format!(
                "HEAD {path} HTTP/1.1\r\nHost: h\r\n\r\nGET {path} HTTP/1.1\r\nHost: h\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        // The HEAD answer: headers only, with the GET's Content-Length.
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(c.read(&mut byte).unwrap(), 1);
            got.push(byte[0]);
        }
        let head = String::from_utf8(got).unwrap();
        assert!(head.contains("Content-Length: "), "{head}");
        // Next on the wire is the GET's answer, not a HEAD body.
        let (get_head, get_body) = read_response(&mut c);
        assert!(get_head.starts_with("HTTP/1.1 "), "{path}: {get_head}");
        let status = |h: &str| h.split(' ').nth(1).unwrap().to_string();
        assert_eq!(status(&head), status(&get_head), "{path}");
        if path != "/metrics" && path != "/healthz" {
            // same length for the same content
            let len = |h: &str| {
                h.lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .to_string()
            };
            assert_eq!(len(&head), len(&get_head), "{path}: {get_body}");
        }
    }
    // A HEAD of a stream is refused, headers only.
    c.write_all(b"HEAD /v1/sse/h HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 405 "), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body: {text}");
}

/// Starts sluice with `SLUICE_TEST_PANIC=kind`; returns the child and a
/// reader of its stderr, once it is listening.
fn start_faulty(
    kind: &str,
    config_text: &str,
) -> (
    std::process::Child,
    Option<std::net::SocketAddr>,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::BufRead;
    let path = temp_path("faulty.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("SLUICE_TEST_PANIC", kind)
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The address once it listens; None when it ended first.
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let addr = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    break Some(rest.split_whitespace().next().unwrap().parse().unwrap());
                }
                seen.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(e) => panic!("sluice neither listened nor ended: {e}"),
        }
    };
    // It has read its configuration (or ended): the file may go.
    let _ = std::fs::remove_file(&path);
    // Give the caller every line, the ones read here first.
    let (tx, all) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in seen.into_iter().chain(rx.iter()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, addr, all)
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "the process is still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_panic_exits_the_process_non_zero_naming_the_thread() {
    for workers in [1, 2] {
        let cfg = config("", "").replace("workers = 2", &format!("workers = {workers}"));
        let (mut child, addr, logs) = start_faulty("request", &cfg);
        let addr = addr.expect("listening");
        let mut stream = SseClient::connect(addr, "/v1/sse/x", &[]);
        stream.start();
        let _ = raw(addr, b"GET /__sluice/panic HTTP/1.1\r\n\r\n");
        let status = wait_exit(&mut child);
        assert_eq!(status.code(), Some(101), "{workers} workers: {status:?}");
        let logs: Vec<String> = logs.iter().collect();
        assert!(
            logs.iter()
                .any(|l| l.contains("sluice-worker-") && l.contains("panicked")),
            "{logs:?}"
        );
        // The open stream ends with the process instead of going silent.
        assert!(stream.rest().len() <= 1);
    }
}

#[test]
fn a_coalescer_panic_exits_the_process_non_zero() {
    let cfg = config(
        "",
        "[tiers.scale]\ncoalesce_ms = 0\n[tiers.slow]\ncoalesce_ms = 500\n",
    );
    let (mut child, _, logs) = start_faulty("coalescer", &cfg);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(101), "{status:?}");
    let logs: Vec<String> = logs.iter().collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("sluice-coalesce") && l.contains("panicked")),
        "{logs:?}"
    );
}
