//! What the cluster tests need beyond `tests/common` (which `cluster.rs`
//! declares as `mod common;`): a throw-away `redis-server` per test, a raw
//! RESP client, and headcount nodes started in cluster mode on it.
//! Everything started here is stopped when its value is dropped.
//! `redis_cluster` does the same for a Redis Cluster of six servers. Each
//! test crate uses a part of it, hence `allow(dead_code)`.
#![allow(dead_code)]

pub mod redis_cluster;

use crate::common::{cluster_stats, free_port, v2, wait_for, Client, Server};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
            let _ = child.kill();
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
pub fn resp_command(port: u16, args: &[&str]) -> std::io::Result<String> {
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

/// `headcount serve` in cluster mode on `redis`, as node `name`.
pub fn start_node(redis: &str, name: &str, extra: &[&str]) -> Server {
    Server::builder()
        .args(["--node", name, "--redis", redis])
        .args(extra.iter().copied())
        .start()
}

/// Starts `n` nodes named `n1`..`nN` on one Redis and waits until each
/// sees all of them.
pub async fn cluster(redis: &Redis, n: usize, extra: &[&str]) -> Vec<Server> {
    let nodes: Vec<Server> = (1..=n)
        .map(|i| start_node(&redis.url(), &format!("n{i}"), extra))
        .collect();
    all_see_each_other(&nodes).await;
    nodes
}

/// Waits (at most 10 s) until each of `nodes` counts all of them in its
/// cluster stats.
pub async fn all_see_each_other(nodes: &[Server]) {
    for node in nodes {
        wait_for(
            Duration::from_secs(10),
            "every node sees the cluster",
            || async { cluster_stats(node.addr).await["cluster_size"] == nodes.len() },
        )
        .await;
    }
}

/// A V2 client of `node` that waits at most 5 s for each reply.
pub async fn client_of(node: &Server) -> Client {
    v2(node.addr).await.with_timeout(Duration::from_secs(5))
}
