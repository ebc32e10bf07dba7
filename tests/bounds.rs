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
