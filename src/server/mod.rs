//! The server: binds one `SO_REUSEPORT` listener per worker, starts the
//! workers (one pinned thread each, `sluice-worker-{n}`), the sources and the
//! signal thread, and waits for a clean stop.
//!
//! Cold module. Shutdown (SIGTERM / SIGINT): the hub drains, every stream is
//! told `reconnect` (reason `shutdown`, jittered retry), and each worker
//! waits until its streams have closed or `worker::DRAIN_GRACE_S` has passed.
//! Meanwhile every worker keeps accepting and answers each new request 503
//! (`unavailable`; `/healthz`: `draining`). A worker that is done goes on
//! answering until every worker is done, and then they all stop: the kernel
//! keeps spreading new connections over every `SO_REUSEPORT` listener that
//! is open, and a listener whose worker has stopped would leave them
//! unanswered (or reset them as it closes).

pub mod chunked;
pub mod conn;
pub mod http;
pub mod iovec;
pub mod limits;
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
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::Keys;
use crate::config::Settings;
use crate::hub::Hub;
use crate::sources;
use worker::Worker;

/// How often a draining worker looks whether it, then every worker, is done.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Listen backlog of each worker's socket.
pub const LISTEN_BACKLOG: i32 = 4096;
/// Descriptors kept back from client connections (listeners, io_uring,
/// eventfds, signal pipe, logs, the EMFILE reserve, a refused connection).
pub const FD_HEADROOM: u64 = 32;

/// Raises the soft descriptor limit to the hard one and caps the node's
/// connection limit below it, so that a full table shows as a clean 503 at
/// `max_connections` instead of failing accepts.
fn fd_budget(max_connections: usize) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .unwrap_or(1024);
    let budget = limit.saturating_sub(FD_HEADROOM).max(1) as usize;
    if budget < max_connections {
        tracing::warn!(
            nofile = limit,
            max_connections = budget,
            "the descriptor limit caps max_connections; raise LimitNOFILE / ulimit -n for more"
        );
    }
    max_connections.min(budget)
}

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

/// Refuses an address that another socket already listens on. The workers'
/// listeners share their port through `SO_REUSEPORT`, which would also let
/// them join a second process's (another sluice run by the same user) and
/// split its connections with it; a socket bound without it fails instead.
/// Port 0 asks for a fresh port, which is never busy.
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // as the listeners: connections of a previous run in TIME_WAIT are no
    // reason to refuse
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "address already in use (another process serves it)",
        )),
        other => other,
    }
}

/// A worker's listener. Accepted sockets inherit its send buffer size,
/// which also turns off the kernel's send-buffer autotuning for them: a
/// client that stops reading holds at most `sndbuf_bytes` (doubled by the
/// kernel) of socket memory, and its next write blocks soon, where the
/// worker sees it (`slow_consumer_s`).
fn bind(addr: SocketAddr, sndbuf_bytes: usize) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if sndbuf_bytes > 0 {
        socket.set_send_buffer_size(sndbuf_bytes)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Runs the server until SIGTERM / SIGINT and a clean drain.
pub fn run(mut settings: Settings) -> Result<(), ServerError> {
    settings.max_connections = fd_budget(settings.max_connections);
    let settings = Arc::new(settings);
    crate::metrics::install();

    // The first listener fixes the port (the config may say port 0); the
    // others join it with SO_REUSEPORT.
    ensure_free(settings.listen).map_err(|e| ServerError::Bind(settings.listen, e))?;
    let first = bind(settings.listen, settings.sndbuf_bytes)
        .map_err(|e| ServerError::Bind(settings.listen, e))?;
    let addr = first
        .local_addr()
        .map_err(|e| ServerError::Bind(settings.listen, e))?;
    let mut listeners = vec![first];
    for _ in 1..settings.workers {
        listeners.push(bind(addr, settings.sndbuf_bytes).map_err(|e| ServerError::Bind(addr, e))?);
    }

    let hub = Arc::new(Hub::new(settings.clone()));
    let keys = Arc::new(Keys::new(&settings.keys));
    let driver = DriverChoice::from_env();
    let cores = core_affinity::get_core_ids().unwrap_or_default();

    sources::start(&hub).map_err(ServerError::Thread)?;
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
                    return Err(ServerError::WorkerDied(id));
                }
            }
            Err(_) => break,
        }
    }
    drop(signals);
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
    let w = Rc::new(Worker::new(id, hub, keys));
    monoio::spawn(worker::fanout_loop(w.clone()));
    monoio::spawn(worker::tick_loop(w.clone()));
    monoio::spawn(worker::reap_loop(w.clone()));
    monoio::spawn(accept_loop(w.clone(), listener));
    w.hub.workers_up.fetch_add(1, Ordering::Relaxed);
    let _ = events.send(WorkerEvent::Up);
    while !w.drained() {
        monoio::time::sleep(DRAIN_POLL).await;
    }
    tracing::info!(streams = w.streams.get(), "worker {id} drained its streams");
    drop(drained);
    // Keep accepting (and answering 503) until every worker is done.
    while !w.hub.all_workers_drained() {
        monoio::time::sleep(DRAIN_POLL).await;
    }
    w.hub.workers_up.fetch_sub(1, Ordering::Relaxed);
}

/// Accepts connections until the worker stops. On a full file descriptor
/// table it frees a reserved descriptor, accepts, answers 503 and closes,
/// so that clients get an answer instead of a hanging connect.
async fn accept_loop(w: Rc<Worker>, listener: TcpListener) {
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let n = w.hub.connections.fetch_add(1, Ordering::Relaxed);
                if n >= w.settings.max_connections {
                    monoio::spawn(refuse(w.clone(), stream, "node is at its connection limit"));
                } else {
                    match limits::PendingSlot::take(&w, peer.ip()) {
                        Ok(slot) => {
                            monoio::spawn(conn::serve(w.clone(), stream, slot));
                        }
                        Err(why) => {
                            monoio::spawn(refuse(w.clone(), stream, why.message()));
                        }
                    }
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                let now = std::time::Instant::now();
                if last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                    tracing::warn!("file descriptor table full; refusing connections with 503");
                    last_warning = Some(now);
                }
                // Workers share one table: another worker may have taken the
                // descriptor this one freed, so retry for a reserve each time.
                if reserve.is_none() {
                    reserve = std::fs::File::open("/dev/null").ok();
                }
                if let Some(r) = reserve.take() {
                    drop(r);
                    if let Ok((stream, _)) = listener.accept().await {
                        w.hub.connections.fetch_add(1, Ordering::Relaxed);
                        refuse(w.clone(), stream, "server is out of file descriptors").await;
                    }
                }
                // Under io_uring the refused socket's close is itself an
                // operation: let it run before taking its descriptor back,
                // or the next accept would take it instead.
                monoio::time::sleep(Duration::from_millis(5)).await;
                if reserve.is_none() {
                    reserve = std::fs::File::open("/dev/null").ok();
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

async fn refuse(w: Rc<Worker>, mut stream: monoio::net::TcpStream, msg: &'static str) {
    use monoio::io::AsyncWriteRentExt;
    crate::metrics::http_response(503);
    let out = http::error_response(503, msg, false, &w.settings.cors, None);
    if stream.write_all(out.freeze()).await.0.is_ok() {
        conn::close_gracefully(&mut stream).await;
    }
    w.hub.connections.fetch_sub(1, Ordering::Relaxed);
}
