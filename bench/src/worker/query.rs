//! A worker's share of `bench query`: populate its topics; the first worker
//! also asks for stats in a closed loop and times the answers.

use super::open::{open_joined, open_many, source, target, topic};
use super::{lock, Command, Event, Link, Outcome, WorkerSpec};
use crate::client::{self};
use crate::hist::Hist;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub(super) async fn run(spec: &WorkerSpec, link: &mut Link) -> Result<(), String> {
    let per = spec.topics_per_socket.max(1);
    let k = spec.topics;
    let (populated, mut setup) = open_many(
        spec,
        |g| {
            (g * per..((g + 1) * per).min(k))
                .map(|n| topic(spec, n))
                .collect()
        },
        &link.progress,
    )
    .await;
    let target = target(spec);
    let mut askers = Vec::new();
    for i in 0..spec.query_sockets {
        match open_joined(&target, source(spec, i), &["patterns:stats".to_string()]).await {
            Ok((ws, _, _)) => askers.push(ws),
            Err(e) => {
                setup.failed += 1;
                *setup.errors.entry(e).or_default() += 1;
            }
        }
    }
    let _ = link.events.send(Event::Ready(setup));
    match link.commands.recv().await {
        Some(Command::Go) => {}
        _ => {
            let _ = link.events.send(Event::Done(Outcome::default()));
            return Ok(());
        }
    }
    link.progress.store(0, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_millis(spec.duration_ms);
    let budget = Arc::new(AtomicU64::new(spec.max_queries));
    let latency = Arc::new(Mutex::new(Hist::default()));
    let errors = Arc::new(AtomicU64::new(0));
    let last_count = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let event = spec.query_event.clone();
    let push = if event == "get_cluster_stats" {
        "cluster_stats"
    } else {
        "local_stats"
    };
    let start = Instant::now();
    let mut set = JoinSet::new();
    for mut ws in askers {
        let (budget, latency, errors, last_count, counter, event) = (
            budget.clone(),
            latency.clone(),
            errors.clone(),
            last_count.clone(),
            counter.clone(),
            event.clone(),
        );
        set.spawn(async move {
            let mut local = Hist::default();
            let mut n = 0u64;
            while Instant::now() < deadline
                && budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                    .is_ok()
            {
                n += 1;
                let reference = format!("q{n}");
                let frame = format!("[\"0\",\"{reference}\",\"patterns:stats\",\"{event}\",{{}}]");
                let t0 = Instant::now();
                let r = async {
                    ws.send_text(&frame).await?;
                    let count = ws.await_reply_with(&reference, |data| {
                        client::number_after(data, b"\"connection_count\":")
                    });
                    let count = count.await?;
                    let dt = t0.elapsed().as_micros() as u64;
                    // The same figures follow as a push; take it before the
                    // next request so it is not counted in that one's time.
                    ws.await_event(push).await?;
                    Ok::<_, std::io::Error>((count, dt))
                };
                match tokio::time::timeout(Duration::from_secs(10), r).await {
                    Ok(Ok((Some(c), dt))) => {
                        local.record(dt);
                        last_count.store(c, Ordering::Relaxed);
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            lock(&latency).merge(&local);
            // Kept open until every asker is done, so none of them sees
            // another's socket go.
            ws
        });
    }
    let mut finished = Vec::new();
    loop {
        link.progress
            .store(counter.load(Ordering::Relaxed), Ordering::Relaxed);
        tokio::select! {
            r = set.join_next() => match r {
                Some(Ok(ws)) => finished.push(ws),
                Some(Err(_)) => {}
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let elapsed = start.elapsed().as_micros() as u64;
    link.progress
        .store(counter.load(Ordering::Relaxed), Ordering::Relaxed);
    let h = lock(&latency).clone();
    let _ = link
        .events
        .send(Event::Progress(link.progress.load(Ordering::Relaxed)));
    let _ = link.events.send(Event::Done(Outcome {
        answered: h.count(),
        errors: errors.load(Ordering::Relaxed),
        elapsed_us: elapsed,
        last_connection_count: last_count.load(Ordering::Relaxed),
        latency: h.to_wire(),
        ..Outcome::default()
    }));
    // Every worker's populating sockets stay until all have finished
    // asking, so no worker's topics vanish under another's queries.
    let _ = link.commands.recv().await;
    drop(finished);
    drop(populated);
    Ok(())
}
