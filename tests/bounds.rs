//! Resource bounds (issue #9): clients that never read, idle sockets and
//! half-sent requests cost only themselves.

mod common;

use std::io::Write;
use std::net::SocketAddr;

use common::*;
use socket2::{Domain, Socket, Type};

/// A client that subscribes and never reads, with a small receive buffer
/// so that the server's writes to it block soon.
fn non_reader(addr: SocketAddr, path: &str) -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let mut w: &Socket = &s;
    w.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    s
}

fn healthz(s: &Server) -> serde_json::Value {
    let (_, _, body) = s.request("GET", "/healthz", &[], b"");
    serde_json::from_str(&body).unwrap_or_default()
}

fn metrics(s: &Server) -> String {
    s.request("GET", "/metrics", &[], b"").2
}

/// 100 KB rows: a few fill a non-reader's socket, and stay under the
/// per-stream queue cap (1 MiB).
fn big_row(i: usize) -> String {
    format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(100_000))
}

#[test]
fn clients_that_never_read_do_not_stall_a_fast_one_on_the_same_worker() {
    for driver in DRIVERS {
        let cfg = config("slow_consumer_s = 600", "").replace("workers = 2", "workers = 1");
        let s = Server::start_with(&cfg, driver);
        let slow: Vec<Socket> = (0..200)
            .map(|_| non_reader(s.addr, "/v1/sse/slow"))
            .collect();
        eventually("200 streams", || healthz(&s)["streams"] == 200);
        let mut fast = s.subscribe("/v1/sse/fast", &[]);
        fast.start();
        // Fill every non-reader's socket: their writes block.
        for i in 0..5 {
            s.publish("slow", &big_row(i));
        }
        // The fast stream gets every update, in order.
        for n in 0..50 {
            let id = s.publish("fast", &format!(r#"{{"n":{n}}}"#));
            let f = fast.next_event().expect("the fast stream gets its update");
            assert_eq!(f.id, Some(id), "update {n}");
        }
        // ... while the non-readers were still open, not closed to make room.
        assert_eq!(healthz(&s)["streams"], 201);
        drop(slow);
    }
}

#[test]
fn a_stream_whose_socket_never_drains_is_closed_after_slow_consumer_s_on_a_quiet_topic() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("slow_consumer_s = 1", ""), driver);
        let stuck = non_reader(s.addr, "/v1/sse/quiet");
        let mut ok = s.subscribe("/v1/sse/quiet", &[]);
        ok.start();
        eventually("2 streams", || healthz(&s)["streams"] == 2);
        // More than its socket buffer (sndbuf_bytes), less than the queue cap.
        for i in 0..6 {
            s.publish("quiet", &big_row(i));
        }
        for _ in 0..6 {
            ok.next_event().unwrap();
        }
        // Nothing more is published: the stuck stream is closed all the same.
        eventually("the stuck stream to be closed", || {
            healthz(&s)["streams"] == 1
        });
        eventually("the slow-consumer count", || {
            metric(&metrics(&s), "sluice_sse_slow_consumers_total") == 1.0
        });
        // The reading stream is untouched.
        let id = s.publish("quiet", r#"{"still":"here"}"#);
        assert_eq!(ok.next_event().unwrap().id, Some(id));
        drop(stuck);
    }
}

/// A connection from `from` (a loopback address) that sends nothing.
fn idle_from(from: &str, to: SocketAddr) -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect(&to.into()).unwrap();
    s
}

/// What the server sent before it closed (empty: closed without a word).
fn read_until_close(s: &Socket) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    let mut r: &Socket = s;
    r.read_to_end(&mut out).expect("the server closed it");
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn idle_sockets_from_one_address_lock_out_no_one_else() {
    // The idle host could hold every connection the node allows without
    // the per-address cap on unfinished requests.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cfg = config(
        "max_connections = 1000\nmax_pending_per_ip = 64\nheader_timeout_s = 600\nkeepalive_timeout_s = 600",
        "",
    );
    let s = Server::start(&cfg);
    let idle: Vec<Socket> = (0..2000).map(|_| idle_from("127.0.0.2", s.addr)).collect();
    // Past its 64, the idle host is answered 503 and closed.
    let refused = read_until_close(&idle[1999]);
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    assert!(refused.contains(r#""code":"unavailable""#), "{refused}");
    eventually("the refused sockets to be closed", || {
        healthz(&s)["connections"]
            .as_u64()
            .is_some_and(|n| n <= 64 + 1)
    });
    // Another client still gets a stream and a publish through.
    let mut c = s.subscribe("/v1/sse/through", &[]);
    c.start();
    let id = s.publish("through", r#"{"ok":true}"#);
    assert_eq!(c.next_event().unwrap().id, Some(id));
    drop(idle);
}

#[test]
fn a_request_head_that_never_completes_is_closed_at_header_timeout_s() {
    for driver in DRIVERS {
        let s = Server::start_with(
            &config(
                "header_timeout_s = 1\nkeepalive_timeout_s = 1\nbody_timeout_s = 1",
                "",
            ),
            driver,
        );
        // Nothing at all.
        let silent = idle_from("127.0.0.1", s.addr);
        // Half a head.
        let half = idle_from("127.0.0.1", s.addr);
        (&half)
            .write_all(b"GET /healthz HTTP/1.1\r\nHost:")
            .unwrap();
        // A head, then half a body.
        let body = idle_from("127.0.0.1", s.addr);
        (&body)
            .write_all(
                b"POST /v1/publish/t HTTP/1.1\r\nX-API-Key: pk_test\r\nContent-Length: 10\r\n\r\n{\"a\"",
            )
            .unwrap();
        // One request answered, then idle on keep-alive.
        let kept = idle_from("127.0.0.1", s.addr);
        (&kept)
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        for (what, sock) in [
            ("silent", &silent),
            ("half head", &half),
            ("half body", &body),
        ] {
            assert_eq!(
                read_until_close(sock),
                "",
                "{what}: closed without an answer"
            );
        }
        let answered = read_until_close(&kept);
        assert!(answered.starts_with("HTTP/1.1 200 "), "{answered}");
        assert_eq!(answered.matches("HTTP/1.1").count(), 1, "{answered}");
        // Streams are not requests: they outlive the deadlines.
        let mut c = s.subscribe("/v1/sse/long", &[]);
        c.start();
        let kept_alive = idle_from("127.0.0.1", s.addr);
        assert_eq!(read_until_close(&kept_alive), "", "idle past the deadline");
        let id = s.publish("long", r#"{"n":1}"#);
        assert_eq!(c.next_event().unwrap().id, Some(id));
    }
}

#[test]
fn a_full_descriptor_table_answers_everyone_at_1_2_and_16_workers() {
    use std::io::Read;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    for workers in [1, 2, 16] {
        let cfg = config("", "").replace("workers = 2", &format!("workers = {workers}"));
        let s = Server::start_with_fd_limit(&cfg, 256);
        let mut good = s.subscribe("/v1/sse/fd", &[]);
        good.start();
        let mut conns: Vec<std::net::TcpStream> = (0..400)
            .map(|_| {
                let mut c = std::net::TcpStream::connect(s.addr).unwrap();
                c.write_all(b"GET /v1/sse/fd HTTP/1.1\r\n\r\n").unwrap();
                c
            })
            .collect();
        // Every connection is answered: a stream or a 503, never silence.
        let (mut streams, mut refused) = (0, 0);
        for c in conns.iter_mut() {
            c.set_read_timeout(Some(WAIT)).unwrap();
            let mut status = [0u8; 12];
            match c.read_exact(&mut status) {
                Ok(()) if &status == b"HTTP/1.1 200" => streams += 1,
                Ok(()) if &status == b"HTTP/1.1 503" => refused += 1,
                // Past the lingering refusals a 503 may be cut by a reset:
                // an answer all the same, never a hang.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
                other => panic!(
                    "{workers} workers: {other:?} {:?}",
                    String::from_utf8_lossy(&status)
                ),
            }
        }
        assert!(streams >= 20, "{workers} workers: {streams} streams");
        assert!(refused >= 1, "{workers} workers: never refused");
        drop(conns);
        // Once descriptors are free again a publish is accepted (until
        // then it may get 503), and the open stream gets exactly it.
        let mut id = None;
        eventually("a publish to be accepted again", || {
            let (st, _, body) = s.request(
                "POST",
                "/v1/publish/fd",
                &[("X-API-Key", "pk_test")],
                br#"{"after":"full"}"#,
            );
            if st == 202 {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                id = v["id"].as_str().map(String::from);
            }
            st == 202
        });
        assert_eq!(good.next_event().unwrap().id, id, "{workers} workers");
    }
}
