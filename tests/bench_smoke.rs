//! Smoke runs of every `headcount bench` scenario at small sizes against a
//! real node, and against `bench floor-server` (a minimal Phoenix server
//! without headcount's stats): what the tool reports must be right (counts
//! exact, nothing lost, churn back to baseline, count checks skipped and
//! said so where there are no stats). Nothing here asserts speed.

mod common;

use common::NO_LIMITS;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_headcount");

/// A server process on a free port (a node or the floor server); killed
/// when dropped.
struct Node {
    child: Child,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `headcount ARGS` and reads the address from its start line
/// (`… listening on ADDR …`, the fourth word).
fn spawn_server(args: &[&str]) -> Node {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start headcount");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("start line");
    assert!(line.contains(" listening on "), "start line: {line}");
    let addr = line
        .split_whitespace()
        .nth(3)
        .expect("address in the start line")
        .to_string();
    Node { child, addr }
}

fn start_node() -> Node {
    start_node_with(&[])
}

fn start_node_with(extra: &[&str]) -> Node {
    let mut args = vec![
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--node",
        "smoke@127.0.0.1",
        "--allow-topic",
        "bench:*",
        "--client-broadcast",
    ];
    args.extend(NO_LIMITS);
    args.extend(extra);
    spawn_server(&args)
}

fn start_floor() -> Node {
    spawn_server(&["bench", "floor-server", "--bind", "127.0.0.1:0"])
}

/// A throw-away `redis-server` on a free port, no persistence.
struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Redis {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (apt-get install redis-server)");
    let redis = Redis { child, port };
    let start = Instant::now();
    loop {
        let pong = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf)?;
            Ok(buf)
        });
        if matches!(pong, Ok(b) if &b == b"+PONG\r\n") {
            return redis;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `headcount bench ARGS --json` and parses its one JSON object.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .args(["--json", "--timeout", "120"])
        .output()
        .expect("run headcount bench");
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs `headcount bench ARGS` expecting it to fail; its stderr.
fn bench_fails(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .output()
        .expect("run headcount bench");
    assert!(!out.status.success(), "bench {args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `bench SCENARIO --url URL` with flag/value pairs, one pair a line.
fn bench_at(scenario: &str, url: &str, flags: &[(&str, &str)]) -> Value {
    let mut args = vec![scenario, "--url", url];
    for (flag, value) in flags {
        args.extend([*flag, *value]);
    }
    bench(&args)
}

#[test]
fn hold_reports_exact_counts_and_rss_across_worker_processes() {
    let node = start_node();
    let pid = node.child.id().to_string();
    let r = bench_at(
        "hold",
        &node.addr,
        &[
            ("--sockets", "200"),
            ("--topics", "7"),
            ("--hold", "0.5"),
            ("--workers", "2"),
            ("--server-pid", &pid),
            ("--settle", "0"),
        ],
    );
    assert_eq!(r["open"]["opened"], 200, "{r}");
    assert_eq!(r["open"]["failed"], 0, "{r}");
    assert_eq!(r["open"]["join_latency"]["count"], 200);
    assert_eq!(r["server"]["held"]["sockets"], 200);
    assert_eq!(r["server"]["held"]["connections"], 200);
    assert_eq!(r["server"]["counts_exact"], true);
    assert_eq!(r["alive_at_end"], 200);
    assert_eq!(r["server"]["drained"], true);
    assert_eq!(r["server"]["after_close"]["sockets"], 0);
    assert!(r["rss"]["held"].as_u64().unwrap() > 0);
    assert!(r["rss"]["bytes_per_socket"].is_u64());
}

#[test]
fn fanout_over_http_and_client_broadcast_loses_nothing() {
    let node = start_node();
    let r = bench_at(
        "fanout",
        &node.addr,
        &[("--sockets", "200"), ("--messages", "20")],
    );
    assert_eq!(r["subscribers"], 200, "{r}");
    assert_eq!(r["members_seen_by_server"], 200);
    assert_eq!(r["publish_errors"], 0);
    assert_eq!(r["expected_deliveries"], 4000);
    assert_eq!(r["delivered"], 4000);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["latency"]["count"], 4000);

    let r = bench_at(
        "fanout",
        &node.addr,
        &[
            ("--sockets", "200"),
            ("--messages", "20"),
            ("--publish", "client"),
            ("--publishers", "2"),
            ("--workers", "2"),
        ],
    );
    assert_eq!(r["publish_errors"], 0, "{r}");
    assert_eq!(r["delivered"], 4000);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicates"], 0);
}

#[test]
fn query_sees_every_populated_topic() {
    let node = start_node();
    let r = bench_at(
        "query",
        &node.addr,
        &[
            ("--topics", "500"),
            ("--duration", "0.5"),
            ("--askers", "2"),
        ],
    );
    assert_eq!(r["populating_sockets"], 5, "{r}");
    // 500 generic topics plus patterns:stats.
    assert_eq!(r["topics_seen_by_server"], 501);
    assert_eq!(r["connection_count_expected"], 502);
    assert_eq!(r["counts_exact"], true, "{r}");
    assert_eq!(r["errors"], 0);
    assert!(r["answered"].as_u64().unwrap() > 0);
    let r = bench_at(
        "query",
        &node.addr,
        &[
            ("--topics", "50"),
            ("--queries", "20"),
            ("--event", "cluster"),
        ],
    );
    assert_eq!(r["answered"], 20, "{r}");
    assert_eq!(r["counts_exact"], true, "{r}");
    assert_eq!(r["rate_limited"], 0, "{r}");
    assert!(r["reply_bytes_mean"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["reply_check"]["connection_count"], 51, "{r}");
}

#[test]
fn query_passes_stats_filters_and_asks_for_occupancy() {
    let node = start_node();
    let r = bench_at(
        "query",
        &node.addr,
        &[
            ("--topics", "50"),
            ("--queries", "20"),
            ("--event", "cluster"),
            ("--limit", "5"),
            ("--prefix", "bench:1"),
        ],
    );
    assert_eq!(r["payload"]["limit"], 5, "{r}");
    assert_eq!(r["payload"]["prefix"], "bench:1", "{r}");
    assert_eq!(r["answered"], 20, "{r}");
    // Totals cover everything whatever the filters (SPEC §7.3).
    assert_eq!(r["counts_exact"], true, "{r}");
    // A node that knows the filters answers with at most 5 topics and says
    // how many it left out; one that does not yet sends the whole map.
    if r["reply_check"]["topics_omitted"].is_u64() {
        assert_eq!(r["reply_check"]["within_limit"], true, "{r}");
        assert_eq!(r["reply_check"]["prefix_held"], true, "{r}");
    }

    let r = bench_at(
        "query",
        &node.addr,
        &[
            ("--topics", "50"),
            ("--queries", "20"),
            ("--event", "occupancy"),
            ("--topics-per-query", "7"),
        ],
    );
    assert_eq!(r["event"], "get_occupancy", "{r}");
    assert_eq!(r["payload"]["topics"], 7, "{r}");
    assert_eq!(r["rate_limited"], 0, "{r}");
    let (answered, errors) = (
        r["answered"].as_u64().unwrap(),
        r["errors"].as_u64().unwrap(),
    );
    assert_eq!(answered + errors, 20, "{r}");
    // Until the node answers get_occupancy, each query is an error reply
    // that names its reason; once it does, every asked topic shows 1.
    if answered > 0 {
        assert_eq!(r["reply_check"]["all_exact"], true, "{r}");
        assert_eq!(r["reply_check"]["topics_asked"], 7, "{r}");
    } else {
        assert!(r["error_reasons"].as_object().unwrap().len() == 1, "{r}");
    }
}

#[test]
fn churn_returns_to_the_baseline() {
    let node = start_node();
    let r = bench_at(
        "churn",
        &node.addr,
        &[
            ("--cycles", "400"),
            ("--topics", "5"),
            ("--topics-per-socket", "2"),
            ("--concurrency", "16"),
            ("--abrupt-every", "3"),
        ],
    );
    assert_eq!(r["cycles"], 400, "{r}");
    assert_eq!(r["failed_cycles"], 0);
    assert_eq!(r["returned_to_baseline"], true);
    assert_eq!(r["drift"]["connections"], 0);
    assert_eq!(r["drift"]["sockets"], 0);
    assert_eq!(r["drift"]["per_topic_abs"], 0);
    // 133 abrupt cycles (connect, 2 joins, drop) and 267 clean ones
    // (connect, 2 joins, 2 leaves, close).
    assert_eq!(r["operations"], 133 * 4 + 267 * 6);
}

#[test]
fn cluster_degenerates_to_one_node() {
    let node = start_node();
    let url = format!("{0},{0}", node.addr);
    let r = bench_at("cluster", &url, &[("--rounds", "4")]);
    assert_eq!(r["nodes"][0], "smoke@127.0.0.1", "{r}");
    // Two URLs of the same node: each round joins on one, watches the other.
    assert_eq!(r["join_visible"]["count"], 4);
    assert_eq!(r["leave_visible"]["count"], 4);
    assert_eq!(r["missed"], 0);
    assert_eq!(
        r["cluster_sizes_seen"]["1"].as_u64().map(|n| n >= 8),
        Some(true)
    );
}

#[test]
fn hold_presents_signed_tokens_in_the_query_and_the_subprotocol() {
    let node = start_node_with(&["--auth-secret", "s3cret"]);
    for token_in in ["query", "protocol"] {
        let r = bench_at(
            "hold",
            &node.addr,
            &[
                ("--sockets", "50"),
                ("--topics", "3"),
                ("--hold", "0.2"),
                ("--settle", "0"),
                ("--token-secret", "s3cret"),
                ("--token-topics", "bench:*"),
                ("--token-in", token_in),
            ],
        );
        assert_eq!(r["token"]["alg"], "HS256", "{r}");
        assert_eq!(r["token"]["in"], token_in, "{r}");
        assert_eq!(r["open"]["opened"], 50, "{token_in}: {r}");
        assert_eq!(r["open"]["failed"], 0, "{token_in}: {r}");
        assert_eq!(r["server"]["counts_exact"], true, "{r}");
        assert!(r["open"]["connect_join_per_s"].as_u64().unwrap() > 0);
    }
}

#[test]
fn hold_fanout_and_churn_run_against_the_floor_server() {
    let floor = start_floor();
    let r = bench_at(
        "hold",
        &floor.addr,
        &[
            ("--sockets", "100"),
            ("--topics", "3"),
            ("--hold", "0.2"),
            ("--settle", "0"),
        ],
    );
    assert_eq!(r["open"]["opened"], 100, "{r}");
    assert_eq!(r["open"]["failed"], 0, "{r}");
    assert_eq!(r["alive_at_end"], 100, "{r}");
    // No /api/stats: the checks are skipped, and the report says so.
    assert!(r["server"]["counts_exact"].is_null(), "{r}");
    assert!(r["server"]["held"].is_null(), "{r}");
    assert!(
        r["server"]["stats"].as_str().unwrap().contains("skipped"),
        "{r}"
    );

    for (publish, publishers) in [("http", "1"), ("client", "2")] {
        let r = bench_at(
            "fanout",
            &floor.addr,
            &[
                ("--sockets", "100"),
                ("--messages", "20"),
                ("--publish", publish),
                ("--publishers", publishers),
            ],
        );
        assert_eq!(r["subscribers"], 100, "{r}");
        assert!(r["members_seen_by_server"].is_null(), "{r}");
        assert_eq!(r["publish_errors"], 0, "{publish}: {r}");
        assert_eq!(r["delivered"], 2000, "{publish}: {r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!(r["duplicates"], 0, "{r}");
    }

    let r = bench_at(
        "churn",
        &floor.addr,
        &[
            ("--cycles", "200"),
            ("--topics", "5"),
            ("--topics-per-socket", "2"),
            ("--concurrency", "16"),
            ("--abrupt-every", "3"),
        ],
    );
    assert_eq!(r["cycles"], 200, "{r}");
    assert_eq!(r["failed_cycles"], 0, "{r}");
    assert!(r["returned_to_baseline"].is_null(), "{r}");
    assert!(r["server_stats"].as_str().unwrap().contains("skipped"));
}

#[test]
fn occupancy_times_pushes_between_two_urls_of_the_floor_server() {
    // The floor server pushes occupancy uncoalesced; two URLs of it are two
    // "nodes", so every change is timed on the node that did not make it.
    let floor = start_floor();
    let redis = start_redis();
    let url = format!("{0},{0}", floor.addr);
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let r = bench_at(
        "occupancy",
        &url,
        &[
            ("--sockets", "60"),
            ("--topics", "6"),
            ("--rate", "40"),
            ("--duration", "1"),
            ("--queries", "4"),
            ("--redis", &redis_url),
        ],
    );
    assert_eq!(r["nodes"], 2, "{r}");
    assert_eq!(r["watchers"]["opened"], 60, "{r}");
    assert_eq!(r["observers"], 12, "{r}");
    assert_eq!(r["topics_watched_on_two_nodes"], 6, "{r}");
    assert_eq!(r["converged"]["ok"], true, "{r}");
    let changes = r["churn"]["changes"].as_u64().unwrap();
    assert!(changes >= 10, "{r}");
    assert_eq!(r["push_latency"]["count"], changes, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["unanswered"], 0, "{r}");
    assert_eq!(r["churn"]["tally"]["rate_limited"], 0, "{r}");
    assert_eq!(r["quiet"]["stale_observers"], 0, "{r}");
    assert!(r["pushes"]["received"].as_u64().unwrap() > 0, "{r}");
    // The floor has no /metrics (n/a) and no get_cluster_stats (errors).
    assert!(r["redis_commands"]["nodes"][0]["per_s"].is_null(), "{r}");
    assert!(r["redis_commands"]["redis_info_per_s"].is_number(), "{r}");
    assert!(r["redis_commands"]["redis_error"].is_null(), "{r}");
    assert_eq!(r["queries"]["answered"], 0, "{r}");
    assert!(
        r["queries"]["errors"]["unknown event"].as_u64().unwrap() > 0,
        "{r}"
    );
}

#[test]
fn occupancy_runs_against_a_node_and_reports_what_it_saw() {
    let node = start_node();
    let url = format!("{0},{0}", node.addr);
    let r = bench_at(
        "occupancy",
        &url,
        &[
            ("--sockets", "20"),
            ("--topics", "4"),
            ("--rate", "20"),
            ("--duration", "0.5"),
            ("--queries", "4"),
        ],
    );
    assert_eq!(r["watchers"]["opened"], 20, "{r}");
    assert_eq!(r["churn"]["tally"]["rate_limited"], 0, "{r}");
    assert!(r["churn"]["tally"]["churner_errors"]
        .as_object()
        .unwrap()
        .is_empty());
    assert_eq!(r["queries"]["rate_limited"], 0, "{r}");
    assert!(r["queries"]["answered"].as_u64().unwrap() > 0, "{r}");
    assert!(r["redis_commands"]["redis_info_per_s"].is_null(), "{r}");
    // Once the node pushes occupancy, nothing may be lost.
    if r["converged"]["pushes"].as_u64().unwrap() > 0 {
        assert_eq!(r["converged"]["ok"], true, "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!(r["quiet"]["stale_observers"], 0, "{r}");
    }
}

#[test]
fn refuses_bad_bench_arguments() {
    for (args, says) in [
        (&["floor-server", "--bind", "10.1.2.3:4000"][..], "loopback"),
        (
            &[
                "occupancy",
                "--url",
                "127.0.0.1:1",
                "--redis",
                "redis://10.0.0.1:6379",
            ][..],
            "loopback",
        ),
        (
            &[
                "occupancy",
                "--url",
                "127.0.0.1:1",
                "--redis",
                "redis://:pw@127.0.0.1:6379",
            ][..],
            "credentials",
        ),
        (
            &[
                "occupancy",
                "--url",
                "127.0.0.1:1",
                "--sockets",
                "5",
                "--topics",
                "6",
            ][..],
            "--topics",
        ),
        (
            &["query", "--url", "127.0.0.1:1", "--topics-per-query", "0"][..],
            "--topics-per-query",
        ),
        (
            &["query", "--url", "127.0.0.1:1", "--limit", "0"][..],
            "--limit",
        ),
        (&["hold"][..], "--url"),
        (
            &["webhooks", "--url", "127.0.0.1:1"][..],
            "--webhook-secret",
        ),
        (
            &[
                "webhooks",
                "--url",
                "127.0.0.1:1",
                "--webhook-secret",
                "s",
                "--receiver-bind",
                "10.0.0.1:4300",
            ][..],
            "loopback",
        ),
        (
            &[
                "webhooks",
                "--url",
                "127.0.0.1:1",
                "--webhook-secret",
                "s",
                "--topics",
                "100000",
                "--duration",
                "1",
            ][..],
            "too many topics",
        ),
        (
            &["presence", "--url", "127.0.0.1:1", "--server-pid", "1,2"][..],
            "--server-pid",
        ),
        (
            &["presence", "--url", "127.0.0.1:1", "--sockets", "0"][..],
            "--sockets",
        ),
        (
            &[
                "floor-server",
                "--bind",
                "127.0.0.1:0",
                "--webhook-url",
                "http://10.0.0.1:80/hook",
                "--webhook-secret",
                "s",
            ][..],
            "loopback",
        ),
    ] {
        let err = bench_fails(args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn refuses_addresses_off_this_machine() {
    for url in [
        "ws://10.1.2.3:4000",
        "192.168.0.1:80",
        "http://[2001:db8::1]:4000",
    ] {
        let out = Command::new(BIN)
            .args(["bench", "hold", "--url", url, "--sockets", "1"])
            .output()
            .expect("run headcount bench");
        assert!(!out.status.success(), "{url} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("loopback"), "{url}: {err}");
    }
}

/// A node with the default per-socket limits (SPEC §8.4) and `extra`:
/// `bench presence` and `bench webhooks` must stay within them.
fn start_node_default_limits(extra: &[&str]) -> Node {
    let mut args = vec![
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--node",
        "smoke@127.0.0.1",
        "--allow-topic",
        "bench:*",
    ];
    args.extend(extra);
    spawn_server(&args)
}

#[test]
fn presence_on_one_node_reports_diffs_state_propagation_and_memory() {
    let node = start_node_default_limits(&["--presence-topic", "bench:presence*"]);
    let pid = node.child.id().to_string();
    let r = bench_at(
        "presence",
        &node.addr,
        &[
            ("--sockets", "40"),
            ("--rate", "20"),
            ("--duration", "1"),
            ("--server-pid", &pid),
            ("--settle", "0"),
            ("--probes", "3"),
        ],
    );
    assert_eq!(r["members"]["opened"], 40, "{r}");
    assert_eq!(r["members"]["failed"], 0, "{r}");
    assert_eq!(r["converged"]["ok"], true, "{r}");
    // The probe sees every member and itself.
    assert_eq!(r["state"]["state_keys"], 41, "{r}");
    assert!(r["state"]["state_bytes"].as_u64().unwrap() > 41 * 20, "{r}");
    assert!(r["state"]["join_to_state_us"].as_u64().unwrap() > 0, "{r}");
    let changes = r["churn"]["changes"].as_u64().unwrap();
    assert!(changes >= 10, "{r}");
    assert_eq!(r["churn"]["tally"]["rate_limited"], 0, "{r}");
    assert!(r["churn"]["tally"]["churner_errors"]
        .as_object()
        .unwrap()
        .is_empty());
    // One node: each change is timed on it, once.
    assert_eq!(r["propagation"]["measured_on"], "the same node (one --url)");
    assert_eq!(r["propagation"]["all"]["count"], changes, "{r}");
    assert_eq!(r["propagation"]["lost"], 0, "{r}");
    assert_eq!(r["propagation"]["unanswered"], 0, "{r}");
    assert!(r["diffs"]["deliveries"].as_u64().unwrap() > 0, "{r}");
    assert!(r["cpu"]["server_us_per_delivery"].is_number(), "{r}");
    assert_eq!(r["truth"]["exact"], true, "{r}");
    assert_eq!(r["members_gone"], 0, "{r}");
    assert_eq!(r["memory"]["plain"]["members"], 40, "{r}");
    assert_eq!(r["memory"]["members_counted"], 40, "{r}");
    assert!(r["memory"]["bytes_per_presence_member"].is_i64(), "{r}");

    // Two URLs of the node: changes are timed on the "other node".
    let url = format!("{0},{0}", node.addr);
    let r = bench_at(
        "presence",
        &url,
        &[
            ("--sockets", "20"),
            ("--rate", "20"),
            ("--duration", "0.5"),
            ("--probes", "1"),
        ],
    );
    assert_eq!(r["members"]["per_node"], serde_json::json!([10, 10]), "{r}");
    assert_eq!(r["propagation"]["measured_on"], "another node", "{r}");
    assert_eq!(r["propagation"]["watched_nodes"], serde_json::json!([1]));
    assert_eq!(r["propagation"]["lost"], 0, "{r}");
    assert_eq!(r["truth"]["exact"], true, "{r}");
    assert_eq!(r["memory"]["skipped"], "no --server-pid", "{r}");
}

#[test]
fn presence_refuses_a_topic_without_presence() {
    let node = start_node();
    let err = bench_fails(&[
        "presence",
        "--url",
        &node.addr,
        "--sockets",
        "5",
        "--duration",
        "0.2",
    ]);
    assert!(err.contains("--presence-topic"), "{err}");
}

/// A body and its signature with the secret `s3cret`, computed apart from
/// the code under test (Python's hmac).
const SIGNED_BODY: &str = r#"{"time_ms":1,"events":[{"id":"smoke-1","name":"channel_occupied","channel":"smoke:elsewhere"}]}"#;
const SIGNATURE: &str = "sha256=7143538a0595e851903bb172768f1506678a78ebf9902692c0b438cf072b090d";

/// POSTs `body` to `url` (http://ADDR/PATH) with `signature`; the status.
fn post(url: &str, body: &str, signature: &str) -> u16 {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(addr).expect("receiver");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Headcount-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out[9..12].parse().unwrap()
}

/// Starts `headcount bench webhooks ARGS --json`, reads the receiver's URL
/// from its stderr, calls `during` with it, and returns the report.
fn bench_webhooks(args: &[&str], during: impl FnOnce(&str)) -> Value {
    let mut child = Command::new(BIN)
        .args(["bench", "webhooks"])
        .args(args)
        .args(["--json", "--timeout", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run headcount bench webhooks");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("the receiver line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no receiver URL in {line:?}"))
        .to_string();
    during(&url);
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().expect("bench webhooks");
    assert!(out.status.success(), "bench webhooks failed: {line}{rest}");
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

#[test]
fn webhooks_receiver_checks_signatures_and_counts_what_a_node_sends() {
    // A node without --webhook-url sends nothing: every transition is lost,
    // and the receiver still takes the test's own POSTs.
    let node = start_node_default_limits(&[]);
    let r = bench_webhooks(
        &[
            "--url",
            &node.addr,
            "--topics",
            "3",
            "--duration",
            "0.5",
            "--hold",
            "0.2",
            "--webhook-secret",
            "s3cret",
            "--webhook-vacate-delay-ms",
            "0",
            "--receiver-bind",
            "127.0.0.1:0",
        ],
        |url| {
            assert_eq!(post(url, SIGNED_BODY, SIGNATURE), 200);
            assert_eq!(post(url, SIGNED_BODY, &SIGNATURE.replace("71", "17")), 401);
        },
    );
    let t = &r["schedule"]["tally"];
    assert_eq!(
        (t["joins_ok"].as_u64(), t["leaves_ok"].as_u64()),
        (Some(3), Some(3)),
        "{r}"
    );
    assert_eq!(t["rate_limited"], 0, "{r}");
    let w = &r["webhooks"];
    assert_eq!(w["by_name"]["channel_occupied"]["expected"], 3, "{r}");
    assert_eq!(w["by_name"]["channel_vacated"]["expected"], 3, "{r}");
    assert_eq!(w["lost"], 6, "{r}");
    assert_eq!(w["exact"], false, "{r}");
    assert_eq!(w["posts"], 1, "{r}");
    assert_eq!(w["bad_signatures"], 1, "{r}");
    assert_eq!(w["foreign"]["channel_occupied"], 1, "{r}");
}

#[test]
fn webhooks_from_the_floor_server_match_every_transition() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let floor = spawn_server(&[
        "bench",
        "floor-server",
        "--bind",
        "127.0.0.1:0",
        "--webhook-url",
        &hook,
        "--webhook-secret",
        "s3cret",
        "--webhook-vacate-delay-ms",
        "200",
    ]);
    let url = format!("{0},{0}", floor.addr);
    let bind = format!("127.0.0.1:{port}");
    let r = bench_webhooks(
        &[
            "--url",
            &url,
            "--topics",
            "40",
            "--duration",
            "1",
            "--hold",
            "0.3",
            "--webhook-secret",
            "s3cret",
            "--webhook-vacate-delay-ms",
            "200",
            "--receiver-bind",
            &bind,
        ],
        |_| {},
    );
    let w = &r["webhooks"];
    assert_eq!(w["expected"], 80, "{r}");
    assert_eq!(w["exact"], true, "{r}");
    assert_eq!(w["lost"], 0, "{r}");
    assert_eq!(w["doubled"], 0, "{r}");
    assert_eq!(w["bad_signatures"], 0, "{r}");
    assert_eq!(w["latency"]["count"], 80, "{r}");
    assert_eq!(w["by_name"]["channel_vacated"]["delivered"], 40, "{r}");
}
