//! `bench webhooks`' topics as they go: planned, joining, held, leaving,
//! done (or failed with their actor's socket), the orders they cause, and
//! the transitions each ok reply adds to the [`Ledger`]: the join's reply
//! is `channel_occupied` (and `member_added`), the leave's reply plus the
//! vacate delay is `channel_vacated` (and `member_removed`). A refused
//! join expects nothing; a refused leave is tried again 500 ms later, up
//! to [`LEAVE_TRIES`] times.

use super::super::actor::{Answer, Order, GONE};
use super::super::churning::count_refusal;
use super::ledger::{Ledger, ADDED, OCCUPIED, REMOVED, VACATED};
use super::plan::Assign;
use super::receiver::lock;
use crate::client::Status;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A leave refused this many times leaves its topic untracked.
const LEAVE_TRIES: u32 = 5;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum St {
    Planned,
    Joining,
    Held,
    Leaving,
    Done,
    Failed,
}

pub(super) struct Topic {
    pub(super) st: St,
    pub(super) actor: usize,
    pub(super) leave_tries: u32,
}

#[derive(Default, serde::Serialize)]
pub(super) struct Tally {
    pub(super) joins_sent: u64,
    pub(super) joins_ok: u64,
    pub(super) leaves_sent: u64,
    pub(super) leaves_ok: u64,
    pub(super) rate_limited: u64,
    pub(super) refused: BTreeMap<String, u64>,
    pub(super) actor_errors: BTreeMap<String, u64>,
    /// Topics not joined for want of a live actor.
    pub(super) no_actor: u64,
    /// Topics whose transitions could not be timed (their actor failed).
    pub(super) untracked_topics: u64,
}

/// The run: the topics, the actors, and what has been expected so far.
pub(super) struct Run {
    pub(super) ours: String,
    pub(super) presence: bool,
    pub(super) hold: Duration,
    pub(super) delay: Duration,
    pub(super) topics: Vec<Topic>,
    pub(super) orders: Vec<mpsc::UnboundedSender<Order>>,
    pub(super) assign: Assign,
    pub(super) leaves: BinaryHeap<Reverse<(Instant, usize)>>,
    pub(super) ledger: Arc<Mutex<Ledger>>,
    pub(super) open: usize,
    pub(super) last_due: Option<Instant>,
    pub(super) tally: Tally,
}

impl Run {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        ours: &str,
        presence: bool,
        hold: Duration,
        delay: Duration,
        topics: usize,
        orders: Vec<mpsc::UnboundedSender<Order>>,
        assign: Assign,
        ledger: Arc<Mutex<Ledger>>,
    ) -> Run {
        Run {
            ours: ours.to_string(),
            presence,
            hold,
            delay,
            topics: (0..topics)
                .map(|_| Topic {
                    st: St::Planned,
                    actor: usize::MAX,
                    leave_tries: 0,
                })
                .collect(),
            orders,
            assign,
            leaves: BinaryHeap::new(),
            ledger,
            open: topics,
            last_due: None,
            tally: Tally::default(),
        }
    }

    fn name(&self, i: usize) -> String {
        format!("{}{i}", self.ours)
    }

    fn params(&self, i: usize) -> String {
        if self.presence {
            format!("{{\"user_id\":\"w{i}\"}}")
        } else {
            "{}".into()
        }
    }

    fn expect(&mut self, name: &str, i: usize, user: bool, at: Instant) {
        let (channel, u) = (self.name(i), format!("w{i}"));
        lock(&self.ledger).expect(name, &channel, user.then_some(u.as_str()), at);
        self.last_due = Some(self.last_due.map_or(at, |d| d.max(at)));
    }

    fn finish(&mut self, i: usize, st: St) {
        if !matches!(self.topics[i].st, St::Done | St::Failed) {
            self.open -= 1;
        }
        if st == St::Failed && self.topics[i].st != St::Planned {
            let channel = self.name(i);
            lock(&self.ledger).untrack(&channel);
            self.tally.untracked_topics += 1;
        }
        self.topics[i].st = st;
    }

    pub(super) fn join(&mut self, i: usize) {
        let Some(a) = self.assign.pick() else {
            self.tally.no_actor += 1;
            self.finish(i, St::Failed);
            return;
        };
        self.topics[i].actor = a;
        self.topics[i].st = St::Joining;
        let order = Order::Join {
            id: 2 * i as u64,
            topic: self.name(i),
            params: self.params(i),
        };
        self.tally.joins_sent += 1;
        if self.orders[a].send(order).is_err() {
            self.actor_failed(a, "actor gone".into());
        }
    }

    pub(super) fn leave(&mut self, i: usize) {
        if self.topics[i].st != St::Held {
            return;
        }
        let a = self.topics[i].actor;
        self.topics[i].st = St::Leaving;
        self.tally.leaves_sent += 1;
        let order = Order::Leave {
            id: 2 * i as u64 + 1,
            topic: self.name(i),
        };
        if self.orders[a].send(order).is_err() {
            self.actor_failed(a, "actor gone".into());
        }
    }

    /// An actor's socket failed: its topics' transitions cannot be timed.
    fn actor_failed(&mut self, a: usize, why: String) {
        if self.assign.dead[a] {
            return;
        }
        self.assign.dead[a] = true;
        *self.tally.actor_errors.entry(why).or_default() += 1;
        for i in 0..self.topics.len() {
            let t = &self.topics[i];
            if t.actor == a && matches!(t.st, St::Joining | St::Held | St::Leaving) {
                self.finish(i, St::Failed);
            }
        }
    }

    pub(super) fn answer(&mut self, a: Answer) {
        let status = match a.status {
            Err(e) => return self.actor_failed(a.actor, e),
            Ok(_) if a.id == GONE => return,
            Ok(s) => s,
        };
        let i = (a.id / 2) as usize;
        if i >= self.topics.len() || a.actor != self.topics[i].actor {
            return;
        }
        match (a.join, status) {
            (true, Status::Ok) => {
                self.tally.joins_ok += 1;
                self.topics[i].st = St::Held;
                self.expect(OCCUPIED, i, false, a.at);
                if self.presence {
                    self.expect(ADDED, i, true, a.at);
                }
                self.leaves.push(Reverse((a.at + self.hold, i)));
            }
            (false, Status::Ok) => {
                self.tally.leaves_ok += 1;
                let due = a.at + self.delay;
                self.expect(VACATED, i, false, due);
                if self.presence {
                    self.expect(REMOVED, i, true, due);
                }
                self.assign.release(a.actor);
                self.finish(i, St::Done);
            }
            (join, status) => {
                let t = &mut self.tally;
                count_refusal(status, &mut t.rate_limited, &mut t.refused);
                if join {
                    // Nothing happened: no transition to expect.
                    self.assign.release(a.actor);
                    self.finish(i, St::Done);
                } else if self.topics[i].leave_tries + 1 < LEAVE_TRIES {
                    self.topics[i].leave_tries += 1;
                    self.topics[i].st = St::Held;
                    let again = Instant::now() + Duration::from_millis(500);
                    self.leaves.push(Reverse((again, i)));
                } else {
                    self.finish(i, St::Failed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(
        actor: usize,
        id: u64,
        join: bool,
        status: Result<Status, String>,
        at: Instant,
    ) -> Answer {
        Answer {
            actor,
            id,
            join,
            status,
            at,
        }
    }

    #[test]
    fn replies_become_transitions_and_a_failed_actor_untracks_its_topics() {
        let ledger = Arc::new(Mutex::new(Ledger::new("b:wh-1-")));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut run = Run::new(
            "b:wh-1-",
            true,
            Duration::from_millis(100),
            Duration::from_millis(3000),
            3,
            vec![tx],
            Assign::new(1, 1, 1),
            ledger.clone(),
        );
        let t0 = Instant::now();
        run.join(0);
        run.join(1);
        run.join(2);
        let Ok(Order::Join {
            id: 0,
            topic,
            params,
        }) = rx.try_recv()
        else {
            panic!("join of topic 0");
        };
        assert_eq!(
            (topic.as_str(), params.as_str()),
            ("b:wh-1-0", r#"{"user_id":"w0"}"#)
        );
        run.answer(answer(0, 0, true, Ok(Status::Ok), t0));
        run.answer(answer(
            0,
            2,
            true,
            Ok(Status::Error("rate limited".into())),
            t0,
        ));
        assert_eq!(
            (run.tally.joins_ok, run.tally.rate_limited, run.open),
            (1, 1, 2)
        );
        // Topic 0's leave is due `hold` after its reply.
        let Some(Reverse((due, 0))) = run.leaves.pop() else {
            panic!("a leave of topic 0");
        };
        assert_eq!(due, t0 + Duration::from_millis(100));
        run.leave(0);
        run.answer(answer(
            0,
            1,
            false,
            Ok(Status::Ok),
            t0 + Duration::from_millis(150),
        ));
        assert_eq!(run.open, 1);
        assert_eq!(run.last_due, Some(t0 + Duration::from_millis(3150)));
        // occupied, member_added, vacated, member_removed of topic 0.
        assert_eq!(lock(&ledger).report()["expected"], 4);
        // Topic 2 is in flight on the actor when its socket fails.
        run.answer(answer(0, 4, true, Err("closed by server".into()), t0));
        assert_eq!(run.open, 0);
        assert_eq!(run.tally.untracked_topics, 1);
        assert_eq!(run.tally.actor_errors.len(), 1);
        assert_eq!(lock(&ledger).report()["untracked_channels"], 1);
    }
}
