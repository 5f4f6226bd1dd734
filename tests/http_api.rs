//! The HTTP side of a node (SPEC §6.2) on the WebSocket port: `/api/stats`,
//! `/api/stats/cluster`, `/metrics` (Prometheus text whose figures equal
//! `/api/stats`, with only built-in topic labels), `/healthz`, `/readyz`.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn api_stats_is_local_stats() {
    let server = Server::start(&["--allow-topic", "rooms:*"]);
    let empty = stats(server.addr).await;
    assert_local_stats(&empty, &server.node);
    assert_eq!(empty["connection_count"], 0);
    assert_eq!(empty["socket_count"], 0);
    assert_eq!(empty["connections_by_topic"], json!({}));
    let res = get(server.addr, "/api/stats").await;
    assert!(
        res.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{:?}",
        res.headers
    );
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("*"),
        "a page on another origin may read the figures"
    );

    let mut a = v1(server.addr).await;
    a.join_ok(STREAM, json!({})).await;
    a.join_ok("rooms:1", json!({})).await;
    let mut b = v2(server.addr).await;
    b.join_ok(STREAM, json!({})).await;
    b.join_ok(STATS, json!({})).await;
    let s = stats(server.addr).await;
    assert_local_stats(&s, &server.node);
    assert_eq!(s["connection_count"], 4);
    assert_eq!(s["stream_count"], 2);
    assert_eq!(s["socket_count"], 2);
    assert_eq!(
        s["connections_by_topic"],
        json!({
            "patterns:stream": {(server.node.clone()): 2},
            "patterns:stats": {(server.node.clone()): 1},
            "rooms:1": {(server.node.clone()): 1},
        })
    );
}

#[tokio::test]
async fn api_stats_cluster_is_the_single_node_cluster_form() {
    let server = Server::start(&[]);
    let mut a = v2(server.addr).await;
    a.join_ok(STREAM, json!({})).await;
    let local = stats(server.addr).await;
    let res = get(server.addr, "/api/stats/cluster").await;
    assert_eq!(res.status, 200);
    let c = res.json();
    for k in [
        "connection_count",
        "stream_count",
        "socket_count",
        "connections_by_topic",
    ] {
        assert_eq!(c[k], local[k], "{k}: {c}");
    }
    assert_eq!(c["total_connections"], 1, "{c}");
    assert_eq!(c["cluster_size"], 1, "{c}");
    assert_eq!(c["source"], "local", "{c}");
    assert_eq!(c["degraded"], false, "{c}");
    assert_eq!(c["node"], server.node.as_str(), "{c}");
    assert!(c.get("error").is_none(), "no error when not degraded: {c}");
    assert_timestamp(&c["timestamp"]);
    let me = &c["nodes"][&server.node];
    assert_eq!(me["connection_count"], 1, "{c}");
    assert_eq!(me["stream_count"], 1, "{c}");
    assert_eq!(me["socket_count"], 1, "{c}");
    assert!(me["age_ms"].is_u64(), "{c}");
    assert_eq!(c["nodes"].as_object().unwrap().len(), 1);
}

const REQUIRED_METRICS: [&str; 9] = [
    "headcount_sockets",
    "headcount_memberships",
    "headcount_topic_memberships",
    "headcount_topics",
    "headcount_joins_total",
    "headcount_leaves_total",
    "headcount_join_rejections_total",
    "headcount_frames_rejected_total",
    "headcount_slow_consumer_closes_total",
];

/// Checks every figure `/metrics` shares with `/api/stats`.
async fn assert_metrics_match_stats(server: &Server) -> Metrics {
    let m = metrics(server.addr).await;
    let s = stats(server.addr).await;
    assert_eq!(
        m.get("headcount_sockets", &[]),
        s["socket_count"].as_f64(),
        "{s}\n{}",
        m.text
    );
    assert_eq!(
        m.get("headcount_memberships", &[]),
        s["connection_count"].as_f64(),
        "{s}\n{}",
        m.text
    );
    assert_eq!(
        m.get("headcount_topics", &[]),
        Some(topic_counts(&s).len() as f64),
        "{s}\n{}",
        m.text
    );
    for topic in [STATS, STREAM, VSM] {
        assert_eq!(
            m.get("headcount_topic_memberships", &[("topic", topic)]),
            Some(topic_count(&s, topic) as f64),
            "{topic}: {s}\n{}",
            m.text
        );
    }
    m
}

#[tokio::test]
async fn metrics_are_prometheus_text_equal_to_api_stats() {
    let server = Server::start(&["--allow-topic", "rooms:*"]);
    let res = get(server.addr, "/metrics").await;
    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "{:?}",
        res.headers
    );
    let m = Metrics::parse(&res.text());
    for name in REQUIRED_METRICS {
        assert!(m.has(name), "{name} missing from:\n{}", m.text);
        assert!(
            m.text.contains(&format!("# TYPE {name} ")),
            "{name} has no TYPE line"
        );
    }
    assert_metrics_match_stats(&server).await;

    let mut a = v1(server.addr).await;
    a.join_ok(STREAM, json!({})).await;
    a.join_ok(STATS, json!({})).await;
    a.join_ok("rooms:secret-room", json!({})).await;
    let mut b = v2(server.addr).await;
    b.join_ok(STREAM, json!({})).await;
    b.join_ok(VSM, json!({"subsystem": "s4"})).await;
    b.join("nope", json!({})).await.assert_error();
    b.join(VSM, json!({"subsystem": "s9"})).await.assert_error();
    b.send_text("{not json").await;
    b.leave(STREAM).await.assert_ok();
    b.heartbeat().await;
    let _idle = v2(server.addr).await;
    let m = wait_for_sockets(&server, 3).await;
    assert_eq!(
        m.get("headcount_topic_memberships", &[("topic", STREAM)]),
        Some(1.0)
    );
    // Membership totals: 5 joins ok; 2 ended (the leave, and the s4
    // membership that the refused VSM re-join ended first).
    assert_eq!(m.value("headcount_joins_total", &[]), 5.0, "{}", m.text);
    assert_eq!(m.value("headcount_leaves_total", &[]), 2.0, "{}", m.text);
    // One of each refusal, counted by reason.
    for (name, reason) in [
        ("headcount_join_rejections_total", "unmatched_topic"),
        ("headcount_join_rejections_total", "invalid_subsystem"),
        ("headcount_frames_rejected_total", "malformed"),
    ] {
        assert_eq!(
            m.value(name, &[("reason", reason)]),
            1.0,
            "{name} {reason}: {}",
            m.text
        );
    }
    // No per-topic labels beyond the built-ins: generic topic names never
    // become label values.
    assert!(
        !m.text.contains("secret-room"),
        "generic topic leaked into labels:\n{}",
        m.text
    );
    for s in &m.samples {
        if let Some(topic) = s.labels.get("topic") {
            assert!(
                [STATS, STREAM, VSM].contains(&topic.as_str()),
                "label topic={topic} on {}",
                s.name
            );
        }
    }
    // Closing everything brings every gauge back to zero.
    a.close().await;
    b.close().await;
    drop(_idle);
    let m = wait_for_sockets(&server, 0).await;
    assert_eq!(m.get("headcount_memberships", &[]), Some(0.0));
    assert_eq!(m.get("headcount_topics", &[]), Some(0.0));
    assert_eq!(m.value("headcount_leaves_total", &[]), 5.0, "{}", m.text);
}

/// Waits until `/metrics` shows `n` sockets, then checks it against
/// `/api/stats` at a quiet moment.
async fn wait_for_sockets(server: &Server, n: u64) -> Metrics {
    wait_stats(server.addr, &format!("{n} sockets"), |s| {
        s["socket_count"] == n
    })
    .await;
    assert_metrics_match_stats(server).await
}

#[tokio::test]
async fn healthz_and_readyz_answer_while_serving() {
    let server = Server::start(&[]);
    let h = get(server.addr, "/healthz").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.text().trim(), "ok");
    let r = get(server.addr, "/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let nf = get(server.addr, "/no/such/route").await;
    assert_eq!(nf.status, 404);
}

#[tokio::test]
async fn write_routes_refuse_get_and_read_routes_refuse_post() {
    let server = Server::start(&[]);
    let res = get(server.addr, "/api/events").await;
    assert_eq!(res.status, 405, "{}", res.text());
    let res = post_json(server.addr, "/api/stats", &json!({})).await;
    assert_eq!(res.status, 405, "{}", res.text());
}

#[tokio::test]
async fn plain_get_on_the_socket_path_is_not_upgraded() {
    let server = Server::start(&[]);
    let res = get(server.addr, "/socket/websocket").await;
    assert!(
        (400..500).contains(&res.status),
        "non-upgrade GET: {}",
        res.status
    );
    assert_eq!(stats(server.addr).await["socket_count"], 0);
}
