//! The coordinator's side of each scenario: start the workers, drive their
//! phases, read the server's counts and RSS, and build the report (a JSON
//! object, and a human summary made from it). One module per scenario; what
//! they share is in `pool` (workers), `measure` (server) and `report`.

mod churn;
mod cluster;
mod fanout;
mod hold;
mod measure;
mod pool;
mod query;
mod report;

use super::{endpoint, BenchArgs, BenchError, Scenario};
use serde_json::Value;
use std::time::Duration;

/// Runs the scenario and returns what to print: the human summary, or one
/// JSON object with `--json`. The caller raises the open-file limit first
/// (the `headcount` binary does, before it calls this).
pub async fn run(args: BenchArgs) -> Result<String, BenchError> {
    if args.url.is_empty() {
        return Err(BenchError::Usage("--url is required".into()));
    }
    let mut endpoints = Vec::new();
    for url in &args.url {
        endpoints.push(endpoint(url).await?);
    }
    check_bounds(&args)?;
    let limit = Duration::from_secs_f64(args.timeout.max(1.0));
    let work = async {
        match args.scenario {
            Scenario::Hold => hold::run(&args, &endpoints[0]).await,
            Scenario::Fanout => fanout::run(&args, &endpoints[0]).await,
            Scenario::Query => query::run(&args, &endpoints[0]).await,
            Scenario::Churn => churn::run(&args, &endpoints[0]).await,
            Scenario::Cluster => cluster::run(&args, &endpoints).await,
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
        _ => line(r.to_string()),
    }
    out
}
