//! The coordinator's side of each scenario: start the workers, drive their
//! phases, read the server's counts and RSS, and build the report (a JSON
//! object, and a human summary made from it). One module per scenario; what
//! they share is in `pool` (workers), `measure` (server), `report` and
//! `actor` (sockets that join and leave on orders).
//! `floor-server` is dispatched from here too, to `crate::floor`.

mod actor;
mod churn;
mod churning;
mod cluster;
mod fanout;
mod flood;
mod hold;
mod listen;
mod measure;
mod occupancy;
mod pool;
mod presence;
mod query;
mod report;
mod webhooks;

use super::{endpoint, loopback_addr, BenchArgs, BenchError, Scenario};
use crate::floor::WebhookConfig;
use serde_json::Value;
use std::time::Duration;

/// Runs the scenario and returns what to print: the human summary, or one
/// JSON object with `--json`. The caller raises the open-file limit first
/// (the `headcount` binary does, before it calls this).
pub async fn run(args: BenchArgs) -> Result<String, BenchError> {
    if args.scenario == Scenario::FloorServer {
        return floor_server(&args).await;
    }
    if args.url.is_empty() {
        return Err(BenchError::Usage("--url is required".into()));
    }
    let mut endpoints = Vec::new();
    for url in &args.url {
        endpoints.push(endpoint(url).await?);
    }
    check_bounds(&args)?;
    // Checked before any socket opens.
    let redis = match &args.redis {
        Some(url) => {
            let host_port = crate::redis_info::host_port(url).map_err(BenchError::Usage)?;
            Some(loopback_addr("--redis", &host_port).await?)
        }
        None => None,
    };
    let limit = Duration::from_secs_f64(args.timeout.max(1.0));
    let work = async {
        match args.scenario {
            Scenario::Hold => hold::run(&args, &endpoints[0]).await,
            Scenario::Fanout => fanout::run(&args, &endpoints[0]).await,
            Scenario::Query => query::run(&args, &endpoints[0]).await,
            Scenario::Churn => churn::run(&args, &endpoints[0]).await,
            Scenario::Cluster => cluster::run(&args, &endpoints).await,
            Scenario::Occupancy => occupancy::run(&args, &endpoints, redis).await,
            Scenario::Presence => presence::run(&args, &endpoints).await,
            Scenario::Webhooks => webhooks::run(&args, &endpoints).await,
            Scenario::FloorServer => unreachable!("served above"),
        }
    };
    let report = tokio::time::timeout(limit, work)
        .await
        .map_err(|_| BenchError::Failed(format!("gave up after --timeout {}s", args.timeout)))??;
    Ok(if args.json {
        report.to_string()
    } else {
        human(&report)
    })
}

/// `bench floor-server`: serves until SIGINT or SIGTERM (not bounded by
/// `--timeout`: it is the server side), then prints what it served.
async fn floor_server(args: &BenchArgs) -> Result<String, BenchError> {
    let bind = loopback_addr("--bind", &args.bind).await?;
    let webhooks = floor_webhooks(args).await?;
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before the start line: a signal sent as soon as the line is
    // seen must stop the server, not kill the process.
    let mut term = signal(SignalKind::terminate()).map_err(failed)?;
    let mut int = signal(SignalKind::interrupt()).map_err(failed)?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let report = crate::floor::run(bind, webhooks, shutdown).await?;
    Ok(if args.json {
        report.to_string()
    } else {
        human(&report)
    })
}

/// The floor server's `--webhook-url` (loopback, http) and its secret.
async fn floor_webhooks(args: &BenchArgs) -> Result<Option<WebhookConfig>, BenchError> {
    let Some(url) = &args.webhook_url else {
        return Ok(None);
    };
    let usage = |m: &str| BenchError::Usage(format!("--webhook-url {url}: {m}"));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| usage("use http://HOST:PORT/PATH"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = loopback_addr("--webhook-url", authority).await?;
    let secret = args
        .webhook_secret
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| usage("needs --webhook-secret"))?;
    Ok(Some(WebhookConfig {
        addr,
        path: path.to_string(),
        secret,
        delay: Duration::from_millis(args.webhook_vacate_delay_ms),
    }))
}

fn check_bounds(args: &BenchArgs) -> Result<(), BenchError> {
    let bad = |what: &str| Err(BenchError::Usage(what.to_string()));
    if args.sockets > 200_000 {
        return bad("--sockets: at most 200,000");
    }
    if args.messages > 10_000_000 {
        return bad("--messages: at most 10,000,000");
    }
    if args.cycles > 10_000_000 {
        return bad("--cycles: at most 10,000,000");
    }
    if args.hold > 3600.0 || args.duration > 3600.0 {
        return bad("--hold and --duration: at most 3600 seconds");
    }
    if args.rounds > 100_000 {
        return bad("--rounds: at most 100,000");
    }
    if args.workers > 64 {
        return bad("--workers: at most 64");
    }
    if args.scenario == Scenario::Query && args.topics == 0 {
        return bad("--topics: query needs at least 1");
    }
    if !(1..=100).contains(&args.topics_per_query) {
        return bad("--topics-per-query: 1 to 100 (SPEC §7.2)");
    }
    if args.limit.is_some_and(|l| !(1..=100_000).contains(&l)) {
        return bad("--limit: 1 to 100,000 (SPEC §7.3)");
    }
    if args.topic.is_some() && (args.scenario != Scenario::Hold || args.topics_per_socket != 1) {
        return bad("--topic: for hold, with one topic per socket");
    }
    if !(0.0..=100_000.0).contains(&args.flood_joins) {
        return bad("--flood-joins: 0 to 100,000 per second");
    }
    if args.flood_joins > 0.0 && args.scenario != Scenario::Hold {
        return bad("--flood-joins: for hold");
    }
    if args.token_secret.as_deref() == Some("") {
        return bad("--token-secret must not be empty");
    }
    match args.scenario {
        Scenario::Occupancy => occupancy::check(args)?,
        Scenario::Presence => presence::check(args)?,
        Scenario::Webhooks => webhooks::check(args)?,
        _ => {}
    }
    Ok(())
}

pub(super) fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

fn human(r: &Value) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    match r["scenario"].as_str().unwrap_or("") {
        "hold" => hold::summary(r, &mut line),
        "fanout" => fanout::summary(r, &mut line),
        "query" => query::summary(r, &mut line),
        "churn" => churn::summary(r, &mut line),
        "cluster" => cluster::summary(r, &mut line),
        "occupancy" => occupancy::summary(r, &mut line),
        "presence" => presence::summary(r, &mut line),
        "webhooks" => webhooks::summary(r, &mut line),
        "floor-server" => crate::floor::summary(r, &mut line),
        _ => line(r.to_string()),
    }
    out
}
