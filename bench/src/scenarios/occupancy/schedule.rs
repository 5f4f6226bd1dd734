//! The churn phase's decisions, apart from the sockets: on every tick of
//! `--rate`, the next free churner (round robin) leaves the topic it holds,
//! or joins a random topic that has no change in flight and has an
//! observer on another node; answers and pushes go to the [`Book`]. A tick
//! with no free churner or topic is counted as skipped.

use super::super::churning::{Coordinator, Rota, Tally, Window};
use super::book::Book;
use super::churners::{Answer, Churner, Order};
use super::members::Seen;
use crate::client::Status;
use crate::rng::Rng;
use std::collections::HashSet;
use std::time::Instant;

pub(super) struct Churn {
    pub(super) book: Book,
    pub(super) churners: Vec<Churner>,
    /// `observed[topic][node]`: that topic has an observer on that node.
    observed: Vec<Vec<bool>>,
    nodes: usize,
    prefix: String,
    rng: Rng,
    rota: Rota,
    pub(super) tally: Tally,
}

impl Churn {
    pub(super) fn new(
        book: Book,
        churners: Vec<Churner>,
        observers: &HashSet<(usize, usize)>,
        topics: usize,
        nodes: usize,
        prefix: &str,
    ) -> Churn {
        let mut observed = vec![vec![false; nodes]; topics];
        for &(t, n) in observers {
            observed[t][n] = true;
        }
        Churn {
            book,
            rota: Rota::new(churners.len()),
            churners,
            observed,
            nodes,
            prefix: prefix.to_string(),
            rng: Rng::new(0x0cc0_u64 ^ topics as u64),
            tally: Tally::default(),
        }
    }

    /// A topic a churner on `node` may change now, if one is found in a few tries.
    fn free_topic(&mut self, node: usize) -> Option<usize> {
        let topics = self.observed.len();
        for _ in 0..32 {
            let t = self.rng.below(topics);
            let watched_elsewhere =
                (0..self.nodes).any(|o| (o != node || self.nodes == 1) && self.observed[t][o]);
            if watched_elsewhere && !self.book.is_pending(t) {
                return Some(t);
            }
        }
        None
    }
}

impl Coordinator for Churn {
    type Seen = Seen;
    type Answer = Answer;

    /// A free churner leaves the topic it holds, or joins a free topic.
    fn start(&mut self, c: usize, now: Instant) -> Option<bool> {
        if self.churners[c].busy || self.churners[c].dead {
            return None;
        }
        let node = self.churners[c].node;
        let (topic, order) = match self.churners[c].holds {
            Some(t) if self.book.is_pending(t) => return None,
            Some(t) => (t, Order::Leave),
            None => match self.free_topic(node) {
                Some(t) => (
                    t,
                    Order::Join {
                        topic: t,
                        name: format!("{}{t}", self.prefix),
                    },
                ),
                None => return None,
            },
        };
        let join = matches!(order, Order::Join { .. });
        if !self.book.begin(topic, node, join, now) {
            return None;
        }
        if self.churners[c].orders.send(order).is_err() {
            self.book.cancel(topic);
            self.churners[c].dead = true;
            return None;
        }
        self.churners[c].busy = true;
        Some(join)
    }

    fn answer(&mut self, a: Answer) {
        let ch = &mut self.churners[a.churner];
        ch.busy = false;
        match a.status {
            Ok(Status::Ok) => {
                self.book.reply(a.topic, true, a.at);
                ch.holds = a.join.then_some(a.topic);
                self.tally.ok(a.join);
            }
            Ok(status) => {
                self.book.reply(a.topic, false, a.at);
                self.tally.refused(status);
                if a.join {
                    ch.holds = None;
                }
            }
            Err(e) => {
                // The socket is gone, and the membership it held with it.
                self.book.cancel(a.topic);
                ch.dead = true;
                if let Some(t) = ch.holds.take() {
                    self.book.member_gone(t);
                }
                *self.tally.churner_errors.entry(e).or_default() += 1;
            }
        }
    }

    fn seen(&mut self, s: Seen) {
        super::apply_seen(&mut self.book, s);
    }

    fn parts(&mut self) -> (&mut Rota, &mut Tally, &mut dyn Window) {
        (&mut self.rota, &mut self.tally, &mut self.book.flights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn churner(node: usize) -> (Churner, mpsc::UnboundedReceiver<Order>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let c = Churner {
            node,
            orders: tx,
            busy: false,
            holds: None,
            dead: false,
        };
        (c, rx)
    }

    #[test]
    fn churners_join_then_leave_topics_watched_elsewhere() {
        let t0 = Instant::now();
        // One topic, watched on node 1 only; a churner on each node.
        let mut book = Book::new(1, 2);
        book.add_member(0);
        book.add_observer(0, 1);
        let (c0, mut r0) = churner(0);
        let (c1, mut r1) = churner(1);
        let observers: HashSet<_> = [(0, 1)].into_iter().collect();
        let mut churn = Churn::new(book, vec![c0, c1], &observers, 1, 2, "b:");
        assert!(churn.tick(t0));
        let Ok(Order::Join { topic: 0, name }) = r0.try_recv() else {
            panic!("churner 0 should join topic 0");
        };
        assert_eq!(name, "b:0");
        // Topic 0 is in flight, and churner 1's node is the only watcher's.
        assert!(!churn.tick(t0));
        assert_eq!(churn.tally.skipped, 1);
        assert!(r1.try_recv().is_err());
        churn.answer(Answer {
            churner: 0,
            topic: 0,
            join: true,
            status: Ok(Status::Ok),
            at: t0,
        });
        assert_eq!(churn.churners[0].holds, Some(0));
        churn.seen(Seen::Push {
            topic: 0,
            node: 1,
            count: 2,
            at: t0 + std::time::Duration::from_millis(7),
        });
        assert_eq!(churn.book.latency.count(), 1);
        // Next: churner 1 finds nothing, churner 0 leaves.
        assert!(churn.tick(t0));
        assert!(matches!(r0.try_recv(), Ok(Order::Leave)));
        churn.answer(Answer {
            churner: 0,
            topic: 0,
            join: false,
            status: Ok(Status::Error("rate limited".into())),
            at: t0,
        });
        assert_eq!(churn.tally.rate_limited, 1);
        assert_eq!(churn.churners[0].holds, Some(0), "still joined");
        assert_eq!(churn.book.expected(0), 2);
        assert!(churn.tick(t0));
        assert!(matches!(r0.try_recv(), Ok(Order::Leave)));
        churn.answer(Answer {
            churner: 0,
            topic: 0,
            join: false,
            status: Err("closed by server".into()),
            at: t0,
        });
        assert!(churn.churners[0].dead);
        assert_eq!(churn.book.expected(0), 1);
        assert_eq!(
            (
                churn.tally.joins_sent,
                churn.tally.leaves_sent,
                churn.tally.joins_ok
            ),
            (1, 2, 1)
        );
    }
}
