//! Helpers for the cluster tests: a throw-away `redis-server` per test,
//! headcount nodes as separate processes of the real binary, a Phoenix V2
//! WebSocket client, raw HTTP and a raw RESP client. Everything started here
//! is stopped when its value is dropped.

#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "hc-{what}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// A `redis-server` on a free port with no persistence, in its own dir.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Redis {
    /// Starts one; panics (the test fails) when redis-server cannot start.
    pub fn start() -> Redis {
        let mut r = Redis {
            port: 0,
            child: None,
            dir: TempDir::new("redis"),
        };
        for _ in 0..5 {
            r.port = free_port();
            if r.spawn() {
                return r;
            }
        }
        panic!("could not start redis-server (is it installed? `apt-get install redis-server`)");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server: {e} (install it: apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: Redis vanishes with everything it held.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts Redis again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not restart on {}",
            self.port
        );
    }

    /// Sends one command; returns the reply in a simple text form.
    pub fn cmd(&self, args: &[&str]) -> String {
        Redis::cmd_on(self.port, args)
    }

    /// The same, for a thread that holds only the port.
    pub fn cmd_on(port: u16, args: &[&str]) -> String {
        resp_command(port, args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    resp_command(port, &["PING"]).is_ok_and(|r| r == "PONG")
}

/// A one-shot RESP2 client: arrays come back joined with newlines.
fn resp_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    s.write_all(&out)?;
    let mut r = BufReader::new(s);
    read_reply(&mut r)
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end();
    let bad = || std::io::Error::other(format!("bad reply {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(std::io::Error::other(rest.to_owned())),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(r)?);
            }
            Ok(items.join("\n"))
        }
        _ => Err(bad()),
    }
}

/// One headcount node, a separate process of the real binary.
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl Node {
    /// `headcount serve` on a free port in cluster mode on `redis`.
    pub fn start(redis: &str, name: &str, extra: &[&str]) -> Node {
        let dir = TempDir::new("node");
        let log = dir.0.join("stderr.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_headcount"))
            .args(["serve", "--bind", "127.0.0.1:0", "--node", name])
            .args(["--redis", redis])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn headcount");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            // Keep reading so the node never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "node {name} printed no start line; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        // "headcount listening on 127.0.0.1:PORT node NAME"
        let addr = line
            .strip_prefix("headcount listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected start line {line:?}"));
        Node {
            name: name.to_owned(),
            addr,
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGTERM);
        }
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                signal(&child, libc::SIGKILL);
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, String) {
        http(self.addr, "POST", path, Some(&body.to_string())).await
    }

    pub async fn cluster_stats(&self) -> Value {
        let (status, body) = self.get("/api/stats/cluster").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    pub async fn local_stats(&self) -> Value {
        let (status, body) = self.get("/api/stats").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                (key == name).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(f64::NAN)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- log of node {} (last lines) ---", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        self.sigkill();
    }
}

/// Starts `n` nodes named `n1`..`nN` on one Redis and waits until each
/// sees all of them.
pub async fn cluster(redis: &Redis, n: usize, extra: &[&str]) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=n)
        .map(|i| Node::start(&redis.url(), &format!("n{i}"), extra))
        .collect();
    for node in &nodes {
        wait_for(
            Duration::from_secs(10),
            "every node sees the cluster",
            || async { node.cluster_stats().await["cluster_size"] == n },
        )
        .await;
    }
    nodes
}

/// Polls `check` every 10 ms until it holds; panics after `within`.
/// Returns how long it took.
pub async fn wait_for<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!("not within {within:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One HTTP/1.1 request with `Connection: close`; status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect for HTTP");
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send HTTP");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("HTTP answer within 5 s")
        .expect("read HTTP");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A pushed message: topic, event, payload.
#[derive(Clone, Debug)]
pub struct Push {
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// A Phoenix V2 client over tokio-tungstenite.
pub struct Client {
    ws: Ws,
    next_ref: u64,
    joins: HashMap<String, String>,
    /// Pushes read while waiting for a reply.
    pub pushes: Vec<Push>,
    pub closed: Option<Option<u16>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        Client {
            ws,
            next_ref: 1,
            joins: HashMap::new(),
            pushes: Vec::new(),
            closed: None,
        }
    }

    async fn send(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        let r = self.next_ref.to_string();
        self.next_ref += 1;
        let frame = json!([join_ref, r, topic, event, payload]).to_string();
        self.ws
            .send(Message::Text(frame.into()))
            .await
            .expect("send frame");
        r
    }

    /// Reads one frame (`None` when the socket closed or nothing came).
    async fn read(&mut self, within: Duration) -> Option<Value> {
        loop {
            let msg = match tokio::time::timeout(within, self.ws.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(_))) | Ok(None) => {
                    self.closed.get_or_insert(None);
                    return None;
                }
                Err(_) => return None,
            };
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).ok(),
                Message::Close(frame) => {
                    self.closed = Some(frame.map(|f| u16::from(f.code)));
                    return None;
                }
                _ => continue,
            }
        }
    }

    /// Sends a request and waits for its reply: (status, response).
    pub async fn request(&mut self, topic: &str, event: &str, payload: Value) -> (String, Value) {
        let join_ref = self.joins.get(topic).cloned();
        let r = self.send(join_ref.as_deref(), topic, event, payload).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let Some(frame) = self.read(Duration::from_secs(5)).await else {
                break;
            };
            if frame[1] == r.as_str() && frame[3] == "phx_reply" {
                let status = frame[4]["status"].as_str().unwrap_or("").to_owned();
                return (status, frame[4]["response"].clone());
            }
            if frame[1].is_null() || frame[3] != "phx_reply" {
                self.pushes.push(Push {
                    topic: frame[2].as_str().unwrap_or("").to_owned(),
                    event: frame[3].as_str().unwrap_or("").to_owned(),
                    payload: frame[4].clone(),
                });
            }
        }
        panic!("no reply to {event} on {topic}");
    }

    pub async fn join(&mut self, topic: &str) {
        let join_ref = self.next_ref.to_string();
        self.joins.insert(topic.to_owned(), join_ref);
        let (status, response) = self.request(topic, "phx_join", json!({})).await;
        assert_eq!(status, "ok", "join {topic}: {response}");
    }

    pub async fn leave(&mut self, topic: &str) {
        let (status, _) = self.request(topic, "phx_leave", json!({})).await;
        assert_eq!(status, "ok");
        self.joins.remove(topic);
    }

    /// Reads pushes for `quiet` after the last one; returns them all
    /// (including those buffered earlier).
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Push> {
        while let Some(frame) = self.read(quiet).await {
            if frame[3] != "phx_reply" {
                self.pushes.push(Push {
                    topic: frame[2].as_str().unwrap_or("").to_owned(),
                    event: frame[3].as_str().unwrap_or("").to_owned(),
                    payload: frame[4].clone(),
                });
            }
        }
        std::mem::take(&mut self.pushes)
    }

    /// Waits for the server to close the socket; the close code.
    pub async fn closed_with(&mut self, within: Duration) -> Option<u16> {
        let deadline = Instant::now() + within;
        while self.closed.is_none() && Instant::now() < deadline {
            self.read(deadline.saturating_duration_since(Instant::now()))
                .await;
        }
        self.closed.flatten()
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Close code 1001 (going away).
pub const GOING_AWAY: u16 = 1001;
