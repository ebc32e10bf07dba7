//! The server: binds one `SO_REUSEPORT` listener per worker, starts the
//! workers (one pinned thread each, `sluice-worker-{n}`), the sources and the
//! signal thread, and waits for a clean stop.
//!
//! SIGHUP reloads the configuration file ([`reload`]: validated whole, then
//! handed to the hub and to every worker through its inbox).
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

pub mod access;
pub mod admin;
pub mod http;
pub mod limits;
pub mod listener;
pub mod reload;
pub mod routes;
pub mod runtime;
pub mod systemd;
pub mod worker;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use monoio::net::TcpListener;

use crate::config::Settings;
use crate::hub::Hub;
use crate::sources;
use runtime::{Driver, Runtime};
use worker::Worker;

/// How often the main thread looks whether a `[cluster]` node is ready.
const READY_POLL: Duration = Duration::from_millis(20);
/// How often a draining worker looks whether it, then every worker, is done.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A worker whose event loop has not turned for this long is stuck:
/// `/healthz` answers 503 (`stalled`) and `STATUS=` names it. (The systemd
/// watchdog goes by its own interval: see `systemd`.)
pub const WORKER_STALL_MS: u64 = 3000;

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

/// Runs the server until SIGTERM / SIGINT and a clean drain. `config_path`
/// is the file the settings came from, re-read on SIGHUP (`None`: the
/// built-in demo, which cannot be reloaded).
pub fn run(mut settings: Settings, config_path: Option<PathBuf>) -> Result<(), ServerError> {
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
    let counts = Arc::new(limits::NodeCounts::default());
    let published = reload::Published::new(http::Config::new(settings.clone()), settings.workers);
    if let Some(admin_addr) = settings.admin_listen {
        let bound = admin::spawn(admin_addr, hub.clone(), counts.clone(), published.clone())?;
        tracing::info!(admin = %bound, "admin endpoints (/metrics, /healthz, /v1/topics, /v1/usage) on {bound}");
    }
    let driver = Driver::from_env();
    let cores = core_affinity::get_core_ids().unwrap_or_default();

    if let Some(cluster) = &settings.cluster {
        crate::cluster::start(cluster, hub.clone()).map_err(ServerError::Thread)?;
    }
    sources::start(&hub).map_err(ServerError::Thread)?;
    crate::hub::coalesce::spawn(hub.clone()).map_err(ServerError::Thread)?;
    let reloader = reload::Reloader::new(hub.clone(), config_path, published.clone());
    let signals = spawn_signal_thread(hub.clone(), counts.clone(), reloader)?;
    // Each worker says when it ends. One that ends while the node is not
    // draining has failed: the process exits non-zero so that the service
    // manager restarts it, rather than serving on with a dead listener.
    // (A panic never gets here: the panic hook in main exits at once.)
    let (events_tx, events) = std::sync::mpsc::channel::<WorkerEvent>();
    for (id, listener) in listeners.into_iter().enumerate() {
        let hub = hub.clone();
        let counts = counts.clone();
        let published = published.clone();
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
                run_worker(id, hub, counts, published, listener, driver, &events_tx);
                let _ = events_tx.send(WorkerEvent::Ended(id));
            })
            .map_err(ServerError::Thread)?;
    }
    drop(events_tx);

    // "listening" once every worker accepts and, with `[cluster]`, the
    // node has rebuilt its state from the stream (which the main thread
    // looks at every READY_POLL until then).
    let mut up = 0;
    let mut ended = 0;
    let mut announced = false;
    while ended < settings.workers {
        let event = if announced {
            events.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            events.recv_timeout(READY_POLL)
        };
        match event {
            Ok(WorkerEvent::Up) => up += 1,
            Ok(WorkerEvent::Ended(id)) => {
                ended += 1;
                if !hub.is_draining() {
                    tracing::error!(worker = id, "worker {id} stopped unexpectedly");
                    crate::metering::finish();
                    return Err(ServerError::WorkerDied(id));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if !announced && up == settings.workers && !crate::cluster::starting() {
            announced = true;
            tracing::info!(%addr, workers = settings.workers, "listening on {addr}");
            systemd::start(hub.clone(), counts.clone()).map_err(ServerError::Thread)?;
        }
    }
    drop(signals);
    // Every worker has recorded its streams: write the last records.
    crate::metering::finish();
    tracing::info!("stopped");
    Ok(())
}

/// The signal thread: SIGTERM / SIGINT drain and stop; SIGHUP reloads.
fn spawn_signal_thread(
    hub: Arc<Hub>,
    counts: Arc<limits::NodeCounts>,
    reloader: reload::Reloader,
) -> Result<std::thread::JoinHandle<()>, ServerError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(ServerError::Signals)?;
    std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    systemd::reloading();
                    reloader.on_sighup();
                    // logrotate: the usage file moved away.
                    crate::metering::reopen();
                    // READY=1 once the reload has been applied by every
                    // worker, or has failed.
                    systemd::ready(&systemd::status(&hub, &counts));
                    continue;
                }
                tracing::info!(signal = sig, "draining");
                systemd::stopping();
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
    counts: Arc<limits::NodeCounts>,
    published: Arc<reload::Published>,
    listener: std::net::TcpListener,
    driver: Driver,
    events: &std::sync::mpsc::Sender<WorkerEvent>,
) {
    let drained = DrainedOnDrop(hub.clone());
    match Runtime::new(driver) {
        Ok(mut rt) => {
            // On io_uring the worker submits its streams' sends itself
            // (`SLUICE_SEND_RING=0`: its stream tasks write, as on epoll;
            // for comparing the two in one build).
            let send_ring =
                rt.is_io_uring() && std::env::var("SLUICE_SEND_RING").map_or(true, |v| v != "0");
            let w = if send_ring {
                Worker::with_send_ring(id, hub, counts)
            } else {
                Worker::new(id, hub, counts)
            };
            rt.block_on(worker_main(
                Rc::new(w),
                published,
                listener,
                events,
                drained,
            ))
        }
        Err(e) => tracing::error!(error = %e, "cannot start worker {id}"),
    }
}

async fn worker_main(
    w: Rc<Worker>,
    published: Arc<reload::Published>,
    listener: std::net::TcpListener,
    events: &std::sync::mpsc::Sender<WorkerEvent>,
    drained: DrainedOnDrop,
) {
    let id = w.id;
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "worker {id}: cannot use its listener");
            return;
        }
    };
    // The configuration at start; a reload published meanwhile is applied
    // by the reload task as soon as it runs (its wake-up is waiting).
    let (_, config) = published.latest();
    let ctxs = Rc::new(http::Contexts::new(http::Context::new(w.clone(), &config)));
    monoio::spawn(worker::fanout::fanout_loop(w.clone()));
    monoio::spawn(worker::wheel::tick_loop(w.clone()));
    monoio::spawn(worker::permits::reap_loop(w.clone()));
    if w.has_send_ring() {
        monoio::spawn(worker::sender::send_loop(w.clone()));
    }
    monoio::spawn(reload::worker_task(ctxs.clone(), published));
    monoio::spawn(listener::accept_loop(ctxs, listener));
    w.hub.beat(id, crate::time::mono_ms());
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
