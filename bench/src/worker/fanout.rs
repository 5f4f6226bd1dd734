//! A worker's share of `bench fanout`: its subscribers, each counting the
//! messages it receives, their latency, losses and duplicates.

use super::open::{open_many, topic};
use super::{lock, now_us, Command, Event, Link, Outcome, WorkerSpec};
use crate::client::{self, Ws, OP_CLOSE, OP_TEXT};
use crate::hist::Hist;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;

/// Shared by a worker's subscriber tasks.
struct FanoutShared {
    latency: Mutex<Hist>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    closed_early: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
    stop: AtomicBool,
    stop_notify: tokio::sync::Notify,
}

pub(super) async fn run(spec: &WorkerSpec, link: &mut Link) -> Result<Outcome, String> {
    let k = spec.topics.max(1);
    let opened = AtomicU64::new(0);
    let (held, setup) = open_many(spec, |g| vec![topic(spec, g % k)], &opened).await;
    let _ = link.events.send(Event::Ready(setup));
    let shared = Arc::new(FanoutShared {
        latency: Mutex::new(Hist::default()),
        delivered: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        closed_early: AtomicU64::new(0),
        first_us: AtomicU64::new(u64::MAX),
        last_us: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        stop_notify: tokio::sync::Notify::new(),
    });
    let messages = spec.messages;
    let mut set = JoinSet::new();
    for ws in held {
        let shared = shared.clone();
        set.spawn(subscriber(ws, messages, shared));
    }
    // Progress counts deliveries.
    loop {
        link.progress
            .store(shared.delivered.load(Ordering::Relaxed), Ordering::Relaxed);
        tokio::select! {
            r = set.join_next() => if r.is_none() { break },
            c = link.commands.recv() => match c {
                Some(Command::Go) => {}
                Some(Command::Stop) | None => {
                    shared.stop.store(true, Ordering::SeqCst);
                    shared.stop_notify.notify_waiters();
                    while set.join_next().await.is_some() {}
                    break;
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    link.progress
        .store(shared.delivered.load(Ordering::Relaxed), Ordering::Relaxed);
    let latency = lock(&shared.latency).to_wire();
    let first = shared.first_us.load(Ordering::Relaxed);
    Ok(Outcome {
        delivered: shared.delivered.load(Ordering::Relaxed),
        duplicates: shared.duplicates.load(Ordering::Relaxed),
        closed_early: shared.closed_early.load(Ordering::Relaxed),
        first_us: if first == u64::MAX { 0 } else { first },
        last_us: shared.last_us.load(Ordering::Relaxed),
        latency,
        ..Outcome::default()
    })
}

/// One subscriber: reads broadcasts `{"seq":n,"t":µs}` until it has them all.
async fn subscriber(mut ws: Ws, messages: u64, shared: Arc<FanoutShared>) {
    let mut seen = vec![0u64; (messages as usize).div_ceil(64)];
    let mut got = 0u64;
    let mut lat: Vec<u64> = Vec::new();
    while got < messages && !shared.stop.load(Ordering::Relaxed) {
        let stop = shared.stop_notify.notified();
        let mut dup = 0u64;
        let mut closed = false;
        let mut on_frame = |op: u8, data: &[u8]| {
            if op == OP_CLOSE {
                closed = true;
                return;
            }
            if op != OP_TEXT {
                return;
            }
            let tail = &data[data.len().saturating_sub(64)..];
            let (Some(seq), Some(t)) = (
                client::number_after(tail, b"\"seq\":"),
                client::number_after(tail, b"\"t\":"),
            ) else {
                return;
            };
            if seq >= messages {
                return;
            }
            let (w, b) = ((seq / 64) as usize, seq % 64);
            if seen[w] & (1 << b) != 0 {
                dup += 1;
                return;
            }
            seen[w] |= 1 << b;
            got += 1;
            lat.push(t);
        };
        let read = tokio::select! {
            r = ws.read_batch(&mut on_frame) => r,
            _ = stop => break,
        };
        if !lat.is_empty() {
            let now = now_us();
            {
                let mut h = lock(&shared.latency);
                for t in &lat {
                    h.record(now.saturating_sub(*t));
                }
            }
            shared
                .delivered
                .fetch_add(lat.len() as u64, Ordering::Relaxed);
            shared.first_us.fetch_min(now, Ordering::Relaxed);
            shared.last_us.fetch_max(now, Ordering::Relaxed);
            lat.clear();
        }
        if dup > 0 {
            shared.duplicates.fetch_add(dup, Ordering::Relaxed);
        }
        match read {
            Ok(true) if !closed => {}
            _ => {
                if got < messages {
                    shared.closed_early.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
    }
    let _ = ws.send_close().await;
}
