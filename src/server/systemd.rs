//! The service manager's side of the process (`sd_notify(3)` over the
//! `NOTIFY_SOCKET` datagram socket, through the `sd-notify` crate): `READY=1`
//! once every worker accepts, `STOPPING=1` when the drain starts,
//! `RELOADING=1` / `READY=1` around a reload, `STATUS=` lines
//! (connections, streams, topics), and `WATCHDOG=1` pings.
//!
//! Cold module: one thread (`sluice-systemd`), started only when systemd
//! asked for notifications. Without `NOTIFY_SOCKET` every call here does
//! nothing.
//!
//! The watchdog (`WatchdogSec=`, seen as `WATCHDOG_USEC`) is fed only while
//! every worker's event loop turns: each worker stamps `Hub::beat` on its
//! 100 ms tick, and a ping goes out at half the interval only if every
//! worker has stamped since the last one. A stuck worker (a blocking call,
//! an endless loop) stops the pings, and systemd kills and restarts the
//! service (`Restart=on-failure`). While draining the pings go on: workers
//! that are done stop ticking, and the drain is bounded by its grace and
//! `TimeoutStopSec=`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::hub::Hub;
use crate::server::WORKER_STALL_MS;
use crate::server::limits::NodeCounts;
use crate::time::mono_ms;

/// Most time between two looks at the workers (and `STATUS=` updates).
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// True when the service manager listens (`NOTIFY_SOCKET` is set).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1`: every worker accepts (at start, and after a reload).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` (with `MONOTONIC_USEC`, as `Type=notify-reload` wants):
/// a reload starts; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`: the drain starts.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// The `STATUS=` text: the node's connections, streams and topics, or the
/// worker that has not turned for `WORKER_STALL_MS` or more. (While
/// draining, workers that are done stop turning: that is no stall.)
pub fn status(hub: &Hub, counts: &NodeCounts) -> String {
    let draining = hub.is_draining();
    if !draining && let Some((w, ms)) = hub.stalled_worker(mono_ms(), WORKER_STALL_MS) {
        return format!(
            "worker {w} stalled for {}.{} s; watchdog not fed",
            ms / 1000,
            ms % 1000 / 100
        );
    }
    let state = if draining { "draining" } else { "serving" };
    format!(
        "{state}: {} connections, {} streams, {} topics",
        counts.connections(),
        counts.streams(),
        hub.topic_count()
    )
}

/// Sends `READY=1` and starts the thread that feeds the watchdog and keeps
/// `STATUS=` current. Does nothing without `NOTIFY_SOCKET`.
pub fn start(hub: Arc<Hub>, counts: Arc<NodeCounts>) -> std::io::Result<()> {
    if !enabled() {
        return Ok(());
    }
    let first = status(&hub, &counts);
    ready(&first);
    let watchdog = sd_notify::watchdog_enabled();
    if let Some(w) = watchdog {
        tracing::info!(interval_ms = w.as_millis() as u64, "systemd watchdog on");
    }
    std::thread::Builder::new()
        .name("sluice-systemd".into())
        .spawn(move || notifier(&hub, &counts, watchdog, first))?;
    Ok(())
}

/// How often the notifier looks: a quarter of the watchdog interval (a
/// ping is due at half of it), at most `STATUS_EVERY`.
fn step(watchdog: Option<Duration>) -> Duration {
    match watchdog {
        Some(w) => (w / 4).clamp(Duration::from_millis(10), STATUS_EVERY),
        None => STATUS_EVERY,
    }
}

fn notifier(hub: &Hub, counts: &NodeCounts, watchdog: Option<Duration>, mut last_status: String) {
    let step = step(watchdog);
    let mut last_ping = Instant::now();
    let mut last_ping_ms = mono_ms();
    let mut withheld = false;
    loop {
        std::thread::sleep(step);
        if let Some(interval) = watchdog
            && last_ping.elapsed() >= interval / 2
        {
            if hub.is_draining() || hub.all_beat_since(last_ping_ms) {
                last_ping_ms = mono_ms();
                last_ping = Instant::now();
                notify(&[NotifyState::Watchdog]);
                withheld = false;
            } else if !withheld {
                withheld = true;
                tracing::warn!("a worker's loop has stopped turning; the watchdog is not fed");
            }
        }
        let now = status(hub, counts);
        if now != last_status {
            notify(&[NotifyState::Status(&now)]);
            last_status = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notifier_looks_four_times_per_watchdog_interval() {
        assert_eq!(
            step(Some(Duration::from_millis(400))),
            Duration::from_millis(100)
        );
        assert_eq!(step(Some(Duration::from_secs(30))), STATUS_EVERY);
        assert_eq!(step(None), STATUS_EVERY);
    }
}
