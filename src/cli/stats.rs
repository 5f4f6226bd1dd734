//! `headcount stats`: asks a running node for LocalStats or ClusterStats and
//! prints them as a table, or as the JSON the node sent.

use super::fetch;
use clap::Args;
use serde_json::Value;
use std::fmt::Write as _;

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
}

pub async fn run(args: &StatsArgs) -> Result<String, fetch::FetchError> {
    let path = if args.cluster {
        "/api/stats/cluster"
    } else {
        "/api/stats"
    };
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let body = fetch::get(&url).await?;
    if args.json {
        return Ok(body);
    }
    let value: Value = serde_json::from_str(&body)
        .map_err(|e| fetch::FetchError::Status(url.clone(), 200, format!("not JSON: {e}")))?;
    Ok(table(&value))
}

fn num(v: &Value, key: &str) -> String {
    v.get(key).map_or_else(|| "-".into(), |n| n.to_string())
}

/// Renders LocalStats or ClusterStats for a terminal.
pub fn table(v: &Value) -> String {
    let mut out = String::new();
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let _ = writeln!(out, "node         {}", text("node"));
    if v.get("cluster_size").is_some() {
        let degraded = v.get("degraded").and_then(Value::as_bool).unwrap_or(false);
        let _ = writeln!(
            out,
            "cluster      {} node(s), source {}{}",
            num(v, "cluster_size"),
            text("source"),
            if degraded {
                format!(", DEGRADED: {}", text("error"))
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(out, "connections  {}", num(v, "connection_count"));
    let _ = writeln!(out, "stream       {}", num(v, "stream_count"));
    let _ = writeln!(out, "sockets      {}", num(v, "socket_count"));
    let _ = writeln!(out, "at           {}", text("timestamp"));
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
    out
}
