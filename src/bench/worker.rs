//! One load-generating worker: opens its share of the sockets and runs its
//! share of a scenario, reporting progress, a `Ready` after set-up and a
//! `Done` with its figures. The coordinator runs one in its own process, or
//! several as `headcount bench-worker` child processes (each has its own
//! open-file limit) that speak JSON lines over stdin/stdout.

use super::client::{self, Target, Ws, OP_CLOSE, OP_TEXT};
use super::hist::{Hist, WireHist};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Hold,
    Fanout,
    Query,
    Churn,
}

/// Everything one worker needs to know.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WorkerSpec {
    pub index: usize,
    pub kind: Kind,
    pub addr: SocketAddr,
    pub path: String,
    pub host: String,
    pub sources: Vec<IpAddr>,
    /// This worker's sockets are global indices `first..first + sockets`.
    pub first: usize,
    pub sockets: usize,
    /// Topics are `{prefix}{n}` for n in 0..topics.
    pub prefix: String,
    pub topics: usize,
    /// Topics joined per socket (query populates up to this many per socket).
    pub topics_per_socket: usize,
    /// Connects per second for this worker; 0 = as fast as `concurrency` allows.
    pub rate: f64,
    pub concurrency: usize,
    pub heartbeat_ms: u64,
    /// fanout: messages each subscriber expects.
    pub messages: u64,
    /// query: sockets asking, the event, and how long or how many.
    pub query_sockets: usize,
    pub query_event: String,
    pub duration_ms: u64,
    pub max_queries: u64,
    /// churn: cycles for this worker, joins per cycle, every n-th cycle ends
    /// abruptly (no leave, no close frame; 0 = never).
    pub cycles: u64,
    pub abrupt_every: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Command {
    Go,
    Stop,
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Event {
    Progress(u64),
    Ready(Setup),
    Done(Outcome),
    Failed(String),
}

/// What opening the sockets gave.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Setup {
    pub opened: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub connect: WireHist,
    pub join: WireHist,
    pub total: WireHist,
    pub started_us: u64,
    pub finished_us: u64,
}

/// A worker's figures at the end.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Outcome {
    /// hold: sockets still open when told to stop.
    pub alive: u64,
    /// fanout: deliveries of distinct messages, duplicates, subscribers that
    /// were closed before the end, first and last delivery (µs since epoch).
    pub delivered: u64,
    pub duplicates: u64,
    pub closed_early: u64,
    pub first_us: u64,
    pub last_us: u64,
    pub latency: WireHist,
    /// query: answers, their span, the last connection_count seen.
    pub answered: u64,
    pub errors: u64,
    pub elapsed_us: u64,
    pub last_connection_count: u64,
    /// churn: cycles and operations completed, failures.
    pub cycles: u64,
    pub ops: u64,
    pub failures: BTreeMap<String, u64>,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn target(spec: &WorkerSpec) -> Target {
    Target {
        addr: spec.addr,
        path: spec.path.clone(),
        host: spec.host.clone(),
    }
}

fn source(spec: &WorkerSpec, global: usize) -> Option<IpAddr> {
    if spec.sources.is_empty() {
        None
    } else {
        Some(spec.sources[global % spec.sources.len()])
    }
}

/// The error name a report counts (no addresses, so they group).
fn error_name(e: &std::io::Error) -> String {
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
    let t0 = Instant::now();
    let mut ws = Ws::connect(target, source)
        .await
        .map_err(|e| error_name(&e))?;
    let t1 = Instant::now();
    for (j, topic) in topics.iter().enumerate() {
        ws.queue_text(&format!("[\"{j}\",\"{j}\",\"{topic}\",\"phx_join\",{{}}]"));
    }
    ws.flush().await.map_err(|e| error_name(&e))?;
    for j in 0..topics.len() {
        match ws.await_reply(&j.to_string()).await {
            Ok(true) => {}
            Ok(false) => return Err("join refused".into()),
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

/// Runs one worker to the end.
pub async fn run(
    spec: WorkerSpec,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) {
    let progress = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (progress, events) = (progress.clone(), events.clone());
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let now = progress.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    if events.send(Event::Progress(now)).is_err() {
                        return;
                    }
                }
            }
        })
    };
    let done = match spec.kind {
        Kind::Hold => hold(&spec, &mut commands, &events, &progress)
            .await
            .map(Some),
        Kind::Fanout => fanout(&spec, &mut commands, &events, &progress)
            .await
            .map(Some),
        // The query worker reports before it lets its sockets go.
        Kind::Query => query(&spec, &mut commands, &events, &progress)
            .await
            .map(|()| None),
        Kind::Churn => churn(&spec, &mut commands, &events, &progress)
            .await
            .map(Some),
    };
    ticker.abort();
    let _ = events.send(Event::Progress(progress.load(Ordering::Relaxed)));
    match done {
        Ok(Some(outcome)) => {
            let _ = events.send(Event::Done(outcome));
        }
        Ok(None) => {}
        Err(e) => {
            let _ = events.send(Event::Failed(e));
        }
    }
}

/// Opens `count` sockets from global index `first` at the spec's rate; each
/// joins the topics `topics_of` names. Sockets that fail are counted.
async fn open_many(
    spec: &WorkerSpec,
    first: usize,
    count: usize,
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
        set.spawn(async move {
            let _permit = permit;
            tokio::time::timeout(Duration::from_secs(30), open_joined(&target, src, &topics))
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

fn topic(spec: &WorkerSpec, n: usize) -> String {
    format!("{}{}", spec.prefix, n)
}

const HEARTBEAT: &str = "[null,\"hb\",\"phoenix\",\"heartbeat\",{}]";

async fn hold(
    spec: &WorkerSpec,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::UnboundedSender<Event>,
    progress: &AtomicU64,
) -> Result<Outcome, String> {
    let k = spec.topics.max(1);
    let per = spec.topics_per_socket.max(1);
    let (held, setup) = open_many(
        spec,
        spec.first,
        spec.sockets,
        |g| (0..per).map(|j| topic(spec, (g * per + j) % k)).collect(),
        progress,
    )
    .await;
    let _ = events.send(Event::Ready(setup));
    let mut frame = Vec::new();
    client::encode_client_frame(&mut frame, OP_TEXT, HEARTBEAT.as_bytes());
    let mut beat = tokio::time::interval(Duration::from_millis(spec.heartbeat_ms.max(1000)));
    beat.tick().await;
    loop {
        tokio::select! {
            c = commands.recv() => match c {
                Some(Command::Go) => continue,
                Some(Command::Stop) | None => break,
            },
            _ = beat.tick() => {
                for ws in &held {
                    let _ = ws.stream.try_write(&frame);
                }
                // Read the heartbeat replies so the kernel buffers stay small.
                let mut sink = [0u8; 512];
                for ws in &held {
                    while let Ok(n) = ws.stream.try_read(&mut sink) {
                        if n == 0 { break; }
                    }
                }
            }
        }
    }
    let mut alive = 0;
    let mut sink = [0u8; 512];
    let mut close = Vec::new();
    client::encode_client_frame(&mut close, OP_CLOSE, &1000u16.to_be_bytes());
    for ws in &held {
        let open = loop {
            match ws.stream.try_read(&mut sink) {
                Ok(0) => break false,
                Ok(n) => {
                    if sink[..n].contains(&(0x80 | OP_CLOSE)) && n <= 130 {
                        break false;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        };
        if open {
            alive += 1;
            let _ = ws.stream.try_write(&close);
        }
    }
    // Give the server a moment to read the close frames before the resets.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(held);
    Ok(Outcome {
        alive,
        ..Outcome::default()
    })
}

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

async fn fanout(
    spec: &WorkerSpec,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::UnboundedSender<Event>,
    progress: &AtomicU64,
) -> Result<Outcome, String> {
    let k = spec.topics.max(1);
    let opened = AtomicU64::new(0);
    let (held, setup) = open_many(
        spec,
        spec.first,
        spec.sockets,
        |g| vec![topic(spec, g % k)],
        &opened,
    )
    .await;
    let _ = events.send(Event::Ready(setup));
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
        progress.store(shared.delivered.load(Ordering::Relaxed), Ordering::Relaxed);
        tokio::select! {
            r = set.join_next() => if r.is_none() { break },
            c = commands.recv() => match c {
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
    progress.store(shared.delivered.load(Ordering::Relaxed), Ordering::Relaxed);
    let latency = shared
        .latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .to_wire();
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
                let mut h = shared.latency.lock().unwrap_or_else(|e| e.into_inner());
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

async fn query(
    spec: &WorkerSpec,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::UnboundedSender<Event>,
    progress: &AtomicU64,
) -> Result<(), String> {
    let per = spec.topics_per_socket.max(1);
    let k = spec.topics;
    let (populated, mut setup) = open_many(
        spec,
        spec.first,
        spec.sockets,
        |g| {
            (g * per..((g + 1) * per).min(k))
                .map(|n| topic(spec, n))
                .collect()
        },
        progress,
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
    let _ = events.send(Event::Ready(setup));
    match commands.recv().await {
        Some(Command::Go) => {}
        _ => {
            let _ = events.send(Event::Done(Outcome::default()));
            return Ok(());
        }
    }
    progress.store(0, Ordering::Relaxed);
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
            latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .merge(&local);
            // Kept open until every asker is done, so none of them sees
            // another's socket go.
            ws
        });
    }
    let mut finished = Vec::new();
    loop {
        progress.store(counter.load(Ordering::Relaxed), Ordering::Relaxed);
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
    progress.store(counter.load(Ordering::Relaxed), Ordering::Relaxed);
    let h = latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let _ = events.send(Event::Progress(progress.load(Ordering::Relaxed)));
    let _ = events.send(Event::Done(Outcome {
        answered: h.count(),
        errors: errors.load(Ordering::Relaxed),
        elapsed_us: elapsed,
        last_connection_count: last_count.load(Ordering::Relaxed),
        latency: h.to_wire(),
        ..Outcome::default()
    }));
    // Every worker's populating sockets stay until all have finished
    // asking, so no worker's topics vanish under another's queries.
    let _ = commands.recv().await;
    drop(finished);
    drop(populated);
    Ok(())
}

async fn churn(
    spec: &WorkerSpec,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::UnboundedSender<Event>,
    progress: &AtomicU64,
) -> Result<Outcome, String> {
    let _ = events.send(Event::Ready(Setup::default()));
    match commands.recv().await {
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
                        *failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(e)
                            .or_default() += 1;
                    }
                }
            }
            latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .merge(&local);
        });
    }
    loop {
        progress.store(
            next.load(Ordering::Relaxed).min(spec.cycles),
            Ordering::Relaxed,
        );
        tokio::select! {
            r = set.join_next() => if r.is_none() { break },
            c = commands.recv() => if matches!(c, Some(Command::Stop) | None) {
                next.store(u64::MAX / 2, Ordering::Relaxed);
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    progress.store(spec.cycles, Ordering::Relaxed);
    let h = latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
    let (mut ws, _, _) = open_joined(target, source(spec, global as usize), &topics)
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

/// `headcount bench-worker`: reads its spec and then commands from stdin,
/// writes events to stdout as JSON lines.
pub async fn main_stdio() -> std::io::Result<()> {
    crate::server::raise_file_limit();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .ok_or_else(|| std::io::Error::other("no worker spec on stdin"))?;
    let spec: WorkerSpec = serde_json::from_str(&first).map_err(std::io::Error::other)?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(c) = serde_json::from_str::<Command>(&line) {
                if cmd_tx.send(c).is_err() {
                    return;
                }
            }
        }
        let _ = cmd_tx.send(Command::Stop);
    });
    let work = tokio::spawn(run(spec, cmd_rx, ev_tx));
    let mut out = tokio::io::stdout();
    while let Some(ev) = ev_rx.recv().await {
        let mut line = serde_json::to_vec(&ev).map_err(std::io::Error::other)?;
        line.push(b'\n');
        out.write_all(&line).await?;
        out.flush().await?;
        if matches!(ev, Event::Done(_) | Event::Failed(_)) {
            break;
        }
    }
    let _ = work.await;
    Ok(())
}
