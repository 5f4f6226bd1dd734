//! Occupancy and bounded stats on a single node, black box (SPEC §7): the
//! `occupancy` push after a join and on changes (coalesced per topic),
//! `get_occupancy` and `GET /api/occupancy`, the `prefix`/`limit` filters of
//! stats queries, the topic limit of stats pushes, and `--max-topics`.

mod common;

use common::{
    assert_timestamp, client, get, keys_in_order, metrics, stats, v1, v2, wait_for, Client, Msg,
    Server, Vsn, STATS, STREAM, VSM,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A node with generic `rooms:*` and `other:*` topics and per-socket rate
/// limits out of the way.
fn node(extra: &[&str]) -> Server {
    Server::builder()
        .args(["--allow-topic", "rooms:*", "--allow-topic", "other:*"])
        .args([
            "--max-joins-per-second",
            "100000",
            "--max-joins-burst",
            "100000",
        ])
        .args(["--max-messages-per-second", "1000000"])
        .args(["--max-messages-burst", "1000000"])
        .args(extra.iter().copied())
        .start()
}

fn is_occupancy(m: &Msg, topic: &str) -> bool {
    m.event == "occupancy" && m.topic == topic
}

/// Checks one `occupancy` push: exactly `{"topic","connections","timestamp"}`.
fn check_push(m: &Msg, topic: &str, connections: u64) {
    let p = &m.payload;
    let mut keys: Vec<&String> = p.as_object().expect("payload object").keys().collect();
    keys.sort();
    assert_eq!(keys, ["connections", "timestamp", "topic"], "{}", m.raw);
    assert_eq!(p["topic"], topic, "{}", m.raw);
    assert_eq!(p["connections"], connections, "{}", m.raw);
    assert_timestamp(&p["timestamp"]);
}

/// Joins `topic` with `occupancy: true` and checks the push that follows the
/// reply: nothing before the reply, the figure right after it.
async fn join_watching(c: &mut Client, topic: &str, expected: u64) {
    c.join_ok(topic, json!({"occupancy": true})).await;
    let early: Vec<Msg> = c.take_stash();
    assert!(
        !early.iter().any(|m| is_occupancy(m, topic)),
        "an occupancy push came before the join reply: {:?}",
        early.iter().map(|m| &m.raw).collect::<Vec<_>>()
    );
    // The channel's own after-join push (stats_update, initial_stats) may
    // come first; the occupancy push comes right after, before anything else.
    let mut m = c.next_msg().await;
    if m.event == "stats_update" || m.event == "initial_stats" {
        m = c.next_msg().await;
    }
    assert!(is_occupancy(&m, topic), "after the join reply: {}", m.raw);
    check_push(&m, topic, expected);
}

/// The occupancy figures pushed on `topic` among `msgs`, in order.
fn figures(msgs: &[Msg], topic: &str) -> Vec<u64> {
    msgs.iter()
        .filter(|m| is_occupancy(m, topic))
        .map(|m| m.payload["connections"].as_u64().expect("a count"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_join_gets_the_topic_occupancy_at_once_counting_itself() {
    let server = node(&[]);
    for vsn in [Vsn::V1, Vsn::V2] {
        for (i, topic) in ["rooms:first", STREAM, STATS, VSM].iter().enumerate() {
            let topic = if i == 0 {
                format!("rooms:first-{vsn:?}")
            } else {
                topic.to_string()
            };
            // A member that does not watch is counted too.
            let mut plain = client(server.addr, vsn).await;
            plain.join_ok(&topic, json!({})).await;
            let mut a = client(server.addr, vsn).await;
            join_watching(&mut a, &topic, 2).await;
            let mut b = client(server.addr, Vsn::alternating(i)).await;
            join_watching(&mut b, &topic, 3).await;
            // The first watcher hears of the second; the plain member of
            // nothing.
            let m = a
                .expect("the change pushed to a", |m| {
                    is_occupancy(m, &topic) && m.payload["connections"] == 3
                })
                .await;
            check_push(&m, &topic, 3);
            plain.leave(&topic).await.assert_ok();
            for c in [&mut a, &mut b] {
                c.expect("the leave pushed", |m| {
                    is_occupancy(m, &topic) && m.payload["connections"] == 2
                })
                .await;
            }
            let got = plain.drain(Duration::from_millis(50)).await;
            assert!(
                !got.iter().any(|m| m.event == "occupancy"),
                "a member without occupancy: true got {:?}",
                got.iter().map(|m| &m.raw).collect::<Vec<_>>()
            );
            a.close().await;
            b.close().await;
            plain.close().await;
            wait_for(Duration::from_secs(2), "every socket closed", || async {
                stats(server.addr).await["socket_count"] == 0
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_watcher_is_not_pushed_the_figure_it_was_just_given() {
    // SPEC §7.1: the figure at once, then again whenever the count changes,
    // at most one push per interval per topic. Nothing changed after the
    // join: the occupancy task, which the join also wakes (for the topic's
    // other watchers), must not send this member the figure it already has.
    let server = node(&["--occupancy-interval-ms", "300"]);
    let mut c = v2(server.addr).await;
    join_watching(&mut c, "rooms:lone", 1).await;
    let after = c.collect_for(Duration::from_millis(700)).await;
    assert_eq!(
        figures(&after, "rooms:lone"),
        Vec::<u64>::new(),
        "pushes after the join's own: {:?}",
        after.iter().map(|m| &m.raw).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_is_coalesced_and_the_last_push_has_the_final_figure() {
    let interval = Duration::from_millis(300);
    let server = node(&["--occupancy-interval-ms", "300"]);
    let topic = "rooms:burst";
    let mut watcher = v1(server.addr).await;
    join_watching(&mut watcher, topic, 1).await;
    let mut plain = v2(server.addr).await;
    plain.join_ok(topic, json!({})).await;
    watcher
        .expect("the plain member's join", |m| {
            is_occupancy(m, topic) && m.payload["connections"] == 2
        })
        .await;
    // Let the topic's interval pass, so the burst starts a fresh one.
    watcher.drain(interval + Duration::from_millis(100)).await;

    let mut members: Vec<Client> = Vec::new();
    for _ in 0..14 {
        members.push(v2(server.addr).await);
    }
    // 20 changes: 14 joins and 6 leaves, interleaved.
    let start = Instant::now();
    let mut changes = 0;
    for (i, m) in members.iter_mut().enumerate() {
        m.join_ok(topic, json!({})).await;
        changes += 1;
        if i % 2 == 1 && i < 12 {
            m.leave(topic).await.assert_ok();
            changes += 1;
        }
    }
    let burst = start.elapsed();
    assert_eq!(changes, 20);
    let total = 2 + 14 - 6;
    // Every push up to the final figure, then a quiet period.
    let final_push = watcher
        .expect("the final figure", |m| {
            is_occupancy(m, topic) && m.payload["connections"] == total
        })
        .await;
    let mut pushes: Vec<Msg> = watcher.take_stash();
    pushes.push(final_push);
    let took = start.elapsed();
    pushes.extend(watcher.drain(interval * 2).await);
    let seen = figures(&pushes, topic);
    let allowed = 2 + (burst.as_millis() / interval.as_millis()) as usize;
    println!("burst of {changes} changes in {burst:?}: pushes {seen:?} (allowed {allowed}), final after {took:?}");
    assert!(
        !seen.is_empty() && seen.len() <= allowed,
        "pushes {seen:?}, allowed {allowed}"
    );
    assert_eq!(
        seen.last(),
        Some(&total),
        "the last push has the final figure"
    );
    // Coalesced to at most one per interval: the final figure cannot come
    // sooner than one interval after the first push of the burst, nor much
    // later than the burst's end plus one interval.
    assert!(
        took <= burst + interval + Duration::from_millis(500),
        "{took:?}"
    );
    // Nobody without occupancy: true got an occupancy push.
    for c in members.iter_mut().chain(std::iter::once(&mut plain)) {
        let got = c.drain(Duration::from_millis(20)).await;
        assert!(
            !got.iter().any(|m| m.event == "occupancy"),
            "{:?}",
            got.iter().map(|m| &m.raw).collect::<Vec<_>>()
        );
    }
}

/// The figures of one topic in a `get_occupancy` answer.
fn check_topic(v: &Value, topic: &str, node: &str, n: u64) {
    let t = &v["topics"][topic];
    let nodes = if n == 0 {
        json!({})
    } else {
        json!({ node: n })
    };
    assert_eq!(
        *t,
        json!({"connections": n, "nodes": nodes}),
        "{topic}: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_occupancy_answers_on_any_channel_and_over_http() {
    let server = node(&[]);
    let node_name = server.node.clone();
    let mut members = Vec::new();
    for i in 0..3 {
        let mut c = v2(server.addr).await;
        c.join_ok("rooms:a", json!({})).await;
        if i == 0 {
            c.join_ok("rooms:b", json!({})).await;
        }
        members.push(c);
    }
    let asked = json!({"topics": ["rooms:a", "rooms:b", "rooms:nobody", "rooms:a"]});
    for (vsn, topic) in [(Vsn::V1, VSM), (Vsn::V2, STATS), (Vsn::V1, "rooms:a")] {
        let mut c = client(server.addr, vsn).await;
        c.join_ok(topic, json!({})).await;
        let reply = c.request(topic, "get_occupancy", asked.clone()).await;
        let v = reply.assert_ok();
        let mut keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["degraded", "source", "timestamp", "topics"], "{v}");
        assert_eq!(v["source"], "local", "{v}");
        assert_eq!(v["degraded"], false, "{v}");
        assert_timestamp(&v["timestamp"]);
        let mine = u64::from(topic == "rooms:a");
        check_topic(v, "rooms:a", &node_name, 3 + mine);
        check_topic(v, "rooms:b", &node_name, 1);
        check_topic(v, "rooms:nobody", &node_name, 0);
        assert_eq!(v["topics"].as_object().map(|o| o.len()), Some(3), "{v}");

        let bad: Vec<Value> = vec![
            json!({"topics": []}),
            json!({"topics": (0..101).map(|i| format!("rooms:{i}")).collect::<Vec<_>>()}),
            json!({"topics": "rooms:a"}),
            json!({"topics": ["rooms:a", 1]}),
            json!({"topics": [null]}),
            json!({}),
            json!("rooms:a"),
        ];
        for payload in bad {
            let reply = c.request(topic, "get_occupancy", payload.clone()).await;
            assert_eq!(
                *reply.assert_error(),
                json!({"reason": "bad topics"}),
                "{payload}"
            );
        }
        let hundred: Vec<String> = (0..100).map(|i| format!("rooms:{i}")).collect();
        let reply = c
            .request(topic, "get_occupancy", json!({ "topics": hundred }))
            .await;
        assert_eq!(
            reply.assert_ok()["topics"].as_object().map(|o| o.len()),
            Some(100)
        );
        c.close().await;
    }
    wait_for(Duration::from_secs(2), "the queriers gone", || async {
        stats(server.addr).await["connection_count"] == 4
    })
    .await;

    let res = get(
        server.addr,
        "/api/occupancy?topic=rooms:a&topic=rooms%3Ab&topic=rooms:nobody",
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    assert_eq!(v["source"], "local", "{v}");
    assert_eq!(v["degraded"], false, "{v}");
    assert_timestamp(&v["timestamp"]);
    check_topic(&v, "rooms:a", &node_name, 3);
    check_topic(&v, "rooms:b", &node_name, 1);
    check_topic(&v, "rooms:nobody", &node_name, 0);
    let mut keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    keys.sort();
    assert_eq!(keys, ["degraded", "source", "timestamp", "topics"], "{v}");
    let many: String = (0..101)
        .map(|i| format!("topic=rooms:{i}"))
        .collect::<Vec<_>>()
        .join("&");
    for path in [
        "/api/occupancy".to_owned(),
        "/api/occupancy?topics=rooms:a".to_owned(),
        format!("/api/occupancy?{many}"),
    ] {
        let res = get(server.addr, &path).await;
        assert_eq!(res.status, 400, "{path}: {}", res.text());
    }
}

/// Members per topic, made of sockets that each join some of them.
async fn populate(server: &Server, topics: &[(&str, usize)]) -> Vec<Client> {
    let most = topics.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let mut sockets = Vec::new();
    for i in 0..most {
        let mut c = v2(server.addr).await;
        for (t, n) in topics {
            if i < *n {
                c.join_ok(t, json!({})).await;
            }
        }
        sockets.push(c);
    }
    sockets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_queries_filter_by_prefix_and_limit_largest_first() {
    let server = node(&[]);
    let me = server.node.clone();
    // 11 memberships on 5 topics, 4 sockets.
    let _members = populate(
        &server,
        &[
            ("rooms:a", 3),
            ("rooms:b", 1),
            ("rooms:c", 2),
            ("other:x", 4),
            ("rooms:d", 1),
        ],
    )
    .await;
    let mut c = v1(server.addr).await;
    c.join_ok(STATS, json!({})).await;
    // Now 12 memberships on 6 topics, 5 sockets.
    let (connections, sockets, topics) = (12, 5, 6);
    let cases: [(Value, &str, &[&str], u64); 5] = [
        (
            json!({"prefix": "rooms:", "limit": 2}),
            "prefix=rooms:&limit=2",
            &["rooms:a", "rooms:c"],
            2,
        ),
        (
            json!({"limit": 3}),
            "limit=3",
            &["other:x", "rooms:a", "rooms:c"],
            3,
        ),
        // Ties (1 each) by name.
        (
            json!({"prefix": "rooms:", "limit": 4}),
            "prefix=rooms%3A&limit=4",
            &["rooms:a", "rooms:c", "rooms:b", "rooms:d"],
            0,
        ),
        (
            json!({"prefix": "rooms:"}),
            "prefix=rooms:",
            &["rooms:a", "rooms:b", "rooms:c", "rooms:d"],
            0,
        ),
        (
            json!({"prefix": "zzz", "limit": 5}),
            "prefix=zzz&limit=5",
            &[],
            0,
        ),
    ];
    for (payload, query, kept, omitted) in cases {
        let check = |raw: &str, path: &[&str], v: &Value| {
            assert_eq!(keys_in_order(raw, path), kept, "{payload}: {raw}");
            assert_eq!(v["topics_omitted"], omitted, "{payload}: {v}");
            assert_eq!(v["connection_count"], connections, "{payload}: {v}");
            assert_eq!(v["socket_count"], sockets, "{payload}: {v}");
            for t in kept {
                assert!(v["connections_by_topic"][t][&me].as_u64() > Some(0), "{v}");
            }
        };
        for event in ["get_local_stats", "get_cluster_stats"] {
            let reply = c.request(STATS, event, payload.clone()).await;
            let v = reply.assert_ok().clone();
            check(
                &reply.msg.raw,
                &["payload", "response", "connections_by_topic"],
                &v,
            );
            if event == "get_cluster_stats" {
                assert_eq!(v["nodes"][&me]["connection_count"], connections, "{v}");
                assert_eq!(v["total_connections"], connections, "{v}");
            }
            // The push of the same answer carries the same filter.
            let push_event = event.trim_start_matches("get_");
            let push = c.expect_event(STATS, push_event).await;
            check(
                &push.raw,
                &["payload", "connections_by_topic"],
                &push.payload,
            );
        }
        for path in ["/api/stats", "/api/stats/cluster"] {
            let res = get(server.addr, &format!("{path}?{query}")).await;
            assert_eq!(res.status, 200, "{path}?{query}: {}", res.text());
            check(&res.text(), &["connections_by_topic"], &res.json());
        }
    }
    // No filter: every topic, nothing omitted.
    let v = stats(server.addr).await;
    assert_eq!(
        v["connections_by_topic"].as_object().map(|o| o.len()),
        Some(topics)
    );
    assert_eq!(v["topics_omitted"], 0, "{v}");

    for bad in [
        json!({"limit": 0}),
        json!({"limit": 100001}),
        json!({"limit": "x"}),
        json!({"limit": -1}),
        json!({"limit": 2.5}),
    ] {
        for event in ["get_local_stats", "get_cluster_stats"] {
            let reply = c.request(STATS, event, bad.clone()).await;
            let r = reply.assert_error();
            assert_eq!(*r, json!({"reason": "bad limit"}), "{event} {bad}");
        }
    }
    let reply = c
        .request(STATS, "get_local_stats", json!({"prefix": 5}))
        .await;
    reply.assert_error();
    for path in ["/api/stats", "/api/stats/cluster"] {
        for q in ["limit=0", "limit=100001", "limit=x", "limit="] {
            let res = get(server.addr, &format!("{path}?{q}")).await;
            assert_eq!(res.status, 400, "{path}?{q}: {}", res.text());
        }
        let res = get(server.addr, &format!("{path}?limit=100000")).await;
        assert_eq!(res.status, 200, "{path}?limit=100000: {}", res.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_pushes_carry_at_most_the_topic_limit_largest_first() {
    let server = node(&["--stats-topic-limit", "3", "--stats-interval-ms", "200"]);
    let me = server.node.clone();
    // 8 topics, 20 memberships, then a vsm member: 9 topics.
    let mut members = populate(
        &server,
        &[
            ("rooms:a", 6),
            ("rooms:b", 5),
            ("rooms:c", 4),
            ("rooms:d", 1),
            ("rooms:e", 1),
            ("rooms:f", 1),
            ("rooms:g", 1),
            ("rooms:h", 1),
        ],
    )
    .await;
    let mut vsm = v2(server.addr).await;
    vsm.join_ok(VSM, json!({})).await;
    let largest = ["rooms:a", "rooms:b", "rooms:c"];
    let check = |m: &Msg, path: &[&str], connections: u64| {
        assert_eq!(keys_in_order(&m.raw, path), largest, "{}", m.raw);
        let mut v = &m.payload;
        for p in &path[1..path.len() - 1] {
            v = &v[*p];
        }
        assert_eq!(v["topics_omitted"], 7, "{}", m.raw);
        assert_eq!(v["connection_count"], connections, "{}", m.raw);
        assert_eq!(v["connections_by_topic"]["rooms:a"][&me], 6, "{}", m.raw);
    };
    // The stats member makes 10 topics, 22 memberships.
    let mut s = v1(server.addr).await;
    s.join_ok(STATS, json!({"changes": true})).await;
    let first = s.expect_event(STATS, "stats_update").await;
    check(
        &first,
        &["payload", "connections", "connections_by_topic"],
        22,
    );
    let t = Instant::now();
    let periodic = s.expect_event(STATS, "stats_update").await;
    assert!(t.elapsed() < Duration::from_secs(2));
    check(
        &periodic,
        &["payload", "connections", "connections_by_topic"],
        22,
    );

    // The vsm member leaves and a stream member joins: 10 topics again.
    vsm.leave(VSM).await.assert_ok();
    let mut stream = v1(server.addr).await;
    stream.join_ok(STREAM, json!({})).await;
    let initial = stream.expect_event(STREAM, "initial_stats").await;
    check(&initial, &["payload", "stats", "connections_by_topic"], 22);
    check(
        &initial,
        &[
            "payload",
            "monitoring",
            "websocket_connections",
            "connections_by_topic",
        ],
        22,
    );
    let changed = s
        .expect("stats_changed with the stream member", |m| {
            m.event == "stats_changed"
                && m.payload["connection_count"] == 22
                && m.payload["stream_count"] == 1
        })
        .await;
    check(&changed, &["payload", "connections_by_topic"], 22);
    // A query without a limit still lists every topic.
    let reply = s.request(STATS, "get_local_stats", json!({})).await;
    let v = reply.assert_ok();
    assert_eq!(
        v["connections_by_topic"].as_object().map(|o| o.len()),
        Some(10),
        "{v}"
    );
    assert_eq!(v["topics_omitted"], 0, "{v}");
    members.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_topics_refuses_a_new_topic_but_not_members_of_held_ones() {
    let server = node(&["--max-topics", "3"]);
    let rejections = |m: &common::Metrics| {
        m.value(
            "headcount_join_rejections_total",
            &[("reason", "too_many_topics")],
        )
    };
    assert_eq!(rejections(&metrics(server.addr).await), 0.0);
    let mut a = v1(server.addr).await;
    for t in ["rooms:1", "rooms:2", "rooms:3"] {
        a.join_ok(t, json!({})).await;
    }
    let reply = a.join("rooms:4", json!({})).await;
    assert_eq!(*reply.assert_error(), json!({"reason": "too many topics"}));
    // Nothing counted, and the socket is not a member.
    let v = stats(server.addr).await;
    assert_eq!(v["connection_count"], 3, "{v}");
    assert!(v["connections_by_topic"].get("rooms:4").is_none(), "{v}");
    let reply = a
        .request("rooms:4", "get_occupancy", json!({"topics": ["x"]}))
        .await;
    assert_eq!(*reply.assert_error(), json!({"reason": "unmatched topic"}));
    // Built-in topics are topics too.
    let mut b = v2(server.addr).await;
    let reply = b.join(STATS, json!({})).await;
    assert_eq!(*reply.assert_error(), json!({"reason": "too many topics"}));
    // Members of held topics still join, and a rejoin of a topic this
    // socket alone holds replaces the membership.
    b.join_ok("rooms:1", json!({})).await;
    a.join_ok("rooms:3", json!({})).await;
    let v = stats(server.addr).await;
    assert_eq!(v["connection_count"], 4, "{v}");
    assert_eq!(v["connections_by_topic"]["rooms:1"][&server.node], 2, "{v}");
    let m = metrics(server.addr).await;
    assert_eq!(rejections(&m), 2.0);
    // Once a topic empties, a new one can join.
    a.leave("rooms:3").await.assert_ok();
    a.join_ok("rooms:4", json!({"occupancy": true})).await;
    let v = stats(server.addr).await;
    assert_eq!(v["connection_count"], 4, "{v}");
    assert_eq!(v["connections_by_topic"]["rooms:4"][&server.node], 1, "{v}");
    assert_eq!(rejections(&metrics(server.addr).await), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_occupancy_push_ever_precedes_the_join_reply() {
    // The member is in the registry before its reply is queued; the
    // occupancy task must not get a push to it in between.
    let server = node(&[]);
    let mut c = v2(server.addr).await;
    let mut early = 0;
    for i in 0..200 {
        let topic = format!("rooms:order-{}", i % 50);
        c.join_ok(&topic, json!({"occupancy": true})).await;
        let stash = c.take_stash();
        early += stash.iter().filter(|m| is_occupancy(m, &topic)).count();
        c.leave(&topic).await.assert_ok();
    }
    assert_eq!(
        early, 0,
        "occupancy pushes that came before their join reply"
    );
}
