//! One load-generating worker: opens its share of the sockets and runs its
//! share of a scenario, reporting progress, a `Ready` after set-up and a
//! `Done` with its figures. The coordinator runs one in its own process, or
//! several as `headcount bench-worker` child processes (each has its own
//! open-file limit) that speak JSON lines over stdin/stdout.

mod asker;
mod churn;
mod fanout;
mod hold;
mod open;
mod query;
mod stdio;

pub use open::{open_joined, open_joined_with};
pub use stdio::main_stdio;

use super::hist::WireHist;
use super::token::TokenSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

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
    /// query: sockets asking, the event, its payload (local and cluster
    /// stats: the `limit`/`prefix` filters; occupancy: built per query from
    /// `topics_per_query` random topics), and how long or how many.
    pub query_sockets: usize,
    pub query_event: String,
    pub query_payload: String,
    pub topics_per_query: usize,
    pub duration_ms: u64,
    pub max_queries: u64,
    /// churn: cycles for this worker, joins per cycle, every n-th cycle ends
    /// abruptly (no leave, no close frame; 0 = never).
    pub cycles: u64,
    pub abrupt_every: u64,
    /// Sign a token for every socket opened (`--token-secret`).
    pub token: Option<TokenSpec>,
    /// Every socket joins this one topic instead (hold's `--topic`).
    #[serde(default)]
    pub exact_topic: Option<String>,
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
    /// query: answers, their span, the last connection_count seen; error
    /// replies by reason and `rate limited` ones apart (I/O errors and
    /// timeouts count in `errors` too), the bytes of the ok replies, and
    /// what the last ok reply held (`reply_check`).
    pub answered: u64,
    pub errors: u64,
    pub elapsed_us: u64,
    pub last_connection_count: u64,
    pub rate_limited: u64,
    pub error_reasons: BTreeMap<String, u64>,
    pub reply_bytes: u64,
    pub reply_check: serde_json::Value,
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

/// What a worker's scenario talks through: commands in, events out, and the
/// figure the progress ticker reports.
struct Link {
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    progress: Arc<AtomicU64>,
}

/// A worker's tasks share figures behind mutexes; a task that panicked
/// holding one leaves figures that are still worth reporting.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one worker to the end.
pub async fn run(
    spec: WorkerSpec,
    commands: mpsc::UnboundedReceiver<Command>,
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
    let mut link = Link {
        commands,
        events,
        progress,
    };
    let done = match spec.kind {
        Kind::Hold => hold::run(&spec, &mut link).await.map(Some),
        Kind::Fanout => fanout::run(&spec, &mut link).await.map(Some),
        // The query worker reports before it lets its sockets go.
        Kind::Query => query::run(&spec, &mut link).await.map(|()| None),
        Kind::Churn => churn::run(&spec, &mut link).await.map(Some),
    };
    ticker.abort();
    let Link {
        events, progress, ..
    } = link;
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
