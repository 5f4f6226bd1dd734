//! Structured logs (issue 6, item 4): with `--log-format json` and debug
//! level, every membership event — join, leave, a join replaced by a second
//! one, a socket closing with memberships — is one JSON line carrying the
//! node, the socket id and the topic. (The per-minute totals line is
//! covered by the unit test in `src/summary.rs`.) Helpers are local to this
//! file on purpose.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const NODE: &str = "logs@test";

struct Node {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start() -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_headcount"));
        for (k, _) in std::env::vars() {
            if k.starts_with("HEADCOUNT_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["serve", "--bind", "127.0.0.1:0", "--node", NODE])
            .args(["--log-format", "json"])
            .env("RUST_LOG", "headcount=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn headcount serve");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("headcount listening on ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected start line {line:?}"));
        Node { child, addr, lines }
    }

    /// Every log line so far, each parsed as JSON (a line that is not JSON
    /// fails the test).
    fn records(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let records = self.records();
            if pred(&records) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; logs:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends a V2 frame and waits for the reply to `reference`.
async fn request(ws: &mut Ws, join_ref: &str, reference: &str, topic: &str, event: &str) {
    let frame = serde_json::json!([join_ref, reference, topic, event, {}]).to_string();
    ws.send(Message::Text(frame.into())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("reply within 10 s")
            .expect("socket open")
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(&text).unwrap();
        if v[1] == reference && v[3] == "phx_reply" {
            assert_eq!(v[4]["status"], "ok", "{text}");
            return;
        }
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
    let node = Node::start();
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", node.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    request(&mut ws, "1", "1", "patterns:stream", "phx_join").await;
    request(&mut ws, "2", "2", "patterns:stats", "phx_join").await;
    request(&mut ws, "3", "3", "patterns:stream", "phx_join").await; // replaces "1"
    request(&mut ws, "2", "4", "patterns:stats", "phx_leave").await;
    request(&mut ws, "5", "5", "patterns:vsm", "phx_join").await;
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}

    let records = node.wait_for("the socket closed line", |r| {
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
