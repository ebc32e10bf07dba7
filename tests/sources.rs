//! Upstream sources (SPEC §7) against real origins: a second sluice and a
//! hand-written HTTP server for `sse`, a tungstenite server for
//! `websocket`, a real `nats-server` for `nats`. Origins are killed and
//! restarted mid-stream; what the edge's subscribers get is checked frame
//! by frame, and `/healthz` and `/metrics` say what the sources did.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;

const SECRET: &str = "s3cret-origin-token-7d41";

fn healthz(s: &Server) -> serde_json::Value {
    let (st, _, body) = s.request("GET", "/healthz", &[], b"");
    assert_eq!(st, 200, "{body}");
    serde_json::from_str(&body).expect("healthz json")
}

/// The named source's entry in `/healthz`.
fn source(s: &Server, name: &str) -> serde_json::Value {
    let h = healthz(s);
    h["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|x| x["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no source {name} in {h}"))
}

fn metrics(s: &Server) -> String {
    let (st, _, body) = s.request("GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    body
}

/// A metric with one `source` label.
fn source_metric(text: &str, name: &str, source: &str) -> f64 {
    metric(text, &format!("{name}{{source=\"{source}\"}}"))
}

/// The `seq` of every row of an update frame.
fn seqs(f: &Frame) -> Vec<i64> {
    f.json()["data"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect()
}

/// Reads update frames until `want` rows have come; their seqs in order.
fn read_seqs(c: &mut SseClient, want: usize) -> Vec<i64> {
    let mut got = Vec::new();
    while got.len() < want {
        let f = c.next_event().expect("stream open");
        assert_eq!(f.event(), "update", "{}", f.raw);
        got.extend(seqs(&f));
    }
    got
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Nothing secret in what the edge logged or answers.
fn assert_no_secret(edge: &Server) {
    for line in edge.logs() {
        assert!(!line.contains(SECRET), "secret in a log line: {line}");
    }
    let (_, _, h) = edge.request("GET", "/healthz", &[], b"");
    assert!(!h.contains(SECRET), "{h}");
    let m = metrics(edge);
    assert!(!m.contains(SECRET), "secret in /metrics");
}

// ------------------------------------------------------------ a sluice origin

fn origin_config(listen: &str) -> String {
    // The origin closes every stream after a second: the edge reconnects
    // with Last-Event-ID again and again. It knows the edge's key.
    config(
        "retry_ms = 50\nmax_duration_s = 1",
        &format!("[[keys]]\nname = \"edge\"\nkey = \"{SECRET}\"\ntier = \"scale\"\n"),
    )
    .replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{listen}\""),
    )
}

fn edge_source_config(origin: SocketAddr) -> String {
    config(
        "",
        &format!(
            r#"[[sources]]
name = "origin"
kind = "sse"
url = "http://{origin}/v1/sse/feed/x?apiKey=${{ORIGIN_TOKEN}}"
headers = {{ X-Origin-Token = "${{ORIGIN_TOKEN}}" }}
events = ["initial_state", "update"]
topic = "feed/x"
rows = "/data"
backoff_max_ms = 200
"#
        ),
    )
}

/// Publishes `{"seq":n}` on the origin.
fn publish_seq(origin: &Server, n: i64) {
    origin.publish("feed/x", &format!(r#"{{"seq":{n}}}"#));
}

#[test]
fn sse_source_resumes_across_closes_and_origin_restarts_without_duplicates_or_gaps() {
    for driver in DRIVERS {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let origin = Server::start(&origin_config(&listen));
        let edge = Server::start_env(
            &edge_source_config(origin.addr),
            driver,
            &[("ORIGIN_TOKEN", SECRET), ("SLUICE_LOG", "debug")],
        );
        let mut c = edge.subscribe("/v1/sse/feed/x", &[]);
        c.start();
        eventually("the source is up", || {
            source(&edge, "origin")["state"] == "up"
        });
        eventually("the node to be ok", || healthz(&edge)["status"] == "ok");

        // Live, across several closes by the origin (max_duration_s = 1):
        // every reconnect resumes with Last-Event-ID.
        let mut n = 0;
        while source(&edge, "origin")["reconnects"].as_u64().unwrap() < 3 {
            n += 1;
            publish_seq(&origin, n);
            std::thread::sleep(Duration::from_millis(20)); // pacing, not a wait
            assert!(
                n < 2000,
                "the origin's closes did not make the edge reconnect"
            );
        }
        assert_eq!(read_seqs(&mut c, n as usize), (1..=n).collect::<Vec<_>>());

        // The origin dies. The edge backs off and retries; meanwhile it
        // publishes and streams as before, and says it is degraded.
        drop(origin);
        let before = source(&edge, "origin")["reconnects"].as_u64().unwrap();
        eventually("reconnect attempts while the origin is down", || {
            source(&edge, "origin")["reconnects"].as_u64().unwrap() >= before + 3
        });
        let h = healthz(&edge);
        assert_eq!(h["status"], "degraded", "{h}");
        assert_ne!(source(&edge, "origin")["state"], "up");
        edge.publish("other/y", r#"{"a":1}"#);
        let mut other = edge.subscribe("/v1/sse/other/y", &[]);
        let (_, init) = other.start();
        assert_eq!(init.json()["count"], 1);

        // It comes back on the same address, its ids still increasing.
        let origin = Server::start(&origin_config(&listen));
        eventually("the source is up again", || {
            source(&edge, "origin")["state"] == "up"
        });
        let from = n;
        let up_again = source(&edge, "origin")["reconnects"].as_u64().unwrap();
        loop {
            n += 1;
            publish_seq(&origin, n);
            std::thread::sleep(Duration::from_millis(20)); // pacing, not a wait
            if source(&edge, "origin")["reconnects"].as_u64().unwrap() >= up_again + 2 {
                break;
            }
            assert!(n < from + 2000);
        }
        assert_eq!(
            read_seqs(&mut c, (n - from) as usize),
            (from + 1..=n).collect::<Vec<_>>()
        );
        // The origin closes each stream after a second: the source may be
        // between two connections at any one look.
        eventually("the node to be ok", || healthz(&edge)["status"] == "ok");
        let m = metrics(&edge);
        assert!(source_metric(&m, "sluice_source_rows_total", "origin") >= n as f64);
        assert_eq!(
            source_metric(&m, "sluice_source_messages_dropped_total", "origin"),
            0.0
        );
        assert_eq!(source_metric(&m, "sluice_source_up", "origin"), 1.0);
        assert!(m.contains("sluice_source_last_message_age_seconds{source=\"origin\"}"));
        assert_no_secret(&edge);
        drop(origin);
    }
}

// ------------------------------------------------- a hand-written SSE origin

/// What one request to the test origin asked for.
struct Request {
    path: String,
    head: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// An HTTP origin whose answers the test writes byte by byte. Each
/// connection runs on its own thread; `handler` gets how many requests to
/// the same path came before, the request and the socket.
fn http_origin(handler: impl Fn(usize, &Request, TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let counts: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let handler = handler.clone();
            let counts = counts.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let n = {
                    let mut c = counts.lock().unwrap();
                    let path_only = path.split('?').next().unwrap().to_string();
                    match c.iter_mut().find(|(p, _)| *p == path_only) {
                        Some((_, k)) => {
                            *k += 1;
                            *k - 1
                        }
                        None => {
                            c.push((path_only, 1));
                            0
                        }
                    }
                };
                handler(n, &Request { path, head }, stream);
            });
        }
    });
    addr
}

fn chunk(s: &mut TcpStream, piece: &str) {
    let _ = write!(s, "{:x}\r\n{piece}\r\n", piece.len());
    let _ = s.flush();
}

fn tick(id: u32, key: &str, seq: i64) -> String {
    format!(
        "event: tick\nid: {id}\ndata: {{\"rows\":[{{\"id\":\"{key}\",\"sym\":\"s\",\"seq\":{seq}}}]}}\n\n"
    )
}

#[test]
fn sse_source_parses_any_framing_resumes_with_last_event_id_and_upserts_the_snapshot() {
    for driver in DRIVERS {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let (seen_tx, seen) = mpsc::channel::<String>();
        let seen_tx = Mutex::new(seen_tx);
        let snapshots = Arc::new(AtomicUsize::new(0));
        let snaps = snapshots.clone();
        let addr = http_origin(move |n, req, mut s| {
            if req.path.starts_with("/snapshot") {
                snaps.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"rows":[{"id":"snap","sym":"s","seq":0}]}"#;
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                return;
            }
            let auth = req.header("authorization").unwrap_or("").to_string();
            let last = req.header("last-event-id").unwrap_or("-").to_string();
            let _ = seen_tx
                .lock()
                .unwrap()
                .send(format!("{n} {auth} {last} {}", req.path));
            match n {
                0 => {
                    // the test subscribes to the edge meanwhile
                    let _ = go_rx.lock().unwrap().recv();
                    let _ = s.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    );
                }
                1 => {
                    // chunked, CRLF, comments, retry, a data line split over
                    // chunks, multi-line data, messages that do not map
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                    );
                    chunk(&mut s, ": hello\r\n\r\nretry: 50\r\n");
                    chunk(&mut s, &tick(1, "a", 1).replace('\n', "\r\n"));
                    let two = tick(2, "a", 2).replace('\n', "\r\n");
                    let (x, y) = two.split_at(40);
                    chunk(&mut s, x);
                    chunk(&mut s, y);
                    chunk(
                        &mut s,
                        "event: tick\nid: 3\ndata: {\"rows\":\ndata: [{\"id\":\"a\",\"sym\":\"s\",\"seq\":3}]}\r",
                    );
                    chunk(&mut s, "\n\r\n");
                    chunk(&mut s, "event: tick\nid: 4\ndata: {not json\n\n");
                    chunk(
                        &mut s,
                        "event: tick\nid: 5\ndata: {\"rows\":[{\"id\":\"a\",\"seq\":5}]}\n\n",
                    );
                    chunk(
                        &mut s,
                        "event: other\nid: 6\ndata: {\"rows\":[{\"id\":\"a\",\"sym\":\"s\",\"seq\":666}]}\n\n",
                    );
                    chunk(&mut s, &tick(7, "b", 7));
                    let _ = s.write_all(b"0\r\n\r\n");
                    let _ = s.flush();
                    // the edge ends the connection at the end of the body
                    let _ = s.read(&mut [0u8; 64]);
                }
                2 => {
                    // plain body to the close, then silence: idle_timeout_s
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
                    );
                    let _ = s.write_all(tick(8, "a", 8).as_bytes());
                    let _ = s.flush();
                    let _ = s.read(&mut [0u8; 64]); // until the edge gives up
                }
                3 => {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
                    );
                    let _ = s.write_all(tick(9, "a", 9).as_bytes());
                    // held open: comments keep idle_timeout_s from firing
                    while s.write_all(b": keep-alive\n\n").is_ok() {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                _ => {
                    let _ = s.write_all(
                        b"HTTP/1.1 500 No\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    );
                }
            }
        });
        let edge = Server::start_env(
            &config(
                "",
                &format!(
                    r#"[[sources]]
name = "framed"
kind = "sse"
url = "http://{addr}/stream?token=${{ORIGIN_TOKEN}}"
headers = {{ Authorization = "Bearer ${{ORIGIN_TOKEN}}" }}
events = ["tick"]
topic = "k/{{sym}}"
rows = "/rows"
snapshot_url = "http://{addr}/snapshot?token=${{ORIGIN_TOKEN}}"
idle_timeout_s = 2
backoff_max_ms = 100
"#
                ),
            ),
            driver,
            &[("ORIGIN_TOKEN", SECRET), ("SLUICE_LOG", "debug")],
        );
        let mut c = edge.subscribe("/v1/sse/k/s", &[]);
        let (_, init) = c.start();
        assert_eq!(init.json()["count"], 0);
        go_tx.send(()).unwrap();
        let bearer = format!("Bearer {SECRET}");
        let first = seen.recv_timeout(WAIT).unwrap();
        assert_eq!(first, format!("0 {bearer} - /stream?token={SECRET}"));
        let second = seen.recv_timeout(WAIT).unwrap();
        assert_eq!(second, format!("1 {bearer} - /stream?token={SECRET}"));

        // snapshot, 1, 2, 3, 7 (4 and 5 dropped, 6 not taken); then the
        // origin closes and the edge resumes after 7: snapshot, 8; then
        // silence and it resumes after 8: snapshot, 9.
        assert_eq!(read_seqs(&mut c, 9), [0, 1, 2, 3, 7, 0, 8, 0, 9]);
        assert_eq!(
            seen.recv_timeout(WAIT).unwrap(),
            format!("2 {bearer} 7 /stream?token={SECRET}")
        );
        assert_eq!(
            seen.recv_timeout(WAIT).unwrap(),
            format!("3 {bearer} 8 /stream?token={SECRET}")
        );
        assert_eq!(snapshots.load(Ordering::SeqCst), 3);

        // the state table holds the latest row per key
        let (_, _, snap) = edge.request("GET", "/v1/snapshot/k/s", &[], b"");
        let v: serde_json::Value = serde_json::from_str(&snap).unwrap();
        let mut rows: Vec<(String, i64)> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_str().unwrap().into(), r["seq"].as_i64().unwrap()))
            .collect();
        rows.sort();
        assert_eq!(rows, [("a".into(), 9), ("b".into(), 7), ("snap".into(), 0)]);

        let h = source(&edge, "framed");
        assert_eq!(h["state"], "up", "{h}");
        assert_eq!(h["kind"], "sse");
        assert_eq!(h["reconnects"], 3);
        assert!(h["last_message_ms"].as_u64().unwrap() > 0);
        let m = metrics(&edge);
        assert_eq!(
            source_metric(&m, "sluice_source_messages_dropped_total", "framed"),
            2.0
        );
        assert_eq!(
            source_metric(&m, "sluice_source_messages_total", "framed"),
            11.0
        );
        assert_eq!(source_metric(&m, "sluice_source_rows_total", "framed"), 9.0);
        assert_eq!(
            source_metric(&m, "sluice_source_reconnects_total", "framed"),
            3.0
        );
        assert_no_secret(&edge);
    }
}

#[test]
fn a_source_whose_origin_is_unreachable_degrades_health_but_not_serving() {
    let dead = free_port();
    let edge = Server::start(&config(
        "",
        &format!(
            "[[sources]]\nname = \"gone\"\nkind = \"sse\"\nurl = \"http://127.0.0.1:{dead}/s\"\ntopic = \"t/x\"\nbackoff_max_ms = 50\n"
        ),
    ));
    eventually("backoff after failed connects", || {
        source(&edge, "gone")["reconnects"].as_u64().unwrap() >= 3
    });
    let h = healthz(&edge);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(h["sources"][0]["last_message_ms"].is_null(), "{h}");
    let mut c = edge.subscribe("/v1/sse/t/x", &[]);
    c.start();
    edge.publish("t/x", r#"{"seq":1}"#);
    assert_eq!(read_seqs(&mut c, 1), [1]);
    assert_eq!(
        source_metric(&metrics(&edge), "sluice_source_up", "gone"),
        0.0
    );
}

// ------------------------------------------------------ a WebSocket origin

#[test]
#[allow(clippy::result_large_err)] // tungstenite's handshake callback type
fn websocket_source_subscribes_after_each_connect_answers_pings_and_reconnects() {
    use tungstenite::Message;
    use tungstenite::handshake::server::{Request as WsRequest, Response as WsResponse};

    for driver in DRIVERS {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (log_tx, log) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { break };
                let log_tx = log_tx.clone();
                let mut auth = String::new();
                let mut ws =
                    match tungstenite::accept_hdr(stream, |req: &WsRequest, resp: WsResponse| {
                        auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        Ok(resp)
                    }) {
                        Ok(ws) => ws,
                        Err(_) => continue,
                    };
                let sub = match ws.read() {
                    Ok(Message::Text(t)) => t.to_string(),
                    other => format!("{other:?}"),
                };
                let _ = log_tx.send(format!("{n} {auth} {sub}"));
                let row = |seq: i64| format!(r#"{{"id":"r{seq}","sym":"s","seq":{seq}}}"#);
                if n == 0 {
                    let _ = go_rx.recv();
                    let _ = ws.send(Message::text(row(1)));
                    let _ = ws.send(Message::text("garbage"));
                    let _ = ws.send(Message::binary(vec![1u8, 2, 3]));
                    // over the edge's max_body_bytes: dropped, not fatal
                    let _ = ws.send(Message::text(format!(
                        r#"{{"id":"big","sym":"s","seq":99,"pad":"{}"}}"#,
                        "x".repeat(2000)
                    )));
                    let _ = ws.send(Message::text(format!("[{},{}]", row(2), row(3))));
                    let _ = ws.send(Message::Ping(b"p".to_vec().into()));
                    // the edge answers the ping
                    loop {
                        match ws.read() {
                            Ok(Message::Pong(p)) if &p[..] == b"p" => break,
                            Ok(_) => {}
                            Err(e) => panic!("no pong: {e}"),
                        }
                    }
                    let _ = log_tx.send("pong".into());
                    let _ = ws.send(Message::text(row(4)));
                    let _ = ws.close(None);
                    while ws.read().is_ok() {}
                } else {
                    let _ = ws.send(Message::text(row(5)));
                    // quiet from here on: the edge pings to check the origin
                    // is alive (tungstenite answers while reading)
                    loop {
                        match ws.read() {
                            Ok(Message::Ping(_)) => {
                                let _ = log_tx.send(format!("{n} ping"));
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                }
            }
        });
        let edge = Server::start_env(
            &config(
                "max_body_bytes = 1024",
                &format!(
                    r#"[[sources]]
name = "ws"
kind = "websocket"
url = "ws://{addr}/feed"
headers = {{ Authorization = "Bearer ${{ORIGIN_TOKEN}}" }}
subscribe = '{{"op":"subscribe","channels":["odds"]}}'
topic = "k/{{sym}}"
idle_timeout_s = 5
backoff_max_ms = 100
"#
                ),
            ),
            driver,
            &[("ORIGIN_TOKEN", SECRET), ("SLUICE_LOG", "debug")],
        );
        let mut c = edge.subscribe("/v1/sse/k/s", &[]);
        c.start();
        let sub = r#"{"op":"subscribe","channels":["odds"]}"#;
        assert_eq!(
            log.recv_timeout(WAIT).unwrap(),
            format!("0 Bearer {SECRET} {sub}")
        );
        go_tx.send(()).unwrap();
        let f1 = c.next_event().unwrap();
        assert_eq!(seqs(&f1), [1]);
        let f2 = c.next_event().unwrap();
        assert_eq!(seqs(&f2), [2, 3], "one message, one update: {}", f2.raw);
        assert_eq!(log.recv_timeout(WAIT).unwrap(), "pong");
        assert_eq!(read_seqs(&mut c, 2), [4, 5]);
        assert_eq!(
            log.recv_timeout(WAIT).unwrap(),
            format!("1 Bearer {SECRET} {sub}")
        );
        assert_eq!(log.recv_timeout(WAIT).unwrap(), "1 ping");
        let h = source(&edge, "ws");
        assert_eq!(h["state"], "up", "{h}");
        assert_eq!(h["kind"], "websocket");
        assert_eq!(h["reconnects"], 1);
        let m = metrics(&edge);
        assert_eq!(
            source_metric(&m, "sluice_source_messages_dropped_total", "ws"),
            3.0
        );
        assert_eq!(source_metric(&m, "sluice_source_rows_total", "ws"), 5.0);
        assert_no_secret(&edge);
    }
}

// ------------------------------------------------------------- NATS

/// A `nats-server` on a loopback port, killed when dropped.
struct Nats {
    child: Child,
    port: u16,
}

fn nats_server_binary() -> Option<String> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/sbin",
        "/usr/local/sbin",
        "/usr/bin",
    ]) {
        let p = format!("{dir}/nats-server");
        if std::path::Path::new(&p).exists() {
            return Some(p);
        }
    }
    None
}

impl Nats {
    fn start(bin: &str, port: u16) -> Nats {
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        eventually("nats-server listens", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Nats { child, port }
    }

    /// Publishes with the NATS text protocol; returns once the server has
    /// processed it (PING answered by PONG).
    fn publish(&self, subject: &str, body: &str) {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("INFO "), "{line}");
        let mut w = s;
        write!(
            w,
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nPUB {subject} {}\r\n{body}\r\nPING\r\n",
            body.len()
        )
        .unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(!line.starts_with("-ERR"), "{line}");
            if line.starts_with("PONG") {
                return;
            }
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nats_source_maps_subjects_to_topics_and_survives_a_server_restart() {
    let Some(bin) = nats_server_binary() else {
        if std::env::var("SLUICE_SKIP_NATS").as_deref() == Ok("1") {
            eprintln!("SLUICE_SKIP_NATS=1: skipping the NATS source test");
            return;
        }
        panic!(
            "nats-server not found: install it with `apt-get install -y nats-server` \
             (or set SLUICE_SKIP_NATS=1 to skip this test)"
        );
    };
    for driver in DRIVERS {
        let port = free_port();
        let nats = Nats::start(&bin, port);
        let edge = Server::start_with(
            &config(
                "",
                &format!(
                    r#"[[sources]]
name = "bus"
kind = "nats"
url = "nats://127.0.0.1:{port}"
subjects = ["feed.>"]
topic = "{{subject}}"
idle_timeout_s = 2
backoff_max_ms = 100
"#
                ),
            ),
            driver,
        );
        // Core NATS keeps nothing for late subscribers: probe until the
        // edge's subscription takes messages.
        let probe_until_taken = |nats: &Nats, edge: &Server, round: i64| {
            eventually("the edge's subscription takes messages", || {
                nats.publish("feed.probe", &format!(r#"{{"round":{round}}}"#));
                let (_, _, b) = edge.request("GET", "/v1/snapshot/feed/probe", &[], b"");
                b.contains(&format!(r#""round":{round}"#))
            });
        };
        probe_until_taken(&nats, &edge, 1);
        assert_eq!(source(&edge, "bus")["state"], "up");
        let mut c = edge.subscribe("/v1/sse/feed/a/b", &[]);
        c.start();
        nats.publish("feed.a.b", r#"{"seq":1}"#);
        nats.publish("feed.a.b", "not json");
        nats.publish("feed.a.b", "{\"seq\":2}\n{\"seq\":3}\n");
        nats.publish("feed.a.b", r#"[{"seq":4},{"seq":5}]"#);
        assert_eq!(read_seqs(&mut c, 5), [1, 2, 3, 4, 5]);

        drop(nats);
        eventually("the source notices", || {
            source(&edge, "bus")["state"] != "up"
        });
        assert_eq!(healthz(&edge)["status"], "degraded");
        eventually("reconnect attempts", || {
            source(&edge, "bus")["reconnects"].as_u64().unwrap() >= 3
        });
        let nats = Nats::start(&bin, port);
        probe_until_taken(&nats, &edge, 2);
        eventually("up again", || source(&edge, "bus")["state"] == "up");
        nats.publish("feed.a.b", r#"{"seq":6}"#);
        assert_eq!(read_seqs(&mut c, 1), [6]);
        assert_eq!(healthz(&edge)["status"], "ok");
        let m = metrics(&edge);
        assert_eq!(
            source_metric(&m, "sluice_source_messages_dropped_total", "bus"),
            1.0
        );
        assert!(source_metric(&m, "sluice_source_reconnects_total", "bus") >= 3.0);
    }
}

// ------------------------------------------------------------- configs

#[test]
fn the_upstream_example_configs_pass_check_config() {
    for name in ["upstream-sse", "upstream-websocket"] {
        let path = format!("{}/config/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(BIN)
            .args(["check-config", &path])
            .env("ORIGIN_TOKEN", SECRET)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // without its variable the config is refused, naming it
        let out = Command::new(BIN)
            .args(["check-config", &path])
            .env_remove("ORIGIN_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("environment variable ORIGIN_TOKEN is not set"),
            "{name}: {err}"
        );
    }
}
