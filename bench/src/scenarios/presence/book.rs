//! The bookkeeping behind `bench presence`'s diff propagation, apart from
//! any socket so that it can be tested alone.
//!
//! Every churner join uses a key of its own (`c<churner>-<n>`), so a change
//! is named by its key and whether it is the join or the leave, and many
//! can be in flight at once without ambiguity. A change is begun when its
//! request is sent and takes effect at its ok reply; for each watched node
//! (the nodes other than the churners' when there are several, else the
//! one node), its latency is the time from that reply to the first
//! `presence_diff` read by the node's observer that has the key in `joins`
//! (a join) or `leaves` (a leave). A diff read before the reply counts 0.
//! A (change, node) pair not seen within [`churning::WINDOW`] of the reply
//! is lost.

use super::super::churning::{Flights, InFlight};
use crate::hist::Hist;
use std::time::Instant;

pub(super) struct Pending {
    sent: Instant,
    reply: Option<Instant>,
    /// Watched nodes that have not seen it yet.
    waiting: Vec<usize>,
    /// Nodes that saw it before the reply came, and when.
    early: Vec<(usize, Instant)>,
}

/// Each watched node that has not seen it is a lost pair.
impl InFlight for Pending {
    fn times(&self) -> (Instant, Option<Instant>, u64) {
        (self.sent, self.reply, self.waiting.len() as u64)
    }
}

pub(super) struct Book {
    watched: Vec<usize>,
    /// The changes in flight, by key and join or leave (expired by the
    /// churn phase: pairs past the window are lost; requests unanswered
    /// for twice the window are dropped).
    pub(super) flights: Flights<(String, bool), Pending>,
    pub(super) joins: Hist,
    pub(super) leaves: Hist,
    /// (change, node) pairs seen before the change's reply (latency 0).
    pub(super) before_reply: u64,
    /// Changes with an ok reply (each watched on every watched node).
    pub(super) changes: u64,
    /// Requests refused (nothing changed).
    pub(super) refused: u64,
}

impl Book {
    /// `watched`: the nodes whose observers time each change.
    pub(super) fn new(watched: Vec<usize>) -> Book {
        Book {
            watched,
            flights: Flights::default(),
            joins: Hist::default(),
            leaves: Hist::default(),
            before_reply: 0,
            changes: 0,
            refused: 0,
        }
    }

    pub(super) fn watched(&self) -> &[usize] {
        &self.watched
    }

    /// The join (or leave) of `key` is sent.
    pub(super) fn begin(&mut self, key: &str, join: bool, now: Instant) {
        self.flights.pending.insert(
            (key.to_string(), join),
            Pending {
                sent: now,
                reply: None,
                waiting: self.watched.clone(),
                early: Vec::new(),
            },
        );
    }

    /// Its reply: ok (it took effect) or an error (nothing changed).
    pub(super) fn reply(&mut self, key: &str, join: bool, ok: bool, at: Instant) {
        let k = (key.to_string(), join);
        if !ok {
            if self.flights.pending.remove(&k).is_some() {
                self.refused += 1;
            }
            return;
        }
        let Some(p) = self.flights.pending.get_mut(&k) else {
            return;
        };
        self.changes += 1;
        p.reply = Some(at);
        for (node, _) in std::mem::take(&mut p.early) {
            p.waiting.retain(|n| *n != node);
            self.before_reply += 1;
            hist(&mut self.joins, &mut self.leaves, join).record(0);
        }
        if p.waiting.is_empty() {
            self.flights.pending.remove(&k);
        }
    }

    /// Forgets a change whose request failed with its socket.
    pub(super) fn cancel(&mut self, key: &str, join: bool) {
        self.flights.pending.remove(&(key.to_string(), join));
    }

    /// An observer on `node` read, at `at`, a diff with these churners' keys.
    pub(super) fn seen(&mut self, node: usize, joins: &[String], leaves: &[String], at: Instant) {
        for (keys, join) in [(joins, true), (leaves, false)] {
            for key in keys {
                let k = (key.clone(), join);
                let Some(p) = self.flights.pending.get_mut(&k) else {
                    continue;
                };
                if !p.waiting.contains(&node) || p.early.iter().any(|(n, _)| *n == node) {
                    continue;
                }
                match p.reply {
                    Some(reply) => {
                        p.waiting.retain(|n| *n != node);
                        let us = at.saturating_duration_since(reply).as_micros() as u64;
                        hist(&mut self.joins, &mut self.leaves, join).record(us);
                        if p.waiting.is_empty() {
                            self.flights.pending.remove(&k);
                        }
                    }
                    None => p.early.push((node, at)),
                }
            }
        }
    }
}

fn hist<'a>(joins: &'a mut Hist, leaves: &'a mut Hist, join: bool) -> &'a mut Hist {
    if join {
        joins
    } else {
        leaves
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::churning::Window;
    use std::time::Duration;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_watched_node_times_the_change_from_the_reply() {
        let t0 = Instant::now();
        let mut b = Book::new(vec![1, 2]);
        b.begin("c0-1", true, t0);
        b.begin("c1-1", true, t0);
        b.reply("c0-1", true, true, ms(t0, 2));
        // Another key, and the leave of this one, do not count.
        b.seen(1, &keys(&["c9-9"]), &keys(&["c0-1"]), ms(t0, 3));
        assert_eq!(b.joins.count(), 0);
        b.seen(1, &keys(&["c0-1", "c1-1"]), &[], ms(t0, 12));
        assert_eq!(b.joins.count(), 1);
        assert_eq!(b.joins.max(), 10_000);
        // c1-1 was seen on node 1 before its reply: 0 there.
        b.reply("c1-1", true, true, ms(t0, 20));
        assert_eq!(b.before_reply, 1);
        assert_eq!(b.joins.count(), 2);
        // A second diff on the same node does not count twice.
        b.seen(1, &keys(&["c0-1"]), &[], ms(t0, 30));
        assert_eq!(b.joins.count(), 2);
        b.seen(2, &keys(&["c0-1", "c1-1"]), &[], ms(t0, 40));
        assert_eq!(b.joins.count(), 4);
        assert_eq!(b.flights.len(), 0);
        assert_eq!(b.changes, 2);
        // The leave.
        b.begin("c0-1", false, ms(t0, 50));
        b.reply("c0-1", false, true, ms(t0, 51));
        b.seen(2, &[], &keys(&["c0-1"]), ms(t0, 53));
        assert_eq!(b.leaves.count(), 1);
        assert_eq!(b.leaves.max(), 2000);
        b.flights.expire(ms(t0, 5051));
        assert_eq!(b.flights.lost, 0, "exactly 5 s is not past the window");
        b.flights.expire(ms(t0, 5052));
        assert_eq!(b.flights.lost, 1, "node 1 never saw the leave");
        assert_eq!(b.flights.len(), 0);
    }

    #[test]
    fn refused_cancelled_and_unanswered_changes() {
        let t0 = Instant::now();
        let mut b = Book::new(vec![0]);
        b.begin("c0-1", true, t0);
        b.reply("c0-1", true, false, ms(t0, 1));
        assert_eq!((b.refused, b.changes, b.flights.len()), (1, 0, 0));
        b.begin("c0-2", true, t0);
        b.cancel("c0-2", true);
        assert_eq!(b.flights.len(), 0);
        b.begin("c0-3", true, t0);
        b.flights.expire(ms(t0, 10_001));
        assert_eq!(b.flights.unanswered, 1);
        b.begin("c0-4", true, t0);
        b.begin("c0-5", true, t0);
        b.reply("c0-5", true, true, ms(t0, 1));
        b.flights.abandon_all();
        assert_eq!(
            (b.flights.unanswered, b.flights.lost, b.flights.len()),
            (2, 1, 0)
        );
        assert_eq!(b.watched(), &[0]);
    }
}
