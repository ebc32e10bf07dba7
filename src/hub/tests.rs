//! The hub's unit tests: state tables, shared initial states, the sweep,
//! the per-key topic cap and replays, through `Hub`'s API.

use bytes::Bytes;

use super::*;
use crate::time::unix_millis;

fn hub() -> Hub {
    let s = Settings::from_toml(
        "[server]\nworkers = 1\nreplay = 16\n[[topics]]\npattern = \"k/*\"\nkey = [\"id\"]\n[[topics]]\npattern = \"l/*\"\nhistory = 2\n",
    )
    .unwrap();
    Hub::new(Arc::new(s))
}

fn row(json: &str, key: Option<&str>) -> Row {
    Row::new(json.as_bytes(), key.as_slice(), &[])
}

#[test]
fn workers_stop_together_once_every_one_has_drained() {
    let s = Settings::from_toml("[server]\nworkers = 3\n").unwrap();
    let h = Hub::new(Arc::new(s));
    h.drain();
    for _ in 0..2 {
        h.worker_drained();
        assert!(!h.all_workers_drained());
    }
    h.worker_drained();
    assert!(h.all_workers_drained());
}

#[test]
fn a_reload_keeps_cadence_indices_and_existing_topics_need_a_pattern() {
    let h = hub();
    let t = h.topic("k/1").unwrap();
    let mut s = Settings::from_toml(
        "[server]\nworkers = 1\nreplay = 16\n[tiers.raw]\ncoalesce_ms = 0\n\
         [tiers.new]\ncoalesce_ms = 250\n[[topics]]\npattern = \"l/*\"\n",
    )
    .unwrap();
    s.extend_cadences(&h.cadences()).unwrap();
    h.set_settings(Arc::new(s));
    assert_eq!(h.cadences(), vec![0, 500, 1000, 250]);
    // no pattern matches k/1 any more, though the topic exists
    assert_eq!(h.topic("k/1").err(), Some(TopicError::NotFound));
    assert!(h.topic("l/1").is_ok());
    // a topic made before the reload serves the cadence it added
    assert!(t.ring(3).is_none());
    t.start(3, None, None);
    h.publish(&t, vec![row(r#"{"id":1}"#, Some("1"))]).unwrap();
    assert_eq!(h.flush_cadence(3, 250), 1);
    assert_eq!(t.ring(3).map(Ring::tail), Some(1));
}

#[test]
fn names() {
    assert!(topic_name_is_valid("odds/basketball_nba"));
    assert!(topic_name_is_valid("events/0xabc:1@x~y.z-w"));
    assert!(!topic_name_is_valid(""));
    assert!(!topic_name_is_valid("a/"));
    assert!(!topic_name_is_valid("a b"));
    assert!(!topic_name_is_valid(&"a".repeat(201)));
    let h = hub();
    assert_eq!(h.topic("x/y").err(), Some(TopicError::NotFound));
    assert_eq!(h.topic("k/ a").err(), Some(TopicError::Invalid));
}

#[test]
fn keyed_state_keeps_the_latest_row_per_key() {
    let h = hub();
    let t = h.topic("k/1").unwrap();
    let s1 = h
        .publish(
            &t,
            vec![
                row(r#"{"id":1,"v":1}"#, Some("1")),
                row(r#"{"id":2,"v":1}"#, Some("2")),
            ],
        )
        .unwrap();
    let s2 = h
        .publish(&t, vec![row(r#"{"id":1,"v":2}"#, Some("1"))])
        .unwrap();
    assert!(s2 > s1);
    let body = t.snapshot_json(None);
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.contains(r#""count":2"#), "{text}");
    assert!(
        text.ends_with(r#""data":[{"id":1,"v":2},{"id":2,"v":1}]}"#),
        "{text}"
    );
}

#[test]
fn keyless_state_is_the_last_history_rows() {
    let h = hub();
    let t = h.topic("l/1").unwrap();
    for i in 0..3 {
        h.publish(&t, vec![row(&format!("{{\"i\":{i}}}"), None)])
            .unwrap();
    }
    let text = String::from_utf8(t.snapshot_json(None).to_vec()).unwrap();
    assert!(text.ends_with(r#""data":[{"i":1},{"i":2}]}"#), "{text}");
}

fn fresh(start: (Start, u64)) -> Bytes {
    match start.0 {
        Start::Fresh(f) => f,
        Start::Replay(_) => panic!("expected an initial state"),
    }
}

#[test]
fn starts_and_snapshots_share_one_buffer_until_the_state_changes() {
    let h = hub();
    let t = h.topic("k/s").unwrap();
    h.publish(&t, vec![row(r#"{"id":1}"#, Some("1"))]).unwrap();
    let a = fresh(t.start(0, None, None));
    let b = fresh(t.start(0, None, None));
    assert_eq!(a.as_ptr(), b.as_ptr(), "one buffer for both streams");
    let snap = t.snapshot_json(None);
    let inside = a.as_ptr_range();
    assert!(
        inside.contains(&snap.as_ptr()) && snap.len() < a.len(),
        "the snapshot body is a slice of the stream's frame"
    );
    assert!(a.ends_with(&[&snap[..], b"\n\n"].concat()));
    // another filter is another buffer
    let f = Filter::new(vec![filter::Clause::parse(0, "x").unwrap()]).unwrap();
    let filtered = fresh(t.start(0, Some(&f), None));
    assert_ne!(filtered.as_ptr(), a.as_ptr());
    assert_eq!(
        fresh(t.start(0, Some(&f), None)).as_ptr(),
        filtered.as_ptr()
    );
    // a publish makes the next start encode the new state
    h.publish(&t, vec![row(r#"{"id":2}"#, Some("2"))]).unwrap();
    let c = fresh(t.start(0, None, None));
    assert_ne!(c.as_ptr(), a.as_ptr());
    assert!(
        std::str::from_utf8(&c)
            .unwrap()
            .contains(r#"[{"id":1},{"id":2}]"#)
    );
    assert!(!std::str::from_utf8(&a).unwrap().contains(r#"{"id":2}"#));
}

#[test]
fn shared_states_are_bounded_and_released_when_unused() {
    let h = hub();
    let t = h.topic("k/b").unwrap();
    h.publish(&t, vec![row(r#"{"id":1}"#, Some("1"))]).unwrap();
    let filters: Vec<Filter> = (0..MAX_SHARED_STATES + 2)
        .map(|i| Filter::new(vec![filter::Clause::parse(0, &i.to_string()).unwrap()]).unwrap())
        .collect();
    for f in &filters {
        fresh(t.start(0, Some(f), None));
    }
    assert_eq!(t.lock().shared.len(), MAX_SHARED_STATES);
    let held = fresh(t.start(0, None, None));
    t.release_unused_states();
    assert_eq!(t.lock().shared.len(), 1, "only the held one stays");
    assert_eq!(fresh(t.start(0, None, None)).as_ptr(), held.as_ptr());
    drop(held);
    t.release_unused_states();
    assert!(t.lock().shared.is_empty());
}

#[test]
fn a_snapshot_never_reuses_a_frame_that_leaves_out_pending_rows() {
    let s = Settings::from_toml(
        "[server]\nworkers = 1\n[tiers.raw]\ncoalesce_ms = 0\n[tiers.slow]\ncoalesce_ms = 1000\n\
         [auth]\nanonymous_tier = \"raw\"\n[[topics]]\npattern = \"l/*\"\nhistory = 10\n",
    )
    .unwrap();
    let h = Hub::new(Arc::new(s));
    let t = h.topic("l/p").unwrap();
    fresh(t.start(1, None, None)); // the 1 s cadence is active
    h.publish(&t, vec![row(r#"{"i":1}"#, None)]).unwrap();
    // the coalesced start leaves row 1 out (its next frame brings it)
    let slow = fresh(t.start(1, None, None));
    assert!(std::str::from_utf8(&slow).unwrap().contains(r#""data":[]"#));
    let snap = t.snapshot_json(None);
    assert!(snap.ends_with(br#""data":[{"i":1}]}"#));
    // and it was built for the raw cadence, whose streams share it
    let raw = fresh(t.start(0, None, None));
    assert!(raw.as_ptr_range().contains(&snap.as_ptr()));
}

fn topic_names(h: &Hub) -> Vec<String> {
    h.topics().iter().map(|t| t.name.to_string()).collect()
}

#[test]
fn the_sweep_frees_only_topics_unused_empty_and_idle() {
    let s = Settings::from_toml(
        "[server]\nworkers = 1\ntopic_idle_s = 10\n[[topics]]\npattern = \"k/*\"\nkey = [\"id\"]\n\
         [[topics]]\npattern = \"l/*\"\nhistory = 0\n",
    )
    .unwrap();
    let h = Hub::new(Arc::new(s));
    let now = unix_millis();
    h.topic("k/empty").unwrap();
    let t = h.topic("k/rows").unwrap();
    h.publish(&t, vec![row(r#"{"id":1}"#, Some("1"))]).unwrap();
    drop(t);
    let held = h.topic("k/held").unwrap();
    h.topic("k/subscribed")
        .unwrap()
        .subscribers
        .fetch_add(1, Ordering::Relaxed);
    // keyless without history: updates, yet no rows
    let t = h.topic("l/updated").unwrap();
    let id = h.publish(&t, vec![row("{}", None)]).unwrap();
    drop(t);
    h.sweep(now + 9_000);
    assert_eq!(topic_names(&h).len(), 5, "nothing is idle for 10 s yet");
    h.sweep(now + 11_000);
    assert_eq!(topic_names(&h), ["k/held", "k/rows", "k/subscribed"]);
    // seen in use at 11 s: idle from then on
    drop(held);
    h.sweep(now + 12_000);
    assert_eq!(topic_names(&h).len(), 3);
    h.sweep(now + 21_000);
    assert_eq!(topic_names(&h), ["k/rows", "k/subscribed"]);
    // a topic made again goes on with later ids
    let t = h.topic("l/updated").unwrap();
    assert!(h.publish(&t, vec![row("{}", None)]).unwrap() > id);
}

#[test]
fn a_reader_makes_at_most_max_topics_per_key_topics_that_hold_nothing() {
    let s = Settings::from_toml(
        "[server]\nworkers = 1\nmax_topics_per_key = 2\ntopic_idle_s = 10\n\
         [[keys]]\nname = \"r\"\nkey = \"k_r\"\ntier = \"scale\"\n\
         [[topics]]\npattern = \"k/*\"\nkey = [\"id\"]\n",
    )
    .unwrap();
    let h = Hub::new(Arc::new(s));
    let reader = Maker::Reader(Some(0));
    h.topic_for("k/1", reader).unwrap();
    h.topic_for("k/2", reader).unwrap();
    assert_eq!(h.topic_for("k/3", reader).err(), Some(TopicError::KeyCap));
    assert!(
        h.topic_for("k/1", reader).is_ok(),
        "reading a topic that exists"
    );
    assert!(
        h.topic_for("k/a", Maker::Reader(None)).is_ok(),
        "anonymous has its own count"
    );
    assert!(h.topic_for("k/p", Maker::Publisher).is_ok());
    assert_eq!((h.made_empty(Some(0)), h.made_empty(None)), (2, 1));
    // a publish makes k/1 hold something: it no longer counts
    let t = h.topic("k/1").unwrap();
    h.publish(&t, vec![row(r#"{"id":1}"#, Some("1"))]).unwrap();
    drop(t);
    assert_eq!(h.made_empty(Some(0)), 1);
    h.topic_for("k/3", reader).unwrap();
    assert_eq!(h.topic_for("k/4", reader).err(), Some(TopicError::KeyCap));
    // freed topics no longer count
    h.sweep(unix_millis() + 11_000);
    assert_eq!((h.made_empty(Some(0)), h.made_empty(None)), (0, 0));
    assert_eq!(topic_names(&h), ["k/1"]);
    h.topic_for("k/4", reader).unwrap();
}

#[test]
fn start_replays_after_a_known_id_and_is_fresh_otherwise() {
    let h = hub();
    let t = h.topic("k/2").unwrap();
    t.start(0, None, None);
    let ids: Vec<u64> = (0..3)
        .map(|i| {
            h.publish(&t, vec![row(&format!("{{\"id\":{i}}}"), Some("a"))])
                .unwrap()
        })
        .collect();
    match t.start(0, None, Some(ids[0])) {
        (Start::Replay(frames), tail) => {
            assert_eq!(frames.len(), 2);
            assert_eq!(tail, 3);
            assert!(frames[0].starts_with(format!("event: update\nid: {}\n", ids[1]).as_bytes()));
        }
        _ => panic!("expected a replay"),
    }
    assert!(matches!(t.start(0, None, Some(ids[2])), (Start::Replay(f), 3) if f.is_empty()));
    assert!(matches!(
        t.start(0, None, Some(12345)),
        (Start::Fresh(_), 3)
    ));
    assert!(matches!(t.start(0, None, None), (Start::Fresh(_), 3)));
}
