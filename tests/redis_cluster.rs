//! Cluster mode on a real Redis Cluster (SPEC §3.2, §6.1, §7, §9.2, §10):
//! each test starts six `redis-server` processes (3 masters, 3 replicas,
//! `cluster-node-timeout` 1000) and three headcount nodes on them, two with
//! a seed list (`--redis redis://…,redis://…`) and one with a single URL and
//! `?cluster=true`. Counts, occupancy, presence, the relay and webhooks
//! across nodes; headcount nodes killed (the survivors keep their
//! subscriptions: no gap in the relay) and stopped; and a Redis master
//! SIGKILLed under the nodes (a replica takes over): degraded answers within
//! a second, then exact figures, a working relay and nothing double-counted;
//! a master SIGSTOPped (hung: no connection drops, nothing answers) until
//! Redis fails it over, after which the nodes must find the new master by
//! themselves and be exact again while it is still stopped; and a manual
//! `CLUSTER FAILOVER`, which must cost each node one fresh subscription.
//! No Redis command may cross slots: every test ends by checking the nodes'
//! logs and every Redis server's `INFO errorstats` for CROSSSLOT.

mod cluster_support;
mod common;

use cluster_support::redis_cluster::{key_slot, RedisCluster, NODE_TIMEOUT_MS};
use cluster_support::{client_of, start_node};
use common::{broadcast, cluster_stats, get, publish, stats, wait_for, Client, Msg, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PREFIX: &str = "headcount";

/// Flags of every node here: generic and presence topics, and per-socket
/// rate limits out of the way.
const BASE: [&str; 10] = [
    "--allow-topic",
    "rooms:*",
    "--presence-topic",
    "rooms:p*",
    "--max-joins-per-second",
    "100000",
    "--max-joins-burst",
    "100000",
    "--max-messages-per-second",
    "100000",
];

/// What `--redis` each node gets: n1 and n2 a seed list of two nodes, n3
/// the single URL `seed` with `?cluster=true`.
fn redis_urls(rc: &RedisCluster, seed: usize) -> [String; 3] {
    let p = rc.ports();
    [
        format!("redis://127.0.0.1:{},redis://127.0.0.1:{}", p[0], p[1]),
        format!("redis://127.0.0.1:{}, redis://127.0.0.1:{}", p[1], p[2]),
        format!("{}?cluster=true", rc.nodes[seed].url()),
    ]
}

/// Starts n1..n3 on the cluster and waits until each sees all three, not
/// degraded.
async fn start_nodes(rc: &RedisCluster, seed: usize, extra: &[&str]) -> Vec<Server> {
    let mut args: Vec<&str> = BASE.to_vec();
    args.extend_from_slice(extra);
    let started = Instant::now();
    let nodes: Vec<Server> = redis_urls(rc, seed)
        .iter()
        .enumerate()
        .map(|(i, url)| start_node(url, &format!("n{}", i + 1), &args))
        .collect();
    for node in &nodes {
        wait_for(
            Duration::from_secs(15),
            "every node sees the cluster, not degraded",
            || async {
                let v = cluster_stats(node.addr).await;
                v["cluster_size"] == 3 && v["degraded"] == false
            },
        )
        .await;
    }
    println!("3 headcount nodes in sync after {:?}", started.elapsed());
    nodes
}

// ---------------------------------------------------------------------------
// The truth: every client the test holds, and what it joined
// ---------------------------------------------------------------------------

#[derive(Default, Clone, Debug, PartialEq)]
struct Figures {
    sockets: u64,
    topics: BTreeMap<String, u64>,
}

/// One socket a test opened.
struct Member {
    /// Index of its node; `None` once it is closed or its node is gone.
    node: Option<usize>,
    client: Option<Client>,
    joined: BTreeSet<String>,
}

/// Every socket a test opened, on which node, joined to what.
struct Crowd {
    names: Vec<String>,
    members: Vec<Member>,
}

impl Crowd {
    fn new(nodes: &[Server]) -> Crowd {
        Crowd {
            names: nodes.iter().map(|n| n.node.clone()).collect(),
            members: Vec::new(),
        }
    }

    /// A new socket on `node`, joined to `topics` (with `params`); returns
    /// its index.
    async fn add(
        &mut self,
        nodes: &[Server],
        node: usize,
        topics: &[&str],
        params: Value,
    ) -> usize {
        let mut c = client_of(&nodes[node]).await;
        for t in topics {
            c.join_ok(t, params.clone()).await;
        }
        self.keep(node, c, topics)
    }

    /// One socket per node in `all` on `patterns:stream` and `rooms:relay`
    /// (what `relay_exactly_once` publishes to); their indexes.
    async fn relay_subscribers(&mut self, nodes: &[Server], all: &[usize]) -> Vec<usize> {
        let mut v = Vec::new();
        for &node in all {
            v.push(
                self.add(nodes, node, &["patterns:stream", "rooms:relay"], json!({}))
                    .await,
            );
        }
        v
    }

    /// A socket the test opened and joined itself.
    fn keep(&mut self, node: usize, client: Client, topics: &[&str]) -> usize {
        self.members.push(Member {
            node: Some(node),
            client: Some(client),
            joined: topics.iter().map(|t| (*t).to_owned()).collect(),
        });
        self.members.len() - 1
    }

    fn client(&mut self, i: usize) -> &mut Client {
        self.members[i].client.as_mut().expect("an open socket")
    }

    fn node_of(&self, i: usize) -> &str {
        self.members[i].node.map_or("(gone)", |n| &self.names[n])
    }

    async fn join(&mut self, i: usize, topic: &str) {
        self.client(i).join_ok(topic, json!({})).await;
        self.members[i].joined.insert(topic.to_owned());
    }

    async fn leave(&mut self, i: usize, topic: &str) {
        self.client(i).leave(topic).await.assert_ok();
        self.members[i].joined.remove(topic);
    }

    /// Closes socket `i` (the indexes of the others do not change).
    async fn close(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.node = None;
        m.joined.clear();
        if let Some(c) = m.client.take() {
            c.close().await;
        }
    }

    /// Forgets every socket on `node` (it was killed or stopped).
    fn forget_node(&mut self, node: usize) {
        for m in &mut self.members {
            if m.node == Some(node) {
                m.node = None;
                m.joined.clear();
                m.client = None;
            }
        }
    }

    /// Node name → figures, for every node not in `gone`.
    fn truth_without(&self, gone: &[&str]) -> BTreeMap<String, Figures> {
        let mut t: BTreeMap<String, Figures> = self
            .names
            .iter()
            .filter(|n| !gone.contains(&n.as_str()))
            .map(|n| (n.clone(), Figures::default()))
            .collect();
        for m in &self.members {
            let Some(f) = m.node.and_then(|n| t.get_mut(&self.names[n])) else {
                continue;
            };
            f.sockets += 1;
            for topic in &m.joined {
                *f.topics.entry(topic.clone()).or_default() += 1;
            }
        }
        t
    }

    fn truth(&self) -> BTreeMap<String, Figures> {
        self.truth_without(&[])
    }

    fn total(&self, topic: &str) -> u64 {
        self.truth()
            .values()
            .map(|f| f.topics.get(topic).copied().unwrap_or(0))
            .sum()
    }
}

/// How ClusterStats `v` differs from `expected` (node name → figures), if
/// it does.
fn mismatch(v: &Value, expected: &BTreeMap<String, Figures>) -> Option<String> {
    let sum = |f: fn(&Figures) -> u64| expected.values().map(f).sum::<u64>();
    let conns = |f: &Figures| f.topics.values().sum::<u64>();
    let stream = |f: &Figures| f.topics.get("patterns:stream").copied().unwrap_or(0);
    let mut by_topic: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (node, f) in expected {
        for (topic, n) in &f.topics {
            by_topic
                .entry(topic.clone())
                .or_default()
                .insert(node.clone(), *n);
        }
    }
    let checks = [
        ("source", v["source"] == "cluster"),
        ("degraded", v["degraded"] == false),
        ("cluster_size", v["cluster_size"] == expected.len()),
        (
            "nodes",
            v["nodes"].as_object().map(|o| o.len()) == Some(expected.len()),
        ),
        ("connection_count", v["connection_count"] == sum(conns)),
        ("total_connections", v["total_connections"] == sum(conns)),
        ("stream_count", v["stream_count"] == sum(stream)),
        ("socket_count", v["socket_count"] == sum(|f| f.sockets)),
        (
            "connections_by_topic",
            v["connections_by_topic"] == serde_json::to_value(&by_topic).unwrap_or_default(),
        ),
        (
            "per-node figures",
            expected.iter().all(|(name, f)| {
                let n = &v["nodes"][name];
                n["connection_count"] == conns(f)
                    && n["stream_count"] == stream(f)
                    && n["socket_count"] == f.sockets
            }),
        ),
    ];
    let wrong: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(what, _)| *what)
        .collect();
    (!wrong.is_empty()).then(|| format!("{wrong:?} wrong in {v}"))
}

/// Waits until every node in `on` answers exactly `expected`; returns how
/// long the slowest took. Panics with the last answers after `within`.
async fn wait_exact(
    nodes: &[Server],
    on: &[usize],
    expected: &BTreeMap<String, Figures>,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let mut wrong = Vec::new();
        for &i in on {
            if let Some(why) = mismatch(&cluster_stats(nodes[i].addr).await, expected) {
                wrong.push(format!("{}: {why}", nodes[i].node));
            }
        }
        if wrong.is_empty() {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!(
                "cluster figures not exact within {within:?}; expected {expected:?}\n{}",
                wrong.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No command of any node crossed slots: nothing about it in the nodes'
/// logs, and no CROSSSLOT error counted by any Redis server.
fn assert_no_crossslot(rc: &RedisCluster, nodes: &[Server]) {
    for node in nodes {
        let bad: Vec<String> = node
            .stderr_lines()
            .into_iter()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("crossslot") || l.contains("crossed slots")
            })
            .collect();
        assert!(bad.is_empty(), "{} crossed slots: {bad:#?}", node.node);
    }
    let errors = rc.error_stats();
    println!("redis error stats: {errors:?}");
    assert!(
        !errors.contains_key("CROSSSLOT"),
        "a command crossed slots: {errors:?}"
    );
}

// ---------------------------------------------------------------------------
// The relay, counted by sequence number
// ---------------------------------------------------------------------------

/// Every message of round `tag` one subscriber must get exactly once.
fn expected_messages(tag: &str, n: usize) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for i in 0..n {
        all.insert(format!("{tag}/b{i}"));
        if i % 2 == 0 {
            all.insert(format!("{tag}/e{i}"));
        }
    }
    for i in 0..3 {
        all.insert(format!("{tag}/p{i}"));
    }
    all
}

/// The message a push is, if it belongs to round `tag`.
fn message_of(m: &Msg, tag: &str) -> Option<String> {
    let id = match (m.topic.as_str(), m.event.as_str()) {
        ("rooms:relay", "seq") => m.payload["id"].as_str()?,
        ("patterns:stream", "pattern_detected") => m.payload["pattern_type"].as_str()?,
        _ => return None,
    };
    id.starts_with(&format!("{tag}/")).then(|| id.to_owned())
}

/// Publishes round `tag` on every node: `n` broadcasts (`POST
/// /api/broadcast`, node i % 3), an event for every second of them (`POST
/// /api/events`), and 3 events a producer PUBLISHes on `<prefix>:events`
/// (each on another Redis server). Returns when the last was sent.
async fn publish_round(rc: &RedisCluster, nodes: &[Server], live: &[usize], tag: &str, n: usize) {
    for i in 0..n {
        let node = &nodes[live[i % live.len()]];
        broadcast(
            node.addr,
            "rooms:relay",
            "seq",
            &json!({"id": format!("{tag}/b{i}"), "seq": i}),
        )
        .await;
        if i % 2 == 0 {
            publish(
                node.addr,
                &json!({"type": "pattern_detected", "data": {"pattern_type": format!("{tag}/e{i}")}}),
            )
            .await;
        }
    }
    let running: Vec<usize> = (0..rc.nodes.len())
        .filter(|&i| rc.nodes[i].is_running())
        .collect();
    for i in 0..3 {
        let event =
            json!({"type": "pattern_detected", "data": {"pattern_type": format!("{tag}/p{i}")}});
        rc.cmd(
            running[i % running.len()],
            &["PUBLISH", &format!("{PREFIX}:events"), &event.to_string()],
        );
    }
}

/// Reads what subscriber `c` got of round `tag`: none twice, and with
/// `complete` none missing either (after a quiet moment). Returns how many
/// it got.
async fn assert_round(c: &mut Client, who: &str, tag: &str, n: usize, complete: bool) -> usize {
    let want = expected_messages(tag, n);
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(if complete { 5 } else { 0 });
    let count = |msgs: Vec<Msg>, got: &mut BTreeMap<String, usize>| {
        for m in msgs {
            if let Some(id) = message_of(&m, tag) {
                *got.entry(id).or_default() += 1;
            }
        }
    };
    while got.len() < want.len() && Instant::now() < deadline {
        let msgs = c.collect_for(Duration::from_millis(100)).await;
        count(msgs, &mut got);
    }
    // Anything late, or a second copy, arrives in a quiet moment.
    let msgs = c.drain(Duration::from_millis(300)).await;
    count(msgs, &mut got);
    let missing: Vec<&String> = want.iter().filter(|id| !got.contains_key(*id)).collect();
    let twice: Vec<(&String, &usize)> = got.iter().filter(|(_, n)| **n > 1).collect();
    let foreign: Vec<&String> = got.keys().filter(|id| !want.contains(*id)).collect();
    assert!(
        (missing.is_empty() || !complete) && twice.is_empty() && foreign.is_empty(),
        "{who}, round {tag}: missing {missing:?}, more than once {twice:?}, unexpected {foreign:?}"
    );
    got.len()
}

/// Messages of broadcasts in one round of the relay.
const N: usize = 30;

/// One round of the relay, checked at every subscriber.
async fn relay_exactly_once(
    rc: &RedisCluster,
    nodes: &[Server],
    live: &[usize],
    crowd: &mut Crowd,
    subscribers: &[usize],
    tag: &str,
) {
    for &s in subscribers {
        crowd.client(s).drain(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    publish_round(rc, nodes, live, tag, N).await;
    for &s in subscribers {
        let who = format!("subscriber {s} on {}", crowd.node_of(s));
        assert_round(crowd.client(s), &who, tag, N, true).await;
    }
    println!(
        "relay round {tag}: {} messages, each once at {} subscribers ({:?})",
        expected_messages(tag, N).len(),
        subscribers.len(),
        t.elapsed()
    );
}

// ---------------------------------------------------------------------------
// A webhook receiver
// ---------------------------------------------------------------------------

/// Accepts webhook POSTs (keep-alive) and answers 204; keeps every batch.
struct Receiver {
    url: String,
    batches: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let kept = batches.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let _ = serve_hooks(socket, kept).await;
                });
            }
        });
        Receiver { url, batches }
    }

    /// Every event received so far.
    fn events(&self) -> Vec<Value> {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

async fn serve_hooks(
    mut socket: tokio::net::TcpStream,
    kept: Arc<Mutex<Vec<Value>>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Value = serde_json::from_slice(&buf[head_end..head_end + length])
            .unwrap_or_else(|e| json!({"unreadable": e.to_string()}));
        kept.lock().unwrap().push(body);
        buf.drain(..head_end + length);
        socket
            .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .await?;
    }
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// xorshift64*, seeded from the clock or `HEADCOUNT_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("HEADCOUNT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        println!("seed {seed} (rerun with HEADCOUNT_TEST_SEED={seed})");
        Rng(seed)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_counts_occupancy_presence_relay_and_webhooks_across_nodes() {
    let rc = RedisCluster::start();
    let hooks = Receiver::start().await;
    let nodes = start_nodes(
        &rc,
        4,
        &[
            "--webhook-url",
            &hooks.url,
            "--webhook-secret",
            "s3cret",
            "--webhook-vacate-delay-ms",
            "500",
        ],
    )
    .await;
    let all = [0, 1, 2];
    let mut crowd = Crowd::new(&nodes);

    // Churn on every node, then every node's cluster stats are the truth.
    let topics = [
        "patterns:stream",
        "patterns:stats",
        "patterns:vsm",
        "rooms:a",
        "rooms:b",
        "rooms:c",
    ];
    let mut rng = Rng::seeded();
    let mut open: Vec<usize> = Vec::new();
    for _ in 0..200 {
        match rng.below(10) {
            0 | 1 if open.len() < 24 => {
                let node = rng.below(3);
                open.push(crowd.add(&nodes, node, &[], json!({})).await);
            }
            2..=6 if !open.is_empty() => {
                let i = open[rng.below(open.len())];
                crowd.join(i, topics[rng.below(topics.len())]).await;
            }
            7 | 8 if !open.is_empty() => {
                let i = open[rng.below(open.len())];
                let joined: Vec<String> = crowd.members[i].joined.iter().cloned().collect();
                if !joined.is_empty() {
                    crowd.leave(i, &joined[rng.below(joined.len())]).await;
                }
            }
            9 if !open.is_empty() => {
                let i = open.swap_remove(rng.below(open.len()));
                crowd.close(i).await;
            }
            _ => {}
        }
    }
    let took = wait_exact(&nodes, &all, &crowd.truth(), Duration::from_secs(1)).await;
    println!("after churn: exact cluster stats on every node within {took:?}");

    // Occupancy: a watcher on n2 follows joins on n1 and n3; get_occupancy
    // agrees everywhere.
    let topic = "rooms:occ";
    let watcher = crowd
        .add(&nodes, 1, &[topic], json!({"occupancy": true}))
        .await;
    let first = crowd.client(watcher).expect_event(topic, "occupancy").await;
    assert_eq!(first.payload["connections"], 1, "{}", first.raw);
    for (node, expected) in [(0, 2u64), (2, 3), (0, 4)] {
        let t = Instant::now();
        crowd.add(&nodes, node, &[topic], json!({})).await;
        crowd
            .client(watcher)
            .expect(&format!("occupancy {expected}"), |m| {
                m.event == "occupancy" && m.payload["connections"] == expected
            })
            .await;
        println!(
            "occupancy push on n2 after a join on n{}: {:?}",
            node + 1,
            t.elapsed()
        );
    }
    for node in &nodes {
        let res = get(node.addr, &format!("/api/occupancy?topic={topic}")).await;
        let v = res.json();
        assert_eq!(
            v["topics"][topic],
            json!({"connections": 4, "nodes": {"n1": 2, "n2": 1, "n3": 1}}),
            "{v}"
        );
        assert_eq!(v["degraded"], false, "{v}");
    }
    let reply = crowd
        .client(watcher)
        .request(topic, "get_occupancy", json!({"topics": [topic]}))
        .await;
    assert_eq!(reply.assert_ok()["topics"][topic]["connections"], 4);

    // Presence: alice on n1 is in bob's presence_state on n3, and bob's
    // join reaches alice as a presence_diff.
    let room = "rooms:presence";
    let alice = crowd
        .add(&nodes, 0, &[room], json!({"user_id": "alice"}))
        .await;
    crowd
        .client(alice)
        .expect_event(room, "presence_state")
        .await;
    let t = Instant::now();
    let state = loop {
        let mut bob = client_of(&nodes[2]).await;
        bob.join_ok(room, json!({"user_id": "bob"})).await;
        let state = bob.expect_event(room, "presence_state").await;
        if state.payload.get("alice").is_some() {
            crowd.keep(2, bob, &[room]);
            break state;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "alice never in n3's presence_state: {}",
            state.raw
        );
        bob.close().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let in_state = t.elapsed();
    assert_eq!(
        state.payload["alice"]["metas"][0]["node"], "n1",
        "{}",
        state.raw
    );
    let diff = crowd
        .client(alice)
        .expect("bob's join on n3", |m| {
            m.event == "presence_diff" && m.payload["joins"].get("bob").is_some()
        })
        .await;
    println!(
        "presence: alice (n1) in bob's state on n3 after {:?}; bob's join seen on n1 after {:?}",
        in_state,
        t.elapsed()
    );
    assert_eq!(diff.payload["joins"]["bob"]["metas"][0]["node"], "n3");
    // And n2, which has nobody there, knows both within 500 ms.
    wait_for(Duration::from_millis(500), "both users on n2", || async {
        let res = get(nodes[1].addr, &format!("/api/presence/stats?topic={room}")).await;
        res.json() == json!({"connections": 2, "users": 2})
    })
    .await;

    // The relay: two subscribers per node, every message once at each.
    let mut subscribers = Vec::new();
    for node in all {
        for _ in 0..2 {
            subscribers.push(
                crowd
                    .add(&nodes, node, &["patterns:stream", "rooms:relay"], json!({}))
                    .await,
            );
        }
    }
    relay_exactly_once(&rc, &nodes, &all, &mut crowd, &subscribers, "r1").await;

    // A webhook: one channel_occupied for a topic joined on every node.
    for node in all {
        crowd.add(&nodes, node, &["rooms:hook"], json!({})).await;
    }
    wait_for(Duration::from_secs(5), "rooms:hook occupied", || {
        let n = occupied(&hooks, "rooms:hook");
        async move { n >= 1 }
    })
    .await;
    // A redelivery or a second decision would come within this.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(occupied(&hooks, "rooms:hook"), 1, "{:?}", hooks.events());
    let events = webhooks_match(&hooks, &crowd.truth()).await;
    println!(
        "webhooks: {events} events, one per transition, in {} batches",
        hooks.batches.lock().unwrap().len()
    );

    // Everything still exact.
    wait_exact(&nodes, &all, &crowd.truth(), Duration::from_secs(1)).await;
    assert_no_crossslot(&rc, &nodes);
}

/// Waits (3 s at most) until every channel's webhook events add up to its
/// state now: `channel_occupied` once more than `channel_vacated` if
/// someone is there, as often if nobody is (vacated comes 500 ms after the
/// last one left); every id once. Returns how many events came.
async fn webhooks_match(hooks: &Receiver, truth: &BTreeMap<String, Figures>) -> usize {
    let occupied_now = |channel: &str| {
        truth
            .values()
            .any(|f| f.topics.get(channel).is_some_and(|n| *n > 0))
    };
    let balance = || {
        let mut balance: BTreeMap<String, i64> = BTreeMap::new();
        for e in hooks.events() {
            let channel = e["channel"].as_str().unwrap_or_default().to_owned();
            let step = match e["name"].as_str() {
                Some("channel_occupied") => 1,
                Some("channel_vacated") => -1,
                _ => 0,
            };
            *balance.entry(channel).or_default() += step;
        }
        balance
    };
    let start = Instant::now();
    loop {
        let b = balance();
        let wrong: Vec<_> = b
            .iter()
            .filter(|(c, n)| **n != i64::from(occupied_now(c)))
            .collect();
        if wrong.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "webhook events do not add up for {wrong:?}: {:?}",
            hooks.events()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = hooks.events();
    let ids: BTreeSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "ids are unique: {events:?}");
    events.len()
}

fn occupied(hooks: &Receiver, channel: &str) -> usize {
    hooks
        .events()
        .iter()
        .filter(|e| e["name"] == "channel_occupied" && e["channel"] == channel)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_killed_and_stopped_nodes_leave_the_view() {
    let rc = RedisCluster::start();
    let ttl = Duration::from_millis(1500);
    let mut nodes = start_nodes(&rc, 5, &["--node-ttl-ms", "1500"]).await;
    let mut crowd = Crowd::new(&nodes);
    for node in [0, 1, 2] {
        crowd
            .add(&nodes, node, &["patterns:stream", "rooms:k"], json!({}))
            .await;
    }
    let watcher = crowd
        .add(&nodes, 0, &["rooms:w"], json!({"occupancy": true}))
        .await;
    crowd.add(&nodes, 2, &["rooms:w"], json!({})).await;
    // The survivors' relay, watched while n3 dies.
    let relayed = [
        crowd.add(&nodes, 0, &["rooms:relay"], json!({})).await,
        crowd.add(&nodes, 1, &["rooms:relay"], json!({})).await,
    ];
    wait_exact(&nodes, &[0, 1, 2], &crowd.truth(), Duration::from_secs(1)).await;
    // Nodes that have run for a while: past the 3 s after subscribing in
    // which no partition is suspected of going quiet, so the kill below
    // meets the check for quiet partitions fully armed.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // SIGKILL n3: no goodbye; it leaves every view by its TTL.
    nodes[2].kill();
    let killed = Instant::now();
    crowd.forget_node(2);
    let expected = crowd.truth_without(&["n3"]);
    // Broadcasts on n1 and n2 all along, until well after n3 has left both
    // views, from a task of their own so the polling below keeps its pace.
    let addrs = [nodes[0].addr, nodes[1].addr];
    let broadcasting = tokio::spawn(async move {
        let mut sent = BTreeSet::new();
        while killed.elapsed() < ttl * 2 {
            for addr in addrs {
                let id = format!("ttl/{}", sent.len());
                broadcast(addr, "rooms:relay", "seq", &json!({"id": id})).await;
                sent.insert(id);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent
    });
    let mut gone = [None, None];
    let mut degraded = [Duration::ZERO, Duration::ZERO];
    let mut last = Instant::now();
    while gone.iter().any(Option::is_none) {
        assert!(
            killed.elapsed() < ttl * 3,
            "n3 still in the view {:?} after its kill: {:?}",
            killed.elapsed(),
            cluster_stats(nodes[0].addr).await
        );
        let since = last.elapsed();
        last = Instant::now();
        // Both at once: the time of each is what it answers, not the wait
        // for the other's answer.
        let answers = tokio::join!(cluster_stats(nodes[0].addr), cluster_stats(nodes[1].addr));
        for (i, v) in [answers.0, answers.1].into_iter().enumerate() {
            if gone[i].is_some() {
                continue;
            }
            if v["degraded"] == true {
                degraded[i] += since;
            } else if mismatch(&v, &expected).is_none() {
                gone[i] = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "SIGKILLed n3 out of n1's view after {:?}, of n2's after {:?} (ttl {ttl:?}); degraded meanwhile about {degraded:?}",
        gone[0].unwrap_or_default(),
        gone[1].unwrap_or_default()
    );
    for g in gone.into_iter().flatten() {
        // 100 ms of slack for the polling itself, on a loaded machine.
        assert!(g <= ttl + Duration::from_millis(100), "gone after {g:?}");
    }
    // A node that died is no sign of a lost subscription: the survivors
    // kept theirs, so every broadcast reached both subscribers once.
    let sent = broadcasting.await.expect("the broadcasts");
    for (node, &s) in relayed.iter().enumerate() {
        let got = ids_once(crowd.client(s), "rooms:relay", &sent).await;
        println!(
            "{} relayed broadcasts from n1 and n2 at the subscriber on {}, each once",
            got, nodes[node].node
        );
    }
    for node in [0, 1] {
        assert_kept_subscription(&nodes[node]);
    }
    let m = crowd
        .client(watcher)
        .expect("occupancy without n3's member", |m| {
            m.event == "occupancy" && m.payload["connections"] == 1
        })
        .await;
    assert_eq!(m.topic, "rooms:w");
    wait_exact(&nodes, &[0, 1], &expected, Duration::from_secs(1)).await;

    // SIGTERM n2: it says goodbye and leaves n1's view at once.
    nodes[1].signal(libc::SIGTERM);
    let stopped = Instant::now();
    crowd.forget_node(1);
    let expected = crowd.truth_without(&["n2", "n3"]);
    let took = wait_exact(&nodes, &[0], &expected, Duration::from_millis(1000)).await;
    println!("SIGTERMed n2 out of n1's view after {took:?}");
    let status = nodes[1].wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    println!("n2 exited after {:?}", stopped.elapsed());
    for node in [0, 1] {
        assert_kept_subscription(&nodes[node]);
    }
    let meta = format!("{PREFIX}:{{n2}}:meta");
    let topics = format!("{PREFIX}:{{n2}}:topics");
    assert_eq!(rc.cmd_for_key(&meta, &["EXISTS", &meta, &topics]), "0");
    assert_no_crossslot(&rc, &nodes);
}

/// `node` never subscribed afresh because a partition went quiet (no
/// Redis server failed: nothing was lost).
fn assert_kept_subscription(node: &Server) {
    let quiet: Vec<String> = node
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("went quiet"))
        .collect();
    assert!(
        quiet.is_empty(),
        "{} subscribed afresh though no redis server failed:\n{}",
        node.node,
        quiet.join("\n")
    );
}

/// Reads `c`'s pushes on `topic` until it has every id in `want` (5 s at
/// most), then a quiet moment for late copies; asserts each came exactly
/// once. Returns how many came.
async fn ids_once(c: &mut Client, topic: &str, want: &BTreeSet<String>) -> usize {
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let count = |msgs: Vec<Msg>, got: &mut BTreeMap<String, usize>| {
        for m in msgs.iter().filter(|m| m.topic == topic) {
            if let Some(id) = m.payload["id"].as_str() {
                *got.entry(id.to_owned()).or_default() += 1;
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !want.iter().all(|id| got.contains_key(id)) && Instant::now() < deadline {
        let msgs = c.collect_for(Duration::from_millis(100)).await;
        count(msgs, &mut got);
    }
    let msgs = c.drain(Duration::from_millis(300)).await;
    count(msgs, &mut got);
    let missing: Vec<&String> = want.iter().filter(|id| !got.contains_key(*id)).collect();
    let twice: Vec<(&String, &usize)> = got.iter().filter(|(_, n)| **n > 1).collect();
    let foreign: Vec<&String> = got.keys().filter(|id| !want.contains(*id)).collect();
    assert!(
        missing.is_empty() && twice.is_empty() && foreign.is_empty(),
        "of {} broadcasts on {topic}: missing {missing:?}, more than once {twice:?}, unexpected {foreign:?}",
        want.len()
    );
    got.len()
}

/// What of headcount's keys and channels the master `master` serves.
fn on_master(rc: &RedisCluster, master: usize) -> Vec<String> {
    let mut held = Vec::new();
    let mut names: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| format!("{PREFIX}:{{{n}}}:meta"))
        .collect();
    names.push(format!("{PREFIX}:nodes"));
    names.push(format!("{PREFIX}:events"));
    names.push(format!("{{{PREFIX}:webhooks}}"));
    let partitions: Vec<String> = (0..16).map(|k| format!("{{{PREFIX}:{k}}}:view")).collect();
    for key in &names {
        if rc.master_of(key) == Some(master) {
            held.push(key.clone());
        }
    }
    let mine: Vec<usize> = (0..16)
        .filter(|k| rc.master_of(&partitions[*k]) == Some(master))
        .collect();
    held.push(format!("view/relay partitions {mine:?}"));
    held
}

/// The partition a node publishes its deltas and relayed messages on (as
/// `src/cluster/keys.rs` computes it: FNV-1a of the name, mod 16).
fn partition(node: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % 16) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_a_killed_master_of_a_snapshot_degrades_answers_then_all_is_exact_again() {
    // The master of n1's snapshot, and n3's only seed.
    killed_master(&format!("{PREFIX}:{{n1}}:meta"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_a_killed_master_of_a_relay_partition_degrades_answers_then_all_is_exact_again(
) {
    // The master of the partition n2 publishes on; n3's seed is a replica.
    let channel = format!("{{{PREFIX}:{}}}:view", partition("n2"));
    killed_master(&channel, Some(3)).await;
}

/// SIGKILLs the master that serves `key` under three nodes with members,
/// watchers and subscribers: degraded answers within a second, then exact
/// figures, occupancy and an exactly-once relay again; and the same once
/// the killed server is back as a replica. n3's single seed is the victim
/// unless `seed` names another server.
async fn killed_master(key: &str, seed: Option<usize>) {
    let mut rc = RedisCluster::start();
    let victim = rc.master_of(key).expect("a master for the key");
    assert_eq!(
        rc.cmd(victim, &["CLUSTER", "KEYSLOT", key]),
        key_slot(key).to_string()
    );
    let slot = key_slot(key);
    let seed = seed.unwrap_or(victim);
    let hooks = Receiver::start().await;
    let hook_flags = [
        "--webhook-url",
        &hooks.url,
        "--webhook-vacate-delay-ms",
        "500",
    ];
    let mut nodes = start_nodes(&rc, seed, &hook_flags).await;
    let all = [0, 1, 2];
    let mut crowd = Crowd::new(&nodes);
    for (node, topics) in [
        (0, &["rooms:a", "patterns:stream"][..]),
        (0, &["rooms:a"]),
        (1, &["rooms:a", "rooms:b"]),
        (2, &["rooms:b"]),
        (2, &["rooms:a", "patterns:vsm"]),
    ] {
        crowd.add(&nodes, node, topics, json!({})).await;
    }
    let watcher = crowd
        .add(&nodes, 1, &["rooms:a"], json!({"occupancy": true}))
        .await;
    let subscribers = crowd.relay_subscribers(&nodes, &all).await;
    wait_exact(&nodes, &all, &crowd.truth(), Duration::from_secs(1)).await;
    relay_exactly_once(&rc, &nodes, &all, &mut crowd, &subscribers, "before").await;
    crowd
        .client(watcher)
        .drain(Duration::from_millis(300))
        .await;

    println!(
        "killing redis {} (master of {:?})",
        rc.nodes[victim].port,
        on_master(&rc, victim)
    );
    rc.kill(victim);
    let killed = Instant::now();
    let promoted = watch_promotion(&rc, victim, slot, killed);

    // Every node answers degraded within a second (each answer itself
    // within a second), with its own exact figures.
    let mut first_degraded: [Option<Duration>; 3] = [None; 3];
    while first_degraded.iter().any(Option::is_none) && killed.elapsed() < Duration::from_secs(2) {
        for i in all {
            if first_degraded[i].is_some() {
                continue;
            }
            let t = Instant::now();
            let v = cluster_stats(nodes[i].addr).await;
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "a query took {:?}",
                t.elapsed()
            );
            if v["degraded"] == true {
                first_degraded[i] = Some(killed.elapsed());
                assert_eq!(v["source"], "local", "{v}");
                assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
                println!("{} degraded: {}", nodes[i].node, v["error"]);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("first degraded answers after the kill: {first_degraded:?}");
    for (i, d) in first_degraded.iter().enumerate() {
        assert!(
            d.is_some_and(|d| d < Duration::from_secs(1)),
            "{}: no degraded answer within 1 s of the kill ({d:?})",
            nodes[i].node
        );
    }

    // The relay during the failover: messages may be lost, none may come
    // twice (read after the recovery).
    publish_round(&rc, &nodes, &all, "during", N).await;

    // Sockets keep working meanwhile: changes on n1 and n3, one on n2.
    let late = crowd.add(&nodes, 0, &["rooms:a"], json!({})).await;
    crowd
        .add(&nodes, 2, &["rooms:a", "rooms:c"], json!({}))
        .await;
    crowd.leave(2, "rooms:a").await;
    crowd.client(late).heartbeat().await;
    for i in all {
        let local = stats(nodes[i].addr).await;
        let f = &crowd.truth()[&nodes[i].node];
        assert_eq!(
            local["connection_count"],
            f.topics.values().sum::<u64>(),
            "{local}"
        );
    }

    // Then exact again on every node, not degraded: polled until one round
    // of answers is exact on all three; a node's time is the end of its
    // last wrong answer (the next 3 s check that it stays so).
    let expected = crowd.truth();
    let mut wrong_until: [Duration; 3] = [Duration::ZERO; 3];
    let mut last: [String; 3] = Default::default();
    loop {
        let mut all_exact = true;
        for i in all {
            match mismatch(&cluster_stats(nodes[i].addr).await, &expected) {
                None => {}
                Some(why) => {
                    all_exact = false;
                    wrong_until[i] = killed.elapsed();
                    last[i] = format!("{}: {why}", nodes[i].node);
                }
            }
        }
        if all_exact {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "not exact 30 s after the kill; last wrong answers:\n{}",
            last.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exact_at = wrong_until;
    let promoted = promoted.join().expect("the watching thread");
    println!(
        "redis promoted a replica {promoted:?} after the kill; exact and not degraded again after {exact_at:?}"
    );
    for i in all {
        let (Some(d), e) = (first_degraded[i], exact_at[i]) else {
            continue;
        };
        println!(
            "{}: degraded from {d:?} for about {:?}, exact {e:?} after the kill",
            nodes[i].node,
            e.saturating_sub(d)
        );
    }
    assert!(promoted.is_some(), "redis never promoted a replica");
    if seed == victim {
        // n3's only seed was the killed server: it found the others itself.
        assert!(
            nodes[2].stderr().contains("no --redis seed answers"),
            "n3 subscribed again without its seed?"
        );
    }

    // And stays so: no answer in the next 3 s is degraded or wrong.
    let steady = Instant::now();
    let mut bad = Vec::new();
    while steady.elapsed() < Duration::from_secs(3) {
        for i in all {
            if let Some(why) = mismatch(&cluster_stats(nodes[i].addr).await, &expected) {
                bad.push(format!("+{:?} {}: {why}", steady.elapsed(), nodes[i].node));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bad.is_empty(), "after recovery:\n{}", bad.join("\n"));

    // Occupancy works again: the watcher's last figure is the truth, and a
    // join on n1 reaches it.
    let total = crowd.total("rooms:a");
    crowd
        .client(watcher)
        .expect(&format!("occupancy {total}"), |m| {
            m.event == "occupancy" && m.payload["connections"] == total
        })
        .await;
    let t = Instant::now();
    crowd.add(&nodes, 0, &["rooms:a"], json!({})).await;
    crowd
        .client(watcher)
        .expect(&format!("occupancy {}", total + 1), |m| {
            m.event == "occupancy" && m.payload["connections"] == total + 1
        })
        .await;
    println!(
        "after the failover, a join on n1 in n2's occupancy push after {:?}",
        t.elapsed()
    );
    for node in &nodes {
        let v = get(node.addr, "/api/occupancy?topic=rooms:a").await.json();
        assert_eq!(v["topics"]["rooms:a"]["connections"], total + 1, "{v}");
    }
    let mut during = Vec::new();
    for &s in &subscribers {
        let who = format!("subscriber {s} on {}", crowd.node_of(s));
        during.push(assert_round(crowd.client(s), &who, "during", N, false).await);
    }
    println!(
        "relay during the failover: {during:?} of {} messages at each subscriber, none twice",
        expected_messages("during", N).len()
    );
    relay_exactly_once(&rc, &nodes, &all, &mut crowd, &subscribers, "after").await;

    // The killed server comes back as a replica: nothing changes, and
    // nothing arrives twice.
    let t = Instant::now();
    rc.restart(victim);
    rc.wait_healthy(Duration::from_secs(30));
    let role = rc.cmd(victim, &["INFO", "replication"]);
    assert!(role.contains("role:slave"), "{role}");
    println!(
        "killed redis back as a synced replica after {:?}",
        t.elapsed()
    );
    let expected = crowd.truth();
    wait_exact(&nodes, &all, &expected, Duration::from_secs(5)).await;
    relay_exactly_once(&rc, &nodes, &all, &mut crowd, &subscribers, "rejoined").await;
    wait_exact(&nodes, &all, &expected, Duration::from_secs(1)).await;
    for node in &mut nodes {
        assert!(!node.has_exited(), "{} exited", node.node);
    }
    // Webhooks went through the failover too: one per transition.
    let events = webhooks_match(&hooks, &expected).await;
    println!("webhooks: {events} events, one per transition");
    assert_no_crossslot(&rc, &nodes);
}

/// Lines of `node`'s log that say it subscribed afresh.
fn resubscribes(node: &Server) -> Vec<String> {
    node.stderr_lines()
        .into_iter()
        .filter(|l| l.contains("subscribing afresh"))
        .collect()
}

/// Joins and leaves on every node, so that figures that are exact
/// afterwards were carried by a working Redis, not left over from before.
async fn churn(nodes: &[Server], crowd: &mut Crowd, round: &str) {
    for node in 0..nodes.len() {
        let topic = format!("rooms:{round}{node}");
        let i = crowd
            .add(nodes, node, &["rooms:h", topic.as_str()], json!({}))
            .await;
        crowd.join(i, "rooms:h2").await;
        crowd.leave(i, "rooms:h").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_a_hung_master_is_failed_over_and_nodes_recover() {
    // The master of n1's snapshot, and n3's only seed.
    hung_master(&format!("{PREFIX}:{{n1}}:meta"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_a_hung_master_of_a_relay_partition_is_failed_over_and_nodes_recover() {
    // The master of the partition n2 publishes on: its deltas and relayed
    // messages vanish into the hung server until every node subscribes
    // afresh. n3's seed is a replica.
    let channel = format!("{{{PREFIX}:{}}}:view", partition("n2"));
    hung_master(&channel, Some(3)).await;
}

/// SIGSTOPs the master that serves `key` under three nodes with members and
/// subscribers. A stopped server keeps its connections open, so no client
/// hears of a lost connection; every request to it simply never comes
/// back. Redis fails it over after cluster-node-timeout, and every node
/// must then be exact, not degraded, with an exactly-once relay, while it
/// is still stopped; and again once it is resumed (as a replica). n3's
/// single seed is the victim unless `seed` names another server.
async fn hung_master(key: &str, seed: Option<usize>) {
    let mut rc = RedisCluster::start();
    let victim = rc.master_of(key).expect("a master for the key");
    let slot = key_slot(key);
    let nodes = start_nodes(&rc, seed.unwrap_or(victim), &[]).await;
    let all = [0, 1, 2];
    let mut crowd = Crowd::new(&nodes);
    for (node, topics) in [
        (0, &["rooms:a", "patterns:stream"][..]),
        (1, &["rooms:a", "rooms:b"]),
        (2, &["rooms:b"]),
    ] {
        crowd.add(&nodes, node, topics, json!({})).await;
    }
    let subscribers = crowd.relay_subscribers(&nodes, &all).await;
    wait_exact(&nodes, &all, &crowd.truth(), Duration::from_secs(1)).await;
    relay_exactly_once(&rc, &nodes, &all, &mut crowd, &subscribers, "before").await;

    println!(
        "stopping redis {} (master of {:?})",
        rc.nodes[victim].port,
        on_master(&rc, victim)
    );
    let held: Vec<bool> = nodes
        .iter()
        .map(|n| rc.master_of(&format!("{PREFIX}:{{{}}}:meta", n.node)) == Some(victim))
        .collect();
    rc.stop(victim);
    let stopped = Instant::now();
    let promoted = watch_promotion(&rc, victim, slot, stopped);

    // A node whose snapshot the stopped server holds cannot write it:
    // degraded soon (a probe times out after 500 ms), answering with its own
    // figures, each answer quickly.
    for (i, node) in nodes.iter().enumerate() {
        if !held[i] {
            continue;
        }
        let took = wait_for(Duration::from_secs(3), "degraded", || async {
            let t = Instant::now();
            let v = cluster_stats(node.addr).await;
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "a query took {:?}",
                t.elapsed()
            );
            v["degraded"] == true
        })
        .await;
        println!("{} degraded {took:?} after the stop", node.node);
    }

    // Sockets keep working meanwhile.
    churn(&nodes, &mut crowd, "during").await;

    // Redis fails the stopped master over to its replica after
    // cluster-node-timeout; then every node must find the new master by
    // itself (nothing tells it: the old one never answers nor hangs up) and
    // be exact and not degraded again, while the old master stays stopped.
    let within = Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(20);
    let expected = crowd.truth();
    let mut last: [Option<String>; 3] = Default::default();
    let recovered = loop {
        for i in all {
            last[i] = mismatch(&cluster_stats(nodes[i].addr).await, &expected)
                .map(|why| format!("{}: {why}", nodes[i].node));
        }
        if last.iter().all(Option::is_none) {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < within,
            "not exact {within:?} after the master was stopped (failed over: {:?}); last answers:\n{}",
            rc.master_of(key).map(|m| rc.nodes[m].port),
            last.iter().flatten().cloned().collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let successor = rc.master_of(key);
    let promoted = promoted.join().expect("the watching thread");
    println!(
        "redis promoted a replica {promoted:?} after the stop; every node exact and not \
         degraded {recovered:?} after the stop; slot {slot} now on {:?}",
        successor.map(|m| rc.nodes[m].port)
    );
    assert!(
        successor.is_some_and(|m| m != victim),
        "exact again, but redis never failed the stopped master over?"
    );

    // Live again, not merely right by chance: new changes on every node
    // reach every node, the relay is exactly once, and answers stay so.
    churn(&nodes, &mut crowd, "after").await;
    let took = wait_exact(&nodes, &all, &crowd.truth(), Duration::from_secs(5)).await;
    println!("churn after the failover exact everywhere within {took:?}");
    relay_exactly_once(&rc, &nodes, &all, &mut crowd, &subscribers, "after").await;
    assert_steady(&nodes, &crowd.truth(), Duration::from_secs(2)).await;

    // The hung server wakes up: it learns it was failed over and becomes a
    // replica; nothing it held while stopped may count twice.
    rc.resume(victim);
    let t = Instant::now();
    rc.wait_healthy(Duration::from_secs(30));
    let role = rc.cmd(victim, &["INFO", "replication"]);
    assert!(role.contains("role:slave"), "{role}");
    println!("resumed redis a synced replica after {:?}", t.elapsed());
    wait_exact(&nodes, &all, &crowd.truth(), Duration::from_secs(5)).await;
    churn(&nodes, &mut crowd, "resumed").await;
    let took = wait_exact(&nodes, &all, &crowd.truth(), Duration::from_secs(5)).await;
    println!("churn after the resume exact everywhere within {took:?}");
    relay_exactly_once(&rc, &nodes, &all, &mut crowd, &subscribers, "resumed").await;
    assert_steady(&nodes, &crowd.truth(), Duration::from_secs(2)).await;
    for node in &nodes {
        let reconnects = node
            .stderr_lines()
            .into_iter()
            .filter(|l| l.contains("connected afresh to the redis cluster"))
            .count();
        println!(
            "{}: {} resubscribes, {reconnects} fresh command connections",
            node.node,
            resubscribes(node).len()
        );
    }
    assert_no_crossslot(&rc, &nodes);
}

/// No answer of any node in the next `period` is degraded or differs from
/// `expected`.
async fn assert_steady(nodes: &[Server], expected: &BTreeMap<String, Figures>, period: Duration) {
    let steady = Instant::now();
    let mut bad = Vec::new();
    while steady.elapsed() < period {
        for node in nodes {
            if let Some(why) = mismatch(&cluster_stats(node.addr).await, expected) {
                bad.push(format!("+{:?} {}: {why}", steady.elapsed(), node.node));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bad.is_empty(), "not steady:\n{}", bad.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_a_manual_failover_resubscribes_each_node_once() {
    // A replica takes over with CLUSTER FAILOVER: the old master drops
    // every sharded subscription it served, one SUNSUBSCRIBE per channel.
    // That is one topology change, so one fresh subscription per node.
    let rc = RedisCluster::start();
    let key = format!("{PREFIX}:{{n2}}:meta");
    let master = rc.master_of(&key).expect("a master for the key");
    let nodes = start_nodes(&rc, 5, &[]).await;
    let all = [0, 1, 2];
    let mut crowd = Crowd::new(&nodes);
    for node in all {
        crowd.add(&nodes, node, &["rooms:f"], json!({})).await;
    }
    let subscribers = crowd.relay_subscribers(&nodes, &all).await;
    wait_exact(&nodes, &all, &crowd.truth(), Duration::from_secs(1)).await;
    let before: Vec<usize> = nodes.iter().map(|n| resubscribes(n).len()).collect();

    let view = rc.view_of(master).expect("CLUSTER NODES");
    let id = &view
        .iter()
        .find(|l| l.flags.contains("myself"))
        .expect("itself")
        .id;
    let replica = rc
        .view_of(master)
        .expect("CLUSTER NODES")
        .iter()
        .find(|l| l.master.as_deref() == Some(id.as_str()))
        .and_then(|l| rc.ports().iter().position(|p| *p == l.port))
        .expect("a replica of the master");
    println!(
        "CLUSTER FAILOVER on {} (replica of {}, master of {:?})",
        rc.nodes[replica].port,
        rc.nodes[master].port,
        on_master(&rc, master)
    );
    assert_eq!(rc.cmd(replica, &["CLUSTER", "FAILOVER"]), "OK");
    let t = Instant::now();
    wait_for(Duration::from_secs(20), "the replica took over", || {
        let now = rc.master_of(&key);
        async move { now == Some(replica) }
    })
    .await;
    rc.wait_healthy(Duration::from_secs(30));
    println!("failed over after {:?}", t.elapsed());

    churn(&nodes, &mut crowd, "failover").await;
    let took = wait_exact(&nodes, &all, &crowd.truth(), Duration::from_secs(10)).await;
    println!("exact everywhere {took:?} after the churn");
    relay_exactly_once(&rc, &nodes, &all, &mut crowd, &subscribers, "failover").await;
    // Late SUNSUBSCRIBEs, or a second round, would show by now.
    assert_steady(&nodes, &crowd.truth(), Duration::from_secs(2)).await;
    for (i, node) in nodes.iter().enumerate() {
        let lines = resubscribes(node);
        let after = &lines[before[i]..];
        println!(
            "{}: {} resubscribes after the failover",
            node.node,
            after.len()
        );
        assert!(
            after.len() <= 2,
            "{} subscribed afresh {} times for one failover:\n{}",
            node.node,
            after.len(),
            after.join("\n")
        );
    }
    assert_no_crossslot(&rc, &nodes);
}

/// Redis's own failover of `victim` (killed or stopped at `since`), watched
/// from a running server: how long after `since` another master owned
/// `slot`, or `None` after 30 s.
fn watch_promotion(
    rc: &RedisCluster,
    victim: usize,
    slot: u16,
    since: Instant,
) -> std::thread::JoinHandle<Option<Duration>> {
    let watch_port = rc.nodes[(victim + 1) % 6].port;
    let victim_port = rc.nodes[victim].port;
    std::thread::spawn(move || loop {
        let owner = cluster_support::resp_command(watch_port, &["CLUSTER", "NODES"])
            .ok()
            .and_then(|t| {
                cluster_support::redis_cluster::parse_nodes(&t)
                    .into_iter()
                    .find(|l| l.is_master() && !l.failing() && l.owns(slot))
            })
            .map(|l| l.port);
        if owner.is_some_and(|p| p != victim_port) {
            return Some(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(30) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    })
}
