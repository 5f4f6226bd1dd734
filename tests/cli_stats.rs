//! `headcount stats --prefix/--limit/--topic` and the `limit` that `headcount
//! watch` asks with (SPEC §7.2, §7.3), against a fake node: a small HTTP
//! server in the test that answers canned JSON and records every request
//! target, so the query strings the CLI sends and the tables it prints are
//! checked without depending on the server side of these routes.

mod common;

use common::{bare_command, wait_exit, Output};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Answer = dyn Fn(&str, &[(String, String)]) -> (u16, String) + Send + Sync;

/// The fake node: answers each GET with what `answer(path, query pairs)`
/// returns, one request per connection, and keeps every request target.
struct FakeNode {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
}

impl FakeNode {
    async fn start(
        answer: impl Fn(&str, &[(String, String)]) -> (u16, String) + Send + Sync + 'static,
    ) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let seen = targets.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (seen, answer) = (seen.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let target = head.split(' ').nth(1).unwrap_or("").to_owned();
                    seen.lock().unwrap().push(target.clone());
                    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                        .into_owned()
                        .collect();
                    let (status, body) = answer(path, &pairs);
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        FakeNode { addr, targets }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request targets so far, emptied.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.targets.lock().unwrap())
    }
}

/// Path and decoded query pairs of a request target.
fn split(target: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let pairs = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    (path.to_owned(), pairs)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `headcount stats ARGS`, run off the runtime so the fake node can answer.
async fn stats(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = bare_command()
            .arg("stats")
            .args(&args)
            .output()
            .expect("run headcount stats");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// Whether some line of `text` has exactly these whitespace-separated words.
fn has_row(text: &str, words: &[&str]) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == words)
}

fn local_stats(topics: Value, omitted: Option<u64>) -> String {
    let mut v = json!({
        "node": "fake@h", "connection_count": 40, "stream_count": 3, "socket_count": 30,
        "connections_by_topic": topics, "timestamp": "2026-11-25T20:00:00.000Z",
    });
    if let Some(n) = omitted {
        v["topics_omitted"] = json!(n);
    }
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_and_limit_go_to_the_node_and_the_table_says_what_was_left_out() {
    let node = FakeNode::start(|path, _| match path {
        "/api/stats" => (
            200,
            local_stats(
                json!({"rooms:big": {"fake@h": 20}, "rooms:mid": {"fake@h": 9}}),
                Some(5),
            ),
        ),
        "/api/stats/cluster" => (
            200,
            json!({
                "node": "fake@h", "connection_count": 40, "stream_count": 3, "socket_count": 30,
                "connections_by_topic": {"rooms:big": {"fake@h": 12, "other@h": 8}},
                "topics_omitted": 1,
                "nodes": {
                    "fake@h": {"connection_count": 25, "stream_count": 2, "socket_count": 18, "age_ms": 0},
                    "other@h": {"connection_count": 15, "stream_count": 1, "socket_count": 12, "age_ms": 80}
                },
                "total_connections": 40, "cluster_size": 2, "source": "cluster", "degraded": false,
                "timestamp": "2026-11-25T20:00:00.000Z"
            })
            .to_string(),
        ),
        _ => (404, r#"{"error":"not found"}"#.into()),
    })
    .await;
    let url = node.url();

    let run = stats(&["--url", &url, "--prefix", "rooms:", "--limit", "2"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let targets = node.take();
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(
        split(&targets[0]),
        (
            "/api/stats".into(),
            pairs(&[("prefix", "rooms:"), ("limit", "2")])
        )
    );
    assert!(
        has_row(&run.stdout, &["rooms:big", "fake@h", "20"]),
        "{}",
        run.stdout
    );
    assert!(
        has_row(&run.stdout, &["rooms:mid", "fake@h", "9"]),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.ends_with("\n… and 5 more topics\n"),
        "{}",
        run.stdout
    );

    // A prefix that needs encoding arrives intact.
    let run = stats(&["--url", &url, "--prefix", "a b&c=d/é"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        split(&node.take()[0]),
        ("/api/stats".into(), pairs(&[("prefix", "a b&c=d/é")]))
    );

    let run = stats(&["--url", &url, "--cluster", "--limit", "1"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        split(&node.take()[0]),
        ("/api/stats/cluster".into(), pairs(&[("limit", "1")]))
    );
    assert!(
        has_row(&run.stdout, &["rooms:big", "other@h", "8"]),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("cluster      2 node(s), source cluster\n"));
    assert!(
        run.stdout.ends_with("\n… and 1 more topic\n"),
        "{}",
        run.stdout
    );

    // --json prints the node's answer as it came.
    let run = stats(&["--url", &url, "--json", "--limit", "100000"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        split(&node.take()[0]),
        ("/api/stats".into(), pairs(&[("limit", "100000")]))
    );
    let v: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(v["topics_omitted"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_filters_the_request_and_the_table_are_as_before() {
    let node = FakeNode::start(|path, query| {
        assert!(query.is_empty(), "{query:?}");
        match path {
            // A node from before bounded stats: no topics_omitted at all.
            "/api/stats" => (
                200,
                local_stats(json!({"patterns:stream": {"fake@h": 3}}), None),
            ),
            _ => (404, "{}".into()),
        }
    })
    .await;
    let run = stats(&["--url", &node.url()]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(node.take(), ["/api/stats"]);
    let expected = format!(
        "node         fake@h\nconnections  40\nstream       3\nsockets      30\n\
         at           2026-11-25T20:00:00.000Z\n\n{:<40} {:<32} {:>8}\n{:<40} {:<32} {:>8}\n",
        "TOPIC", "NODE", "COUNT", "patterns:stream", "fake@h", "3"
    );
    assert_eq!(run.stdout, expected);
}

fn occupancy_answer(topics: &[(String, String)]) -> (u16, String) {
    if topics.is_empty() {
        return (400, r#"{"error":"topic required"}"#.into());
    }
    let mut map = serde_json::Map::new();
    for (k, t) in topics {
        assert_eq!(k, "topic");
        let entry = match t.as_str() {
            "rooms:lobby" => json!({"connections": 7, "nodes": {"a@h": 3, "b@h": 4}}),
            "rooms:a&b" => json!({"connections": 2, "nodes": {"b@h": 2}}),
            _ => json!({"connections": 0, "nodes": {}}),
        };
        map.insert(t.clone(), entry);
    }
    let body = json!({"topics": map, "source": "cluster", "degraded": false,
        "timestamp": "2026-11-25T20:00:00.000Z"});
    (200, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_prints_the_occupancy_of_each_topic_per_node() {
    let node = FakeNode::start(|path, query| match path {
        "/api/occupancy" => occupancy_answer(query),
        _ => (404, r#"{"error":"not found"}"#.into()),
    })
    .await;
    let url = node.url();
    let args = [
        "--url",
        &url,
        "--topic",
        "rooms:lobby",
        "--topic",
        "rooms:a&b",
        "--topic",
        "rooms:lobby",
        "--topic",
        "rooms:empty",
    ];

    let run = stats(&args).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let targets = node.take();
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(
        split(&targets[0]),
        (
            "/api/occupancy".into(),
            pairs(&[
                ("topic", "rooms:lobby"),
                ("topic", "rooms:a&b"),
                ("topic", "rooms:empty")
            ])
        ),
        "each topic once, in the order given"
    );
    let out = &run.stdout;
    assert!(
        out.starts_with("source       cluster\nat           2026-11-25T20:00:00.000Z\n"),
        "{out}"
    );
    assert!(
        has_row(out, &["TOPIC", "CONNECTIONS", "a@h", "b@h"]),
        "{out}"
    );
    assert!(has_row(out, &["rooms:lobby", "7", "3", "4"]), "{out}");
    assert!(has_row(out, &["rooms:a&b", "2", "0", "2"]), "{out}");
    assert!(has_row(out, &["rooms:empty", "0", "0", "0"]), "{out}");
    let rows: Vec<&str> = out
        .lines()
        .skip(4)
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(rows, ["rooms:lobby", "rooms:a&b", "rooms:empty"], "{out}");

    // --json: the node's answer as it came.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let run = stats(&json_args).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    node.take();
    let v: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(v["topics"]["rooms:lobby"]["nodes"]["b@h"], 4);
    assert_eq!(v["source"], "cluster");

    // More than one query takes (100): asked in batches, shown as one.
    let many: Vec<String> = (0..150).map(|i| format!("t:{i}")).collect();
    let mut many_args = vec!["--url".to_owned(), url.clone()];
    for t in &many {
        many_args.extend(["--topic".to_owned(), t.clone()]);
    }
    let many_args: Vec<&str> = many_args.iter().map(String::as_str).collect();
    let run = stats(&many_args).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let targets = node.take();
    let sizes: Vec<usize> = targets.iter().map(|t| split(t).1.len()).collect();
    assert_eq!(sizes, [100, 50]);
    for t in &many {
        assert!(has_row(&run.stdout, &[t, "0"]), "{t} missing");
    }
    let mut many_json = many_args.clone();
    many_json.push("--json");
    let run = stats(&many_json).await;
    let v: Value = serde_json::from_str(&run.stdout).expect("merged JSON");
    assert_eq!(v["topics"].as_object().unwrap().len(), 150);
    node.take();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_occupancy_query_fails_with_the_nodes_reason() {
    let node = FakeNode::start(|_, _| (400, r#"{"error":"bad topic"}"#.into())).await;
    let run = stats(&["--url", &node.url(), "--topic", "x"]).await;
    assert_ne!(run.code, Some(0));
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("400") && run.stderr.contains("bad topic"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_exit_2_with_a_message_and_ask_nothing() {
    let node = FakeNode::start(|_, _| (200, "{}".into())).await;
    let url = node.url();
    for (args, names) in [
        (vec!["--limit", "0"], "--limit"),
        (vec!["--limit", "100001"], "--limit"),
        (vec!["--limit", "-3"], "--limit"),
        (vec!["--limit", "many"], "--limit"),
        (vec!["--cluster", "--limit", "0"], "--limit"),
        (vec!["--topic", ""], "--topic"),
        (vec!["--topic", "x", "--limit", "3"], "--limit"),
        (vec!["--topic", "x", "--prefix", "y"], "--prefix"),
    ] {
        let mut all = vec!["--url", &url];
        all.extend(&args);
        let run = stats(&all).await;
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
        assert!(run.stderr.contains(names), "{args:?}: {}", run.stderr);
    }
    assert!(node.take().is_empty(), "nothing was asked");
}

/// Runs `headcount watch ARGS` with `stdout` until `done` holds of `out`
/// (which the caller fills from the terminal, or here from the pipe), then
/// sends SIGINT and expects exit code 0.
async fn watch_until(
    args: Vec<String>,
    stdout: Stdio,
    out: Output,
    done: impl Fn(&Output) -> bool + Send + 'static,
) {
    tokio::task::spawn_blocking(move || {
        let mut child = bare_command()
            .arg("watch")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if let Some(pipe) = child.stdout.take() {
            out.gather(pipe);
        }
        out.wait_for("the figures", done);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = wait_exit(&mut child, Duration::from_secs(5)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("watch did not exit");
        });
        assert_eq!(status.code(), Some(0));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_asks_for_what_fits_and_says_how_many_more() {
    let node = FakeNode::start(|path, _| match path {
        "/api/stats" => (
            200,
            local_stats(json!({"rooms:big": {"fake@h": 20}}), Some(7)),
        ),
        _ => (404, "{}".into()),
    })
    .await;
    let args = vec![
        "--url".to_owned(),
        node.url(),
        "--interval-ms".into(),
        "100".into(),
    ];

    // Piped: no height to fit, 100 topics.
    let out = Output::default();
    watch_until(args.clone(), Stdio::piped(), out.clone(), |o| {
        o.text().contains("… and 7 more topics")
    })
    .await;
    let text = out.text();
    assert!(text.contains("rooms:big"), "{text}");
    let targets = node.take();
    assert!(!targets.is_empty());
    for t in &targets {
        assert_eq!(split(t), ("/api/stats".into(), pairs(&[("limit", "100")])));
    }

    // On a terminal of 33 rows: 33 topics.
    let (master, slave) = openpty(100, 33);
    let out = Output::default();
    out.gather(std::fs::File::from(master));
    let pty_out = Stdio::from(slave);
    watch_until(args, pty_out, out.clone(), |o| {
        o.text().contains("… and 7 more topics")
    })
    .await;
    let targets = node.take();
    assert!(!targets.is_empty());
    for t in &targets {
        assert_eq!(split(t), ("/api/stats".into(), pairs(&[("limit", "33")])));
    }
}

/// A pseudo-terminal of `cols` × `rows`: (master, slave).
fn openpty(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; the pointers are valid.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}
