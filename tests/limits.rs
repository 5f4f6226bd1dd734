//! Limits and the closes they cause (SPEC §1, §2, §6.3): oversized frames
//! and messages (1009), invalid UTF-8 (1007), slow consumers (1008), the
//! connection limit (HTTP 503, then recovery), and the process's open-file
//! limit.

mod common;

use common::*;
use serde_json::json;
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// A heartbeat frame padded with spaces to exactly `len` bytes.
fn padded_heartbeat(vsn: Vsn, r: &str, len: usize) -> String {
    let base = match vsn {
        Vsn::V1 => {
            format!(r#"{{"topic":"phoenix","event":"heartbeat","payload":{{}},"ref":"{r}"}}"#)
        }
        Vsn::V2 => format!(r#"[null,"{r}","phoenix","heartbeat",{{}}]"#),
    };
    assert!(base.len() <= len);
    format!("{base}{}", " ".repeat(len - base.len()))
}

/// Retries a V2 connection until the server accepts one again.
async fn accepted_again(addr: SocketAddr) -> Client {
    eventually("a socket is accepted again", || async {
        try_connect(addr, "vsn=2.0.0", ConnectOpts::default())
            .await
            .ok()
    })
    .await
}

#[tokio::test]
async fn a_frame_at_the_limit_is_fine_and_one_byte_more_closes_1009() {
    let server = Server::start(&["--max-frame-bytes", "1024"]);
    for vsn in [Vsn::V1, Vsn::V2] {
        let mut c = client(server.addr, vsn).await;
        c.join_ok(STREAM, json!({})).await;
        c.send_text(&padded_heartbeat(vsn, "at-limit", 1024)).await;
        c.reply_to("phoenix", &json!("at-limit")).await.assert_ok();
        c.send_text(&padded_heartbeat(vsn, "over", 1025)).await;
        match c.expect_closed().await {
            Closed::Frame(code, _) => assert_eq!(code, 1009),
            other => panic!("expected close 1009, got {other:?}"),
        }
        assert!(
            c.take_stash().iter().all(|m| m.reference != json!("over")),
            "the oversized frame was processed"
        );
    }
    let s = wait_stats(server.addr, "closed sockets counted down", |s| {
        s["socket_count"] == 0
    })
    .await;
    assert_eq!(s["connection_count"], 0, "{s}");
    let m = metrics(server.addr).await;
    assert_eq!(
        m.value(
            "headcount_frames_rejected_total",
            &[("reason", "too_large")]
        ),
        2.0,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn oversized_binary_frames_and_fragmented_messages_close_1009() {
    let server = Server::start(&["--max-frame-bytes", "1024"]);
    // A big binary frame.
    let mut c = v2(server.addr).await;
    c.join_ok(STATS, json!({})).await;
    c.send_binary(vec![0u8; 5000]).await;
    assert!(matches!(c.expect_closed().await, Closed::Frame(1009, _)));
    // Fragments reassemble up to the limit...
    let mut c = v2(server.addr).await;
    let whole = padded_heartbeat(Vsn::V2, "frag", 1000);
    let (a, b) = whole.as_bytes().split_at(500);
    c.send_message(Message::Frame(Frame::message(
        a.to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    c.send_message(Message::Frame(Frame::message(
        b.to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    c.reply_to("phoenix", &json!("frag")).await.assert_ok();
    // ...and a message of small frames that grows past it is 1009 too.
    for i in 0..3 {
        c.send_message(Message::Frame(Frame::message(
            vec![b' '; 500],
            if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            },
            i == 2,
        )))
        .await;
    }
    assert!(matches!(c.expect_closed().await, Closed::Frame(1009, _)));
    wait_stats(server.addr, "all closed", |s| s["socket_count"] == 0).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_1007() {
    let server = Server::start(&[]);
    let mut watcher = v1(server.addr).await;
    watcher.join_ok(STREAM, json!({})).await;
    for vsn in [Vsn::V1, Vsn::V2] {
        let mut c = client(server.addr, vsn).await;
        c.join_ok(STREAM, json!({})).await;
        let mut bad = br#"{"topic":"phoenix","event":"heartbeat","payload":{"x":""#.to_vec();
        bad.extend_from_slice(&[0xff, 0xfe, 0xc3]);
        bad.extend_from_slice(br#""},"ref":"1"}"#);
        c.send_raw_text(bad).await;
        match c.expect_closed().await {
            Closed::Frame(code, _) => assert_eq!(code, 1007),
            other => panic!("expected close 1007, got {other:?}"),
        }
    }
    let s = wait_stats(server.addr, "closed sockets counted down", |s| {
        s["socket_count"] == 1
    })
    .await;
    assert_eq!(topic_count(&s, STREAM), 1, "{s}");
    // Invalid UTF-8 inside a binary frame is just bytes: no close.
    let mut c = v2(server.addr).await;
    c.send_binary(vec![0xff, 0xfe]).await;
    c.heartbeat().await;
    let m = metrics(server.addr).await;
    assert_eq!(
        m.value(
            "headcount_frames_rejected_total",
            &[("reason", "invalid_utf8")]
        ),
        2.0,
        "{}",
        m.text
    );
}

/// A client that never reads while broadcasts flood its topic is closed
/// `1008 slow consumer`, and every membership it held is counted down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_1008_and_counted_down() {
    let server = Server::start(&["--outbound-queue", "8", "--allow-topic", "rooms:*"]);
    let addr = server.addr;
    let mut watcher = v2(addr).await;
    watcher.join_ok(STATS, json!({})).await;
    for vsn in [Vsn::V1, Vsn::V2] {
        let query = if vsn == Vsn::V2 { "vsn=2.0.0" } else { "" };
        let opts = ConnectOpts {
            recv_buffer: Some(4096),
            ..ConnectOpts::default()
        };
        let mut slow = try_connect(addr, query, opts).await.expect("connect");
        slow.join_ok("rooms:flood", json!({})).await;
        slow.join_ok(STREAM, json!({})).await;
        slow.join_ok(VSM, json!({"subsystem": "s1"})).await;
        let s = stats(addr).await;
        assert_eq!(s["connection_count"], 4, "{s}");
        let before = metrics(addr)
            .await
            .value("headcount_slow_consumer_closes_total", &[]);
        let blob = "q".repeat(16 * 1024);
        let mut sent = 0u32;
        loop {
            broadcast(addr, "rooms:flood", "blob", &json!({"blob": blob})).await;
            sent += 1;
            if sent.is_multiple_of(8) {
                let now = metrics(addr)
                    .await
                    .value("headcount_slow_consumer_closes_total", &[]);
                if now > before {
                    break;
                }
            }
            assert!(sent < 5000, "never closed as a slow consumer");
        }
        assert_eq!(
            slow.expect_closed().await,
            Closed::Frame(1008, "slow consumer".into())
        );
        let s = wait_stats(addr, "slow consumer counted down", |s| {
            s["socket_count"] == 1
        })
        .await;
        assert_eq!(s["connection_count"], 1, "{s}");
        assert_eq!(
            s["connections_by_topic"],
            json!({STATS: {(server.node.clone()): 1}}),
            "{s}"
        );
    }
    let m = metrics(addr).await;
    assert_eq!(m.value("headcount_slow_consumer_closes_total", &[]), 2.0);
    // The watcher, which reads, was never touched.
    watcher.heartbeat().await;
}

#[tokio::test]
async fn max_connections_refuses_with_503_and_recovers_when_a_socket_closes() {
    let server = Server::start(&["--max-connections", "2"]);
    let addr = server.addr;
    let mut a = v1(addr).await;
    a.join_ok(STREAM, json!({})).await;
    let b = v2(addr).await;
    for query in ["", "vsn=2.0.0"] {
        let err = try_connect(addr, query, ConnectOpts::default())
            .await
            .err()
            .expect("a third socket must be refused");
        assert_eq!(refusal_status(&err), Some(503), "{err}");
        let body = refusal_body(&err);
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("503 body is not JSON ({e}): {body:?}"));
        assert!(v["error"].is_string(), "{body}");
    }
    // HTTP is not a socket: the API still answers at the limit.
    let s = stats(addr).await;
    assert_eq!(s["socket_count"], 2, "{s}");
    // The held sockets keep working.
    a.heartbeat().await;
    // One closes; a new one gets in.
    b.close().await;
    let mut c = accepted_again(addr).await;
    c.join_ok(STATS, json!({})).await;
    let s = stats(addr).await;
    assert_eq!(s["socket_count"], 2, "{s}");
    assert_eq!(s["connection_count"], 2, "{s}");
}

#[tokio::test]
async fn default_max_connections_is_the_file_limit_less_a_reserve() {
    // Hard and soft file limit 200, no --max-connections: sockets stop
    // being accepted below the file limit, with a 503, while HTTP still has
    // descriptors to answer with (the reserve).
    let server = Server::builder().nofile(200).start();
    let addr = server.addr;
    let mut held = Vec::new();
    let refusal = loop {
        match try_connect(addr, "vsn=2.0.0", ConnectOpts::default()).await {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
        assert!(held.len() < 200, "no limit below the file limit");
    };
    assert_eq!(refusal_status(&refusal), Some(503), "{refusal}");
    let m = held.len();
    assert!(
        (1..=190).contains(&m),
        "{m} sockets: the default limit keeps a reserve below 200 files"
    );
    let s = stats(addr).await;
    assert_eq!(s["socket_count"], m as u64, "{s}");
    assert_eq!(get(addr, "/metrics").await.status, 200);
    held.pop().unwrap().close().await;
    accepted_again(addr).await;
}

/// At the process's open-file limit the node keeps serving what it holds,
/// refuses new connections without falling over, and recovers when sockets
/// close.
#[tokio::test]
async fn at_the_open_file_limit_existing_sockets_keep_working_and_new_ones_recover() {
    let server = Server::builder()
        .nofile(48)
        .args(["--max-connections", "1000"])
        .start();
    let addr = server.addr;
    let mut held = Vec::new();
    let refusal = loop {
        match try_connect(addr, "vsn=2.0.0", ConnectOpts::default()).await {
            Ok(mut c) => {
                c.join_ok(STREAM, json!({})).await;
                held.push(c);
            }
            Err(e) => break e,
        }
        assert!(held.len() < 100, "never hit the file limit");
    };
    assert!(
        held.len() >= 10,
        "only {} sockets before refusal",
        held.len()
    );
    // More attempts at the limit are refused the same way, and disturb no
    // one. Refused cleanly means an HTTP 503 (the node answers from a spare
    // descriptor); a reset may beat the client to reading it now and then,
    // but never a hang (try_connect has a deadline) and never every time.
    let mut refusals = vec![refusal];
    for _ in 0..5 {
        match try_connect(addr, "vsn=2.0.0", ConnectOpts::default()).await {
            Ok(_) => panic!("accepted a socket at the file limit"),
            Err(e) => refusals.push(e),
        }
    }
    let statuses: Vec<Option<u16>> = refusals.iter().map(refusal_status).collect();
    assert!(
        statuses.iter().all(|s| s.is_none() || *s == Some(503)),
        "{refusals:?}"
    );
    assert!(statuses.contains(&Some(503)), "never a 503: {refusals:?}");
    assert!(
        refusal_body(&refusals[statuses.iter().position(|s| s.is_some()).unwrap()])
            .contains("error")
    );
    let n = held.len();
    for c in held.iter_mut() {
        c.heartbeat().await;
        let r = c.request(STREAM, "get_connection_stats", json!({})).await;
        assert_eq!(topic_count(r.assert_ok(), STREAM), n as u64);
    }
    for c in held.drain(n - 4..) {
        c.close().await;
    }
    let mut fresh = accepted_again(addr).await;
    fresh.join_ok(STREAM, json!({})).await;
    let s = wait_stats(addr, "counts after recovery", |s| {
        s["socket_count"] == (n - 4 + 1) as u64
    })
    .await;
    assert_eq!(topic_count(&s, STREAM), (n - 4 + 1) as u64, "{s}");
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}
