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
//! * [`server`]: the node. [`server::listener`] accepts (limits in
//!   [`server::limits`]); the cold per-request side is [`server::http`]
//!   (parsing, the connection loop, the REST endpoints, stream admission as
//!   named steps, [`server::http::ApiError`]); the hot per-event side is
//!   [`server::worker`] (subscribers, fan-out, the io_uring send ring or,
//!   on epoll, write permits, the timer wheel, vectored write batches and
//!   the stream loop). A reload
//!   (`SIGHUP`, [`server::reload`]) replaces the settings whole and hands
//!   each worker the new ones through its inbox.
//!
//! * [`cluster`]: with `[cluster]`, publishes go to a NATS JetStream
//!   stream and every node applies it in order (its own tokio thread).
//!
//! * [`metering`]: usage per key (SPEC §9), the `sluice-metering` thread
//!   that appends stream and minute records to the usage file and keeps the
//!   totals of `GET /v1/usage`. A stream counts what its writes complete in
//!   its subscriber; [`server::worker::meter`] folds that into per-key
//!   accounts once a second and when the stream ends, off the per-event path.
//!
//! * [`bench`]: `sluice bench`, the SSE load generator (its own runtime
//!   threads; it shares nothing with the server but the crate).
//!
//! Hot modules (never allocate, lock or serialise per connection per event):
//! `hub::ring`, `sse` (update frames), `server::worker` (fan-out, send
//! ring, permits, wheel, stream write loop, iovec).
//!
//! # Words
//! * **cadence**: a tier's `coalesce_ms`; tiers with the same one share
//!   rings and frames. Cadence 0 is the raw tier.
//! * **group**: a worker's subscribers of one topic × cadence × filter,
//!   who share every frame.
//! * **permit**: one of a worker's `WRITE_PERMITS` slots for a write in
//!   flight.
//! * **inbox**: where the hub queues topics whose rings advanced for a
//!   worker, and wakes it once.
//! * **lap**: a reader a whole ring behind; it resynchronises from state.
//!
//! # Errors
//! Hot code returns small enums and treats lag as a value, never a `Box` or
//! a `String`. Cold subsystems have one `thiserror` enum each; a request's
//! refusal is one [`server::http::ApiError`] whose kind gives the SPEC
//! status and code, converted `From` the module errors. `anyhow` only in
//! `main.rs` and the load generator.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod auth;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod fault;
pub mod hub;
pub mod logging;
pub mod metering;
pub mod metrics;
pub mod server;
pub mod sources;
pub mod sse;
pub mod time;
