//! Opening sockets, shared by every worker scenario: one joined socket, or
//! many at the spec's rate, with their connect and join times, each with a
//! freshly signed token when the spec has a token secret.

use super::{now_us, Setup, WorkerSpec};
use crate::client::{Status, Target, Ws};
use crate::hist::Hist;
use crate::token::Credential;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub(super) fn target(spec: &WorkerSpec) -> Target {
    Target {
        addr: spec.addr,
        path: spec.path.clone(),
        host: spec.host.clone(),
    }
}

pub(super) fn source(spec: &WorkerSpec, global: usize) -> Option<IpAddr> {
    if spec.sources.is_empty() {
        None
    } else {
        Some(spec.sources[global % spec.sources.len()])
    }
}

/// The error name a report counts (no addresses, so they group).
pub(super) fn error_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{:?} (os {code})", e.kind()),
        None => {
            let s = e.to_string();
            s.chars().take(60).collect()
        }
    }
}

/// Connects and joins `topics` (pipelined); returns the socket and the
/// connect and join times in µs.
pub async fn open_joined(
    target: &Target,
    source: Option<IpAddr>,
    topics: &[String],
) -> Result<(Ws, u64, u64), String> {
    open_joined_with(target, source, topics, "{}", None).await
}

/// As [`open_joined`], with the join payload `params` (JSON) and a token.
/// A refused join is the error `join refused: <reason>`.
pub async fn open_joined_with(
    target: &Target,
    source: Option<IpAddr>,
    topics: &[String],
    params: &str,
    credential: Option<&Credential>,
) -> Result<(Ws, u64, u64), String> {
    let t0 = Instant::now();
    let mut ws = Ws::connect_as(target, source, credential)
        .await
        .map_err(|e| error_name(&e))?;
    let t1 = Instant::now();
    for (j, topic) in topics.iter().enumerate() {
        ws.queue_text(&format!(
            "[\"{j}\",\"{j}\",\"{topic}\",\"phx_join\",{params}]"
        ));
    }
    ws.flush().await.map_err(|e| error_name(&e))?;
    for j in 0..topics.len() {
        match ws.await_status(&j.to_string()).await {
            Ok(Status::Ok) => {}
            Ok(Status::Error(reason)) => return Err(format!("join refused: {reason}")),
            Err(e) => return Err(error_name(&e)),
        }
    }
    let t2 = Instant::now();
    Ok((
        ws,
        (t1 - t0).as_micros() as u64,
        (t2 - t1).as_micros() as u64,
    ))
}

/// The token socket `global` presents, if the spec signs any.
pub(super) fn credential(spec: &WorkerSpec, global: usize) -> Result<Option<Credential>, String> {
    spec.token
        .as_ref()
        .map(|t| t.credential(global))
        .transpose()
}

/// Opens the worker's sockets (global indices `spec.first..` on) at the
/// spec's rate; each joins the topics `topics_of` names. Sockets that fail
/// are counted.
pub(super) async fn open_many(
    spec: &WorkerSpec,
    topics_of: impl Fn(usize) -> Vec<String>,
    progress: &AtomicU64,
) -> (Vec<Ws>, Setup) {
    let target = Arc::new(target(spec));
    let permits = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let mut set = JoinSet::new();
    let start = Instant::now();
    let mut setup = Setup {
        started_us: now_us(),
        ..Setup::default()
    };
    let (first, count) = (spec.first, spec.sockets);
    let (mut connect, mut join, mut total) = (Hist::default(), Hist::default(), Hist::default());
    let mut held = Vec::with_capacity(count);
    let mut absorb = |r: Result<Result<(Ws, u64, u64), String>, tokio::task::JoinError>,
                      setup: &mut Setup| {
        match r {
            Ok(Ok((mut ws, c, j))) => {
                ws.release_buffers();
                held.push(ws);
                connect.record(c);
                join.record(j);
                total.record(c + j);
                setup.opened += 1;
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                setup.failed += 1;
                *setup.errors.entry(e).or_default() += 1;
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                setup.failed += 1;
                *setup.errors.entry(e.to_string()).or_default() += 1;
            }
        }
    };
    for i in 0..count {
        let global = first + i;
        if spec.rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / spec.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = permits.clone().acquire_owned().await;
        let (target, src, topics) = (target.clone(), source(spec, global), topics_of(global));
        let credential = credential(spec, global);
        set.spawn(async move {
            let _permit = permit;
            let credential = credential?;
            let open = open_joined_with(&target, src, &topics, "{}", credential.as_ref());
            tokio::time::timeout(Duration::from_secs(30), open)
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
        });
        while let Some(r) = set.try_join_next() {
            absorb(r, &mut setup);
        }
    }
    while let Some(r) = set.join_next().await {
        absorb(r, &mut setup);
    }
    setup.finished_us = now_us();
    setup.connect = connect.to_wire();
    setup.join = join.to_wire();
    setup.total = total.to_wire();
    (held, setup)
}

pub(super) fn topic(spec: &WorkerSpec, n: usize) -> String {
    match &spec.exact_topic {
        Some(t) => t.clone(),
        None => format!("{}{}", spec.prefix, n),
    }
}
