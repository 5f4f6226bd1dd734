//! `/metrics` as an operator's Prometheus reads it (issue 6, item 3): the
//! text is parsed line by line under the exposition format's rules, names
//! follow Prometheus conventions, every figure an alert needs is there, the
//! count figures equal `/api/stats` at every quiet moment, cluster gauges
//! appear only with `--redis`, and `deploy/alerts.yml` names only metrics
//! the node exports. The strict exposition-format parser is local to this
//! file; the node, HTTP and the client come from `tests/common`.

mod common;

use common::{free_port, get, stats, v2, wait_stats, Server};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const NODE: &str = "metrics@test";
const BUILTIN: [&str; 3] = ["patterns:stats", "patterns:stream", "patterns:vsm"];
/// Exported only in cluster mode.
const CLUSTER_ONLY: [&str; 3] = [
    "headcount_redis_up",
    "headcount_cluster_nodes",
    "headcount_cluster_oldest_node_age_seconds",
];

/// `headcount serve` on a free port as node `NODE`, logging warnings only.
fn start(args: &[&str]) -> Server {
    Server::builder()
        .args(["--node", NODE])
        .args(args.iter().copied())
        .env("RUST_LOG", "warn")
        .start()
}

/// `/metrics`, parsed under the exposition format's rules (common's
/// `metrics` only reads values; this one validates the text).
async fn metrics(addr: SocketAddr) -> Exposition {
    let res = get(addr, "/metrics").await;
    assert_eq!(res.status, 200);
    let body = String::from_utf8(res.body).expect("UTF-8 response");
    match Exposition::parse(&body) {
        Ok(e) => e,
        Err(why) => panic!("/metrics is not valid Prometheus text: {why}\n{body}"),
    }
}

// ---- the exposition format --------------------------------------------------

#[derive(Debug, Default)]
struct Family {
    kind: Option<String>,
    help: Option<String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

#[derive(Debug, Default)]
struct Exposition {
    families: BTreeMap<String, Family>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// `{a="x",b="y\"z"}` → map; `rest` after the closing brace.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must open with {")?;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once('=').ok_or("label without =")?;
        let name = name.trim();
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = after
            .strip_prefix('"')
            .ok_or("label value must be quoted")?
            .char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &after[1 + end + 1..];
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        }
    }
}

impl Exposition {
    fn parse(text: &str) -> Result<Exposition, String> {
        let mut e = Exposition::default();
        let mut seen = std::collections::BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let at = |why: String| format!("line {}: {why}: {line:?}", n + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                let f = e.families.entry(name.to_owned()).or_default();
                if f.help.replace(help.to_owned()).is_some() {
                    return Err(at("second HELP".into()));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| at("TYPE without kind".into()))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at(format!("unknown type {kind}")));
                }
                let f = e.families.entry(name.to_owned()).or_default();
                if !f.samples.is_empty() {
                    return Err(at("TYPE after samples".into()));
                }
                if f.kind.replace(kind.to_owned()).is_some() {
                    return Err(at("second TYPE".into()));
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| at("sample without value".into()))?;
            let name = &line[..name_end];
            if !valid_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(at)?
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let mut fields = rest.split_whitespace();
            let value = fields
                .next()
                .and_then(parse_value)
                .ok_or_else(|| at("bad value".into()))?;
            if let Some(ts) = fields.next() {
                ts.parse::<i64>().map_err(|_| at("bad timestamp".into()))?;
            }
            if fields.next().is_some() {
                return Err(at("trailing fields".into()));
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    let base = name.strip_suffix(s)?;
                    let f = e.families.get(base)?;
                    matches!(f.kind.as_deref(), Some("histogram" | "summary")).then_some(base)
                })
                .unwrap_or(name);
            let f = e
                .families
                .get_mut(family)
                .filter(|f| f.kind.is_some())
                .ok_or_else(|| at(format!("sample of {family} before its TYPE")))?;
            if !seen.insert(format!("{name}{labels:?}")) {
                return Err(at("duplicate series".into()));
            }
            f.samples.push((name.to_owned(), labels, value));
        }
        Ok(e)
    }

    fn has(&self, name: &str) -> bool {
        self.families.contains_key(name)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let f = self
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no metric {name}"));
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        f.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }
}

/// The count figures of /metrics against /api/stats, asked back to back at a
/// quiet moment.
async fn assert_metrics_equal_stats(addr: SocketAddr) {
    let s = stats(addr).await;
    let m = metrics(addr).await;
    let by_topic = s["connections_by_topic"].as_object().unwrap();
    let count = |topic: &str| -> u64 {
        by_topic
            .get(topic)
            .and_then(|per| per[NODE].as_u64())
            .unwrap_or(0)
    };
    assert_eq!(
        m.value("headcount_sockets", &[]),
        s["socket_count"].as_f64().unwrap()
    );
    assert_eq!(
        m.value("headcount_memberships", &[]),
        s["connection_count"].as_f64().unwrap()
    );
    assert_eq!(m.value("headcount_topics", &[]), by_topic.len() as f64);
    for topic in BUILTIN {
        assert_eq!(
            m.value("headcount_topic_memberships", &[("topic", topic)]),
            count(topic) as f64,
            "{topic}"
        );
    }
    assert_eq!(
        m.value(
            "headcount_topic_memberships",
            &[("topic", "patterns:stream")]
        ),
        s["stream_count"].as_f64().unwrap()
    );
    let summed: u64 = by_topic.keys().map(|t| count(t)).sum();
    assert_eq!(summed, s["connection_count"].as_u64().unwrap());
    assert_eq!(
        m.value("headcount_joins_total", &[]) - m.value("headcount_leaves_total", &[]),
        m.value("headcount_memberships", &[]),
        "joins − leaves = memberships"
    );
}

async fn quiet() {
    // Counts change before replies are sent, so a reply seen means the
    // count is in; this only lets closes (no reply) land.
    tokio::time::sleep(Duration::from_millis(150)).await;
}

// ---- tests --------------------------------------------------------------------

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_follow_naming_conventions() {
    let node = start(&["--max-connections", "50"]);
    let m = metrics(node.addr).await;
    for (name, f) in &m.families {
        assert!(
            name.starts_with("headcount_"),
            "{name} is not in headcount_*"
        );
        assert!(
            f.help.as_deref().is_some_and(|h| !h.is_empty()),
            "{name} has no HELP"
        );
        let kind = f
            .kind
            .as_deref()
            .unwrap_or_else(|| panic!("{name} has no TYPE"));
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name}: counters and only counters end in _total"
        );
        for bad in [
            "_ms",
            "_milliseconds",
            "_kb",
            "_mb",
            "_kilobytes",
            "_minutes",
        ] {
            assert!(
                !name.ends_with(bad),
                "{name}: use base units (seconds, bytes)"
            );
        }
        for (_, labels, value) in &f.samples {
            assert!(value.is_finite(), "{name} = {value}");
            for (label, v) in labels {
                match (name.as_str(), label.as_str()) {
                    ("headcount_topic_memberships" | "headcount_presence_users", "topic") => {
                        assert!(BUILTIN.contains(&v.as_str()), "topic label {v}")
                    }
                    ("headcount_webhook_deliveries_total", "outcome") => {
                        assert!(["delivered", "failed", "dropped"].contains(&v.as_str()))
                    }
                    (_, "reason") => {}
                    ("headcount_build_info", "version") => {}
                    _ => panic!("unexpected label {label} on {name}"),
                }
            }
        }
    }
    // What an operator alerts on (issue 6, item 3).
    for name in [
        "headcount_sockets",
        "headcount_sockets_limit",
        "headcount_memberships",
        "headcount_topic_memberships",
        "headcount_topics",
        "headcount_joins_total",
        "headcount_leaves_total",
        "headcount_join_rejections_total",
        "headcount_frames_rejected_total",
        "headcount_slow_consumer_closes_total",
        "headcount_idle_timeouts_total",
        "headcount_sockets_refused_total",
        "headcount_outbound_queue_high_water_messages",
        "headcount_bus_events_in_total",
        "headcount_bus_events_rejected_total",
        "headcount_bus_deliveries_total",
        "headcount_process_resident_memory_bytes",
        "headcount_process_open_fds",
        "headcount_process_max_fds",
        "headcount_start_time_seconds",
        "headcount_build_info",
    ] {
        assert!(m.has(name), "missing {name}");
    }
    for name in CLUSTER_ONLY {
        assert!(
            !m.has(name),
            "{name} is cluster-only: absent on a single node"
        );
    }
    assert_eq!(m.value("headcount_sockets_limit", &[]), 50.0);
    assert_eq!(
        m.value(
            "headcount_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(m.value("headcount_process_resident_memory_bytes", &[]) > 1e6);
    let fds = m.value("headcount_process_open_fds", &[]);
    assert!(
        fds >= 3.0 && fds <= m.value("headcount_process_max_fds", &[]),
        "{fds}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = m.value("headcount_start_time_seconds", &[]);
    assert!(
        started <= now && started > now - 600.0,
        "{started} vs {now}"
    );
    let types: Vec<&str> = m.families.keys().map(String::as_str).collect();
    let mut sorted = types.clone();
    sorted.sort();
    assert_eq!(types, sorted, "families in name order");
}

#[tokio::test]
async fn metric_figures_equal_api_stats_through_joins_leaves_and_closes() {
    let node = start(&["--allow-topic", "rooms:*"]);
    assert_metrics_equal_stats(node.addr).await;

    let mut a = v2(node.addr).await;
    a.join_ok("patterns:stream", json!({})).await;
    a.join_ok("patterns:stats", json!({})).await;
    let mut b = v2(node.addr).await;
    b.join_ok("patterns:stream", json!({})).await;
    b.join_ok("patterns:vsm", json!({})).await;
    b.join_ok("rooms:a", json!({})).await;
    let mut c = v2(node.addr).await;
    c.join_ok("rooms:b", json!({})).await;
    c.join_ok("rooms:b", json!({})).await; // a second join replaces the first
    assert_metrics_equal_stats(node.addr).await;
    let m = metrics(node.addr).await;
    assert_eq!(m.value("headcount_memberships", &[]), 6.0);
    assert_eq!(m.value("headcount_topics", &[]), 5.0);
    assert_eq!(
        m.value(
            "headcount_topic_memberships",
            &[("topic", "patterns:stream")]
        ),
        2.0
    );

    // Refusals are counted by reason.
    let refused = c.join("nope:x", json!({})).await;
    assert_eq!(refused.status, "error");
    c.send_text("this is not json").await;
    c.send_text(r#"["1","2","rooms:b"]"#).await;
    c.leave("rooms:b").await.assert_ok();
    b.leave("patterns:vsm").await.assert_ok();
    assert_metrics_equal_stats(node.addr).await;
    let m = metrics(node.addr).await;
    assert_eq!(
        m.value(
            "headcount_join_rejections_total",
            &[("reason", "unmatched_topic")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "headcount_frames_rejected_total",
            &[("reason", "malformed")]
        ),
        2.0
    );
    assert_eq!(m.value("headcount_leaves_total", &[]), 3.0);

    a.close().await;
    b.vanish(); // gone without a close frame
    c.close().await;
    wait_stats(node.addr, "sockets closed", |s| s["socket_count"] == 0).await;
    quiet().await;
    assert_metrics_equal_stats(node.addr).await;
    let m = metrics(node.addr).await;
    assert_eq!(m.value("headcount_memberships", &[]), 0.0);
    assert_eq!(m.value("headcount_topics", &[]), 0.0);
    assert_eq!(
        m.value("headcount_joins_total", &[]),
        m.value("headcount_leaves_total", &[])
    );
}

#[tokio::test]
async fn cluster_mode_exports_redis_up_and_cluster_gauges() {
    // A port nothing listens on: Redis is down, and the metric says so.
    let port = free_port();
    let node = start(&["--redis", &format!("redis://127.0.0.1:{port}")]);
    let m = metrics(node.addr).await;
    for name in CLUSTER_ONLY {
        assert!(m.has(name), "{name} in cluster mode");
    }
    assert_eq!(m.value("headcount_redis_up", &[]), 0.0);
}

#[test]
fn alert_rules_name_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/alerts.yml");
    let rules = std::fs::read_to_string(path).expect("deploy/alerts.yml");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let exported: Vec<String> = runtime.block_on(async {
        let node = start(&[]);
        metrics(node.addr).await.families.into_keys().collect()
    });
    let mut named = std::collections::BTreeSet::new();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("headcount_") {
            named.insert(word.to_owned());
        }
    }
    assert!(!named.is_empty());
    for name in &named {
        // A rule may use a histogram's or counter's family name only as exported.
        assert!(
            exported.contains(name) || CLUSTER_ONLY.contains(&name.as_str()),
            "deploy/alerts.yml uses {name}, which /metrics does not export"
        );
    }
    let alerts = rules.matches("- alert:").count();
    assert!(alerts >= 6, "{alerts} alerts");
    assert_eq!(rules.matches("expr:").count(), alerts, "one expr per alert");
    assert_eq!(
        rules.matches("severity:").count(),
        alerts,
        "one severity per alert"
    );
    for needle in [
        "headcount_redis_up",
        "headcount_cluster_nodes",
        "headcount_slow_consumer_closes_total",
        "headcount_frames_rejected_total",
        "headcount_sockets_limit",
        "headcount_process_resident_memory_bytes",
    ] {
        assert!(named.contains(needle), "an alert on {needle}");
    }
}
