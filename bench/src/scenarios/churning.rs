//! The churn phase that `bench occupancy` and `bench presence` share: the
//! window a change in flight has before it counts as lost, the tally of
//! what the churners sent and were answered, the round robin that gives
//! each tick to the next free churner, and the loop that drives a
//! coordinator (ticks at `--rate`, expiry, reports and answers) and then
//! drains what is still in flight. What a change is and how it is seen
//! stays with each scenario: `occupancy::{book, schedule}` and
//! `presence::{book, churn}`.

use crate::client::Status;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};

/// A change not seen this long after its reply is lost; one with no reply
/// within twice this is unanswered.
pub(super) const WINDOW: Duration = Duration::from_secs(5);

/// A change in flight, as the window sees it.
pub(super) trait InFlight {
    /// When its request was sent, when its reply came (if it has), and
    /// what it adds to `lost` once past the window: the observations of it
    /// still missing.
    fn times(&self) -> (Instant, Option<Instant>, u64);
}

/// A book's changes in flight, by key, and what became of those that left
/// it unseen.
pub(super) struct Flights<K, P> {
    pub(super) pending: HashMap<K, P>,
    /// Observations not made within the window (see [`InFlight::times`]).
    pub(super) lost: u64,
    /// Requests with no reply within twice the window.
    pub(super) unanswered: u64,
}

impl<K, P> Default for Flights<K, P> {
    fn default() -> Self {
        Flights {
            pending: HashMap::new(),
            lost: 0,
            unanswered: 0,
        }
    }
}

/// The changes in flight, as [`Phase`] drives them.
pub(super) trait Window {
    /// Drops the changes past the window: answered ones add their unseen
    /// observations to `lost`, unanswered ones (twice the window after they
    /// were sent) count in `unanswered`.
    fn expire(&mut self, now: Instant);
    /// Changes in flight.
    fn len(&self) -> usize;
    /// The end: whatever is still in flight is lost (or unanswered).
    fn abandon_all(&mut self);
}

impl<K: Eq + Hash, P: InFlight> Window for Flights<K, P> {
    fn expire(&mut self, now: Instant) {
        let (lost, unanswered) = (&mut self.lost, &mut self.unanswered);
        self.pending.retain(|_, p| match p.times() {
            (_, Some(r), unseen) if now.saturating_duration_since(r) > WINDOW => {
                *lost += unseen;
                false
            }
            (sent, None, _) if now.saturating_duration_since(sent) > WINDOW * 2 => {
                *unanswered += 1;
                false
            }
            _ => true,
        });
    }

    fn len(&self) -> usize {
        self.pending.len()
    }

    fn abandon_all(&mut self) {
        for (_, p) in self.pending.drain() {
            match p.times() {
                (_, Some(_), unseen) => self.lost += unseen,
                (_, None, _) => self.unanswered += 1,
            }
        }
    }
}

/// What a churn phase did (the report's `churn.tally`).
#[derive(Default, Serialize)]
pub(super) struct Tally {
    pub(super) joins_sent: u64,
    pub(super) leaves_sent: u64,
    pub(super) joins_ok: u64,
    pub(super) leaves_ok: u64,
    /// Error replies `rate limited` (SPEC §8.4), and the other refusals.
    pub(super) rate_limited: u64,
    pub(super) refused: BTreeMap<String, u64>,
    /// Churners whose socket failed, by error.
    pub(super) churner_errors: BTreeMap<String, u64>,
    /// Ticks that started nothing: no free churner (occupancy: or no free
    /// topic).
    pub(super) skipped: u64,
}

impl Tally {
    pub(super) fn sent(&mut self, join: bool) {
        if join {
            self.joins_sent += 1;
        } else {
            self.leaves_sent += 1;
        }
    }

    pub(super) fn ok(&mut self, join: bool) {
        if join {
            self.joins_ok += 1;
        } else {
            self.leaves_ok += 1;
        }
    }

    /// A reply other than ok.
    pub(super) fn refused(&mut self, status: Status) {
        count_refusal(status, &mut self.rate_limited, &mut self.refused);
    }
}

/// Counts a refusal: `rate limited` apart, the other reasons by reason.
pub(super) fn count_refusal(
    status: Status,
    rate_limited: &mut u64,
    refused: &mut BTreeMap<String, u64>,
) {
    if status.is_rate_limited() {
        *rate_limited += 1;
    } else if let Status::Error(reason) = status {
        *refused.entry(reason).or_default() += 1;
    }
}

/// Whose turn it is: each tick offers every churner once, in order, from
/// the one after the last that started a change.
pub(super) struct Rota {
    count: usize,
    next: usize,
}

impl Rota {
    pub(super) fn new(churners: usize) -> Rota {
        Rota {
            count: churners,
            next: 0,
        }
    }

    /// This tick's order.
    pub(super) fn turn(&self) -> impl Iterator<Item = usize> {
        let (start, count) = (self.next, self.count);
        (0..count).map(move |i| (start + i) % count)
    }

    /// Churner `c` started a change: the next tick begins after it.
    pub(super) fn started(&mut self, c: usize) {
        self.next = (c + 1) % self.count;
    }
}

/// A churn phase's coordinator, as [`Phase`] drives it.
pub(super) trait Coordinator {
    /// What the observers report.
    type Seen;
    /// What the churners answer.
    type Answer;
    /// Churner `c`'s turn: starts a change if it can — a join
    /// (`Some(true)`) or a leave (`Some(false)`) — else `None`.
    fn start(&mut self, c: usize, now: Instant) -> Option<bool>;
    /// A churner's answer.
    fn answer(&mut self, a: Self::Answer);
    /// An observer's report.
    fn seen(&mut self, s: Self::Seen);
    /// Whose turn it is, what the phase did, and the book's changes in
    /// flight.
    fn parts(&mut self) -> (&mut Rota, &mut Tally, &mut dyn Window);

    /// One tick of `--rate`: the churners in turn until one starts a
    /// change; false, and counted as skipped, when none does.
    fn tick(&mut self, now: Instant) -> bool {
        for c in self.parts().0.turn() {
            if let Some(join) = self.start(c, now) {
                let (rota, tally, _) = self.parts();
                rota.started(c);
                tally.sent(join);
                return true;
            }
        }
        self.parts().1.skipped += 1;
        false
    }
}

/// What a churn phase reads — the observers' reports and the churners'
/// answers — and its expiry clock (every 100 ms).
pub(super) struct Phase<S, A> {
    pub(super) seen: mpsc::UnboundedReceiver<S>,
    answers: mpsc::UnboundedReceiver<A>,
    expire: Interval,
}

impl<S, A> Phase<S, A> {
    pub(super) fn new(
        seen: mpsc::UnboundedReceiver<S>,
        answers: mpsc::UnboundedReceiver<A>,
    ) -> Self {
        Phase {
            seen,
            answers,
            expire: tokio::time::interval(Duration::from_millis(100)),
        }
    }

    /// Drives `c` from `start` for `secs` seconds: a tick every 1/`rate` s
    /// (ticks that fall behind are skipped, not made up), the expiry, and
    /// every report and answer as it comes.
    pub(super) async fn churn<C>(&mut self, c: &mut C, start: Instant, rate: f64, secs: f64)
    where
        C: Coordinator<Seen = S, Answer = A>,
    {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let end = start + Duration::from_secs_f64(secs);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end.into()) => break,
                _ = tick.tick() => { c.tick(Instant::now()); }
                Some(s) = self.seen.recv() => c.seen(s),
                Some(a) = self.answers.recv() => c.answer(a),
                _ = self.expire.tick() => c.parts().2.expire(Instant::now()),
            }
        }
    }

    /// After the churn: the changes still in flight get the window (and a
    /// second) to be seen; whatever is left then is abandoned.
    pub(super) async fn drain<C>(&mut self, c: &mut C)
    where
        C: Coordinator<Seen = S, Answer = A>,
    {
        let drain_end = Instant::now() + WINDOW + Duration::from_secs(1);
        while c.parts().2.len() > 0 && Instant::now() < drain_end {
            tokio::select! {
                _ = tokio::time::sleep_until(drain_end.into()) => break,
                Some(s) = self.seen.recv() => c.seen(s),
                Some(a) = self.answers.recv() => c.answer(a),
                _ = self.expire.tick() => c.parts().2.expire(Instant::now()),
            }
        }
        c.parts().2.abandon_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tick_starts_after_the_churner_that_last_started() {
        let mut r = Rota::new(3);
        assert_eq!(r.turn().collect::<Vec<_>>(), [0, 1, 2]);
        r.started(1);
        assert_eq!(r.turn().collect::<Vec<_>>(), [2, 0, 1]);
        r.started(2);
        assert_eq!(r.turn().next(), Some(0));
        assert_eq!(Rota::new(0).turn().count(), 0);
    }

    #[test]
    fn refusals_count_rate_limits_apart() {
        let mut t = Tally::default();
        t.sent(true);
        t.sent(false);
        t.ok(false);
        t.refused(Status::Error("rate limited".into()));
        t.refused(Status::Error("unmatched topic".into()));
        t.refused(Status::Ok);
        assert_eq!(
            (t.joins_sent, t.leaves_sent, t.joins_ok, t.leaves_ok),
            (1, 1, 0, 1)
        );
        assert_eq!(t.rate_limited, 1);
        assert_eq!(t.refused.get("unmatched topic"), Some(&1));
        assert_eq!(t.refused.len(), 1);
    }
}
