//! One Redis, or a Redis Cluster: which `--redis` names, the command
//! connection for either (so the rest of the backend sends the same commands
//! through one type), and the subscriber.
//!
//! `--redis` with a comma list of `redis://` URLs, or one URL with
//! `?cluster=true`, is a Redis Cluster: commands go through redis-rs's
//! cluster client, relayed messages and deltas through sharded pub/sub. A
//! single URL is one Redis, through reconnecting connection managers.
//!
//! The cluster client resubscribes a sharded channel only when the same
//! node comes back, not after a failover or a slot migration, so the
//! subscriber here can be rebuilt: the listener does so when a server is
//! lost, a channel it expects traffic on goes quiet, or Redis says it was
//! unsubscribed. A rebuild starts from the `--redis` seeds; when none of
//! them answers (a single seed that was a master and failed over, say), it
//! starts from the servers the cluster lists now.
//!
//! The cluster client learns a new topology only from what a server says
//! (`MOVED`) or from a connection it sees drop. A master that hangs (stopped,
//! swapping, a dead host whose packets vanish) says nothing and drops
//! nothing: every request to it times out, for ever, even after the cluster
//! has failed it over. So a request of ours that times out marks the command
//! connection suspect, and `follow_topology` replaces it with a fresh one,
//! which asks the cluster for its slots (`CLUSTER SLOTS`) and connects to the
//! masters it names now; a hung server fails its handshake there and is left
//! out. At most one reconnect a second, and only while requests time out.

use super::RedisSetupError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo,
    PushKind, RedisFuture, Value,
};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A request unanswered this long, then given up by its caller, counts as
/// timed out (every caller waits at least `COMMAND_TIMEOUT`, 500 ms; one
/// dropped sooner was cancelled for another reason, shutdown say).
const SUSPECT_AFTER: Duration = Duration::from_millis(400);
/// Least time between two reconnects of the command connection: a hung
/// master is failed over only after `cluster-node-timeout` (15 s by
/// default), and until then every reconnect finds the same topology.
const RECONNECT_GAP: Duration = Duration::from_secs(1);
/// Longest a reconnect may take: the handshake with each server (a hung one
/// fails it after the 500 ms connection timeout) and `CLUSTER SLOTS`.
const RECONNECT_WITHIN: Duration = Duration::from_secs(3);
/// Longest `CLUSTER NODES` may take when the servers are listed.
const LIST_WITHIN: Duration = Duration::from_millis(500);

/// What `--redis` names.
pub enum Target {
    Single(redis::Client),
    Cluster(Vec<redis::ConnectionInfo>),
}

/// Reads `--redis`: a comma list, or `?cluster=true`, is a Redis Cluster.
pub fn target(url: &str) -> Result<Target, RedisSetupError> {
    let urls: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let clustered = urls.len() > 1 || urls.iter().any(|u| cluster_flag(u));
    let infos = urls
        .iter()
        .map(|u| {
            let info = strip_cluster_flag(u)
                .as_str()
                .into_connection_info()
                .map_err(RedisSetupError::Url)?;
            let resp3 = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            Ok(info.set_redis_settings(resp3))
        })
        .collect::<Result<Vec<_>, RedisSetupError>>()?;
    if clustered {
        return Ok(Target::Cluster(infos));
    }
    let Some(info) = infos.into_iter().next() else {
        let none = (redis::ErrorKind::InvalidClientConfig, "no redis:// URL");
        return Err(RedisSetupError::Url(redis::RedisError::from(none)));
    };
    Ok(Target::Single(
        redis::Client::open(info).map_err(RedisSetupError::Url)?,
    ))
}

fn cluster_flag(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, q)| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "cluster" && v == "true")
    })
}

/// The URL without the `cluster` parameter, which redis-rs does not know.
fn strip_cluster_flag(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "cluster")
        .map(|(k, v)| {
            form_urlencoded::Serializer::new(String::new())
                .append_pair(&k, &v)
                .finish()
        })
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// The command connection: one Redis or a Redis Cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<ClusterCommands>),
}

/// The command connection to a Redis Cluster, replaced by
/// `follow_topology` when its requests time out.
pub struct ClusterCommands {
    current: Mutex<Current>,
    /// Wakes `follow_topology`: a request of the current connection timed
    /// out.
    wake: Notify,
    /// The `--redis` seeds.
    seeds: Vec<ConnectionInfo>,
    /// The servers the cluster listed when last asked (not failing then),
    /// so that a reconnect works when every seed hangs or is gone.
    servers: Mutex<Vec<ConnectionInfo>>,
}

struct Current {
    conn: ClusterConnection,
    /// Counts replacements, so that a timeout on a connection already
    /// replaced asks for nothing.
    generation: u64,
    /// A request of this connection timed out.
    suspect: bool,
}

impl ClusterCommands {
    fn current(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connection(&self) -> (u64, ClusterConnection) {
        let current = self.current();
        (current.generation, current.conn.clone())
    }

    /// A request on the connection of `generation` timed out.
    fn suspect(&self, generation: u64) {
        let mut current = self.current();
        if current.generation == generation && !current.suspect {
            current.suspect = true;
            self.wake.notify_one();
        }
    }

    fn servers(&self) -> Vec<ConnectionInfo> {
        self.servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the cluster which servers it has now, and keeps the answer;
    /// false when it cannot be had.
    async fn learn_servers(&self) -> bool {
        let (_, conn) = self.connection();
        match tokio::time::timeout(LIST_WITHIN, known_nodes(conn, &self.seeds)).await {
            Ok(Some(servers)) => {
                *self.servers.lock().unwrap_or_else(|e| e.into_inner()) = servers;
                true
            }
            _ => false,
        }
    }

    /// The servers the cluster lists now, or (when it does not answer) the
    /// ones it listed last; `None` when none are known.
    async fn list_servers(&self) -> Option<Vec<ConnectionInfo>> {
        self.learn_servers().await;
        let servers = self.servers();
        (!servers.is_empty()).then_some(servers)
    }

    /// A fresh connection from the seeds and the servers last listed, in
    /// place of the current one once it works. Requests already under way
    /// finish (or time out) on the old one, which closes after the last.
    async fn reconnect(&self) -> redis::RedisResult<()> {
        let mut nodes = self.seeds.clone();
        for server in self.servers() {
            if !nodes.iter().any(|n| n.addr() == server.addr()) {
                nodes.push(server);
            }
        }
        let client = cluster_client(&nodes, None)?;
        let connect = client.get_async_connection_with_config(cluster_config());
        let fresh = tokio::time::timeout(RECONNECT_WITHIN, connect)
            .await
            .map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no redis server answered within the reconnect timeout",
                ))
            })??;
        let mut current = self.current();
        current.conn = fresh;
        current.generation += 1;
        current.suspect = false;
        Ok(())
    }
}

/// Notes how a request of the cluster command connection ended: one its
/// caller gave up on (timed out), or that failed by timing out, makes the
/// connection suspect.
struct Watch {
    commands: Arc<ClusterCommands>,
    generation: u64,
    since: Instant,
    ended: bool,
}

impl Watch {
    fn start(commands: &Arc<ClusterCommands>, generation: u64) -> Watch {
        Watch {
            commands: commands.clone(),
            generation,
            since: Instant::now(),
            ended: false,
        }
    }

    fn ended<T>(mut self, reply: &redis::RedisResult<T>) {
        self.ended = true;
        if reply.as_ref().is_err_and(redis::RedisError::is_timeout) {
            self.commands.suspect(self.generation);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.ended && self.since.elapsed() >= SUSPECT_AFTER {
            self.commands.suspect(self.generation);
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(commands) => {
                let (generation, mut conn) = commands.connection();
                let watch = Watch::start(commands, generation);
                Box::pin(async move {
                    let reply = conn.req_packed_command(cmd).await;
                    watch.ended(&reply);
                    reply
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(commands) => {
                let (generation, mut conn) = commands.connection();
                let watch = Watch::start(commands, generation);
                Box::pin(async move {
                    let reply = conn.req_packed_commands(pipeline, offset, count).await;
                    watch.ended(&reply);
                    reply
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

/// Keeps the cluster command connection on the cluster's current topology,
/// until the task is dropped (nothing to do on a single Redis): lists the
/// cluster's servers once it answers, and whenever a request timed out,
/// connects afresh (at most once per `RECONNECT_GAP`).
pub async fn follow_topology(conn: Conn) {
    let Conn::Cluster(commands) = conn else {
        return;
    };
    let mut listed = false;
    loop {
        if !listed {
            listed = commands.learn_servers().await;
        }
        tokio::select! {
            _ = commands.wake.notified() => {}
            // Until the servers are listed, asked again every so often.
            _ = tokio::time::sleep(RECONNECT_GAP), if !listed => continue,
        }
        if !commands.current().suspect {
            continue;
        }
        let started = Instant::now();
        tracing::info!("a redis request timed out: connecting afresh to the cluster as it is now");
        match commands.reconnect().await {
            Ok(()) => {
                tracing::info!(took = ?started.elapsed(), "connected afresh to the redis cluster");
                // The servers may have changed too.
                listed = commands.learn_servers().await;
            }
            Err(e) => {
                tracing::warn!(error = %super::describe(&e), "cannot connect afresh to the redis cluster yet")
            }
        }
        tokio::time::sleep_until(started + RECONNECT_GAP).await;
        // Timeouts of a connection that failed to be replaced ask again; a
        // replaced one asks nothing.
        if commands.current().suspect {
            commands.wake.notify_one();
        }
    }
}

impl Conn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

pub fn manager_config() -> ConnectionManagerConfig {
    // `usize::MAX` retries: a finite count gives up after a long outage.
    ConnectionManagerConfig::new()
        .set_number_of_retries(usize::MAX)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(150))
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(2)))
}

/// The cluster client, with short waits between its own retries: every
/// command is bounded by a timeout of ours anyway.
fn cluster_client(
    nodes: &[ConnectionInfo],
    pushes: Option<UnboundedSender<PushInfo>>,
) -> redis::RedisResult<ClusterClient> {
    let mut builder = ClusterClientBuilder::new(nodes.to_vec())
        .use_protocol(ProtocolVersion::RESP3)
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(2))
        .overall_response_timeout(None)
        .retries(16)
        .min_retry_wait(50)
        .max_retry_wait(500);
    if let Some(tx) = pushes {
        builder = builder.push_sender(tx);
    }
    builder.build()
}

fn cluster_config() -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(Duration::from_millis(500))
        .set_response_timeout(Duration::from_secs(2))
}

/// The subscriber connection.
pub enum Subscriber {
    /// Resubscribes by itself after every reconnect.
    Single(ConnectionManager),
    /// Rebuilt by the listener when it has to be; `None` between.
    Cluster {
        client: Box<ClusterClient>,
        conn: Option<ClusterConnection>,
        pushes: UnboundedSender<PushInfo>,
        /// Connections given up so far (each followed by a `REPLACED`
        /// marker on `pushes`).
        replaced: u64,
    },
}

/// What the subscriber puts on its own push channel when it has given up a
/// connection: every push before it came from a connection gone now.
const REPLACED: &str = "headcount:subscriber-replaced";

/// Whether `push` is the marker of a connection given up.
pub fn is_replaced_marker(push: &PushInfo) -> bool {
    matches!(&push.kind, PushKind::Other(kind) if kind == REPLACED)
}

/// The command connection and the subscriber for `target`. Nothing waits on
/// Redis here: both connect in the background.
pub fn open(
    target: Target,
    on_command_push: impl Fn(PushInfo) + Send + Sync + 'static,
    pushes: UnboundedSender<PushInfo>,
) -> Result<(Conn, Subscriber), RedisSetupError> {
    match target {
        Target::Single(client) => {
            let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                on_command_push(push);
                Ok(())
            };
            let conn = ConnectionManager::new_lazy_with_config(
                client.clone(),
                manager_config().set_push_sender(on_push),
            )
            .map_err(RedisSetupError::Connection)?;
            let sub = ConnectionManager::new_lazy_with_config(
                client,
                manager_config()
                    .set_push_sender(pushes)
                    .set_automatic_resubscription(),
            )
            .map_err(RedisSetupError::Connection)?;
            Ok((Conn::Single(conn), Subscriber::Single(sub)))
        }
        Target::Cluster(nodes) => {
            let commands = cluster_client(&nodes, None).map_err(RedisSetupError::Url)?;
            let conn = commands.get_pending_async_connection_with_config(cluster_config());
            let commands = ClusterCommands {
                current: Mutex::new(Current {
                    conn,
                    generation: 0,
                    suspect: false,
                }),
                wake: Notify::new(),
                seeds: nodes.clone(),
                servers: Mutex::new(Vec::new()),
            };
            let client =
                cluster_client(&nodes, Some(pushes.clone())).map_err(RedisSetupError::Url)?;
            Ok((
                Conn::Cluster(Arc::new(commands)),
                Subscriber::Cluster {
                    client: Box::new(client),
                    conn: None,
                    pushes,
                    replaced: 0,
                },
            ))
        }
    }
}

/// Where this node listens and says things.
pub struct Channels {
    /// Sharded on a Redis Cluster (one pair per partition); one each on a
    /// single Redis.
    pub view: Vec<String>,
    pub relay: Vec<String>,
    /// Where producers PUBLISH events: classic pub/sub either way.
    pub events: String,
}

impl Subscriber {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Subscriber::Cluster { .. })
    }

    /// How many connections this subscriber has given up (always 0 on a
    /// single Redis, whose one connection manager reconnects by itself).
    pub fn replaced(&self) -> u64 {
        match self {
            Subscriber::Single(_) => 0,
            Subscriber::Cluster { replaced, .. } => *replaced,
        }
    }

    /// Subscribes to every channel (once on a single Redis: the manager
    /// resubscribes after reconnects; again after every rebuild on a
    /// Redis Cluster). `commands` lists the cluster's servers when no seed
    /// answers.
    pub async fn subscribe(
        &mut self,
        channels: &Channels,
        commands: &Conn,
    ) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(sub) => {
                let mut all: Vec<&str> = channels.view.iter().map(String::as_str).collect();
                all.extend(channels.relay.iter().map(String::as_str));
                all.push(&channels.events);
                sub.subscribe(&all).await
            }
            Subscriber::Cluster {
                client,
                conn,
                pushes,
                replaced,
            } => {
                // The old connection goes first: two at once would deliver
                // some messages twice. Whatever it (or an attempt that
                // failed) queued before the marker is stale: one lost
                // server says "unsubscribed" once per channel, and all of
                // that is answered by this one new connection.
                *conn = None;
                *replaced += 1;
                let marker = PushInfo {
                    kind: PushKind::Other(REPLACED.to_owned()),
                    data: Vec::new(),
                };
                // The listener holds the receiver for as long as this runs.
                let _ = pushes.send(marker);
                // The client's push sender carries over to the connection.
                let mut fresh = match client
                    .get_async_connection_with_config(cluster_config())
                    .await
                {
                    Ok(fresh) => fresh,
                    Err(e) => {
                        // No seed answers: start from the servers the
                        // cluster lists now (kept for later rebuilds too).
                        let Conn::Cluster(commands) = commands else {
                            return Err(e);
                        };
                        let Some(known) = commands.list_servers().await else {
                            return Err(e);
                        };
                        tracing::info!(
                            servers = known.len(),
                            "no --redis seed answers: subscribing through the servers the cluster lists"
                        );
                        **client = cluster_client(&known, Some(pushes.clone()))?;
                        client
                            .get_async_connection_with_config(cluster_config())
                            .await?
                    }
                };
                for ch in channels.view.iter().chain(&channels.relay) {
                    fresh.ssubscribe(ch).await?;
                }
                fresh.subscribe(&channels.events).await?;
                *conn = Some(fresh);
                Ok(())
            }
        }
    }
}

/// The servers the cluster lists now (`CLUSTER NODES` through `conn`),
/// less those known to be failing, each with the settings of the first seed
/// (password, TLS, protocol); `None` when the question cannot be answered.
async fn known_nodes(
    mut conn: ClusterConnection,
    seeds: &[ConnectionInfo],
) -> Option<Vec<ConnectionInfo>> {
    let template = seeds.first()?;
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("NODES");
    let listing: String = cmd.query_async(&mut conn).await.ok()?;
    let nodes: Vec<ConnectionInfo> = parse_nodes(&listing)
        .into_iter()
        .filter_map(|(host, port)| {
            let addr = match template.addr() {
                ConnectionAddr::Tcp(seed_host, _) => {
                    ConnectionAddr::Tcp(host.unwrap_or_else(|| seed_host.clone()), port)
                }
                ConnectionAddr::TcpTls {
                    host: seed_host,
                    insecure,
                    tls_params,
                    ..
                } => ConnectionAddr::TcpTls {
                    host: host.unwrap_or_else(|| seed_host.clone()),
                    port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => return None,
            };
            Some(template.clone().set_addr(addr))
        })
        .collect();
    (!nodes.is_empty()).then_some(nodes)
}

/// `(host, port)` of every server in a `CLUSTER NODES` listing that is not
/// failing; the host is `None` when the listing leaves it out.
fn parse_nodes(listing: &str) -> Vec<(Option<String>, u16)> {
    listing
        .lines()
        .filter_map(|line| {
            // <id> <ip:port@cport[,hostname]> <flags> …
            let mut fields = line.split_whitespace();
            let (_, addr, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let failing = flags
                .split(',')
                .any(|f| matches!(f, "fail" | "fail?" | "handshake" | "noaddr"));
            if failing {
                return None;
            }
            let (host, port) = addr.split(['@', ',']).next()?.rsplit_once(':')?;
            let host = (!host.is_empty()).then(|| host.to_owned());
            Some((host, port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_listing_gives_the_servers_not_failing() {
        let listing = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail - 1426238316232 1426238316232 3 disconnected
6ec23923021cf3ffec47632106199cb7f496ce01 :30005@31005 myself,master - 0 0 5 connected 10923-16383
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@31006 master,fail? - 0 0 6 connected
";
        assert_eq!(
            parse_nodes(listing),
            [
                (Some("127.0.0.1".to_owned()), 30004),
                (Some("127.0.0.1".to_owned()), 30002),
                (None, 30005),
            ]
        );
    }

    #[test]
    fn the_marker_of_a_replaced_subscriber_is_no_push_redis_sends() {
        let marker = PushInfo {
            kind: PushKind::Other(REPLACED.to_owned()),
            data: Vec::new(),
        };
        assert!(is_replaced_marker(&marker));
        for kind in [
            PushKind::SUnsubscribe,
            PushKind::Disconnection,
            PushKind::Other("sunsubscribe".to_owned()),
        ] {
            assert!(!is_replaced_marker(&PushInfo {
                kind,
                data: Vec::new()
            }));
        }
    }

    #[test]
    fn a_comma_list_or_cluster_true_is_a_cluster() {
        assert!(matches!(
            target("redis://a:1, redis://b:2"),
            Ok(Target::Cluster(n)) if n.len() == 2
        ));
        assert!(matches!(
            target("redis://a:1/?cluster=true"),
            Ok(Target::Cluster(n)) if n.len() == 1
        ));
        assert!(matches!(target("redis://a:1"), Ok(Target::Single(_))));
    }
}
