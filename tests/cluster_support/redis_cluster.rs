//! A throw-away Redis Cluster for the tests: 6 `redis-server` processes (3
//! masters, 3 replicas) on free ports in a temp dir, created with
//! `redis-cli --cluster create … --cluster-replicas 1`, with a short
//! `cluster-node-timeout` so that a killed master fails over in seconds.
//! Everything is stopped and deleted when the guard is dropped (and the
//! servers die with the thread that started them, should the test process
//! itself be killed).
//!
//! The logic of `/work/notes/redis-cluster-start.sh`, in Rust: the servers
//! are children of the test (not daemons), so nothing is ever stopped by
//! pid file or by name. Each node gets its own cluster bus port
//! (`--cluster-port`), since `port + 10000` may not be free (or valid).
//! "Healthy" includes every replica having finished its first sync: a
//! replica that never synced refuses to fail over.

use super::{resp_command, TempDir};
use crate::common::free_port;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `cluster-node-timeout`: a master silent this long is failing; a replica
/// takes over about 1.5–3 s after the kill.
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// How long the cluster may take to form (on a loaded machine).
const FORM_WITHIN: Duration = Duration::from_secs(60);

/// One `redis-server` of the cluster.
pub struct RedisNode {
    pub port: u16,
    /// The cluster bus port.
    pub bus: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// SIGSTOPped: the process lives and its sockets accept connections,
    /// but it answers nothing (a hung server).
    stopped: bool,
}

impl RedisNode {
    /// Whether the server answers: started, and neither killed nor
    /// stopped.
    pub fn is_running(&self) -> bool {
        self.child.is_some() && !self.stopped
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Starts the server; false if it exited (a port was taken) or did not
    /// answer within 10 s.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--cluster-port", &self.bus.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // A replica may always fail over, however long it was cut off.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            // The first sync of a replica at once, not after the default 5 s.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--logfile")
            .arg(self.log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and only touches the child.
        // The server dies with the thread that started it (the test's).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run redis-server: {e}. The Redis Cluster tests need redis-server and \
                 redis-cli >= 7.0 on PATH (Debian: apt-get install redis-server redis-tools)"
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if resp_command(self.port, &["PING"]).is_ok_and(|r| r == "PONG") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// SIGKILL (a stopped process dies too), and reap it.
    pub fn kill(&mut self) {
        self.stopped = false;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One node's line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub flags: BTreeSet<String>,
    /// The master's id, for a replica.
    pub master: Option<String>,
    pub connected: bool,
    /// Slot ranges, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub fn is_master(&self) -> bool {
        self.flags.contains("master")
    }

    pub fn failing(&self) -> bool {
        ["fail", "fail?", "handshake", "noaddr"]
            .iter()
            .any(|f| self.flags.contains(*f))
    }

    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// Reads `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            // ip:port@cport[,hostname]
            let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeLine {
                id: f[0].to_owned(),
                port,
                flags: f[2].split(',').map(str::to_owned).collect(),
                master: (f[3] != "-").then(|| f[3].to_owned()),
                connected: f[7] == "connected",
                slots,
            })
        })
        .collect()
}

/// The slot of a key (hash tags included), as Redis Cluster computes it:
/// CRC16/XMODEM of the key, or of the first non-empty `{…}`, mod 16384.
pub fn key_slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let hashed = match b.iter().position(|&c| c == b'{') {
        Some(open) => match b[open + 1..].iter().position(|&c| c == b'}') {
            Some(len) if len > 0 => &b[open + 1..open + 1 + len],
            _ => b,
        },
        None => b,
    };
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// 3 masters and 3 replicas, stopped and deleted on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts the six servers, creates the cluster and waits until it is
    /// healthy; panics with what went wrong otherwise (the test fails).
    pub fn start() -> RedisCluster {
        for tool in ["redis-server", "redis-cli"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "{tool} is missing: the Redis Cluster tests need redis-server and redis-cli \
                 >= 7.0 on PATH (Debian: apt-get install redis-server redis-tools)"
            );
        }
        let started = Instant::now();
        let dir = TempDir::new("rcluster");
        let mut nodes = Vec::new();
        for i in 0..6 {
            let node_dir = dir.0.join(i.to_string());
            std::fs::create_dir_all(&node_dir).expect("a node dir");
            let mut node = RedisNode {
                port: 0,
                bus: 0,
                dir: node_dir,
                child: None,
                stopped: false,
            };
            let mut up = false;
            for _ in 0..5 {
                node.port = free_port();
                node.bus = free_port();
                if node.port != node.bus && node.spawn() {
                    up = true;
                    break;
                }
            }
            if !up {
                let log = std::fs::read_to_string(node.log()).unwrap_or_default();
                panic!("redis-server (cluster node {i}) did not start; its log:\n{log}");
            }
            nodes.push(node);
        }
        let mut cluster = RedisCluster { nodes, dir };
        cluster.create();
        cluster.wait_healthy(FORM_WITHIN);
        println!(
            "redis cluster up on ports {:?} after {:?}",
            cluster.ports(),
            started.elapsed()
        );
        cluster
    }

    fn create(&mut self) {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let log = self.dir.0.join("create.log");
        let out = std::fs::File::create(&log).expect("create.log");
        let mut child = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("a second handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        let status = crate::common::wait_exit(&mut child, FORM_WITHIN);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !status.is_some_and(|s| s.success()) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("redis-cli --cluster create failed ({status:?}):\n{text}");
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis://` URLs of the first `n` nodes, comma-separated: a seed list.
    pub fn seeds(&self, n: usize) -> String {
        self.nodes[..n]
            .iter()
            .map(RedisNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn live(&self) -> impl Iterator<Item = &RedisNode> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    fn index_of(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port == port)
    }

    /// A command on node `i`; the reply in the simple text form of
    /// `cluster_support` (arrays joined with newlines), or the error.
    pub fn try_cmd(&self, i: usize, args: &[&str]) -> std::io::Result<String> {
        resp_command(self.nodes[i].port, args)
    }

    pub fn cmd(&self, i: usize, args: &[&str]) -> String {
        self.try_cmd(i, args)
            .unwrap_or_else(|e| panic!("redis node {i} {args:?}: {e}"))
    }

    /// A command on any running node (one that needs no particular slot,
    /// such as a classic PUBLISH).
    pub fn cmd_any(&self, args: &[&str]) -> String {
        let i = (0..self.nodes.len())
            .find(|&i| self.nodes[i].is_running())
            .expect("a running redis node");
        self.cmd(i, args)
    }

    /// A keyed command on the master that holds `key` now.
    pub fn cmd_for_key(&self, key: &str, args: &[&str]) -> String {
        let i = self.master_of(key).expect("a master for the key");
        self.cmd(i, args)
    }

    /// `CLUSTER NODES` as node `i` sees it.
    pub fn view_of(&self, i: usize) -> Option<Vec<NodeLine>> {
        self.try_cmd(i, &["CLUSTER", "NODES"])
            .ok()
            .map(|t| parse_nodes(&t))
    }

    /// The index of the running, non-failing master that owns `key`'s slot,
    /// as every running node sees it (`None` while they disagree).
    pub fn master_of(&self, key: &str) -> Option<usize> {
        let slot = key_slot(key);
        let mut owner = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.is_running() {
                continue;
            }
            let view = self.view_of(i)?;
            let line = view
                .iter()
                .find(|l| l.is_master() && !l.failing() && l.owns(slot))?;
            let at = self.index_of(line.port)?;
            if owner.is_some_and(|o| o != at) || !self.nodes[at].is_running() {
                return None;
            }
            owner = Some(at);
        }
        owner
    }

    /// Whether every running node says `cluster_state:ok`, and agrees that
    /// every slot is served by a running master; with `replicated`, also
    /// that every such master has a running replica that finished its sync.
    pub fn healthy(&self, replicated: bool) -> Result<(), String> {
        let live: BTreeSet<u16> = self.live().map(|n| n.port).collect();
        let mut masters: Option<BTreeMap<u16, Vec<(u16, u16)>>> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.is_running() {
                continue;
            }
            let info = self
                .try_cmd(i, &["CLUSTER", "INFO"])
                .map_err(|e| format!("{}: {e}", n.port))?;
            if !info.contains("cluster_state:ok") {
                return Err(format!("{}: not cluster_state:ok", n.port));
            }
            let view = self.view_of(i).ok_or("no CLUSTER NODES")?;
            let mut mine = BTreeMap::new();
            for l in view.iter().filter(|l| l.is_master() && !l.slots.is_empty()) {
                if l.failing() || !live.contains(&l.port) {
                    return Err(format!("{}: master {} is failing", n.port, l.port));
                }
                let mut slots = l.slots.clone();
                slots.sort();
                mine.insert(l.port, slots);
            }
            let covered: u32 = mine
                .values()
                .flatten()
                .map(|(a, b)| u32::from(*b) - u32::from(*a) + 1)
                .sum();
            if covered != 16384 {
                return Err(format!("{}: {covered} slots covered", n.port));
            }
            if masters.as_ref().is_some_and(|m| *m != mine) {
                return Err(format!("{}: nodes disagree on the masters", n.port));
            }
            masters = Some(mine);
        }
        let masters = masters.ok_or("no running node")?;
        if !replicated {
            return Ok(());
        }
        let mut synced: BTreeSet<u16> = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.is_running() {
                continue;
            }
            let info = self
                .try_cmd(i, &["INFO", "replication"])
                .map_err(|e| format!("{}: {e}", n.port))?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.trim_end().strip_prefix(name))
                    .map(str::to_owned)
            };
            if field("role:").as_deref() != Some("slave") {
                continue;
            }
            if field("master_link_status:").as_deref() == Some("up")
                && field("master_sync_in_progress:").as_deref() == Some("0")
            {
                if let Some(p) = field("master_port:").and_then(|p| p.parse().ok()) {
                    synced.insert(p);
                }
            }
        }
        for port in masters.keys() {
            if !synced.contains(port) {
                return Err(format!("master {port} has no synced replica"));
            }
        }
        Ok(())
    }

    /// Waits until `healthy(true)`; panics with the last reason after
    /// `within`.
    pub fn wait_healthy(&self, within: Duration) -> Duration {
        self.wait(within, true)
    }

    /// Waits until every slot is served by a running master again (after a
    /// kill); replicas are not required.
    pub fn wait_serving(&self, within: Duration) -> Duration {
        self.wait(within, false)
    }

    fn wait(&self, within: Duration, replicated: bool) -> Duration {
        let start = Instant::now();
        loop {
            let why = match self.healthy(replicated) {
                Ok(()) => return start.elapsed(),
                Err(why) => why,
            };
            if start.elapsed() > within {
                let mut report = String::new();
                for (i, n) in self.nodes.iter().enumerate() {
                    let nodes = self.try_cmd(i, &["CLUSTER", "NODES"]).unwrap_or_default();
                    report.push_str(&format!(
                        "--- {} (running {}):\n{nodes}\n",
                        n.port,
                        n.is_running()
                    ));
                }
                panic!("redis cluster not healthy within {within:?}: {why}\n{report}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// SIGSTOPs node `i`: it hangs with its connections open, as a server
    /// that is stuck rather than dead (no client sees a connection drop).
    pub fn stop(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.nodes[i].stopped = true;
    }

    /// SIGCONTs node `i` after `stop`.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.nodes[i].stopped = false;
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        let child = self.nodes[i].child.as_ref().expect("a started redis node");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) on our own child, which is not reaped yet.
        let done = unsafe { libc::kill(pid, signal) };
        assert_eq!(done, 0, "kill({pid}, {signal}) failed");
    }

    /// Starts node `i` again with its old ports and `nodes.conf`: it
    /// rejoins the cluster (a killed master as a replica of its successor).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        assert!(
            self.nodes[i].spawn(),
            "redis cluster node {} did not restart",
            self.nodes[i].port
        );
    }

    /// `INFO errorstats` of every running node: error prefix → count
    /// (`MOVED`, `NOSCRIPT`, `CROSSSLOT`, …).
    pub fn error_stats(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for (i, _) in self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_running())
        {
            let Ok(text) = self.try_cmd(i, &["INFO", "errorstats"]) else {
                continue;
            };
            for line in text.lines() {
                // errorstat_MOVED:count=3
                let Some((name, count)) = line
                    .trim_end()
                    .strip_prefix("errorstat_")
                    .and_then(|l| l.split_once(":count="))
                else {
                    continue;
                };
                *all.entry(name.to_owned()).or_default() += count.parse::<u64>().unwrap_or(0);
            }
        }
        all
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = std::fs::read_to_string(n.log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!(
                    "--- redis cluster node {} log (tail) ---\n{}",
                    n.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        for n in &mut self.nodes {
            n.kill();
        }
    }
}
