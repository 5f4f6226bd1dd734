//! A worker's share of `bench query`: populate its topics; the first worker
//! also asks (stats or occupancy) in a closed loop and times the answers.
//! What one asker does and what a reply is checked for is in `asker`.

use super::asker::{check_reply, Asked, Asker};
use super::open::{open_joined, open_many, source, target, topic};
use super::{lock, Command, Event, Link, Outcome, WorkerSpec};
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
    let shared = Arc::new(Mutex::new(Asked::default()));
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (i, ws) in askers.into_iter().enumerate() {
        let (budget, shared, counter, spec) = (
            budget.clone(),
            shared.clone(),
            counter.clone(),
            spec.clone(),
        );
        set.spawn(async move {
            let mut asker = Asker::new(&spec, i);
            let ws = asker.run(ws, deadline, &budget, &counter).await;
            lock(&shared).merge(asker.asked);
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
    let asked = std::mem::take(&mut *lock(&shared));
    let _ = link
        .events
        .send(Event::Progress(link.progress.load(Ordering::Relaxed)));
    let reply_check = asked
        .sample
        .as_ref()
        .map_or(serde_json::Value::Null, |(reply, topics)| {
            check_reply(&spec.query_event, reply, topics, &spec.query_payload)
        });
    let _ = link.events.send(Event::Done(Outcome {
        answered: asked.latency.count(),
        errors: asked.errors,
        elapsed_us: elapsed,
        last_connection_count: asked.last_count,
        latency: asked.latency.to_wire(),
        rate_limited: asked.rate_limited,
        error_reasons: asked.reasons,
        reply_bytes: asked.reply_bytes,
        reply_check,
        ..Outcome::default()
    }));
    // Every worker's populating sockets stay until all have finished
    // asking, so no worker's topics vanish under another's queries.
    let _ = link.commands.recv().await;
    drop(finished);
    drop(populated);
    Ok(())
}
