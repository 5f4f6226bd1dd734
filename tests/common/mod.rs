//! Shared helpers for the black-box tests: a guard around a real
//! `headcount serve` process on a free port (its stderr captured), other
//! `headcount` commands and their output, a small Phoenix Channels client
//! (V1 objects, V2 arrays, V2 binary pushes) over tokio-tungstenite, raw
//! HTTP/1.1 over a TcpStream, Prometheus text parsing, and polling with a
//! deadline instead of sleeping and hoping. Every test crate compiles this
//! module and uses a part of it, hence `allow(dead_code)`.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// How long any single expectation may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub const STATS: &str = "patterns:stats";
pub const STREAM: &str = "patterns:stream";
pub const VSM: &str = "patterns:vsm";

/// The per-socket rate limits (SPEC §8.4) raised out of the way, for tests
/// whose sockets send far more joins and messages than a browser would.
pub const NO_LIMITS: [&str; 8] = [
    "--max-messages-per-second",
    "1000000",
    "--max-messages-burst",
    "1000000",
    "--max-joins-per-second",
    "1000000",
    "--max-joins-burst",
    "1000000",
];

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

/// A running `headcount serve`; killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub node: String,
    pub start_line: String,
    stderr: Output,
}

pub struct ServerBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    bind: bool,
    nofile: Option<u64>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_headcount")
}

/// A `headcount` command with no `HEADCOUNT_*` settings inherited from the
/// environment the tests run in, and nothing else changed.
pub fn bare_command() -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("HEADCOUNT_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `bare_command()` logging at `info`, without colours.
pub fn command() -> Command {
    let mut cmd = bare_command();
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd
}

/// A free TCP port on 127.0.0.1 (bound once, then released): nothing
/// listens there until someone binds it again.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Everything a child wrote on one stream, gathered by a reader thread
/// (at most the first MiB or so).
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    pub fn gather(&self, mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<()> {
        let sink = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // A pty master reads EIO once the child side is closed: the end.
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap();
                if s.len() < 1 << 20 {
                    s.extend_from_slice(&buf[..n]);
                }
            }
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The complete (newline-terminated) lines so far.
    pub fn lines(&self) -> Vec<String> {
        let text = self.text();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(str::to_owned).collect()
    }

    /// Polls every 20 ms until `pred` holds; panics after `TIMEOUT` with
    /// the output so far.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Output) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !pred(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; output so far:\n{:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl ServerBuilder {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Do not add `--bind 127.0.0.1:0` (the test sets the address itself).
    pub fn no_bind(mut self) -> Self {
        self.bind = false;
        self
    }

    /// Runs the server with both open-file limits set to `n`.
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Starts the server and waits for its start line; `Err` carries the
    /// exit status and stderr when it exits without one.
    pub fn spawn(self) -> Result<Server, String> {
        let mut cmd = command();
        cmd.arg("serve");
        if self.bind {
            cmd.args(["--bind", "127.0.0.1:0"]);
        }
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(n) = self.nofile {
            // SAFETY: setrlimit is async-signal-safe and only touches the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", bin()))?;
        let stderr = Output::default();
        stderr.gather(child.stderr.take().expect("stderr piped"));
        let out = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = String::new();
            let first = reader.read_line(&mut line).map(|_| line.clone());
            let _ = tx.send(first);
            // Keep draining so the server never sees a closed stdout.
            let mut rest = String::new();
            while matches!(reader.read_line(&mut rest), Ok(n) if n > 0) {
                rest.clear();
            }
        });
        let line = match rx.recv_timeout(TIMEOUT) {
            Ok(Ok(line)) if !line.is_empty() => line,
            other => {
                let status = wait_exit(&mut child, Duration::from_secs(2));
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "no start line ({other:?}), status {status:?}, stderr:\n{}",
                    stderr.text()
                ));
            }
        };
        let (addr, node) =
            parse_start_line(&line).ok_or_else(|| format!("unexpected start line {line:?}"))?;
        Ok(Server {
            child,
            addr,
            node,
            start_line: line.trim_end().to_owned(),
            stderr,
        })
    }

    pub fn start(self) -> Server {
        match self.spawn() {
            Ok(s) => s,
            Err(e) => panic!("server did not start: {e}"),
        }
    }
}

/// `headcount listening on 127.0.0.1:PORT node NAME`
pub fn parse_start_line(line: &str) -> Option<(SocketAddr, String)> {
    let rest = line.trim_end().strip_prefix("headcount listening on ")?;
    let (addr, node) = rest.split_once(" node ")?;
    Some((addr.parse().ok()?, node.to_owned()))
}

/// Waits up to `limit` for `child` to exit.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            args: Vec::new(),
            envs: Vec::new(),
            bind: true,
            nofile: None,
        }
    }

    /// `headcount serve --bind 127.0.0.1:0 <args>`.
    pub fn start(args: &[&str]) -> Server {
        Server::builder().args(args.iter().copied()).start()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL, and reap the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// The complete lines the server has written to stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lines()
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(50));
            let err = self.stderr();
            let tail =
                |lines: Vec<&str>, n: usize| lines[lines.len().saturating_sub(n)..].join("\n");
            // Libraries' lines (redis-rs retrying, say) can fill any tail:
            // headcount's own come first.
            let own: Vec<&str> = err.lines().filter(|l| l.contains(" headcount")).collect();
            eprintln!(
                "--- server {} ({}) stderr, its own lines (tail) ---\n{}\n--- all of its stderr (tail) ---\n{}",
                self.node,
                self.addr,
                tail(own, 40),
                tail(err.lines().collect(), 15)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Polls `probe` every 20 ms until it returns `Some`, or panics after
/// `TIMEOUT` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 10 ms until it holds, or panics after `within`
/// naming `what`; returns how long it took (for tests that bound it).
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

// ---------------------------------------------------------------------------
// HTTP/1.1 over a raw TcpStream
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`). The body is
/// written while the response is read, so a server that answers early
/// (413) is still heard.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let stream = TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = stream.into_split();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let mut has_length = false;
    for (k, v) in headers {
        has_length |= k.eq_ignore_ascii_case("content-length");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length && (method != "GET" || !body.is_empty()) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        // Keep the write half open until the reader is done.
        tokio::time::sleep(TIMEOUT).await;
        drop(wr);
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, async {
        let mut buf = [0u8; 16384];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if response_complete(&raw) {
                        break Ok(());
                    }
                }
                // A reset after the whole response arrived still counts.
                Err(e) if !raw.is_empty() => {
                    let _ = e;
                    break Ok(());
                }
                Err(e) => break Err(e),
            }
        }
    })
    .await;
    writer.abort();
    match read {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{method} {path}: no response"),
            ))
        }
    }
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad response: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

fn split_head(raw: &[u8]) -> Option<(usize, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((end + 4, &raw[..end]))
}

fn response_complete(raw: &[u8]) -> bool {
    let Some((body_at, head)) = split_head(raw) else {
        return false;
    };
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    for line in head.lines() {
        if let Some(v) = line.strip_prefix("content-length:") {
            if let Ok(n) = v.trim().parse::<usize>() {
                return raw.len() >= body_at + n;
            }
        }
    }
    if head.contains("transfer-encoding: chunked") {
        return raw[body_at..].ends_with(b"0\r\n\r\n");
    }
    false
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let (body_at, head) = split_head(raw)?;
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let mut body = raw[body_at..].to_vec();
    if chunked {
        body = dechunk(&body)?;
    } else if let Some((_, n)) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        body.truncate(n.parse().ok()?);
    }
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(addr, "GET", path, &[], b"")
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// POST a JSON value with `Content-Type: application/json`.
pub async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> HttpResponse {
    post(addr, path, &[], body.to_string().as_bytes()).await
}

/// POST raw bytes as `application/json`, plus `headers`.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http(addr, "POST", path, &all, body)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Publishes through `POST /api/events` and asserts 202.
pub async fn publish(addr: SocketAddr, events: &Value) -> Value {
    let res = post_json(addr, "/api/events", events).await;
    assert_eq!(res.status, 202, "POST /api/events: {}", res.text());
    res.json()
}

/// Raw push through `POST /api/broadcast`, asserting 202.
pub async fn broadcast(addr: SocketAddr, topic: &str, event: &str, payload: &Value) {
    let res = post_json(
        addr,
        "/api/broadcast",
        &json!({"topic": topic, "event": event, "payload": payload}),
    )
    .await;
    assert_eq!(res.status, 202, "POST /api/broadcast: {}", res.text());
}

// ---------------------------------------------------------------------------
// Stats over HTTP
// ---------------------------------------------------------------------------

pub async fn stats(addr: SocketAddr) -> Value {
    let res = get(addr, "/api/stats").await;
    assert_eq!(res.status, 200, "/api/stats: {}", res.text());
    res.json()
}

pub async fn cluster_stats(addr: SocketAddr) -> Value {
    let res = get(addr, "/api/stats/cluster").await;
    assert_eq!(res.status, 200, "/api/stats/cluster: {}", res.text());
    res.json()
}

/// Members of `topic` over all nodes in a LocalStats/ClusterStats value (0
/// when the topic is absent).
pub fn topic_count(stats: &Value, topic: &str) -> u64 {
    stats["connections_by_topic"]
        .get(topic)
        .and_then(Value::as_object)
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// Per-topic counts summed over nodes.
pub fn topic_counts(stats: &Value) -> BTreeMap<String, u64> {
    stats["connections_by_topic"]
        .as_object()
        .expect("connections_by_topic is an object")
        .keys()
        .map(|t| (t.clone(), topic_count(stats, t)))
        .collect()
}

/// Polls `/api/stats` until `pred` holds; returns that snapshot.
pub async fn wait_stats(addr: SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let s = stats(addr).await;
        if pred(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for stats: {what}; last: {s}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The keys of the JSON object at `path` inside the JSON text `json`, in the
/// order the text writes them (`serde_json::Value` sorts them). Each step of
/// `path` is an object key, or an array index for arrays (a V2 frame).
pub fn keys_in_order(json: &str, path: &[&str]) -> Vec<String> {
    use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde_json::value::RawValue;

    struct Keys(Vec<String>);
    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }

    let mut at: Box<RawValue> =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    for step in path {
        let text = at.get();
        let next = if text.trim_start().starts_with('[') {
            let items: Vec<Box<RawValue>> = serde_json::from_str(text).expect("array");
            let i: usize = step.parse().unwrap_or_else(|_| panic!("index {step:?}"));
            items.into_iter().nth(i)
        } else {
            let mut fields: HashMap<String, Box<RawValue>> =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            fields.remove(*step)
        };
        at = next.unwrap_or_else(|| panic!("no {step:?} in {text}"));
    }
    serde_json::from_str::<Keys>(at.get())
        .unwrap_or_else(|e| panic!("not an object at {path:?} ({e}): {json}"))
        .0
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`
pub fn assert_timestamp(v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp not a string: {v}"));
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b[i].is_ascii_digit());
    let ok = b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z';
    assert!(ok, "not RFC 3339 UTC with milliseconds: {s:?}");
}

/// Checks the LocalStats shape of SPEC §3.1 and that its figures agree.
pub fn assert_local_stats(v: &Value, node: &str) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("LocalStats not an object: {v}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "connection_count",
            "connections_by_topic",
            "node",
            "socket_count",
            "stream_count",
            "timestamp",
            "topics_omitted"
        ],
        "LocalStats keys: {v}"
    );
    assert_eq!(v["node"], node, "{v}");
    for k in ["connection_count", "stream_count", "socket_count"] {
        assert!(v[k].is_u64(), "{k} is not a non-negative integer: {v}");
    }
    let by_topic = v["connections_by_topic"].as_object().expect("object");
    let mut sum = 0;
    for (topic, per_node) in by_topic {
        let per_node = per_node.as_object().expect("per-node object");
        assert_eq!(per_node.len(), 1, "one node in LocalStats: {v}");
        let n = per_node[node]
            .as_u64()
            .unwrap_or_else(|| panic!("{topic}: no count for {node}: {v}"));
        assert!(n > 0, "zero-count topic {topic} must vanish: {v}");
        sum += n;
    }
    let omitted = v["topics_omitted"]
        .as_u64()
        .unwrap_or_else(|| panic!("topics_omitted is not a count: {v}"));
    if omitted == 0 {
        assert_eq!(v["connection_count"].as_u64(), Some(sum), "total: {v}");
        assert_eq!(
            v["stream_count"].as_u64(),
            Some(topic_count(v, STREAM)),
            "stream_count: {v}"
        );
    } else {
        assert!(
            v["connection_count"].as_u64() > Some(sum),
            "totals cover the omitted topics: {v}"
        );
    }
    assert_timestamp(&v["timestamp"]);
}

// ---------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("bad metrics line {l:?}")))
            .collect();
        Metrics {
            samples,
            text: text.to_owned(),
        }
    }

    /// The sample with this name whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Like `get`, 0 when absent (a counter not yet incremented).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sample `name` without labels; panics when there is none.
    pub fn unlabelled(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels.is_empty())
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("no unlabelled sample {name} in:\n{}", self.text))
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    pub fn with_name(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name_labels, value) = line.trim().rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    let (name, labels) = match name_labels.split_once('{') {
        None => (name_labels.to_owned(), BTreeMap::new()),
        Some((name, rest)) => (name.to_owned(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_owned(), value);
    }
}

pub async fn metrics(addr: SocketAddr) -> Metrics {
    let res = get(addr, "/metrics").await;
    assert_eq!(res.status, 200, "/metrics: {}", res.text());
    Metrics::parse(&res.text())
}

/// Polls `/metrics` until `name{labels}` reaches at least `min`.
pub async fn wait_metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)], min: f64) -> f64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let m = metrics(addr).await;
        let v = m.value(name, labels);
        if v >= min {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {name}{labels:?} >= {min}; last {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// A Phoenix Channels client
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// V1 for even `i`, V2 for odd: the `i`-th of a mix of both serializers.
    pub fn alternating(i: usize) -> Vsn {
        if i.is_multiple_of(2) {
            Vsn::V1
        } else {
            Vsn::V2
        }
    }
}

/// One decoded server frame.
#[derive(Clone, Debug)]
pub struct Msg {
    /// V2: element 0; V1: the `join_ref` key if present, else Null.
    pub join_ref: Value,
    pub reference: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
    pub raw: String,
}

impl Msg {
    pub fn is_reply(&self) -> bool {
        self.event == "phx_reply"
    }

    pub fn status(&self) -> &str {
        self.payload["status"].as_str().unwrap_or("")
    }

    pub fn response(&self) -> &Value {
        &self.payload["response"]
    }
}

/// The status and response of a `phx_reply`.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: String,
    pub response: Value,
    pub msg: Msg,
}

impl Reply {
    pub fn assert_ok(&self) -> &Value {
        assert_eq!(self.status, "ok", "expected ok reply, got {}", self.msg.raw);
        &self.response
    }

    pub fn assert_error(&self) -> &Value {
        assert_eq!(
            self.status, "error",
            "expected error reply, got {}",
            self.msg.raw
        );
        &self.response
    }
}

/// How the server ended a connection, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code and reason.
    Frame(u16, String),
    /// A close frame without a code.
    Empty,
    /// EOF or reset without a close frame.
    NoFrame,
}

pub struct Client {
    ws: WebSocketStream<TcpStream>,
    pub vsn: Vsn,
    next_ref: u64,
    join_refs: HashMap<String, Value>,
    stash: VecDeque<Msg>,
    closed: Option<Closed>,
    /// How long one expectation (a reply, a message, the close) may take.
    timeout: Duration,
    pub response: tungstenite::handshake::client::Response,
}

#[derive(Default, Clone)]
pub struct ConnectOpts {
    /// Sec-WebSocket-Protocol offered.
    pub protocols: Option<String>,
    /// SO_RCVBUF of the client socket (for clients that never read).
    pub recv_buffer: Option<u32>,
    /// More request headers (`Origin`, …).
    pub headers: Vec<(String, String)>,
}

pub fn ws_url(addr: SocketAddr, query: &str) -> String {
    if query.is_empty() {
        format!("ws://{addr}/socket/websocket")
    } else {
        format!("ws://{addr}/socket/websocket?{query}")
    }
}

/// Opens a WebSocket; errors are returned (refusals are HTTP errors).
pub async fn try_connect(
    addr: SocketAddr,
    query: &str,
    opts: ConnectOpts,
) -> Result<Client, tungstenite::Error> {
    let socket = TcpSocket::new_v4()?;
    if let Some(n) = opts.recv_buffer {
        socket.set_recv_buffer_size(n)?;
    }
    let stream = tokio::time::timeout(TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
    stream.set_nodelay(true)?;
    let mut request = ws_url(addr, query).into_client_request()?;
    if let Some(p) = &opts.protocols {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(p).expect("header value"),
        );
    }
    for (k, v) in &opts.headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("header name");
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(v).expect("header value"));
    }
    let (ws, response) =
        tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(request, stream))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake"))??;
    let vsn = if query.split('&').any(|kv| kv.starts_with("vsn=2")) {
        Vsn::V2
    } else {
        Vsn::V1
    };
    Ok(Client {
        ws,
        vsn,
        next_ref: 0,
        join_refs: HashMap::new(),
        stash: VecDeque::new(),
        closed: None,
        timeout: TIMEOUT,
        response,
    })
}

pub async fn connect(addr: SocketAddr, query: &str) -> Client {
    try_connect(addr, query, ConnectOpts::default())
        .await
        .unwrap_or_else(|e| panic!("connect {query:?}: {e}"))
}

pub async fn v1(addr: SocketAddr) -> Client {
    connect(addr, "").await
}

pub async fn v2(addr: SocketAddr) -> Client {
    connect(addr, "vsn=2.0.0").await
}

pub async fn client(addr: SocketAddr, vsn: Vsn) -> Client {
    match vsn {
        Vsn::V1 => v1(addr).await,
        Vsn::V2 => v2(addr).await,
    }
}

/// A V2 binary push frame: kind 0, u8 sizes, fields, payload.
pub fn binary_push(
    join_ref: &str,
    reference: &str,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = vec![
        0,
        join_ref.len() as u8,
        reference.len() as u8,
        topic.len() as u8,
        event.len() as u8,
    ];
    for f in [join_ref, reference, topic, event] {
        v.extend_from_slice(f.as_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// Encodes one client frame in the given serializer. In V1 a Null join_ref
/// is left out, as clients that do not track join refs do.
pub fn encode(
    vsn: Vsn,
    join_ref: &Value,
    reference: &Value,
    topic: &str,
    event: &str,
    payload: &Value,
) -> String {
    match vsn {
        Vsn::V1 => {
            let mut o = serde_json::Map::new();
            o.insert("topic".into(), json!(topic));
            o.insert("event".into(), json!(event));
            o.insert("payload".into(), payload.clone());
            o.insert("ref".into(), reference.clone());
            if !join_ref.is_null() {
                o.insert("join_ref".into(), join_ref.clone());
            }
            Value::Object(o).to_string()
        }
        Vsn::V2 => json!([join_ref, reference, topic, event, payload]).to_string(),
    }
}

/// Decodes a server text frame.
pub fn decode(vsn: Vsn, text: &str) -> Msg {
    let v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {text}"));
    match vsn {
        Vsn::V1 => {
            let o = v
                .as_object()
                .unwrap_or_else(|| panic!("V1 frame is not an object: {text}"));
            for k in ["topic", "event", "payload", "ref"] {
                assert!(o.contains_key(k), "V1 frame lacks {k}: {text}");
            }
            Msg {
                join_ref: o.get("join_ref").cloned().unwrap_or(Value::Null),
                reference: o["ref"].clone(),
                topic: o["topic"].as_str().expect("topic string").to_owned(),
                event: o["event"].as_str().expect("event string").to_owned(),
                payload: o["payload"].clone(),
                raw: text.to_owned(),
            }
        }
        Vsn::V2 => {
            let a = v
                .as_array()
                .unwrap_or_else(|| panic!("V2 frame is not an array: {text}"));
            assert_eq!(a.len(), 5, "V2 frame arity: {text}");
            Msg {
                join_ref: a[0].clone(),
                reference: a[1].clone(),
                topic: a[2].as_str().expect("topic string").to_owned(),
                event: a[3].as_str().expect("event string").to_owned(),
                payload: a[4].clone(),
                raw: text.to_owned(),
            }
        }
    }
}

impl Client {
    /// Waits at most `limit` (instead of `TIMEOUT`) for each expected reply,
    /// message or close.
    pub fn with_timeout(mut self, limit: Duration) -> Client {
        self.timeout = limit;
        self
    }

    pub fn fresh_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// The join_ref this client uses for `topic` (Null when not joined).
    pub fn join_ref(&self, topic: &str) -> Value {
        self.join_refs.get(topic).cloned().unwrap_or(Value::Null)
    }

    pub async fn send_message(&mut self, m: Message) {
        tokio::time::timeout(TIMEOUT, self.ws.send(m))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    pub async fn try_send_text(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::text(text)).await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_message(Message::text(text)).await
    }

    /// Sends text frames in one write (queued, then one flush), so that the
    /// server reads them together.
    pub async fn send_batch(&mut self, texts: &[String]) {
        let fed = async {
            for t in texts {
                self.ws.feed(Message::text(t.as_str())).await?;
            }
            self.ws.flush().await
        };
        tokio::time::timeout(TIMEOUT, fed)
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.send_message(Message::binary(data)).await
    }

    /// A text frame whose bytes need not be UTF-8.
    pub async fn send_raw_text(&mut self, data: Vec<u8>) {
        let frame = Frame::message(data, OpCode::Data(Data::Text), true);
        self.send_message(Message::Frame(frame)).await
    }

    /// Sends one frame with explicit refs.
    pub async fn send(
        &mut self,
        join_ref: Value,
        reference: Value,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let text = encode(self.vsn, &join_ref, &reference, topic, event, &payload);
        self.send_text(&text).await
    }

    /// Pushes `event` on `topic` with the current join_ref and a fresh
    /// string ref; returns the ref.
    pub async fn push(&mut self, topic: &str, event: &str, payload: Value) -> Value {
        let r = json!(self.fresh_ref());
        let jr = self.join_ref(topic);
        self.send(jr, r.clone(), topic, event, payload).await;
        r
    }

    /// Pushes and waits for the reply.
    pub async fn request(&mut self, topic: &str, event: &str, payload: Value) -> Reply {
        let r = self.push(topic, event, payload).await;
        self.reply_to(topic, &r).await
    }

    /// Joins with a fresh join_ref; remembers it when the join is ok.
    pub async fn join(&mut self, topic: &str, params: Value) -> Reply {
        let r = json!(self.fresh_ref());
        self.send(r.clone(), r.clone(), topic, "phx_join", params)
            .await;
        let reply = self.reply_to(topic, &r).await;
        if reply.status == "ok" {
            self.join_refs.insert(topic.to_owned(), r);
        }
        reply
    }

    pub async fn join_ok(&mut self, topic: &str, params: Value) -> Value {
        let reply = self.join(topic, params).await;
        reply.assert_ok().clone()
    }

    pub async fn leave(&mut self, topic: &str) -> Reply {
        let reply = self.request(topic, "phx_leave", json!({})).await;
        self.join_refs.remove(topic);
        reply
    }

    pub async fn heartbeat(&mut self) {
        let r = json!(self.fresh_ref());
        self.send(Value::Null, r.clone(), "phoenix", "heartbeat", json!({}))
            .await;
        let reply = self.reply_to("phoenix", &r).await;
        assert_eq!(reply.status, "ok", "{}", reply.msg.raw);
        assert_eq!(reply.response, json!({}), "{}", reply.msg.raw);
    }

    /// Waits for the `phx_reply` on `topic` with ref `r`.
    pub async fn reply_to(&mut self, topic: &str, r: &Value) -> Reply {
        let (topic_owned, r_owned) = (topic.to_owned(), r.clone());
        let msg = self
            .expect(&format!("reply to ref {r} on {topic}"), |m| {
                m.is_reply() && m.topic == topic_owned && m.reference == r_owned
            })
            .await;
        Reply {
            status: msg.status().to_owned(),
            response: msg.response().clone(),
            msg,
        }
    }

    /// Reads one frame from the socket (not the stash). `None` on timeout.
    async fn read_frame(&mut self, limit: Duration) -> Option<Result<Msg, Closed>> {
        if let Some(c) = &self.closed {
            return Some(Err(c.clone()));
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(n) => n,
            };
            let closed = match next {
                Some(Ok(Message::Text(t))) => return Some(Ok(decode(self.vsn, t.as_str()))),
                Some(Ok(Message::Binary(b))) => {
                    panic!("unexpected binary frame from server: {b:?}")
                }
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(Message::Frame(_))) => continue,
                Some(Ok(Message::Close(Some(f)))) => {
                    Closed::Frame(u16::from(f.code), f.reason.as_str().to_owned())
                }
                Some(Ok(Message::Close(None))) => Closed::Empty,
                Some(Err(_)) | None => Closed::NoFrame,
            };
            self.closed = Some(closed.clone());
            return Some(Err(closed));
        }
    }

    /// The next message in arrival order (stash first).
    pub async fn next_msg(&mut self) -> Msg {
        if let Some(m) = self.stash.pop_front() {
            return m;
        }
        match self.read_frame(self.timeout).await {
            Some(Ok(m)) => m,
            Some(Err(c)) => panic!("socket closed ({c:?}) while waiting for a message"),
            None => panic!("no message within {:?}", self.timeout),
        }
    }

    /// Waits for the first message matching `pred`; messages that do not
    /// match are kept, in order, for later expectations.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).expect("index in range");
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await {
                Some(Ok(m)) if pred(&m) => return m,
                Some(Ok(m)) => self.stash.push_back(m),
                Some(Err(c)) => panic!(
                    "socket closed ({c:?}) while waiting for {what}; got meanwhile: {:?}",
                    self.stash.iter().map(|m| &m.raw).collect::<Vec<_>>()
                ),
                None => panic!(
                    "timed out waiting for {what}; got meanwhile: {:?}",
                    self.stash.iter().map(|m| &m.raw).collect::<Vec<_>>()
                ),
            }
        }
    }

    pub async fn expect_event(&mut self, topic: &str, event: &str) -> Msg {
        let (t, e) = (topic.to_owned(), event.to_owned());
        self.expect(&format!("{event} on {topic}"), move |m| {
            m.topic == t && m.event == e
        })
        .await
    }

    /// Everything received so far and not yet consumed, then clears it.
    pub fn take_stash(&mut self) -> Vec<Msg> {
        self.stash.drain(..).collect()
    }

    /// Reads until the server closes the connection; panics on timeout.
    /// Messages read meanwhile are kept in the stash.
    pub async fn expect_closed(&mut self) -> Closed {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await {
                Some(Ok(m)) => self.stash.push_back(m),
                Some(Err(c)) => return c,
                None => panic!("server did not close the socket within {:?}", self.timeout),
            }
        }
    }

    /// Reads messages for `window` and returns them (for the few checks
    /// that something does NOT arrive and no later marker can prove it).
    pub async fn collect_for(&mut self, window: Duration) -> Vec<Msg> {
        let mut out: Vec<Msg> = self.stash.drain(..).collect();
        let deadline = Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.read_frame(left).await {
                Some(Ok(m)) => out.push(m),
                Some(Err(_)) | None => return out,
            }
        }
    }

    /// Reads until nothing has arrived for `quiet` (or the socket is
    /// closed); returns every message received and not yet consumed,
    /// replies left out, in order.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Msg> {
        while let Some(Ok(m)) = self.read_frame(quiet).await {
            self.stash.push_back(m);
        }
        self.stash.drain(..).filter(|m| !m.is_reply()).collect()
    }

    /// A clean close: close frame, then wait for the server's.
    pub async fn close(self) {
        let _ = self.try_close().await;
    }

    /// `close`, returning whether the close frame could be sent.
    pub async fn try_close(mut self) -> Result<(), tungstenite::Error> {
        let sent = self.ws.close(None).await;
        let deadline = tokio::time::Instant::now() + self.timeout;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
        sent
    }

    /// Drops the TCP connection with a RST (SO_LINGER 0): no close frame,
    /// no FIN.
    pub fn abort(self) {
        set_linger_zero(self.ws.get_ref());
        drop(self);
    }

    /// Drops the TCP connection with a FIN but no WebSocket close frame.
    pub fn vanish(self) {
        drop(self);
    }

    pub fn tcp(&self) -> &TcpStream {
        self.ws.get_ref()
    }
}

/// SO_LINGER 0, as the load generator sets it: closing resets the
/// connection.
pub fn set_linger_zero(stream: &TcpStream) {
    headcount_bench::client::try_set_linger_zero(stream).expect("setsockopt(SO_LINGER)");
}

/// The HTTP status of a refused WebSocket upgrade, if that is what happened.
pub fn refusal_status(e: &tungstenite::Error) -> Option<u16> {
    match e {
        tungstenite::Error::Http(res) => Some(res.status().as_u16()),
        _ => None,
    }
}

/// The body of a refused WebSocket upgrade.
pub fn refusal_body(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(res) => res
            .body()
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default(),
        _ => String::new(),
    }
}
