//! sluice: a Server-Sent Events edge proxy.
//!
//! The data path, left to right:
//!
//! ```text
//! sources ──► hub (per topic) ──► rings (topic × tier) ──► workers (one per core) ──► sockets
//! publish,     parse once,         pre-encoded frames,      io_uring event loop,       thousands
//! demo feed    state table,        shared Bytes, one        own listener, groups of    per core
//!              sequence ids        writer, N readers        subscribers, writev
//! ```
//!
//! * [`sources`]: `POST /v1/publish` bodies, the demo feed, and upstream
//!   origins (SSE, WebSocket, NATS, on their own `sluice-sources` thread),
//!   all through one entry point, parsed once (simd-json) into rows that
//!   keep their compact JSON bytes.
//! * [`hub`]: per topic, the state table, sequence ids, and the broadcast
//!   [`hub::ring`] whose frames are encoded once ([`sse`]).
//! * [`server`]: pinned workers, each with its own listener; HTTP parsing
//!   ([`server::http`]), connections ([`server::conn`]), the fan-out and the
//!   timer wheel ([`server::worker`]), the vectored write batch
//!   ([`server::iovec`]).
//!
//! * [`bench`]: `sluice bench`, the SSE load generator (its own runtime
//!   threads; it shares nothing with the server but the crate).
//!
//! Hot modules (never allocate, lock or serialise per connection per event):
//! `hub::ring`, `sse` (update frames), `server::worker` (fan-out),
//! `server::conn` (write loop), `server::iovec`.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod auth;
pub mod bench;
pub mod config;
pub mod fault;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod sources;
pub mod sse;
pub mod time;
