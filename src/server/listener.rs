//! A worker's listening socket: binding (`SO_REUSEPORT`, the send buffer
//! its connections inherit, the busy-port check), the descriptor budget,
//! and the accept loop that admits a connection, or answers 503 at the
//! node's limits and on a full descriptor table, so that no client hangs.
//!
//! Cold: once per connection.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::server::http::error::ApiError;
use crate::server::http::response::error_response;
use crate::server::http::{Context, Contexts, conn};
use crate::server::limits::{ConnSlot, PendingSlot};

/// Listen backlog asked for each worker's socket: the kernel caps it at
/// `net.core.somaxconn` (4,096 by default since Linux 5.4), so that sysctl
/// decides.
pub const LISTEN_BACKLOG: i32 = 65535;
/// Descriptors kept back from client connections for the process (stdio,
/// the signal pipe, logs, the sources' and coalescer's threads).
pub const FD_HEADROOM_BASE: u64 = 32;
/// Descriptors kept back per worker: its listener, io_uring or epoll fd,
/// eventfd and EMFILE reserve (4, counted in /proc/PID/fd), and
/// `REFUSALS_LINGERING` refused connections being answered 503.
pub const FD_HEADROOM_PER_WORKER: u64 = 4 + REFUSALS_LINGERING as u64;
/// Refused connections a worker drains before closing (see
/// `conn::close_gracefully`); past this many at once it closes right after
/// the 503, so that a flood of refusals cannot run the table out.
pub const REFUSALS_LINGERING: usize = 4;

/// Raises the soft descriptor limit to the hard one and caps the node's
/// connection limit below it, so that a full table shows as a clean 503 at
/// `max_connections` instead of failing accepts. The headroom grows with
/// the workers, each of which holds descriptors of its own.
pub fn fd_budget(max_connections: usize, workers: usize) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .unwrap_or(1024);
    let headroom = FD_HEADROOM_BASE + FD_HEADROOM_PER_WORKER * workers as u64;
    let budget = limit.saturating_sub(headroom).max(1) as usize;
    if budget < max_connections {
        tracing::warn!(
            nofile = limit,
            max_connections = budget,
            "the descriptor limit caps max_connections; raise LimitNOFILE / ulimit -n for more"
        );
    }
    max_connections.min(budget)
}

/// Refuses an address that another socket already listens on. The workers'
/// listeners share their port through `SO_REUSEPORT`, which would also let
/// them join a second process's (another sluice run by the same user) and
/// split its connections with it; a socket bound without it fails instead.
/// Port 0 asks for a fresh port, which is never busy.
pub fn ensure_free(addr: SocketAddr) -> io::Result<()> {
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
pub fn bind(addr: SocketAddr, sndbuf_bytes: usize) -> io::Result<std::net::TcpListener> {
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

/// Accepts connections until the worker stops. On a full file descriptor
/// table it frees a reserved descriptor, accepts, answers 503 and closes,
/// so that clients get an answer instead of a hanging connect.
pub async fn accept_loop(ctxs: Rc<Contexts>, listener: TcpListener) {
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ctx = ctxs.current();
                let (slot, before) = ConnSlot::new(&ctx.counts);
                if before >= ctx.settings.max_connections {
                    let why = "node is at its connection limit";
                    monoio::spawn(refuse(ctx, stream, slot, why));
                } else {
                    match PendingSlot::take(
                        &ctx.counts,
                        &ctx.settings,
                        &ctx.pending_by_ip,
                        peer.ip(),
                    ) {
                        Ok(pending) => {
                            monoio::spawn(conn::serve(ctxs.clone(), stream, slot, pending));
                        }
                        Err(why) => {
                            monoio::spawn(refuse(ctx, stream, slot, why.message()));
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
                        let ctx = ctxs.current();
                        let (slot, _) = ConnSlot::new(&ctx.counts);
                        let why = "server is out of file descriptors";
                        refuse(ctx, stream, slot, why).await;
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

/// Answers 503 and closes: gracefully (draining the request) for the
/// first `REFUSALS_LINGERING` at a time, right away past them.
pub(crate) async fn refuse(
    ctx: Rc<Context>,
    mut stream: monoio::net::TcpStream,
    _slot: ConnSlot,
    msg: &'static str,
) {
    use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
    let e = ApiError::unavailable(msg);
    crate::metrics::refused(&e);
    let out = error_response(&e, false, &ctx.settings.cors, None);
    let linger = ctx.refusing.get() < REFUSALS_LINGERING;
    ctx.refusing.set(ctx.refusing.get() + 1);
    if stream.write_all(out.freeze()).await.0.is_ok() {
        if linger {
            conn::close_gracefully(&mut stream).await;
        } else {
            let _ = stream.shutdown().await;
        }
    }
    ctx.refusing.set(ctx.refusing.get() - 1);
}
