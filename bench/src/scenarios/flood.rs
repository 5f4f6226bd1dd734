//! `bench hold --flood-joins R`: one extra socket that sends `phx_join`
//! frames at R per second (over 10 topics PREFIXflood-<n>) while the held
//! sockets connect and join, so the hold's join latency shows what a
//! join-flooding socket costs the node's other sockets. Replies are counted
//! (ok, `rate limited`, other errors by reason); when the node closes the
//! flooding socket (SPEC §8.4: over the message limit for 10 s) it opens a
//! new one and counts the close. Frames the kernel will not take at once
//! wait in a bounded buffer; ticks that find it full are counted as skipped
//! rather than queued without bound.

use crate::client::{Status, Target, Ws, OP_CLOSE, OP_TEXT};
use crate::token::{Credential, TokenSpec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often frames go out; each tick sends its share of the rate.
const TICK: Duration = Duration::from_millis(10);
/// Unsent bytes beyond which a tick sends nothing (counted as skipped).
const PENDING_MAX: usize = 1 << 20;
const FLOOD_TOPICS: u64 = 10;

#[derive(Default, Debug, Serialize, PartialEq)]
pub(super) struct Flooded {
    pub rate_target: f64,
    pub seconds: f64,
    /// Join frames handed to the kernel.
    pub sent: u64,
    pub sent_per_s: f64,
    pub replies_ok: u64,
    pub rate_limited: u64,
    pub errors: BTreeMap<String, u64>,
    /// Join frames not generated because the unsent buffer was full.
    pub skipped: u64,
    /// Times the node closed the flooding socket (it reconnects).
    pub closed_by_server: u64,
    pub connect_errors: BTreeMap<String, u64>,
}

impl Flooded {
    /// Counts one server frame: a reply by its status, anything else ignored.
    fn frame(&mut self, opcode: u8, data: &[u8]) {
        if opcode != OP_TEXT || crate::client::find(data, b"\"phx_reply\"").is_none() {
            return;
        }
        match Status::of(data) {
            Status::Ok => self.replies_ok += 1,
            s if s.is_rate_limited() => self.rate_limited += 1,
            Status::Error(reason) => *self.errors.entry(reason).or_default() += 1,
        }
    }
}

/// The join frame number `n`.
fn join_frame(prefix: &str, n: u64) -> String {
    format!(
        "[\"f{n}\",\"f{n}\",\"{prefix}flood-{}\",\"phx_join\",{{}}]",
        n % FLOOD_TOPICS
    )
}

/// Frames due after `elapsed` at `rate` per second, less those made already.
fn due(rate: f64, elapsed: Duration, made: u64) -> u64 {
    ((rate * elapsed.as_secs_f64()).floor() as u64).saturating_sub(made)
}

/// Floods until `stop` turns true.
pub(super) async fn run(
    target: Target,
    prefix: String,
    rate: f64,
    token: Option<TokenSpec>,
    mut stop: watch::Receiver<bool>,
) -> Flooded {
    let mut f = Flooded {
        rate_target: rate,
        ..Flooded::default()
    };
    let start = Instant::now();
    let mut made = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    'connect: while !*stop.borrow() {
        let credential: Option<Credential> = match &token {
            Some(t) => t.credential(usize::MAX / 2).ok(),
            None => None,
        };
        let mut ws = match Ws::connect_as(&target, None, credential.as_ref()).await {
            Ok(ws) => ws,
            Err(e) => {
                *f.connect_errors.entry(e.to_string()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        pending.clear();
        loop {
            let mut closed = false;
            let mut close_frame = false;
            let mut on_frame = |op: u8, data: &[u8]| {
                if op == OP_CLOSE {
                    close_frame = true;
                } else {
                    f.frame(op, data);
                }
            };
            tokio::select! {
                _ = stop.changed() => {
                    if *stop.borrow() { break 'connect; }
                }
                _ = tick.tick() => {
                    let n = due(rate, start.elapsed(), made);
                    if pending.len() > PENDING_MAX {
                        f.skipped += n;
                    } else {
                        for i in made..made + n {
                            crate::client::encode_client_frame(
                                &mut pending, OP_TEXT, join_frame(&prefix, i).as_bytes());
                        }
                        f.sent += n;
                    }
                    made += n;
                    while !pending.is_empty() {
                        match ws.stream.try_write(&pending) {
                            Ok(w) => { pending.drain(..w); }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(_) => { closed = true; break; }
                        }
                    }
                }
                r = ws.read_batch(&mut on_frame) => {
                    if !matches!(r, Ok(true)) { closed = true; }
                }
            }
            if closed || close_frame {
                f.closed_by_server += 1;
                continue 'connect;
            }
        }
    }
    f.seconds = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    f.sent_per_s = if f.seconds > 0.0 {
        (f.sent as f64 / f.seconds).round()
    } else {
        0.0
    };
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_due_at_the_rate() {
        assert_eq!(due(10_000.0, Duration::from_millis(10), 0), 100);
        assert_eq!(due(10_000.0, Duration::from_millis(25), 100), 150);
        assert_eq!(due(10_000.0, Duration::from_millis(5), 100), 0);
        assert_eq!(due(0.5, Duration::from_secs(4), 1), 1);
    }

    #[test]
    fn replies_are_counted_by_status() {
        let mut f = Flooded::default();
        f.frame(
            OP_TEXT,
            br#"["f1","f1","bench:flood-1","phx_reply",{"status":"ok","response":{}}]"#,
        );
        f.frame(OP_TEXT, br#"["f2","f2","bench:flood-2","phx_reply",{"status":"error","response":{"reason":"rate limited"}}]"#);
        f.frame(OP_TEXT, br#"["f3","f3","bench:flood-3","phx_reply",{"status":"error","response":{"reason":"too many topics"}}]"#);
        f.frame(OP_TEXT, br#"["f1",null,"bench:flood-1","phx_close",{}]"#);
        assert_eq!(f.replies_ok, 1);
        assert_eq!(f.rate_limited, 1);
        assert_eq!(f.errors.get("too many topics"), Some(&1));
        assert_eq!(
            join_frame("bench:", 13),
            r#"["f13","f13","bench:flood-3","phx_join",{}]"#
        );
    }
}
