//! The cold, per-request side of a worker: HTTP/1.1 parsing, the connection
//! loop, the REST endpoints and stream admission.
//!
//! Cold: runs once per request, never per event. A request's life, in
//! order: [`conn`] reads its head ([`parse`]) and, for a `POST`, its body
//! ([`chunked`] or `Content-Length`) after [`admission`] has authenticated
//! it; [`api`] answers it ([`response`]), or, for a stream, [`admission`]
//! turns it into a `StreamStart` that the hot side (`server::worker::stream`)
//! takes over together with the socket. Every refusal is an
//! [`error::ApiError`] with a stable SPEC code.

pub mod admission;
pub mod api;
pub mod chunked;
pub mod conn;
pub mod error;
pub mod parse;
pub mod response;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

pub use error::{ApiError, ErrorKind};
pub use parse::{HttpError, Method, Request};

use crate::auth::Keys;
use crate::config::Settings;
use crate::hub::Hub;
use crate::server::limits::PendingByIp;
use crate::server::worker::Worker;

/// What the request side of one worker works with: its worker (for
/// streams), the hub, the settings and the keys. One per worker thread.
pub struct Context {
    pub worker: Rc<Worker>,
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    pub keys: Arc<Keys>,
    /// Refused connections being answered (`listener::refuse`).
    pub refusing: Cell<usize>,
    /// This worker's connections that are not streams, by address.
    pub pending_by_ip: Rc<PendingByIp>,
    /// Serves the admin listener (`server::admin`): its endpoints only, no
    /// streams.
    pub admin: bool,
}

impl Context {
    pub fn new(worker: Rc<Worker>, keys: Arc<Keys>) -> Context {
        let hub = worker.hub.clone();
        let settings = hub.settings().clone();
        Context {
            worker,
            hub,
            settings,
            keys,
            refusing: Cell::new(0),
            pending_by_ip: Rc::default(),
            admin: false,
        }
    }
}
