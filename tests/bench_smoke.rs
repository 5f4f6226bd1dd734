//! Smoke runs of every `headcount bench` scenario at small sizes against a
//! real node: what the tool reports must be right (counts exact, nothing
//! lost, churn back to baseline). Nothing here asserts speed.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_headcount");

/// A node on a free port; killed when dropped.
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

fn start_node() -> Node {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--node",
            "smoke@127.0.0.1",
            "--allow-topic",
            "bench:*",
            "--client-broadcast",
            // A load generator sends far more per socket than a client.
            "--max-messages-per-second",
            "1000000",
            "--max-messages-burst",
            "1000000",
            "--max-joins-per-second",
            "1000000",
            "--max-joins-burst",
            "1000000",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start headcount serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("start line");
    let addr = line
        .split_whitespace()
        .nth(3)
        .expect("address in the start line")
        .to_string();
    Node { child, addr }
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
