//! Graceful shutdown (SPEC §6.4): on SIGTERM or SIGINT `/readyz` turns 503,
//! new sockets are refused, every socket is closed with 1001 and counted
//! down, and the process exits 0 within 10 s — even with peers that never
//! read and half-open HTTP connections.

mod common;

use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What a poller saw while the node drained.
#[derive(Default, Debug)]
struct Observed {
    readyz: Vec<u16>,
    /// `/api/stats` answers seen after a 503 from `/readyz`.
    draining_stats: Vec<serde_json::Value>,
    /// Upgrade attempts made after a 503 from `/readyz`: Ok(()) if accepted.
    draining_upgrades: Vec<Result<(), String>>,
}

/// Polls `/readyz` until the node stops answering; while it answers 503,
/// also reads `/api/stats` and tries to open a socket.
async fn watch_drain(addr: SocketAddr) -> Observed {
    let mut seen = Observed::default();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let Ok(res) = http(addr, "GET", "/readyz", &[], b"").await else {
            break;
        };
        seen.readyz.push(res.status);
        if res.status == 503 {
            if let Ok(s) = http(addr, "GET", "/api/stats", &[], b"").await {
                if s.status == 200 {
                    seen.draining_stats.push(s.json());
                }
            }
            let up = try_connect(addr, "vsn=2.0.0", ConnectOpts::default()).await;
            seen.draining_upgrades.push(match up {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            });
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    seen
}

async fn graceful_exit_on(sig: i32) {
    let mut server = Server::start(&["--allow-topic", "rooms:*"]);
    let addr = server.addr;
    let mut clients = Vec::new();
    for (i, topic) in [STATS, STREAM, VSM, "rooms:a", STREAM].iter().enumerate() {
        let vsn = Vsn::alternating(i);
        let mut c = client(addr, vsn).await;
        c.join_ok(topic, json!({})).await;
        clients.push(c);
    }
    let unjoined = v2(addr).await;
    clients.push(unjoined);
    assert_eq!(get(addr, "/readyz").await.status, 200);
    let s = stats(addr).await;
    assert_eq!(s["socket_count"], 6, "{s}");

    let watcher = tokio::spawn(watch_drain(addr));
    // Let the watcher see the node ready before the signal.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let signalled = Instant::now();
    server.signal(sig);
    for c in clients.iter_mut() {
        let closed = c.expect_closed().await;
        match closed {
            Closed::Frame(code, _) => assert_eq!(code, 1001, "{:?} socket", c.vsn),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exit within 10 s of the signal");
    assert!(
        signalled.elapsed() <= Duration::from_secs(10),
        "{:?}",
        signalled.elapsed()
    );
    assert!(status.success(), "exit status {status:?}");
    let seen = watcher.await.expect("watcher");
    assert_eq!(seen.readyz.first(), Some(&200), "{seen:?}");
    assert!(seen.readyz.contains(&503), "readyz never 503: {seen:?}");
    let first_503 = seen.readyz.iter().position(|s| *s == 503).unwrap();
    assert!(
        seen.readyz[first_503..].iter().all(|s| *s == 503),
        "ready again after draining began: {seen:?}"
    );
    // While draining the counts reach zero: every membership ended.
    assert!(
        seen.draining_stats
            .iter()
            .any(|s| s["socket_count"] == 0 && s["connection_count"] == 0),
        "never saw the counts at zero while draining: {seen:?}"
    );
    for s in &seen.draining_stats {
        assert_local_stats(s, &server.node);
    }
    // New sockets are refused while draining.
    assert!(
        seen.draining_upgrades.iter().all(|u| u.is_err()),
        "a socket was accepted while draining: {seen:?}"
    );
    assert!(
        seen.draining_upgrades
            .iter()
            .any(|u| u.as_ref().is_err_and(|e| e.contains("503"))),
        "upgrades while draining are refused with 503: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_1001_drains_and_exits_0() {
    graceful_exit_on(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_shuts_down_the_same_way() {
    graceful_exit_on(libc::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_on_peers_that_never_read_or_half_sent_requests() {
    let mut server = Server::start(&[]);
    let addr = server.addr;
    // A socket that never reads again, with a full backlog of pushes.
    let opts = ConnectOpts {
        recv_buffer: Some(4096),
        ..ConnectOpts::default()
    };
    let mut deaf = try_connect(addr, "vsn=2.0.0", opts).await.expect("connect");
    deaf.join_ok(STREAM, json!({})).await;
    let blob = "d".repeat(32 * 1024);
    for _ in 0..20 {
        broadcast(addr, STREAM, "blob", &json!({"blob": blob})).await;
    }
    // A connection that sent half a request line and stopped.
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, b"GET /api/st")
        .await
        .unwrap();
    // A connection that sent nothing at all.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A joined socket that behaves.
    let mut good = v1(addr).await;
    good.join_ok(STATS, json!({})).await;

    server.signal(libc::SIGTERM);
    match good.expect_closed().await {
        Closed::Frame(code, _) => assert_eq!(code, 1001),
        other => panic!("expected 1001, got {other:?}"),
    }
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exit within 10 s despite a deaf peer and half requests");
    assert!(status.success(), "{status:?}");
    drop(deaf);
}

#[tokio::test]
async fn after_exit_the_port_is_closed() {
    let mut server = Server::start(&[]);
    let addr = server.addr;
    let _c = v2(addr).await;
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10)).expect("exit");
    assert!(status.success(), "{status:?}");
    // Nothing listens any more. (A connect can still "succeed" when the
    // kernel picks the freed port as the client's own source port: a TCP
    // self-connect, which is not the server.)
    if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
        assert_eq!(
            s.local_addr().unwrap(),
            s.peer_addr().unwrap(),
            "still listening after exit"
        );
    }
}

/// The signal handlers are in place by the time the start line is printed:
/// a SIGTERM sent the moment the line is read is a graceful shutdown, not
/// death by signal.
#[tokio::test]
async fn sigterm_right_after_the_start_line_is_still_graceful() {
    for _ in 0..5 {
        let mut server = Server::start(&[]);
        server.signal(libc::SIGTERM);
        let status = server.wait_exit(Duration::from_secs(10)).expect("exit");
        assert!(status.success(), "{status:?}");
    }
}
