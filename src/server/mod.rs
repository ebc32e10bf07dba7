//! The server: binds one `SO_REUSEPORT` listener per worker, starts the
//! workers (one pinned thread each, `sluice-worker-{n}`), the sources and the
//! signal thread, and waits for a clean stop.
//!
//! Cold module. Shutdown (SIGTERM / SIGINT): the hub drains, every stream is
//! told `reconnect` (reason `shutdown`, jittered retry), and each worker
//! waits until its streams have closed or `worker::DRAIN_GRACE_S` has passed,
//! then sends the usage records of the streams it still has; once every
//! worker has stopped, the metering writes and syncs what it holds.
//! Meanwhile every worker keeps accepting and answers each new request 503
//! (`unavailable`; `/healthz`: `draining`). A worker that is done goes on
//! answering until every worker is done, and then they all stop: the kernel
//! keeps spreading new connections over every `SO_REUSEPORT` listener that
//! is open, and a listener whose worker has stopped would leave them
//! unanswered (or reset them as it closes).

pub mod http;
pub mod limits;
pub mod listener;
pub mod routes;
pub mod worker;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use monoio::net::TcpListener;
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::auth::Keys;
use crate::config::{Settings, SourceKind};
use crate::hub::Hub;
use crate::sources;
use worker::Worker;

/// How often a draining worker looks whether it, then every worker, is done.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// io_uring submission queue entries per worker.
pub const URING_ENTRIES: u32 = 4096;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, io::Error),
    #[error("cannot start a worker thread: {0}")]
    Thread(io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("worker {0} stopped unexpectedly; exiting")]
    WorkerDied(usize),
    #[error("cannot open the metering file {0}: {1}")]
    Metering(std::path::PathBuf, io::Error),
}

/// Which I/O driver the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// io_uring where available, else epoll (with one log line).
    Auto,
    /// epoll only (`SLUICE_DRIVER=epoll`; the tests use it to cover both).
    Epoll,
}

impl DriverChoice {
    pub fn from_env() -> DriverChoice {
        match std::env::var("SLUICE_DRIVER").as_deref() {
            Ok("epoll") | Ok("legacy") => DriverChoice::Epoll,
            _ => DriverChoice::Auto,
        }
    }
}

/// Runs the server until SIGTERM / SIGINT and a clean drain.
pub fn run(mut settings: Settings) -> Result<(), ServerError> {
    settings.max_connections = listener::fd_budget(settings.max_connections, settings.workers);
    let settings = Arc::new(settings);
    crate::metrics::install();

    // The first listener fixes the port (the config may say port 0); the
    // others join it with SO_REUSEPORT.
    listener::ensure_free(settings.listen).map_err(|e| ServerError::Bind(settings.listen, e))?;
    let first = listener::bind(settings.listen, settings.sndbuf_bytes)
        .map_err(|e| ServerError::Bind(settings.listen, e))?;
    let addr = first
        .local_addr()
        .map_err(|e| ServerError::Bind(settings.listen, e))?;
    let mut listeners = vec![first];
    for _ in 1..settings.workers {
        listeners.push(
            listener::bind(addr, settings.sndbuf_bytes).map_err(|e| ServerError::Bind(addr, e))?,
        );
    }

    if let Some(m) = &settings.metering {
        crate::metering::start(m, settings.workers)
            .map_err(|e| ServerError::Metering(m.path.clone(), e))?;
    }
    let hub = Arc::new(Hub::new(settings.clone()));
    let keys = Arc::new(Keys::new(&settings.keys));
    let driver = DriverChoice::from_env();
    let cores = core_affinity::get_core_ids().unwrap_or_default();

    for source in &settings.sources {
        match source {
            SourceKind::Demo => {
                sources::demo::spawn(hub.clone()).map_err(ServerError::Thread)?;
            }
        }
    }
    crate::hub::coalesce::spawn(hub.clone()).map_err(ServerError::Thread)?;
    let signals = spawn_signal_thread(hub.clone())?;
    // Each worker says when it ends. One that ends while the node is not
    // draining has failed: the process exits non-zero so that the service
    // manager restarts it, rather than serving on with a dead listener.
    // (A panic never gets here: the panic hook in main exits at once.)
    let (events_tx, events) = std::sync::mpsc::channel::<WorkerEvent>();
    for (id, listener) in listeners.into_iter().enumerate() {
        let hub = hub.clone();
        let keys = keys.clone();
        let events_tx = events_tx.clone();
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[id % cores.len()])
        };
        std::thread::Builder::new()
            .name(format!("sluice-worker-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                run_worker(id, hub, keys, listener, driver, &events_tx);
                let _ = events_tx.send(WorkerEvent::Ended(id));
            })
            .map_err(ServerError::Thread)?;
    }
    drop(events_tx);

    // "listening" once every worker accepts.
    let mut up = 0;
    let mut ended = 0;
    while ended < settings.workers {
        match events.recv() {
            Ok(WorkerEvent::Up) => {
                up += 1;
                if up == settings.workers {
                    tracing::info!(%addr, workers = settings.workers, "listening on {addr}");
                }
            }
            Ok(WorkerEvent::Ended(id)) => {
                ended += 1;
                if !hub.is_draining() {
                    tracing::error!(worker = id, "worker {id} stopped unexpectedly");
                    crate::metering::finish();
                    return Err(ServerError::WorkerDied(id));
                }
            }
            Err(_) => break,
        }
    }
    drop(signals);
    // Every worker has recorded its streams: write the last records.
    crate::metering::finish();
    tracing::info!("stopped");
    Ok(())
}

fn spawn_signal_thread(hub: Arc<Hub>) -> Result<std::thread::JoinHandle<()>, ServerError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(ServerError::Signals)?;
    std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    // logrotate: the usage file moved away.
                    crate::metering::reopen();
                    tracing::warn!("SIGHUP: reload is not supported yet; configuration unchanged");
                    continue;
                }
                tracing::info!(signal = sig, "draining");
                hub.drain();
                break;
            }
        })
        .map_err(ServerError::Thread)
}

/// What a worker thread tells the main thread.
enum WorkerEvent {
    /// Its accept loop runs.
    Up,
    /// Its thread is ending.
    Ended(usize),
}

/// Counts its worker as drained when dropped, on every way out of the
/// worker thread (a clean stop, a failed start, a panic), so that the others
/// never wait for it.
struct DrainedOnDrop(Arc<Hub>);

impl Drop for DrainedOnDrop {
    fn drop(&mut self) {
        self.0.worker_drained();
    }
}

fn run_worker(
    id: usize,
    hub: Arc<Hub>,
    keys: Arc<Keys>,
    listener: std::net::TcpListener,
    driver: DriverChoice,
    events: &std::sync::mpsc::Sender<WorkerEvent>,
) {
    let drained = DrainedOnDrop(hub.clone());
    if driver == DriverChoice::Auto {
        match RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(URING_ENTRIES)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                if id == 0 {
                    tracing::info!("io_uring driver");
                }
                rt.block_on(worker_main(id, hub, keys, listener, events, drained));
                return;
            }
            Err(e) => {
                if id == 0 {
                    tracing::warn!(error = %e, "io_uring is unavailable; using the epoll driver");
                }
            }
        }
    } else if id == 0 {
        tracing::info!("epoll driver (SLUICE_DRIVER=epoll)");
    }
    let rt: io::Result<monoio::Runtime<TimeDriver<LegacyDriver>>> =
        RuntimeBuilder::<LegacyDriver>::new()
            .with_entries(URING_ENTRIES)
            .enable_timer()
            .build();
    match rt {
        Ok(mut rt) => rt.block_on(worker_main(id, hub, keys, listener, events, drained)),
        Err(e) => tracing::error!(error = %e, "cannot start worker {id}"),
    }
}

async fn worker_main(
    id: usize,
    hub: Arc<Hub>,
    keys: Arc<Keys>,
    listener: std::net::TcpListener,
    events: &std::sync::mpsc::Sender<WorkerEvent>,
    drained: DrainedOnDrop,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "worker {id}: cannot use its listener");
            return;
        }
    };
    let w = Rc::new(Worker::new(id, hub));
    let ctx = Rc::new(http::Context::new(w.clone(), keys));
    monoio::spawn(worker::fanout::fanout_loop(w.clone()));
    monoio::spawn(worker::wheel::tick_loop(w.clone()));
    monoio::spawn(worker::permits::reap_loop(w.clone()));
    monoio::spawn(listener::accept_loop(ctx, listener));
    w.hub.workers_up.fetch_add(1, Ordering::Relaxed);
    let _ = events.send(WorkerEvent::Up);
    while !w.drained() {
        monoio::time::sleep(DRAIN_POLL).await;
    }
    tracing::info!(streams = w.streams.get(), "worker {id} drained its streams");
    // Usage records for the streams still open, before the worker counts
    // as done (the main thread then ends the metering).
    w.finish_metering();
    drop(drained);
    // Keep accepting (and answering 503) until every worker is done.
    while !w.hub.all_workers_drained() {
        monoio::time::sleep(DRAIN_POLL).await;
    }
    w.hub.workers_up.fetch_sub(1, Ordering::Relaxed);
}
