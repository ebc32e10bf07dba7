//! The systemd side (SPEC §9): the notify protocol against a socket the
//! test listens on (`NOTIFY_SOCKET`), the watchdog fed only while every
//! worker's loop turns, and the shipped unit.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Instant;

use common::*;

/// The service manager's end: a datagram socket the server notifies.
struct Manager {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Manager {
    fn new() -> Manager {
        let path = temp_path("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(WAIT)).unwrap();
        Manager { sock, path }
    }

    fn env(&self) -> String {
        self.path.to_str().unwrap().to_string()
    }

    /// The next notification, one `KEY=VALUE` per line.
    fn next(&self) -> String {
        let mut buf = vec![0u8; 4096];
        let n = self
            .sock
            .recv(&mut buf)
            .expect("a notification (timed out?)");
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification")
    }

    /// Notifications up to and including the first that satisfies `f`.
    fn until(&self, what: &str, mut f: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "no notification {what}; got {seen:?}"
            );
            let m = self.next();
            let done = f(&m);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn pings(msgs: &[String]) -> usize {
    msgs.iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

/// The value of `STATUS=` in a notification.
fn status(m: &str) -> Option<&str> {
    m.lines().find_map(|l| l.strip_prefix("STATUS="))
}

#[test]
fn ready_status_watchdog_and_stopping_reach_the_service_manager() {
    for driver in DRIVERS {
        let m = Manager::new();
        let s = Server::start_env(
            &config("", ""),
            driver,
            &[("NOTIFY_SOCKET", &m.env()), ("WATCHDOG_USEC", "400000")],
        );
        // READY=1 comes after "listening on" (the harness has seen it), as
        // the first notification, with the node's status.
        let first = m.next();
        assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
        assert_eq!(
            status(&first),
            Some("serving: 0 connections, 0 streams, 0 topics"),
            "{first:?}"
        );
        let (st, _, body) = s.request("GET", "/healthz", &[], b"");
        assert_eq!(st, 200, "ready means healthy: {body}");

        // The watchdog is fed while the workers turn.
        let msgs = m.until("with three pings", {
            let mut n = 0;
            move |msg| {
                n += usize::from(msg.lines().any(|l| l == "WATCHDOG=1"));
                n >= 3
            }
        });
        assert!(msgs.iter().all(|m| !m.contains("READY=1")), "{msgs:?}");

        // STATUS= follows the node.
        let mut c = s.subscribe("/v1/sse/a", &[]);
        c.start();
        m.until("with the stream in STATUS", |msg| {
            status(msg).is_some_and(|st| {
                st.starts_with("serving: ") && st.ends_with(" connections, 1 streams, 1 topics")
            })
        });

        // SIGTERM: STOPPING=1 as the drain starts, then a clean exit.
        s.signal(15);
        let msgs = m.until("STOPPING=1", |msg| msg.lines().any(|l| l == "STOPPING=1"));
        let last = msgs.last().unwrap();
        assert_eq!(status(last), Some("draining"), "{last:?}");
        let rest = c.rest();
        assert_eq!(rest.last().map(|f| f.event()), Some("reconnect"));
        assert_eq!(s.wait_exit().code(), Some(0));
    }
}

#[test]
fn without_notify_socket_nothing_is_sent_and_serving_goes_on() {
    // The default in tests and outside systemd: no socket, no thread.
    let s = Server::start(&config("", ""));
    let (st, _, _) = s.request("GET", "/healthz", &[], b"");
    assert_eq!(st, 200);
    assert!(
        !s.logs().iter().any(|l| l.contains("watchdog")),
        "no watchdog without systemd"
    );
}

/// One `GET /healthz` on each of many connections, from threads: the
/// first answer. Connections the kernel gives the stuck worker's
/// listener are never answered; the others are.
fn first_healthz_answer(addr: std::net::SocketAddr) -> (u16, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..16 {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let Ok(mut c) = std::net::TcpStream::connect(addr) else {
                return;
            };
            let _ = c.set_read_timeout(Some(WAIT));
            let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let mut out = Vec::new();
            if c.read_to_end(&mut out).is_ok() && !out.is_empty() {
                let (st, _, body) = split_response(&out);
                let _ = tx.send((st, body));
            }
        });
    }
    rx.recv_timeout(WAIT).expect("an answer from a live worker")
}

#[test]
fn a_stuck_worker_stops_the_watchdog_and_fails_healthz() {
    let m = Manager::new();
    let s = Server::start_env(
        &config("admin_listen = \"127.0.0.1:0\"", ""),
        Driver::Auto,
        &[
            ("NOTIFY_SOCKET", &m.env()),
            ("WATCHDOG_USEC", "400000"),
            ("SLUICE_TEST_STALL", "worker"),
        ],
    );
    let admin: std::net::SocketAddr = s
        .logs()
        .iter()
        .find_map(|l| l.split("admin=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("the admin address is logged");
    m.until("READY=1", |msg| msg.contains("READY=1"));
    let before = m.until("two pings", {
        let mut n = 0;
        move |msg| {
            n += usize::from(msg.contains("WATCHDOG=1"));
            n >= 2
        }
    });
    assert_eq!(pings(&before), 2);

    // One worker blocks its thread for good serving this request.
    let mut stuck = std::net::TcpStream::connect(s.addr).unwrap();
    stuck
        .write_all(b"GET /__sluice/stall HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();

    // At most one ping can have been on its way; then none, while the
    // status names the stuck worker for longer than two intervals.
    let until_named = m.until("naming the stuck worker", |msg| {
        status(msg).is_some_and(|st| st.contains(" stalled for "))
    });
    assert!(pings(&until_named) <= 1, "{until_named:?}");
    let first = status(until_named.last().unwrap()).unwrap().to_string();
    let secs = |st: &str| -> f64 {
        st.split(" stalled for ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|v| v.parse().ok())
            .expect("seconds in the status")
    };
    let from = secs(&first);
    let later = m.until("a second later", |msg| {
        status(msg).is_some_and(|st| st.contains(" stalled for ") && secs(st) >= from + 1.0)
    });
    assert_eq!(
        pings(&later),
        0,
        "no ping while a worker is stuck: {later:?}"
    );
    assert!(first.starts_with("worker ") && first.ends_with("; watchdog not fed"));

    // The other worker still serves, and says the node is not healthy.
    let (st, body) = first_healthz_answer(s.addr);
    assert_eq!(st, 503, "{body}");
    assert!(body.contains(r#""status":"stalled""#), "{body}");
    // as does the admin listener, which no worker serves
    let (st, _, body) = http(admin, "GET", "/healthz", &[], b"");
    assert_eq!(st, 503, "{body}");
    assert!(body.contains(r#""status":"stalled""#), "{body}");
    drop(stuck);
}

fn systemd_analyze() {
    let ok = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "systemd-analyze is needed for this test (scripts/test.sh installs systemd)"
    );
}

#[test]
fn the_unit_is_type_notify_with_a_watchdog_and_reload() {
    let unit = std::fs::read_to_string(repo("systemd/sluice.service")).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "LimitMEMLOCK=infinity",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit has {line}");
    }
    assert!(
        unit.lines().any(|l| l.starts_with("WatchdogSec=")),
        "the unit has a watchdog"
    );
}

/// `systemd-analyze security` rates the unit's exposure 0 (safe) .. 10; the
/// unit must stay at 2.0 or better.
#[test]
fn the_unit_is_exposed_2_0_or_less() {
    systemd_analyze();
    let (dir, path) = unit_copy();
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for sluice.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}\n{err}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
