//! `sluice bench --publish`: posts rows at a fixed rate, each carrying its
//! send time (`ts_ns`) and a per-topic sequence number (`seq`), from which
//! the streams measure latency and gaps.
//!
//! Runs on bench thread 0, one request at a time on a keep-alive
//! connection.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::Ctx;
use super::sys::now_ns;

/// Publishes `rate` rows per second (one request at a time on a keep-alive
/// connection), each `{"ts_ns":…,"seq":…}` plus padding to a typical row.
pub(super) async fn publish_loop(ctx: Rc<Ctx>, deadline: Instant) {
    // Publish once every stream is up (or has failed), so that each one
    // sees every published row.
    let live = &ctx.live;
    while live.established.load(Ordering::Relaxed) + live.failed.load(Ordering::Relaxed)
        < ctx.args.connections as u64
        && Instant::now() < deadline
    {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    let period = Duration::from_secs_f64(1.0 / ctx.args.rate);
    let start = Instant::now();
    let key = ctx
        .args
        .publish_key
        .as_deref()
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    let mut stream: Option<TcpStream> = None;
    let mut buf = vec![0u8; 4096];
    let mut seq: u64 = 0;
    loop {
        let due = start + period * seq as u32;
        if due >= deadline || ctx.stop.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        if due > now {
            monoio::time::sleep(due - now).await;
        } else if now - due > Duration::from_millis(1) {
            ctx.stats.borrow_mut().publish_late += 1;
        }
        // Publishes go to each URL in turn; `seq` counts per URL (topic),
        // so that every stream sees 1, 2, 3, … and gaps are real.
        let n = ctx.args.publish.len() as u64;
        let url = &ctx.args.publish[(seq % n) as usize];
        let topic_seq = seq / n + 1;
        seq += 1;
        let body = format!(
            "{{\"ts_ns\":{},\"seq\":{topic_seq},\"type\":\"bench\",\"event_id\":\"ev-{:05}\",\"market\":\"match_winner\",\"book\":\"bench\",\"price\":{}}}",
            now_ns(),
            topic_seq % 1000,
            100 + topic_seq % 400
        );
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{key}\r\n{body}",
            url.path,
            url.host,
            body.len()
        );
        if stream.is_none() {
            stream = TcpStream::connect_addr(url.addr).await.ok();
        }
        let Some(s) = stream.as_mut() else {
            ctx.stats.borrow_mut().publish_errors += 1;
            continue;
        };
        let mut ok = s.write_all(req.into_bytes()).await.0.is_ok();
        if ok {
            // Read one response: the head, then Content-Length bytes.
            let mut got: Vec<u8> = Vec::new();
            ok = loop {
                let (res, b) = s.read(buf).await;
                buf = b;
                match res {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break false,
                }
                if let Some(end) = memchr::memmem::find(&got, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break head.starts_with("http/1.1 2");
                    }
                }
            };
        }
        let mut st = ctx.stats.borrow_mut();
        if ok {
            st.published += 1;
        } else {
            st.publish_errors += 1;
            stream = None;
        }
    }
}
