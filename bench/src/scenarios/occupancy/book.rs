//! The bookkeeping behind `bench occupancy`'s push latency, apart from any
//! socket so that it can be tested alone.
//!
//! The client knows how many members every topic has: the watchers it
//! joined, plus the churners joined to it now. A churn event (a join or a
//! leave of topic T on node A) is begun when its request is sent, with the
//! count T will have after it; it takes effect when its ok reply comes
//! back. Its latency is the time from that reply to the first `occupancy`
//! push of T received *on another node* (by an observer: one watcher per
//! topic and node) whose `connections` is that count. A change no push
//! reflects within [`churning::WINDOW`] of its reply is lost.
//!
//! At most one change per topic is in flight, so "reflects" is exact: with
//! a single change pending, the topic's count can only be the new figure
//! once that change has happened. (Overlapping changes from two nodes could
//! show counts that are neither the old nor the new figure.) A push can
//! arrive before its reply does; that change counts with latency 0.

use super::super::churning::{Flights, InFlight};
use crate::hist::Hist;
use std::collections::HashMap;
use std::time::Instant;

/// One change in flight.
pub(super) struct Pending {
    /// Where it was made: pushes there do not count.
    node: usize,
    /// The topic's count once it has happened.
    expect: u64,
    sent: Instant,
    reply: Option<Instant>,
    /// The earliest reflecting push, when it came before the reply.
    seen: Option<Instant>,
}

/// One change, one push to see it.
impl InFlight for Pending {
    fn times(&self) -> (Instant, Option<Instant>, u64) {
        (self.sent, self.reply, 1)
    }
}

pub(super) struct Book {
    expected: Vec<u64>,
    nodes: usize,
    /// The changes in flight, by topic (expired by the churn phase: lost
    /// when they were answered, unanswered when not; their topics are then
    /// free again).
    pub(super) flights: Flights<usize, Pending>,
    /// The last `connections` pushed to each observer (topic, node).
    last: HashMap<(usize, usize), u64>,
    observers: Vec<(usize, usize)>,
    pub(super) latency: Hist,
    /// Changes whose push came before their reply (latency 0).
    pub(super) before_reply: u64,
    /// Requests that got an error reply (nothing changed).
    pub(super) refused: u64,
    /// Members that went away on their own (each an untracked change).
    pub(super) members_gone: u64,
}

impl Book {
    pub(super) fn new(topics: usize, nodes: usize) -> Book {
        Book {
            expected: vec![0; topics],
            nodes: nodes.max(1),
            flights: Flights::default(),
            last: HashMap::new(),
            observers: Vec::new(),
            latency: Hist::default(),
            before_reply: 0,
            refused: 0,
            members_gone: 0,
        }
    }

    /// A watcher joined `topic` during set-up.
    pub(super) fn add_member(&mut self, topic: usize) {
        self.expected[topic] += 1;
    }

    /// The watcher of `topic` on `node` whose pushes are timed.
    pub(super) fn add_observer(&mut self, topic: usize, node: usize) {
        self.observers.push((topic, node));
    }

    /// A watcher's socket closed: the topic lost a member at a moment the
    /// client does not know.
    pub(super) fn member_gone(&mut self, topic: usize) {
        self.expected[topic] = self.expected[topic].saturating_sub(1);
        self.members_gone += 1;
        if let Some(p) = self.flights.pending.get_mut(&topic) {
            p.expect = p.expect.saturating_sub(1);
        }
    }

    pub(super) fn is_pending(&self, topic: usize) -> bool {
        self.flights.pending.contains_key(&topic)
    }

    #[cfg(test)]
    pub(super) fn expected(&self, topic: usize) -> u64 {
        self.expected[topic]
    }

    /// A join (or a leave) of `topic` on `node` is sent. False, and
    /// nothing is begun, while another change of the topic is in flight.
    pub(super) fn begin(&mut self, topic: usize, node: usize, join: bool, now: Instant) -> bool {
        if self.flights.pending.contains_key(&topic) {
            return false;
        }
        let now_count = self.expected[topic];
        let expect = if join {
            now_count + 1
        } else {
            now_count.saturating_sub(1)
        };
        self.flights.pending.insert(
            topic,
            Pending {
                node,
                expect,
                sent: now,
                reply: None,
                seen: None,
            },
        );
        true
    }

    /// The change's reply: ok (it took effect) or an error (nothing changed).
    pub(super) fn reply(&mut self, topic: usize, ok: bool, at: Instant) {
        let Some(p) = self.flights.pending.get_mut(&topic) else {
            return;
        };
        if !ok {
            self.flights.pending.remove(&topic);
            self.refused += 1;
            return;
        }
        self.expected[topic] = p.expect;
        p.reply = Some(at);
        if let Some(seen) = p.seen {
            self.resolve(topic, seen, at);
        }
    }

    /// Forgets the change in flight on `topic` (its request never went out,
    /// or its socket failed before an answer).
    pub(super) fn cancel(&mut self, topic: usize) {
        self.flights.pending.remove(&topic);
    }

    /// An `occupancy` push of `topic` to its observer on `node`, saying
    /// `count`, received at `at`.
    pub(super) fn push(&mut self, topic: usize, node: usize, count: u64, at: Instant) {
        self.last.insert((topic, node), count);
        let nodes = self.nodes;
        let Some(p) = self.flights.pending.get_mut(&topic) else {
            return;
        };
        if (p.node == node && nodes > 1) || count != p.expect {
            return;
        }
        match p.reply {
            Some(reply) => self.resolve(topic, at, reply),
            None => p.seen = Some(p.seen.map_or(at, |s| s.min(at))),
        }
    }

    fn resolve(&mut self, topic: usize, pushed: Instant, reply: Instant) {
        self.flights.pending.remove(&topic);
        if pushed < reply {
            self.before_reply += 1;
        }
        self.latency
            .record(pushed.saturating_duration_since(reply).as_micros() as u64);
    }

    /// Observers whose last push does not show their topic's count now,
    /// and how many observers there are.
    pub(super) fn stale_observers(&self) -> (usize, usize) {
        let stale = self
            .observers
            .iter()
            .filter(|(t, n)| self.last.get(&(*t, *n)) != Some(&self.expected[*t]))
            .count();
        (stale, self.observers.len())
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

    fn book() -> Book {
        // Topic 0 has a watcher on node 0 and one on node 1.
        let mut b = Book::new(2, 2);
        for node in 0..2 {
            b.add_member(0);
            b.add_observer(0, node);
        }
        b
    }

    #[test]
    fn latency_runs_from_the_reply_to_the_first_push_elsewhere() {
        let t0 = Instant::now();
        let mut b = book();
        b.push(0, 0, 2, t0);
        b.push(0, 1, 2, t0);
        assert_eq!(b.stale_observers(), (0, 2));
        assert!(b.begin(0, 0, true, t0));
        assert!(!b.begin(0, 1, false, t0), "one change per topic in flight");
        b.reply(0, true, ms(t0, 2));
        assert_eq!(b.expected(0), 3);
        // On the node that made the change: not counted.
        b.push(0, 0, 3, ms(t0, 3));
        assert!(b.is_pending(0));
        // Elsewhere, but the old figure: not yet.
        b.push(0, 1, 2, ms(t0, 5));
        assert!(b.is_pending(0));
        b.push(0, 1, 3, ms(t0, 42));
        assert!(!b.is_pending(0));
        assert_eq!(b.latency.count(), 1);
        assert_eq!(b.latency.max(), 40_000);
        assert_eq!(b.stale_observers(), (0, 2));
        // The leave that follows.
        assert!(b.begin(0, 1, false, ms(t0, 50)));
        b.reply(0, true, ms(t0, 51));
        b.push(0, 1, 2, ms(t0, 52));
        assert!(b.is_pending(0), "node 1 made it");
        assert_eq!(b.stale_observers(), (1, 2));
        b.push(0, 0, 2, ms(t0, 61));
        assert_eq!(b.latency.count(), 2);
        assert_eq!(b.latency.max(), 40_000);
        assert_eq!(b.stale_observers(), (0, 2));
        assert_eq!((b.flights.lost, b.before_reply, b.refused), (0, 0, 0));
    }

    #[test]
    fn a_push_before_the_reply_counts_as_zero() {
        let t0 = Instant::now();
        let mut b = book();
        b.begin(0, 0, true, t0);
        b.push(0, 1, 3, ms(t0, 1));
        b.push(0, 1, 3, ms(t0, 2));
        assert!(b.is_pending(0));
        b.reply(0, true, ms(t0, 3));
        assert!(!b.is_pending(0));
        assert_eq!(b.latency.count(), 1);
        assert_eq!(b.latency.max(), 0);
        assert_eq!(b.before_reply, 1);
    }

    #[test]
    fn refused_lost_and_unanswered_changes() {
        let t0 = Instant::now();
        let mut b = book();
        b.begin(0, 0, true, t0);
        b.reply(0, false, ms(t0, 1));
        assert!(!b.is_pending(0));
        assert_eq!((b.refused, b.expected(0)), (1, 2));
        b.begin(0, 0, true, t0);
        b.reply(0, true, ms(t0, 1));
        b.flights.expire(ms(t0, 5000));
        assert!(b.is_pending(0), "5 s is not yet past the window");
        b.flights.expire(ms(t0, 5002));
        assert_eq!(b.flights.lost, 1);
        assert!(!b.is_pending(0));
        b.begin(1, 0, true, t0);
        b.flights.expire(ms(t0, 10_001));
        assert_eq!(b.flights.unanswered, 1);
        b.begin(1, 0, true, t0);
        b.begin(0, 0, false, t0);
        b.reply(0, true, ms(t0, 1));
        b.flights.abandon_all();
        assert_eq!(
            (b.flights.lost, b.flights.unanswered, b.flights.len()),
            (2, 2, 0)
        );
        assert_eq!(b.latency.count(), 0);
    }

    #[test]
    fn one_node_times_its_own_pushes_and_members_may_go() {
        let t0 = Instant::now();
        let mut b = Book::new(1, 1);
        b.add_member(0);
        b.add_member(0);
        b.add_observer(0, 0);
        b.begin(0, 0, true, t0);
        b.member_gone(0);
        assert_eq!(b.expected(0), 1);
        b.reply(0, true, ms(t0, 1));
        assert_eq!(b.expected(0), 2);
        b.push(0, 0, 2, ms(t0, 9));
        assert_eq!(b.latency.max(), 8000);
        assert_eq!(b.members_gone, 1);
        assert_eq!(b.stale_observers(), (0, 1));
    }
}
