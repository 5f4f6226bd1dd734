//! The channels of SPEC §4: `patterns:stats` (queries answered by reply and
//! push, `stats_update` at join and on the per-node timer, coalesced
//! `stats_changed`), `patterns:stream` (`initial_stats`), `patterns:vsm`
//! (the `subsystem` join param), generic `--allow-topic` topics, and the
//! events every channel answers.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Milliseconds since the epoch of a `YYYY-MM-DDTHH:MM:SS.mmmZ` timestamp.
fn millis(ts: &Value) -> i64 {
    assert_timestamp(ts);
    let s = ts.as_str().unwrap();
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + n(11..13)) * 60 + n(14..16)) * 60_000 + n(17..19) * 1000 + n(20..23)
}

fn assert_monitoring(m: &Value, node: &str) {
    let o = m.as_object().expect("monitoring is an object");
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "memory_bytes",
            "node",
            "uptime_s",
            "version",
            "websocket_connections"
        ],
        "{m}"
    );
    assert_local_stats(&m["websocket_connections"], node);
    assert_eq!(m["node"], node);
    assert!(m["uptime_s"].is_u64(), "{m}");
    assert!(m["memory_bytes"].as_u64().unwrap_or(0) > 0, "{m}");
    assert_eq!(m["version"], env!("CARGO_PKG_VERSION"));
}

fn assert_single_node_cluster_stats(c: &Value, node: &str, local: &Value) {
    for k in [
        "connection_count",
        "stream_count",
        "socket_count",
        "connections_by_topic",
    ] {
        assert_eq!(c[k], local[k], "{k}: cluster {c} vs local {local}");
    }
    assert_eq!(c["total_connections"], local["connection_count"], "{c}");
    assert_eq!(c["cluster_size"], 1, "{c}");
    assert_eq!(c["source"], "local", "{c}");
    assert_eq!(c["degraded"], false, "{c}");
    assert_eq!(c["node"], node, "{c}");
    assert_timestamp(&c["timestamp"]);
    let nodes = c["nodes"].as_object().expect("nodes object");
    assert_eq!(nodes.len(), 1, "{c}");
    let me = &nodes[node];
    for k in ["connection_count", "stream_count", "socket_count"] {
        assert_eq!(me[k], local[k], "nodes.{node}.{k}: {c}");
    }
    assert!(me["age_ms"].is_u64(), "age_ms: {c}");
}

#[tokio::test]
async fn get_local_stats_replies_and_pushes_local_stats() {
    let server = Server::start(&[]);
    for vsn in [Vsn::V1, Vsn::V2] {
        let mut c = client(server.addr, vsn).await;
        c.join_ok(STATS, json!({})).await;
        let r = c.request(STATS, "get_local_stats", json!({})).await;
        let local = r.assert_ok().clone();
        assert_local_stats(&local, &server.node);
        assert!(topic_count(&local, STATS) >= 1, "{local}");
        let pushed = c.expect_event(STATS, "local_stats").await;
        assert_eq!(pushed.payload, local, "push carries the reply's payload");
        assert_eq!(pushed.reference, Value::Null);
    }
}

#[tokio::test]
async fn get_cluster_stats_answers_the_single_node_form_and_pushes_it() {
    let server = Server::start(&[]);
    let mut other = v1(server.addr).await;
    other.join_ok(STREAM, json!({})).await;
    for vsn in [Vsn::V1, Vsn::V2] {
        let mut c = client(server.addr, vsn).await;
        c.join_ok(STATS, json!({})).await;
        let local = c
            .request(STATS, "get_local_stats", json!({}))
            .await
            .assert_ok()
            .clone();
        let r = c.request(STATS, "get_cluster_stats", json!({})).await;
        let cluster = r.assert_ok().clone();
        assert_single_node_cluster_stats(&cluster, &server.node, &local);
        let pushed = c.expect_event(STATS, "cluster_stats").await;
        assert_eq!(pushed.payload, cluster, "push carries the reply's payload");
        c.close().await;
    }
}

#[tokio::test]
async fn stats_update_is_pushed_at_join_and_every_interval_from_one_timer() {
    let server = Server::start(&["--stats-interval-ms", "150"]);
    let mut a = v2(server.addr).await;
    a.send(json!("1"), json!("1"), STATS, "phx_join", json!({}))
        .await;
    let reply = a.next_msg().await;
    assert!(reply.is_reply() && reply.status() == "ok", "{}", reply.raw);
    // Right after the ok: a stats_update that already counts the joiner.
    let first = a.next_msg().await;
    assert_eq!(first.event, "stats_update", "{}", first.raw);
    assert_eq!(first.topic, STATS);
    assert_eq!(first.join_ref, json!("1"));
    let keys: Vec<_> = first.payload.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 2, "{}", first.raw);
    assert_local_stats(&first.payload["connections"], &server.node);
    assert_timestamp(&first.payload["timestamp"]);
    assert_eq!(topic_count(&first.payload["connections"], STATS), 1);

    // A second subscriber, V1.
    let mut b = v1(server.addr).await;
    b.join_ok(STATS, json!({})).await;
    let b_join_update = b.expect_event(STATS, "stats_update").await;
    assert_eq!(topic_count(&b_join_update.payload["connections"], STATS), 2);
    // Then periodic ones; collect a few on each socket.
    let mut b_periodic = Vec::new();
    for _ in 0..3 {
        let m = b.expect_event(STATS, "stats_update").await;
        assert_local_stats(&m.payload["connections"], &server.node);
        assert_eq!(topic_count(&m.payload["connections"], STATS), 2);
        b_periodic.push(m.payload);
    }
    // One timer per node, encoded once: each tick b saw, a saw too, with
    // the very same payload (down to the millisecond timestamps).
    let deadline = Instant::now() + TIMEOUT;
    let mut a_seen = Vec::new();
    for p in &b_periodic {
        while !a_seen.contains(p) {
            assert!(
                Instant::now() < deadline,
                "a never got b's tick {p}; a got {a_seen:?}"
            );
            let m = a.expect_event(STATS, "stats_update").await;
            a_seen.push(m.payload);
        }
    }
    // Distinct ticks carry distinct timestamps.
    assert_ne!(b_periodic[0]["timestamp"], b_periodic[2]["timestamp"]);
}

#[tokio::test]
async fn changes_true_pushes_coalesced_stats_changed_to_those_who_asked() {
    let server = Server::start(&["--allow-topic", "rooms:*"]);
    let mut watcher = v2(server.addr).await;
    watcher.join_ok(STATS, json!({"changes": true})).await;
    let mut plain = v1(server.addr).await;
    plain.join_ok(STATS, json!({})).await;
    let mut churn = v2(server.addr).await;
    // Quiet state first: 2 memberships, 3 sockets.
    loop {
        let m = watcher.expect_event(STATS, "stats_changed").await;
        assert_local_stats(&m.payload, &server.node);
        if m.payload["connection_count"] == 2 && m.payload["socket_count"] == 3 {
            break;
        }
    }
    watcher.take_stash();
    // 61 membership changes spread over about a second (each waits for its
    // reply, then a short pause), so an uncoalesced stream would carry ~61.
    for i in 0..61u32 {
        let r = json!(format!("b{i}"));
        let (topic, event, join_ref) = if i.is_multiple_of(2) {
            (format!("rooms:{}", i % 7), "phx_join", r.clone())
        } else {
            // Leave the room the previous frame joined, with its join_ref.
            let prev = i - 1;
            (
                format!("rooms:{}", prev % 7),
                "phx_leave",
                json!(format!("b{prev}")),
            )
        };
        churn
            .send(join_ref, r.clone(), &topic, event, json!({}))
            .await;
        churn.reply_to(&topic, &r).await.assert_ok();
        tokio::time::sleep(Duration::from_millis(12)).await;
    }
    // Final: churn holds rooms:4 (the 61st change, i = 60, 60 % 7 = 4).
    let final_stats = stats(server.addr).await;
    assert_eq!(final_stats["connection_count"], 3, "{final_stats}");
    assert_eq!(topic_count(&final_stats, "rooms:4"), 1, "{final_stats}");
    assert_eq!(millis(&json!("1970-01-02T00:00:01.500Z")), 86_401_500);
    assert_eq!(millis(&json!("2000-03-01T00:00:00.000Z")), 951_868_800_000);
    let mut stamps = Vec::new();
    loop {
        let m = watcher.expect_event(STATS, "stats_changed").await;
        assert_local_stats(&m.payload, &server.node);
        stamps.push(millis(&m.payload["timestamp"]));
        if m.payload["connection_count"] == 3 && topic_count(&m.payload, "rooms:4") == 1 {
            break;
        }
    }
    // Coalesced: the server stamped consecutive pushes at least 100 ms
    // apart (1 ms for rounding), and far fewer than the 61 changes came.
    for w in stamps.windows(2) {
        assert!(
            w[1] - w[0] >= 99,
            "stats_changed {} ms apart: {stamps:?}",
            w[1] - w[0]
        );
    }
    assert!(stamps.len() < 30, "{} stats_changed", stamps.len());
    // The member without changes:true got none.
    plain
        .request(STATS, "get_local_stats", json!({}))
        .await
        .assert_ok();
    let got: Vec<String> = plain.take_stash().into_iter().map(|m| m.event).collect();
    assert!(
        !got.iter().any(|e| e == "stats_changed"),
        "plain member got stats_changed: {got:?}"
    );
}

#[tokio::test]
async fn stream_join_pushes_initial_stats() {
    let server = Server::start(&[]);
    let mut other = v1(server.addr).await;
    other.join_ok(STATS, json!({})).await;
    let mut members = Vec::new();
    for (i, vsn) in [Vsn::V1, Vsn::V2].into_iter().enumerate() {
        members.push(client(server.addr, vsn).await);
        let c = members.last_mut().unwrap();
        c.join_ok(STREAM, json!({})).await;
        let m = c.expect_event(STREAM, "initial_stats").await;
        let p = &m.payload;
        let mut keys: Vec<_> = p.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["monitoring", "stats", "timestamp"], "{}", m.raw);
        assert_local_stats(&p["stats"], &server.node);
        assert_eq!(
            p["stats"]["stream_count"],
            i as u64 + 1,
            "counts the joiner"
        );
        assert_monitoring(&p["monitoring"], &server.node);
        assert_timestamp(&p["timestamp"]);
        // The initial_stats push is the first message after the reply.
        let first_after = c.take_stash();
        assert!(first_after.is_empty(), "{first_after:?}");
    }
}

#[tokio::test]
async fn vsm_subsystem_param_accepts_all_and_s1_to_s5_in_any_case() {
    let server = Server::start(&[]);
    let ok = [
        json!({}),
        json!({"subsystem": "all"}),
        json!({"subsystem": "ALL"}),
        json!({"subsystem": "All"}),
        json!({"subsystem": "s1"}),
        json!({"subsystem": "S2"}),
        json!({"subsystem": "s3"}),
        json!({"subsystem": "S4"}),
        json!({"subsystem": "s5"}),
    ];
    for params in &ok {
        let mut c = v2(server.addr).await;
        let r = c.join(VSM, params.clone()).await;
        assert_eq!(r.assert_ok(), &json!({}), "{params}");
        c.close().await;
    }
    let bad = [
        json!({"subsystem": "s0"}),
        json!({"subsystem": "s6"}),
        json!({"subsystem": "S10"}),
        json!({"subsystem": "x"}),
        json!({"subsystem": ""}),
        json!({"subsystem": "1"}),
        json!({"subsystem": 3}),
        json!({"subsystem": ["s1"]}),
        json!({"subsystem": " s1"}),
    ];
    let mut c = v1(server.addr).await;
    for params in &bad {
        let r = c.join(VSM, params.clone()).await;
        assert_eq!(
            r.assert_error(),
            &json!({"reason": "invalid subsystem"}),
            "{params}"
        );
    }
    let s = wait_stats(server.addr, "only the refusing socket left", |s| {
        s["socket_count"] == 1
    })
    .await;
    assert_eq!(s["connection_count"], 0, "{s}");
    let m = metrics(server.addr).await;
    assert_eq!(
        m.value(
            "headcount_join_rejections_total",
            &[("reason", "invalid_subsystem")]
        ),
        bad.len() as f64
    );
}

#[tokio::test]
async fn allow_topic_globs_open_generic_channels_counted_like_builtins() {
    let server = Server::start(&[
        "--allow-topic",
        "rooms:*",
        "--allow-topic",
        "exact:one",
        "--allow-topic",
        "a?c:*",
    ]);
    let mut c = v2(server.addr).await;
    for topic in [
        "rooms:lobby",
        "rooms:",
        "rooms:a:b",
        "exact:one",
        "abc:1",
        "axc:",
    ] {
        let r = c.join(topic, json!({"any": "params"})).await;
        assert_eq!(r.assert_ok(), &json!({}), "{topic}");
    }
    for topic in [
        "room:x",
        "exact:one:x",
        "exact:on",
        "ac:1",
        "abbc:1",
        "xrooms:1",
    ] {
        let r = c.join(topic, json!({})).await;
        assert_eq!(
            r.assert_error(),
            &json!({"reason": "unmatched topic"}),
            "{topic}"
        );
    }
    let s = stats(server.addr).await;
    assert_local_stats(&s, &server.node);
    assert_eq!(s["connection_count"], 6, "{s}");
    assert_eq!(topic_count(&s, "rooms:lobby"), 1);
    assert_eq!(topic_count(&s, "exact:one"), 1);
    // Generic topics push nothing after the join.
    c.heartbeat().await;
    assert!(c.take_stash().is_empty());
    // Without --allow-topic nothing generic is joinable.
    let plain = Server::start(&[]);
    let mut d = v1(plain.addr).await;
    let r = d.join("rooms:lobby", json!({})).await;
    assert_eq!(r.assert_error(), &json!({"reason": "unmatched topic"}));
}

#[tokio::test]
async fn every_channel_answers_get_connection_stats_and_get_monitoring() {
    let server = Server::start(&["--allow-topic", "rooms:*"]);
    for vsn in [Vsn::V1, Vsn::V2] {
        let mut c = client(server.addr, vsn).await;
        for topic in [STATS, STREAM, VSM, "rooms:x"] {
            c.join_ok(topic, json!({})).await;
            let r = c.request(topic, "get_connection_stats", json!({})).await;
            let local = r.assert_ok().clone();
            assert_local_stats(&local, &server.node);
            assert!(topic_count(&local, topic) >= 1, "{topic}: {local}");
            let r = c.request(topic, "get_monitoring", json!({})).await;
            let m = r.assert_ok().clone();
            assert_monitoring(&m, &server.node);
            assert!(topic_count(&m["websocket_connections"], topic) >= 1);
        }
        // get_local_stats and get_cluster_stats belong to patterns:stats.
        for topic in [STREAM, VSM, "rooms:x"] {
            let r = c.request(topic, "get_local_stats", json!({})).await;
            assert_eq!(
                r.assert_error(),
                &json!({"reason": "unknown event", "event": "get_local_stats"}),
                "{topic}"
            );
        }
    }
}

#[tokio::test]
async fn uptime_grows_and_memory_is_reported() {
    let server = Server::start(&[]);
    let mut c = v2(server.addr).await;
    c.join_ok(VSM, json!({})).await;
    let first = c
        .request(VSM, "get_monitoring", json!({}))
        .await
        .assert_ok()
        .clone();
    let base = first["uptime_s"].as_u64().expect("uptime_s");
    let later = eventually("uptime_s to grow", || {
        let addr = server.addr;
        async move {
            let mut d = v2(addr).await;
            d.join_ok(VSM, json!({})).await;
            let m = d
                .request(VSM, "get_monitoring", json!({}))
                .await
                .assert_ok()
                .clone();
            d.close().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            (m["uptime_s"].as_u64() > Some(base)).then_some(m)
        }
    })
    .await;
    assert!(later["memory_bytes"].as_u64().unwrap() > 1_000_000);
}
