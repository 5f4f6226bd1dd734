//! What is counted (SPEC §3): a membership counts from its `ok` reply until
//! it ends by any path — leave, duplicate join, close frame, FIN without a
//! close frame, TCP reset, idle timeout — topics at zero vanish, and
//! `socket_count` counts open sockets. (Slow-consumer closes are in
//! limits.rs, shutdown in shutdown.rs.)

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn join_counts_before_its_reply_and_leave_before_its_reply() {
    let server = Server::start(&["--allow-topic", "rooms:*"]);
    let mut c = v2(server.addr).await;
    for (i, topic) in [STATS, STREAM, VSM, "rooms:a"].iter().enumerate() {
        c.join_ok(topic, json!({})).await;
        // No polling: the count is there as soon as the reply is.
        let s = stats(server.addr).await;
        assert_eq!(topic_count(&s, topic), 1, "{topic}: {s}");
        assert_eq!(s["connection_count"], i as u64 + 1, "{s}");
        // And the joiner sees itself over the socket.
        let local = c.request(topic, "get_connection_stats", json!({})).await;
        assert_eq!(topic_count(local.assert_ok(), topic), 1);
    }
    for (i, topic) in [STATS, STREAM, VSM, "rooms:a"].iter().enumerate() {
        c.leave(topic).await.assert_ok();
        let s = stats(server.addr).await;
        assert_eq!(topic_count(&s, topic), 0, "{topic}: {s}");
        assert!(
            s["connections_by_topic"].get(*topic).is_none(),
            "zero-count topic {topic} must vanish: {s}"
        );
        assert_eq!(s["connection_count"], 3 - i as u64, "{s}");
    }
    let s = stats(server.addr).await;
    assert_eq!(s["connections_by_topic"], json!({}), "{s}");
    assert_eq!(s["connection_count"], 0);
    assert_eq!(s["stream_count"], 0);
    assert_eq!(s["socket_count"], 1);
}

#[tokio::test]
async fn counts_are_exact_over_many_sockets_and_topics() {
    let server = Server::start(&["--allow-topic", "rooms:*"]);
    let mut clients = Vec::new();
    for i in 0..30usize {
        let vsn = Vsn::alternating(i);
        let mut c = client(server.addr, vsn).await;
        c.join_ok(STREAM, json!({})).await;
        if i.is_multiple_of(3) {
            c.join_ok(STATS, json!({})).await;
        }
        if i.is_multiple_of(5) {
            c.join_ok(&format!("rooms:{}", i % 2), json!({})).await;
        }
        clients.push(c);
    }
    let s = stats(server.addr).await;
    assert_local_stats(&s, &server.node);
    assert_eq!(topic_count(&s, STREAM), 30);
    assert_eq!(s["stream_count"], 30);
    assert_eq!(topic_count(&s, STATS), 10);
    assert_eq!(topic_count(&s, "rooms:0"), 3);
    assert_eq!(topic_count(&s, "rooms:1"), 3);
    assert_eq!(s["connection_count"], 46);
    assert_eq!(s["socket_count"], 30);
    // Half of them leave the stream; every third closes.
    for c in clients.iter_mut().step_by(2) {
        c.leave(STREAM).await.assert_ok();
    }
    let s = stats(server.addr).await;
    assert_eq!(topic_count(&s, STREAM), 15, "{s}");
    let closing: Vec<_> = (0..30).filter(|i| i % 3 == 1).collect();
    for i in closing.iter().rev() {
        clients.remove(*i).close().await;
    }
    // Closed: 1,4,...,28 (10 sockets; the 5 odd ones were still on the
    // stream; none on stats; 10 held rooms:0 and 25 held rooms:1).
    let s = wait_stats(server.addr, "closed sockets counted down", |s| {
        s["socket_count"] == 20
    })
    .await;
    assert_local_stats(&s, &server.node);
    assert_eq!(topic_count(&s, STREAM), 10, "{s}");
    assert_eq!(topic_count(&s, STATS), 10, "{s}");
    assert_eq!(topic_count(&s, "rooms:0"), 2, "{s}");
    assert_eq!(topic_count(&s, "rooms:1"), 2, "{s}");
    assert_eq!(s["connection_count"], 24, "{s}");
}

#[tokio::test]
async fn socket_count_counts_open_sockets_joined_or_not() {
    let server = Server::start(&[]);
    let a = v1(server.addr).await;
    let mut b = v2(server.addr).await;
    b.join_ok(STREAM, json!({})).await;
    b.join_ok(STATS, json!({})).await;
    let c = v2(server.addr).await;
    let s = wait_stats(server.addr, "3 sockets", |s| s["socket_count"] == 3).await;
    assert_eq!(s["connection_count"], 2, "{s}");
    a.close().await;
    wait_stats(server.addr, "2 sockets", |s| s["socket_count"] == 2).await;
    c.vanish();
    b.abort();
    let s = wait_stats(server.addr, "0 sockets", |s| s["socket_count"] == 0).await;
    assert_eq!(s["connection_count"], 0, "{s}");
}

/// Opens a V1 and a V2 socket joined to stream and vsm next to a watcher,
/// ends both with `end`, and waits for the counts to be the watcher's alone.
async fn end_path_counts_down(server: &Server, end: impl Fn(Client)) {
    let mut watcher = v2(server.addr).await;
    watcher.join_ok(STREAM, json!({})).await;
    let mut doomed = Vec::new();
    for vsn in [Vsn::V1, Vsn::V2] {
        let mut c = client(server.addr, vsn).await;
        c.join_ok(STREAM, json!({})).await;
        c.join_ok(VSM, json!({"subsystem": "s2"})).await;
        doomed.push(c);
    }
    let s = stats(server.addr).await;
    assert_eq!(topic_count(&s, STREAM), 3, "{s}");
    assert_eq!(topic_count(&s, VSM), 2, "{s}");
    assert_eq!(s["socket_count"], 3, "{s}");
    for c in doomed {
        end(c);
    }
    let s = wait_stats(server.addr, "ended sockets counted down", |s| {
        s["socket_count"] == 1 && s["connection_count"] == 1
    })
    .await;
    assert_eq!(topic_count(&s, STREAM), 1, "{s}");
    assert!(s["connections_by_topic"].get(VSM).is_none(), "{s}");
    assert_local_stats(&s, &server.node);
    // The watcher sees the same through its channel.
    let local = watcher
        .request(STREAM, "get_connection_stats", json!({}))
        .await;
    assert_eq!(topic_count(local.assert_ok(), STREAM), 1);
    let m = metrics(server.addr).await;
    assert_eq!(m.value("headcount_leaves_total", &[]), 4.0, "{}", m.text);
}

#[tokio::test]
async fn close_frame_counts_down() {
    let server = Server::start(&[]);
    end_path_counts_down(&server, |c| {
        tokio::spawn(c.close());
    })
    .await;
}

#[tokio::test]
async fn fin_without_close_frame_counts_down() {
    let server = Server::start(&[]);
    end_path_counts_down(&server, Client::vanish).await;
}

#[tokio::test]
async fn tcp_reset_without_close_frame_counts_down() {
    let server = Server::start(&[]);
    end_path_counts_down(&server, Client::abort).await;
}

#[tokio::test]
async fn client_close_frame_is_answered_with_a_close_frame() {
    let server = Server::start(&[]);
    let mut c = v2(server.addr).await;
    c.join_ok(STREAM, json!({})).await;
    c.send_message(tokio_tungstenite::tungstenite::Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 4001u16.into(),
            reason: "bye".into(),
        },
    )))
    .await;
    match c.expect_closed().await {
        Closed::Frame(code, _) => assert_eq!(code, 4001, "server echoes the code"),
        other => panic!("expected a close frame, got {other:?}"),
    }
    wait_stats(server.addr, "counted down", |s| {
        s["connection_count"] == 0 && s["socket_count"] == 0
    })
    .await;
}

#[tokio::test]
async fn idle_timeout_closes_silent_sockets_and_counts_them_down() {
    let server = Server::start(&["--idle-timeout-ms", "600", "--allow-topic", "rooms:*"]);
    let mut silent = v1(server.addr).await;
    silent.join_ok(STREAM, json!({})).await;
    silent.join_ok("rooms:a", json!({})).await;
    let mut alive = v2(server.addr).await;
    alive.join_ok(STREAM, json!({})).await;
    let start = std::time::Instant::now();
    // The live socket heartbeats every 150 ms; the silent one says nothing.
    let keepalive = tokio::spawn(async move {
        for _ in 0..12 {
            alive.heartbeat().await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        alive
    });
    let closed = silent.expect_closed().await;
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "closed before the idle timeout: {:?}",
        start.elapsed()
    );
    assert_ne!(
        closed,
        Closed::NoFrame,
        "an idle timeout is a close with a close frame"
    );
    let s = wait_stats(server.addr, "idle socket counted down", |s| {
        s["socket_count"] == 1
    })
    .await;
    assert_eq!(topic_count(&s, STREAM), 1, "{s}");
    assert_eq!(topic_count(&s, "rooms:a"), 0, "{s}");
    assert_eq!(s["connection_count"], 1, "{s}");
    // The heartbeating socket outlived three idle periods.
    let mut alive = keepalive.await.expect("keepalive task");
    assert!(start.elapsed() >= Duration::from_millis(1800));
    alive.heartbeat().await;
    let s = stats(server.addr).await;
    assert_eq!(s["socket_count"], 1, "{s}");
}

#[tokio::test]
async fn websocket_pings_also_reset_the_idle_timer() {
    let server = Server::start(&["--idle-timeout-ms", "500"]);
    let mut c = v2(server.addr).await;
    c.join_ok(STATS, json!({})).await;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        c.send_message(tokio_tungstenite::tungstenite::Message::Ping(
            b"p".to_vec().into(),
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    c.heartbeat().await;
    assert_eq!(topic_count(&stats(server.addr).await, STATS), 1);
}

#[tokio::test]
async fn refused_joins_never_count() {
    let server = Server::start(&["--max-channels-per-socket", "1"]);
    let mut c = v2(server.addr).await;
    c.join("nope:1", json!({})).await.assert_error();
    c.join(VSM, json!({"subsystem": "s9"})).await.assert_error();
    c.join_ok(STREAM, json!({})).await;
    c.join(STATS, json!({})).await.assert_error();
    let s = stats(server.addr).await;
    assert_eq!(s["connection_count"], 1, "{s}");
    assert_eq!(topic_counts(&s).len(), 1, "{s}");
    let m = metrics(server.addr).await;
    assert_eq!(m.value("headcount_joins_total", &[]), 1.0);
}
