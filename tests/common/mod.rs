//! Test harness: the real `sluice` binary on an ephemeral loopback port, a
//! blocking SSE client that parses frames as an EventSource would (while
//! keeping their exact bytes), and a raw HTTP helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A config with one keyless catch-all topic, a publisher and an admin key,
/// and open subscriptions; `extra` is appended (more sections, or keys of
/// `[server]` when it starts with them).
pub fn config(server_extra: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
workers = 2
{server_extra}

[auth]
required = false
anonymous_tier = "scale"

[[keys]]
name = "pub"
key = "pk_test"
tier = "scale"
role = "publisher"

[[keys]]
name = "sub"
key = "sk_test"
tier = "scale"

[[keys]]
name = "admin"
key = "ak_test"
tier = "scale"
role = "admin"

{extra}

[[topics]]
pattern = "k/*"
key = ["id"]

[[topics]]
pattern = "*"
history = 10
"#
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Auto,
    Epoll,
}

pub const DRIVERS: [Driver; 2] = [Driver::Auto, Driver::Epoll];

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    stderr: mpsc::Receiver<String>,
    /// Lines up to "listening on", until `logs` hands them out.
    early: std::sync::Mutex<Vec<String>>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A path in the repository.
pub fn repo(p: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The shipped systemd unit with this build's binary and the repo's config,
/// in a fresh directory: (directory, unit path).
pub fn unit_copy() -> (PathBuf, PathBuf) {
    let unit = std::fs::read_to_string(repo("systemd/sluice.service"))
        .unwrap()
        .replace("/usr/local/bin/sluice", BIN)
        .replace(
            "/etc/sluice/sluice.toml",
            repo("config/sluice.toml").to_str().unwrap(),
        );
    let dir = temp_path("unit");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.service");
    std::fs::write(&path, unit).unwrap();
    (dir, path)
}

pub fn temp_path(name: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("sluice-test-{}-{n}-{name}", std::process::id()))
}

impl Server {
    pub fn start(config: &str) -> Server {
        Server::start_with(config, Driver::Auto)
    }

    pub fn start_with(config: &str, driver: Driver) -> Server {
        let path = temp_path("sluice.toml");
        std::fs::write(&path, config).expect("write config");
        Server::start_file(path, driver)
    }

    pub fn start_file(config_path: PathBuf, driver: Driver) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(&config_path);
        Server::spawn(cmd, config_path, driver)
    }

    /// Starts sluice with extra environment variables (they win over the
    /// harness's own, e.g. `SLUICE_LOG`).
    pub fn start_env(config: &str, driver: Driver, env: &[(&str, &str)]) -> Server {
        let path = temp_path("sluice.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(&path);
        cmd.env("SLUICE_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::spawn(cmd, path, driver)
    }

    /// Starts sluice with its file descriptor limit lowered to `nofile`.
    pub fn start_with_fd_limit(config: &str, nofile: u32) -> Server {
        let path = temp_path("sluice.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "ulimit -n {nofile} && exec \"$0\" serve --config \"$1\""
            ))
            .arg(BIN)
            .arg(&path);
        Server::spawn(cmd, path, Driver::Auto)
    }

    fn spawn(mut cmd: Command, config_path: PathBuf, driver: Driver) -> Server {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        if !cmd.get_envs().any(|(k, _)| k == "SLUICE_LOG") {
            cmd.env("SLUICE_LOG", "info");
        }
        if driver == Driver::Epoll {
            cmd.env("SLUICE_DRIVER", "epoll");
        }
        let mut child = cmd.spawn().expect("spawn sluice");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        let mut early = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("sluice did not say it was listening: {early:#?}"));
            early.push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                // text or JSON logs: the address ends at the first character
                // that cannot be part of one
                let end = rest
                    .find(|c: char| !(c.is_ascii_hexdigit() || ":.[]".contains(c)))
                    .unwrap_or(rest.len());
                break rest[..end].parse().expect("listen addr");
            }
        };
        Server {
            child,
            addr,
            config_path,
            stderr: rx,
            early: std::sync::Mutex::new(early),
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc_sigterm());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself (after a signal sent with
    /// [`Server::signal`]), then its exit status.
    pub fn wait_exit(mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "sluice did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    pub fn signal(&self, sig: i32) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill failed");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server process's resident set size (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// Open SSE streams, as `/healthz` counts them.
    pub fn streams(&self) -> u64 {
        let (_, _, body) = self.request("GET", "/healthz", &[], b"");
        let v: serde_json::Value = serde_json::from_str(&body).expect("healthz json");
        v["streams"].as_u64().expect("streams")
    }

    /// The stderr lines logged since the last call (the first call: since
    /// the start).
    pub fn logs(&self) -> Vec<String> {
        let mut lines = std::mem::take(&mut *self.early.lock().unwrap());
        lines.extend(self.stderr.try_iter());
        lines
    }

    pub fn publish(&self, topic: &str, body: &str) -> String {
        let (status, _, resp) = self.request(
            "POST",
            &format!("/v1/publish/{topic}"),
            &[
                ("X-API-Key", "pk_test"),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        );
        assert_eq!(status, 202, "publish failed: {resp}");
        let v: serde_json::Value = serde_json::from_str(&resp).expect("publish response json");
        v["id"].as_str().expect("id").to_string()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, String) {
        http(self.addr, method, path, headers, body)
    }

    pub fn subscribe(&self, path: &str, headers: &[(&str, &str)]) -> SseClient {
        SseClient::connect(self.addr, path, headers)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

fn libc_sigterm() -> i32 {
    15
}

/// One request on a fresh connection (`Connection: close`): status, head, body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("write request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    split_response(&out)
}

/// Sends raw bytes, returns everything until the server closes.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

pub fn split_response(out: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// One SSE frame as an EventSource sees it, plus its exact text.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<String>,
    pub data: Option<String>,
    pub comments: Vec<String>,
    pub raw: String,
}

impl Frame {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.data.as_deref().expect("frame has data")).expect("data is JSON")
    }

    pub fn event(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }
}

pub struct SseClient {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub head: String,
    pub body_if_error: String,
}

impl SseClient {
    pub fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).expect("write request");
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read head");
            assert!(n > 0, "closed before the response head: {head}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut body_if_error = String::new();
        if status != 200 {
            let _ = reader.read_to_string(&mut body_if_error);
        }
        SseClient {
            reader,
            status,
            head,
            body_if_error,
        }
    }

    pub fn set_timeout(&self, t: Duration) {
        self.reader.get_ref().set_read_timeout(Some(t)).unwrap();
    }

    /// The next frame (event or comment block); `None` when the server closed.
    /// Panics on a read timeout.
    pub fn next(&mut self) -> Option<Frame> {
        let mut f = Frame::default();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .expect("read frame (timed out?)");
            if n == 0 {
                assert!(f.raw.is_empty(), "closed mid-frame: {:?}", f.raw);
                return None;
            }
            f.raw.push_str(&line);
            let l = line.strip_suffix('\n').expect("lines end with \\n");
            assert!(!l.ends_with('\r'), "lines end with a bare \\n");
            if l.is_empty() {
                return Some(f);
            }
            if let Some(c) = l.strip_prefix(':') {
                f.comments.push(c.trim_start().to_string());
                continue;
            }
            let (field, value) = l.split_once(": ").unwrap_or((l, ""));
            match field {
                "event" => f.event = Some(value.to_string()),
                "id" => f.id = Some(value.to_string()),
                "retry" => f.retry = Some(value.to_string()),
                "data" => {
                    assert!(f.data.is_none(), "one data line per frame");
                    f.data = Some(value.to_string());
                }
                other => panic!("unexpected field {other:?} in {line:?}"),
            }
        }
    }

    /// The next frame that is not a heartbeat comment.
    pub fn next_event(&mut self) -> Option<Frame> {
        loop {
            let f = self.next()?;
            if f.data.is_some() {
                return Some(f);
            }
        }
    }

    /// Reads `connected` and the initial state or replay start; returns
    /// (connected, next frame).
    pub fn start(&mut self) -> (Frame, Frame) {
        assert_eq!(
            self.status, 200,
            "stream refused: {} {}",
            self.head, self.body_if_error
        );
        let c = self.next_event().expect("connected");
        assert_eq!(c.event(), "connected", "{}", c.raw);
        let s = self.next_event().expect("start frame");
        (c, s)
    }

    /// Reads until the server closes; returns the remaining frames.
    pub fn rest(&mut self) -> Vec<Frame> {
        let mut v = Vec::new();
        while let Some(f) = self.next() {
            v.push(f);
        }
        v
    }
}

/// Waits for a condition that some other process makes true.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of an unlabelled metric in Prometheus text (0 if absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
