//! When a channel or a member counts as arrived or gone (SPEC §10): arrived
//! at once on the first member (or meta) cluster-wide; gone only after
//! staying gone for the vacate delay, so a quick reconnect says nothing.
//! Pure bookkeeping: it is told what this node sees and says what changed.

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
                self.states
                    .insert(key.clone(), State::Leaving(now + self.delay));
                false
            }
            _ => false,
        }
    }

    /// Things gone for the whole delay by `now`: each a `Gone` edge, once.
    pub fn due(&mut self, now: Instant) -> Vec<K> {
        let gone: Vec<K> = self
            .states
            .iter()
            .filter(|(_, s)| matches!(s, State::Leaving(at) if *at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.states.remove(k);
        }
        gone
    }

    /// Every thing known to be here or leaving (looked at again after the
    /// cluster view comes back).
    pub fn known(&self) -> Vec<K> {
        self.states.keys().cloned().collect()
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
        assert_eq!(t.due(t0 + Duration::from_secs(13)), vec!["a"]);
        assert!(t.due(t0 + Duration::from_secs(20)).is_empty(), "once");
        assert!(!t.observe(&"a", false, t0), "absent and gone: nothing");
        assert!(t.observe(&"a", true, t0), "arrived again");
    }
}
