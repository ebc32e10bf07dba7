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

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

pub use error::{ApiError, ErrorKind};
pub use parse::{HttpError, Method, Request};

use crate::auth::Keys;
use crate::config::Settings;
use crate::hub::Hub;
use crate::server::limits::{KeyStreams, NodeCounts, PendingByIp};
use crate::server::worker::Worker;

/// One configuration as the request side uses it: the settings, the key
/// table built from them and the per-key stream counters, whose key
/// indices all agree. Made at start and by each reload; never changed.
pub struct Config {
    pub settings: Arc<Settings>,
    pub keys: Arc<Keys>,
    pub key_streams: Arc<KeyStreams>,
}

impl Config {
    pub fn new(settings: Arc<Settings>) -> Config {
        Config {
            keys: Arc::new(Keys::new(&settings.keys)),
            key_streams: Arc::new(KeyStreams::new(&settings.keys)),
            settings,
        }
    }

    /// The configuration that replaces this one: `settings` with its own
    /// key table, and this one's stream counters carried over by key name.
    pub fn reloaded(&self, settings: Arc<Settings>) -> Config {
        Config {
            keys: Arc::new(Keys::new(&settings.keys)),
            key_streams: Arc::new(
                self.key_streams
                    .carried_over(&self.settings.keys, &settings.keys),
            ),
            settings,
        }
    }
}

/// What the request side of one worker works with for one request: its
/// worker (for streams), the hub, and one configuration (settings, keys,
/// key counters). A request reads the context current when it starts
/// ([`Contexts::current`]) and keeps it to its end, so every index it
/// takes (a key, a tier) names the same entry everywhere it is used.
pub struct Context {
    pub worker: Rc<Worker>,
    pub hub: Arc<Hub>,
    /// The node's connection and stream counts.
    pub counts: Arc<NodeCounts>,
    pub settings: Arc<Settings>,
    pub keys: Arc<Keys>,
    pub key_streams: Arc<KeyStreams>,
    /// Refused connections being answered (`listener::refuse`), on this
    /// worker, whatever the configuration.
    pub refusing: Rc<Cell<usize>>,
    /// This worker's connections that are not streams, by address.
    pub pending_by_ip: Rc<PendingByIp>,
    /// Serves the admin listener (`server::admin`): its endpoints only, no
    /// streams.
    pub admin: bool,
}

impl Context {
    pub fn new(worker: Rc<Worker>, config: &Config) -> Context {
        let hub = worker.hub.clone();
        let counts = worker.counts.clone();
        Context {
            worker,
            hub,
            counts,
            settings: config.settings.clone(),
            keys: config.keys.clone(),
            key_streams: config.key_streams.clone(),
            refusing: Rc::default(),
            pending_by_ip: Rc::default(),
            admin: false,
        }
    }

    /// This worker's context for another configuration.
    pub fn with_config(&self, config: &Config) -> Context {
        Context {
            worker: self.worker.clone(),
            hub: self.hub.clone(),
            counts: self.counts.clone(),
            settings: config.settings.clone(),
            keys: config.keys.clone(),
            key_streams: config.key_streams.clone(),
            refusing: self.refusing.clone(),
            pending_by_ip: self.pending_by_ip.clone(),
            admin: self.admin,
        }
    }
}

/// A worker's current [`Context`]. Only the worker's own thread replaces it
/// (a reload, `server::reload`), with a new one, never by changing it: a
/// request that started before keeps the one it took.
pub struct Contexts(RefCell<Rc<Context>>);

impl Contexts {
    pub fn new(ctx: Context) -> Contexts {
        Contexts(RefCell::new(Rc::new(ctx)))
    }

    /// The context in force: taken once per connection or request.
    pub fn current(&self) -> Rc<Context> {
        self.0.borrow().clone()
    }

    /// Puts `ctx` in force for the requests that start from now on.
    pub fn replace(&self, ctx: Context) {
        *self.0.borrow_mut() = Rc::new(ctx);
    }
}
