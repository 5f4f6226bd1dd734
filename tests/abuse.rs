//! Abuse limits (SPEC §8.4, the §1 flag rows) and reserved events (the end
//! of §4.4), each tripped and then seen to recover, against a real
//! `headcount serve`: the per-socket join and message buckets (and the 1008
//! after 10 s over), the per-address socket limit (429), the outbound queue
//! bound in bytes (1008 `slow consumer`), the 10 s HTTP header timeout,
//! and members and producers sending events the protocol gives a meaning
//! to. Other sockets keep being answered throughout, and the counts are
//! exact at the end of every test.
//!
//! The two slow tests (about 10 s each: the flood and the header timeout)
//! are named to sort early, so that with two test threads they overlap.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The node's stats, checked for shape and internal agreement, with exactly
/// `sockets` sockets and these per-topic counts.
async fn assert_counts(server: &Server, sockets: u64, topics: &[(&str, u64)]) -> Value {
    let s = stats(server.addr).await;
    assert_local_stats(&s, &server.node);
    assert_eq!(s["socket_count"], sockets, "{s}");
    let want: std::collections::BTreeMap<String, u64> =
        topics.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect();
    assert_eq!(topic_counts(&s), want, "{s}");
    s
}

fn v2_frame(join_ref: Value, r: &str, topic: &str, event: &str, payload: Value) -> String {
    encode(Vsn::V2, &join_ref, &json!(r), topic, event, &payload)
}

fn heartbeat_frame(r: &str) -> String {
    v2_frame(Value::Null, r, "phoenix", "heartbeat", json!({}))
}

/// A bystander's request and heartbeat, both answered ok.
async fn still_answered(c: &mut Client, topic: &str) {
    c.heartbeat().await;
    c.request(topic, "get_connection_stats", json!({}))
        .await
        .assert_ok();
}

// ---------------------------------------------------------------------------
// --max-messages-per-second: 10 s over closes 1008 (slow; sorts first)
// ---------------------------------------------------------------------------

/// What a flooding socket saw until the server closed it.
struct Flood {
    close: Option<(u16, String)>,
    /// From the first flooding frame to the close.
    lasted: Duration,
    refused: usize,
    sent: usize,
}

/// Joins `topic`, then sends heartbeats at about 500/s (reading every
/// reply) until the server closes the socket, or 16 s.
async fn flood(addr: SocketAddr, topic: &str) -> Flood {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(ws_url(addr, "vsn=2.0.0"), stream)
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::text(v2_frame(
        json!("j"),
        "j",
        topic,
        "phx_join",
        json!({}),
    )))
    .await
    .unwrap();
    loop {
        let m = rx.next().await.unwrap().unwrap();
        let m = decode(Vsn::V2, m.to_text().unwrap());
        if m.is_reply() && m.reference == json!("j") {
            assert_eq!(m.status(), "ok", "{}", m.raw);
            break;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        while !stopped.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(16) {
            for _ in 0..10 {
                sent += 1;
                if tx
                    .feed(Message::text(heartbeat_frame(&format!("f{sent}"))))
                    .await
                    .is_err()
                {
                    return sent;
                }
            }
            if tx.flush().await.is_err() {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    });
    let mut refused = 0;
    let mut close = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(18);
    while let Ok(Some(next)) = tokio::time::timeout_at(deadline, rx.next()).await {
        match next {
            Ok(Message::Text(t)) => {
                let m = decode(Vsn::V2, t.as_str());
                if m.is_reply() && m.status() == "error" {
                    assert_eq!(
                        m.response(),
                        &json!({"reason": "rate limited"}),
                        "{}",
                        m.raw
                    );
                    assert!(
                        m.reference.as_str().is_some_and(|r| r.starts_with('f')),
                        "the refusal carries the frame's ref: {}",
                        m.raw
                    );
                    refused += 1;
                }
            }
            Ok(Message::Close(f)) => {
                close = f.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let lasted = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = writer.await.unwrap();
    Flood {
        close,
        lasted,
        refused,
        sent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_frames_for_10_s_closes_1008_and_spares_other_sockets() {
    let server = Server::start(&[
        "--max-messages-per-second",
        "5",
        "--max-messages-burst",
        "5",
        "--allow-topic",
        "rooms:*",
    ]);
    let addr = server.addr;
    let mut bystander = v2(addr).await;
    bystander.join_ok("rooms:1", json!({})).await;
    let flooding = tokio::spawn(flood(addr, "rooms:1"));
    // The bystander keeps asking (2–4 frames a second, under its own
    // limit) and is answered every time while the other socket floods.
    let mut asked = 0;
    while !flooding.is_finished() {
        still_answered(&mut bystander, "rooms:1").await;
        asked += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let f = flooding.await.unwrap();
    assert_eq!(
        f.close,
        Some((1008, "rate limited".to_owned())),
        "after {:?}, {} sent, {} refused",
        f.lasted,
        f.sent,
        f.refused
    );
    // Over the limit for 10 s: not before, and not much after.
    assert!(
        f.lasted >= Duration::from_millis(9900) && f.lasted <= Duration::from_secs(14),
        "closed {:?} after the flood began",
        f.lasted
    );
    assert!(
        f.refused > 0 && f.refused < f.sent,
        "{} of {}",
        f.refused,
        f.sent
    );
    assert!(asked >= 8, "the bystander was answered {asked} times");
    still_answered(&mut bystander, "rooms:1").await;
    let s = wait_stats(addr, "the flooder counted down", |s| s["socket_count"] == 1).await;
    assert_eq!(s["connection_count"], 1, "{s}");
    assert_counts(&server, 1, &[("rooms:1", 1)]).await;
    let m = metrics(addr).await;
    assert_eq!(m.value("headcount_rate_limit_closes_total", &[]), 1.0);
    // Every refusal the flooder was told of is counted (the last ones, and
    // their replies, may be cut off by the close itself).
    let counted = m.value(
        "headcount_frames_rejected_total",
        &[("reason", "rate_limited")],
    );
    assert!(
        counted >= f.refused as f64 && counted <= f.sent as f64,
        "{counted} counted, {} refusals seen, {} sent",
        f.refused,
        f.sent
    );
}

// ---------------------------------------------------------------------------
// The 10 s HTTP header timeout (slow; sorts first)
// ---------------------------------------------------------------------------

/// Reads until the server closes the connection; returns when, counted
/// from `start`, and what it sent.
async fn until_closed(mut s: TcpStream, start: Instant, limit: Duration) -> (Duration, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => panic!("still open after {:?}", start.elapsed()),
            Ok(Ok(0)) | Ok(Err(_)) => return (start.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_that_never_finish_their_headers_are_closed_after_10_s() {
    // One socket allowed: silent connections must not hold it.
    let server = Server::start(&["--max-connections", "1"]);
    let addr = server.addr;
    let limit = Duration::from_secs(15);
    let start = Instant::now();
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut partial_line = TcpStream::connect(addr).await.unwrap();
    partial_line.write_all(b"GET /api/sta").await.unwrap();
    let mut partial_headers = TcpStream::connect(addr).await.unwrap();
    partial_headers
        .write_all(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A slow loris: a header line every second never completes.
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(b"GET /socket/websocket HTTP/1.1\r\n")
        .await
        .unwrap();
    let (trickle_rd, mut trickle_wr) = trickle.into_split();
    let trickling = tokio::spawn(async move {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if trickle_wr
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let watch = [silent, partial_line, partial_headers]
        .into_iter()
        .map(|s| tokio::spawn(until_closed(s, start, limit)))
        .collect::<Vec<_>>();
    let trickle_closed = tokio::spawn(async move {
        let mut rd = trickle_rd;
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(limit.saturating_sub(start.elapsed()), rd.read(&mut buf))
                .await
            {
                Err(_) => panic!("the slow loris is still open after {:?}", start.elapsed()),
                Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
                Ok(Ok(_)) => {}
            }
        }
    });

    // Meanwhile the node serves: HTTP, and its one WebSocket slot.
    let mut c = v2(addr).await;
    c.join_ok(STATS, json!({})).await;
    // A request completed slowly, but within the 10 s, is answered.
    let mut slow_ok = TcpStream::connect(addr).await.unwrap();
    slow_ok
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    slow_ok
        .write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (_, answer) = until_closed(slow_ok, Instant::now(), Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    for (i, w) in watch.into_iter().enumerate() {
        let (at, _) = w.await.unwrap();
        assert!(
            at >= Duration::from_millis(9900),
            "connection {i} closed after {at:?}, before the 10 s"
        );
    }
    let at = trickle_closed.await.unwrap();
    assert!(
        at >= Duration::from_millis(9900),
        "the slow loris was closed after {at:?}"
    );
    trickling.abort();
    still_answered(&mut c, STATS).await;
    assert_counts(&server, 1, &[(STATS, 1)]).await;
}

// ---------------------------------------------------------------------------
// --max-joins-per-second / --max-joins-burst
// ---------------------------------------------------------------------------

#[tokio::test]
async fn joins_over_the_rate_are_refused_and_leave_memberships_alone() {
    let server = Server::start(&[
        "--max-joins-per-second",
        "2",
        "--max-joins-burst",
        "3",
        "--allow-topic",
        "rooms:*",
    ]);
    let addr = server.addr;
    let mut bystander = v1(addr).await;
    bystander.join_ok("rooms:1", json!({})).await;
    let mut c = v2(addr).await;
    // Five joins in one write: the burst of three, then a duplicate of
    // rooms:1 and a new topic, both refused.
    let joins = [
        ("rooms:1", "1"),
        ("rooms:2", "2"),
        ("rooms:3", "3"),
        ("rooms:1", "4"),
        ("rooms:4", "5"),
    ];
    let frames: Vec<String> = joins
        .iter()
        .map(|(t, r)| v2_frame(json!(r), r, t, "phx_join", json!({})))
        .collect();
    c.send_batch(&frames).await;
    for (topic, r) in joins {
        let reply = c.reply_to(topic, &json!(r)).await;
        if r <= "3" {
            reply.assert_ok();
        } else {
            assert_eq!(
                reply.assert_error(),
                &json!({"reason": "rate limited"}),
                "join {r} of {topic}"
            );
        }
    }
    // The refused duplicate did not end the first membership of rooms:1:
    // no phx_close, it is still counted, and its join_ref still works.
    c.send(
        json!("1"),
        json!("q"),
        "rooms:1",
        "get_connection_stats",
        json!({}),
    )
    .await;
    c.reply_to("rooms:1", &json!("q")).await.assert_ok();
    c.heartbeat().await;
    let seen = c.take_stash();
    assert!(
        seen.iter().all(|m| m.event != "phx_close"),
        "a refused join closed something: {:?}",
        seen.iter().map(|m| &m.raw).collect::<Vec<_>>()
    );
    still_answered(&mut bystander, "rooms:1").await;
    assert_counts(
        &server,
        2,
        &[("rooms:1", 2), ("rooms:2", 1), ("rooms:3", 1)],
    )
    .await;
    let m = metrics(addr).await;
    assert_eq!(
        m.value(
            "headcount_join_rejections_total",
            &[("reason", "rate_limited")]
        ),
        2.0
    );

    // A second later the bucket has refilled: both joins work now (the
    // duplicate replaces the first membership, as in §2).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.send(json!("6"), json!("6"), "rooms:4", "phx_join", json!({}))
        .await;
    c.reply_to("rooms:4", &json!("6")).await.assert_ok();
    c.send(json!("7"), json!("7"), "rooms:1", "phx_join", json!({}))
        .await;
    let close = c.expect_event("rooms:1", "phx_close").await;
    assert_eq!(close.join_ref, json!("1"), "{}", close.raw);
    c.reply_to("rooms:1", &json!("7")).await.assert_ok();
    still_answered(&mut bystander, "rooms:1").await;
    assert_counts(
        &server,
        2,
        &[
            ("rooms:1", 2),
            ("rooms:2", 1),
            ("rooms:3", 1),
            ("rooms:4", 1),
        ],
    )
    .await;
    assert_eq!(
        metrics(addr).await.value(
            "headcount_join_rejections_total",
            &[("reason", "rate_limited")]
        ),
        2.0
    );
}

// ---------------------------------------------------------------------------
// --max-messages-per-second / --max-messages-burst
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_frame_after_the_burst_is_refused_with_its_ref_and_the_socket_stays() {
    let server = Server::start(&[
        "--max-messages-per-second",
        "5",
        "--max-messages-burst",
        "5",
        "--allow-topic",
        "rooms:*",
    ]);
    let addr = server.addr;
    let mut bystander = v1(addr).await;
    bystander.join_ok("rooms:1", json!({})).await;
    let mut c = v2(addr).await;
    c.join_ok("rooms:1", json!({})).await;
    let join_ref = c.join_ref("rooms:1");
    // Let the bucket fill again after the join.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Six frames in one write: five heartbeats, then a channel push.
    let mut frames: Vec<String> = (1..=5).map(|i| heartbeat_frame(&format!("h{i}"))).collect();
    frames.push(v2_frame(
        join_ref.clone(),
        "p6",
        "rooms:1",
        "get_connection_stats",
        json!({}),
    ));
    c.send_batch(&frames).await;
    for i in 1..=5 {
        c.reply_to("phoenix", &json!(format!("h{i}")))
            .await
            .assert_ok();
    }
    let refused = c.reply_to("rooms:1", &json!("p6")).await;
    assert_eq!(refused.assert_error(), &json!({"reason": "rate limited"}));
    assert_eq!(refused.msg.join_ref, join_ref, "{}", refused.msg.raw);
    still_answered(&mut bystander, "rooms:1").await;

    // The socket stays open and joined; a second later it has its burst back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let frames: Vec<String> = (1..=5).map(|i| heartbeat_frame(&format!("k{i}"))).collect();
    c.send_batch(&frames).await;
    for i in 1..=5 {
        c.reply_to("phoenix", &json!(format!("k{i}")))
            .await
            .assert_ok();
    }
    let m = metrics(addr).await;
    assert_eq!(
        m.value(
            "headcount_frames_rejected_total",
            &[("reason", "rate_limited")]
        ),
        1.0
    );
    assert_eq!(m.value("headcount_rate_limit_closes_total", &[]), 0.0);
    assert_counts(&server, 2, &[("rooms:1", 2)]).await;
}

// ---------------------------------------------------------------------------
// --max-connections-per-ip
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_socket_over_the_per_address_limit_gets_429_until_one_closes() {
    let server = Server::start(&["--max-connections-per-ip", "3"]);
    let addr = server.addr;
    let mut a = v1(addr).await;
    a.join_ok(STATS, json!({})).await;
    let mut b = v2(addr).await;
    b.join_ok(STREAM, json!({})).await;
    let mut c = v2(addr).await;
    c.join_ok(STATS, json!({})).await;
    for query in ["", "vsn=2.0.0"] {
        let err = try_connect(addr, query, ConnectOpts::default())
            .await
            .err()
            .expect("a fourth socket from 127.0.0.1 must be refused");
        assert_eq!(refusal_status(&err), Some(429), "{err}");
        let body: Value = serde_json::from_str(&refusal_body(&err)).unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    // HTTP requests are not sockets: the API still answers.
    assert_counts(&server, 3, &[(STATS, 2), (STREAM, 1)]).await;
    a.heartbeat().await;
    let m = metrics(addr).await;
    assert_eq!(
        m.value("headcount_sockets_refused_total", &[("reason", "per_ip")]),
        2.0
    );
    // One closes: a new one is let in (within the helper's bound).
    b.close().await;
    let mut d = eventually("a socket is accepted again", || async {
        try_connect(addr, "vsn=2.0.0", ConnectOpts::default())
            .await
            .ok()
    })
    .await;
    d.join_ok(STREAM, json!({})).await;
    assert!(try_connect(addr, "", ConnectOpts::default()).await.is_err());
    still_answered(&mut c, STATS).await;
    assert_counts(&server, 3, &[(STATS, 2), (STREAM, 1)]).await;
}

// ---------------------------------------------------------------------------
// --outbound-queue-bytes
// ---------------------------------------------------------------------------

/// A keep-alive HTTP connection that POSTs broadcasts one at a time, each
/// after the answer to the one before.
struct Producer {
    s: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Producer {
    async fn new(addr: SocketAddr, body: &str) -> Producer {
        let request = format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        Producer {
            s: TcpStream::connect(addr).await.unwrap(),
            request: request.into_bytes(),
            buf: Vec::new(),
        }
    }

    /// One broadcast; panics unless it is answered 202.
    async fn send(&mut self) {
        self.s.write_all(&self.request).await.unwrap();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                assert!(head.starts_with("HTTP/1.1 202"), "{head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("content-length");
                if self.buf.len() >= end + 4 + length {
                    self.buf.drain(..end + 4 + length);
                    return;
                }
            }
            let n = tokio::time::timeout(TIMEOUT, self.s.read(&mut chunk))
                .await
                .expect("an answer to the broadcast")
                .unwrap();
            assert!(n > 0, "the producer's connection was closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Two members of a topic get 1 KB broadcasts, each sent once the reading
/// member has received the one before (so a socket that reads never has
/// more than one queued). The member that never reads fills its TCP
/// buffers, then its queue passes 2000 bytes and it is closed 1008 `slow
/// consumer`; the reading member, and a socket on another topic, are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_does_not_read_is_closed_once_its_queue_passes_the_byte_bound() {
    let server = Server::start(&[
        "--outbound-queue-bytes",
        "2000",
        // Only the byte bound can trip.
        "--outbound-queue",
        "1000000",
        "--allow-topic",
        "rooms:*",
    ]);
    let addr = server.addr;
    let mut watcher = v2(addr).await;
    watcher.join_ok(STATS, json!({})).await;
    let opts = ConnectOpts {
        recv_buffer: Some(4096),
        ..ConnectOpts::default()
    };
    let mut slow = try_connect(addr, "vsn=2.0.0", opts).await.expect("connect");
    slow.join_ok("rooms:flood", json!({})).await;
    slow.join_ok(STREAM, json!({})).await;
    let mut reader = v2(addr).await;
    reader.join_ok("rooms:flood", json!({})).await;
    assert_counts(&server, 3, &[(STATS, 1), ("rooms:flood", 2), (STREAM, 1)]).await;

    let body =
        json!({"topic": "rooms:flood", "event": "blob", "payload": {"blob": "q".repeat(1000)}})
            .to_string();
    let mut producer = Producer::new(addr, &body).await;
    let started = Instant::now();
    let mut sent = 0u32;
    loop {
        producer.send().await;
        sent += 1;
        let got = reader.expect_event("rooms:flood", "blob").await;
        assert_eq!(got.payload["blob"].as_str().map(str::len), Some(1000));
        if sent.is_multiple_of(100) {
            let closes = metrics(addr)
                .await
                .value("headcount_slow_consumer_closes_total", &[]);
            if closes >= 1.0 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not closed after {sent} broadcasts of 1 KB"
        );
    }
    assert_eq!(
        slow.expect_closed().await,
        Closed::Frame(1008, "slow consumer".into())
    );
    // What it had not read was in its TCP buffers; the queue behind them
    // was dropped with the close.
    let received = slow
        .take_stash()
        .iter()
        .filter(|m| m.event == "blob")
        .count();
    assert!(received < sent as usize, "{received} of {sent}");
    let s = wait_stats(addr, "the slow consumer counted down", |s| {
        s["socket_count"] == 2
    })
    .await;
    assert_eq!(s["connection_count"], 2, "{s}");
    // The reading member is still there and still gets broadcasts.
    producer.send().await;
    reader.expect_event("rooms:flood", "blob").await;
    still_answered(&mut reader, "rooms:flood").await;
    still_answered(&mut watcher, STATS).await;
    assert_counts(&server, 2, &[(STATS, 1), ("rooms:flood", 1)]).await;
    let m = metrics(addr).await;
    assert_eq!(m.value("headcount_slow_consumer_closes_total", &[]), 1.0);
}

// ---------------------------------------------------------------------------
// Reserved events (§4.4)
// ---------------------------------------------------------------------------

const RESERVED: [&str; 14] = [
    "phx_close",
    "phx_error",
    "phx_reply",
    "phx_join",
    "phx_leave",
    "phx_anything",
    "presence_state",
    "presence_diff",
    "occupancy",
    "stats_update",
    "stats_changed",
    "local_stats",
    "cluster_stats",
    "initial_stats",
];

/// Waits for `event` on `topic` and returns the pushes that came before it.
async fn before(c: &mut Client, topic: &str, event: &str) -> Vec<Msg> {
    let m = c.expect_event(topic, event).await;
    let _ = m;
    c.take_stash()
        .into_iter()
        .filter(|m| !m.is_reply())
        .collect()
}

#[tokio::test]
async fn reserved_events_are_refused_from_members_and_producers_and_never_delivered() {
    let server = Server::start(&["--allow-topic", "rooms:*", "--client-broadcast"]);
    let addr = server.addr;
    let mut a = v2(addr).await;
    a.join_ok("rooms:r", json!({})).await;
    let mut b = v1(addr).await;
    b.join_ok("rooms:r", json!({})).await;
    let mut c = v2(addr).await;
    c.join_ok("rooms:r", json!({})).await;

    for event in RESERVED {
        let reply = a
            .request(
                "rooms:r",
                "broadcast",
                json!({"event": event, "payload": {"status": "ok", "response": {}}}),
            )
            .await;
        assert_eq!(
            reply.assert_error(),
            &json!({"reason": "reserved event"}),
            "{event}"
        );
    }
    // A member's ordinary event is relayed, payload unchanged; nothing
    // reserved came before it.
    a.request(
        "rooms:r",
        "broadcast",
        json!({"event": "chat", "payload": {"text": "hi"}}),
    )
    .await
    .assert_ok();
    for m in [&mut a, &mut b, &mut c] {
        let got = before(m, "rooms:r", "chat").await;
        assert!(
            got.is_empty(),
            "delivered before chat: {:?}",
            got.iter().map(|m| &m.raw).collect::<Vec<_>>()
        );
    }

    // The same through POST /api/broadcast: 400 naming the event.
    for event in RESERVED {
        let res = post_json(
            addr,
            "/api/broadcast",
            &json!({"topic": "rooms:r", "event": event, "payload": {}}),
        )
        .await;
        assert_eq!(res.status, 400, "{event}: {}", res.text());
        let err = res.json()["error"].as_str().unwrap_or("").to_owned();
        assert!(err.contains(event), "{event}: {err}");
    }
    broadcast(addr, "rooms:r", "news", &json!({"n": 1})).await;
    for m in [&mut a, &mut b, &mut c] {
        let got = before(m, "rooms:r", "news").await;
        assert!(
            got.is_empty(),
            "delivered before news: {:?}",
            got.iter().map(|m| &m.raw).collect::<Vec<_>>()
        );
    }
    // The refusals closed nothing.
    for m in [&mut a, &mut b, &mut c] {
        still_answered(m, "rooms:r").await;
    }
    assert_counts(&server, 3, &[("rooms:r", 3)]).await;
}
