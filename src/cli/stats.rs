//! `headcount stats`: asks a running node for LocalStats or ClusterStats
//! (optionally filtered by topic prefix and bounded to the largest topics,
//! SPEC §7.3) or for the occupancy of named topics (§7.2), and prints them
//! as a table, or as the JSON the node sent.

use super::fetch;
use clap::builder::NonEmptyStringValueParser;
use clap::Args;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;

/// The largest `limit` a stats query takes (SPEC §7.3).
pub const MAX_LIMIT: u32 = 100_000;

/// The most topics one occupancy query takes (SPEC §7.2); more are asked
/// in several queries and the answers merged.
pub const OCCUPANCY_BATCH: usize = 100;

#[derive(Args, Debug, Clone)]
pub struct StatsArgs {
    /// Base URL of the node.
    #[arg(long, default_value = "http://127.0.0.1:4000", env = "HEADCOUNT_URL")]
    pub url: String,
    /// Ask for cluster-wide figures.
    #[arg(long)]
    pub cluster: bool,
    /// Print the JSON as received.
    #[arg(long)]
    pub json: bool,
    /// Print the occupancy of this topic instead (repeatable): its
    /// connections cluster-wide and on each node, from /api/occupancy
    /// (cluster-wide with or without --cluster).
    #[arg(long = "topic", value_name = "TOPIC",
          value_parser = NonEmptyStringValueParser::new(),
          conflicts_with_all = ["prefix", "limit"])]
    pub topics: Vec<String>,
    /// Only topics whose name starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// At most this many topics, the largest (1..=100000); the table then
    /// says how many were left out.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LIMIT)))]
    pub limit: Option<u32>,
}

/// The URL of `/api/stats` (or `/api/stats/cluster`) under `base`, with the
/// `prefix` and `limit` filters as query parameters when given.
pub fn stats_url(base: &str, cluster: bool, prefix: Option<&str>, limit: Option<u32>) -> String {
    let path = if cluster {
        "/api/stats/cluster"
    } else {
        "/api/stats"
    };
    let mut url = format!("{}{path}", base.trim_end_matches('/'));
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(prefix) = prefix {
        query.append_pair("prefix", prefix);
    }
    if let Some(limit) = limit {
        query.append_pair("limit", &limit.to_string());
    }
    let query = query.finish();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    url
}

/// The URL of `/api/occupancy` under `base` for `topics`.
pub fn occupancy_url(base: &str, topics: &[String]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for topic in topics {
        query.append_pair("topic", topic);
    }
    format!(
        "{}/api/occupancy?{}",
        base.trim_end_matches('/'),
        query.finish()
    )
}

fn parse(url: &str, body: &str) -> Result<Value, fetch::FetchError> {
    serde_json::from_str(body)
        .map_err(|e| fetch::FetchError::Status(url.to_owned(), 200, format!("not JSON: {e}")))
}

pub async fn run(args: &StatsArgs) -> Result<String, fetch::FetchError> {
    if !args.topics.is_empty() {
        return occupancy(args).await;
    }
    let url = stats_url(&args.url, args.cluster, args.prefix.as_deref(), args.limit);
    let body = fetch::get(&url).await?;
    if args.json {
        return Ok(body);
    }
    Ok(table(&parse(&url, &body)?))
}

/// `--topic`: one query per 100 topics (each named once, in the order
/// given); a single answer is printed as received with `--json`, several
/// are merged into one of the same shape.
async fn occupancy(args: &StatsArgs) -> Result<String, fetch::FetchError> {
    let mut seen = HashSet::new();
    let topics: Vec<String> = args
        .topics
        .iter()
        .filter(|t| seen.insert(t.as_str()))
        .cloned()
        .collect();
    let mut answers = Vec::new();
    for batch in topics.chunks(OCCUPANCY_BATCH) {
        let url = occupancy_url(&args.url, batch);
        let body = fetch::get(&url).await?;
        if args.json && topics.len() <= OCCUPANCY_BATCH {
            return Ok(body);
        }
        answers.push(parse(&url, &body)?);
    }
    let merged = merge_occupancy(answers);
    if args.json {
        return Ok(merged.to_string());
    }
    Ok(occupancy_table(&merged, &topics))
}

/// Several occupancy answers as one: every topic, degraded if any was
/// (with its source and error), the newest timestamp.
fn merge_occupancy(answers: Vec<Value>) -> Value {
    let mut answers = answers.into_iter();
    let Some(mut merged) = answers.next() else {
        return Value::Null;
    };
    for answer in answers {
        if let (Some(Value::Object(all)), Some(Value::Object(more))) =
            (merged.get_mut("topics"), answer.get("topics"))
        {
            all.extend(more.clone());
        }
        let degraded = |v: &Value| v.get("degraded").and_then(Value::as_bool) == Some(true);
        if degraded(&answer) && !degraded(&merged) {
            for key in ["degraded", "source", "error"] {
                if let Some(v) = answer.get(key) {
                    merged[key] = v.clone();
                }
            }
        }
        if let Some(t) = answer.get("timestamp") {
            merged["timestamp"] = t.clone();
        }
    }
    merged
}

fn num(v: &Value, key: &str) -> String {
    v.get(key).map_or_else(|| "-".into(), |n| n.to_string())
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("-").to_owned()
}

fn degraded_note(v: &Value) -> String {
    if v.get("degraded").and_then(Value::as_bool).unwrap_or(false) {
        format!(", DEGRADED: {}", text(v, "error"))
    } else {
        String::new()
    }
}

/// "… and 3 more topics" when an answer left topics out (`topics_omitted`).
fn omitted_line(v: &Value) -> Option<String> {
    match v.get("topics_omitted").and_then(Value::as_u64) {
        Some(1) => Some("… and 1 more topic".into()),
        Some(n) if n > 1 => Some(format!("… and {n} more topics")),
        _ => None,
    }
}

/// Renders LocalStats or ClusterStats for a terminal.
pub fn table(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node         {}", text(v, "node"));
    if v.get("cluster_size").is_some() {
        let _ = writeln!(
            out,
            "cluster      {} node(s), source {}{}",
            num(v, "cluster_size"),
            text(v, "source"),
            degraded_note(v)
        );
    }
    let _ = writeln!(out, "connections  {}", num(v, "connection_count"));
    let _ = writeln!(out, "stream       {}", num(v, "stream_count"));
    let _ = writeln!(out, "sockets      {}", num(v, "socket_count"));
    let _ = writeln!(out, "at           {}", text(v, "timestamp"));
    if let Some(Value::Object(nodes)) = v.get("nodes") {
        let _ = writeln!(
            out,
            "\n{:<32} {:>12} {:>8} {:>8} {:>8}",
            "NODE", "CONNECTIONS", "STREAM", "SOCKETS", "AGE_MS"
        );
        for (name, n) in nodes {
            let _ = writeln!(
                out,
                "{:<32} {:>12} {:>8} {:>8} {:>8}",
                name,
                num(n, "connection_count"),
                num(n, "stream_count"),
                num(n, "socket_count"),
                num(n, "age_ms")
            );
        }
    }
    let _ = writeln!(out, "\n{:<40} {:<32} {:>8}", "TOPIC", "NODE", "COUNT");
    match v.get("connections_by_topic") {
        Some(Value::Object(topics)) if !topics.is_empty() => {
            for (topic, per_node) in topics {
                if let Value::Object(per_node) = per_node {
                    for (node, n) in per_node {
                        // Value's Display ignores width: pad its text.
                        let n = n.to_string();
                        let _ = writeln!(out, "{topic:<40} {node:<32} {n:>8}");
                    }
                }
            }
        }
        _ => {
            let _ = writeln!(out, "(no memberships)");
        }
    }
    if let Some(line) = omitted_line(v) {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// Renders an occupancy answer for a terminal: one row per topic in the
/// order asked, its connections cluster-wide (and distinct users, when the
/// node reports them), then one column per node.
pub fn occupancy_table(v: &Value, asked: &[String]) -> String {
    let empty = Map::new();
    let topics = v.get("topics").and_then(Value::as_object).unwrap_or(&empty);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "source       {}{}",
        text(v, "source"),
        degraded_note(v)
    );
    let _ = writeln!(out, "at           {}", text(v, "timestamp"));
    let nodes: BTreeSet<&str> = topics
        .values()
        .filter_map(|t| t.get("nodes").and_then(Value::as_object))
        .flat_map(|n| n.keys().map(String::as_str))
        .collect();
    let users = topics.values().any(|t| t.get("users").is_some());
    // Topics in the order asked, then any the node added on its own.
    let mut order: Vec<&str> = asked.iter().map(String::as_str).collect();
    order.extend(
        topics
            .keys()
            .map(String::as_str)
            .filter(|t| !asked.iter().any(|a| a == t)),
    );
    let mut head = format!("\n{:<40} {:>12}", "TOPIC", "CONNECTIONS");
    if users {
        let _ = write!(head, " {:>8}", "USERS");
    }
    for node in &nodes {
        let _ = write!(head, "  {node:>8}");
    }
    let _ = writeln!(out, "{head}");
    for topic in order {
        let entry = topics.get(topic).unwrap_or(&Value::Null);
        let mut row = format!("{topic:<40} {:>12}", num(entry, "connections"));
        if users {
            let _ = write!(row, " {:>8}", num(entry, "users"));
        }
        for node in &nodes {
            let n = entry
                .get("nodes")
                .and_then(|n| n.get(*node))
                .map_or_else(|| "0".to_owned(), Value::to_string);
            let _ = write!(row, "  {n:>width$}", width = node.len().max(8));
        }
        let _ = writeln!(out, "{row}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_carry_the_filters_encoded() {
        assert_eq!(
            stats_url("http://h:1/", false, None, None),
            "http://h:1/api/stats"
        );
        assert_eq!(
            stats_url("http://h:1", true, Some("rooms:a b&c"), Some(7)),
            "http://h:1/api/stats/cluster?prefix=rooms%3Aa+b%26c&limit=7"
        );
        assert_eq!(
            occupancy_url("http://h:1", &["a:1".into(), "b=2".into()]),
            "http://h:1/api/occupancy?topic=a%3A1&topic=b%3D2"
        );
    }

    #[test]
    fn table_says_how_many_topics_were_left_out() {
        let v = json!({"node": "a", "connection_count": 9, "stream_count": 0, "socket_count": 9,
            "connections_by_topic": {"t": {"a": 5}}, "topics_omitted": 4, "timestamp": "x"});
        let t = table(&v);
        let tail: Vec<&str> = t.lines().rev().take(2).collect();
        assert_eq!(
            tail,
            [
                "… and 4 more topics",
                &format!("{:<40} {:<32} {:>8}", "t", "a", "5")
            ]
        );
        let one = json!({"connections_by_topic": {}, "topics_omitted": 1});
        assert!(table(&one).ends_with("(no memberships)\n… and 1 more topic\n"));
        let none = json!({"connections_by_topic": {"t": {"a": 5}}, "topics_omitted": 0});
        assert!(!table(&none).contains("more topic"));
    }

    #[test]
    fn occupancy_table_has_a_column_per_node() {
        let v = json!({"topics": {
            "rooms:b": {"connections": 3, "nodes": {"a@h": 1, "long-node-name@h": 2}},
            "rooms:a": {"connections": 0, "nodes": {}}},
            "source": "cluster", "degraded": false, "timestamp": "x"});
        let t = occupancy_table(&v, &["rooms:b".into(), "rooms:a".into()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "source       cluster");
        assert_eq!(
            lines[3],
            format!(
                "{:<40} {:>12}  {:>8}  {}",
                "TOPIC", "CONNECTIONS", "a@h", "long-node-name@h"
            )
        );
        assert_eq!(
            lines[4].split_whitespace().collect::<Vec<_>>(),
            ["rooms:b", "3", "1", "2"]
        );
        assert_eq!(
            lines[5].split_whitespace().collect::<Vec<_>>(),
            ["rooms:a", "0", "0", "0"]
        );
        let users = json!({"topics": {"p": {"connections": 3, "users": 2, "nodes": {"a": 3}}},
            "source": "local", "degraded": true, "error": "redis down"});
        let t = occupancy_table(&users, &["p".into()]);
        assert!(
            t.starts_with("source       local, DEGRADED: redis down\n"),
            "{t}"
        );
        assert!(t.contains(" USERS "), "{t}");
        assert_eq!(
            t.lines()
                .last()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["p", "3", "2", "3"]
        );
    }

    #[test]
    fn occupancy_answers_merge() {
        let a = json!({"topics": {"x": {"connections": 1, "nodes": {"n": 1}}},
            "source": "cluster", "degraded": false, "timestamp": "1"});
        let b = json!({"topics": {"y": {"connections": 2, "nodes": {"n": 2}}},
            "source": "local", "degraded": true, "error": "e", "timestamp": "2"});
        let m = merge_occupancy(vec![a, b]);
        assert_eq!(m["topics"]["x"]["connections"], 1);
        assert_eq!(m["topics"]["y"]["connections"], 2);
        assert_eq!(m["degraded"], true);
        assert_eq!(m["source"], "local");
        assert_eq!(m["error"], "e");
        assert_eq!(m["timestamp"], "2");
    }
}
