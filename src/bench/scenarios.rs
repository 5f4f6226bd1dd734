//! The coordinator's side of each scenario: start the workers, drive their
//! phases, read the server's counts and RSS, and build the report (a JSON
//! object, and a human summary made from it).

use super::client::{self, Target, Ws};
use super::hist::{fmt_us, Hist};
use super::http::Http;
use super::worker::{self, now_us, Command, Event, Kind, Outcome, Setup, WorkerSpec};
use super::{
    cpu_seconds, endpoint, rss_of, source_addrs, BenchArgs, BenchError, Endpoint, Publish,
    QueryEvent, Scenario,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Runs the scenario and returns what to print: the human summary, or one
/// JSON object with `--json`.
pub async fn run(args: BenchArgs) -> Result<String, BenchError> {
    if args.url.is_empty() {
        return Err(BenchError::Usage("--url is required".into()));
    }
    let mut endpoints = Vec::new();
    for url in &args.url {
        endpoints.push(endpoint(url).await?);
    }
    check_bounds(&args)?;
    crate::server::raise_file_limit();
    let limit = Duration::from_secs_f64(args.timeout.max(1.0));
    let work = async {
        match args.scenario {
            Scenario::Hold => hold(&args, &endpoints[0]).await,
            Scenario::Fanout => fanout(&args, &endpoints[0]).await,
            Scenario::Query => query(&args, &endpoints[0]).await,
            Scenario::Churn => churn(&args, &endpoints[0]).await,
            Scenario::Cluster => cluster(&args, &endpoints).await,
        }
    };
    let report = tokio::time::timeout(limit, work)
        .await
        .map_err(|_| BenchError::Failed(format!("gave up after --timeout {}s", args.timeout)))??;
    Ok(if args.json {
        report.to_string()
    } else {
        human(&report)
    })
}

fn check_bounds(args: &BenchArgs) -> Result<(), BenchError> {
    let bad = |what: &str| Err(BenchError::Usage(what.to_string()));
    if args.sockets > 200_000 {
        return bad("--sockets: at most 200,000");
    }
    if args.messages > 10_000_000 {
        return bad("--messages: at most 10,000,000");
    }
    if args.cycles > 10_000_000 {
        return bad("--cycles: at most 10,000,000");
    }
    if args.hold > 3600.0 || args.duration > 3600.0 {
        return bad("--hold and --duration: at most 3600 seconds");
    }
    if args.rounds > 100_000 {
        return bad("--rounds: at most 100,000");
    }
    if args.workers > 64 {
        return bad("--workers: at most 64");
    }
    Ok(())
}

fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

// ---------------------------------------------------------------------------
// Workers

struct Pool {
    commands: Vec<mpsc::UnboundedSender<Command>>,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    progress: Vec<u64>,
    /// Outcomes that arrived while the coordinator was busy elsewhere.
    early: Vec<(usize, Outcome)>,
    _children: Vec<tokio::process::Child>,
}

impl Pool {
    /// One worker runs in this process; more are child processes
    /// (`headcount bench-worker`), each with its own file limit.
    async fn start(specs: Vec<WorkerSpec>) -> Result<Pool, BenchError> {
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let mut commands = Vec::new();
        let mut children = Vec::new();
        let n = specs.len();
        if n == 1 {
            let spec = specs
                .into_iter()
                .next()
                .ok_or_else(|| failed("no worker"))?;
            let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
            let (tx, mut rx) = mpsc::unbounded_channel();
            tokio::spawn(worker::run(spec, cmd_rx, tx));
            let ev_tx = ev_tx.clone();
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    let _ = ev_tx.send((0, e));
                }
            });
            commands.push(cmd_tx);
        } else {
            let exe = std::env::current_exe().map_err(failed)?;
            for spec in specs {
                let i = spec.index;
                let mut child = tokio::process::Command::new(&exe)
                    .arg("bench-worker")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| failed(format!("cannot start worker: {e}")))?;
                let mut stdin = child.stdin.take().ok_or_else(|| failed("worker stdin"))?;
                let stdout = child.stdout.take().ok_or_else(|| failed("worker stdout"))?;
                let mut first = serde_json::to_string(&spec).map_err(failed)?;
                first.push('\n');
                stdin.write_all(first.as_bytes()).await.map_err(failed)?;
                let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Command>();
                tokio::spawn(async move {
                    while let Some(c) = cmd_rx.recv().await {
                        let Ok(mut line) = serde_json::to_string(&c) else {
                            continue;
                        };
                        line.push('\n');
                        if stdin.write_all(line.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = stdin.flush().await;
                    }
                });
                let ev_tx = ev_tx.clone();
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stdout).lines();
                    let mut finished = false;
                    while let Ok(Some(line)) = lines.next_line().await {
                        match serde_json::from_str::<Event>(&line) {
                            Ok(e) => {
                                finished |= matches!(e, Event::Done(_) | Event::Failed(_));
                                let _ = ev_tx.send((i, e));
                            }
                            Err(e) => {
                                let _ = ev_tx.send((i, Event::Failed(format!("bad line: {e}"))));
                            }
                        }
                    }
                    if !finished {
                        let _ = ev_tx.send((i, Event::Failed("worker exited early".into())));
                    }
                });
                commands.push(cmd_tx);
                children.push(child);
            }
        }
        Ok(Pool {
            commands,
            events: ev_rx,
            progress: vec![0; n],
            early: Vec::new(),
            _children: children,
        })
    }

    /// CPU seconds used so far by the client: this process and its workers.
    fn client_cpu(&self) -> f64 {
        let own = cpu_seconds(None).unwrap_or(0.0);
        own + self
            ._children
            .iter()
            .filter_map(|c| c.id())
            .filter_map(|id| cpu_seconds(Some(id)))
            .sum::<f64>()
    }

    fn send_all(&self, c: impl Fn() -> Command) {
        for tx in &self.commands {
            let _ = tx.send(c());
        }
    }

    fn progress(&mut self, i: usize, n: u64, bar: &ProgressBar) {
        if let Some(p) = self.progress.get_mut(i) {
            *p = n;
        }
        bar.set_position(self.progress.iter().sum());
    }

    async fn ready(&mut self, bar: &ProgressBar) -> Result<Vec<Setup>, BenchError> {
        let mut got: Vec<Option<Setup>> = (0..self.commands.len()).map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            let Some((i, e)) = self.events.recv().await else {
                return Err(failed("workers vanished"));
            };
            match e {
                Event::Progress(n) => self.progress(i, n, bar),
                Event::Ready(s) => got[i] = Some(s),
                Event::Done(_) => return Err(failed(format!("worker {i} ended before ready"))),
                Event::Failed(e) => return Err(failed(format!("worker {i}: {e}"))),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Waits for every worker's outcome; after `stop_after` asks them to stop.
    async fn done(
        &mut self,
        bar: &ProgressBar,
        stop_after: Option<Duration>,
    ) -> Result<Vec<Outcome>, BenchError> {
        let mut got: Vec<Option<Outcome>> = (0..self.commands.len()).map(|_| None).collect();
        for (i, o) in self.early.drain(..) {
            got[i] = Some(o);
        }
        let stop_at = stop_after.map(|d| tokio::time::Instant::now() + d);
        let mut stopped = false;
        while got.iter().any(Option::is_none) {
            let next = async {
                match stop_at {
                    Some(at) if !stopped => tokio::time::timeout_at(at, self.events.recv()).await,
                    _ => Ok(self.events.recv().await),
                }
            };
            match next.await {
                Err(_) => {
                    stopped = true;
                    self.send_all(|| Command::Stop);
                }
                Ok(None) => return Err(failed("workers vanished")),
                Ok(Some((i, e))) => match e {
                    Event::Progress(n) => self.progress(i, n, bar),
                    Event::Ready(_) => {}
                    Event::Done(o) => got[i] = Some(o),
                    Event::Failed(e) => return Err(failed(format!("worker {i}: {e}"))),
                },
            }
        }
        Ok(got.into_iter().flatten().collect())
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn worker_count(args: &BenchArgs, sockets: usize) -> usize {
    if args.workers > 0 {
        args.workers
    } else {
        sockets.div_ceil(15_000).max(1)
    }
}

/// Splits `total` into `n` nearly equal shares: (first, count) each.
fn shares(total: usize, n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(n);
    let mut first = 0;
    for i in 0..n {
        let count = total / n + usize::from(i < total % n);
        out.push((first, count));
        first += count;
    }
    out
}

fn base_spec(args: &BenchArgs, ep: &Endpoint, kind: Kind, workers: usize) -> WorkerSpec {
    WorkerSpec {
        index: 0,
        kind,
        addr: ep.addr,
        path: ep.ws_path.clone(),
        host: ep.host.clone(),
        sources: source_addrs(ep.addr, args.sources),
        first: 0,
        sockets: 0,
        prefix: args.topic_prefix.clone(),
        topics: args.topics,
        topics_per_socket: args.topics_per_socket,
        rate: if args.rate > 0.0 {
            args.rate / workers as f64
        } else {
            0.0
        },
        concurrency: args.concurrency,
        heartbeat_ms: args.heartbeat_ms,
        messages: args.messages,
        query_sockets: 0,
        query_event: match args.event {
            QueryEvent::Local => "get_local_stats".into(),
            QueryEvent::Cluster => "get_cluster_stats".into(),
        },
        duration_ms: (args.duration * 1000.0) as u64,
        max_queries: args.queries,
        cycles: 0,
        abrupt_every: args.abrupt_every,
    }
}

fn specs_for(
    args: &BenchArgs,
    ep: &Endpoint,
    kind: Kind,
    sockets: usize,
    workers: usize,
) -> Vec<WorkerSpec> {
    let base = base_spec(args, ep, kind, workers);
    shares(sockets, workers)
        .into_iter()
        .enumerate()
        .map(|(i, (first, count))| WorkerSpec {
            index: i,
            first,
            sockets: count,
            ..base.clone()
        })
        .collect()
}

fn merge_setups(setups: &[Setup]) -> Value {
    let (mut connect, mut join, mut total) = (Hist::default(), Hist::default(), Hist::default());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut opened, mut failed_n) = (0, 0);
    let mut start = u64::MAX;
    let mut end = 0;
    for s in setups {
        connect.merge(&Hist::from_wire(&s.connect));
        join.merge(&Hist::from_wire(&s.join));
        total.merge(&Hist::from_wire(&s.total));
        for (k, v) in &s.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
        opened += s.opened;
        failed_n += s.failed;
        if s.opened + s.failed > 0 {
            start = start.min(s.started_us);
            end = end.max(s.finished_us);
        }
    }
    let secs = if end > start {
        (end - start) as f64 / 1e6
    } else {
        0.0
    };
    json!({
        "opened": opened,
        "failed": failed_n,
        "errors": errors,
        "seconds": round3(secs),
        "connect_join_per_s": per_s(opened, secs),
        "connect_latency": connect.summary(),
        "join_latency": join.summary(),
        "connect_join_latency": total.summary(),
    })
}

/// A count per second, as a whole number.
fn per_s(count: u64, secs: f64) -> u64 {
    if secs > 0.0 {
        (count as f64 / secs).round() as u64
    } else {
        0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------
// Server state

#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts {
    connections: u64,
    sockets: u64,
    by_topic: BTreeMap<String, u64>,
}

async fn counts(ep: &Endpoint) -> Result<Counts, BenchError> {
    // A node at its file limit answers 503 until it has a descriptor to
    // spare: retry for a few seconds.
    let mut tries = 0;
    let body = loop {
        tries += 1;
        let mut http = Http::new(ep.addr);
        match http.request("GET", "/api/stats", None).await {
            Ok((200, body)) => break body,
            Ok((status, _)) if tries >= 30 => {
                return Err(failed(format!("GET /api/stats answered {status}")))
            }
            Err(e) if tries >= 30 => return Err(failed(format!("GET /api/stats: {e}"))),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let v: Value = serde_json::from_str(&body).map_err(failed)?;
    let mut by_topic = BTreeMap::new();
    if let Some(map) = v["connections_by_topic"].as_object() {
        for (topic, nodes) in map {
            let n: u64 = nodes
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            by_topic.insert(topic.clone(), n);
        }
    }
    Ok(Counts {
        connections: v["connection_count"].as_u64().unwrap_or(0),
        sockets: v["socket_count"].as_u64().unwrap_or(0),
        by_topic,
    })
}

/// The baseline: counts that hold still for 300 ms (sockets of an earlier
/// run may still be closing), or the last read after 10 s.
async fn quiet_counts(ep: &Endpoint) -> Result<Counts, BenchError> {
    let start = Instant::now();
    let mut last = counts(ep).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = counts(ep).await?;
        if now == last || start.elapsed() > Duration::from_secs(10) {
            return Ok(now);
        }
        last = now;
    }
}

/// Polls the server's counts until `done` holds or `limit` passes.
async fn counts_until(
    ep: &Endpoint,
    limit: Duration,
    done: impl Fn(&Counts) -> bool,
) -> Result<(Counts, bool, f64), BenchError> {
    let start = Instant::now();
    loop {
        let c = counts(ep).await?;
        if done(&c) {
            return Ok((c, true, start.elapsed().as_secs_f64()));
        }
        if start.elapsed() >= limit {
            return Ok((c, false, start.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss(args: &BenchArgs) -> Option<u64> {
    args.server_pid.and_then(rss_of)
}

/// CPU seconds used by the server (with --server-pid) and by this client
/// since `start`, and per unit of work in µs.
struct Cpu {
    server: Option<f64>,
    client: f64,
}

impl Cpu {
    fn now(args: &BenchArgs, pool: &Pool) -> Cpu {
        Cpu {
            server: args.server_pid.and_then(|p| cpu_seconds(Some(p))),
            client: pool.client_cpu(),
        }
    }

    fn since(&self, args: &BenchArgs, pool: &Pool, units: u64, wall_s: f64) -> Value {
        let now = Cpu::now(args, pool);
        let server = match (self.server, now.server) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let client = now.client - self.client;
        let per = |s: f64| {
            if units > 0 {
                Some((s * 1e6 / units as f64 * 10.0).round() / 10.0)
            } else {
                None
            }
        };
        let share = |s: f64| {
            if wall_s > 0.0 {
                Some(round3(s / wall_s))
            } else {
                None
            }
        };
        json!({
            "server_cpu_s": server.map(round3),
            "server_cores": server.and_then(share),
            "server_us_per_unit": server.and_then(per),
            "client_cpu_s": round3(client),
            "client_cores": share(client),
            "client_us_per_unit": per(client),
        })
    }
}

// ---------------------------------------------------------------------------
// hold

async fn hold(args: &BenchArgs, ep: &Endpoint) -> Result<Value, BenchError> {
    let n = args.sockets;
    let per = args.topics_per_socket.max(1);
    let workers = worker_count(args, n);
    let base = quiet_counts(ep).await?;
    let rss_before = rss(args);
    let mut pool = Pool::start(specs_for(args, ep, Kind::Hold, n, workers)).await?;
    let cpu = Cpu::now(args, &pool);
    let pb = bar(n as u64, "connect+join");
    let setups = pool.ready(&pb).await?;
    pb.finish_and_clear();
    let mut open = merge_setups(&setups);
    let opened = open["opened"].as_u64().unwrap_or(0);
    let secs = open["seconds"].as_f64().unwrap_or(0.0);
    open["cpu"] = cpu.since(args, &pool, opened, secs);
    let rss_open = rss(args);
    let held = counts(ep).await?;
    let expect_sockets = base.sockets + opened;
    let expect_conns = base.connections + opened * per as u64;
    let hold_pb = bar((args.hold * 10.0) as u64, "holding");
    let until = Instant::now() + Duration::from_secs_f64(args.hold);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        hold_pb.inc(1);
    }
    hold_pb.finish_and_clear();
    let rss_held = rss(args);
    let held_end = counts(ep).await?;
    pool.send_all(|| Command::Stop);
    let outcomes = pool.done(&ProgressBar::hidden(), None).await?;
    let alive: u64 = outcomes.iter().map(|o| o.alive).sum();
    let (after, drained, drain_s) = counts_until(ep, Duration::from_secs(30), |c| {
        c.sockets <= base.sockets && c.connections <= base.connections
    })
    .await?;
    let settle = Duration::from_secs_f64(args.settle.max(0.0));
    tokio::time::sleep(settle).await;
    let rss_after = rss(args);
    let per_socket = match (rss_before, rss_held) {
        (Some(b), Some(h)) if opened > 0 => Some(h.saturating_sub(b) as f64 / opened as f64),
        _ => None,
    };
    Ok(json!({
        "scenario": "hold",
        "url": args.url[0],
        "sockets": n,
        "topics": args.topics,
        "topics_per_socket": per,
        "workers": workers,
        "sources": args.sources,
        "rate_target": args.rate,
        "hold_s": args.hold,
        "open": open,
        "alive_at_end": alive,
        "server": {
            "baseline": {"sockets": base.sockets, "connections": base.connections},
            "held": {"sockets": held.sockets, "connections": held.connections},
            "held_at_end": {"sockets": held_end.sockets, "connections": held_end.connections},
            "after_close": {"sockets": after.sockets, "connections": after.connections},
            "counts_exact": held.sockets == expect_sockets && held.connections == expect_conns
                && held_end.sockets == expect_sockets && held_end.connections == expect_conns,
            "drained": drained,
            "drain_s": round3(drain_s),
        },
        "rss": {
            "pid": args.server_pid,
            "before": rss_before,
            "open": rss_open,
            "held": rss_held,
            "after_close": rss_after,
            "settle_s": args.settle,
            "bytes_per_socket": per_socket.map(|b| b.round() as u64),
            "after_close_vs_before": match (rss_before, rss_after) {
                (Some(b), Some(a)) if b > 0 => Some(round3(a as f64 / b as f64)),
                _ => None,
            },
        },
    }))
}

// ---------------------------------------------------------------------------
// fanout

async fn fanout(args: &BenchArgs, ep: &Endpoint) -> Result<Value, BenchError> {
    let n = args.sockets;
    let workers = worker_count(args, n);
    let topic = format!("{}0", args.topic_prefix);
    let mut specs = specs_for(args, ep, Kind::Fanout, n, workers);
    for s in &mut specs {
        s.topics = 1;
    }
    let base = quiet_counts(ep).await?;
    let mut pool = Pool::start(specs).await?;
    let pb = bar(n as u64, "subscribe");
    let setups = pool.ready(&pb).await?;
    pb.finish_and_clear();
    let open = merge_setups(&setups);
    let subscribers = open["opened"].as_u64().unwrap_or(0);
    let before = counts(ep).await?;
    let members_before = before.by_topic.get(&topic).copied().unwrap_or(0)
        - base.by_topic.get(&topic).copied().unwrap_or(0);

    // Publishers: HTTP connections, or client sockets joined to the topic.
    let target = Target {
        addr: ep.addr,
        path: ep.ws_path.clone(),
        host: ep.host.clone(),
    };
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let messages = args.messages;
    let cpu = Cpu::now(args, &pool);
    let start_us = now_us();
    let start = Instant::now();
    let mut pubs = tokio::task::JoinSet::new();
    for p in 0..args.publishers.max(1) {
        let (next, errors, target, topic) =
            (next.clone(), errors.clone(), target.clone(), topic.clone());
        let (mode, rate, addr) = (args.publish, args.publish_rate, ep.addr);
        let mut ws = match mode {
            Publish::Client => Some(
                worker::open_joined(&target, None, std::slice::from_ref(&topic))
                    .await
                    .map_err(|e| failed(format!("publisher {p}: {e}")))?
                    .0,
            ),
            Publish::Http => None,
        };
        pubs.spawn(async move {
            let mut http = Http::new(addr);
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= messages {
                    break;
                }
                if rate > 0.0 {
                    let due = start + Duration::from_secs_f64(seq as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let payload = format!("{{\"seq\":{seq},\"t\":{}}}", now_us());
                let ok = match &mut ws {
                    None => {
                        let body = format!(
                            "{{\"topic\":\"{topic}\",\"event\":\"bench\",\"payload\":{payload}}}"
                        );
                        matches!(
                            http.request("POST", "/api/broadcast", Some(&body)).await,
                            Ok((202, _))
                        )
                    }
                    Some(ws) => {
                        let reference = format!("b{seq}");
                        let frame = format!(
                            "[\"0\",\"{reference}\",\"{topic}\",\"broadcast\",{{\"event\":\"bench\",\"payload\":{payload}}}]"
                        );
                        match ws.send_text(&frame).await {
                            Ok(()) => matches!(ws.await_reply(&reference).await, Ok(true)),
                            Err(_) => false,
                        }
                    }
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            // A client publisher keeps its socket until the end, so the
            // member count stays what it was while messages fan out.
            ws
        });
    }
    let pb = bar(subscribers * messages, "deliveries");
    let mut publishers_left = Vec::new();
    let mut listening = true;
    loop {
        tokio::select! {
            r = pubs.join_next() => match r {
                Some(Ok(ws)) => publishers_left.push(ws),
                Some(Err(e)) => return Err(failed(e)),
                None => break,
            },
            ev = pool.events.recv(), if listening => match ev {
                Some((i, Event::Progress(n))) => pool.progress(i, n, &pb),
                Some((i, Event::Failed(e))) => return Err(failed(format!("worker {i}: {e}"))),
                Some((i, Event::Done(o))) => pool.early.push((i, o)),
                Some(_) => {}
                // Every worker has finished (all messages arrived).
                None => listening = false,
            },
        }
    }
    let publish_s = start.elapsed().as_secs_f64();
    // Subscribers end when they have every message; those still waiting
    // after the drain time are told to stop and the rest count as lost.
    let outcomes = pool.done(&pb, Some(Duration::from_secs(10))).await?;
    let wall = start.elapsed().as_secs_f64();
    let delivered_all: u64 = outcomes.iter().map(|o| o.delivered).sum();
    let cpu = cpu.since(args, &pool, delivered_all, wall);
    {
        pb.finish_and_clear();
        let mut lat = Hist::default();
        let (mut delivered, mut dups, mut closed) = (0, 0, 0);
        let (mut first, mut last) = (u64::MAX, 0);
        for o in &outcomes {
            lat.merge(&Hist::from_wire(&o.latency));
            delivered += o.delivered;
            dups += o.duplicates;
            closed += o.closed_early;
            if o.delivered > 0 {
                first = first.min(o.first_us);
                last = last.max(o.last_us);
            }
        }
        drop(publishers_left);
        let expected = subscribers * messages;
        let span = if last > start_us {
            (last - start_us) as f64 / 1e6
        } else {
            0.0
        };
        let publish_errors = errors.load(Ordering::Relaxed);
        Ok(json!({
            "scenario": "fanout",
            "url": args.url[0],
            "topic": topic,
            "subscribers": subscribers,
            "members_seen_by_server": members_before,
            "workers": workers,
            "publish": format!("{:?}", args.publish).to_lowercase(),
            "publishers": args.publishers.max(1),
            "publish_rate_target": args.publish_rate,
            "messages": messages,
            "publish_errors": publish_errors,
            "publish_s": round3(publish_s),
            "messages_per_s": per_s(messages, publish_s),
            "subscribe": open,
            "expected_deliveries": expected,
            "delivered": delivered,
            "lost": expected.saturating_sub(delivered),
            "duplicates": dups,
            "subscribers_closed_early": closed,
            "span_s": round3(span),
            "deliveries_per_s": per_s(delivered, span),
            "latency": lat.summary(),
            "cpu_per_delivery": cpu,
        }))
    }
}

// ---------------------------------------------------------------------------
// query

async fn query(args: &BenchArgs, ep: &Endpoint) -> Result<Value, BenchError> {
    let k = args.topics;
    let per = if args.topics_per_socket <= 1 {
        100
    } else {
        args.topics_per_socket
    };
    let populating = k.div_ceil(per);
    let workers = worker_count(args, populating);
    let mut specs = specs_for(args, ep, Kind::Query, populating, workers);
    for s in &mut specs {
        s.topics_per_socket = per;
    }
    specs[0].query_sockets = args.askers.max(1);
    let base = quiet_counts(ep).await?;
    let mut pool = Pool::start(specs).await?;
    let pb = bar(populating as u64, "populate");
    let setups = pool.ready(&pb).await?;
    pb.finish_and_clear();
    let open = merge_setups(&setups);
    let populated = counts(ep).await?;
    let expected = base.connections + k as u64 + args.askers.max(1) as u64;
    let topics_seen = populated.by_topic.len();
    let body_bytes = Http::new(ep.addr)
        .request("GET", "/api/stats", None)
        .await
        .map(|(_, b)| b.len())
        .unwrap_or(0);
    let cpu = Cpu::now(args, &pool);
    pool.send_all(|| Command::Go);
    let pb = bar(
        args.queries.min((args.duration * 50_000.0) as u64),
        "queries",
    );
    let outcomes = pool.done(&pb, None).await?;
    pb.finish_and_clear();
    let cpu = cpu.since(
        args,
        &pool,
        outcomes[0].answered,
        outcomes[0].elapsed_us as f64 / 1e6,
    );
    pool.send_all(|| Command::Stop);
    let o = &outcomes[0];
    let lat = Hist::from_wire(&o.latency);
    let secs = o.elapsed_us as f64 / 1e6;
    Ok(json!({
        "scenario": "query",
        "url": args.url[0],
        "event": match args.event { QueryEvent::Local => "get_local_stats", QueryEvent::Cluster => "get_cluster_stats" },
        "topics": k,
        "topics_seen_by_server": topics_seen,
        "populating_sockets": populating,
        "askers": args.askers.max(1),
        "populate": open,
        "connection_count_expected": expected,
        "connection_count_seen": populated.connections,
        "connection_count_in_replies": o.last_connection_count,
        "counts_exact": populated.connections == expected && o.last_connection_count == expected,
        "stats_bytes": body_bytes,
        "answered": o.answered,
        "errors": o.errors,
        "seconds": round3(secs),
        "queries_per_s": per_s(o.answered, secs),
        "latency": lat.summary(),
        "cpu_per_query": cpu,
    }))
}

// ---------------------------------------------------------------------------
// churn

async fn churn(args: &BenchArgs, ep: &Endpoint) -> Result<Value, BenchError> {
    let workers = if args.workers > 0 { args.workers } else { 1 };
    let base = quiet_counts(ep).await?;
    let mut specs = specs_for(args, ep, Kind::Churn, 0, workers);
    for (i, (_, c)) in shares(args.cycles as usize, workers)
        .into_iter()
        .enumerate()
    {
        specs[i].cycles = c as u64;
        specs[i].first = i;
    }
    let mut pool = Pool::start(specs).await?;
    pool.ready(&ProgressBar::hidden()).await?;
    let cpu = Cpu::now(args, &pool);
    pool.send_all(|| Command::Go);
    let pb = bar(args.cycles, "cycles");
    let outcomes = pool.done(&pb, None).await?;
    pb.finish_and_clear();
    let ops_all: u64 = outcomes.iter().map(|o| o.ops).sum();
    let secs_all = outcomes
        .iter()
        .map(|o| o.elapsed_us as f64 / 1e6)
        .fold(0.0, f64::max);
    let cpu = cpu.since(args, &pool, ops_all, secs_all);
    let mut lat = Hist::default();
    let (mut cycles, mut ops, mut secs) = (0, 0, 0f64);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for o in &outcomes {
        lat.merge(&Hist::from_wire(&o.latency));
        cycles += o.cycles;
        ops += o.ops;
        secs = secs.max(o.elapsed_us as f64 / 1e6);
        for (k, v) in &o.failures {
            *failures.entry(k.clone()).or_default() += v;
        }
    }
    let (after, settled, settle_s) =
        counts_until(ep, Duration::from_secs(15), |c| *c == base).await?;
    let topic_drift: i64 = base
        .by_topic
        .keys()
        .chain(after.by_topic.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|t| {
            (after.by_topic.get(t).copied().unwrap_or(0) as i64
                - base.by_topic.get(t).copied().unwrap_or(0) as i64)
                .abs()
        })
        .sum();
    Ok(json!({
        "scenario": "churn",
        "url": args.url[0],
        "workers": workers,
        "concurrency_per_worker": args.concurrency,
        "topics": args.topics,
        "joins_per_cycle": args.topics_per_socket.max(1),
        "abrupt_every": args.abrupt_every,
        "cycles": cycles,
        "failed_cycles": failures.values().sum::<u64>(),
        "failures": failures,
        "operations": ops,
        "seconds": round3(secs),
        "cycles_per_s": per_s(cycles, secs),
        "ops_per_s": per_s(ops, secs),
        "cycle_latency": lat.summary(),
        "baseline": {"connections": base.connections, "sockets": base.sockets, "topics": base.by_topic.len()},
        "after": {"connections": after.connections, "sockets": after.sockets, "topics": after.by_topic.len()},
        "cpu_per_op": cpu,
        "returned_to_baseline": settled,
        "settle_s": round3(settle_s),
        "drift": {
            "connections": after.connections as i64 - base.connections as i64,
            "sockets": after.sockets as i64 - base.sockets as i64,
            "per_topic_abs": topic_drift,
        },
    }))
}

// ---------------------------------------------------------------------------
// cluster

/// A request on `patterns:stats` (joined with join_ref "0"); returns the
/// reply's `response` and consumes the push that follows it.
async fn ask(ws: &mut Ws, n: u64, event: &str, push: &str) -> Result<Value, BenchError> {
    let reference = format!("c{n}");
    ws.send_text(&format!(
        "[\"0\",\"{reference}\",\"patterns:stats\",\"{event}\",{{}}]"
    ))
    .await
    .map_err(failed)?;
    let v = ws
        .await_reply_with(&reference, |d| serde_json::from_slice::<Value>(d).ok())
        .await
        .map_err(failed)?
        .ok_or_else(|| failed("unparsable reply"))?;
    ws.await_event(push).await.map_err(failed)?;
    Ok(v[4]["response"].clone())
}

async fn cluster(args: &BenchArgs, eps: &[Endpoint]) -> Result<Value, BenchError> {
    let mut socks = Vec::new();
    let mut names = Vec::new();
    for ep in eps {
        let target = Target {
            addr: ep.addr,
            path: ep.ws_path.clone(),
            host: ep.host.clone(),
        };
        let (mut ws, _, _) = worker::open_joined(&target, None, &["patterns:stats".into()])
            .await
            .map_err(|e| failed(format!("{}: {e}", ep.host)))?;
        let local = ask(&mut ws, 0, "get_local_stats", "local_stats").await?;
        names.push(local["node"].as_str().unwrap_or("").to_string());
        socks.push(ws);
    }
    let n = socks.len();
    let mut lat = Hist::default();
    let mut leave_lat = Hist::default();
    let (mut missed, mut sizes) = (0u64, BTreeMap::<u64, u64>::new());
    let mut q = 1u64;
    let pb = bar(args.rounds, "rounds");
    let run_id = std::process::id();
    let limit = Duration::from_secs(5);
    let poll = Duration::from_millis(args.poll_ms.max(1));
    for r in 0..args.rounds {
        let origin = (r as usize) % n;
        let observers: Vec<usize> = if n == 1 {
            vec![0]
        } else {
            (0..n).filter(|i| *i != origin).collect()
        };
        let topic = format!("{}cluster-{run_id}-{r}", args.topic_prefix);
        let jr = format!("j{r}");
        let ws = &mut socks[origin];
        ws.send_text(&format!(
            "[\"{jr}\",\"{jr}\",\"{topic}\",\"phx_join\",{{}}]"
        ))
        .await
        .map_err(failed)?;
        if !ws.await_reply(&jr).await.map_err(failed)? {
            return Err(failed(format!(
                "join of {topic} refused (start the nodes with --allow-topic '{}*')",
                args.topic_prefix
            )));
        }
        for present in [true, false] {
            let t0 = Instant::now();
            let mut waiting = observers.clone();
            while !waiting.is_empty() && t0.elapsed() < limit {
                let mut still = Vec::new();
                for &o in &waiting {
                    q += 1;
                    let stats = ask(&mut socks[o], q, "get_cluster_stats", "cluster_stats").await?;
                    if let Some(size) = stats["cluster_size"].as_u64() {
                        *sizes.entry(size).or_default() += 1;
                    }
                    let count = stats["connections_by_topic"][&topic][&names[origin]]
                        .as_u64()
                        .unwrap_or(0);
                    if (count >= 1) == present {
                        let us = t0.elapsed().as_micros() as u64;
                        if present {
                            lat.record(us);
                        } else {
                            leave_lat.record(us);
                        }
                    } else {
                        still.push(o);
                    }
                }
                waiting = still;
                if !waiting.is_empty() {
                    tokio::time::sleep(poll).await;
                }
            }
            missed += waiting.len() as u64;
            if present {
                let ws = &mut socks[origin];
                let lr = format!("l{r}");
                ws.send_text(&format!(
                    "[\"{jr}\",\"{lr}\",\"{topic}\",\"phx_leave\",{{}}]"
                ))
                .await
                .map_err(failed)?;
                ws.await_reply(&lr).await.map_err(failed)?;
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    for ws in &mut socks {
        let _ = ws.send_close().await;
    }
    let _ = client::OP_TEXT;
    Ok(json!({
        "scenario": "cluster",
        "urls": args.url,
        "nodes": names,
        "rounds": args.rounds,
        "poll_ms": args.poll_ms,
        "cluster_sizes_seen": sizes,
        "join_visible": lat.summary(),
        "leave_visible": leave_lat.summary(),
        "missed": missed,
    }))
}

// ---------------------------------------------------------------------------
// human summary

fn lat_line(v: &Value) -> String {
    let get = |k: &str| v[k].as_u64().unwrap_or(0);
    format!(
        "p50 {}  p99 {}  max {}  (n={})",
        fmt_us(get("p50_us")),
        fmt_us(get("p99_us")),
        fmt_us(get("max_us")),
        get("count")
    )
}

fn cpu_line(c: &Value, unit: &str) -> String {
    format!(
        "  cpu: server {} s ({} cores, {} µs/{unit}), client {} s ({} cores, {} µs/{unit})",
        c["server_cpu_s"],
        c["server_cores"],
        c["server_us_per_unit"],
        c["client_cpu_s"],
        c["client_cores"],
        c["client_us_per_unit"]
    )
}

fn kib(v: &Value) -> String {
    v.as_u64()
        .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

fn human(r: &Value) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    match r["scenario"].as_str().unwrap_or("") {
        "hold" => {
            let o = &r["open"];
            line(format!(
                "hold: {} sockets × {} topic(s) over {} topics, {} worker(s)",
                r["sockets"], r["topics_per_socket"], r["topics"], r["workers"]
            ));
            line(format!(
                "  opened {} failed {} in {} s → {} connect+join/s",
                o["opened"], o["failed"], o["seconds"], o["connect_join_per_s"]
            ));
            if o["failed"].as_u64().unwrap_or(0) > 0 {
                line(format!("  errors: {}", o["errors"]));
            }
            line(format!(
                "  connect      {}",
                lat_line(&o["connect_latency"])
            ));
            line(format!("  join         {}", lat_line(&o["join_latency"])));
            line(format!(
                "  connect+join {}",
                lat_line(&o["connect_join_latency"])
            ));
            line(cpu_line(&o["cpu"], "socket"));
            let s = &r["server"];
            line(format!(
                "  server: held {} sockets / {} memberships (exact: {}), alive at end {}, drained {} in {} s",
                s["held"]["sockets"], s["held"]["connections"], s["counts_exact"],
                r["alive_at_end"], s["drained"], s["drain_s"]
            ));
            let m = &r["rss"];
            if m["pid"].is_number() {
                line(format!(
                    "  server RSS: before {}  held {}  after close {} (+{} s)  → {} bytes/socket, after/before {}",
                    kib(&m["before"]), kib(&m["held"]), kib(&m["after_close"]), m["settle_s"],
                    m["bytes_per_socket"], m["after_close_vs_before"]
                ));
            }
        }
        "fanout" => {
            line(format!(
                "fanout: {} subscribers on {}, {} messages via {} ({} publisher(s))",
                r["subscribers"], r["topic"], r["messages"], r["publish"], r["publishers"]
            ));
            line(format!(
                "  published in {} s ({} msg/s), errors {}",
                r["publish_s"], r["messages_per_s"], r["publish_errors"]
            ));
            line(format!(
                "  delivered {} of {} (lost {}, duplicates {}, subscribers closed {}) in {} s → {} deliveries/s",
                r["delivered"], r["expected_deliveries"], r["lost"], r["duplicates"],
                r["subscribers_closed_early"], r["span_s"], r["deliveries_per_s"]
            ));
            line(format!("  latency {}", lat_line(&r["latency"])));
            line(cpu_line(&r["cpu_per_delivery"], "delivery"));
        }
        "query" => {
            line(format!(
                "query: {} with {} topics ({} seen), {} asker(s)",
                r["event"], r["topics"], r["topics_seen_by_server"], r["askers"]
            ));
            line(format!(
                "  {} answers in {} s → {} queries/s, errors {}, reply ~{} bytes",
                r["answered"], r["seconds"], r["queries_per_s"], r["errors"], r["stats_bytes"]
            ));
            line(format!("  latency {}", lat_line(&r["latency"])));
            line(cpu_line(&r["cpu_per_query"], "query"));
            line(format!(
                "  connection_count expected {} seen {} in replies {} (exact: {})",
                r["connection_count_expected"],
                r["connection_count_seen"],
                r["connection_count_in_replies"],
                r["counts_exact"]
            ));
        }
        "churn" => {
            line(format!(
                "churn: {} cycles ({} failed), {} operations in {} s → {} cycles/s, {} ops/s",
                r["cycles"],
                r["failed_cycles"],
                r["operations"],
                r["seconds"],
                r["cycles_per_s"],
                r["ops_per_s"]
            ));
            if r["failed_cycles"].as_u64().unwrap_or(0) > 0 {
                line(format!("  failures: {}", r["failures"]));
            }
            line(format!("  cycle {}", lat_line(&r["cycle_latency"])));
            line(cpu_line(&r["cpu_per_op"], "op"));
            line(format!(
                "  baseline {}  after {}  returned to baseline: {} (in {} s), drift {}",
                r["baseline"], r["after"], r["returned_to_baseline"], r["settle_s"], r["drift"]
            ));
        }
        "cluster" => {
            line(format!(
                "cluster: {} node(s) {}, {} rounds, poll every {} ms",
                r["nodes"].as_array().map_or(0, Vec::len),
                r["nodes"],
                r["rounds"],
                r["poll_ms"]
            ));
            line(format!("  join visible  {}", lat_line(&r["join_visible"])));
            line(format!("  leave visible {}", lat_line(&r["leave_visible"])));
            line(format!(
                "  missed (not seen within 5 s) {}, cluster_size seen {}",
                r["missed"], r["cluster_sizes_seen"]
            ));
        }
        _ => line(r.to_string()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        assert_eq!(shares(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(shares(2, 4).iter().map(|s| s.1).sum::<usize>(), 2);
    }

    #[test]
    fn latency_summary_serializes() {
        let mut h = Hist::default();
        h.record(5);
        let v = serde_json::to_value(h.summary()).unwrap();
        assert_eq!(v["p50_us"], 5);
    }
}
