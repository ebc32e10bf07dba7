//! HTTP endpoints and errors of SPEC §3–4: keep-alive, pipelining, publish
//! bodies, credentials, roles, CORS, and bad input that must never disturb
//! an open stream.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

fn error_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    v["error"]["code"].as_str().expect("error.code").to_string()
}

#[test]
fn malformed_requests_never_disturb_an_open_stream() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("", ""), driver);
        let mut c = s.subscribe("/v1/sse/calm", &[]);
        c.start();

        let garbage: Vec<Vec<u8>> = vec![
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(),
            b"GET /v1/sse/calm HTTP/9.9\r\n\r\n".to_vec(),
            b"GET /%zz HTTP/1.1\r\n\r\n".to_vec(),
            format!(
                "GET /v1/sse/calm HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(20_000)
            )
            .into_bytes(),
            {
                let mut r = b"GET /v1/sse/calm HTTP/1.1\r\n".to_vec();
                for i in 0..100 {
                    r.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
                }
                r.extend_from_slice(b"\r\n");
                r
            },
            b"POST /v1/publish/calm HTTP/1.1\r\nX-API-Key: pk_test\r\nContent-Length: nope\r\n\r\n"
                .to_vec(),
        ];
        let expected = [400, 400, 400, 431, 431, 400];
        for (g, want) in garbage.iter().zip(expected) {
            let resp = raw(s.addr, g);
            let (status, _, body) = split_response(resp.as_bytes());
            assert_eq!(status, want, "{resp}");
            let code = error_code(&body);
            assert_eq!(
                code,
                if want == 431 {
                    "headers_too_large"
                } else {
                    "bad_request"
                }
            );
        }
        // Half a request, then the client vanishes.
        {
            let mut half = TcpStream::connect(s.addr).unwrap();
            half.write_all(b"GET /v1/sse/ca").unwrap();
        }
        // Bad JSON publishes nothing.
        let (st, _, body) = s.request(
            "POST",
            "/v1/publish/calm",
            &[("X-API-Key", "pk_test")],
            b"{\"a\":",
        );
        assert_eq!((st, error_code(&body).as_str()), (400, "bad_request"));

        let id = s.publish("calm", r#"{"still":"here"}"#);
        let f = c.next_event().unwrap();
        assert_eq!(
            f.id,
            Some(id),
            "the stream saw exactly the good update next"
        );
        assert_eq!(f.json()["data"][0]["still"], "here");
    }
}

#[test]
fn keep_alive_and_pipelined_requests_on_one_connection() {
    let s = Server::start(&config("", ""));
    s.publish("ka", r#"{"x":1}"#);
    let mut conn = TcpStream::connect(s.addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    // Two pipelined requests, then a third after reading.
    conn.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/snapshot/ka HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while count(&got, b"HTTP/1.1 200 OK") < 2 {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.contains("\"status\":\"ok\""), "{text}");
    assert!(text.contains("\"type\":\"initial_state\""), "{text}");
    assert!(text.contains("Connection: keep-alive"), "{text}");
    conn.write_all(b"POST /v1/publish/ka HTTP/1.1\r\nX-API-Key: pk_test\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{\"x\":2}").unwrap();
    let mut rest = String::new();
    conn.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 202 Accepted\r\n"), "{rest}");
    assert!(rest.contains("\"accepted\":1"), "{rest}");
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn publish_bodies_object_array_ndjson_chunked() {
    let s = Server::start(&config("", ""));
    let mut c = s.subscribe("/v1/sse/k/pub", &[]);
    c.start();
    let pk = ("X-API-Key", "pk_test");

    let (st, _, body) = s.request(
        "POST",
        "/v1/publish/k/pub",
        &[pk],
        br#"[{"id":1},{"id":2}]"#,
    );
    assert_eq!(st, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["accepted"], 2);
    let f = c.next_event().unwrap();
    assert_eq!(f.id.as_deref(), v["id"].as_str());
    assert_eq!(f.json()["count"], 2);

    let nd = b"{\"id\":3}\n{\"id\":4}\n\n{\"id\":5}\n";
    let (st, _, body) = s.request(
        "POST",
        "/v1/publish/k/pub",
        &[pk, ("Content-Type", "application/x-ndjson")],
        nd,
    );
    assert_eq!(st, 202, "{body}");
    assert_eq!(c.next_event().unwrap().json()["count"], 3);

    let chunked = b"POST /v1/publish/k/pub HTTP/1.1\r\nX-API-Key: pk_test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{\"id\"\r\n3\r\n:6}\r\n0\r\n\r\n";
    let resp = raw(s.addr, chunked);
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
    assert_eq!(c.next_event().unwrap().json()["data"][0]["id"], 6);

    // All or nothing: one bad row, nothing published.
    for bad in [
        &br#"[{"id":7},3]"#[..],
        br#"[{"id":8},{"nokey":1}]"#,
        b"[]",
        b"",
        b"nope",
    ] {
        let (st, _, body) = s.request("POST", "/v1/publish/k/pub", &[pk], bad);
        assert_eq!(st, 400, "{body}");
        assert_eq!(error_code(&body), "bad_request");
    }
    let (_, _, snap) = s.request("GET", "/v1/snapshot/k/pub", &[], b"");
    let v: serde_json::Value = serde_json::from_str(&snap).unwrap();
    assert_eq!(v["count"], 6, "{snap}");
    assert_eq!(v["type"], "initial_state");
}

#[test]
fn rows_whose_composite_keys_hold_the_separator_never_merge() {
    let topics = "[[topics]]\npattern = \"kk/*\"\nkey = [\"a\", \"b\"]\n";
    let s = Server::start(&config("", topics));
    // Joined with U+001F these two keys were both "x\u{1f}y\u{1f}z": the
    // second row replaced the first.
    s.publish("kk/sep", r#"{"a":"x\u001fy","b":"z","v":1}"#);
    s.publish("kk/sep", r#"{"a":"x","b":"y\u001fz","v":2}"#);
    // A row with the same texts replaces its key's row: the number 7 and
    // the string "7" are one key value, as they are one filter value.
    s.publish(
        "kk/sep",
        r#"[{"a":7,"b":"q","v":3},{"a":"7","b":"q","v":4}]"#,
    );
    let expected = serde_json::json!([
        {"a":"x\u{1f}y","b":"z","v":1},
        {"a":"x","b":"y\u{1f}z","v":2},
        {"a":"7","b":"q","v":4},
    ]);
    let (st, _, snap) = s.request("GET", "/v1/snapshot/kk/sep", &[], b"");
    assert_eq!(st, 200, "{snap}");
    let v: serde_json::Value = serde_json::from_str(&snap).unwrap();
    assert_eq!(v["count"], 3, "{snap}");
    assert_eq!(v["data"], expected, "{snap}");
    let mut c = s.subscribe("/v1/sse/kk/sep", &[]);
    let (_, init) = c.start();
    assert_eq!(init.json()["data"], expected, "{}", init.raw);
}

#[test]
fn oversized_body_is_413() {
    let s = Server::start(&config("max_body_bytes = 100", ""));
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(200));
    let (st, _, resp) = s.request(
        "POST",
        "/v1/publish/big",
        &[("X-API-Key", "pk_test")],
        body.as_bytes(),
    );
    assert_eq!((st, error_code(&resp).as_str()), (413, "payload_too_large"));
}

#[test]
fn status_codes_and_roles() {
    let s = Server::start(&config("", ""));
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a [u8],
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("POST", "/v1/publish/x", vec![], b"{}", 401, "unauthorized"),
        (
            "POST",
            "/v1/publish/x",
            vec![("X-API-Key", "sk_test")],
            b"{}",
            403,
            "forbidden",
        ),
        (
            "POST",
            "/v1/publish/x",
            vec![("X-API-Key", "wrong")],
            b"{}",
            401,
            "unauthorized",
        ),
        (
            "GET",
            "/v1/publish/x",
            vec![("X-API-Key", "pk_test")],
            b"",
            405,
            "method_not_allowed",
        ),
        ("POST", "/v1/sse/x", vec![], b"", 405, "method_not_allowed"),
        ("GET", "/v1/nothing", vec![], b"", 404, "not_found"),
        ("GET", "/v1/topics", vec![], b"", 401, "unauthorized"),
        (
            "GET",
            "/v1/topics",
            vec![("X-API-Key", "pk_test")],
            b"",
            403,
            "forbidden",
        ),
        ("GET", "/v1/sse/bad%20name", vec![], b"", 400, "bad_request"),
        ("GET", "/v1/sse/a//b", vec![], b"", 400, "bad_request"),
        (
            "GET",
            "/v1/sse/x",
            vec![("X-API-Key", "wrong")],
            b"",
            401,
            "unauthorized",
        ),
    ];
    for (m, p, h, b, want, code) in cases {
        let (st, _, body) = s.request(m, p, &h, b);
        assert_eq!(
            (st, error_code(&body).as_str()),
            (want, code),
            "{m} {p} {h:?}"
        );
    }
    let (st, _, body) = s.request(
        "GET",
        "/v1/topics",
        &[("Authorization", "Bearer ak_test")],
        b"",
    );
    assert_eq!(st, 200, "{body}");
    assert!(body.starts_with("{\"topics\":["), "{body}");
}

#[test]
fn unknown_topic_is_404_when_no_pattern_matches() {
    let cfg = config("", "").replace("[[topics]]\npattern = \"*\"\nhistory = 10\n", "");
    let s = Server::start(&cfg);
    let c = s.subscribe("/v1/sse/nope/x", &[]);
    assert_eq!(
        (c.status, error_code(&c.body_if_error).as_str()),
        (404, "not_found")
    );
    // a matching topic with no updates yet is accepted, empty
    let mut c = s.subscribe("/v1/sse/k/empty", &[]);
    let (_, init) = c.start();
    assert_eq!(init.json()["count"], 0);
}

#[test]
fn every_credential_form_is_accepted_when_auth_is_required() {
    let cfg = config("", "").replace("required = false", "required = true");
    let s = Server::start(&cfg);
    let c = s.subscribe("/v1/sse/cred", &[]);
    assert_eq!(
        (c.status, error_code(&c.body_if_error).as_str()),
        (401, "unauthorized")
    );
    let forms: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/v1/sse/cred".into(), vec![("X-API-Key", "sk_test")]),
        (
            "/v1/sse/cred".into(),
            vec![("Authorization", "Bearer sk_test")],
        ),
        ("/v1/sse/cred".into(), vec![("X-Consumer-Key", "sk_test")]),
        ("/v1/sse/cred?apiKey=sk_test".into(), vec![]),
        ("/v1/sse/cred?api_key=sk_test".into(), vec![]),
        // first match wins: a good header beats a bad query key
        (
            "/v1/sse/cred?apiKey=bad".into(),
            vec![("X-API-Key", "sk_test")],
        ),
    ];
    for (path, headers) in forms {
        let mut c = s.subscribe(&path, &headers);
        assert_eq!(c.status, 200, "{path} {headers:?}: {}", c.body_if_error);
        c.start();
    }
    let c = s.subscribe("/v1/sse/cred?apiKey=sk_test", &[("X-API-Key", "bad")]);
    assert_eq!(c.status, 401, "the header is the first match");
    // keys in the query never reach the log
    let logs = s.logs().join("\n");
    assert!(!logs.contains("sk_test"), "{logs}");
}

#[test]
fn cors_for_allowed_origins_only() {
    let s = Server::start(&config("cors_origins = [\"https://ok.example\"]", ""));
    let c = s.subscribe("/v1/sse/cors", &[("Origin", "https://ok.example")]);
    assert!(
        c.head
            .contains("Access-Control-Allow-Origin: https://ok.example"),
        "{}",
        c.head
    );
    assert!(c.head.contains("Vary: Origin"), "{}", c.head);
    for evil in [
        "https://evil.example",
        "https://ok.example.evil.com",
        "https://evil.com/https://ok.example",
        "http://ok.example",
        "https://ok.example:8443",
        "null",
    ] {
        let c = s.subscribe("/v1/sse/cors", &[("Origin", evil)]);
        assert_eq!(c.status, 200);
        assert!(
            !c.head.contains("Access-Control-Allow-Origin"),
            "{evil}: {}",
            c.head
        );
        let (st, head, _) = s.request("GET", "/v1/snapshot/cors", &[("Origin", evil)], b"");
        assert_eq!(st, 200);
        assert!(
            !head.contains("Access-Control-Allow-Origin"),
            "{evil}: {head}"
        );
    }

    let pre = [
        ("Origin", "https://ok.example"),
        ("Access-Control-Request-Method", "GET"),
    ];
    let (st, head, _) = s.request("OPTIONS", "/v1/sse/cors", &pre, b"");
    assert_eq!(st, 204, "{head}");
    assert!(
        head.contains("Access-Control-Allow-Origin: https://ok.example"),
        "{head}"
    );
    assert!(head.contains("Access-Control-Allow-Headers:"), "{head}");
    let (st, _, body) = s.request(
        "OPTIONS",
        "/v1/sse/cors",
        &[("Origin", "https://evil.example")],
        b"",
    );
    assert_eq!((st, error_code(&body).as_str()), (403, "forbidden"));
}

#[test]
fn cors_star_answers_star_and_never_echoes_the_origin() {
    let s = Server::start(&config("cors_origins = [\"*\"]", ""));
    let origin = ("Origin", "https://anyone.example");
    let c = s.subscribe("/v1/sse/cors", &[origin]);
    assert_eq!(c.status, 200);
    assert!(
        c.head.contains("Access-Control-Allow-Origin: *\r\n"),
        "{}",
        c.head
    );
    assert!(!c.head.contains("anyone.example"), "{}", c.head);
    let pre = [origin, ("Access-Control-Request-Method", "GET")];
    for (method, path, headers) in [
        ("GET", "/v1/snapshot/cors", &[origin][..]),
        ("GET", "/nowhere", &[origin][..]),
        ("OPTIONS", "/v1/sse/cors", &pre[..]),
    ] {
        let (_, head, _) = s.request(method, path, headers, b"");
        assert!(
            head.contains("Access-Control-Allow-Origin: *\r\n") && !head.contains("anyone.example"),
            "{method} {path}: {head}"
        );
    }
    // no Origin, no CORS headers
    let c = s.subscribe("/v1/sse/cors", &[]);
    assert!(!c.head.contains("Access-Control"), "{}", c.head);
}

#[test]
fn healthz_and_metrics() {
    let s = Server::start(&config("", ""));
    let (st, _, body) = s.request("GET", "/healthz", &[], b"");
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    s.publish("m", "{}");
    let (st, head, body) = s.request("GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    assert!(
        metric(&body, r#"sluice_publish_updates_total{source="http"}"#) >= 1.0,
        "{body}"
    );
    assert!(body.contains("sluice_connections_open"), "{body}");
}

#[test]
fn node_connection_limit_is_503() {
    let s = Server::start(&config("max_connections = 3", ""));
    let mut streams: Vec<SseClient> = (0..3).map(|_| s.subscribe("/v1/sse/cap", &[])).collect();
    for c in streams.iter_mut() {
        c.start();
    }
    let c = s.subscribe("/v1/sse/cap", &[]);
    assert_eq!(
        (c.status, error_code(&c.body_if_error).as_str()),
        (503, "unavailable")
    );
    // one stream ends: there is room again
    drop(streams.pop());
    eventually("the closed stream to be released", || {
        let (st, _, _) = s.request("GET", "/healthz", &[], b"");
        st == 200
    });
    let mut c = s.subscribe("/v1/sse/cap", &[]);
    c.start();
}

#[test]
fn full_fd_table_answers_503_and_keeps_open_streams() {
    let s = Server::start_with_fd_limit(&config("", ""), 96);
    let mut good = s.subscribe("/v1/sse/fd", &[]);
    good.start();
    // Open streams until the table is full: each connection is answered,
    // with a stream while descriptors last and with 503 after.
    let mut conns: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(b"GET /v1/sse/fd HTTP/1.1\r\n\r\n").unwrap();
            c
        })
        .collect();
    let (mut streams, mut refused) = (0, 0);
    for c in conns.iter_mut() {
        c.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).unwrap();
        match &buf {
            b"HTTP/1.1 200" => streams += 1,
            b"HTTP/1.1 503" => {
                let mut rest = String::new();
                let _ = c.read_to_string(&mut rest);
                assert!(rest.contains("\"code\":\"unavailable\""), "{rest}");
                // as a client does after a 503
                let _ = c.shutdown(std::net::Shutdown::Both);
                refused += 1;
            }
            other => panic!("unexpected {:?}", String::from_utf8_lossy(other)),
        }
    }
    assert!(streams >= 20, "streams while descriptors lasted: {streams}");
    assert!(
        refused >= 3,
        "the server never answered 503 with a full table"
    );
    let held = conns;
    drop(held);
    // The server recovers: a publish is accepted once descriptors are free
    // (until then it may still get 503), and the open stream was not
    // disturbed: its next frame is exactly that update.
    let mut id = None;
    eventually("a publish to be accepted again", || {
        let (st, _, body) = s.request(
            "POST",
            "/v1/publish/fd",
            &[("X-API-Key", "pk_test")],
            br#"{"after":"full table"}"#,
        );
        if st == 202 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            id = v["id"].as_str().map(String::from);
        } else {
            assert_eq!((st, error_code(&body).as_str()), (503, "unavailable"));
        }
        st == 202
    });
    assert_eq!(good.next_event().unwrap().id, id);
}
