//! Reload (SPEC §9): `SIGHUP` (`systemctl reload sluice`) re-reads the
//! configuration file and puts it in force while streams keep flowing.
//!
//! Cold module: runs once per `SIGHUP`, on the signal thread and then once
//! on each worker's thread; never per event. The settings are replaced
//! whole, never changed in place: every holder swaps its `Arc` for the new
//! one.
//!
//! # Steps
//! 1. The signal thread ([`Reloader::reload`]) reads the file that
//!    `serve --config` named and validates it whole
//!    (`Settings::from_toml`). An unreadable or invalid file changes
//!    nothing: one error line naming the file, line and column, and
//!    `sluice_reloads_total{result="error"}`. The built-in demo
//!    configuration has no file and cannot be reloaded.
//! 2. What only a restart can change (`listen`, `workers`, `sndbuf_bytes`)
//!    keeps its running value, and each difference is logged as needing a
//!    restart; the rest of the file applies. `max_connections` is capped by
//!    the descriptor limit as at start; an empty `token_secret` keeps the
//!    process's random secret (issued tokens stay valid); the tiers'
//!    `coalesce_ms` are numbered to extend the running cadences
//!    (`Settings::extend_cadences`).
//! 3. The hub takes the new settings: topics made from now on follow the
//!    new `[[topics]]` rules, and a topic no pattern matches any more is
//!    not found (404 to new requests, `event: error` to its streams).
//!    Sources get [`reload_sources`].
//! 4. The new [`Config`] (settings, key table, per-key stream counters
//!    carried over by key name) is published in [`Published`] and every
//!    worker's reload task ([`worker_task`]) is woken through its hub inbox.
//!    On its own thread, each worker puts a new request `Context` in force
//!    (requests whose head arrives from then on use it: keys, tokens,
//!    routes, filters, CORS, limits), then walks its open streams
//!    (`Worker::reload`, decided by [`Plan`]).
//! 5. The signal thread waits until every worker has applied it, then logs
//!    `configuration reloaded` with what happened to the streams and counts
//!    `sluice_reloads_total{result="ok"}`.
//!
//! # Open streams
//! Matched by key *name* (key indices may shift), in this order:
//! * its key was removed, or it is anonymous and `auth.required` is now
//!   true: `event: error`, code `unauthorized`, then close;
//! * no `[[topics]]` pattern matches its topic any more: `event: error`,
//!   code `not_found`;
//! * its key's `topics` no longer allow the topic, or the topic's `tiers`
//!   no longer allow its tier: `event: error`, code `forbidden`;
//! * its tier changed: the key (or `anonymous_tier`) now names another
//!   tier, or its tier's `coalesce_ms` changed (for a stream token: its
//!   key's tier changed, or the token's tier is gone or changed):
//!   `event: reconnect`, reason `reload`, retry jittered ±25% around the new
//!   `retry_ms`, then close; the client reconnects into its new tier;
//! * every other stream goes on untouched, on the same ring cursor, with
//!   no gap. From the reload on, `max_events` and `max_duration_s` apply to
//!   it counted from its start (a lowered `max_duration_s` is noticed at its
//!   next heartbeat check at the latest), `retry_ms` to its closing frames;
//!   its `heartbeat_s`, filters and route stay as admitted. A key's lowered
//!   `max_connections` refuses new streams until the key is under it; open
//!   ones go on.
//!
//! # Topics
//! A topic keeps the shape it was made with (event name, row key,
//! history, filter fields) and its state, ids and rings until the process
//! restarts; a reload that changes the rule of existing topics says so in
//! a warning. Topics made after the reload use the new rules.

use std::future::poll_fn;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::{ConfigError, Settings};
use crate::hub::Hub;
use crate::server::http::error::ErrorKind;
use crate::server::http::{ApiError, Config, Contexts};
use crate::server::listener;
use crate::server::worker::{Frame, Reloaded, StreamAuth, Verdict};
use crate::sse;

/// How long the signal thread waits for every worker to apply a reload
/// before it logs that some have not (they still will, when they run).
pub const APPLY_WAIT: Duration = Duration::from_secs(10);

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "the built-in demo configuration cannot be reloaded (start with `sluice serve --config FILE`)"
    )]
    NoFile,
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Invalid(String, ConfigError),
    #[error("{0}: {1}")]
    Cadences(String, String),
    #[error("the server is draining")]
    Draining,
}

/// The configuration in force and how far each worker has applied it,
/// shared by the signal thread and the workers.
pub struct Published {
    state: Mutex<State>,
    /// Signalled whenever a worker has applied a generation.
    applied_cv: Condvar,
}

struct State {
    generation: u64,
    config: Arc<Config>,
    /// Per worker: the last generation it applied.
    applied: Vec<u64>,
    /// Streams of every worker, by what the last reload did to them.
    done: Reloaded,
}

impl Published {
    pub fn new(config: Config, workers: usize) -> Arc<Published> {
        Arc::new(Published {
            state: Mutex::new(State {
                generation: 0,
                config: Arc::new(config),
                applied: vec![0; workers],
                done: Reloaded::default(),
            }),
            applied_cv: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a plain assignment: a poisoned lock
        // still holds a whole state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration in force and its generation.
    pub fn latest(&self) -> (u64, Arc<Config>) {
        let st = self.lock();
        (st.generation, st.config.clone())
    }

    fn publish(&self, config: Config) -> u64 {
        let mut st = self.lock();
        st.generation += 1;
        st.config = Arc::new(config);
        st.done = Reloaded::default();
        st.generation
    }

    /// Worker `w` has applied `generation`, with `done` to its streams.
    fn applied(&self, w: usize, generation: u64, done: Reloaded) {
        let mut st = self.lock();
        if st.applied[w] < generation {
            st.applied[w] = generation;
            if generation == st.generation {
                st.done.kept += done.kept;
                st.done.reconnected += done.reconnected;
                st.done.ended += done.ended;
            }
        }
        self.applied_cv.notify_all();
    }

    /// Waits until every worker has applied `generation` (true), or for at
    /// most `timeout` (false); with what the workers did to their streams.
    fn wait_applied(&self, generation: u64, timeout: Duration) -> (bool, Reloaded) {
        let st = self.lock();
        let (st, _) = self
            .applied_cv
            .wait_timeout_while(st, timeout, |st| st.applied.iter().any(|&g| g < generation))
            .unwrap_or_else(|e| e.into_inner());
        (st.applied.iter().all(|&g| g >= generation), st.done)
    }
}

/// Reloads the configuration on `SIGHUP` (the signal thread's side).
pub struct Reloader {
    hub: Arc<Hub>,
    /// The file `serve --config` named (`None`: the built-in demo).
    path: Option<PathBuf>,
    published: Arc<Published>,
}

impl Reloader {
    pub fn new(hub: Arc<Hub>, path: Option<PathBuf>, published: Arc<Published>) -> Reloader {
        Reloader {
            hub,
            path,
            published,
        }
    }

    /// One `SIGHUP`: reloads, logs the outcome and counts it in
    /// `sluice_reloads_total{result}`.
    pub fn on_sighup(&self) {
        match self.reload() {
            Ok(()) => crate::metrics::reloaded(true),
            Err(e) => {
                tracing::error!("reload failed, configuration unchanged: {e}");
                crate::metrics::reloaded(false);
            }
        }
    }

    /// Reads, validates and applies the file (module doc, steps 1–5).
    pub fn reload(&self) -> Result<(), ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let name = path.display().to_string();
        if self.hub.is_draining() {
            return Err(ReloadError::Draining);
        }
        let src = std::fs::read_to_string(path).map_err(|e| ReloadError::Read(name.clone(), e))?;
        let mut new =
            Settings::from_toml(&src).map_err(|e| ReloadError::Invalid(name.clone(), e))?;

        let (_, current) = self.published.latest();
        let old = &current.settings;
        for what in new.keep_restart_only(old) {
            tracing::warn!(
                "{name}: {what} changed; it needs a restart to take effect (still {})",
                match what {
                    "listen" => old.listen.to_string(),
                    "workers" => old.workers.to_string(),
                    _ => old.sndbuf_bytes.to_string(),
                }
            );
        }
        new.extend_cadences(&self.hub.cadences())
            .map_err(|e| ReloadError::Cadences(name.clone(), e))?;
        new.max_connections = listener::fd_budget(new.max_connections, new.workers);
        for w in new.warnings() {
            tracing::warn!("{name}: {w}");
        }
        let new = Arc::new(new);
        warn_kept_topics(&self.hub, &new);

        self.hub.set_settings(new.clone());
        reload_sources(&self.hub, old, &new);
        let generation = self.published.publish(current.reloaded(new));
        self.hub.notify_reload();
        let (all, done) = self.published.wait_applied(generation, APPLY_WAIT);
        if !all {
            tracing::warn!("reload: some workers have not applied the new configuration yet");
        }
        tracing::info!(
            "configuration reloaded from {name}: {} streams go on, {} told to reconnect, {} ended",
            done.kept,
            done.reconnected,
            done.ended,
        );
        Ok(())
    }
}

/// Sources on reload. Hook for `[[sources]]` (being built): start the ones
/// `new` adds, stop the ones it removes, restart the ones whose entry
/// changed. Until then a change is logged and takes effect at the next
/// restart (the demo feed keeps running as it is).
pub fn reload_sources(_hub: &Arc<Hub>, old: &Settings, new: &Settings) {
    if old.sources != new.sources {
        tracing::warn!("[[sources]] changed; sources change at the next restart");
    }
}

/// Warns when topics that exist keep a rule the reload changed.
fn warn_kept_topics(hub: &Hub, new: &Settings) {
    let stale: Vec<_> = hub
        .topics()
        .into_iter()
        .filter(|t| new.topic_rule(&t.name).is_some_and(|r| !t.follows(r)))
        .collect();
    if let Some(first) = stale.first() {
        tracing::warn!(
            topics = stale.len(),
            "{} existing topics (such as '{}') keep the event name, row key, history and \
             filters they were made with until restart; topics made from now on use the new \
             [[topics]] rules",
            stale.len(),
            first.name
        );
    }
}

/// A worker's reload task: waits for a reload to be published, applies it
/// on the worker's thread, and says so. Spawned once per worker.
pub async fn worker_task(ctxs: Rc<Contexts>, published: Arc<Published>) {
    let ctx = ctxs.current();
    let (w, hub) = (ctx.worker.clone(), ctx.hub.clone());
    drop(ctx);
    let inbox = hub.inbox(w.id);
    loop {
        poll_fn(|cx| inbox.poll_reload(cx)).await;
        let (generation, config) = published.latest();
        let done = if Arc::ptr_eq(&ctxs.current().settings, &config.settings) {
            Reloaded::default()
        } else {
            apply(&ctxs, &config)
        };
        tracing::debug!(worker = w.id, ?done, "worker {} reloaded", w.id);
        published.applied(w.id, generation, done);
    }
}

/// Puts `config` in force on this worker: its request context, then its
/// streams (module doc).
pub fn apply(ctxs: &Contexts, config: &Config) -> Reloaded {
    let old = ctxs.current();
    ctxs.replace(old.with_config(config));
    let plan = Plan::new(&old.settings, &config.settings);
    old.worker.reload(config.settings.stream(), |topic, auth| {
        plan.verdict(&topic.name, auth)
    })
}

const KEY_REMOVED: ApiError = ApiError::new(
    ErrorKind::Unauthorized,
    "this stream's API key was removed by a configuration reload",
);
const KEY_REQUIRED: ApiError = ApiError::new(
    ErrorKind::Unauthorized,
    "an API key is now required (configuration reload)",
);
const TOPIC_GONE: ApiError = ApiError::new(
    ErrorKind::NotFound,
    "no [[topics]] pattern matches this topic any more (configuration reload)",
);
const KEY_FORBIDDEN: ApiError = ApiError::new(
    ErrorKind::Forbidden,
    "this key may no longer use this topic (configuration reload)",
);
const TIER_FORBIDDEN: ApiError = ApiError::new(
    ErrorKind::Forbidden,
    "this tier may no longer subscribe to this topic (configuration reload)",
);

/// What a reload does to a stream, from the configuration its indices
/// name (`old`) and the reloaded one (`new`).
pub struct Plan<'a> {
    old: &'a Settings,
    new: &'a Settings,
    /// Old key index → the new index of the key of that name.
    keys: Vec<Option<usize>>,
    /// Old tier index → the new index of the tier of that name, if its
    /// `coalesce_ms` is the same.
    tiers: Vec<Option<usize>>,
    /// Closing frames, one per reason, shared by the streams that get it.
    frames: [Frame; 5],
}

impl<'a> Plan<'a> {
    pub fn new(old: &'a Settings, new: &'a Settings) -> Plan<'a> {
        let keys = old
            .keys
            .iter()
            .map(|k| new.keys.iter().position(|n| n.name == k.name))
            .collect();
        let tiers = old
            .tiers
            .iter()
            .map(|t| {
                new.tiers
                    .iter()
                    .position(|n| n.name == t.name && n.coalesce_ms == t.coalesce_ms)
            })
            .collect();
        let frame = |e: ApiError| Rc::new(sse::error_frame(e.code(), e.message));
        Plan {
            old,
            new,
            keys,
            tiers,
            frames: [
                frame(KEY_REMOVED),
                frame(KEY_REQUIRED),
                frame(TOPIC_GONE),
                frame(KEY_FORBIDDEN),
                frame(TIER_FORBIDDEN),
            ],
        }
    }

    /// The verdict for a stream of `topic` with `auth` (module doc, in
    /// that order).
    pub fn verdict(&self, topic: &str, auth: StreamAuth) -> Verdict {
        let [
            key_removed,
            key_required,
            topic_gone,
            key_forbidden,
            tier_forbidden,
        ] = &self.frames;
        let end = |f: &Frame| Verdict::End(f.clone());
        let old_key = auth.key.map(|k| k as usize);
        let key = match old_key {
            Some(k) => match self.keys.get(k).copied().flatten() {
                Some(n) => Some(n),
                None => return end(key_removed),
            },
            None if self.new.auth_required => return end(key_required),
            None => None,
        };
        let Some(rule) = self.new.topic_rule(topic) else {
            return end(topic_gone);
        };
        if let Some(k) = key
            && !self.new.keys[k].topics.iter().any(|p| p.matches(topic))
        {
            return end(key_forbidden);
        }
        let old_tier = auth.tier as usize;
        let tier = match (key, old_key) {
            (Some(k), Some(ok)) if auth.token => {
                // A token's tier is its key's or a narrower one: it stands
                // while the key's tier and the token's are as they were.
                let key_tier_kept = self.tiers.get(self.old.keys[ok].tier).copied().flatten()
                    == Some(self.new.keys[k].tier);
                match self.tiers.get(old_tier).copied().flatten() {
                    Some(t) if key_tier_kept => t,
                    _ => return Verdict::Reconnect,
                }
            }
            (Some(k), _) => self.new.keys[k].tier,
            (None, _) => self.new.anonymous_tier,
        };
        if !rule.tiers.contains(&tier) {
            return end(tier_forbidden);
        }
        if self.tiers.get(old_tier).copied().flatten() != Some(tier) {
            return Verdict::Reconnect;
        }
        Verdict::Keep(StreamAuth {
            key: key.and_then(|k| u32::try_from(k).ok()),
            tier: u32::try_from(tier).unwrap_or(u32::MAX),
            token: auth.token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Settings {
        let mut s = Settings::from_toml(&format!(
            "[auth]\nrequired = false\nanonymous_tier = \"slow\"\n\
             [tiers.fast]\ncoalesce_ms = 0\n[tiers.slow]\ncoalesce_ms = 1000\n\
             [[topics]]\npattern = \"t/*\"\n\
             [[topics]]\npattern = \"gated/*\"\ntiers = [\"fast\"]\n{extra}"
        ))
        .unwrap();
        s.extend_cadences(&[]).unwrap();
        s
    }

    fn key(name: &str, tier: &str, topics: &str) -> String {
        format!(
            "[[keys]]\nname = \"{name}\"\nkey = \"k_{name}\"\ntier = \"{tier}\"\ntopics = {topics}\n"
        )
    }

    fn auth(s: &Settings, key: Option<&str>, tier: &str, token: bool) -> StreamAuth {
        StreamAuth {
            key: key.map(|n| s.keys.iter().position(|k| k.name == n).unwrap() as u32),
            tier: s.tiers.iter().position(|t| t.name == tier).unwrap() as u32,
            token,
        }
    }

    fn ended(v: Verdict) -> String {
        match v {
            Verdict::End(f) => String::from_utf8(f.to_vec()).unwrap(),
            Verdict::Keep(a) => panic!("kept: {a:?}"),
            Verdict::Reconnect => panic!("reconnect"),
        }
    }

    #[test]
    fn streams_are_matched_by_key_name_and_tier_name() {
        let all = "[\"*\"]";
        let old = settings(
            &[
                key("a", "fast", all),
                key("b", "fast", all),
                key("c", "fast", all),
            ]
            .concat(),
        );
        // "a0" shifts every index; b is removed; c moves to the slow tier
        let new = settings(
            &[
                key("a0", "fast", all),
                key("a", "fast", all),
                key("c", "slow", all),
            ]
            .concat(),
        );
        let plan = Plan::new(&old, &new);
        match plan.verdict("t/x", auth(&old, Some("a"), "fast", false)) {
            Verdict::Keep(a) => assert_eq!(a, auth(&new, Some("a"), "fast", false)),
            _ => panic!("a goes on"),
        }
        assert_eq!(
            ended(plan.verdict("t/x", auth(&old, Some("b"), "fast", false))),
            "event: error\ndata: {\"error\":{\"code\":\"unauthorized\",\"message\":\"this stream's API key was removed by a configuration reload\"}}\n\n"
        );
        assert!(matches!(
            plan.verdict("t/x", auth(&old, Some("c"), "fast", false)),
            Verdict::Reconnect
        ));
        // anonymous: its tier is unchanged
        assert!(matches!(
            plan.verdict("t/x", auth(&old, None, "slow", false)),
            Verdict::Keep(_)
        ));
    }

    #[test]
    fn a_tier_whose_interval_changed_reconnects_its_streams() {
        let old = settings("");
        let mut new = Settings::from_toml(
            "[auth]\nrequired = false\nanonymous_tier = \"slow\"\n\
             [tiers.fast]\ncoalesce_ms = 0\n[tiers.slow]\ncoalesce_ms = 2000\n\
             [[topics]]\npattern = \"t/*\"\n",
        )
        .unwrap();
        new.extend_cadences(&old.cadences).unwrap();
        assert_eq!(new.cadences, vec![0, 1000, 2000], "indices in use are kept");
        assert_eq!(new.tiers[1].cadence, 2);
        let plan = Plan::new(&old, &new);
        assert!(matches!(
            plan.verdict("t/x", auth(&old, None, "slow", false)),
            Verdict::Reconnect
        ));
    }

    #[test]
    fn revoked_access_ends_the_stream_with_its_code() {
        let old = settings(&key("a", "fast", "[\"*\"]"));
        let new = settings(&key("a", "fast", "[\"other/*\"]"));
        let plan = Plan::new(&old, &new);
        assert!(
            ended(plan.verdict("t/x", auth(&old, Some("a"), "fast", false)))
                .contains("\"code\":\"forbidden\"")
        );
        // the gated topic lets only the fast tier in; anonymous is slow
        let plan = Plan::new(&old, &old);
        assert!(
            ended(plan.verdict("gated/x", auth(&old, None, "fast", false)))
                .contains("\"code\":\"forbidden\"")
        );
        assert!(
            ended(plan.verdict("nowhere", auth(&old, None, "slow", false)))
                .contains("\"code\":\"not_found\"")
        );
        let mut required = settings(&key("a", "fast", "[\"*\"]"));
        required.auth_required = true;
        let plan = Plan::new(&old, &required);
        assert!(
            ended(plan.verdict("t/x", auth(&old, None, "slow", false)))
                .contains("\"code\":\"unauthorized\"")
        );
    }

    #[test]
    fn a_token_stream_goes_on_while_its_key_and_tier_are_unchanged() {
        let all = "[\"*\"]";
        let old = settings(&key("a", "fast", all));
        let plan = Plan::new(&old, &old);
        // a token that narrowed the fast key to the slow tier
        assert!(matches!(
            plan.verdict("t/x", auth(&old, Some("a"), "slow", true)),
            Verdict::Keep(_)
        ));
        let new = settings(&key("a", "slow", all));
        let plan = Plan::new(&old, &new);
        assert!(matches!(
            plan.verdict("t/x", auth(&old, Some("a"), "slow", true)),
            Verdict::Reconnect
        ));
    }
}
