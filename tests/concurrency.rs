//! The cross-thread pieces under real threads: the broadcast ring (one
//! writer, readers on other threads) and the worker inbox's wake-up
//! protocol. Every frame is accounted for: received + lagged == sent, in
//! order, never torn; and a reader that waits on the inbox is always woken
//! for what was published (no lost wake-up).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice::config::Settings;
use sluice::hub::ring::{Entry, Read, Ring};
use sluice::hub::{Hub, Rows};
use sluice::sources::publish::{Format, accept};

const WAIT: Duration = Duration::from_secs(20);

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        ts_ms: seq,
        frame: Bytes::from(format!("frame {seq:020}")),
        rows: Rows::default(),
    }
}

/// Reads every position from 0 until `sent` frames are accounted for;
/// returns (received, lagged).
fn read_all(ring: &Ring, sent: u64) -> (u64, u64) {
    let (mut pos, mut received, mut lagged, mut last_seq) = (0u64, 0u64, 0u64, None);
    let deadline = Instant::now() + WAIT;
    while received + lagged < sent {
        assert!(Instant::now() < deadline, "reader stuck at {pos}");
        match ring.read(pos) {
            Read::Frame(e) => {
                assert_eq!(e.seq, pos, "position and frame agree");
                assert_eq!(e.frame, format!("frame {pos:020}"), "a whole frame");
                if let Some(l) = last_seq {
                    assert!(e.seq > l, "in order");
                }
                last_seq = Some(e.seq);
                received += 1;
                pos += 1;
            }
            Read::Empty => thread::yield_now(),
            Read::Lagged => {
                // A lap behind: skip to the oldest frame still held.
                let oldest = ring.tail().saturating_sub(ring.capacity());
                let next = oldest.max(pos + 1);
                lagged += next - pos;
                pos = next;
            }
        }
    }
    (received, lagged)
}

#[test]
fn ring_readers_on_other_threads_account_for_every_frame() {
    for capacity in [4usize, 64, 1024] {
        let ring = Arc::new(Ring::new(capacity));
        let sent = 200_000u64;
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let ring = ring.clone();
                thread::spawn(move || read_all(&ring, sent))
            })
            .collect();
        for seq in 0..sent {
            ring.push(entry(seq));
        }
        for r in readers {
            let (received, lagged) = r.join().expect("reader");
            assert_eq!(received + lagged, sent, "capacity {capacity}");
            assert!(received > 0);
        }
    }
}

/// A waker that records that it was woken.
struct Flag(AtomicBool, thread::Thread);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
        self.1.unpark();
    }
}

#[test]
fn an_inbox_waiter_is_woken_for_every_publish_from_another_thread() {
    let s =
        Settings::from_toml("[server]\nworkers = 1\nreplay = 64\n[[topics]]\npattern = \"*\"\n")
            .unwrap();
    let hub = Arc::new(Hub::new(Arc::new(s)));
    let topics: Vec<_> = (0..4)
        .map(|i| hub.topic(&format!("t{i}")).unwrap())
        .collect();
    for t in &topics {
        t.add_interest(0, 0);
    }
    let sent_per_topic = 20_000u64;
    let publisher = {
        let hub = hub.clone();
        let topics = topics.clone();
        thread::spawn(move || {
            for n in 0..sent_per_topic {
                for t in &topics {
                    let mut body = format!(r#"{{"n":{n}}}"#).into_bytes();
                    accept(&hub, t, &mut body, Format::Json, "test").unwrap();
                }
            }
        })
    };
    // The worker's side, on this thread: wait on the inbox, then read each
    // queued topic's ring from its cursor.
    let flag = Arc::new(Flag(AtomicBool::new(false), thread::current()));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let inbox = hub.inbox(0);
    let mut cursors = vec![0u64; topics.len()];
    let mut counted = vec![0u64; topics.len()];
    let deadline = Instant::now() + WAIT;
    while counted.iter().sum::<u64>() < sent_per_topic * topics.len() as u64 {
        match inbox.poll_ready(&mut cx) {
            Poll::Ready(()) => {}
            Poll::Pending => {
                // Only a wake-up may end this wait; a lost one times out.
                while !flag.0.swap(false, Ordering::Acquire) {
                    assert!(
                        Instant::now() < deadline,
                        "lost wake-up: {counted:?} of {sent_per_topic} each"
                    );
                    thread::park_timeout(Duration::from_millis(50));
                }
                continue;
            }
        }
        while let Some(t) = inbox.pop() {
            t.dequeued(0);
            let i = topics.iter().position(|x| Arc::ptr_eq(x, &t)).unwrap();
            let ring = t.ring(0).expect("the raw ring");
            while cursors[i] < ring.tail() {
                match ring.read(cursors[i]) {
                    Read::Frame(_) => {
                        counted[i] += 1;
                        cursors[i] += 1;
                    }
                    Read::Lagged => {
                        let next = ring.tail().saturating_sub(ring.capacity());
                        counted[i] += next - cursors[i];
                        cursors[i] = next;
                    }
                    Read::Empty => break,
                }
            }
        }
    }
    publisher.join().unwrap();
    assert_eq!(counted, vec![sent_per_topic; topics.len()]);
}
