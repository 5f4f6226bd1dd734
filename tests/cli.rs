//! The binary's command line (SPEC §1): the start line, defaults, every
//! `serve` setting as a flag, a `HEADCOUNT_*` variable and a TOML key with
//! flag > env > file > default, refusal of bad settings (exit 2, one line
//! naming the setting), every default in `serve --help`, and `headcount
//! stats` as a table or JSON. Settings the node does not act on yet are
//! seen through what they refuse.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A config file, removed when the value drops.
fn temp_file(name: &str, contents: &str) -> tempfile::TempPath {
    let mut file = tempfile::Builder::new().suffix(name).tempfile().unwrap();
    std::io::Write::write_all(&mut file, contents.as_bytes()).unwrap();
    file.into_temp_path()
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    assert_eq!(rc, 0);
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[tokio::test]
async fn start_line_prints_the_real_address_and_the_node() {
    let server = Server::start(&["--node", "alpha@test"]);
    assert!(
        server
            .start_line
            .starts_with("headcount listening on 127.0.0.1:"),
        "{}",
        server.start_line
    );
    assert_ne!(server.addr.port(), 0, "port 0 is replaced by the real port");
    assert_eq!(server.node, "alpha@test");
    assert_eq!(
        server.start_line,
        format!("headcount listening on {} node alpha@test", server.addr)
    );
    // The printed address is where it serves.
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
    assert_eq!(stats(server.addr).await["node"], "alpha@test");
}

#[tokio::test]
async fn default_node_is_headcount_at_the_hostname() {
    let server = Server::start(&[]);
    assert_eq!(server.node, format!("headcount@{}", hostname()));
    assert_eq!(stats(server.addr).await["node"], server.node.as_str());
}

/// Without `--bind` the node listens on 127.0.0.1:4000; if something else
/// holds that port here, the refusal names the address instead.
#[test]
fn default_bind_is_127_0_0_1_port_4000() {
    match Server::builder().no_bind().spawn() {
        Ok(server) => {
            assert_eq!(server.addr.to_string(), "127.0.0.1:4000");
            drop(server);
        }
        Err(e) => assert!(
            e.contains("127.0.0.1:4000"),
            "neither served nor named the default address: {e}"
        ),
    }
}

/// What the probe expects a node to have been configured with.
struct Expect {
    node: &'static str,
    max_channels: usize,
    api_key: &'static str,
    max_frame_bytes: usize,
    idle_timeout_ms: u64,
    max_connections: usize,
    json_logs: bool,
}

/// Checks, over the wire, every setting a single node lets one observe.
async fn probe(server: &Server, e: &Expect) {
    let addr = server.addr;
    assert_eq!(server.node, e.node, "node");
    // --allow-topic rooms:* and --max-channels-per-socket.
    let mut c = v2(addr).await;
    for i in 0..e.max_channels {
        c.join_ok(&format!("rooms:{i}"), json!({})).await;
    }
    let r = c.join("rooms:over", json!({})).await;
    assert_eq!(
        r.assert_error(),
        &json!({"reason": "too many channels joined"}),
        "max channels {}",
        e.max_channels
    );
    // --client-broadcast.
    c.request(
        "rooms:0",
        "broadcast",
        json!({"event": "hi", "payload": {}}),
    )
    .await
    .assert_ok();
    c.expect_event("rooms:0", "hi").await;
    // --api-key.
    let body = json!({"topic": "rooms:0", "event": "k", "payload": {}}).to_string();
    let res = post(addr, "/api/broadcast", &[], body.as_bytes()).await;
    assert_eq!(res.status, 401, "api key required");
    let auth = format!("Bearer {}", e.api_key);
    let res = post(
        addr,
        "/api/broadcast",
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 202, "api key {}", e.api_key);
    // --stats-interval-ms (100 here): three periodic updates come quickly.
    let start = Instant::now();
    let mut s = v1(addr).await;
    s.join_ok(STATS, json!({})).await;
    for _ in 0..4 {
        s.expect_event(STATS, "stats_update").await;
    }
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "stats_update not every 100 ms: {:?}",
        start.elapsed()
    );
    // The idle timeout is short: done with these two.
    c.close().await;
    s.close().await;
    // --max-frame-bytes.
    let mut big = v2(addr).await;
    big.send_text(&format!(
        r#"[null,"1","phoenix","heartbeat",{{"pad":"{}"}}]"#,
        "x".repeat(e.max_frame_bytes)
    ))
    .await;
    assert!(matches!(big.expect_closed().await, Closed::Frame(1009, _)));
    // --idle-timeout-ms: a silent socket is closed.
    let mut silent = v2(addr).await;
    let t = Instant::now();
    assert_ne!(silent.expect_closed().await, Closed::NoFrame);
    assert!(t.elapsed() >= Duration::from_millis(e.idle_timeout_ms - 50));
    // --max-connections (opened well within the idle timeout).
    wait_stats(addr, "probe sockets closed", |st| st["socket_count"] == 0).await;
    let mut more = Vec::new();
    for _ in 0..e.max_connections {
        more.push(v2(addr).await);
    }
    let err = try_connect(addr, "vsn=2.0.0", ConnectOpts::default())
        .await
        .err()
        .expect("over max connections");
    assert_eq!(refusal_status(&err), Some(503), "{err}");
    // --log-format.
    let log = server.stderr();
    let first = log.lines().next().unwrap_or_else(|| panic!("no log lines"));
    let is_json = serde_json::from_str::<Value>(first).is_ok_and(|v| v.is_object());
    assert_eq!(is_json, e.json_logs, "log line {first:?}");
}

/// Every setting as a TOML key, an env variable and a flag; each form
/// alone takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_setting_works_as_a_flag_an_env_variable_and_a_toml_key() {
    let settings: [(&str, &str, &str); 13] = [
        ("node", "probe@x", "\"probe@x\""),
        ("redis-prefix", "pfx", "\"pfx\""),
        ("node-ttl-ms", "2500", "2500"),
        ("stats-interval-ms", "100", "100"),
        ("idle-timeout-ms", "400", "400"),
        ("max-connections", "5", "5"),
        ("max-channels-per-socket", "3", "3"),
        ("max-frame-bytes", "2048", "2048"),
        ("outbound-queue", "64", "64"),
        ("allow-topic", "rooms:*", "[\"rooms:*\"]"),
        ("client-broadcast", "true", "true"),
        ("api-key", "k3y", "\"k3y\""),
        ("log-format", "json", "\"json\""),
    ];
    let expect = Expect {
        node: "probe@x",
        max_channels: 3,
        api_key: "k3y",
        max_frame_bytes: 2048,
        idle_timeout_ms: 400,
        max_connections: 5,
        json_logs: true,
    };
    // Flags.
    let mut b = Server::builder();
    for (flag, value, _) in settings {
        b = b.arg(format!("--{flag}")).arg(value);
    }
    probe(&b.start(), &expect).await;
    // Environment.
    let mut b = Server::builder();
    for (flag, value, _) in settings {
        b = b.env(
            format!("HEADCOUNT_{}", flag.to_uppercase().replace('-', "_")),
            value,
        );
    }
    probe(&b.start(), &expect).await;
    // TOML.
    let toml: String = settings
        .iter()
        .map(|(flag, _, t)| format!("{} = {t}\n", flag.replace('-', "_")))
        .collect();
    let path = temp_file("all.toml", &toml);
    let server = Server::builder()
        .arg("--config")
        .arg(path.to_str().unwrap())
        .start();
    probe(&server, &expect).await;
}

/// Joins `rooms:0..` until refused; returns how many were allowed.
async fn channels_allowed(server: &Server) -> usize {
    let mut c = v2(server.addr).await;
    for i in 0..200 {
        let reply = c.join(&format!("rooms:{i}"), json!({})).await;
        if reply.status != "ok" {
            assert_eq!(
                reply.response,
                json!({"reason": "too many channels joined"}),
                "join {i}"
            );
            return i;
        }
    }
    panic!("no channel limit");
}

async fn api_key_in_force(server: &Server, key: &str) -> bool {
    let body = json!({"topic": "rooms:0", "event": "k"}).to_string();
    let auth = format!("Bearer {key}");
    post(
        server.addr,
        "/api/broadcast",
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .await
    .status
        == 202
}

#[tokio::test]
async fn flag_beats_env_beats_file_beats_default() {
    let file = temp_file(
        "prec.toml",
        "bind = \"127.0.0.3:0\"\nnode = \"file@x\"\nmax_channels_per_socket = 3\nallow_topic = [\"rooms:*\"]\napi_key = \"filekey\"\n",
    );
    let config = file.to_str().unwrap();

    // File over defaults.
    let s = Server::builder()
        .no_bind()
        .args(["--config", config])
        .start();
    assert_eq!(s.addr.ip().to_string(), "127.0.0.3");
    assert_eq!(s.node, "file@x");
    assert_eq!(channels_allowed(&s).await, 3);
    assert!(api_key_in_force(&s, "filekey").await);
    drop(s);

    // Env over file (the file itself named by HEADCOUNT_CONFIG).
    let env = |b: ServerBuilder| {
        b.env("HEADCOUNT_CONFIG", config)
            .env("HEADCOUNT_BIND", "127.0.0.2:0")
            .env("HEADCOUNT_NODE", "env@x")
            .env("HEADCOUNT_MAX_CHANNELS_PER_SOCKET", "2")
            .env("HEADCOUNT_API_KEY", "envkey")
    };
    let s = env(Server::builder().no_bind()).start();
    assert_eq!(s.addr.ip().to_string(), "127.0.0.2");
    assert_eq!(s.node, "env@x");
    assert_eq!(channels_allowed(&s).await, 2);
    assert!(api_key_in_force(&s, "envkey").await);
    assert!(!api_key_in_force(&s, "filekey").await);
    drop(s);

    // Flags over env and file.
    let s = env(Server::builder())
        .args([
            "--node",
            "flag@x",
            "--max-channels-per-socket",
            "1",
            "--api-key",
            "flagkey",
        ])
        .start();
    assert_eq!(s.addr.ip().to_string(), "127.0.0.1");
    assert_eq!(s.node, "flag@x");
    assert_eq!(channels_allowed(&s).await, 1);
    assert!(api_key_in_force(&s, "flagkey").await);
    assert!(!api_key_in_force(&s, "envkey").await);
    drop(s);

    // Defaults: 100 channels per socket, no API key. (Joins are let through
    // faster than the default 50 at once, 20 a second, to reach the 101st.)
    let s = Server::start(&["--allow-topic", "rooms:*", "--max-joins-burst", "200"]);
    assert_eq!(channels_allowed(&s).await, 100);
    let res = post_json(
        s.addr,
        "/api/broadcast",
        &json!({"topic": "rooms:0", "event": "open"}),
    )
    .await;
    assert_eq!(res.status, 202, "no API key by default");
}

#[tokio::test]
async fn allow_topic_env_takes_a_comma_list() {
    let s = Server::builder()
        .env("HEADCOUNT_ALLOW_TOPIC", "rooms:*,games:*")
        .start();
    let mut c = v2(s.addr).await;
    c.join_ok("rooms:1", json!({})).await;
    c.join_ok("games:1", json!({})).await;
    c.join("other:1", json!({})).await.assert_error();
}

#[test]
fn bad_settings_are_refused_with_a_message() {
    let unknown_key = temp_file("unknown.toml", "no_such_setting = 1\n");
    let bad_syntax = temp_file("syntax.toml", "node = \n");
    let wrong_type = temp_file("type.toml", "idle_timeout_ms = \"soon\"\n");
    // Exit 2 for all of them, as clap does for a bad flag, except an
    // address that only fails when the node binds it.
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--config".into(), unknown_key.display().to_string()],
            "no_such_setting",
        ),
        (
            vec!["--config".into(), bad_syntax.display().to_string()],
            "syntax.toml",
        ),
        (
            vec!["--config".into(), wrong_type.display().to_string()],
            "idle_timeout_ms",
        ),
        (
            vec!["--config".into(), "/nonexistent/headcount.toml".into()],
            "/nonexistent/headcount.toml",
        ),
        (vec!["--log-format".into(), "xml".into()], "xml"),
        (
            vec!["--idle-timeout-ms".into(), "0".into()],
            "idle-timeout-ms",
        ),
        (vec!["--idle-timeout-ms".into(), "soon".into()], "soon"),
        (
            vec!["--outbound-queue".into(), "0".into()],
            "outbound-queue",
        ),
        (vec!["--redis".into(), "http://x".into()], "redis"),
        (
            vec!["--bind".into(), "not an address".into()],
            "not an address",
        ),
        (vec!["--no-such-flag".into()], "--no-such-flag"),
        (vec!["--max-topics".into(), "0".into()], "--max-topics"),
        (
            vec!["--webhook-url".into(), "ftp://hooks".into()],
            "--webhook-url",
        ),
        (vec!["--auth".into(), "sometimes".into()], "sometimes"),
    ];
    for (args, named) in cases {
        let out = command()
            .arg("serve")
            .args(&args)
            .output()
            .expect("run headcount");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        if named != "not an address" {
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        }
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed a start line: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(named),
            "{args:?}: stderr names {named:?}: {stderr}"
        );
    }
}

/// `headcount serve` with these arguments and variables, expected to refuse
/// to start: its stderr, after checking it exited 2 with one line.
fn refused(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut cmd = command();
    cmd.arg("serve").args(["--bind", "127.0.0.1:0"]).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run headcount");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?} {envs:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} {envs:?} started");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
}

/// Settings the node does not act on yet are still read from each source
/// in order and checked: seen here through what each refuses.
#[test]
fn new_settings_are_read_in_order_and_checked() {
    // `--auth` without a key to check tokens with.
    for mode in ["optional", "required"] {
        let e = refused(&["--auth", mode], &[]);
        assert!(e.contains("--auth:") && e.contains(mode), "{e}");
        let e = refused(&[], &[("HEADCOUNT_AUTH", mode)]);
        assert!(e.contains("--auth:"), "{e}");
    }
    let e = refused(
        &["--auth-secret", "s", "--auth-public-key", "/etc/hostname"],
        &[],
    );
    assert!(e.contains("--auth-public-key:"), "both given: {e}");
    // HEADCOUNT_MAX_TOPICS is read, beats the file and loses to the flag.
    let file = temp_file("topics.toml", "max_topics = 0\n");
    let config = file.to_str().unwrap();
    let e = refused(&[], &[("HEADCOUNT_MAX_TOPICS", "0")]);
    assert!(e.contains("--max-topics:"), "{e}");
    let e = refused(&["--config", config], &[]);
    assert!(e.contains("--max-topics:"), "{e}");
    drop(
        Server::builder()
            .args(["--config", config])
            .env("HEADCOUNT_MAX_TOPICS", "5")
            .start(),
    );
    let e = refused(&["--max-topics", "0"], &[("HEADCOUNT_MAX_TOPICS", "5")]);
    assert!(e.contains("--max-topics:"), "{e}");
    // A reachable address with no API key: both ways out are named.
    let mut cmd = command();
    let out = cmd
        .args(["serve", "--bind", "0.0.0.0:0"])
        .output()
        .expect("run headcount");
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.contains("--api-key") && e.contains("--insecure-api"),
        "{e}"
    );
    let s = Server::builder()
        .no_bind()
        .args(["--bind", "0.0.0.0:0"])
        .env("HEADCOUNT_INSECURE_API", "true")
        .start();
    assert!(s.start_line.starts_with("headcount listening on 0.0.0.0:"));
}

#[test]
fn serve_help_lists_every_setting_with_its_default() {
    let out = command().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, default) in [
        ("--idle-timeout-ms", "60000"),
        ("--max-topics", "100000"),
        ("--stats-topic-limit", "100"),
        ("--occupancy-interval-ms", "250"),
        ("--max-joins-per-second", "20"),
        ("--max-messages-burst", "200"),
        ("--max-connections-per-ip", "0"),
        ("--outbound-queue-bytes", "4194304"),
        ("--presence-max-members", "10000"),
        ("--webhook-vacate-delay-ms", "3000"),
        ("--public-topic", "none"),
        ("--insecure-api", "off"),
    ] {
        let at = help
            .find(&format!("{flag} "))
            .unwrap_or_else(|| panic!("{flag} missing:\n{help}"));
        let entry = &help[at..];
        let entry = &entry[..entry[2..].find("\n      --").map_or(entry.len(), |e| e + 2)];
        assert!(
            entry.contains(&format!("[default: {default}]")),
            "{flag}: {entry}"
        );
    }
}

fn run_stats(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = command();
    cmd.arg("stats").args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run headcount stats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_subcommand_prints_a_table_or_json() {
    let server = Server::start(&["--node", "tab@host", "--allow-topic", "rooms:*"]);
    let mut a = v1(server.addr).await;
    a.join_ok(STREAM, json!({})).await;
    a.join_ok("rooms:lobby", json!({})).await;
    let mut b = v2(server.addr).await;
    b.join_ok(STREAM, json!({})).await;
    let _idle = v2(server.addr).await;
    wait_stats(server.addr, "3 sockets", |s| s["socket_count"] == 3).await;
    let url = server.http_url();

    // Table.
    let out = run_stats(&["--url", &url], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("tab@host"), "{table}");
    let line_with = |words: &[&str]| {
        table
            .lines()
            .any(|l| words.iter().all(|w| l.split_whitespace().any(|t| t == *w)))
    };
    assert!(line_with(&["connections", "3"]), "{table}");
    assert!(line_with(&["stream", "2"]), "{table}");
    assert!(line_with(&["sockets", "3"]), "{table}");
    assert!(line_with(&[STREAM, "tab@host", "2"]), "{table}");
    assert!(line_with(&["rooms:lobby", "tab@host", "1"]), "{table}");
    assert!(
        serde_json::from_str::<Value>(&table).is_err(),
        "a table, not JSON"
    );

    // JSON.
    let out = run_stats(&["--url", &url, "--json"], &[]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_local_stats(&v, "tab@host");
    assert_eq!(v["connection_count"], 3);
    assert_eq!(v["socket_count"], 3);
    assert_eq!(topic_count(&v, STREAM), 2);

    // Cluster, table and JSON; the URL from HEADCOUNT_URL.
    let out = run_stats(&["--cluster"], &[("HEADCOUNT_URL", &url)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("tab@host"), "{table}");
    assert!(table.contains("cluster"), "{table}");
    assert!(table.contains("local"), "source shown: {table}");
    let out = run_stats(&["--url", &url, "--cluster", "--json"], &[]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["cluster_size"], 1);
    assert_eq!(v["source"], "local");
    assert_eq!(v["connection_count"], 3);
    assert_eq!(v["nodes"]["tab@host"]["socket_count"], 3);
}

#[test]
fn stats_subcommand_fails_cleanly_when_no_node_answers() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = run_stats(&["--url", &url], &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&url), "{stderr}");
    let out = run_stats(&["--url", "not a url"], &[]);
    assert!(!out.status.success());
}
