//! `bench presence`'s churn phase, apart from the sockets: on every tick of
//! `--rate`, the next free churner (round robin) leaves the presence topic
//! if it holds it, or joins it with a fresh key `c<churner>-<n>` as its
//! `user_id`. Churners sit on the first node; ⌈rate / 5⌉ of them keep
//! each under 5 requests/s (so a reply may take 200 ms before a tick is
//! skipped), well inside the node's default per-socket limits (20 joins/s,
//! 100 messages/s). Answers go to the
//! [`Book`]; `rate limited` replies are counted apart from other refusals.

use super::super::actor::{Answer, Order, GONE};
use super::super::churning::{Coordinator, Rota, Tally, Window};
use super::book::Book;
use super::members::Seen;
use super::CHURN_KEY;
use crate::client::Status;
use std::time::Instant;
use tokio::sync::mpsc;

/// Requests per second one churner makes at most.
pub(super) const PER_CHURNER: f64 = 5.0;

/// The coordinator's view of one churner.
pub(super) struct Churner {
    pub(super) orders: mpsc::UnboundedSender<Order>,
    /// The request in flight: its key and whether it is a join.
    inflight: Option<(String, bool)>,
    /// The key it is joined with.
    holds: Option<String>,
    dead: bool,
    joins: u64,
}

impl Churner {
    pub(super) fn new(orders: mpsc::UnboundedSender<Order>) -> Churner {
        Churner {
            orders,
            inflight: None,
            holds: None,
            dead: false,
            joins: 0,
        }
    }
}

pub(super) struct Churn {
    pub(super) book: Book,
    pub(super) churners: Vec<Churner>,
    topic: String,
    rota: Rota,
    ids: u64,
    pub(super) tally: Tally,
}

impl Churn {
    pub(super) fn new(book: Book, churners: Vec<Churner>, topic: &str) -> Churn {
        Churn {
            book,
            rota: Rota::new(churners.len()),
            churners,
            topic: topic.to_string(),
            ids: 0,
            tally: Tally::default(),
        }
    }

    /// Churners joined to the topic now.
    pub(super) fn holding(&self) -> u64 {
        self.churners
            .iter()
            .filter(|c| c.holds.is_some() && !c.dead)
            .count() as u64
    }
}

/// A tick starts a change when a churner is free.
impl Coordinator for Churn {
    type Seen = Seen;
    type Answer = Answer;

    /// A free churner leaves the topic, or joins it with a fresh key.
    fn start(&mut self, c: usize, now: Instant) -> Option<bool> {
        let ch = &mut self.churners[c];
        if ch.inflight.is_some() || ch.dead {
            return None;
        }
        self.ids += 1;
        let id = self.ids;
        let (key, join, order) = match &ch.holds {
            Some(key) => (
                key.clone(),
                false,
                Order::Leave {
                    id,
                    topic: self.topic.clone(),
                },
            ),
            None => {
                ch.joins += 1;
                let key = format!("{CHURN_KEY}{c}-{}", ch.joins);
                let params = format!("{{\"user_id\":\"{key}\"}}");
                let topic = self.topic.clone();
                (key, true, Order::Join { id, topic, params })
            }
        };
        if ch.orders.send(order).is_err() {
            ch.dead = true;
            return None;
        }
        self.book.begin(&key, join, now);
        ch.inflight = Some((key, join));
        Some(join)
    }

    fn answer(&mut self, a: Answer) {
        let Some(ch) = self.churners.get_mut(a.actor) else {
            return;
        };
        let inflight = if a.id == GONE {
            None
        } else {
            ch.inflight.take()
        };
        match (a.status, inflight) {
            (Err(e), inflight) => {
                if let Some((key, join)) = inflight {
                    self.book.cancel(&key, join);
                }
                ch.dead = true;
                ch.inflight = None;
                *self.tally.churner_errors.entry(e).or_default() += 1;
            }
            (Ok(_), None) => {}
            (Ok(Status::Ok), Some((key, join))) => {
                self.book.reply(&key, join, true, a.at);
                ch.holds = join.then_some(key);
                self.tally.ok(join);
            }
            (Ok(status), Some((key, join))) => {
                self.book.reply(&key, join, false, a.at);
                self.tally.refused(status);
            }
        }
    }

    fn seen(&mut self, s: Seen) {
        self.book.seen(s.node, &s.joins, &s.leaves, s.at);
    }

    fn parts(&mut self) -> (&mut Rota, &mut Tally, &mut dyn Window) {
        (&mut self.rota, &mut self.tally, &mut self.book.flights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(actor: usize, id: u64, join: bool, status: Result<Status, String>) -> Answer {
        Answer {
            actor,
            id,
            join,
            status,
            at: Instant::now(),
        }
    }

    #[test]
    fn churners_take_turns_joining_with_fresh_keys_then_leaving() {
        let t0 = Instant::now();
        let (tx0, mut rx0) = mpsc::unbounded_channel();
        let (tx1, mut rx1) = mpsc::unbounded_channel();
        let churners = vec![Churner::new(tx0), Churner::new(tx1)];
        let mut churn = Churn::new(Book::new(vec![0]), churners, "bench:presence");
        assert!(churn.tick(t0));
        assert!(churn.tick(t0));
        assert!(!churn.tick(t0), "both busy");
        assert_eq!(churn.tally.skipped, 1);
        let Ok(Order::Join { id, params, topic }) = rx0.try_recv() else {
            panic!("churner 0 joins");
        };
        assert_eq!((id, topic.as_str()), (1, "bench:presence"));
        assert_eq!(params, r#"{"user_id":"c0-1"}"#);
        assert!(matches!(rx1.try_recv(), Ok(Order::Join { id: 2, .. })));
        churn.answer(answer(0, 1, true, Ok(Status::Ok)));
        churn.answer(answer(1, 2, true, Ok(Status::Error("rate limited".into()))));
        assert_eq!(churn.tally.rate_limited, 1);
        assert_eq!((churn.holding(), churn.book.changes), (1, 1));
        // Churner 0 leaves; churner 1 tries again with a fresh key.
        assert!(churn.tick(t0));
        assert!(churn.tick(t0));
        assert!(matches!(rx0.try_recv(), Ok(Order::Leave { id: 3, .. })));
        let Ok(Order::Join { params, .. }) = rx1.try_recv() else {
            panic!("churner 1 joins again");
        };
        assert_eq!(params, r#"{"user_id":"c1-2"}"#);
        churn.answer(answer(0, 3, false, Ok(Status::Ok)));
        churn.answer(answer(1, 4, true, Err("closed by server".into())));
        assert_eq!(churn.holding(), 0);
        assert_eq!(churn.tally.churner_errors.len(), 1);
        assert_eq!((churn.tally.joins_ok, churn.tally.leaves_ok), (1, 1));
        // Churner 1 is dead: only churner 0 gets orders now.
        assert!(churn.tick(t0));
        assert!(matches!(rx0.try_recv(), Ok(Order::Join { id: 5, .. })));
        churn.answer(answer(0, GONE, false, Err("closed by server".into())));
        assert!(!churn.tick(t0));
    }
}
