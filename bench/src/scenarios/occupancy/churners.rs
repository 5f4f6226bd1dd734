//! `bench occupancy`'s churners: sockets that join a topic on their node
//! when told to, wait for the reply, and later leave it. Churner c is on
//! node c mod n; each holds at most one topic at a time. Every answer goes
//! back to the coordinator with the time its reply was read, which is
//! where a change's push latency starts.

use crate::client::{Status, Ws, HEARTBEAT};
use crate::Endpoint;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// What the coordinator asks of a churner.
pub(super) enum Order {
    Join { topic: usize, name: String },
    Leave,
}

/// A churner's answer: the reply's status (or the I/O error that ended the
/// churner), and when it was read.
pub(super) struct Answer {
    pub(super) churner: usize,
    pub(super) topic: usize,
    pub(super) join: bool,
    pub(super) status: Result<Status, String>,
    pub(super) at: Instant,
}

/// The coordinator's view of one churner.
pub(super) struct Churner {
    pub(super) node: usize,
    pub(super) orders: mpsc::UnboundedSender<Order>,
    /// An order is in flight.
    pub(super) busy: bool,
    /// The topic it is joined to.
    pub(super) holds: Option<usize>,
    /// Its socket failed; no more orders.
    pub(super) dead: bool,
}

/// Connects `count` churners (no joins yet) and starts their tasks.
pub(super) async fn open(
    eps: &[Endpoint],
    count: usize,
    answers: &mpsc::UnboundedSender<Answer>,
    heartbeat: Duration,
    tasks: &mut JoinSet<()>,
) -> Result<Vec<Churner>, String> {
    let mut churners = Vec::with_capacity(count);
    for c in 0..count {
        let node = c % eps.len();
        let ws = Ws::connect(&eps[node].target(), None)
            .await
            .map_err(|e| format!("churner on {}: {e}", eps[node].host))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.spawn(run(c, ws, rx, answers.clone(), heartbeat));
        churners.push(Churner {
            node,
            orders: tx,
            busy: false,
            holds: None,
            dead: false,
        });
    }
    Ok(churners)
}

/// One churner: follows orders until the coordinator drops its sender.
async fn run(
    c: usize,
    mut ws: Ws,
    mut orders: mpsc::UnboundedReceiver<Order>,
    answers: mpsc::UnboundedSender<Answer>,
    heartbeat: Duration,
) {
    let mut beat = tokio::time::interval(heartbeat);
    beat.tick().await;
    let mut n = 0u64;
    // The topic joined: its number, name and join_ref.
    let mut held: Option<(usize, String, String)> = None;
    loop {
        let order = tokio::select! {
            o = orders.recv() => match o {
                Some(o) => o,
                None => break,
            },
            _ = beat.tick() => {
                if ws.send_text(HEARTBEAT).await.is_err() {
                    break;
                }
                continue;
            }
        };
        n += 1;
        let (topic, join, reference, frame) = match order {
            Order::Join { topic, name } => {
                let jr = format!("j{n}");
                let frame = format!("[\"{jr}\",\"{jr}\",\"{name}\",\"phx_join\",{{}}]");
                held = Some((topic, name, jr.clone()));
                (topic, true, jr, frame)
            }
            Order::Leave => {
                let Some((topic, name, jr)) = held.clone() else {
                    continue;
                };
                let r = format!("l{n}");
                let frame = format!("[\"{jr}\",\"{r}\",\"{name}\",\"phx_leave\",{{}}]");
                (topic, false, r, frame)
            }
        };
        let asked = async {
            ws.send_text(&frame).await?;
            ws.await_status(&reference).await
        };
        let status = match tokio::time::timeout(Duration::from_secs(10), asked).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        };
        let at = Instant::now();
        // What the churner holds after this answer.
        match (&status, join) {
            (Ok(Status::Ok), false) => held = None,
            (Ok(Status::Error(_)), true) => held = None,
            _ => {}
        }
        let failed = status.is_err();
        let _ = answers.send(Answer {
            churner: c,
            topic,
            join,
            status,
            at,
        });
        if failed {
            return;
        }
    }
    let _ = ws.send_close().await;
}
