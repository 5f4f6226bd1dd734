//! When a channel or a member counts as arrived or gone (SPEC §10): arrived
//! at once on the first member (or meta) cluster-wide; gone only after
//! staying gone for the vacate delay, so a quick reconnect says nothing.
//! Pure bookkeeping: it is told what this node sees and says what changed.
//! It remembers when it saw each departure, so that the arbiter can tell a
//! view that was stale (the thing came back elsewhere after this node saw
//! it go) from one that was not.

use std::collections::HashMap;
use std::hash::Hash;
use tokio::time::{Duration, Instant};

enum State {
    Here,
    /// Gone since, pending the delay; back before it passes → nothing.
    Leaving(Instant),
}

/// Arrivals and departures of one kind of thing, keyed by `K`.
pub struct Tracker<K> {
    delay: Duration,
    states: HashMap<K, State>,
}

impl<K: Eq + Hash + Clone> Tracker<K> {
    pub fn new(delay: Duration) -> Tracker<K> {
        Tracker {
            delay,
            states: HashMap::new(),
        }
    }

    /// Notes whether `key` is here now; true when it just arrived.
    pub fn observe(&mut self, key: &K, here: bool, now: Instant) -> bool {
        match (self.states.get(key), here) {
            (None, true) => {
                self.states.insert(key.clone(), State::Here);
                true
            }
            (Some(State::Leaving(_)), true) => {
                self.states.insert(key.clone(), State::Here);
                false
            }
            (Some(State::Here), false) => {
                self.states.insert(key.clone(), State::Leaving(now));
                false
            }
            _ => false,
        }
    }

    /// Things gone for the whole delay by `now`: each a `Gone` edge, once,
    /// with when it was seen gone.
    pub fn due(&mut self, now: Instant) -> Vec<(K, Instant)> {
        let gone: Vec<(K, Instant)> = self
            .states
            .iter()
            .filter_map(|(k, s)| match s {
                State::Leaving(since) if *since + self.delay <= now => Some((k.clone(), *since)),
                _ => None,
            })
            .collect();
        for (k, _) in &gone {
            self.states.remove(k);
        }
        gone
    }

    /// Every thing known to be here or leaving (looked at again after the
    /// cluster view comes back).
    pub fn known(&self) -> Vec<K> {
        self.states.keys().cloned().collect()
    }

    /// Whether `key` is here or leaving.
    pub fn knows(&self, key: &K) -> bool {
        self.states.contains_key(key)
    }

    /// Takes up a thing this node never saw here but the arbiter holds as
    /// arrived (its node died before anyone else saw it): gone as of `now`,
    /// so it leaves after the delay unless it shows up meanwhile. Nothing
    /// for a thing already known.
    pub fn adopt_gone(&mut self, key: K, now: Instant) {
        self.states.entry(key).or_insert(State::Leaving(now));
    }

    /// Every thing known, with when it was seen gone (`None`: here).
    pub fn states(&self) -> impl Iterator<Item = (&K, Option<Instant>)> {
        self.states.iter().map(|(k, s)| match s {
            State::Here => (k, None),
            State::Leaving(since) => (k, Some(*since)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrives_at_once_and_leaves_after_the_delay_unless_back_before() {
        let mut t: Tracker<&str> = Tracker::new(Duration::from_secs(3));
        let t0 = Instant::now();
        assert!(t.observe(&"a", true, t0), "arrived");
        assert!(!t.observe(&"a", true, t0), "still here");
        assert!(!t.observe(&"a", false, t0), "not yet gone");
        assert!(t.due(t0 + Duration::from_secs(2)).is_empty());
        assert!(
            !t.observe(&"a", true, t0 + Duration::from_secs(2)),
            "a quick reconnect"
        );
        assert!(t.due(t0 + Duration::from_secs(10)).is_empty());
        t.observe(&"a", false, t0 + Duration::from_secs(10));
        assert!(t.due(t0 + Duration::from_millis(12_999)).is_empty());
        assert_eq!(
            t.due(t0 + Duration::from_secs(13)),
            vec![("a", t0 + Duration::from_secs(10))]
        );
        assert!(t.due(t0 + Duration::from_secs(20)).is_empty(), "once");
        assert!(!t.observe(&"a", false, t0), "absent and gone: nothing");
        assert!(t.observe(&"a", true, t0), "arrived again");
    }

    #[test]
    fn an_adopted_thing_leaves_after_the_delay_unless_it_shows_up() {
        let mut t: Tracker<&str> = Tracker::new(Duration::from_secs(3));
        let t0 = Instant::now();
        t.adopt_gone("a", t0);
        t.adopt_gone("b", t0);
        assert!(t.knows(&"a"));
        assert!(
            !t.observe(&"b", true, t0 + Duration::from_secs(1)),
            "b shows up: no arrival"
        );
        assert_eq!(t.due(t0 + Duration::from_secs(3)), vec![("a", t0)]);
        assert!(t.due(t0 + Duration::from_secs(9)).is_empty(), "b is here");
        t.observe(&"b", false, t0 + Duration::from_secs(9));
        t.adopt_gone("b", t0 + Duration::from_secs(10));
        let states: Vec<_> = t.states().collect();
        assert_eq!(
            states,
            vec![(&"b", Some(t0 + Duration::from_secs(9)))],
            "known: untouched"
        );
    }
}
