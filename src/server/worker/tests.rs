//! Unit tests of the worker: fan-out, wheel, permits, slow consumers.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::subscriber::{SubState, Subscriber};
use super::*;
use crate::config::Settings;
use crate::hub::{Filter, Hub, Row, Start, Topic};

fn worker(extra: &str) -> (Rc<Worker>, Arc<Hub>) {
    let s = Settings::from_toml(&format!(
        "[server]\nworkers = 1\nreplay = 16\n{extra}\n[[topics]]\npattern = \"*\"\n"
    ))
    .unwrap();
    let hub = Arc::new(Hub::new(Arc::new(s)));
    (
        Rc::new(Worker::new(0, hub.clone(), Default::default())),
        hub,
    )
}

fn drain(sub: &Subscriber) -> Vec<String> {
    sub.queued_bytes.set(0);
    sub.queue
        .borrow_mut()
        .drain(..)
        .map(|f| String::from_utf8(f.to_vec()).unwrap())
        .collect()
}

fn publish(hub: &Hub, t: &Arc<Topic>, n: u32) -> u64 {
    hub.publish(
        t,
        vec![Row::new(format!("{{\"n\":{n}}}").as_bytes(), &[], &[])],
    )
    .unwrap()
}

#[test]
fn members_get_every_frame_once_in_order() {
    let (w, hub) = worker("");
    let t = hub.topic("a").unwrap();
    let subs: Vec<_> = (0..3)
        .map(|_| Rc::new(Subscriber::new(0, 15, 0, true)))
        .collect();
    for s in &subs {
        assert!(matches!(w.subscribe(&t, 0, None, s, None), Start::Fresh(_)));
    }
    let ids: Vec<u64> = (0..5).map(|n| publish(&hub, &t, n)).collect();
    w.on_inbox();
    for s in &subs {
        let frames = drain(s);
        assert_eq!(frames.len(), 5);
        for (f, id) in frames.iter().zip(&ids) {
            assert!(f.contains(&format!("\nid: {id}\n")), "{f}");
        }
    }
}

#[test]
fn a_filter_group_shares_one_rejoined_frame_and_skips_empty_ones() {
    let (w, hub) = worker("[[topics]]\npattern = \"f/*\"\nfilters = { books = \"book\" }");
    let t = hub.topic("f/a").unwrap();
    let filter = |csv: &str| {
        Some(Rc::new(
            Filter::new(vec![crate::hub::filter::Clause::parse(0, csv).unwrap()]).unwrap(),
        ))
    };
    let subs: Vec<_> = (0..3)
        .map(|_| Rc::new(Subscriber::new(0, 15, 0, true)))
        .collect();
    // two with the same filter (values in another order), one unfiltered
    w.subscribe(&t, 0, filter("a,b"), &subs[0], None);
    w.subscribe(&t, 0, filter("b,a"), &subs[1], None);
    w.subscribe(&t, 0, None, &subs[2], None);
    for s in &subs {
        drain(s);
    }
    let row = |book: &str| {
        Row::new(
            format!("{{\"book\":\"{book}\"}}").as_bytes(),
            &[],
            &[Some(book)],
        )
    };
    hub.publish(&t, vec![row("a"), row("z")]).unwrap();
    hub.publish(&t, vec![row("z")]).unwrap();
    w.on_inbox();
    let f0 = subs[0].queue.borrow()[0].clone();
    let f1 = subs[1].queue.borrow()[0].clone();
    assert!(Rc::ptr_eq(&f0, &f1), "one frame for the group");
    assert_eq!(
        subs[0].queue.borrow().len(),
        1,
        "the all-z update is not sent"
    );
    let text = std::str::from_utf8(&f0).unwrap();
    assert!(text.contains("\"count\":1,"), "{text}");
    assert!(text.ends_with("\"data\":[{\"book\":\"a\"}]}\n\n"), "{text}");
    assert_eq!(subs[2].queue.borrow().len(), 2, "unfiltered: both updates");
}

#[test]
fn lagging_worker_resyncs_from_state() {
    let (w, hub) = worker("");
    let t = hub.topic("a").unwrap();
    let s = Rc::new(Subscriber::new(0, 15, 0, true));
    w.subscribe(&t, 0, None, &s, None);
    for n in 0..40 {
        publish(&hub, &t, n); // 40 > 16 ring slots, no fan-out in between
    }
    w.on_inbox();
    let frames = drain(&s);
    assert_eq!(frames.len(), 1);
    assert!(
        frames[0].starts_with("event: initial_state\n"),
        "{}",
        frames[0]
    );
    publish(&hub, &t, 99);
    w.on_inbox();
    assert_eq!(drain(&s).len(), 1);
}

#[test]
fn limit_frame_after_max_events_then_nothing() {
    let (w, hub) = worker("max_events = 2");
    let t = hub.topic("a").unwrap();
    let s = Rc::new(Subscriber::new(0, 15, 0, true));
    w.subscribe(&t, 0, None, &s, None);
    for n in 0..4 {
        publish(&hub, &t, n);
    }
    w.on_inbox();
    let frames = drain(&s);
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(
        frames[2],
        "event: limit\ndata: {\"type\":\"limit\",\"max_events\":2}\n\n"
    );
    assert_eq!(s.state(), SubState::Closing);
}

/// Sets the injected clock and runs the ticks due by it.
fn tick_at(w: &Worker, ms: u64) {
    w.set_clock(ms);
    w.tick();
}

#[test]
fn heartbeat_when_silent_and_timeout_at_max_duration() {
    let (w, hub) = worker("heartbeat_s = 2\nmax_duration_s = 5");
    w.set_clock(0);
    let t = hub.topic("a").unwrap();
    let s = Rc::new(Subscriber::new(w.now(), 2, 5, true));
    w.subscribe(&t, 0, None, &s, None);
    w.schedule(&s);
    tick_at(&w, 1000);
    assert!(drain(&s).is_empty());
    tick_at(&w, 2000); // silent for 2 s
    let f = drain(&s);
    assert_eq!(f.len(), 1);
    assert!(
        f[0].starts_with(": heartbeat ") && f[0].ends_with("\n\n"),
        "{f:?}"
    );
    tick_at(&w, 3000);
    publish(&hub, &t, 1);
    w.on_inbox(); // a write at 3 s postpones the heartbeat to 5 s
    assert_eq!(drain(&s).len(), 1);
    tick_at(&w, 4000);
    assert!(drain(&s).is_empty());
    tick_at(&w, 5000); // max duration
    let f = drain(&s);
    assert_eq!(
        f,
        vec!["event: timeout\ndata: {\"type\":\"timeout\",\"max_duration_s\":5}\n\n"]
    );
}

/// What a subscriber got, tick by tick, while the clock runs from
/// `from` to `to` ms in `step` ms steps.
fn run_clock(w: &Worker, s: &Subscriber, from: u64, to: u64, step: u64) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    let mut ms = from;
    while ms <= to {
        tick_at(w, ms);
        for f in drain(s) {
            let kind = if f.starts_with(": heartbeat ") {
                "heartbeat".to_string()
            } else {
                f.lines().next().unwrap_or("").to_string()
            };
            got.push((ms, kind));
        }
        ms += step;
    }
    got
}

#[test]
fn a_stream_started_mid_second_is_not_timed_out_or_heartbeated_early() {
    let (w, hub) = worker("heartbeat_s = 1\nmax_duration_s = 2");
    let t = hub.topic("a").unwrap();
    // The worker ticked at 0.8 s; the stream starts at 0.9 s.
    tick_at(&w, 800);
    w.set_clock(900);
    let s = Rc::new(Subscriber::new(w.now(), 1, 2, true));
    w.subscribe(&t, 0, None, &s, None);
    w.schedule(&s);
    assert!(drain(&s).is_empty());
    let got = run_clock(&w, &s, 905, 4000, 5);
    assert_eq!(
        got,
        vec![
            (1900, "heartbeat".to_string()),
            (2900, "event: timeout".to_string())
        ],
        "a heartbeat after 1 s of silence, the timeout after 2 s, each at the first tick"
    );
    assert_eq!(s.state(), SubState::Closing);
}

#[test]
fn a_write_mid_tick_postpones_the_heartbeat_by_a_whole_interval() {
    let (w, hub) = worker("heartbeat_s = 2\nmax_duration_s = 0");
    let t = hub.topic("a").unwrap();
    w.set_clock(0);
    let s = Rc::new(Subscriber::new(w.now(), 2, 0, true));
    w.subscribe(&t, 0, None, &s, None);
    w.schedule(&s);
    tick_at(&w, 1200);
    w.set_clock(1234);
    publish(&hub, &t, 1);
    w.on_inbox();
    assert_eq!(drain(&s).len(), 1);
    let got = run_clock(&w, &s, 1235, 5300, 1);
    assert_eq!(
        got,
        vec![
            (3300, "heartbeat".to_string()),
            (5300, "heartbeat".to_string())
        ]
    );
}

#[test]
fn a_late_worker_catches_up_once_and_never_fires_early() {
    let (w, hub) = worker("heartbeat_s = 3\nmax_duration_s = 100");
    let t = hub.topic("a").unwrap();
    w.set_clock(50);
    let subs: Vec<_> = (0..3)
        .map(|_| Rc::new(Subscriber::new(w.now(), 3, 100, true)))
        .collect();
    for s in &subs {
        w.subscribe(&t, 0, None, s, None);
        w.schedule(s);
    }
    // The worker stalls for 10 s: one heartbeat each, not one per
    // missed interval.
    tick_at(&w, 10_000);
    for s in &subs {
        assert_eq!(drain(s).len(), 1);
    }
    // ... then for longer than a turn of the wheel: still one, and the
    // max duration fires on the first tick after it.
    tick_at(&w, 99_000);
    for s in &subs {
        assert_eq!(drain(s).len(), 1);
    }
    tick_at(&w, 100_049);
    assert!(drain(&subs[0]).is_empty(), "max duration is at 100.05 s");
    tick_at(&w, 100_100);
    for s in &subs {
        assert_eq!(
            drain(s),
            vec!["event: timeout\ndata: {\"type\":\"timeout\",\"max_duration_s\":100}\n\n"]
        );
    }
}

#[test]
fn a_closing_stream_is_aborted_after_its_grace_not_before() {
    let (w, hub) = worker("max_events = 1");
    let t = hub.topic("a").unwrap();
    w.set_clock(0);
    let s = Rc::new(Subscriber::new(w.now(), 15, 0, true));
    w.subscribe(&t, 0, None, &s, None);
    w.schedule(&s);
    w.set_clock(250);
    publish(&hub, &t, 1);
    w.on_inbox(); // limit reached at 0.25 s: closing, 5 s of grace
    assert_eq!(s.state(), SubState::Closing);
    // the grace ends at 5.25 s: aborted on the first tick after
    let close_at = 250 + u64::from(CLOSE_GRACE_S) * 1000;
    let mut ms = 300;
    while ms < close_at + 2 * TICK_MS {
        tick_at(&w, ms);
        assert_eq!(
            s.state() == SubState::Abort,
            ms >= close_at.next_multiple_of(TICK_MS),
            "at {ms} ms"
        );
        ms += 10;
    }
}

#[test]
fn raw_streams_get_permits_first_but_coalesced_ones_get_every_other() {
    let (w, _) = worker("");
    let sub = |urgent| Rc::new(Subscriber::new(0, 15, 0, urgent));
    let holders: Vec<_> = (0..WRITE_PERMITS).map(|_| sub(true)).collect();
    for h in &holders {
        assert!(w.acquire_write(h));
    }
    let (bulk0, raw0, bulk1, raw1) = (sub(false), sub(true), sub(false), sub(true));
    let waiting = [&bulk0, &raw0, &bulk1, &raw1];
    for s in waiting {
        assert!(!w.acquire_write(s), "no permit left");
    }
    let mut order = Vec::new();
    for h in holders.iter().take(4) {
        w.release_write(h);
        let next = (0..4)
            .find(|i| waiting[*i].permit.get() && !order.contains(i))
            .expect("the released permit went to a waiter");
        order.push(next);
    }
    // raw first, but every second permit is a coalesced turn
    assert_eq!(order, vec![1, 0, 3, 2]);
}

#[test]
fn permits_held_by_writes_that_cannot_progress_go_to_waiters() {
    let (w, _) = worker("");
    let sub = || Rc::new(Subscriber::new(0, 15, 0, true));
    let stuck: Vec<_> = (0..WRITE_PERMITS).map(|_| sub()).collect();
    for s in &stuck {
        assert!(w.acquire_write(s));
    }
    let waiter = sub();
    assert!(!w.acquire_write(&waiter));
    // A holder keeps its permit through the reaper run after it took it
    // (its write may have just begun) ...
    assert!(w.reap_stalled_permits());
    assert!(!waiter.permit.get());
    // ... and gives it back after a whole interval without finishing.
    assert!(w.reap_stalled_permits());
    assert!(waiter.permit.get(), "the waiter got a permit");
    assert!(stuck.iter().all(|s| !s.permit.get()));
    // A stalled write that ends gives nothing back twice.
    for s in &stuck {
        w.release_write(s);
    }
    w.release_write(&waiter);
    assert_eq!(w.permits.get(), WRITE_PERMITS);
    // Nobody waits: the reaper stops.
    assert!(!w.reap_stalled_permits());
}

#[test]
fn a_write_in_flight_past_slow_consumer_s_is_aborted() {
    let (w, _) = worker("slow_consumer_s = 2");
    w.set_clock(900);
    let s = Rc::new(Subscriber::new(w.now(), 15, 0, true));
    assert!(w.acquire_write(&s)); // its write begins at 0.9 s
    w.set_clock(2_000);
    w.tick();
    w.set_clock(2_899);
    w.tick(); // not yet 2 s
    assert_eq!(s.state(), SubState::Open);
    w.set_clock(3_000);
    w.tick(); // 2.1 s, seen at the next whole second
    assert_eq!(s.state(), SubState::Abort);
}

#[test]
fn slow_consumer_is_told_to_reconnect() {
    let (w, hub) = worker("");
    let t = hub.topic("a").unwrap();
    let s = Rc::new(Subscriber::new(0, 15, 0, true));
    w.subscribe(&t, 0, None, &s, None);
    let big = "x".repeat(200_000);
    for _ in 0..8 {
        hub.publish(
            &t,
            vec![Row::new(format!("\"{big}\"").as_bytes(), &[], &[])],
        )
        .unwrap();
        w.on_inbox();
    }
    let frames = drain(&s);
    assert_eq!(frames.len(), 1, "queue dropped, reconnect queued");
    assert!(
        frames[0].contains("\"reason\":\"slow_consumer\""),
        "{}",
        frames[0]
    );
    assert_eq!(s.state(), SubState::Closing);
}

#[test]
fn a_reload_applies_its_verdicts_and_new_limits_to_open_streams() {
    let (w, hub) = worker("heartbeat_s = 2\nmax_duration_s = 100\nmax_events = 100");
    w.set_clock(0);
    let t = hub.topic("a").unwrap();
    let subs: Vec<_> = (0..3u32)
        .map(|i| {
            let s = Rc::new(Subscriber::new(w.now(), 2, 100, true));
            s.set_auth(StreamAuth {
                key: Some(i),
                tier: 0,
                token: false,
            });
            w.subscribe(&t, 0, None, &s, None);
            w.schedule(&s);
            drain(&s);
            s
        })
        .collect();
    let quiet = Rc::new(Subscriber::new(w.now(), 2, 100, true));
    quiet.set_auth(StreamAuth {
        key: Some(0),
        tier: 0,
        token: false,
    });
    w.subscribe(&hub.topic("b").unwrap(), 0, None, &quiet, None);
    w.schedule(&quiet);
    drain(&quiet);
    publish(&hub, &t, 0);
    w.on_inbox();
    for s in &subs {
        drain(s);
    }
    let mut stream = w.stream();
    stream.retry_ms = 1000;
    stream.max_events = 2;
    stream.max_duration = std::time::Duration::from_secs(3);
    let gone = Rc::new(Bytes::from_static(b"event: error\ndata: {}\n\n"));
    let done = w.reload(stream, |topic, auth| {
        assert!(["a", "b"].contains(&&*topic.name));
        match auth.key {
            Some(0) => Verdict::Keep(StreamAuth {
                key: Some(7),
                ..auth
            }),
            Some(1) => Verdict::Reconnect,
            _ => Verdict::End(gone.clone()),
        }
    });
    assert_eq!(
        done,
        Reloaded {
            kept: 2,
            reconnected: 1,
            ended: 1
        }
    );
    assert_eq!(subs[0].auth().key, Some(7), "indices into the new config");
    let f = drain(&subs[1]);
    assert_eq!(f.len(), 1);
    let retry: u32 = f[0]
        .strip_prefix("event: reconnect\nretry: ")
        .and_then(|r| r.split('\n').next())
        .and_then(|r| r.parse().ok())
        .expect("a reconnect frame");
    assert!((750..=1250).contains(&retry), "{retry}");
    assert!(f[0].contains("\"reason\":\"reload\""), "{}", f[0]);
    assert_eq!(drain(&subs[2]), vec!["event: error\ndata: {}\n\n"]);
    assert_eq!(subs[1].state(), SubState::Closing);
    assert_eq!(subs[2].state(), SubState::Closing);
    // The kept stream: its next update is its second (max_events is now 2),
    // and max_duration_s (now 3) counts from its start.
    publish(&hub, &t, 1);
    w.on_inbox();
    let f = drain(&subs[0]);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(
        f[1],
        "event: limit\ndata: {\"type\":\"limit\",\"max_events\":2}\n\n"
    );
    // A kept stream of another topic: its deadline moves to 3 s after its
    // start, noticed at its next heartbeat check (2 s), due at 3 s.
    let got = run_clock(&w, &quiet, 1000, 3000, 100);
    assert_eq!(
        got,
        vec![
            (2000, "heartbeat".to_string()),
            (3000, "event: timeout".to_string())
        ]
    );
}

#[test]
fn a_stopping_worker_records_its_open_streams_with_what_their_writes_completed() {
    use crate::metering::Msg;
    let (tx, rx) = std::sync::mpsc::channel();
    let s = Settings::from_toml("[server]\nworkers = 1\n[[topics]]\npattern = \"*\"\n").unwrap();
    let hub = Arc::new(Hub::new(Arc::new(s)));
    let mut w = Worker::new(0, hub.clone(), Default::default());
    w.meter = Some(meter::WorkerMeter::new(0, tx));
    let t = hub.topic("a").unwrap();
    let m = w.meter.as_ref().unwrap();
    let head = "HTTP/1.1 200 OK\r\n\r\n";
    let meter = m.start("acme", &t, "scale", head.len());
    let sub = Rc::new(Subscriber::new(0, 15, 0, true).metered(Box::new(meter)));
    m.track(&sub);
    let update = "event: update\nid: 7\ndata: {\"data\":[]}\n\n";
    for f in [head, ": heartbeat 1\n\n", update, update] {
        sub.push(frame(Bytes::from_static(f.as_bytes())));
    }
    let mut batch = FrameBatch::new();
    sub.take_into(&mut batch);
    // The socket takes all but the last frame's final byte.
    let n = batch.remaining() - 1;
    sub.wrote(&batch, n);
    m.finish();

    // (A minute may end meanwhile: its messages are left out here.)
    let msgs: Vec<Msg> = rx
        .try_iter()
        .filter(|m| !matches!(m, Msg::MinuteDone { .. }))
        .collect();
    let body = (n - head.len()) as u64;
    let (mut events, mut bytes) = (0, 0);
    for m in &msgs {
        if let Msg::Delta {
            key,
            events: e,
            bytes: b,
            ..
        } = m
        {
            assert_eq!(&**key, "acme");
            (events, bytes) = (events + e, bytes + b);
        }
    }
    assert_eq!((events, bytes), (1, body));
    match (msgs.first(), &msgs[msgs.len() - 2..]) {
        (Some(Msg::Opened { key }), [Msg::Closed(r), Msg::WorkerDone { worker: 0 }]) => {
            assert_eq!(&**key, "acme");
            assert_eq!(
                (
                    &*r.key,
                    &*r.tier,
                    &*r.topic.name,
                    r.events,
                    r.bytes,
                    r.close
                ),
                ("acme", "scale", "a", 1, body, "shutdown")
            );
            assert!(r.end_ms >= r.start_ms);
        }
        _ => panic!("unexpected messages: {}", msgs.len()),
    }
}

#[test]
fn the_sweep_looks_only_at_topics_whose_streams_ended() {
    let (w, hub) = worker("");
    let topics: Vec<_> = (0..50)
        .map(|i| hub.topic(&format!("t{i}")).unwrap())
        .collect();
    let subs: Vec<_> = topics
        .iter()
        .map(|t| {
            let s = Rc::new(Subscriber::new(0, 15, 0, true));
            w.subscribe(t, 0, None, &s, None);
            s
        })
        .collect();
    // Nothing ended: a sweep costs nothing, whatever the topic count.
    assert_eq!(w.sweep_groups(), 0);
    assert_eq!(w.groups.borrow().len(), 50);
    // One stream of t7 ends (twice reported: looked at once).
    subs[7].set_closed();
    w.stream_ended(&topics[7]);
    w.stream_ended(&topics[7]);
    assert_eq!(w.sweep_groups(), 1);
    assert_eq!(w.groups.borrow().len(), 49);
    // Its topic no longer wakes the worker; the others still do.
    publish(&hub, &topics[7], 1);
    publish(&hub, &topics[8], 1);
    assert!(
        hub.inbox(0)
            .pop()
            .is_some_and(|t| Arc::ptr_eq(&t, &topics[8]))
    );
    assert!(hub.inbox(0).pop().is_none());
    assert_eq!(w.sweep_groups(), 0);
}
