//! Presence without sockets: local tracking, remote changes and snapshots,
//! diffs as phoenix.js applies them, hiding the other nodes, count-only.

use super::*;
use serde_json::{json, Map, Value};

fn presence(max: usize) -> Arc<Presence> {
    Presence::new("a@h", Globs::new(&["rooms:*"]), max, "a/1", true)
}

fn join(p: &Arc<Presence>, topic: &str, user: &str) -> Tracked {
    let params: Map<String, Value> = json!({"user_id": user}).as_object().cloned().unwrap();
    let j = joining(None, None, &params, 1).unwrap();
    p.track(&Arc::from(topic), j)
}

/// Applies flushes the way phoenix.js does (joins, then leaves, by ref).
#[derive(Default, Debug)]
struct Client(HashMap<String, Vec<Value>>);

impl Client {
    fn state(&mut self, payload: &str) {
        let v: Value = serde_json::from_str(payload).unwrap();
        self.0 = v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, p)| (k.clone(), p["metas"].as_array().unwrap().clone()))
            .collect();
    }

    fn diff(&mut self, payload: &str) {
        let v: Value = serde_json::from_str(payload).unwrap();
        for (key, p) in v["joins"].as_object().unwrap() {
            let metas = self.0.entry(key.clone()).or_default();
            for m in p["metas"].as_array().unwrap() {
                metas.retain(|old| old["phx_ref"] != m["phx_ref"]);
                metas.push(m.clone());
            }
        }
        for (key, p) in v["leaves"].as_object().unwrap() {
            if let Some(metas) = self.0.get_mut(key) {
                for m in p["metas"].as_array().unwrap() {
                    metas.retain(|old| old["phx_ref"] != m["phx_ref"]);
                }
                if metas.is_empty() {
                    self.0.remove(key);
                }
            }
        }
    }

    fn apply(&mut self, flushes: Vec<(Arc<str>, Flush)>) {
        for (_, f) in flushes {
            match f {
                Flush::Diff(d) => self.diff(&d),
                Flush::State(s) => self.state(&s),
                Flush::Counts => {}
            }
        }
    }

    fn users(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> =
            self.0.iter().map(|(k, m)| (k.clone(), m.len())).collect();
        v.sort();
        v
    }
}

#[test]
fn three_tabs_of_one_user_are_one_key_with_three_metas() {
    let p = presence(100);
    assert!(p.covers("rooms:1") && !p.covers("other"));
    let tabs: Vec<Tracked> = (0..3).map(|_| join(&p, "rooms:1", "alice")).collect();
    let bob = join(&p, "rooms:1", "bob");
    let mut c = Client::default();
    c.state(&p.state("rooms:1"));
    assert_eq!(c.users(), [("alice".into(), 3), ("bob".into(), 1)]);
    assert_eq!(p.counts("rooms:1"), (4, 2));
    let meta = &c.0["bob"][0];
    assert_eq!(meta["node"], "a@h");
    assert!(meta["phx_ref"].is_string() && meta["online_at"].is_u64());
    drop(bob);
    c.apply(p.flush());
    assert_eq!(c.users(), [("alice".into(), 3)]);
    drop(tabs);
    c.apply(p.flush());
    assert!(c.users().is_empty());
    assert!(p.flush().is_empty(), "nothing left to say");
}

#[test]
fn a_join_and_leave_in_one_window_still_reach_a_member_who_saw_the_join() {
    let p = presence(100);
    let _anchor = join(&p, "rooms:1", "x");
    let mut before = Client::default();
    before.state(&p.state("rooms:1"));
    let _ = p.flush();
    let brief = join(&p, "rooms:1", "brief");
    // A member joining now sees `brief` in its state...
    let mut joiner = Client::default();
    joiner.state(&p.state("rooms:1"));
    drop(brief);
    // ...and both see it gone after the next diff.
    let flushed = p.flush();
    let diffs: Vec<String> = flushed
        .iter()
        .filter_map(|(_, f)| match f {
            Flush::Diff(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    for d in &diffs {
        joiner.diff(d);
        before.diff(d);
    }
    assert_eq!(joiner.users(), [("x".into(), 1)]);
    assert_eq!(before.users(), [("x".into(), 1)]);
}

#[test]
fn remote_changes_snapshots_and_hiding_the_other_nodes() {
    let p = presence(100);
    let _mine = join(&p, "rooms:1", "alice");
    let meta = |r: &str| {
        RawValue::from_string(json!({"phx_ref": r, "node": "b@h", "online_at": 1}).to_string())
            .unwrap()
    };
    let change = |r: &str, key: Option<&str>| Outgoing {
        topic: Arc::from("rooms:1"),
        phx_ref: Arc::from(r),
        join: key.map(|k| (Arc::from(k), meta(r))),
    };
    let mut c = Client::default();
    c.state(&p.state("rooms:1"));
    p.apply_remote(
        "b@h",
        false,
        vec![change("b.1", Some("alice")), change("b.2", Some("carol"))],
    );
    c.apply(p.flush());
    assert_eq!(c.users(), [("alice".into(), 2), ("carol".into(), 1)]);
    // A ref no headcount writes is not a change of this cluster.
    p.apply_remote("b@h", false, vec![change("b-9", Some("eve"))]);
    assert!(p.flush().is_empty());
    assert!(!p.present("rooms:1", "eve"));
    assert_eq!(
        p.counts("rooms:1"),
        (3, 2),
        "alice on two nodes is one user"
    );
    // A snapshot of b: b2 gone, b3 new, b1 unchanged (not re-sent).
    p.apply_remote(
        "b@h",
        true,
        vec![change("b.1", Some("alice")), change("b.3", Some("dave"))],
    );
    let flushed = p.flush();
    assert_eq!(flushed.len(), 1);
    if let Flush::Diff(d) = &flushed[0].1 {
        assert!(!d.contains("\"b.1\""), "b1 was known: {d}");
    }
    c.apply(flushed);
    assert_eq!(c.users(), [("alice".into(), 2), ("dave".into(), 1)]);
    // Redis down: local only; back: everything again.
    p.show_remote(false);
    c.apply(p.flush());
    assert_eq!(c.users(), [("alice".into(), 1)]);
    assert_eq!(p.counts("rooms:1"), (1, 1));
    let mut fresh = Client::default();
    fresh.state(&p.state("rooms:1"));
    assert_eq!(fresh.users(), [("alice".into(), 1)]);
    p.show_remote(true);
    c.apply(p.flush());
    assert_eq!(c.users(), [("alice".into(), 2), ("dave".into(), 1)]);
    p.remove_node("b@h");
    c.apply(p.flush());
    assert_eq!(c.users(), [("alice".into(), 1)]);
    assert_eq!(p.counts("rooms:1"), (1, 1));
}

#[test]
fn local_changes_go_out_once_and_a_full_write_carries_them_all() {
    let p = presence(100);
    let a = join(&p, "rooms:1", "alice");
    let _b = join(&p, "rooms:2", "bob");
    let out = p.take_outgoing();
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|o| o.join.is_some()));
    drop(a);
    let out = p.take_outgoing();
    assert_eq!(out.len(), 1);
    assert!(out[0].join.is_none());
    let all = p.local_all();
    assert_eq!(all.len(), 1);
    assert_eq!(&*all[0].topic, "rooms:2");
}

#[test]
fn a_crowded_topic_turns_count_only_and_back_below_ninety_percent() {
    let p = presence(10);
    let mut c = Client::default();
    let mut tabs: Vec<Tracked> = (0..10)
        .map(|i| join(&p, "rooms:1", &format!("u{i}")))
        .collect();
    c.apply(p.flush());
    assert_eq!(c.users().len(), 10);
    tabs.push(join(&p, "rooms:1", "u10"));
    let flushed = p.flush();
    assert!(matches!(&flushed[0].1, Flush::State(s) if s == "{}"));
    // Members also get the figures, instead of the diff of that join.
    assert!(matches!(flushed[1].1, Flush::Counts));
    c.apply(flushed);
    assert!(c.users().is_empty());
    assert!(p.count_only("rooms:1"));
    assert_eq!(p.state("rooms:1"), "{}");
    tabs.push(join(&p, "rooms:1", "u11"));
    assert!(matches!(p.flush()[0].1, Flush::Counts));
    assert_eq!(p.counts("rooms:1"), (12, 12));
    // 9 of 10 is not below 90 %; 8 is.
    tabs.truncate(9);
    let _ = p.flush();
    assert!(p.count_only("rooms:1"));
    tabs.truncate(8);
    let flushed = p.flush();
    assert!(matches!(&flushed[0].1, Flush::State(s) if s != "{}"));
    c.apply(flushed);
    assert_eq!(c.users().len(), 8);
}
