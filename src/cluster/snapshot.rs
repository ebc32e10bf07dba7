//! State snapshots of a cluster node, so that a start does not replay the
//! whole stream: every `snapshot_s` seconds a ready node stores its state
//! tables as they are after stream sequence S, in the JetStream object store
//! `<stream>_snapshots` under its node name; a node that starts loads the
//! newest snapshot of any node (highest S, same stream) and replays the
//! stream from S + 1.
//!
//! Cold module, on the cluster thread. A snapshot is consistent: it is taken
//! in one step of the cluster thread, between two applied messages, so its
//! tables are exactly those after S on every node. Restoring publishes each
//! topic's rows as one update with the topic's last id (so the state table,
//! its row order and the `initial_state` id match the other nodes; `Last-Event-ID`
//! of that last update replays from it, older ids get an initial state).
//!
//! Why snapshots rather than per-subject limits: a keyed topic's state is
//! the latest row per key, spread over many updates, which no message count
//! per subject bounds. Snapshots bound a start to the tables plus
//! `snapshot_s` of updates, and let the operator cap the stream (`max_age`,
//! `max_bytes` with `nats stream edit`) as long as the limit keeps well more
//! than `snapshot_s` of updates: a node that finds the stream no longer
//! holding the updates after the newest snapshot logs an error.
//!
//! Format (text, one line each): `sluice-snapshot 1 <seq> <base>`, then per
//! topic `T <id> <rows> <topic>` followed by that many rows of compact JSON
//! (which never holds a raw newline).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::Link;
use crate::config::ClusterSettings;
use crate::hub::Hub;
use crate::sources::publish::parse_rows;

const MAGIC: &str = "sluice-snapshot 1";

/// The object store holding the snapshots of the nodes of `stream`.
pub fn bucket(stream: &str) -> String {
    format!("{stream}_snapshots")
}

/// Every topic's id and rows after stream sequence `seq`, encoded.
pub fn take(hub: &Hub, seq: u64, base: u64) -> Vec<u8> {
    let mut out = format!("{MAGIC} {seq} {base}\n").into_bytes();
    for t in hub.topics() {
        let (id, rows) = t.table();
        if id == 0 {
            continue; // subscribed to, never published
        }
        out.extend_from_slice(format!("T {id} {} {}\n", rows.len(), t.name).as_bytes());
        for r in rows {
            out.extend_from_slice(&r);
            out.push(b'\n');
        }
    }
    out
}

/// One topic of a decoded snapshot.
#[derive(Debug, PartialEq, Eq)]
pub struct TopicState<'a> {
    pub topic: &'a str,
    pub id: u64,
    /// Its rows, one compact JSON object per line.
    pub rows: &'a [u8],
}

/// A decoded snapshot: (stream sequence, stream base, topics).
pub fn decode(data: &[u8]) -> Option<(u64, u64, Vec<TopicState<'_>>)> {
    let mut lines = Lines { rest: data };
    let head = std::str::from_utf8(lines.next()?).ok()?;
    let nums = head.strip_prefix(MAGIC)?.trim();
    let (seq, base) = nums.split_once(' ')?;
    let (seq, base) = (seq.parse().ok()?, base.parse().ok()?);
    let mut topics = Vec::new();
    while !lines.rest.is_empty() {
        let line = std::str::from_utf8(lines.next()?).ok()?;
        let mut f = line.strip_prefix("T ")?.splitn(3, ' ');
        let id: u64 = f.next()?.parse().ok()?;
        let n: usize = f.next()?.parse().ok()?;
        let topic = f.next()?;
        let start = data.len() - lines.rest.len();
        for _ in 0..n {
            lines.next()?;
        }
        let end = data.len() - lines.rest.len();
        topics.push(TopicState {
            topic,
            id,
            rows: &data[start..end],
        });
    }
    Some((seq, base, topics))
}

struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Lines<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        let i = self.rest.iter().position(|&b| b == b'\n')?;
        let line = &self.rest[..i];
        self.rest = &self.rest[i + 1..];
        Some(line)
    }
}

/// Loads the decoded snapshot into the hub. All or nothing per topic: a
/// topic whose rows this node's config cannot take is left empty (and
/// logged). Returns the snapshot's stream sequence.
pub fn load(hub: &Hub, topics: &[TopicState<'_>]) {
    for t in topics {
        let topic = match hub.topic(t.topic) {
            Ok(topic) => topic,
            Err(e) => {
                tracing::warn!(topic = t.topic, error = ?e, "snapshot topic this node's [[topics]] cannot take; skipped");
                continue;
            }
        };
        let mut body = t.rows.to_vec();
        let rows = if body.is_empty() {
            Ok(Vec::new())
        } else {
            parse_rows(&mut body, true, &topic.key_fields, &topic.fields)
        };
        match rows {
            Ok(rows) => {
                if let Err(e) = hub.publish_with_id(&topic, rows, t.id) {
                    tracing::error!(topic = t.topic, error = %e, "snapshot rows not applied");
                }
            }
            Err(e) => {
                tracing::warn!(topic = t.topic, error = %e, "snapshot rows this node's [[topics]] cannot take; skipped");
            }
        }
    }
}

/// At start: loads the newest snapshot of this stream (`base`) into the
/// hub. Returns the stream sequence it holds (0: none, replay everything).
pub async fn restore(js: &jetstream::Context, cfg: &ClusterSettings, hub: &Hub, base: u64) -> u64 {
    let Ok(store) = js.get_object_store(bucket(&cfg.stream)).await else {
        return 0;
    };
    let mut best: Option<(u64, String)> = None;
    match store.list().await {
        Ok(mut list) => {
            while let Some(Ok(info)) = list.next().await {
                if info.deleted {
                    continue;
                }
                let Some((seq, b)) = info.description.as_deref().and_then(parse_description) else {
                    continue;
                };
                if b == base && best.as_ref().is_none_or(|(s, _)| seq > *s) {
                    best = Some((seq, info.name));
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list state snapshots; replaying the stream");
            return 0;
        }
    }
    let Some((seq, name)) = best else { return 0 };
    let mut data = Vec::new();
    let read = match store.get(&name).await {
        Ok(mut obj) => obj.read_to_end(&mut data).await.map(|_| ()),
        Err(e) => Err(std::io::Error::other(e)),
    };
    if let Err(e) = read {
        tracing::warn!(error = %e, node = %name, "cannot read a state snapshot; replaying the stream");
        return 0;
    }
    match decode(&data) {
        Some((s, b, topics)) if s == seq && b == base => {
            load(hub, &topics);
            metrics::gauge!("sluice_cluster_snapshot_restored_seq").set(seq as f64);
            tracing::info!(
                node = %name,
                seq,
                topics = topics.len(),
                "state restored from the snapshot of node {name} at stream sequence {seq}"
            );
            seq
        }
        _ => {
            tracing::warn!(node = %name, "a state snapshot does not decode; replaying the stream");
            0
        }
    }
}

fn parse_description(d: &str) -> Option<(u64, u64)> {
    let mut seq = None;
    let mut base = None;
    for kv in d.split_whitespace() {
        match kv.split_once('=') {
            Some(("stream_seq", v)) => seq = v.parse().ok(),
            Some(("base", v)) => base = v.parse().ok(),
            _ => {}
        }
    }
    Some((seq?, base?))
}

/// Stores this node's snapshot every `snapshot_s` while it is ready and the
/// stream moved on since the last one.
pub async fn keep(
    js: jetstream::Context,
    cfg: ClusterSettings,
    hub: Arc<Hub>,
    base: u64,
    link: Arc<Link>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.snapshot_s.into()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = 0;
    let mut store: Option<object_store::ObjectStore> = None;
    loop {
        tick.tick().await;
        if !link.is_ready() || !link.is_connected() {
            continue;
        }
        // One synchronous step of the cluster thread: no message is applied
        // between reading the sequence and the tables.
        let seq = link.applied();
        if seq == last || seq == 0 {
            continue;
        }
        let data = Bytes::from(take(&hub, seq, base));
        if store.is_none() {
            store = open_store(&js, &cfg.stream).await;
        }
        let Some(s) = &store else { continue };
        let meta = object_store::ObjectMetadata {
            name: cfg.node.clone(),
            description: Some(format!("stream_seq={seq} base={base}")),
            ..Default::default()
        };
        match s.put(meta, &mut &data[..]).await {
            Ok(_) => {
                last = seq;
                metrics::counter!("sluice_cluster_snapshots_total").increment(1);
                tracing::debug!(seq, bytes = data.len(), "state snapshot stored");
            }
            Err(e) => tracing::warn!(error = %e, "cannot store the state snapshot"),
        }
    }
}

async fn open_store(js: &jetstream::Context, stream: &str) -> Option<object_store::ObjectStore> {
    let name = bucket(stream);
    if let Ok(s) = js.get_object_store(&name).await {
        return Some(s);
    }
    match js
        .create_object_store(object_store::Config {
            bucket: name,
            description: Some("sluice state snapshots, one per node".into()),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot make the snapshot object store");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn hub() -> Hub {
        let s = Settings::from_toml(
            "[server]\nworkers = 1\n[[topics]]\npattern = \"k/*\"\nkey = [\"id\"]\n[[topics]]\npattern = \"*\"\nhistory = 2\n",
        )
        .unwrap();
        Hub::new(Arc::new(s))
    }

    fn publish(h: &Hub, topic: &str, body: &str, id: u64) {
        let t = h.topic(topic).unwrap();
        let rows = parse_rows(
            &mut body.as_bytes().to_vec(),
            false,
            &t.key_fields,
            &t.fields,
        )
        .unwrap();
        h.publish_with_id(&t, rows, id).unwrap();
    }

    #[test]
    fn a_snapshot_restores_the_same_tables_and_ids() {
        let a = hub();
        publish(&a, "k/1", r#"[{"id":2,"v":"x\ny"},{"id":1,"v":1}]"#, 100);
        publish(&a, "k/1", r#"{"id":2,"v":3}"#, 105);
        for (i, id) in [(1, 101), (2, 102), (3, 103)] {
            publish(&a, "l/1", &format!(r#"{{"i":{i}}}"#), id);
        }
        a.topic("k/never").unwrap();
        let data = take(&a, 6, 1000);
        let (seq, base, topics) = decode(&data).unwrap();
        assert_eq!((seq, base), (6, 1000));
        assert_eq!(topics.len(), 2);

        let b = hub();
        load(&b, &topics);
        for name in ["k/1", "l/1"] {
            let (ta, tb) = (a.topic(name).unwrap(), b.topic(name).unwrap());
            assert_eq!(ta.table(), tb.table(), "{name}");
        }
        assert_eq!(b.topic("k/1").unwrap().table().0, 105);
        // later updates go on from the snapshot
        publish(&b, "k/1", r#"{"id":1,"v":9}"#, 107);
        let json = b.topic("k/1").unwrap().snapshot_json(None);
        assert!(json.ends_with(br#""data":[{"id":2,"v":3},{"id":1,"v":9}]}"#));
    }

    #[test]
    fn a_broken_snapshot_does_not_decode() {
        assert!(decode(b"").is_none());
        assert!(decode(b"sluice-snapshot 1 5 7\nT 3 2 k/1\n{}\n").is_none());
        assert!(decode(b"other 1 5 7\n").is_none());
        assert_eq!(
            decode(b"sluice-snapshot 1 5 7\n").map(|d| d.2.len()),
            Some(0)
        );
        assert_eq!(parse_description("stream_seq=5 base=7"), Some((5, 7)));
        assert_eq!(parse_description("stream_seq=5"), None);
    }
}
