//! The bookkeeping behind `bench webhooks`, apart from any socket: the
//! transitions the client made (SPEC §10) and the events the receiver got,
//! matched at the end.
//!
//! A transition is named by (event name, channel, user_id): in a run each
//! channel is occupied once and vacated once (and with `--presence`, its
//! one user added once and removed once), so that name is unique. Its time
//! is the join's ok reply (occupied, member_added) or the leave's ok reply
//! plus the vacate delay (vacated, member_removed). An event's latency is
//! the time from its transition to its first arrival (0 when it came
//! earlier: counted as `early`). Two arrivals with the same `id` are a
//! redelivery (allowed); two different ids for one transition are a
//! doubled event (not allowed); a transition with no event is lost.
//! Events for channels of this run with no transition are unexpected;
//! events for other channels (an earlier run, another client) are foreign.

use crate::hist::Hist;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

pub(super) const OCCUPIED: &str = "channel_occupied";
pub(super) const VACATED: &str = "channel_vacated";
pub(super) const ADDED: &str = "member_added";
pub(super) const REMOVED: &str = "member_removed";
const NAMES: [&str; 4] = [OCCUPIED, VACATED, ADDED, REMOVED];

/// A webhook POST body: `{"time_ms", "events": [...]}`.
#[derive(Deserialize)]
pub(super) struct Batch {
    #[allow(dead_code)]
    pub(super) time_ms: Option<u64>,
    pub(super) events: Vec<Event>,
}

#[derive(Deserialize, Clone, Debug)]
pub(super) struct Event {
    /// A string or a number: kept as its JSON text.
    pub(super) id: Value,
    pub(super) name: String,
    pub(super) channel: String,
    #[serde(default)]
    pub(super) user_id: Option<String>,
}

type Key = (String, String, Option<String>);

#[derive(Default)]
pub(super) struct Ledger {
    /// Channels of this run start with this.
    ours: String,
    transitions: HashMap<Key, Instant>,
    untracked: HashSet<String>,
    arrivals: HashMap<Key, Vec<(String, Instant)>>,
    ids: HashMap<String, u32>,
    pub(super) posts: u64,
    pub(super) events: u64,
    pub(super) max_batch: usize,
    pub(super) bad_signatures: u64,
    pub(super) bad_bodies: u64,
    pub(super) wrong_content_type: u64,
    pub(super) not_post: u64,
    pub(super) foreign: BTreeMap<String, u64>,
    pub(super) untracked_events: u64,
}

impl Ledger {
    pub(super) fn new(ours: &str) -> Ledger {
        Ledger {
            ours: ours.to_string(),
            ..Ledger::default()
        }
    }

    /// A transition happened (or will have, for a vacate) at `at`.
    pub(super) fn expect(&mut self, name: &str, channel: &str, user: Option<&str>, at: Instant) {
        let key = (
            name.to_string(),
            channel.to_string(),
            user.map(str::to_string),
        );
        self.transitions.insert(key, at);
    }

    /// A channel whose transitions the client cannot time (its socket
    /// failed): its events are neither expected nor unexpected.
    pub(super) fn untrack(&mut self, channel: &str) {
        self.untracked.insert(channel.to_string());
        self.transitions.retain(|(_, c, _), _| c != channel);
    }

    /// One valid, signed POST body, received at `at`.
    pub(super) fn receive(&mut self, batch: Batch, at: Instant) {
        self.posts += 1;
        self.max_batch = self.max_batch.max(batch.events.len());
        for e in batch.events {
            self.events += 1;
            let id = match &e.id {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            *self.ids.entry(id.clone()).or_default() += 1;
            if !e.channel.starts_with(&self.ours) {
                *self.foreign.entry(e.name).or_default() += 1;
                continue;
            }
            if self.untracked.contains(&e.channel) {
                self.untracked_events += 1;
                continue;
            }
            self.arrivals
                .entry((e.name, e.channel, e.user_id))
                .or_default()
                .push((id, at));
        }
    }

    /// Every transition has had an event.
    pub(super) fn all_delivered(&self) -> bool {
        self.transitions
            .keys()
            .all(|k| self.arrivals.contains_key(k))
    }

    #[cfg(test)]
    pub(super) fn expected(&self) -> usize {
        self.transitions.len()
    }

    /// What was expected and what came, per event name and in all.
    pub(super) fn report(&self) -> Value {
        let mut names = serde_json::Map::new();
        let mut all = Hist::default();
        let (mut lost_all, mut doubled_all, mut unexpected_all) = (0u64, 0u64, 0u64);
        for name in NAMES {
            let (mut expected, mut delivered, mut doubled, mut early) = (0u64, 0u64, 0u64, 0u64);
            let mut lat = Hist::default();
            for (key, at) in self.transitions.iter().filter(|(k, _)| k.0 == name) {
                expected += 1;
                let Some(arr) = self.arrivals.get(key) else {
                    continue;
                };
                delivered += 1;
                let first = arr.iter().map(|(_, t)| *t).min().unwrap_or(*at);
                if first < *at {
                    early += 1;
                }
                lat.record(first.saturating_duration_since(*at).as_micros() as u64);
                let distinct: HashSet<&String> = arr.iter().map(|(id, _)| id).collect();
                doubled += distinct.len() as u64 - 1;
            }
            let received: u64 = self
                .arrivals
                .iter()
                .filter(|(k, _)| k.0 == name)
                .map(|(_, a)| a.len() as u64)
                .sum();
            let unexpected = self
                .arrivals
                .keys()
                .filter(|k| k.0 == name && !self.transitions.contains_key(*k))
                .count() as u64;
            all.merge(&lat);
            lost_all += expected - delivered;
            doubled_all += doubled;
            unexpected_all += unexpected;
            names.insert(
                name.to_string(),
                json!({
                    "expected": expected,
                    "received": received,
                    "delivered": delivered,
                    "lost": expected - delivered,
                    "doubled": doubled,
                    "unexpected": unexpected,
                    "early": early,
                    "latency": lat.summary(),
                }),
            );
        }
        let redelivered: u64 = self.ids.values().map(|n| u64::from(n - 1)).sum();
        json!({
            "by_name": names,
            "expected": self.transitions.len(),
            "lost": lost_all,
            "doubled": doubled_all,
            "redelivered": redelivered,
            "unexpected": unexpected_all,
            "exact": lost_all == 0 && doubled_all == 0 && unexpected_all == 0,
            "latency": all.summary(),
            "posts": self.posts,
            "events_received": self.events,
            "max_batch": self.max_batch,
            "bad_signatures": self.bad_signatures,
            "bad_bodies": self.bad_bodies,
            "wrong_content_type": self.wrong_content_type,
            "not_post": self.not_post,
            "foreign": self.foreign,
            "untracked_channels": self.untracked.len(),
            "untracked_events": self.untracked_events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn batch(events: &[(&str, &str, &str, Option<&str>)]) -> Batch {
        let events: Vec<Value> = events
            .iter()
            .map(|(id, name, channel, user)| {
                let mut e = json!({"id": id, "name": name, "channel": channel});
                if let Some(u) = user {
                    e["user_id"] = json!(u);
                }
                e
            })
            .collect();
        serde_json::from_value(json!({"time_ms": 1, "events": events})).unwrap()
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn events_are_matched_to_transitions() {
        let t0 = Instant::now();
        let mut l = Ledger::new("b:wh-1-");
        l.expect(OCCUPIED, "b:wh-1-0", None, ms(t0, 0));
        l.expect(OCCUPIED, "b:wh-1-1", None, ms(t0, 0));
        l.expect(VACATED, "b:wh-1-0", None, ms(t0, 3000));
        l.expect(ADDED, "b:wh-1-0", Some("w0"), ms(t0, 0));
        assert_eq!(l.expected(), 4);
        l.receive(
            batch(&[
                ("e1", OCCUPIED, "b:wh-1-0", None),
                ("e2", ADDED, "b:wh-1-0", Some("w0")),
                ("x1", OCCUPIED, "other:1", None),
            ]),
            ms(t0, 120),
        );
        assert!(!l.all_delivered());
        // A redelivery of e1, a doubled occupied of b:wh-1-0, a vacate
        // 40 ms before its due time, an event for a channel never joined.
        l.receive(
            batch(&[
                ("e1", OCCUPIED, "b:wh-1-0", None),
                ("e3", OCCUPIED, "b:wh-1-0", None),
                ("e4", VACATED, "b:wh-1-0", None),
                ("e5", OCCUPIED, "b:wh-1-9", None),
            ]),
            ms(t0, 2960),
        );
        let r = l.report();
        let occ = &r["by_name"][OCCUPIED];
        assert_eq!(occ["expected"], 2);
        assert_eq!(occ["received"], 4);
        assert_eq!(occ["delivered"], 1);
        assert_eq!(occ["lost"], 1);
        assert_eq!(occ["doubled"], 1);
        assert_eq!(occ["unexpected"], 1);
        assert_eq!(occ["latency"]["max_us"], 120_000);
        let vac = &r["by_name"][VACATED];
        assert_eq!(
            (vac["delivered"].as_u64(), vac["early"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(vac["latency"]["max_us"], 0);
        assert_eq!(r["by_name"][ADDED]["delivered"], 1);
        assert_eq!(r["by_name"][REMOVED]["expected"], 0);
        assert_eq!(r["redelivered"], 1);
        assert_eq!(r["foreign"][OCCUPIED], 1);
        assert_eq!(r["posts"], 2);
        assert_eq!(r["max_batch"], 4);
        assert_eq!(r["events_received"], 7);
        assert_eq!(r["exact"], false);
        assert_eq!(r["latency"]["count"], 3);
        // The lost one arrives: all delivered.
        l.receive(batch(&[("e6", OCCUPIED, "b:wh-1-1", None)]), ms(t0, 200));
        assert!(l.all_delivered());
    }

    #[test]
    fn untracked_channels_are_left_out() {
        let t0 = Instant::now();
        let mut l = Ledger::new("b:wh-1-");
        l.expect(OCCUPIED, "b:wh-1-0", None, t0);
        l.expect(OCCUPIED, "b:wh-1-1", None, t0);
        l.untrack("b:wh-1-1");
        l.receive(
            batch(&[
                ("1", OCCUPIED, "b:wh-1-0", None),
                ("2", VACATED, "b:wh-1-1", None),
            ]),
            t0,
        );
        assert!(l.all_delivered());
        let r = l.report();
        assert_eq!(r["exact"], true, "{r}");
        assert_eq!(r["untracked_events"], 1);
        assert_eq!(r["untracked_channels"], 1);
        // Numeric ids are ids too.
        let b: Batch = serde_json::from_str(
            r#"{"time_ms":5,"events":[{"id":7,"name":"channel_vacated","channel":"b:wh-1-0"}]}"#,
        )
        .unwrap();
        l.receive(b, t0);
        assert_eq!(l.report()["unexpected"], 1);
    }
}
