//! Memory bounds on the real server process (VmRSS from /proc/PID/status):
//! clients that never read share one encoded initial state; large
//! snapshots are sent from that shared buffer, whole.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;

/// Publishes `rows` rows of about 1,000 bytes to `topic` (keyed by `id`),
/// 1,000 per publish.
fn publish_big_state(s: &Server, topic: &str, rows: usize) {
    let pad = "x".repeat(970);
    for start in (0..rows).step_by(1000) {
        let batch: Vec<String> = (start..(start + 1000).min(rows))
            .map(|i| format!(r#"{{"id":{i},"p":"{pad}"}}"#))
            .collect();
        s.publish(topic, &format!("[{}]", batch.join(",")));
    }
}

#[test]
fn clients_that_never_read_share_one_initial_state() {
    const CLIENTS: usize = 300;
    /// What one open stream may add besides the shared state (its task,
    /// queue and buffers: a few hundred bytes measured).
    const PER_STREAM_BYTES: u64 = 32 * 1024;
    let s = Server::start(&config("", ""));
    publish_big_state(&s, "k/big", 10_000);
    let (status, _, snapshot) = s.request("GET", "/v1/snapshot/k/big", &[], b"");
    assert_eq!(status, 200);
    let copy = snapshot.len() as u64;
    assert!(copy > 9_000_000, "a 10 MB state: {copy}");

    let before = s.rss_bytes();
    // Each client sends its request and reads nothing: its initial state
    // stays queued in the server (behind whatever the socket took).
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).expect("connect");
            c.write_all(b"GET /v1/sse/k/big HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("request");
            c
        })
        .collect();
    // A stream is counted once its start frames are queued.
    eventually("every stream open", || s.streams() == CLIENTS as u64);
    let added = s.rss_bytes().saturating_sub(before);
    let bound = 2 * copy + CLIENTS as u64 * PER_STREAM_BYTES;
    assert!(
        added <= bound,
        "{CLIENTS} non-reading clients of a {copy}-byte state added {added} bytes (bound {bound})"
    );
    drop(clients);
}

#[test]
fn a_large_snapshot_is_sent_whole_and_head_gets_only_its_head() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("", ""), driver);
        publish_big_state(&s, "k/snap", 300);
        let (status, head, body) = s.request("GET", "/v1/snapshot/k/snap", &[], b"");
        assert_eq!(status, 200, "{driver:?}");
        assert!(body.len() > 250_000, "{driver:?}");
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{driver:?}: {head}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("snapshot json");
        assert_eq!(v["count"], 300, "{driver:?}");
        assert_eq!(v["data"][299]["id"], 299, "{driver:?}");
        // a kept-alive GET then a HEAD: the body comes exactly once, whole,
        // and the HEAD only its head
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(
            b"GET /v1/snapshot/k/snap HTTP/1.1\r\nHost: t\r\n\r\nHEAD /v1/snapshot/k/snap HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let body_at = text.find("\r\n\r\n").expect("a head") + 4;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{driver:?}");
        assert_eq!(
            &text[body_at..body_at + body.len()],
            body,
            "{driver:?}: the GET body"
        );
        let head = &text[body_at + body.len()..];
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n")
                && head.ends_with("\r\n\r\n")
                && head.matches("\r\n\r\n").count() == 1
                && head.contains(&format!("Content-Length: {}", body.len())),
            "{driver:?}: HEAD answers its head only: {head:?}"
        );
    }
}
