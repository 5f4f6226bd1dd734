//! Structured logs (issue 6, item 4): with `--log-format json` and debug
//! level, every membership event — join, leave, a join replaced by a second
//! one, a socket closing with memberships — is one JSON line carrying the
//! node, the socket id and the topic. (The per-minute totals line is
//! covered by the unit test in `src/summary.rs`.) The node, its captured
//! stderr and the client come from `tests/common`.

mod common;

use common::{v2, Server, TIMEOUT};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NODE: &str = "logs@test";

/// A node logging JSON at debug level; its stderr is captured.
fn start() -> Server {
    Server::builder()
        .args(["--node", NODE, "--log-format", "json"])
        .env("RUST_LOG", "headcount=debug")
        .start()
}

/// Every complete log line so far, each parsed as JSON (a line that is not
/// JSON fails the test).
fn records(node: &Server) -> Vec<Value> {
    node.stderr_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn wait_for(node: &Server, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let records = records(node);
        if pred(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; logs:\n{}",
            node.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn membership_events<'a>(records: &'a [Value], message: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["message"] == message && r["level"] == "DEBUG")
        .collect()
}

#[tokio::test]
async fn json_logs_carry_node_socket_and_topic_on_every_membership_event() {
    let node = start();
    let mut ws = v2(node.addr).await;
    // Refs count up from 1, a join's ref is its join_ref: the frames are
    // (join_ref, ref) 1,1 / 2,2 / 3,3 / 2,4 / 5,5.
    ws.join_ok("patterns:stream", json!({})).await;
    ws.join_ok("patterns:stats", json!({})).await;
    ws.join_ok("patterns:stream", json!({})).await; // replaces "1"
    ws.leave("patterns:stats").await.assert_ok();
    ws.join_ok("patterns:vsm", json!({})).await;
    ws.try_close().await.unwrap();

    let records = wait_for(&node, "the socket closed line", |r| {
        r.iter().any(|r| r["message"] == "socket closed")
    });
    let joined = membership_events(&records, "joined");
    let left = membership_events(&records, "left");
    assert_eq!(joined.len(), 4, "{joined:?}");
    assert_eq!(left.len(), 4, "{left:?}");
    let socket_id = &joined[0]["socket_id"];
    assert!(socket_id.is_u64(), "socket_id is a number: {socket_id}");
    for r in joined.iter().chain(&left) {
        assert_eq!(r["node"], NODE, "{r}");
        assert_eq!(&r["socket_id"], socket_id, "{r}");
        assert!(r["topic"].is_string(), "{r}");
        assert!(r["timestamp"].is_string(), "{r}");
    }
    let topics = |events: &[&Value]| -> Vec<String> {
        events
            .iter()
            .map(|r| r["topic"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(
        topics(&joined),
        [
            "patterns:stream",
            "patterns:stats",
            "patterns:stream",
            "patterns:vsm"
        ]
    );
    let reasons: Vec<(String, String)> = left
        .iter()
        .map(|r| {
            (
                r["topic"].as_str().unwrap_or("").to_owned(),
                r["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons[0], ("patterns:stream".into(), "rejoin".into()));
    assert_eq!(reasons[1], ("patterns:stats".into(), "leave".into()));
    let mut closed: Vec<&(String, String)> = reasons[2..].iter().collect();
    closed.sort();
    assert_eq!(
        closed,
        [
            &("patterns:stream".to_owned(), "close".to_owned()),
            &("patterns:vsm".to_owned(), "close".to_owned())
        ]
    );
    let opened = membership_events(&records, "socket opened");
    assert_eq!(opened.len(), 1);
    assert_eq!(&opened[0]["socket_id"], socket_id);
    let closed = membership_events(&records, "socket closed");
    assert_eq!(closed[0]["reason"], "closed by client");
    assert_eq!(closed[0]["memberships"], 2);
}
