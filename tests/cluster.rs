//! `[cluster]` (SPEC §8) with real processes: a `nats-server -js` on a
//! loopback port and three sluice nodes sharing one JetStream stream.
//!
//! Needs the `nats-server` binary (Debian package `nats-server`):
//! `apt-get install -y nats-server`. Without it these tests fail, unless
//! `SLUICE_SKIP_NATS=1` is set, which skips them.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use common::*;

const INSTALL: &str = "apt-get update && apt-get install -y nats-server";

/// A `nats-server -js` on a fixed loopback port and store directory, so
/// that it can be stopped and started again with its stream.
struct Nats {
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    /// `None` (the test is skipped) only with `SLUICE_SKIP_NATS=1`.
    fn start() -> Option<Nats> {
        let bin = [
            "nats-server",
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        let Some(bin) = bin else {
            if std::env::var("SLUICE_SKIP_NATS").as_deref() == Ok("1") {
                eprintln!("nats-server is not installed; skipped (SLUICE_SKIP_NATS=1)");
                return None;
            }
            panic!(
                "the cluster tests need nats-server: {INSTALL} (or set SLUICE_SKIP_NATS=1 to skip them)"
            );
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = temp_path("nats");
        let mut n = Nats {
            bin,
            child: None,
            port,
            dir,
        };
        n.run();
        Some(n)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it says it is ready.
    fn run(&mut self) {
        let mut child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("nats-server did not say it was ready");
            if line.contains("Server is ready") {
                break;
            }
        }
        self.child = Some(child);
    }

    /// `kill -9` of the server (its stream stays in the store directory).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node_config(nats: &Nats, node: &str, snapshot_s: u32) -> String {
    config(
        "",
        &format!(
            "[cluster]\nnats_url = \"{}\"\nstream = \"TEST\"\nnode = \"{node}\"\nsnapshot_s = {snapshot_s}\n",
            nats.url()
        ),
    )
}

fn node(nats: &Nats, name: &str, snapshot_s: u32, driver: Driver) -> Server {
    Server::start_with(&node_config(nats, name, snapshot_s), driver)
}

fn id(s: &str) -> u64 {
    s.parse().expect("ids are decimal")
}

/// The next update frame (skipping heartbeats): its id and rows.
fn update(c: &mut SseClient) -> (String, serde_json::Value) {
    let f = c.next_event().expect("an update");
    assert_eq!(f.event(), "update", "{}", f.raw);
    (
        f.id.clone().expect("updates have ids"),
        f.json()["data"].clone(),
    )
}

/// The `id` `GET /v1/topics` reports for `topic` (0: none yet).
fn topic_id(s: &Server, topic: &str) -> u64 {
    let (st, _, body) = s.request("GET", "/v1/topics", &[("X-API-Key", "ak_test")], b"");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == topic)
        .map_or(0, |t| id(t["id"].as_str().unwrap()))
}

/// `GET /v1/snapshot` without its `timestamp`.
fn snapshot(s: &Server, topic: &str) -> serde_json::Value {
    let (st, _, body) = s.request("GET", &format!("/v1/snapshot/{topic}"), &[], b"");
    assert_eq!(st, 200, "{body}");
    let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_object_mut().unwrap().remove("timestamp");
    v
}

/// The `initial_state` frame's id and rows on a fresh stream.
fn initial_state(s: &Server, topic: &str) -> (String, serde_json::Value) {
    let mut c = s.subscribe(&format!("/v1/sse/{topic}"), &[]);
    let (_, f) = c.start();
    assert_eq!(f.event(), "initial_state", "{}", f.raw);
    (f.id.clone().expect("id"), f.json()["data"].clone())
}

#[test]
fn a_publish_on_one_node_reaches_every_node_with_the_same_ids() {
    for driver in DRIVERS {
        let Some(nats) = Nats::start() else { return };
        let a = node(&nats, "a", 0, driver);
        let b = node(&nats, "b", 0, driver);
        let c = node(&nats, "c", 0, driver);
        let mut subs: Vec<SseClient> = [&a, &b, &c]
            .iter()
            .map(|s| {
                let mut sub = s.subscribe("/v1/sse/k/one", &[]);
                let (_, f) = sub.start();
                assert_eq!(f.event(), "initial_state");
                sub
            })
            .collect();
        let id1 = a.publish("k/one", r#"{"id":1,"v":1}"#);
        let id2 = a.publish("k/one", r#"[{"id":1,"v":2},{"id":2,"v":1}]"#);
        assert!(id(&id2) > id(&id1), "{id1} then {id2}");
        for sub in subs.iter_mut() {
            assert_eq!(
                update(sub),
                (id1.clone(), serde_json::json!([{"id":1,"v":1}]))
            );
            assert_eq!(
                update(sub),
                (
                    id2.clone(),
                    serde_json::json!([{"id":1,"v":2},{"id":2,"v":1}])
                )
            );
        }
        // A publish on another node comes next, once, on every node (the
        // publishing node applies its own updates from the log only).
        let id3 = c.publish("k/one", r#"{"id":2,"v":9}"#);
        assert!(id(&id3) > id(&id2));
        for sub in subs.iter_mut() {
            assert_eq!(update(sub).0, id3);
        }
        for s in [&a, &b, &c] {
            eventually("every node applied the last update", || {
                topic_id(s, "k/one") == id(&id3)
            });
            assert_eq!(snapshot(s, "k/one"), snapshot(&a, "k/one"));
        }
        // an invalid body is refused on the node and never stored
        let (st, _, body) = b.request(
            "POST",
            "/v1/publish/k/one",
            &[("X-API-Key", "pk_test")],
            br#"{"v":1}"#,
        );
        assert_eq!(st, 400, "{body}");
        let id4 = b.publish("k/one", r#"{"id":3}"#);
        for sub in subs.iter_mut() {
            assert_eq!(update(sub).0, id4);
        }
    }
}

#[test]
fn a_client_resumes_on_another_node_exactly_once() {
    for driver in DRIVERS {
        let Some(nats) = Nats::start() else { return };
        let a = node(&nats, "a", 0, driver);
        let b = node(&nats, "b", 0, driver);
        let c = node(&nats, "c", 0, driver);
        let mut on_a = a.subscribe("/v1/sse/k/r", &[]);
        on_a.start();
        let ids: Vec<String> = (0..4)
            .map(|i| a.publish("k/r", &format!(r#"{{"id":{i},"v":{i}}}"#)))
            .collect();
        let (seen, _) = update(&mut on_a);
        assert_eq!(seen, ids[0]);
        drop(on_a);
        // the client moves to C with the last id it saw on A
        eventually("C applied A's updates", || {
            topic_id(&c, "k/r") == id(&ids[3])
        });
        let mut on_c = c.subscribe("/v1/sse/k/r", &[("Last-Event-ID", &seen)]);
        let (connected, first) = on_c.start();
        assert_eq!(connected.json()["resumed"], true, "{}", connected.raw);
        assert_eq!(first.event(), "update", "{}", first.raw);
        assert_eq!(first.id.as_deref(), Some(ids[1].as_str()));
        assert_eq!(update(&mut on_c).0, ids[2]);
        assert_eq!(update(&mut on_c).0, ids[3]);
        // then live updates, from any node, with nothing repeated
        let next = b.publish("k/r", r#"{"id":0,"v":10}"#);
        assert_eq!(
            update(&mut on_c),
            (next, serde_json::json!([{"id":0,"v":10}]))
        );
    }
}

#[test]
fn a_node_killed_and_restarted_has_the_same_initial_state() {
    for driver in DRIVERS {
        let Some(nats) = Nats::start() else { return };
        // a snapshots every second; b replays the whole stream when it
        // starts, c starts from the newest snapshot
        let a = node(&nats, "a", 1, driver);
        let b = node(&nats, "b", 0, driver);
        let c = node(&nats, "c", 1, driver);
        let mut last = 0;
        for i in 0..12 {
            last = id(&a.publish("k/state", &format!(r#"{{"id":{},"v":{i}}}"#, i % 5)));
            b.publish("l/hist", &format!(r#"{{"i":{i}}}"#));
        }
        // a snapshot taken after every publish above
        let count = |s: &Server| {
            let (_, _, m) = s.request("GET", "/metrics", &[], b"");
            metric(&m, "sluice_cluster_snapshots_total")
        };
        let before = count(&a);
        eventually("a snapshot after the publishes", || count(&a) > before);
        drop(b); // kill -9
        drop(c);
        for i in 12..15 {
            last = id(&a.publish("k/state", &format!(r#"{{"id":{},"v":{i}}}"#, i % 5)));
        }
        let b = node(&nats, "b", 0, driver);
        let c = node(&nats, "c", 1, driver);
        let restored = |s: &Server| {
            let (_, _, m) = s.request("GET", "/metrics", &[], b"");
            metric(&m, "sluice_cluster_snapshot_restored_seq")
        };
        assert!(restored(&c) > 0.0, "c starts from a snapshot");
        assert_eq!(restored(&b), 0.0, "b replays the stream");
        // ready means caught up: the state is there as soon as it listens
        for topic in ["k/state", "l/hist"] {
            let want = initial_state(&a, topic);
            assert_eq!(initial_state(&b, topic), want, "{topic} on b");
            assert_eq!(initial_state(&c, topic), want, "{topic} on c");
            assert_eq!(snapshot(&b, topic), snapshot(&a, topic));
            assert_eq!(snapshot(&c, topic), snapshot(&a, topic));
        }
        assert_eq!(initial_state(&a, "k/state").0, last.to_string());
        // ids go on increasing after the restarts
        let after = id(&b.publish("k/state", r#"{"id":0,"v":99}"#));
        assert!(after > last, "{after} > {last}");
        eventually("c applied it", || topic_id(&c, "k/state") == after);
    }
}

#[test]
fn a_node_that_loses_nats_keeps_its_streams_and_refuses_publishes() {
    for driver in DRIVERS {
        let Some(mut nats) = Nats::start() else {
            return;
        };
        let a = node(&nats, "a", 0, driver);
        let b = node(&nats, "b", 0, driver);
        let mut subs: Vec<SseClient> = [&a, &b]
            .iter()
            .map(|s| {
                let mut sub = s.subscribe("/v1/sse/k/n?heartbeat_s=1", &[]);
                sub.start();
                sub
            })
            .collect();
        let id1 = a.publish("k/n", r#"{"id":1,"v":1}"#);
        for sub in subs.iter_mut() {
            assert_eq!(update(sub).0, id1);
        }

        nats.stop();
        eventually("publishes are refused with 503", || {
            let (st, _, body) = a.request(
                "POST",
                "/v1/publish/k/n",
                &[("X-API-Key", "pk_test")],
                br#"{"id":1,"v":2}"#,
            );
            assert!(st == 503 || st == 202, "{st} {body}");
            st == 503 && body.contains("unavailable")
        });
        let (st, _, health) = a.request("GET", "/healthz", &[], b"");
        assert_eq!(st, 200, "{health}");
        assert!(health.contains(r#""status":"degraded""#), "{health}");
        assert!(health.contains(r#""state":"down""#), "{health}");
        // open streams are still served: a heartbeat arrives on each
        for sub in subs.iter_mut() {
            let f = sub.next().expect("a heartbeat");
            assert!(
                f.comments.iter().any(|c| c.starts_with("heartbeat")),
                "{}",
                f.raw
            );
        }

        nats.run();
        let mut id2 = String::new();
        eventually("publishes are taken again", || {
            let (st, _, body) = b.request(
                "POST",
                "/v1/publish/k/n",
                &[("X-API-Key", "pk_test")],
                br#"{"id":2,"v":3}"#,
            );
            if st == 202 {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                id2 = v["id"].as_str().unwrap().to_string();
            }
            st == 202
        });
        assert!(id(&id2) > id(&id1));
        // the streams go on with the next update after the outage, once
        // (an update stored while a publish's answer was lost may come
        // first: it is in the log, so every node delivers it)
        for sub in subs.iter_mut() {
            let (mut got, _) = update(sub);
            while got != id2 {
                assert!(id(&got) > id(&id1) && id(&got) < id(&id2), "{got}");
                got = update(sub).0;
            }
        }
        let (st, _, health) = a.request("GET", "/healthz", &[], b"");
        assert!(st == 200 && health.contains(r#""status":"ok""#), "{health}");
    }
}

#[test]
fn the_same_idempotency_key_on_two_nodes_is_stored_once() {
    let Some(nats) = Nats::start() else { return };
    let a = node(&nats, "a", 0, Driver::Auto);
    let b = node(&nats, "b", 0, Driver::Auto);
    let mut sub = b.subscribe("/v1/sse/k/d", &[]);
    sub.start();
    let post = |s: &Server| {
        let (st, _, body) = s.request(
            "POST",
            "/v1/publish/k/d",
            &[("X-API-Key", "pk_test"), ("Idempotency-Key", "order-7")],
            br#"{"id":7,"v":1}"#,
        );
        assert_eq!(st, 202, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["id"].as_str().unwrap().to_string()
    };
    let first = post(&a);
    assert_eq!(post(&b), first, "the same update, the same id");
    assert_eq!(update(&mut sub).0, first);
    let next = a.publish("k/d", r#"{"id":7,"v":2}"#);
    assert_eq!(update(&mut sub).0, next, "delivered once");
}

#[test]
fn a_node_is_not_ready_until_it_reaches_the_stream() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    nats.stop();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let cfg = node_config(&nats, "late", 0).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let path = temp_path("late.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = |path: &str| {
        std::net::TcpStream::connect(addr).is_ok() && http(addr, "GET", path, &[], b"").0 != 0
    };
    eventually("the node answers", || up("/healthz"));
    let (st, _, body) = http(addr, "GET", "/healthz", &[], b"");
    assert_eq!(st, 503, "{body}");
    assert!(body.contains(r#""status":"starting""#), "{body}");
    let (st, _, body) = http(addr, "GET", "/v1/sse/k/x", &[], b"");
    assert_eq!(
        st, 503,
        "no stream from a node that has not caught up: {body}"
    );
    nats.run();
    eventually("ready once NATS is there", || {
        http(addr, "GET", "/healthz", &[], b"").0 == 200
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_cluster_example_config_passes_check_config() {
    let path = format!("{}/config/cluster.toml", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(BIN)
        .args(["check-config", &path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("[cluster]"));
}
