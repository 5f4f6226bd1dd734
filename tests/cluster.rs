//! Cluster mode, black box: each test starts its own `redis-server` and
//! headcount nodes as separate processes of the real binary, and checks
//! SPEC §3.2 / §6.1 through WebSockets, HTTP and Redis itself.

mod cluster_support;
mod common;

use cluster_support::{client_of, cluster, start_node, Redis};
use common::{
    cluster_stats, get, metrics, post_json, stats, wait_for, Client, Closed, Msg, Server,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

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

/// Waits until every subscriber connection of `n` nodes is on both channels.
async fn wait_subscribed(redis: &Redis, prefix: &str, n: usize) {
    let relay = format!("{prefix}:relay");
    let events = format!("{prefix}:events");
    wait_for(Duration::from_secs(10), "nodes subscribed", || {
        let reply = redis.cmd(&["PUBSUB", "NUMSUB", &relay, &events]);
        let want = format!("{relay}\n{n}\n{events}\n{n}");
        async move { reply == want }
    })
    .await;
}

/// The unlabelled sample `name` of the node's `/metrics` (fails when absent).
async fn metric(node: &Server, name: &str) -> f64 {
    metrics(node.addr).await.unlabelled(name)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[i]
}

/// The figures a node should report, from what the test did.
#[derive(Default, Clone, Debug, PartialEq)]
struct Figures {
    sockets: u64,
    topics: BTreeMap<String, u64>,
}

impl Figures {
    fn connections(&self) -> u64 {
        self.topics.values().sum()
    }

    fn stream(&self) -> u64 {
        self.topics.get("patterns:stream").copied().unwrap_or(0)
    }
}

/// Whether ClusterStats `v` is exactly `expected` (node name → figures).
fn matches_cluster(v: &Value, expected: &BTreeMap<String, Figures>) -> bool {
    let sum = |f: fn(&Figures) -> u64| expected.values().map(f).sum::<u64>();
    let mut by_topic: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (node, f) in expected {
        for (topic, n) in &f.topics {
            by_topic
                .entry(topic.clone())
                .or_default()
                .insert(node.clone(), *n);
        }
    }
    let nodes_ok = expected.iter().all(|(name, f)| {
        let n = &v["nodes"][name];
        n["connection_count"] == f.connections()
            && n["stream_count"] == f.stream()
            && n["socket_count"] == f.sockets
            && n["age_ms"].is_u64()
    });
    v["source"] == "cluster"
        && v["degraded"] == false
        && v["cluster_size"] == expected.len()
        && v["nodes"].as_object().map(|o| o.len()) == Some(expected.len())
        && v["connection_count"] == sum(Figures::connections)
        && v["total_connections"] == sum(Figures::connections)
        && v["stream_count"] == sum(Figures::stream)
        && v["socket_count"] == sum(|f| f.sockets)
        && v["connections_by_topic"] == serde_json::to_value(&by_topic).unwrap_or_default()
        && nodes_ok
}

fn check_local_answer(v: &Value, node: &str, f: &Figures) {
    assert_eq!(v["node"], node, "{v}");
    assert_eq!(v["connection_count"], f.connections(), "{v}");
    assert_eq!(v["stream_count"], f.stream(), "{v}");
    assert_eq!(v["socket_count"], f.sockets, "{v}");
    let mut topics = BTreeMap::new();
    for (t, n) in &f.topics {
        topics.insert(t.clone(), json!({ node: n }));
    }
    assert_eq!(
        v["connections_by_topic"],
        serde_json::to_value(&topics).unwrap(),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_sums_are_exact_after_random_churn_on_every_node() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3, &["--allow-topic", "rooms:*"]).await;
    let topics = [
        "patterns:stream",
        "patterns:stats",
        "patterns:vsm",
        "rooms:a",
        "rooms:b",
        "rooms:c",
    ];
    let mut rng = Rng::seeded();
    let mut clients: Vec<(usize, Client, BTreeSet<&str>)> = Vec::new();
    for _ in 0..200 {
        match rng.below(10) {
            0 | 1 if clients.len() < 24 => {
                let node = rng.below(nodes.len());
                clients.push((node, client_of(&nodes[node]).await, BTreeSet::new()));
            }
            2..=6 if !clients.is_empty() => {
                let i = rng.below(clients.len());
                let topic = topics[rng.below(topics.len())];
                let (_, client, joined) = &mut clients[i];
                // A repeated join replaces the membership: net zero.
                client.join_ok(topic, json!({})).await;
                joined.insert(topic);
            }
            7 | 8 if !clients.is_empty() => {
                let i = rng.below(clients.len());
                let (_, client, joined) = &mut clients[i];
                if let Some(topic) = joined.iter().nth(rng.below(joined.len().max(1))).copied() {
                    client.leave(topic).await.assert_ok();
                    joined.remove(topic);
                }
            }
            9 if !clients.is_empty() => {
                let i = rng.below(clients.len());
                let (_, client, _) = clients.swap_remove(i);
                client.close().await;
            }
            _ => {}
        }
    }
    let mut expected: BTreeMap<String, Figures> = nodes
        .iter()
        .map(|n| (n.node.clone(), Figures::default()))
        .collect();
    for (node, _, joined) in &clients {
        let f = expected.entry(nodes[*node].node.clone()).or_default();
        f.sockets += 1;
        for t in joined {
            *f.topics.entry((*t).to_owned()).or_default() += 1;
        }
    }
    println!("expected {expected:?}");
    for node in &nodes {
        let took = wait_for(
            Duration::from_secs(1),
            "exact cluster figures on every node",
            || async { matches_cluster(&cluster_stats(node.addr).await, &expected) },
        )
        .await;
        println!("{} exact after {took:?}", node.node);
    }
    for node in &nodes {
        check_local_answer(&stats(node.addr).await, &node.node, &expected[&node.node]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_is_seen_from_another_within_500ms() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3, &["--allow-topic", "rooms:*"]).await;
    let mut client = client_of(&nodes[0]).await;
    let mut joins = Vec::new();
    let mut leaves = Vec::new();
    for _ in 0..10 {
        // Joins come after a pause (an isolated change); leaves right after
        // the join was seen (within the 100 ms batching window).
        tokio::time::sleep(Duration::from_millis(150)).await;
        client.join_ok("rooms:p", json!({})).await;
        joins.push(
            wait_for(Duration::from_millis(500), "join seen from n2", || async {
                cluster_stats(nodes[1].addr).await["connections_by_topic"]["rooms:p"]["n1"] == 1
            })
            .await,
        );
        client.leave("rooms:p").await.assert_ok();
        leaves.push(
            wait_for(Duration::from_millis(500), "leave seen from n3", || async {
                cluster_stats(nodes[2].addr).await["connections_by_topic"]
                    .get("rooms:p")
                    .is_none()
            })
            .await,
        );
    }
    println!(
        "propagation: isolated join p50 {:?} max {:?}; batched leave p50 {:?} max {:?}",
        percentile(&mut joins, 0.5),
        percentile(&mut joins, 1.0),
        percentile(&mut leaves, 0.5),
        percentile(&mut leaves, 1.0)
    );

    // The same answer over the socket, with the SPEC shape.
    let mut stats = client_of(&nodes[2]).await;
    stats.join_ok("patterns:stats", json!({})).await;
    let reply = stats
        .request("patterns:stats", "get_cluster_stats", json!({}))
        .await;
    let v = reply.assert_ok();
    assert_eq!(v["cluster_size"], 3, "{v}");
    assert_eq!(v["source"], "cluster");
    assert_eq!(v["degraded"], false);
    assert_eq!(v["node"], "n3");
    assert_eq!(v["socket_count"], 2, "{v}");
    assert_eq!(v["connections_by_topic"]["patterns:stats"]["n3"], 1, "{v}");
    let ts = v["timestamp"].as_str().unwrap_or("");
    assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    for n in ["n1", "n2", "n3"] {
        assert!(
            v["nodes"][n]["age_ms"].as_u64().is_some_and(|a| a < 2000),
            "{v}"
        );
    }
    let pushed = stats.drain(Duration::from_millis(200)).await;
    assert!(
        pushed.iter().any(|p| p.event == "cluster_stats"),
        "get_cluster_stats also pushes cluster_stats"
    );

    let mut latencies = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let v = cluster_stats(nodes[1].addr).await;
        latencies.push(t.elapsed());
        assert_eq!(v["cluster_size"], 3);
    }
    println!(
        "cluster query over HTTP (3 nodes): p50 {:?} p99 {:?}",
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_drops_out_within_the_node_ttl() {
    let redis = Redis::start();
    let ttl = Duration::from_millis(1500);
    let mut nodes = cluster(&redis, 3, &["--node-ttl-ms", "1500"]).await;
    let mut client = client_of(&nodes[2]).await;
    client.join_ok("patterns:stream", json!({})).await;
    wait_for(Duration::from_secs(1), "n3's member seen", || async {
        cluster_stats(nodes[0].addr).await["stream_count"] == 1
    })
    .await;
    nodes[2].kill();
    let killed = Instant::now();
    // Each node keeps its own view: each must drop n3 within the TTL.
    for node in &nodes[..2] {
        wait_for(ttl * 2, "killed node dropped", || async {
            let v = cluster_stats(node.addr).await;
            v["cluster_size"] == 2 && v["nodes"].get("n3").is_none() && v["stream_count"] == 0
        })
        .await;
        let gone = killed.elapsed();
        println!("SIGKILLed node gone after {gone:?} (ttl {ttl:?})");
        // 50 ms of slack for the polling itself.
        assert!(
            gone <= ttl + Duration::from_millis(50),
            "gone after {gone:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_gracefully_leaves_at_once_and_its_clients_see_1001() {
    let redis = Redis::start();
    // Default TTL (5 s): "at once" must not be the TTL lapsing.
    let mut nodes = cluster(&redis, 3, &[]).await;
    let mut client = client_of(&nodes[2]).await;
    client.join_ok("patterns:stream", json!({})).await;
    wait_for(Duration::from_secs(1), "n3's member seen", || async {
        cluster_stats(nodes[0].addr).await["stream_count"] == 1
    })
    .await;
    nodes[2].signal(libc::SIGTERM);
    let start = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), client.expect_closed()).await;
    assert!(matches!(closed, Ok(Closed::Frame(1001, _))), "{closed:?}");
    let gone = wait_for(Duration::from_millis(1000), "node gone at once", || async {
        let v = cluster_stats(nodes[0].addr).await;
        v["cluster_size"] == 2 && v["stream_count"] == 0
    })
    .await;
    println!(
        "SIGTERMed node gone after {:?} (socket closed after {:?})",
        gone,
        start.elapsed() - gone
    );
    assert_eq!(
        redis.cmd(&["EXISTS", "headcount:{n3}:meta", "headcount:{n3}:topics"]),
        "0"
    );
    let status = nodes[2].wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_degrades_within_1s_and_a_restarted_empty_redis_gets_figures_back_within_2s() {
    let mut redis = Redis::start();
    let nodes = cluster(&redis, 3, &[]).await;
    let mut c1 = client_of(&nodes[0]).await;
    c1.join_ok("patterns:stream", json!({})).await;
    c1.join_ok("patterns:vsm", json!({})).await;
    let mut c2 = client_of(&nodes[1]).await;
    c2.join_ok("patterns:stats", json!({})).await;
    let mut expected: BTreeMap<String, Figures> = BTreeMap::new();
    let fig = |sockets, topics: &[&str]| Figures {
        sockets,
        topics: topics.iter().map(|t| ((*t).to_owned(), 1)).collect(),
    };
    expected.insert("n1".into(), fig(1, &["patterns:stream", "patterns:vsm"]));
    expected.insert("n2".into(), fig(1, &["patterns:stats"]));
    expected.insert("n3".into(), fig(0, &[]));
    for node in &nodes {
        wait_for(
            Duration::from_secs(1),
            "cluster before the outage",
            || async { matches_cluster(&cluster_stats(node.addr).await, &expected) },
        )
        .await;
    }

    redis.kill();
    let killed = Instant::now();
    for node in &nodes {
        // Degraded within 1 s of the kill (SPEC §6.1), every answer quick.
        let left = Duration::from_secs(1).saturating_sub(killed.elapsed());
        wait_for(left, "a degraded cluster answer", || async {
            let t = Instant::now();
            let v = cluster_stats(node.addr).await;
            let took = t.elapsed();
            assert!(took < Duration::from_secs(1), "query took {took:?}");
            v["degraded"] == true
        })
        .await;
        let v = cluster_stats(node.addr).await;
        assert_eq!(v["source"], "local", "{v}");
        assert_eq!(v["degraded"], true, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        assert_eq!(v["cluster_size"], 1, "{v}");
        check_local_answer(&v, &node.node, &expected[&node.node]);
        check_local_answer(&stats(node.addr).await, &node.node, &expected[&node.node]);
    }
    println!(
        "degraded answers on all nodes {:?} after the kill",
        killed.elapsed()
    );
    // Over the socket too, within a second.
    let t = Instant::now();
    let reply = c2
        .request("patterns:stats", "get_cluster_stats", json!({}))
        .await;
    assert!(t.elapsed() < Duration::from_secs(1));
    let v = &reply.response;
    assert_eq!(
        (reply.status.as_str(), &v["degraded"]),
        ("ok", &json!(true)),
        "{v}"
    );
    // Sockets keep working and counts stay exact.
    let mut c3 = client_of(&nodes[0]).await;
    c3.join_ok("patterns:stream", json!({})).await;
    let reply = c3.request("phoenix", "heartbeat", json!({})).await;
    assert_eq!(reply.status, "ok");
    let n1 = expected.get_mut("n1").unwrap();
    n1.sockets += 1;
    *n1.topics.entry("patterns:stream".into()).or_default() += 1;
    check_local_answer(&stats(nodes[0].addr).await, "n1", &expected["n1"]);
    check_local_answer(&cluster_stats(nodes[0].addr).await, "n1", &expected["n1"]);
    assert_eq!(metric(&nodes[0], "headcount_redis_up").await, 0.0);

    // Redis comes back with nothing in it.
    redis.restart();
    let restarted = Instant::now();
    for node in &nodes {
        wait_for(
            Duration::from_secs(2).saturating_sub(restarted.elapsed()),
            "figures restored and degraded cleared",
            || async { matches_cluster(&cluster_stats(node.addr).await, &expected) },
        )
        .await;
    }
    println!(
        "figures restored on all nodes {:?} after the restart",
        restarted.elapsed()
    );
    assert_eq!(redis.cmd(&["HGET", "headcount:{n1}:meta", "c"]), "3");
    assert_eq!(metric(&nodes[0], "headcount_redis_up").await, 1.0);
    assert_eq!(metric(&nodes[0], "headcount_cluster_nodes").await, 3.0);

    // Pub/sub is back too: the nodes resubscribed by themselves.
    wait_subscribed(&redis, "headcount", 3).await;
    c1.drain(Duration::from_millis(10)).await;
    let res = post_json(
        nodes[1].addr,
        "/api/events",
        &json!({"type": "pattern_detected", "data": {"pattern_type": "after"}}),
    )
    .await;
    assert_eq!(res.status, 202);
    redis.cmd(&[
        "PUBLISH",
        "headcount:events",
        r#"{"type": "pattern_detected", "data": {"pattern_type": "published"}}"#,
    ]);
    // c1 is on patterns:stream and patterns:vsm: one push on each.
    let pushes = c1.drain(Duration::from_millis(300)).await;
    assert_eq!(
        count(&pushes, "pattern_detected", "pattern_type", &json!("after")),
        2,
        "{pushes:?}"
    );
    assert_eq!(
        count(
            &pushes,
            "pattern_detected",
            "pattern_type",
            &json!("published")
        ),
        2,
        "{pushes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_slower_than_500ms_gives_degraded_answers_within_1s() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2, &[]).await;
    let port = redis.port;
    let sleeper = std::thread::spawn(move || {
        let r = Redis::cmd_on(port, &["DEBUG", "SLEEP", "1.5"]);
        assert_eq!(r, "OK");
    });
    // Answers come from memory and never wait on Redis; the node notices
    // that Redis stopped answering within a second, and says so.
    let slow = Instant::now();
    wait_for(Duration::from_secs(1), "degraded answers", || async {
        let t = Instant::now();
        let v = cluster_stats(nodes[0].addr).await;
        assert!(t.elapsed() < Duration::from_millis(500), "a query waited");
        v["degraded"] == true && v["source"] == "local"
    })
    .await;
    assert!(slow.elapsed() < Duration::from_secs(1));
    let _ = sleeper.join();
    wait_for(Duration::from_secs(2), "degraded cleared", || async {
        cluster_stats(nodes[0].addr).await["degraded"] == false
    })
    .await;
    assert_eq!(cluster_stats(nodes[1].addr).await["cluster_size"], 2);
}

fn count(pushes: &[Msg], event: &str, key: &str, value: &Value) -> usize {
    pushes
        .iter()
        .filter(|p| p.event == event && &p.payload[key] == value)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_broadcasts_reach_every_subscriber_on_every_node_exactly_once() {
    let redis = Redis::start();
    let extra = [
        "--allow-topic",
        "rooms:*",
        "--client-broadcast",
        "--redis-prefix",
        "hcx",
    ];
    let nodes = cluster(&redis, 3, &extra).await;
    wait_subscribed(&redis, "hcx", 3).await;
    let mut subscribers = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let mut c = client_of(node).await;
            c.join_ok("patterns:stream", json!({})).await;
            c.join_ok("rooms:x", json!({})).await;
            c.drain(Duration::from_millis(20)).await;
            subscribers.push(c);
        }
    }
    // Bus events over HTTP on n1.
    let batch: Vec<Value> = (0..5)
        .map(|i| json!({"type": "pattern_detected", "data": {"pattern_type": format!("e{i}")}}))
        .collect();
    let res = post_json(nodes[0].addr, "/api/events", &Value::Array(batch)).await;
    assert_eq!(res.status, 202, "{}", res.text());
    // A raw broadcast on n2.
    let res = post_json(
        nodes[1].addr,
        "/api/broadcast",
        &json!({"topic": "rooms:x", "event": "note", "payload": {"i": 1}}),
    )
    .await;
    assert_eq!(res.status, 202, "{}", res.text());
    // A client broadcast on n3.
    let reply = subscribers[5]
        .request(
            "rooms:x",
            "broadcast",
            json!({"event": "shout", "payload": {"i": 2}}),
        )
        .await;
    assert_eq!(reply.status, "ok", "{}", reply.response);
    // An event from any Redis client.
    redis.cmd(&[
        "PUBLISH",
        "hcx:events",
        r#"{"type": "patterns_indexed", "data": {"count": 7}}"#,
    ]);
    for (i, s) in subscribers.iter_mut().enumerate() {
        let pushes = s.drain(Duration::from_millis(500)).await;
        for e in 0..5 {
            let ty = json!(format!("e{e}"));
            assert_eq!(
                count(&pushes, "pattern_detected", "pattern_type", &ty),
                1,
                "subscriber {i}: event e{e} in {pushes:?}"
            );
        }
        assert_eq!(
            count(&pushes, "note", "i", &json!(1)),
            1,
            "subscriber {i}: {pushes:?}"
        );
        assert_eq!(
            count(&pushes, "shout", "i", &json!(2)),
            1,
            "subscriber {i}: {pushes:?}"
        );
        assert_eq!(
            count(&pushes, "pattern_indexed", "count", &json!(7)),
            1,
            "subscriber {i}: {pushes:?}"
        );
        let relevant = pushes
            .iter()
            .filter(|p| p.topic == "patterns:stream" || p.topic == "rooms:x")
            .count();
        assert_eq!(relevant, 8, "subscriber {i}: {pushes:?}");
    }
    assert!(metric(&nodes[0], "headcount_relay_messages_out_total").await >= 1.0);
    assert!(metric(&nodes[2], "headcount_relay_messages_in_total").await >= 3.0);
    let keys = redis.cmd(&["KEYS", "hcx:*"]);
    assert!(
        keys.contains("hcx:{n1}:meta") && keys.contains("hcx:nodes"),
        "{keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_on_the_redis_channels_are_counted_and_survived() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2, &["--redis-prefix", "hcbad"]).await;
    wait_subscribed(&redis, "hcbad", 2).await;
    let mut subscribers = Vec::new();
    for node in &nodes {
        let mut c = client_of(node).await;
        c.join_ok("patterns:stream", json!({})).await;
        c.drain(Duration::from_millis(20)).await;
        subscribers.push(c);
    }
    let bad = [
        ("hcbad:events", "not json"),
        ("hcbad:events", r#"{"type": "nope"}"#),
        (
            "hcbad:events",
            r#"{"type": "pattern_detected", "data": {"confidence": "high"}}"#,
        ),
        ("hcbad:events", r#"[{"type": "pattern_detected"}, 3]"#),
        ("hcbad:relay", "garbage"),
        (
            "hcbad:relay",
            r#"{"origin": "x", "deliveries": [{"topic": "patterns:stream", "event": "e", "payload": "{not json"}]}"#,
        ),
    ];
    for (channel, message) in bad {
        assert_eq!(redis.cmd(&["PUBLISH", channel, message]), "2");
    }
    redis.cmd(&[
        "PUBLISH",
        "hcbad:events",
        r#"{"type": "pattern_detected", "data": {"pattern_type": "ok"}}"#,
    ]);
    for s in &mut subscribers {
        let pushes = s.drain(Duration::from_millis(300)).await;
        assert_eq!(pushes.len(), 1, "{pushes:?}");
        assert_eq!(pushes[0].event, "pattern_detected");
        assert_eq!(pushes[0].payload["pattern_type"], "ok");
    }
    for node in &nodes {
        assert_eq!(get(node.addr, "/healthz").await.status, 200);
        assert_eq!(
            metric(node, "headcount_relay_messages_rejected_total").await,
            bad.len() as f64
        );
        assert_eq!(cluster_stats(node.addr).await["cluster_size"], 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_redis_is_down_serves_and_joins_when_redis_comes() {
    let mut redis = Redis::start();
    let url = redis.url();
    redis.kill();
    let node = start_node(&url, "early", &[]);
    let mut c = client_of(&node).await;
    c.join_ok("patterns:stream", json!({})).await;
    let v = cluster_stats(node.addr).await;
    assert_eq!(v["degraded"], true, "{v}");
    assert_eq!(v["stream_count"], 1, "{v}");
    redis.restart();
    wait_for(
        Duration::from_secs(2),
        "node registered once redis is up",
        || async {
            let v = cluster_stats(node.addr).await;
            v["degraded"] == false && v["stream_count"] == 1
        },
    )
    .await;
    // A write that was waiting for Redis may land first with older
    // figures; the next one (≤ 100 ms later) has the join.
    wait_for(Duration::from_secs(2), "figures in redis", || async {
        redis.cmd(&["HGET", "headcount:{early}:meta", "s"]) == "1"
    })
    .await;
    wait_subscribed(&redis, "headcount", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_node_name_are_reported() {
    let redis = Redis::start();
    let a = start_node(&redis.url(), "twin", &[]);
    let b = start_node(&redis.url(), "twin", &[]);
    let warning = "another process writes figures as this node";
    wait_for(
        Duration::from_secs(5),
        "a duplicate --node is logged",
        || {
            let seen = a.stderr().contains(warning) || b.stderr().contains(warning);
            async move { seen }
        },
    )
    .await;
}
