//! From an origin's message to published updates (SPEC §7): parse the
//! message, take its rows at the `rows` JSON pointer (an object is one row,
//! an array holds rows), name each row's topic with the `topic` template
//! (`{field}` over the row's fields; for NATS `{subject}`, its dots as
//! `/`), and publish each topic's rows as one update through
//! [`publish::accept`] — the same validation, ids, frames and metrics as
//! `POST /v1/publish`.
//!
//! Cold module: runs on the sources thread, once per origin message.
//!
//! A message that does not map (not JSON, nothing at the pointer, rows that
//! are not objects, a template field a row lacks, a topic name that is
//! invalid or matches no `[[topics]]` pattern, rows the topic refuses) is
//! dropped and counted; the log says why, never what the message held. The
//! topics of a message are all resolved before any is published, so a
//! message whose rows name an unknown topic publishes nothing; only rows
//! that one topic refuses after another topic of the same message was
//! published leave that other update in place (the message still counts as
//! dropped).
//!
//! A message that is not one JSON document but has several lines is taken
//! as NDJSON: one message per line.

use std::time::{Duration, Instant};

use indexmap::IndexMap;
use simd_json::BorrowedValue;
use simd_json::prelude::*;

use crate::config::{Part, Source};
use crate::hub::{Hub, TopicError};
use crate::sources::health::SourceHealth;
use crate::sources::publish::{self, Format, PublishError};

/// Most one warning line per source says about dropped messages, per this.
pub const DROP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Why a message was dropped. Messages name config values (fields, the
/// pointer), never the message's content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unmapped {
    #[error("message is larger than {0} bytes")]
    TooLarge(usize),
    #[error("message is not valid JSON")]
    Json,
    #[error("the rows pointer finds nothing in the message")]
    NoRows,
    #[error("rows are not JSON objects")]
    NotObjects,
    #[error("a row has no text or number field '{0}' for the topic template")]
    Field(String),
    #[error("the templated topic is not a valid topic name")]
    InvalidTopic,
    #[error("the templated topic matches no [[topics]] pattern")]
    UnknownTopic,
    #[error("the node holds its maximum number of topics")]
    TooManyTopics,
    #[error("rows refused: {0}")]
    Refused(String),
}

/// Maps one source's messages; counts them in its health.
#[derive(Debug)]
pub struct Mapper {
    source: String,
    topic: Vec<Part>,
    /// The `rows` pointer's reference tokens, unescaped.
    pointer: Vec<String>,
    max_message_bytes: usize,
    /// Drops since the last warning line, and when that was.
    drops_unreported: u64,
    last_warning: Option<Instant>,
}

impl Mapper {
    pub fn new(source: &Source, max_message_bytes: usize) -> Mapper {
        Mapper {
            source: source.name.clone(),
            topic: source.topic.clone(),
            pointer: pointer_tokens(&source.rows),
            max_message_bytes,
            drops_unreported: 0,
            last_warning: None,
        }
    }

    /// Takes one origin message (SSE event data, a WebSocket text message,
    /// a NATS body): publishes its rows, or drops and counts it. Returns
    /// the rows published.
    pub fn take(
        &mut self,
        hub: &Hub,
        health: &SourceHealth,
        data: &[u8],
        subject: Option<&str>,
    ) -> usize {
        self.take_capped(hub, health, data, subject, self.max_message_bytes)
    }

    /// [`Mapper::take`] with another size cap (snapshots are bigger than
    /// messages).
    pub fn take_capped(
        &mut self,
        hub: &Hub,
        health: &SourceHealth,
        data: &[u8],
        subject: Option<&str>,
        cap: usize,
    ) -> usize {
        if data.len() > cap {
            health.message();
            self.dropped(health, &Unmapped::TooLarge(cap));
            return 0;
        }
        let mut buf = data.to_vec();
        if let Ok(v) = simd_json::to_borrowed_value(&mut buf) {
            health.message();
            return self.publish(hub, health, &v, subject);
        }
        // Not one document: NDJSON when it has lines, else not JSON.
        let lines: Vec<&[u8]> = data
            .split(|&b| b == b'\n')
            .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            .collect();
        if lines.len() < 2 {
            health.message();
            self.dropped(health, &Unmapped::Json);
            return 0;
        }
        let mut rows = 0;
        for line in lines {
            health.message();
            let mut buf = line.to_vec();
            match simd_json::to_borrowed_value(&mut buf) {
                Ok(v) => rows += self.publish(hub, health, &v, subject),
                Err(_) => self.dropped(health, &Unmapped::Json),
            }
        }
        rows
    }

    /// A message too big to keep (the SSE parser did not buffer it).
    pub fn oversize(&mut self, health: &SourceHealth) {
        health.message();
        self.dropped(health, &Unmapped::TooLarge(self.max_message_bytes));
    }

    /// A message of a kind the source does not take (a binary WebSocket
    /// message).
    pub fn not_json(&mut self, health: &SourceHealth) {
        health.message();
        self.dropped(health, &Unmapped::Json);
    }

    fn publish(
        &mut self,
        hub: &Hub,
        health: &SourceHealth,
        message: &BorrowedValue<'_>,
        subject: Option<&str>,
    ) -> usize {
        match self.map(hub, message, subject) {
            Ok(rows) => {
                health.rows(rows);
                rows
            }
            Err((published, why)) => {
                health.rows(published);
                self.dropped(health, &why);
                published
            }
        }
    }

    /// Publishes a message's rows; `Err` holds the rows published before
    /// the failure.
    fn map(
        &self,
        hub: &Hub,
        message: &BorrowedValue<'_>,
        subject: Option<&str>,
    ) -> Result<usize, (usize, Unmapped)> {
        let at = resolve(message, &self.pointer).ok_or((0, Unmapped::NoRows))?;
        let rows: Vec<&BorrowedValue<'_>> = match at.as_array() {
            Some(items) => items.iter().collect(),
            None => vec![at],
        };
        let mut groups: IndexMap<String, Vec<&BorrowedValue<'_>>> = IndexMap::new();
        for row in rows {
            if row.as_object().is_none() {
                return Err((0, Unmapped::NotObjects));
            }
            let name = self.topic_name(row, subject).map_err(|e| (0, e))?;
            groups.entry(name).or_default().push(row);
        }
        let mut topics = Vec::with_capacity(groups.len());
        for name in groups.keys() {
            let t = hub.topic(name).map_err(|e| {
                (
                    0,
                    match e {
                        TopicError::Invalid => Unmapped::InvalidTopic,
                        TopicError::NotFound => Unmapped::UnknownTopic,
                        TopicError::TooMany | TopicError::KeyCap => Unmapped::TooManyTopics,
                    },
                )
            })?;
            topics.push(t);
        }
        let mut published = 0;
        for (topic, rows) in topics.iter().zip(groups.values()) {
            let mut body = Vec::new();
            body.push(b'[');
            for (i, r) in rows.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(r.encode().as_bytes());
            }
            body.push(b']');
            // `[cluster]`: two nodes fronting the same origin store the
            // same message once (JetStream de-duplicates by this id within
            // its window); without a cluster the id is unused.
            let msg_id = crate::cluster::msg_id(&self.source, None, &topic.name, &body);
            let submitted = publish::submit(
                hub,
                topic,
                &mut body,
                Format::Json,
                &self.source,
                Some(&msg_id),
            );
            match submitted.and_then(|s| s.wait_blocking()) {
                Ok(a) => published += a.rows,
                Err(e) => return Err((published, refused(&e))),
            }
        }
        Ok(published)
    }

    fn topic_name(
        &self,
        row: &BorrowedValue<'_>,
        subject: Option<&str>,
    ) -> Result<String, Unmapped> {
        let mut out = String::new();
        for part in &self.topic {
            match part {
                Part::Lit(l) => out.push_str(l),
                Part::Var(v) if v == "subject" && subject.is_some() => {
                    let s = subject.unwrap_or_default();
                    out.extend(s.chars().map(|c| if c == '.' { '/' } else { c }));
                }
                Part::Var(v) => match row.get(v.as_str()) {
                    Some(f) if f.is_str() => out.push_str(f.as_str().unwrap_or_default()),
                    Some(f) if f.is_number() || f.is_bool() => out.push_str(&f.encode()),
                    _ => return Err(Unmapped::Field(v.clone())),
                },
            }
        }
        Ok(out)
    }

    fn dropped(&mut self, health: &SourceHealth, why: &Unmapped) {
        health.dropped();
        tracing::debug!(source = %self.source, reason = %why, "source message dropped");
        self.drops_unreported += 1;
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= DROP_WARNING_EVERY)
        {
            tracing::warn!(
                source = %self.source,
                dropped = self.drops_unreported,
                reason = %why,
                "source messages dropped (content not logged; \
                 sluice_source_messages_dropped_total counts them)"
            );
            self.drops_unreported = 0;
            self.last_warning = Some(now);
        }
    }
}

/// A refusal's reason without message content (a JSON error's text may
/// quote it).
fn refused(e: &PublishError) -> Unmapped {
    Unmapped::Refused(match e {
        PublishError::Json(_) => "not valid JSON".into(),
        other => other.to_string(),
    })
}

/// RFC 6901 reference tokens of a pointer (`""`: none, the whole document).
fn pointer_tokens(pointer: &str) -> Vec<String> {
    match pointer.strip_prefix('/') {
        None => Vec::new(),
        Some(rest) => rest
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    }
}

fn resolve<'v, 'a>(
    mut v: &'v BorrowedValue<'a>,
    tokens: &[String],
) -> Option<&'v BorrowedValue<'a>> {
    for t in tokens {
        v = if let Some(obj) = v.as_object() {
            obj.get(t.as_str())?
        } else if let Some(items) = v.as_array() {
            let canonical =
                t == "0" || (!t.starts_with('0') && t.bytes().all(|b| b.is_ascii_digit()));
            if !canonical || t.is_empty() {
                return None;
            }
            items.get(t.parse::<usize>().ok()?)?
        } else {
            return None;
        };
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> BorrowedValue<'static> {
        let bytes: &'static mut [u8] = Box::leak(s.as_bytes().to_vec().into_boxed_slice());
        simd_json::to_borrowed_value(bytes).unwrap()
    }

    use std::sync::Arc;

    use crate::config::Settings;
    use crate::sources::health::Registry;

    struct Setup {
        hub: Hub,
        health: Arc<SourceHealth>,
        mapper: Mapper,
    }

    fn setup(source: &str) -> Setup {
        let s = Settings::from_toml(&format!(
            "[server]\nworkers = 1\n[[topics]]\npattern = \"odds/*\"\nkey = [\"id\"]\n\
             [[topics]]\npattern = \"t/*\"\nhistory = 10\n[[sources]]\nname = \"s\"\n{source}\n"
        ))
        .unwrap();
        let mapper = Mapper::new(&s.sources[0], 200);
        let health = Registry::default().register("s", s.sources[0].kind);
        Setup {
            hub: Hub::new(Arc::new(s)),
            health,
            mapper,
        }
    }

    impl Setup {
        fn take(&mut self, msg: &str, subject: Option<&str>) -> usize {
            self.mapper
                .take(&self.hub, &self.health, msg.as_bytes(), subject)
        }

        /// The topic's state rows as a JSON array.
        fn state(&self, topic: &str) -> String {
            let snap = self.hub.topic(topic).unwrap().snapshot_json(None);
            let v: serde_json::Value = serde_json::from_slice(&snap).unwrap();
            v["data"].to_string()
        }
    }

    #[test]
    fn rows_are_grouped_by_their_templated_topic_in_one_update_each() {
        let mut s =
            setup("kind = \"sse\"\nurl = \"http://o\"\ntopic = \"odds/{sport}\"\nrows = \"/data\"");
        let n = s.take(
            r#"{"type":"x","data":[{"id":1,"sport":"nba","p":1},{"id":2,"sport":"epl"},{"id":3,"sport":"nba","p":3}]}"#,
            None,
        );
        assert_eq!(n, 3);
        assert_eq!(
            s.state("odds/nba"),
            r#"[{"id":1,"p":1,"sport":"nba"},{"id":3,"p":3,"sport":"nba"}]"#
        );
        // a single object at the pointer is one row; numbers fill templates
        assert_eq!(s.take(r#"{"data":{"id":4,"sport":7}}"#, None), 1);
        assert_eq!(s.state("odds/7"), r#"[{"id":4,"sport":7}]"#);
    }

    #[test]
    fn messages_that_do_not_map_are_dropped_whole() {
        let mut s = setup("kind = \"sse\"\nurl = \"http://o\"\ntopic = \"odds/{sport}\"");
        for bad in [
            "not json",
            r#"{"id":1}"#,                          // no sport
            r#"[{"id":1,"sport":"nba"},{"id":2}]"#, // one row lacks it
            r#"[{"id":1,"sport":"nba"},{"id":2,"sport":null}]"#,
            r#"[{"id":1,"sport":"nba"},3]"#, // not objects
            r#"{"id":1,"sport":"a b"}"#,     // invalid topic
            r#"{"id":1,"sport":""}"#,
            r#"{"sport":"nba"}"#, // no key field
            "7",
            &format!(r#"{{"id":1,"sport":"nba","x":"{}"}}"#, "x".repeat(300)), // too large
        ] {
            assert_eq!(s.take(bad, None), 0, "{bad}");
        }
        assert!(s.hub.topics().is_empty() || s.state("odds/nba") == "[]");
        // and the source goes on
        assert_eq!(s.take(r#"{"id":1,"sport":"nba"}"#, None), 1);
        assert_eq!(s.state("odds/nba"), r#"[{"id":1,"sport":"nba"}]"#);
    }

    #[test]
    fn ndjson_is_one_message_per_line_and_nats_subjects_fill_the_template() {
        let mut s = setup(
            "kind = \"nats\"\nurl = \"nats://o\"\nsubjects = [\"t.>\"]\ntopic = \"{subject}\"",
        );
        assert_eq!(
            s.take("{\"a\":1}\n\n{\"a\":2}\nbad\n[{\"a\":3}]\n", Some("t.x.y")),
            3
        );
        assert_eq!(s.state("t/x/y"), r#"[{"a":1},{"a":2},{"a":3}]"#);
        // a subject that names no configured topic is dropped
        assert_eq!(s.take(r#"{"a":1}"#, Some("u.x")), 0);
    }

    #[test]
    fn json_pointers() {
        let v = value(r#"{"data":[{"a":1}],"a/b":{"~x":2},"n":{"0":3}}"#);
        let at = |p: &str| resolve(&v, &pointer_tokens(p)).map(|x| x.encode());
        assert_eq!(at(""), Some(v.encode()));
        assert_eq!(at("/data").as_deref(), Some(r#"[{"a":1}]"#));
        assert_eq!(at("/data/0/a").as_deref(), Some("1"));
        assert_eq!(at("/data/00"), None);
        assert_eq!(at("/data/1"), None);
        assert_eq!(at("/data/-"), None);
        assert_eq!(at("/a~1b/~0x").as_deref(), Some("2"));
        assert_eq!(at("/n/0").as_deref(), Some("3"));
        assert_eq!(at("/missing"), None);
        assert_eq!(at("/data/0/a/deeper"), None);
    }
}
