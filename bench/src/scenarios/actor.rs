//! An actor: one socket that joins and leaves topics when the coordinator
//! says so, one request at a time (later orders wait their turn), and reads
//! its socket all the while, so that pushes — a `presence_state` of
//! thousands of keys, diffs — never pile up behind it. Each answer goes
//! back with the time its reply was read: where a transition begins.
//! Used by `bench presence` (churners) and `bench webhooks` (the sockets
//! that occupy and vacate topics).

use crate::client::{find, Status, Ws, HEARTBEAT, OP_CLOSE, OP_TEXT};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// A request with no reply this long ends the actor.
const REPLY_WITHIN: Duration = Duration::from_secs(10);
/// The `id` of the answer an actor sends when its socket fails with no
/// request in flight.
pub(super) const GONE: u64 = u64::MAX;

/// What the coordinator asks of an actor; `id` comes back in the answer.
pub(super) enum Order {
    Join {
        id: u64,
        topic: String,
        params: String,
    },
    Leave {
        id: u64,
        topic: String,
    },
}

/// An actor's answer: the reply's status (or the error that ended the
/// actor), and when it was read.
pub(super) struct Answer {
    pub(super) actor: usize,
    pub(super) id: u64,
    pub(super) join: bool,
    pub(super) status: Result<Status, String>,
    pub(super) at: Instant,
}

/// Pushes the actors received, by kind (shared by all of them).
#[derive(Default)]
pub(super) struct Pushes {
    pub(super) states: AtomicU64,
    pub(super) state_bytes: AtomicU64,
    pub(super) diffs: AtomicU64,
}

/// Whether `data` is a push of `event` (`[.., .., "topic", "event", ..]`).
pub(super) fn is_push(data: &[u8], event: &str) -> bool {
    let head = &data[..data.len().min(256)];
    let needle = format!("\",\"{event}\",");
    find(head, needle.as_bytes()).is_some()
}

/// Starts actor `actor` on `ws`; its orders go to the returned sender, and
/// it ends (closing its socket) when that sender is dropped.
pub(super) fn spawn(
    actor: usize,
    ws: Ws,
    answers: mpsc::UnboundedSender<Answer>,
    pushes: Arc<Pushes>,
    heartbeat: Duration,
    tasks: &mut JoinSet<()>,
) -> mpsc::UnboundedSender<Order> {
    let (tx, rx) = mpsc::unbounded_channel();
    tasks.spawn(run(actor, ws, rx, answers, pushes, heartbeat));
    tx
}

/// The request awaiting its reply.
struct Inflight {
    id: u64,
    join: bool,
    topic: String,
    join_ref: String,
    needle: Vec<u8>,
    deadline: Instant,
}

enum Step {
    Order(Option<Order>),
    Read(bool),
    Beat,
    Late,
}

async fn run(
    actor: usize,
    mut ws: Ws,
    mut orders: mpsc::UnboundedReceiver<Order>,
    answers: mpsc::UnboundedSender<Answer>,
    pushes: Arc<Pushes>,
    heartbeat: Duration,
) {
    let mut beat = tokio::time::interval(heartbeat);
    beat.tick().await;
    let mut n = 0u64;
    // Topic → the join_ref it was joined with.
    let mut joined: HashMap<String, String> = HashMap::new();
    let mut inflight: Option<Inflight> = None;
    let answer = |id: u64, join: bool, status: Result<Status, String>| {
        let _ = answers.send(Answer {
            actor,
            id,
            join,
            status,
            at: Instant::now(),
        });
    };
    loop {
        let mut got: Option<Status> = None;
        let mut closed = false;
        let step = {
            let needle = inflight.as_ref().map(|f| f.needle.clone());
            let mut on = |op: u8, d: &[u8]| match op {
                OP_CLOSE => closed = true,
                OP_TEXT => {
                    if let Some(needle) = &needle {
                        let head = &d[..d.len().min(96)];
                        if got.is_none()
                            && find(head, needle).is_some()
                            && find(d, b"\"phx_reply\"").is_some()
                        {
                            got = Some(Status::of(d));
                            return;
                        }
                    }
                    if is_push(d, "presence_diff") {
                        pushes.diffs.fetch_add(1, Ordering::Relaxed);
                    } else if is_push(d, "presence_state") {
                        pushes.states.fetch_add(1, Ordering::Relaxed);
                        pushes
                            .state_bytes
                            .fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                _ => {}
            };
            let deadline = inflight.as_ref().map(|f| f.deadline);
            tokio::select! {
                o = orders.recv(), if inflight.is_none() => Step::Order(o),
                r = ws.read_batch(&mut on) => Step::Read(r.unwrap_or(false)),
                _ = beat.tick() => Step::Beat,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => Step::Late,
            }
        };
        match step {
            Step::Order(None) => break,
            Step::Order(Some(order)) => {
                n += 1;
                let reference = format!("a{n}");
                let (id, join, topic, join_ref, frame) = match order {
                    Order::Join { id, topic, params } => {
                        let frame = format!(
                            "[\"{reference}\",\"{reference}\",\"{topic}\",\"phx_join\",{params}]"
                        );
                        (id, true, topic, reference.clone(), frame)
                    }
                    Order::Leave { id, topic } => {
                        let Some(jr) = joined.get(&topic).cloned() else {
                            answer(id, false, Ok(Status::Error("not joined".into())));
                            continue;
                        };
                        let frame =
                            format!("[\"{jr}\",\"{reference}\",\"{topic}\",\"phx_leave\",{{}}]");
                        (id, false, topic, jr, frame)
                    }
                };
                if let Err(e) = ws.send_text(&frame).await {
                    answer(id, join, Err(e.to_string()));
                    return;
                }
                inflight = Some(Inflight {
                    id,
                    join,
                    topic,
                    join_ref,
                    needle: format!(",\"{reference}\",").into_bytes(),
                    deadline: Instant::now() + REPLY_WITHIN,
                });
            }
            Step::Read(alive) => {
                // Only a reply ends the request in flight.
                let done = match got {
                    Some(status) => inflight.take().map(|f| (status, f)),
                    None => None,
                };
                if let Some((status, f)) = done {
                    match (&status, f.join) {
                        (Status::Ok, true) => {
                            joined.insert(f.topic, f.join_ref);
                        }
                        (Status::Ok, false) => {
                            joined.remove(&f.topic);
                        }
                        _ => {}
                    }
                    answer(f.id, f.join, Ok(status));
                }
                if !alive || closed {
                    if let Some(f) = inflight.take() {
                        answer(f.id, f.join, Err("closed by server".into()));
                    } else {
                        answer(GONE, false, Err("closed by server".into()));
                    }
                    return;
                }
            }
            Step::Beat => {
                if let Err(e) = ws.send_text(HEARTBEAT).await {
                    match inflight.take() {
                        Some(f) => answer(f.id, f.join, Err(e.to_string())),
                        None => answer(GONE, false, Err(e.to_string())),
                    }
                    return;
                }
            }
            Step::Late => {
                if let Some(f) = inflight.take() {
                    answer(f.id, f.join, Err("timed out".into()));
                }
                return;
            }
        }
        // A big push (a presence_state) must not keep its buffer.
        ws.shrink_read_buffer(64 * 1024);
    }
    let _ = ws.send_close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_are_told_by_event() {
        let diff = br#"[null,null,"bench:presence","presence_diff",{"joins":{},"leaves":{}}]"#;
        assert!(is_push(diff, "presence_diff"));
        assert!(!is_push(diff, "presence_state"));
        let reply = br#"["1","1","bench:presence","phx_reply",{"status":"ok","response":{}}]"#;
        assert!(!is_push(reply, "presence_diff"));
    }
}
