//! A worker's share of `bench churn`: concurrent connect/join/leave/close
//! cycles, every n-th dropped abruptly.

use super::open::{credential, error_name, open_joined_with, source, target, topic};
use super::{lock, Command, Event, Link, Outcome, Setup, WorkerSpec};
use crate::client::{self, Target, OP_CLOSE};
use crate::hist::Hist;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub(super) async fn run(spec: &WorkerSpec, link: &mut Link) -> Result<Outcome, String> {
    let _ = link.events.send(Event::Ready(Setup::default()));
    match link.commands.recv().await {
        Some(Command::Go) => {}
        _ => return Ok(Outcome::default()),
    }
    let target = Arc::new(target(spec));
    let next = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let latency = Arc::new(Mutex::new(Hist::default()));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..spec.concurrency.max(1) {
        let (target, next, ops, failures, latency, spec) = (
            target.clone(),
            next.clone(),
            ops.clone(),
            failures.clone(),
            latency.clone(),
            spec.clone(),
        );
        set.spawn(async move {
            let mut local = Hist::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= spec.cycles {
                    break;
                }
                let global = spec.first as u64 * 1_000_003 + i;
                let t0 = Instant::now();
                let r =
                    tokio::time::timeout(Duration::from_secs(30), cycle(&spec, &target, global, i))
                        .await
                        .unwrap_or_else(|_| Err(("timed out".into(), 0)));
                match r {
                    Ok(n) => {
                        ops.fetch_add(n, Ordering::Relaxed);
                        local.record(t0.elapsed().as_micros() as u64);
                    }
                    Err((e, n)) => {
                        ops.fetch_add(n, Ordering::Relaxed);
                        *lock(&failures).entry(e).or_default() += 1;
                    }
                }
            }
            lock(&latency).merge(&local);
        });
    }
    loop {
        link.progress.store(
            next.load(Ordering::Relaxed).min(spec.cycles),
            Ordering::Relaxed,
        );
        tokio::select! {
            r = set.join_next() => if r.is_none() { break },
            c = link.commands.recv() => if matches!(c, Some(Command::Stop) | None) {
                next.store(u64::MAX / 2, Ordering::Relaxed);
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    link.progress.store(spec.cycles, Ordering::Relaxed);
    let h = lock(&latency).clone();
    let failures = lock(&failures).clone();
    Ok(Outcome {
        cycles: h.count(),
        ops: ops.load(Ordering::Relaxed),
        elapsed_us: start.elapsed().as_micros() as u64,
        latency: h.to_wire(),
        failures,
        ..Outcome::default()
    })
}

/// One connect / join / leave / close cycle; returns the operations done.
/// Every `abrupt_every`-th cycle drops the connection while joined, with
/// no leave and no close frame (a reset), which the server must count down.
async fn cycle(
    spec: &WorkerSpec,
    target: &Target,
    global: u64,
    i: u64,
) -> Result<u64, (String, u64)> {
    let per = spec.topics_per_socket.max(1);
    let k = spec.topics.max(1) as u64;
    let topics: Vec<String> = (0..per as u64)
        .map(|j| topic(spec, ((i * per as u64 + j) % k) as usize))
        .collect();
    let credential = credential(spec, global as usize).map_err(|e| (e, 0))?;
    let (mut ws, _, _) = open_joined_with(
        target,
        source(spec, global as usize),
        &topics,
        "{}",
        credential.as_ref(),
    )
    .await
    .map_err(|e| (e, 0))?;
    let mut ops = 1 + topics.len() as u64;
    if spec.abrupt_every > 0 && i % spec.abrupt_every == spec.abrupt_every - 1 {
        client::set_linger_zero(&ws.stream);
        drop(ws);
        return Ok(ops + 1);
    }
    for (j, topic) in topics.iter().enumerate() {
        ws.queue_text(&format!(
            "[\"{j}\",\"l{j}\",\"{topic}\",\"phx_leave\",{{}}]"
        ));
    }
    let io = |e: std::io::Error, ops| (error_name(&e), ops);
    ws.flush().await.map_err(|e| io(e, ops))?;
    for j in 0..topics.len() {
        ws.await_reply(&format!("l{j}"))
            .await
            .map_err(|e| io(e, ops))?;
        ops += 1;
    }
    ws.send_close().await.map_err(|e| io(e, ops))?;
    // Wait for the server's close frame so the close is complete.
    loop {
        match ws.next().await {
            Ok(f) if f.opcode == OP_CLOSE => break,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    Ok(ops + 1)
}
