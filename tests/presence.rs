//! Presence (SPEC §9), black box with raw V2 clients: the exact payloads
//! of `presence_state` and `presence_diff`, diffs coalesced to at most one
//! per 100 ms per topic, `GET /api/presence` and `/api/presence/stats`
//! (and their 400/404), `get_presence_stats`, `users` in `occupancy`
//! pushes, the `headcount_presence_users` metric (built-ins only), and the
//! 500 ms cross-node bound on a real redis-server. The phoenix.js
//! `Presence` class itself is driven by `tests/node/presence.test.js`.

mod cluster_support;
mod common;

use cluster_support::{cluster, Redis};
use common::{get, metrics, v2, Client, Msg, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const ROOM: &str = "rooms:lobby";
const PRESENCE: [&str; 4] = ["--allow-topic", "rooms:*", "--presence-topic", "rooms:*"];
/// SPEC §9.1: at most one `presence_diff` per topic per this, per node.
const DIFF_EVERY: Duration = Duration::from_millis(100);
/// SPEC §9.2: a diff from node A reaches members on node B within this.
const CROSS_NODE: Duration = Duration::from_millis(500);

fn start(extra: &[&str]) -> Server {
    Server::builder()
        .args(PRESENCE)
        .args(extra.iter().copied())
        .start()
}

async fn client(server: &Server) -> Client {
    v2(server.addr).await.with_timeout(Duration::from_secs(5))
}

/// `{KEY: {phx_ref: META}}`: a presence map with the metas' order left out.
type State = BTreeMap<String, BTreeMap<String, Value>>;

/// Checks that `v` is `{KEY: {"metas": [META, …]}, …}` and returns it as a
/// `State`; no phx_ref may appear twice.
fn state_of(v: &Value) -> State {
    let map = v.as_object().unwrap_or_else(|| panic!("not a map: {v}"));
    let mut out = State::new();
    let mut seen = BTreeSet::new();
    for (key, presence) in map {
        let p = presence
            .as_object()
            .unwrap_or_else(|| panic!("{key}: not an object: {v}"));
        assert_eq!(
            p.keys().collect::<Vec<_>>(),
            ["metas"],
            "{key}: only metas: {v}"
        );
        let metas = p["metas"]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: metas not an array: {v}"));
        assert!(!metas.is_empty(), "{key}: no metas: {v}");
        let entry = out.entry(key.clone()).or_default();
        for meta in metas {
            let r = meta["phx_ref"]
                .as_str()
                .unwrap_or_else(|| panic!("{key}: phx_ref not a string: {v}"))
                .to_owned();
            assert!(seen.insert(r.clone()), "phx_ref {r} twice in {v}");
            entry.insert(r, meta.clone());
        }
    }
    out
}

/// Checks the `presence_diff` shape: exactly `joins` and `leaves`, both
/// presence maps.
fn diff_of(v: &Value) -> (State, State) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("diff not an object: {v}"));
    assert_eq!(
        o.keys().collect::<Vec<_>>(),
        ["joins", "leaves"],
        "a diff has joins and leaves, always: {v}"
    );
    (state_of(&o["joins"]), state_of(&o["leaves"]))
}

/// phoenix.js `syncDiff`: joins (by phx_ref) before leaves; a key with no
/// metas left is removed.
fn apply(state: &mut State, diff: &Value) {
    let (joins, leaves) = diff_of(diff);
    for (key, metas) in joins {
        state.entry(key).or_default().extend(metas);
    }
    for (key, metas) in leaves {
        if let Some(current) = state.get_mut(&key) {
            for r in metas.keys() {
                current.remove(r);
            }
            if current.is_empty() {
                state.remove(&key);
            }
        }
    }
}

/// Checks one META of SPEC §9.1 and returns its phx_ref.
fn assert_meta(meta: &Value, node: &str, extra: &[(&str, Value)]) -> String {
    let o = meta
        .as_object()
        .unwrap_or_else(|| panic!("META not an object: {meta}"));
    let mut keys: Vec<&str> = vec!["node", "online_at", "phx_ref"];
    keys.extend(extra.iter().map(|(k, _)| *k));
    keys.sort_unstable();
    assert_eq!(
        o.keys().map(String::as_str).collect::<Vec<_>>(),
        keys,
        "{meta}"
    );
    assert_eq!(meta["node"], node, "{meta}");
    let online = meta["online_at"]
        .as_u64()
        .unwrap_or_else(|| panic!("online_at not unix ms: {meta}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(online <= now + 1000 && online + 60_000 >= now, "{meta}");
    for (k, v) in extra {
        assert_eq!(&meta[*k], v, "{meta}");
    }
    let r = meta["phx_ref"].as_str().expect("phx_ref").to_owned();
    assert!(!r.is_empty());
    r
}

/// Joins `topic` and returns the `presence_state` that follows the reply,
/// checking it is a push (ref null) with this join's join_ref.
async fn join_presence(c: &mut Client, topic: &str, params: Value) -> Value {
    c.join_ok(topic, params).await;
    let join_ref = c.join_ref(topic);
    let msg = c.expect_event(topic, "presence_state").await;
    assert_eq!(
        msg.join_ref, join_ref,
        "presence_state carries the join's join_ref: {}",
        msg.raw
    );
    assert_eq!(msg.reference, Value::Null, "{}", msg.raw);
    msg.payload
}

/// The next `presence_diff` on `topic`, checked for a push with no refs.
async fn next_diff(c: &mut Client, topic: &str) -> Msg {
    let msg = c.expect_event(topic, "presence_diff").await;
    assert_eq!(msg.join_ref, Value::Null, "{}", msg.raw);
    assert_eq!(msg.reference, Value::Null, "{}", msg.raw);
    diff_of(&msg.payload);
    msg
}

/// Applies `c`'s diffs to `state` until `done` holds of it; returns how
/// many diffs that took and when the last arrived.
async fn diffs_until(
    c: &mut Client,
    state: &mut State,
    what: &str,
    done: impl Fn(&State) -> bool,
) -> (usize, Instant) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let mut last = Instant::now();
    while !done(state) {
        assert!(Instant::now() < deadline, "{what}: state {state:?}");
        let msg = next_diff(c, ROOM).await;
        last = Instant::now();
        n += 1;
        apply(state, &msg.payload);
    }
    (n, last)
}

async fn presence_http(server: &Server, route: &str) -> (u16, Value) {
    let r = get(server.addr, route).await;
    (r.status, r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_state_and_presence_diff_have_the_phoenix_shapes() {
    let server = start(&[]);
    let node = server.node.clone();
    let mut alice = client(&server).await;
    let state = join_presence(
        &mut alice,
        ROOM,
        json!({"user_id": "alice", "meta": {"status": "away", "n": [1, 2]}}),
    )
    .await;
    let s = state_of(&state);
    assert_eq!(s.keys().collect::<Vec<_>>(), ["alice"], "{state}");
    let alice_ref = assert_meta(
        &state["alice"]["metas"][0],
        &node,
        &[("meta", json!({"status": "away", "n": [1, 2]}))],
    );
    // Her own join may come again as a diff (a join is idempotent by
    // phx_ref); let it pass before bob comes.
    alice.drain(Duration::from_millis(300)).await;

    let mut bob = client(&server).await;
    let state = join_presence(&mut bob, ROOM, json!({"user_id": "bob"})).await;
    let s = state_of(&state);
    assert_eq!(s.keys().collect::<Vec<_>>(), ["alice", "bob"], "{state}");
    assert_eq!(s["alice"][&alice_ref], alice_state_meta(&state));
    let bob_meta = state["bob"]["metas"][0].clone();
    let bob_ref = assert_meta(&bob_meta, &node, &[]);
    assert_ne!(bob_ref, alice_ref);

    // alice: exactly bob's META as a join, and an empty leaves.
    let diff = next_diff(&mut alice, ROOM).await;
    assert_eq!(
        diff.payload,
        json!({"joins": {"bob": {"metas": [bob_meta.clone()]}}, "leaves": {}}),
        "{}",
        diff.raw
    );
    bob.drain(Duration::from_millis(300)).await;

    // A second tab of bob: the same KEY, its own phx_ref.
    let mut bob2 = client(&server).await;
    let state = join_presence(&mut bob2, ROOM, json!({"user_id": "bob"})).await;
    let s = state_of(&state);
    assert_eq!(s["bob"].len(), 2, "{state}");
    let diff = next_diff(&mut alice, ROOM).await;
    let (joins, leaves) = diff_of(&diff.payload);
    assert!(leaves.is_empty(), "{}", diff.raw);
    let bob2_ref = joins["bob"].keys().next().expect("a meta").clone();
    assert!(bob2_ref != bob_ref && bob2_ref != alice_ref);
    bob2.drain(Duration::from_millis(300)).await;

    // bob's first tab leaves: exactly its META (as joined) under leaves.
    bob.leave(ROOM).await.assert_ok();
    let diff = next_diff(&mut alice, ROOM).await;
    assert_eq!(
        diff.payload,
        json!({"joins": {}, "leaves": {"bob": {"metas": [bob_meta]}}}),
        "{}",
        diff.raw
    );
    // The socket of bob's second tab closes without a close frame.
    bob2.abort();
    let diff = next_diff(&mut alice, ROOM).await;
    let (joins, leaves) = diff_of(&diff.payload);
    assert!(joins.is_empty(), "{}", diff.raw);
    assert_eq!(
        leaves["bob"].keys().collect::<Vec<_>>(),
        [&bob2_ref],
        "{}",
        diff.raw
    );
    assert_eq!(
        state_of(
            &presence_http(&server, "/api/presence?topic=rooms:lobby")
                .await
                .1
        )
        .keys()
        .collect::<Vec<_>>(),
        ["alice"]
    );
}

fn alice_state_meta(state: &Value) -> Value {
    state["alice"]["metas"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_replaces_the_meta_and_other_topics_keep_no_presence() {
    let server = Server::builder()
        .args(PRESENCE)
        .args(["--allow-topic", "plain:*"])
        .start();
    let mut watcher = client(&server).await;
    let mut state = state_of(&join_presence(&mut watcher, ROOM, json!({"user_id": "w"})).await);
    let mut tab = client(&server).await;
    let first = state_of(&join_presence(&mut tab, ROOM, json!({"user_id": "t"})).await);
    let first_ref = first["t"].keys().next().unwrap().clone();
    diffs_until(&mut watcher, &mut state, "t joined", |s| {
        s.contains_key("t")
    })
    .await;

    // A second phx_join of the same topic on the same socket: the old meta
    // leaves, a new one (new phx_ref) joins; never two.
    let second = state_of(&join_presence(&mut tab, ROOM, json!({"user_id": "t"})).await);
    assert_eq!(second["t"].len(), 1, "{second:?}");
    let second_ref = second["t"].keys().next().unwrap().clone();
    assert_ne!(first_ref, second_ref);
    diffs_until(&mut watcher, &mut state, "the rejoin", |s| {
        s.get("t")
            .is_some_and(|m| m.len() == 1 && m.contains_key(&second_ref))
    })
    .await;
    watcher.drain(Duration::from_millis(300)).await;
    assert_eq!(state["t"].len(), 1);

    // A topic that does not keep presence gets no presence push.
    let mut plain = client(&server).await;
    plain.join_ok("plain:x", json!({"user_id": "p"})).await;
    let got = plain.collect_for(Duration::from_millis(400)).await;
    assert!(
        got.iter().all(|m| !m.event.starts_with("presence")),
        "{:?}",
        got.iter().map(|m| &m.raw).collect::<Vec<_>>()
    );
    let (status, _) = presence_http(&server, "/api/presence?topic=plain:x").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_is_a_few_coalesced_diffs_and_the_final_state_is_exact() {
    const N: usize = 30;
    let server = start(&[]);
    let mut watcher = client(&server).await;
    let mut state = state_of(&join_presence(&mut watcher, ROOM, json!({"user_id": "w"})).await);
    watcher.drain(Duration::from_millis(300)).await;
    let mut tabs = Vec::new();
    for _ in 0..N {
        tabs.push(client(&server).await);
    }

    // Every join frame is sent before any reply is awaited.
    let start = Instant::now();
    for (i, tab) in tabs.iter_mut().enumerate() {
        tab.send(
            json!("1"),
            json!("1"),
            ROOM,
            "phx_join",
            json!({"user_id": format!("u{i}")}),
        )
        .await;
    }
    for tab in tabs.iter_mut() {
        tab.reply_to(ROOM, &json!("1")).await.assert_ok();
    }
    let (mut n, mut last) =
        diffs_until(&mut watcher, &mut state, "every join", |s| s.len() == N + 1).await;
    // Anything more would have come by now.
    for m in watcher.collect_for(Duration::from_millis(400)).await {
        if m.event == "presence_diff" {
            n += 1;
            last = Instant::now();
            apply(&mut state, &m.payload);
        }
    }
    let span = last - start;
    let bound = (span.as_millis() / DIFF_EVERY.as_millis()) as usize + 1;
    println!("{N} joins: {n} presence_diff in {span:?} (at most {bound} allowed)");
    assert!(
        n <= bound,
        "{n} diffs in {span:?}: more than one per 100 ms"
    );
    assert!(n < N, "{n} diffs for {N} joins: nothing was coalesced");
    assert_eq!(state.len(), N + 1);
    assert!(state.values().all(|m| m.len() == 1), "{state:?}");
    let (status, http_state) = presence_http(&server, "/api/presence?topic=rooms:lobby").await;
    assert_eq!(status, 200);
    assert_eq!(
        state_of(&http_state),
        state,
        "GET /api/presence is the same"
    );

    // And all of them gone at once (TCP resets): one empty state left.
    let start = Instant::now();
    for tab in tabs {
        tab.abort();
    }
    let (n, last) = diffs_until(&mut watcher, &mut state, "every leave", |s| s.len() == 1).await;
    let span = last - start;
    let bound = (span.as_millis() / DIFF_EVERY.as_millis()) as usize + 1;
    println!("{N} closes: {n} presence_diff in {span:?} (at most {bound} allowed)");
    assert!(
        n <= bound,
        "{n} diffs in {span:?}: more than one per 100 ms"
    );
    assert_eq!(state.keys().collect::<Vec<_>>(), ["w"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_routes_answer_what_a_joiner_gets_and_refuse_without_a_presence_topic() {
    let server = start(&["--allow-topic", "plain:*"]);
    let mut members = Vec::new();
    for (user, meta) in [
        ("a", json!({"x": 1})),
        ("a", json!(null)),
        ("b", json!({"y": "z"})),
    ] {
        let mut c = client(&server).await;
        join_presence(&mut c, ROOM, json!({"user_id": user, "meta": meta})).await;
        members.push(c);
    }
    let mut joiner = client(&server).await;
    let got = join_presence(&mut joiner, ROOM, json!({"user_id": "c"})).await;
    let (status, body) = presence_http(&server, "/api/presence?topic=rooms:lobby").await;
    assert_eq!(status, 200);
    assert_eq!(
        state_of(&body),
        state_of(&got),
        "GET /api/presence = the joiner's presence_state"
    );
    assert_eq!(state_of(&got)["a"].len(), 2);
    let (status, body) = presence_http(&server, "/api/presence/stats?topic=rooms:lobby").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"connections": 4, "users": 3}));
    // The same over the socket, on any channel.
    let r = joiner
        .request(ROOM, "get_presence_stats", json!({"topic": ROOM}))
        .await;
    assert_eq!(r.assert_ok(), &json!({"connections": 4, "users": 3}));
    joiner.join_ok("plain:x", json!({})).await;
    let r = joiner
        .request("plain:x", "get_presence_stats", json!({"topic": ROOM}))
        .await;
    assert_eq!(r.assert_ok(), &json!({"connections": 4, "users": 3}));
    for payload in [json!({"topic": "plain:x"}), json!({}), json!({"topic": 5})] {
        joiner
            .request(ROOM, "get_presence_stats", payload)
            .await
            .assert_error();
    }
    // A presence topic nobody is on.
    let (status, body) = presence_http(&server, "/api/presence?topic=rooms:empty").await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = presence_http(&server, "/api/presence/stats?topic=rooms:empty").await;
    assert_eq!((status, body), (200, json!({"connections": 0, "users": 0})));

    for route in ["/api/presence", "/api/presence/stats"] {
        for (query, want) in [
            ("", 400),
            ("?other=x", 400),
            ("?topic=plain:x", 404),
            ("?topic=patterns:stream", 404),
        ] {
            let (status, body) = presence_http(&server, &format!("{route}{query}")).await;
            assert_eq!(status, want, "{route}{query}: {body}");
            assert!(body["error"].is_string(), "{route}{query}: {body}");
        }
    }
}

/// Reads `c`'s pushes until the last `occupancy` push of ROOM carries
/// `connections` and `users`; panics after `within` with the last one.
async fn wait_occupancy(c: &mut Client, last: &mut Option<Value>, connections: u64, users: u64) {
    let within = Duration::from_secs(2);
    let deadline = Instant::now() + within;
    loop {
        for m in c.collect_for(Duration::from_millis(20)).await {
            if m.event == "occupancy" && m.topic == ROOM {
                *last = Some(m.payload);
            }
        }
        if last
            .as_ref()
            .is_some_and(|p| p["connections"] == connections && p["users"] == users)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no occupancy push with {connections} connections and {users} users within {within:?}; last: {last:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupancy_pushes_carry_users_and_never_stay_behind() {
    // In cluster mode (where a push computed between a membership and its
    // meta was seen), with a short interval so that many changes fit in a
    // few seconds.
    let redis = Redis::start();
    let nodes = cluster(
        &redis,
        1,
        &[PRESENCE.as_slice(), &["--occupancy-interval-ms", "50"]].concat(),
    )
    .await;
    let server = &nodes[0];
    let mut watcher = client(server).await;
    watcher
        .join_ok(ROOM, json!({"user_id": "w", "occupancy": true}))
        .await;
    let mut last = None;
    wait_occupancy(&mut watcher, &mut last, 1, 1).await;
    // One by one, every third a second tab of the user before: after each
    // change the last push must carry both figures (a push computed
    // between a membership and its meta would be left behind).
    let mut tabs = Vec::new();
    let (mut connections, mut users) = (1, 1);
    for i in 0..20 {
        let second_tab = i % 3 == 2;
        let user = format!("u{}", if second_tab { i - 1 } else { i });
        let mut c = client(server).await;
        c.join_ok(ROOM, json!({"user_id": user})).await;
        connections += 1;
        if !second_tab {
            users += 1;
        }
        tabs.push(c);
        wait_occupancy(&mut watcher, &mut last, connections, users).await;
    }
    // And closed one by one, the last joined first.
    for i in (0..20).rev() {
        tabs.pop().expect("a tab").abort();
        connections -= 1;
        if i % 3 != 2 {
            users -= 1;
        }
        wait_occupancy(&mut watcher, &mut last, connections, users).await;
    }
    assert_eq!((connections, users), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_change_without_a_count_change_is_pushed() {
    let server = start(&[]);
    let mut watcher = client(&server).await;
    watcher
        .join_ok(ROOM, json!({"user_id": "w", "occupancy": true}))
        .await;
    let mut a1 = client(&server).await;
    a1.join_ok(ROOM, json!({"user_id": "alice"})).await;
    let mut a2 = client(&server).await;
    a2.join_ok(ROOM, json!({"user_id": "alice"})).await;
    let mut last = None;
    wait_occupancy(&mut watcher, &mut last, 3, 2).await;
    // Within one occupancy interval: alice's second tab leaves and bob
    // joins. connections: 3 → 2 → 3; users: 2 → 2 → 3.
    let mut bob = client(&server).await;
    a2.leave(ROOM).await.assert_ok();
    bob.join_ok(ROOM, json!({"user_id": "bob"})).await;
    let stats = presence_http(&server, "/api/presence/stats?topic=rooms:lobby")
        .await
        .1;
    assert_eq!(stats, json!({"connections": 3, "users": 3}));
    wait_occupancy(&mut watcher, &mut last, 3, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_users_metric_only_for_built_in_presence_topics() {
    let server = Server::builder()
        .args(PRESENCE)
        .args(["--presence-topic", "patterns:*"])
        .start();
    let mut clients = Vec::new();
    for (topic, user) in [
        ("patterns:stream", "alice"),
        ("patterns:stream", "alice"),
        ("patterns:stream", "bob"),
        ("rooms:x", "carol"),
    ] {
        let mut c = client(&server).await;
        let state = join_presence(&mut c, topic, json!({"user_id": user})).await;
        assert!(state.get(user).is_some(), "{state}");
        clients.push(c);
    }
    let m = metrics(server.addr).await;
    assert_eq!(
        m.get("headcount_presence_users", &[("topic", "patterns:stream")]),
        Some(2.0)
    );
    for sample in m.with_name("headcount_presence_users") {
        let topic = sample.labels.get("topic").map(String::as_str).unwrap_or("");
        assert!(
            topic.starts_with("patterns:"),
            "a generic topic got a label: {sample:?}"
        );
    }
    assert!(m
        .get("headcount_presence_users", &[("topic", "rooms:x")])
        .is_none());
    let (_, stats) = presence_http(&server, "/api/presence/stats?topic=rooms:x").await;
    assert_eq!(stats, json!({"connections": 1, "users": 1}));

    // Without patterns:* among the presence topics: no such metric at all.
    let plain = start(&[]);
    let mut c = client(&plain).await;
    c.join_ok("patterns:stream", json!({"user_id": "alice"}))
        .await;
    let m = metrics(plain.addr).await;
    assert!(m.with_name("headcount_presence_users").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_joins_and_leaves_reach_the_other_node_within_500_ms() {
    // The default --node-ttl-ms: a change left for the writer's refresh
    // (every second) would show as a ~1 s delay.
    let redis = Redis::start();
    let nodes = cluster(&redis, 2, &PRESENCE).await;
    let mut watcher = client(&nodes[1]).await;
    let mut state = state_of(&join_presence(&mut watcher, ROOM, json!({"user_id": "w"})).await);
    let mut tab = client(&nodes[0]).await;
    let mut joins = Vec::new();
    let mut leaves = Vec::new();
    for i in 0..20u64 {
        let user = format!("p{i}");
        let at = Instant::now();
        tab.join_ok(ROOM, json!({"user_id": user})).await;
        diffs_until(&mut watcher, &mut state, &format!("{user} joined"), |s| {
            s.contains_key(&user)
        })
        .await;
        joins.push(at.elapsed());
        tokio::time::sleep(Duration::from_millis(20 + 17 * (i % 7))).await;
        let at = Instant::now();
        tab.leave(ROOM).await.assert_ok();
        diffs_until(&mut watcher, &mut state, &format!("{user} left"), |s| {
            !s.contains_key(&user)
        })
        .await;
        leaves.push(at.elapsed());
        tokio::time::sleep(Duration::from_millis(20 + 23 * (i % 5))).await;
    }
    let ms = |v: &[Duration]| v.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
    println!("cross-node joins (ms): {:?}", ms(&joins));
    println!("cross-node leaves (ms): {:?}", ms(&leaves));
    let worst = joins.iter().chain(&leaves).max().copied().unwrap();
    assert!(worst <= CROSS_NODE, "a cross-node change took {worst:?}");
}
