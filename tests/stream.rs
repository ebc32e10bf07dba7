//! SSE streams end to end: frames of SPEC §2 in order and exact, fan-out to
//! many subscribers, heartbeats, closing frames, resume, drain. Every test
//! that does I/O runs on both monoio drivers.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn connected_initial_state_and_updates_are_exact() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("retry_ms = 2500\nheartbeat_s = 20", ""), driver);
        s.publish("k/a", r#"[{"id":1,"v":"x"},{"id":2,"v":"y"}]"#);
        let id0 = s.publish("k/a", r#"{"id":1,"v":"z"}"#);

        let mut c = s.subscribe("/v1/sse/k/a", &[]);
        assert!(c.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", c.head);
        for h in [
            "Content-Type: text/event-stream",
            "Cache-Control: no-cache",
            "X-Accel-Buffering: no",
        ] {
            assert!(c.head.contains(h), "missing {h}: {}", c.head);
        }
        let (conn, init) = c.start();
        assert_eq!(conn.retry.as_deref(), Some("2500"));
        let cj = conn.json();
        assert_eq!(cj["type"], "connected");
        assert_eq!(cj["topic"], "k/a");
        assert_eq!(cj["tier"], "scale");
        assert_eq!(cj["push_mode"], "raw");
        assert_eq!(cj["min_push_interval_s"], 0.0);
        assert_eq!(cj["transport"], "sse");
        assert_eq!(cj["heartbeat_s"], 20);
        assert_eq!(cj["resumed"], false);
        assert!(cj["timestamp"].as_u64().unwrap() > 1_600_000_000_000);

        assert_eq!(init.event(), "initial_state");
        assert_eq!(init.id.as_deref(), Some(id0.as_str()));
        let ij = init.json();
        let ts = ij["timestamp"].as_u64().unwrap();
        assert_eq!(
            init.raw,
            format!(
                "event: initial_state\nid: {id0}\ndata: {{\"type\":\"initial_state\",\"topic\":\"k/a\",\"count\":2,\"timestamp\":{ts},\"data\":[{{\"id\":1,\"v\":\"z\"}},{{\"id\":2,\"v\":\"y\"}}]}}\n\n"
            )
        );

        let id1 = s.publish("k/a", r#"[{"id":3, "v": [1, 2]}]"#);
        let u = c.next_event().unwrap();
        let ts = u.json()["timestamp"].as_u64().unwrap();
        assert_eq!(
            u.raw,
            format!(
                "event: update\nid: {id1}\ndata: {{\"type\":\"update\",\"topic\":\"k/a\",\"count\":1,\"timestamp\":{ts},\"data\":[{{\"id\":3,\"v\":[1,2]}}]}}\n\n"
            )
        );
        assert!(id1.parse::<u64>().unwrap() > id0.parse::<u64>().unwrap());
    }
}

#[test]
fn an_update_reaches_each_of_500_subscribers_once_and_in_order() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("", ""), driver);
        let mut clients: Vec<SseClient> = (0..500)
            .map(|_| s.subscribe("/v1/sse/fan/out", &[]))
            .collect();
        // Each initial state means that subscriber is in its worker's group.
        for c in clients.iter_mut() {
            let (_, init) = c.start();
            assert_eq!(init.event(), "initial_state");
        }
        let ids: Vec<String> = (0..20)
            .map(|i| s.publish("fan/out", &format!("{{\"n\":{i}}}")))
            .collect();
        for (n, c) in clients.iter_mut().enumerate() {
            for (i, id) in ids.iter().enumerate() {
                let f = c.next_event().unwrap();
                assert_eq!(f.id.as_ref(), Some(id), "client {n} frame {i} ({driver:?})");
                assert_eq!(f.json()["data"][0]["n"], i, "client {n}");
            }
        }
        // Nothing more: the next frame any client sees is a later update.
        let last = s.publish("fan/out", r#"{"n":"end"}"#);
        for c in clients.iter_mut() {
            assert_eq!(c.next_event().unwrap().id.as_ref(), Some(&last));
        }
    }
}

#[test]
fn heartbeat_comment_when_silent() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("", ""), driver);
        let mut c = s.subscribe("/v1/sse/hb?heartbeat_s=1", &[]);
        let (conn, _) = c.start();
        assert_eq!(conn.json()["heartbeat_s"], 1);
        let hb = c.next().unwrap();
        assert!(hb.data.is_none() && hb.event.is_none(), "{}", hb.raw);
        let secs: u64 = hb
            .raw
            .strip_prefix(": heartbeat ")
            .and_then(|r| r.strip_suffix("\n\n"))
            .unwrap()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(secs.abs_diff(now) <= 2, "{secs} vs {now}");
    }
}

#[test]
fn heartbeat_out_of_range_is_400() {
    let s = Server::start(&config("", ""));
    for q in ["0", "31", "x", ""] {
        let c = s.subscribe(&format!("/v1/sse/hb?heartbeat_s={q}"), &[]);
        assert_eq!(c.status, 400, "heartbeat_s={q}");
        let v: serde_json::Value = serde_json::from_str(&c.body_if_error).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
    }
}

#[test]
fn limit_frame_after_max_events_then_close() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("max_events = 3", ""), driver);
        let mut c = s.subscribe("/v1/sse/lim", &[]);
        c.start();
        for i in 0..5 {
            s.publish("lim", &format!("{{\"i\":{i}}}"));
        }
        let rest = c.rest();
        let events: Vec<&str> = rest
            .iter()
            .filter(|f| f.data.is_some())
            .map(|f| f.event())
            .collect();
        assert_eq!(events, ["update", "update", "update", "limit"], "{rest:?}");
        assert_eq!(
            rest.last().unwrap().raw,
            "event: limit\ndata: {\"type\":\"limit\",\"max_events\":3}\n\n"
        );
    }
}

#[test]
fn timeout_frame_at_max_duration_then_close() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("max_duration_s = 1\nheartbeat_s = 30", ""), driver);
        let mut c = s.subscribe("/v1/sse/dur", &[]);
        c.start();
        let rest = c.rest();
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert_eq!(
            rest[0].raw,
            "event: timeout\ndata: {\"type\":\"timeout\",\"max_duration_s\":1}\n\n"
        );
    }
}

/// Lower bounds only, measured from a client-side instant that precedes
/// what the server counts from (the request, the publish): a stream that
/// started mid-second used to get its timeout and heartbeats up to a second
/// early.
#[test]
fn timeout_and_heartbeats_never_come_early() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("max_duration_s = 3", ""), driver);
        let asked = Instant::now();
        let mut c = s.subscribe("/v1/sse/early?heartbeat_s=1", &[]);
        c.start();
        let hb = c.next().unwrap();
        assert!(hb.raw.starts_with(": heartbeat "), "{}", hb.raw);
        let silent = asked.elapsed();
        assert!(
            silent >= Duration::from_secs(1),
            "first heartbeat after {silent:?} of silence"
        );
        let published = Instant::now();
        s.publish("early", "{}");
        assert_eq!(c.next().unwrap().event(), "update");
        let hb = c.next().unwrap();
        assert!(hb.raw.starts_with(": heartbeat "), "{}", hb.raw);
        let silent = published.elapsed();
        assert!(
            silent >= Duration::from_secs(1),
            "heartbeat {silent:?} after the update"
        );
        let rest = c.rest();
        let timeout = rest.last().expect("a timeout frame");
        assert_eq!(timeout.event(), "timeout", "{rest:?}");
        let lasted = asked.elapsed();
        assert!(
            lasted >= Duration::from_secs(3),
            "timed out after {lasted:?}"
        );
    }
}

#[test]
fn resume_replays_exactly_the_frames_after_last_event_id() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("", ""), driver);
        let ids: Vec<String> = (0..6)
            .map(|i| s.publish("res/a", &format!("{{\"i\":{i}}}")))
            .collect();

        // Header form.
        let mut c = s.subscribe("/v1/sse/res/a", &[("Last-Event-ID", &ids[2])]);
        let (conn, first) = c.start();
        assert_eq!(conn.json()["resumed"], true);
        let mut got = vec![first];
        for _ in 0..2 {
            got.push(c.next_event().unwrap());
        }
        let got_ids: Vec<String> = got.iter().map(|f| f.id.clone().unwrap()).collect();
        assert_eq!(got_ids, ids[3..].to_vec());
        assert!(got.iter().all(|f| f.event() == "update"));
        // then live, no duplicate
        let next = s.publish("res/a", r#"{"i":6}"#);
        assert_eq!(c.next_event().unwrap().id, Some(next.clone()));

        // Query form; the header wins when both are given.
        let mut c = s.subscribe(&format!("/v1/sse/res/a?lastEventId={}", ids[4]), &[]);
        let (conn, first) = c.start();
        assert_eq!(conn.json()["resumed"], true);
        assert_eq!(first.id, Some(ids[5].clone()));
        let mut c = s.subscribe(
            &format!("/v1/sse/res/a?lastEventId={}", ids[0]),
            &[("Last-Event-ID", &ids[5])],
        );
        let (_, first) = c.start();
        assert_eq!(first.id, Some(next.clone()));

        // Resuming from the newest id: no replay frame, straight to live.
        let mut c = s.subscribe("/v1/sse/res/a", &[("Last-Event-ID", &next)]);
        let conn = c.next_event().unwrap();
        assert_eq!(conn.json()["resumed"], true);
        let live = s.publish("res/a", r#"{"i":7}"#);
        assert_eq!(c.next_event().unwrap().id, Some(live.clone()));

        // Unknown, malformed: resumed false and an initial state.
        for bad in ["123", "abc", "", "99999999999999999999999"] {
            let mut c = s.subscribe("/v1/sse/res/a", &[("Last-Event-ID", bad)]);
            let (conn, init) = c.start();
            assert_eq!(conn.json()["resumed"], false, "id {bad:?}");
            assert_eq!(init.event(), "initial_state");
            assert_eq!(init.id, Some(live.clone()));
        }
    }
}

#[test]
fn resume_across_a_restart_gets_a_fresh_state_and_newer_ids() {
    let cfg = config("", "");
    let s = Server::start(&cfg);
    let old: Vec<String> = (0..3)
        .map(|i| s.publish("rr", &format!("{{\"i\":{i}}}")))
        .collect();
    let mut c = s.subscribe("/v1/sse/rr", &[]);
    c.start();
    let status = s.stop();
    assert!(status.success(), "{status:?}");
    let rest = c.rest();
    let last = rest.last().expect("a closing frame");
    assert_eq!(last.event(), "reconnect");
    let j = last.json();
    assert_eq!(j["reason"], "shutdown");
    let r = j["retry_ms"].as_u64().unwrap();
    assert_eq!(last.retry.as_deref(), Some(r.to_string().as_str()));
    assert!((2250..=3750).contains(&r), "retry {r} jittered around 3000");

    let s = Server::start(&cfg);
    let fresh = s.publish("rr", r#"{"i":"new"}"#);
    assert!(
        old.iter()
            .all(|o| o.parse::<u64>().unwrap() < fresh.parse::<u64>().unwrap())
    );
    let mut c = s.subscribe("/v1/sse/rr", &[("Last-Event-ID", &old[2])]);
    let (conn, init) = c.start();
    assert_eq!(conn.json()["resumed"], false);
    assert_eq!(init.event(), "initial_state");
    assert_eq!(init.id, Some(fresh));
}

#[test]
fn drain_tells_every_stream_to_reconnect_with_spread_retries() {
    for driver in DRIVERS {
        let s = Server::start_with(&config("", ""), driver);
        let mut clients: Vec<SseClient> = (0..40).map(|_| s.subscribe("/v1/sse/dr", &[])).collect();
        for c in clients.iter_mut() {
            c.start();
        }
        assert!(s.stop().success());
        let mut retries = HashSet::new();
        for c in clients.iter_mut() {
            let rest = c.rest();
            let f = rest
                .iter()
                .find(|f| f.event() == "reconnect")
                .expect("reconnect frame");
            assert_eq!(f.json()["reason"], "shutdown");
            retries.insert(f.json()["retry_ms"].as_u64().unwrap());
        }
        assert!(retries.len() > 5, "retries are jittered: {retries:?}");
    }
}

/// A stream whose client never reads keeps its worker draining for
/// DRAIN_GRACE_S; the other worker has nothing to wait for. Every new
/// connection meanwhile, on either worker's listener, must get a whole 503.
#[test]
fn while_draining_every_new_connection_on_every_listener_gets_503() {
    use std::io::{Read, Write};
    for driver in DRIVERS {
        let mut s = Server::start_with(&config("", ""), driver);
        // A subscriber with a tiny receive window that never reads, sent
        // more than the server's socket can buffer (its send buffer grows up
        // to tcp_wmem's maximum): its writes block, and it stays open (or
        // closing, as a slow consumer) until its grace runs out.
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        sock.connect(&s.addr.into()).expect("connect");
        let mut stuck: std::net::TcpStream = sock.into();
        stuck
            .write_all(b"GET /v1/sse/stuck HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        eventually("the stuck stream to open", || {
            let (_, _, body) = s.request("GET", "/healthz", &[], b"");
            body.contains("\"streams\":1")
        });
        let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
            .ok()
            .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(4 << 20);
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(900_000));
        for _ in 0..(wmem_max + (2 << 20)) / big.len() + 1 {
            s.publish("stuck", &big);
        }

        s.signal(15);
        // The worker without streams has drained; it must keep answering.
        eventually("a worker to finish draining", || {
            s.logs().iter().any(|l| l.contains("drained its streams"))
        });
        for i in 0..20 {
            let path = ["/v1/sse/new", "/v1/snapshot/new", "/healthz"][i % 3];
            let mut c = std::net::TcpStream::connect(s.addr).expect("connect while draining");
            c.set_read_timeout(Some(WAIT)).unwrap();
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                .unwrap();
            let mut out = Vec::new();
            if let Err(e) = c.read_to_end(&mut out) {
                panic!(
                    "{driver:?} probe {i} {path}: {e} after {} bytes (sluice running: {})",
                    out.len(),
                    s.is_running()
                );
            }
            let (status, head, body) = split_response(&out);
            assert_eq!(status, 503, "{driver:?} probe {i} {path}: {head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("Content-Length");
            assert_eq!(body.len(), len, "a whole body: {body:?}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
            if path == "/healthz" {
                assert_eq!(v["status"], "draining");
            } else {
                assert_eq!(v["error"]["code"], "unavailable", "{body}");
            }
        }
        assert!(
            s.is_running(),
            "{driver:?}: the stuck stream should hold the drain open"
        );
        drop(stuck);
        let status = s.wait_exit();
        assert!(status.success(), "{driver:?}: {status:?}");
    }
}

#[test]
fn a_client_that_stops_reading_is_told_slow_consumer_and_others_keep_up() {
    use std::io::Read;
    let s = Server::start(&config("", ""));
    // A subscriber that stops reading after its request.
    let mut stuck = std::net::TcpStream::connect(s.addr).unwrap();
    std::io::Write::write_all(&mut stuck, b"GET /v1/sse/slow HTTP/1.1\r\n\r\n").unwrap();
    let mut good = s.subscribe("/v1/sse/slow", &[]);
    good.start();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(60_000));
    // 200 x 60 KB: far more than the 1 MiB queue bound plus socket buffers.
    for _ in 0..200 {
        let id = s.publish("slow", &big);
        let f = good.next_event().unwrap();
        assert_eq!(f.id, Some(id), "the reading client keeps up");
    }
    // Now read what the stuck client was sent: it ends with the reconnect.
    stuck.set_read_timeout(Some(WAIT)).unwrap();
    let mut all = Vec::new();
    stuck.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    let last_event = text.rfind("event: ").map(|i| &text[i..]).unwrap_or("");
    assert!(
        last_event.starts_with("event: reconnect\nretry: ")
            && last_event.contains("\"reason\":\"slow_consumer\""),
        "the last frame of the stuck client is a slow_consumer reconnect; got {} bytes ending {:?}",
        all.len(),
        &text[text.len().saturating_sub(200)..]
    );
    // Counters are flushed on the workers' one-second tick.
    eventually("the slow consumer to be counted", || {
        let (_, _, metrics) = s.request("GET", "/metrics", &[], b"");
        metric(&metrics, "sluice_sse_slow_consumers_total") >= 1.0
    });
}

#[test]
fn on_io_uring_the_worker_submits_its_streams_sends_itself() {
    // The send ring is what the io_uring driver runs the fan-out on; without
    // it (SLUICE_SEND_RING=0, or the epoll driver) each stream's task writes.
    // Frames are the same either way.
    for (env, ring) in [(None, true), (Some("0"), false)] {
        let vars: Vec<(&str, &str)> = env.map(|v| ("SLUICE_SEND_RING", v)).into_iter().collect();
        let s = Server::start_env(&config("", ""), Driver::Auto, &vars);
        let mut c = s.subscribe("/v1/sse/ring", &[]);
        c.start();
        let id = s.publish("ring", r#"{"n":1}"#);
        assert_eq!(c.next_event().unwrap().id, Some(id));
        let logs = s.logs();
        if !logs.iter().any(|l| l.contains("io_uring driver")) {
            // No io_uring here (the epoll fallback): nothing to check.
            return;
        }
        let says = logs
            .iter()
            .any(|l| l.contains("stream sends on the workers' own io_uring"));
        assert_eq!(says, ring, "SLUICE_SEND_RING={env:?}: {logs:#?}");
    }
}

#[test]
fn frames_larger_than_the_socket_buffers_reach_a_reading_client_whole_and_in_order() {
    // With an 8 KB send buffer every 128 KB frame goes in many short sends:
    // on io_uring the send ring hands the rest to the stream's task, which
    // gives the stream back when it has written it. The client reads all
    // the while; each frame is published once the last one arrived, so its
    // queue never nears the slow-consumer bound.
    const FRAMES: usize = 20;
    const PAD: usize = 128 * 1024;
    for driver in DRIVERS {
        let s = Server::start_with(&config("sndbuf_bytes = 4096", ""), driver);
        let mut c = s.subscribe("/v1/sse/big", &[]);
        c.start();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for _ in 0..FRAMES {
                let f = c.next_event().expect("an update");
                let v = f.json();
                let row = &v["data"][0];
                let got = (f.id, row["n"].as_u64(), row["pad"].as_str().map(str::len));
                if tx.send(got).is_err() {
                    return;
                }
            }
        });
        let pad = "y".repeat(PAD);
        for n in 0..FRAMES {
            let id = s.publish("big", &format!("{{\"n\":{n},\"pad\":\"{pad}\"}}"));
            let (got_id, seq, len) = rx.recv_timeout(WAIT).expect("the frame arrives");
            assert_eq!(got_id, Some(id), "{driver:?} frame {n}");
            assert_eq!(seq, Some(n as u64), "{driver:?} frame {n}");
            assert_eq!(len, Some(PAD), "{driver:?} frame {n} arrived whole");
        }
        reader.join().expect("reader");
    }
}

#[test]
fn streams_that_come_and_go_leave_the_others_every_frame() {
    // Closed streams give their send-ring slots back and new ones take
    // them: every open stream gets every frame, the closed ones nothing.
    for driver in DRIVERS {
        let s = Server::start_with(&config("", ""), driver);
        let mut keep: Vec<SseClient> = Vec::new();
        for round in 0..5 {
            let mut gone: Vec<SseClient> =
                (0..20).map(|_| s.subscribe("/v1/sse/churn", &[])).collect();
            for c in gone.iter_mut() {
                c.start();
            }
            let mut fresh: Vec<SseClient> =
                (0..4).map(|_| s.subscribe("/v1/sse/churn", &[])).collect();
            for c in fresh.iter_mut() {
                c.start();
            }
            keep.extend(fresh);
            drop(gone);
            // The dropped ones end once their worker sees the peer close:
            // wait until only the kept ones are open (healthz counts them).
            eventually("the dropped streams to end", || {
                s.streams() == keep.len() as u64
            });
            let id = s.publish("churn", &format!("{{\"round\":{round}}}"));
            for (i, c) in keep.iter_mut().enumerate() {
                let f = c.next_event().unwrap();
                assert_eq!(
                    f.id.as_ref(),
                    Some(&id),
                    "{driver:?} round {round} client {i}"
                );
            }
        }
    }
}
