//! `[cluster]` (SPEC §8), validated into [`ClusterSettings`]: the NATS
//! servers, the JetStream stream and this node's name.
//!
//! Owns the section's checks and limits. Never connects to NATS (the
//! `cluster` subsystem does, with these settings) and never imports crate
//! code.

use std::ops::Range;

use super::error::ConfigError;
use super::raw::RawCluster;

/// `[cluster]` (SPEC §8): the nodes share one JetStream stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// One or more NATS servers, comma-separated (`nats://host:port`).
    pub nats_url: String,
    /// The JetStream stream, created if missing; its subjects are `<stream>.>`.
    pub stream: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// How often the node stores a snapshot of its state tables in the
    /// object store `<stream>_snapshots` (0: never; a start then replays
    /// the whole stream).
    pub snapshot_s: u32,
}

/// Longest stream or node name.
pub const MAX_CLUSTER_NAME_BYTES: usize = 64;
/// Longest `snapshot_s`.
pub const MAX_SNAPSHOT_S: u32 = 86_400;

/// A NATS stream or node name: 1..64 of `[A-Za-z0-9_-]` (no `.`, `*`, `>`
/// or spaces, which NATS subjects and names reserve).
fn cluster_name_is_valid(s: &str) -> bool {
    (1..=MAX_CLUSTER_NAME_BYTES).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `[cluster]`: the NATS URLs, the stream and node names, `snapshot_s`.
pub(super) fn validate(src: &str, c: RawCluster) -> Result<ClusterSettings, ConfigError> {
    let err = |span: Range<usize>, msg: &str| ConfigError::at(src, Some(span), msg);
    let url = c.nats_url.get_ref().trim();
    let urls_ok = !url.is_empty()
        && url.split(',').all(|u| {
            let u = u.trim();
            let rest = ["nats://", "tls://"]
                .iter()
                .find_map(|p| u.strip_prefix(p))
                .unwrap_or(u);
            // host:port or host, with optional user:pass@ before it
            let hostport = rest.rsplit('@').next().unwrap_or(rest);
            !hostport.is_empty()
                && !hostport.contains('/')
                && u.parse::<async_nats::ServerAddr>().is_ok()
        });
    if !urls_ok {
        return Err(err(
            c.nats_url.span(),
            "cluster.nats_url must be nats://host:port (or tls://), several separated by commas",
        ));
    }
    if !cluster_name_is_valid(c.stream.get_ref()) {
        return Err(err(
            c.stream.span(),
            "cluster.stream must be 1..64 of [A-Za-z0-9_-]",
        ));
    }
    if !cluster_name_is_valid(c.node.get_ref()) {
        return Err(err(
            c.node.span(),
            "cluster.node must be 1..64 of [A-Za-z0-9_-], unique per node",
        ));
    }
    if *c.snapshot_s.get_ref() > MAX_SNAPSHOT_S {
        return Err(err(
            c.snapshot_s.span(),
            "cluster.snapshot_s must be 0 (never) ..86400",
        ));
    }
    Ok(ClusterSettings {
        nats_url: url.to_string(),
        stream: c.stream.into_inner(),
        node: c.node.into_inner(),
        snapshot_s: c.snapshot_s.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;

    #[test]
    fn cluster_section_defaults_and_errors() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.cluster, None);
        let s = Settings::from_toml(
            "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\nnode = \"edge-1\"\n",
        )
        .unwrap();
        assert_eq!(
            s.cluster,
            Some(ClusterSettings {
                nats_url: "nats://127.0.0.1:4222".into(),
                stream: "SLUICE".into(),
                node: "edge-1".into(),
                snapshot_s: 60,
            })
        );
        for (bad, line) in [
            ("[cluster]\nnats_url = \"nats://a:1\"\n", 1),
            ("[cluster]\nnode = \"n\"\nnats_url = \"\"\n", 3),
            ("[cluster]\nnode = \"n\"\nnats_url = \"http://x/y\"\n", 3),
            ("[cluster]\nnats_url = \"nats://a:1\"\nnode = \"a.b\"\n", 3),
            (
                "[cluster]\nnats_url = \"nats://a:1\"\nnode = \"n\"\nstream = \"S>\"\n",
                4,
            ),
            (
                "[cluster]\nnats_url = \"nats://a:1\"\nnode = \"n\"\nsnapshot_s = 100000\n",
                4,
            ),
            (
                "[cluster]\nnats_url = \"nats://a:1\"\nnode = \"n\"\nbogus = 1\n",
                4,
            ),
        ] {
            let e = Settings::from_toml(bad).unwrap_err();
            assert_eq!(e.line, line, "{bad}: {e}");
        }
        let s = Settings::from_toml(
            "[cluster]\nnats_url = \"nats://a:4222, nats://b:4222\"\nnode = \"e_2\"\nstream = \"ODDS\"\nsnapshot_s = 0\n",
        )
        .unwrap();
        assert_eq!(s.cluster.unwrap().snapshot_s, 0);
    }
}
