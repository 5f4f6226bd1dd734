//! The coordinator's hold on its workers: starting them (in this process or
//! as child processes), splitting the sockets between them, and gathering
//! what they report.

use super::failed;
use super::report::{per_s, round3};
use crate::hist::Hist;
use crate::token::TokenSpec;
use crate::worker::{self, Command, Event, Kind, Outcome, Setup, WorkerSpec};
use crate::{cpu_seconds, source_addrs, BenchArgs, BenchError, Endpoint, QueryEvent};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub(super) struct Pool {
    pub(super) commands: Vec<mpsc::UnboundedSender<Command>>,
    pub(super) events: mpsc::UnboundedReceiver<(usize, Event)>,
    pub(super) progress: Vec<u64>,
    /// Outcomes that arrived while the coordinator was busy elsewhere.
    pub(super) early: Vec<(usize, Outcome)>,
    pub(super) _children: Vec<tokio::process::Child>,
}

impl Pool {
    /// One worker runs in this process; more are child processes
    /// (`headcount bench-worker`), each with its own file limit.
    pub(super) async fn start(specs: Vec<WorkerSpec>) -> Result<Pool, BenchError> {
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
    pub(super) fn client_cpu(&self) -> f64 {
        let own = cpu_seconds(None).unwrap_or(0.0);
        own + self
            ._children
            .iter()
            .filter_map(|c| c.id())
            .filter_map(|id| cpu_seconds(Some(id)))
            .sum::<f64>()
    }

    pub(super) fn send_all(&self, c: impl Fn() -> Command) {
        for tx in &self.commands {
            let _ = tx.send(c());
        }
    }

    pub(super) fn progress(&mut self, i: usize, n: u64, bar: &ProgressBar) {
        if let Some(p) = self.progress.get_mut(i) {
            *p = n;
        }
        bar.set_position(self.progress.iter().sum());
    }

    pub(super) async fn ready(&mut self, bar: &ProgressBar) -> Result<Vec<Setup>, BenchError> {
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

    /// Waits, behind a progress bar of `n`, until every worker has opened its
    /// sockets; their set-up figures merged into one report.
    pub(super) async fn opened(&mut self, n: u64, what: &str) -> Result<Value, BenchError> {
        let pb = bar(n, what);
        let setups = self.ready(&pb).await?;
        pb.finish_and_clear();
        Ok(merge_setups(&setups))
    }

    /// Waits for every worker's outcome; after `stop_after` asks them to stop.
    pub(super) async fn done(
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

pub(super) fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

pub(super) fn worker_count(args: &BenchArgs, sockets: usize) -> usize {
    if args.workers > 0 {
        args.workers
    } else {
        sockets.div_ceil(15_000).max(1)
    }
}

/// Splits `total` into `n` nearly equal shares: (first, count) each.
pub(super) fn shares(total: usize, n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(n);
    let mut first = 0;
    for i in 0..n {
        let count = total / n + usize::from(i < total % n);
        out.push((first, count));
        first += count;
    }
    out
}

pub(super) fn base_spec(args: &BenchArgs, ep: &Endpoint, kind: Kind, workers: usize) -> WorkerSpec {
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
        query_event: query_event(args.event).into(),
        query_payload: stats_filters(args).to_string(),
        topics_per_query: args.topics_per_query,
        duration_ms: (args.duration * 1000.0) as u64,
        max_queries: args.queries.unwrap_or(1_000_000),
        cycles: 0,
        abrupt_every: args.abrupt_every,
        token: token_spec(args),
        exact_topic: args.topic.clone(),
    }
}

pub(super) fn query_event(e: QueryEvent) -> &'static str {
    match e {
        QueryEvent::Local => "get_local_stats",
        QueryEvent::Cluster => "get_cluster_stats",
        QueryEvent::Occupancy => "get_occupancy",
    }
}

/// The `limit` / `prefix` payload of a stats query (SPEC §7.3), `{}` without them.
pub(super) fn stats_filters(args: &BenchArgs) -> Value {
    let mut filters = serde_json::Map::new();
    if let Some(limit) = args.limit {
        filters.insert("limit".into(), limit.into());
    }
    if let Some(prefix) = &args.prefix {
        filters.insert("prefix".into(), prefix.clone().into());
    }
    Value::Object(filters)
}

pub(super) fn token_spec(args: &BenchArgs) -> Option<TokenSpec> {
    args.token_secret.as_ref().map(|secret| TokenSpec {
        secret: secret.clone(),
        topics: args.token_topics.clone(),
        token_in: args.token_in,
    })
}

pub(super) fn specs_for(
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

pub(super) fn merge_setups(setups: &[Setup]) -> Value {
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
    let rate_limited: u64 = errors
        .iter()
        .filter(|(k, _)| k.contains(crate::client::RATE_LIMITED))
        .map(|(_, v)| v)
        .sum();
    json!({
        "opened": opened,
        "failed": failed_n,
        "errors": errors,
        "rate_limited": rate_limited,
        "seconds": round3(secs),
        "connect_join_per_s": per_s(opened, secs),
        "connect_latency": connect.summary(),
        "join_latency": join.summary(),
        "connect_join_latency": total.summary(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        assert_eq!(shares(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(shares(2, 4).iter().map(|s| s.1).sum::<usize>(), 2);
    }
}
