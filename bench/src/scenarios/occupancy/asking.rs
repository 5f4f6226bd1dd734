//! `bench occupancy --queries Q`: stats queries while the churn runs, to
//! see whether they change what occupancy costs: `get_cluster_stats` with
//! `{"limit": 10}` on the first node, Q per second over ⌈Q / 50⌉ sockets
//! (each within the default per-socket message limit), each paced on its
//! own schedule and never more than one request in flight.

use crate::client::{Status, Ws};
use crate::hist::Hist;
use crate::worker::open_joined;
use crate::Endpoint;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

const QUERY: &str = "get_cluster_stats";
const PER_SOCKET: u64 = 50;

#[derive(Default)]
pub(super) struct Asked {
    latency: Hist,
    rate_limited: u64,
    errors: BTreeMap<String, u64>,
}

impl Asked {
    fn merge(&mut self, o: Asked) {
        self.latency.merge(&o.latency);
        self.rate_limited += o.rate_limited;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    pub(super) fn report(&self, target: u64, secs: f64) -> Value {
        json!({
            "event": QUERY,
            "payload": {"limit": 10},
            "target_per_s": target,
            "answered": self.latency.count(),
            "per_s": if secs > 0.0 { (self.latency.count() as f64 / secs).round() } else { 0.0 },
            "latency": self.latency.summary(),
            "rate_limited": self.rate_limited,
            "errors": self.errors,
        })
    }
}

/// The askers' sockets, joined to `patterns:stats` on `ep`.
pub(super) async fn open(ep: &Endpoint, per_s: u64) -> Result<Vec<Ws>, String> {
    let n = per_s.div_ceil(PER_SOCKET).max(1);
    let mut out = Vec::new();
    for _ in 0..n {
        let (ws, _, _) = open_joined(&ep.target(), None, &["patterns:stats".into()])
            .await
            .map_err(|e| format!("stats asker on {}: {e}", ep.host))?;
        out.push(ws);
    }
    Ok(out)
}

/// Runs the askers until `stop` turns true; their figures merged.
pub(super) async fn run(askers: Vec<Ws>, per_s: u64, stop: watch::Receiver<bool>) -> Asked {
    let n = askers.len().max(1) as f64;
    let period = Duration::from_secs_f64(n / per_s.max(1) as f64);
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (i, ws) in askers.into_iter().enumerate() {
        let first = start + period.mul_f64(i as f64 / n);
        set.spawn(ask(ws, first, period, stop.clone()));
    }
    let mut all = Asked::default();
    while let Some(r) = set.join_next().await {
        if let Ok(a) = r {
            all.merge(a);
        }
    }
    all
}

async fn ask(
    mut ws: Ws,
    first: Instant,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) -> Asked {
    let mut asked = Asked::default();
    let mut due = first;
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        n += 1;
        let reference = format!("s{n}");
        let frame =
            format!("[\"0\",\"{reference}\",\"patterns:stats\",\"{QUERY}\",{{\"limit\":10}}]");
        let t0 = Instant::now();
        let one = async {
            ws.send_text(&frame).await?;
            let status = ws.await_status(&reference).await?;
            let dt = t0.elapsed().as_micros() as u64;
            if status == Status::Ok {
                ws.await_event("cluster_stats").await?;
            }
            Ok::<_, std::io::Error>((status, dt))
        };
        match tokio::time::timeout(Duration::from_secs(10), one).await {
            Ok(Ok((Status::Ok, dt))) => asked.latency.record(dt),
            Ok(Ok((s, _))) if s.is_rate_limited() => asked.rate_limited += 1,
            Ok(Ok((Status::Error(reason), _))) => *asked.errors.entry(reason).or_default() += 1,
            Ok(Err(e)) => {
                *asked.errors.entry(e.to_string()).or_default() += 1;
                break;
            }
            Err(_) => {
                *asked.errors.entry("timed out".into()).or_default() += 1;
                break;
            }
        }
        // The next on schedule; a late answer does not make a burst.
        due = (due + period).max(Instant::now());
    }
    let _ = ws.send_close().await;
    asked
}
