//! `headcount bench`: a load generator for headcount (and any Phoenix
//! Channels V2 server), as `redis-benchmark` is for Redis. The coordinator
//! here parses the command, checks that every target is on this machine,
//! splits the sockets over workers (in this process, or re-executed child
//! processes to pass the per-process file limit) and over 127.0.0.x source
//! addresses (to pass the ephemeral-port limit), drives the scenario's
//! phases, reads the server's RSS and counts (when it has headcount's
//! `/api/stats`), and prints the report. `bench floor-server` runs the
//! other side instead: a minimal Phoenix server to compare headcount with.
//!
//! A crate of its own, apart from the server's library: the `headcount`
//! binary parses [`BenchArgs`] and calls [`run`], and its hidden
//! `bench-worker` subcommand calls [`worker::main_stdio`], which is what
//! the child processes run (the current executable, re-executed as
//! `EXE bench-worker`). The binary raises the open-file limit before both.

pub mod client;
pub mod floor;
pub mod hist;
mod http;
pub mod redis_info;
mod rng;
mod scenarios;
pub mod token;
pub mod webhook_sig;
pub mod worker;

use clap::{Args, ValueEnum};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub use scenarios::run;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("refusing {0}: bench only targets loopback addresses (127.0.0.0/8, ::1)")]
    NotLoopback(String),
    #[error("{0}")]
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N sockets joined to K topics at rate R, held S seconds.
    Hold,
    /// N subscribers on a topic, M messages published; deliveries/s and latency.
    Fanout,
    /// get_local_stats / get_cluster_stats / get_occupancy latency and rate with K topics.
    Query,
    /// connect/join/leave/close cycles; counts must return to the baseline.
    Churn,
    /// Time from a join on one node to its appearance in another's cluster stats.
    Cluster,
    /// Occupancy pushes across nodes: S watchers on T topics, joins and leaves
    /// at rate R; push latency, losses, and the Redis commands they cost.
    Occupancy,
    /// Presence (SPEC §9): N members of one presence topic, churn at rate R;
    /// diff deliveries/s, server CPU per diff, presence_state time and size,
    /// diff propagation across nodes, memory per presence member.
    Presence,
    /// Occupancy webhooks (SPEC §10): T topics occupied and vacated over the
    /// nodes; a built-in receiver checks signatures and counts every event
    /// against the transitions (lost, doubled, latency).
    Webhooks,
    /// Not a load: serve a minimal Phoenix V2 server (tokio-tungstenite) on
    /// --bind as a floor to compare headcount with, until SIGINT/SIGTERM.
    FloorServer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Publish {
    /// POST /api/broadcast
    Http,
    /// a member's `broadcast` push (server needs --client-broadcast)
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QueryEvent {
    /// get_local_stats (takes --limit and --prefix)
    Local,
    /// get_cluster_stats (takes --limit and --prefix)
    Cluster,
    /// get_occupancy of --topics-per-query random populated topics
    Occupancy,
}

pub use token::TokenIn;

/// `headcount bench` flags. Every scenario is bounded: by counts, and by
/// `--timeout` overall (the floor server alone runs until a signal).
#[derive(Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Server URL(s), loopback only: ws://127.0.0.1:4000/socket/websocket,
    /// http://127.0.0.1:4000 or 127.0.0.1:4000; a comma list for `cluster`,
    /// `occupancy`, `presence` and `webhooks` (one per node). Required by
    /// every scenario but floor-server.
    #[arg(long, value_delimiter = ',')]
    pub url: Vec<String>,
    /// Sockets to open (hold: held sockets; fanout: subscribers; occupancy:
    /// watching members; presence: members, spread over the nodes; churn:
    /// concurrent cycles per worker is --concurrency).
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Distinct topics (hold, occupancy: sockets spread over them; query:
    /// populated; webhooks: topics occupied and vacated).
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Topics each socket joins (query: at most this many per populating socket).
    #[arg(long, default_value_t = 1)]
    pub topics_per_socket: usize,
    /// Topic names are PREFIX<n>; the server must allow them (--allow-topic 'bench:*').
    #[arg(long, default_value = "bench:")]
    pub topic_prefix: String,
    /// hold: every socket joins exactly this topic instead of PREFIX<n>
    /// (e.g. patterns:stream, whose join carries an initial_stats push).
    #[arg(long, help_heading = "hold")]
    pub topic: Option<String>,
    /// Connect+join attempts per second over all workers (0 = as fast as
    /// --concurrency allows). occupancy, presence: joins+leaves per second in
    /// the churn phase, over the whole cluster (0 = 10).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Handshakes in flight per worker (churn: concurrent cycles per worker).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// hold: seconds to hold the sockets once all are open. webhooks: seconds
    /// each topic stays occupied.
    #[arg(long, default_value_t = 5.0, help_heading = "hold")]
    pub hold: f64,
    /// Sign an HS256 token for every socket a worker opens (hold; also the
    /// sockets of fanout, query and churn): `sub` bench-<n>, `exp` now + 1 h.
    /// For a node started with --auth-secret.
    #[arg(long, help_heading = "hold")]
    pub token_secret: Option<String>,
    /// The token's `topics` claim: globs the socket may join (comma list;
    /// none = no claim, every topic).
    #[arg(long, value_delimiter = ',', help_heading = "hold")]
    pub token_topics: Vec<String>,
    /// Where the token goes: the `?token=` connect param, or the
    /// `base64url.bearer.phx.<base64>` subprotocol as phoenix.js sends it.
    #[arg(long, value_enum, default_value_t = TokenIn::Query, help_heading = "hold")]
    pub token_in: TokenIn,
    /// hold: one more socket sends `phx_join` at this many frames per second
    /// while the held sockets connect and join (0 = none), to see what a
    /// join flood costs the others' join latency; it reconnects when the node
    /// closes it, and its replies are counted (ok, rate limited, errors).
    #[arg(long, default_value_t = 0.0, help_heading = "hold")]
    pub flood_joins: f64,
    /// Worker processes (0 = one per 15,000 sockets). 1 runs in this process.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Source addresses 127.0.0.1..=127.0.0.N spread the client ports.
    #[arg(long, default_value_t = 16)]
    pub sources: u8,
    /// fanout: messages to publish.
    #[arg(long, default_value_t = 100, help_heading = "fanout")]
    pub messages: u64,
    /// fanout: how messages are published.
    #[arg(long, value_enum, default_value_t = Publish::Http, help_heading = "fanout")]
    pub publish: Publish,
    /// fanout: messages per second (0 = each as soon as the previous was accepted).
    #[arg(long, default_value_t = 0.0, help_heading = "fanout")]
    pub publish_rate: f64,
    /// fanout: publish requests in flight (HTTP connections or client sockets).
    #[arg(long, default_value_t = 1, help_heading = "fanout")]
    pub publishers: usize,
    /// fanout: publish through this node instead of --url (loopback; HTTP
    /// posts, or the client publishers' sockets), so that every message
    /// reaches the subscribers through the cluster's relay.
    #[arg(long, help_heading = "fanout")]
    pub publish_url: Option<String>,
    /// query: what to ask for.
    #[arg(long, value_enum, default_value_t = QueryEvent::Local, help_heading = "query")]
    pub event: QueryEvent,
    /// query --event occupancy: distinct random populated topics per
    /// get_occupancy (1..=100).
    #[arg(long, default_value_t = 10, help_heading = "query")]
    pub topics_per_query: usize,
    /// query --event local|cluster: the `limit` payload field (SPEC §7.3):
    /// at most this many topics in the reply's map.
    #[arg(long, help_heading = "query")]
    pub limit: Option<u64>,
    /// query --event local|cluster: the `prefix` payload field (SPEC §7.3):
    /// only topics starting with it in the reply's map.
    #[arg(long, help_heading = "query")]
    pub prefix: Option<String>,
    /// query: sockets asking concurrently (closed loop each).
    #[arg(long, default_value_t = 1, help_heading = "query")]
    pub askers: usize,
    /// query: seconds to ask for. occupancy, presence: seconds of the churn
    /// phase. webhooks: seconds over which the topics are occupied.
    #[arg(long, default_value_t = 5.0, help_heading = "query")]
    pub duration: f64,
    /// query: most queries in all (default 1,000,000). occupancy: stats
    /// queries per second during the churn phase (get_cluster_stats with
    /// limit 10 on the first node; default 0 = none).
    #[arg(long, help_heading = "query")]
    pub queries: Option<u64>,
    /// churn: connect/join/leave/close cycles in all.
    #[arg(long, default_value_t = 10_000, help_heading = "churn")]
    pub cycles: u64,
    /// churn: every n-th cycle drops the TCP connection while joined (0 = never).
    #[arg(long, default_value_t = 4, help_heading = "churn")]
    pub abrupt_every: u64,
    /// cluster: join rounds.
    #[arg(long, default_value_t = 50, help_heading = "cluster")]
    pub rounds: u64,
    /// cluster: milliseconds between cluster-stats polls.
    #[arg(long, default_value_t = 5, help_heading = "cluster")]
    pub poll_ms: u64,
    /// occupancy: the nodes' Redis (redis://127.0.0.1:PORT, loopback only):
    /// report its commands per second from INFO commandstats.
    #[arg(long, help_heading = "occupancy")]
    pub redis: Option<String>,
    /// presence: the presence topic the members join; the node(s) must
    /// match it with --presence-topic (default PREFIX + "presence").
    #[arg(long, help_heading = "presence")]
    pub presence_topic: Option<String>,
    /// presence: an allowed topic that is *not* a presence topic, for the
    /// memory comparison with --server-pid (default PREFIX + "plain"; the
    /// comparison is skipped, and says so, when it keeps presence).
    #[arg(long, help_heading = "presence")]
    pub plain_topic: Option<String>,
    /// presence: joins of a probe socket timed to its presence_state on the
    /// quiet node (the median is reported).
    #[arg(long, default_value_t = 5, help_heading = "presence")]
    pub probes: usize,
    /// webhooks: where the bench's webhook receiver listens, loopback only
    /// (port 0 = a free port); start the nodes with
    /// --webhook-url http://ADDR/hook.
    #[arg(long, default_value = "127.0.0.1:4300", help_heading = "webhooks")]
    pub receiver_bind: String,
    /// webhooks: the nodes' --webhook-secret (the receiver checks every
    /// X-Headcount-Signature with it).
    #[arg(long, help_heading = "webhooks")]
    pub webhook_secret: Option<String>,
    /// webhooks: the nodes' --webhook-vacate-delay-ms: a vacate's
    /// transition is its leave reply plus this delay.
    #[arg(long, default_value_t = 3000, help_heading = "webhooks")]
    pub webhook_vacate_delay_ms: u64,
    /// webhooks: join with a user_id per topic (the topics must be presence
    /// topics) and count member_added / member_removed too.
    #[arg(long, help_heading = "webhooks")]
    pub presence: bool,
    /// floor-server: POST occupancy webhooks (channel_occupied,
    /// channel_vacated) to this http:// URL on loopback, signed with
    /// --webhook-secret, vacates after --webhook-vacate-delay-ms: a stand-in
    /// for `bench webhooks` until headcount sends them.
    #[arg(long, help_heading = "floor-server")]
    pub webhook_url: Option<String>,
    /// floor-server: listen address, loopback only (port 0 = a free port,
    /// printed in the start line).
    #[arg(long, default_value = "127.0.0.1:4100", help_heading = "floor-server")]
    pub bind: String,
    /// Server process id: read its RSS (VmRSS in /proc/PID/status) and CPU
    /// time. presence: a comma list, one per --url (or one: the first node's).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Seconds to wait after sockets close before reading the RSS again
    /// (presence: after the members joined, before reading it).
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Heartbeat period while holding (the server closes silent sockets).
    #[arg(long, default_value_t = 25_000)]
    pub heartbeat_ms: u64,
    /// Give up after this many seconds in all (not floor-server).
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

const AFTER_HELP: &str = "\
Examples (start the node with --allow-topic 'bench:*'; for query, churn and
occupancy also raise its per-socket limits: --max-messages-per-second,
--max-messages-burst, --max-joins-per-second, --max-joins-burst; presence and
webhooks stay within the default limits):
  headcount bench hold --url 127.0.0.1:4000 --sockets 5000 --rate 1000
  headcount bench hold --url 127.0.0.1:4000 --token-secret S --token-in protocol
  headcount bench hold --url 127.0.0.1:4000 --sockets 5000 --rate 1000 --hold 0 --flood-joins 10000
  headcount bench fanout --url 127.0.0.1:4000 --sockets 10000 --messages 300
  headcount bench fanout --url 127.0.0.1:4001 --publish-url 127.0.0.1:4002 --sockets 10000 --messages 300
  headcount bench query --url 127.0.0.1:4000 --topics 10000 --event cluster --limit 100
  headcount bench query --url 127.0.0.1:4000 --topics 10000 --event occupancy --topics-per-query 10
  headcount bench churn --url 127.0.0.1:4000 --cycles 100000 --topics 10
  headcount bench cluster --url 127.0.0.1:4001,127.0.0.1:4002 --rounds 200
  headcount bench occupancy --url 127.0.0.1:4001,127.0.0.1:4002 --sockets 2000 --topics 200 \\
      --rate 100 --duration 30 --queries 20 --redis redis://127.0.0.1:6379
  headcount bench presence --url 127.0.0.1:4000 --sockets 2000 --rate 100 --duration 30 --server-pid PID
      (node: --allow-topic 'bench:*' --presence-topic 'bench:presence*')
  headcount bench presence --url 127.0.0.1:4001,127.0.0.1:4002,127.0.0.1:4003 --sockets 9000 \
      --rate 50 --duration 30 --server-pid PID1,PID2,PID3
  headcount bench webhooks --url 127.0.0.1:4001,127.0.0.1:4002,127.0.0.1:4003 --topics 10000 \
      --duration 60 --webhook-secret S --receiver-bind 127.0.0.1:4300
      (nodes: --webhook-url http://127.0.0.1:4300/hook --webhook-secret S)
  headcount bench floor-server --bind 127.0.0.1:4100   (then any scenario with --url 127.0.0.1:4100)
Scenarios need only the Phoenix protocol; against a server without headcount's
/api/stats (the floor server, Phoenix) the count checks are skipped and say so.";

impl BenchArgs {
    /// The first `--server-pid` (the one node most scenarios measure).
    pub fn pid(&self) -> Option<u32> {
        self.server_pid.first().copied()
    }
}

/// One server to talk to.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
    pub ws_path: String,
}

impl Endpoint {
    pub fn http_base(&self) -> String {
        format!("http://{}", self.host)
    }

    /// Where a client socket connects for this server.
    pub fn target(&self) -> client::Target {
        client::Target {
            addr: self.addr,
            path: self.ws_path.clone(),
            host: self.host.clone(),
        }
    }
}

pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Parses a URL and refuses anything that is not a loopback address.
pub async fn endpoint(url: &str) -> Result<Endpoint, BenchError> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    if rest.contains("://") {
        return Err(BenchError::Usage(format!(
            "{url}: use ws:// or http:// (no TLS on loopback)"
        )));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_string()
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(with_port.as_str())
        .await
        .map_err(|e| BenchError::Usage(format!("{url}: {e}")))?
        .collect();
    if addrs.is_empty() || !addrs.iter().all(|a| is_loopback(a.ip())) {
        return Err(BenchError::NotLoopback(url.to_string()));
    }
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .unwrap_or(addrs[0]);
    let path = path.split('?').next().unwrap_or("");
    let path = if path.is_empty() || path == "/" {
        "/socket/websocket"
    } else {
        path
    };
    Ok(Endpoint {
        addr,
        host: addr.to_string(),
        ws_path: format!("{path}?vsn=2.0.0"),
    })
}

/// `HOST:PORT` (a name or an address) resolved, refused unless every
/// address it names is on this machine: for `--bind` and `--redis`.
pub async fn loopback_addr(flag: &str, host_port: &str) -> Result<SocketAddr, BenchError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
        .await
        .map_err(|e| BenchError::Usage(format!("{flag} {host_port}: {e}")))?
        .collect();
    if addrs.is_empty() || !addrs.iter().all(|a| is_loopback(a.ip())) {
        return Err(BenchError::NotLoopback(format!("{flag} {host_port}")));
    }
    Ok(addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .unwrap_or(addrs[0]))
}

/// Client source addresses: 127.0.0.1..=127.0.0.n for an IPv4 target.
pub fn source_addrs(target: SocketAddr, n: u8) -> Vec<IpAddr> {
    if !target.is_ipv4() || n <= 1 {
        return Vec::new();
    }
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

/// Server RSS in bytes, from `VmRSS` in /proc/PID/status.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) a process has used, in seconds, from
/// /proc/PID/stat; `None` for this process's own figure is `/proc/self`.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_this_process_is_read() {
        let t = cpu_seconds(None).unwrap();
        assert!(t >= 0.0);
    }

    #[tokio::test]
    async fn only_loopback_urls_are_accepted() {
        let e = endpoint("ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0")
            .await
            .unwrap();
        assert_eq!(e.addr, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(e.ws_path, "/socket/websocket?vsn=2.0.0");
        assert_eq!(e.http_base(), "http://127.0.0.1:4000");
        assert!(endpoint("127.0.0.9:1").await.is_ok());
        assert!(endpoint("http://[::1]:4000").await.is_ok());
        assert!(endpoint("localhost:4000").await.is_ok());
        for bad in [
            "ws://10.0.0.1:4000",
            "http://192.168.1.1:80",
            "8.8.8.8:53",
            "ws://[2001:db8::1]:4000",
            "wss://127.0.0.1:4000",
        ] {
            assert!(endpoint(bad).await.is_err(), "{bad}");
        }
    }
}
