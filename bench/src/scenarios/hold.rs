//! `bench hold`: open N sockets (each with a fresh signed token when
//! `--token-secret` is given), hold them, and measure what they cost the
//! server (counts, RSS) from open to after close.

use super::measure::{brief, counts, counts_until, quiet_counts, rss, Cpu, NO_STATS};
use super::pool::{bar, specs_for, token_spec, worker_count, Pool};
use super::report::{cpu_line, kib, lat_line, round3};
use crate::worker::{Command, Kind};
use crate::{BenchArgs, BenchError, Endpoint};
use indicatif::ProgressBar;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub(super) async fn run(args: &BenchArgs, ep: &Endpoint) -> Result<Value, BenchError> {
    let n = args.sockets;
    let per = args.topics_per_socket.max(1);
    let workers = worker_count(args, n);
    let base = quiet_counts(ep).await?;
    let rss_before = rss(args);
    // The flooder (--flood-joins) starts first and stops once every held
    // socket is open: it floods through the whole connect+join phase.
    let (flood_stop, flood_rx) = tokio::sync::watch::channel(false);
    let flooder = (args.flood_joins > 0.0).then(|| {
        tokio::spawn(super::flood::run(
            ep.target(),
            args.topic_prefix.clone(),
            args.flood_joins,
            token_spec(args),
            flood_rx,
        ))
    });
    if flooder.is_some() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut pool = Pool::start(specs_for(args, ep, Kind::Hold, n, workers)).await?;
    let cpu = Cpu::now(args, &pool);
    let mut open = pool.opened(n as u64, "connect+join").await?;
    let _ = flood_stop.send(true);
    let flood = match flooder {
        Some(h) => Some(h.await.map_err(super::failed)?),
        None => None,
    };
    let opened = open["opened"].as_u64().unwrap_or(0);
    let secs = open["seconds"].as_f64().unwrap_or(0.0);
    open["cpu"] = cpu.since(args, &pool, opened, secs);
    let rss_open = rss(args);
    let held = counts(ep).await?;
    let hold_pb = bar((args.hold * 10.0) as u64, "holding");
    let until = Instant::now() + Duration::from_secs_f64(args.hold);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        hold_pb.inc(1);
    }
    hold_pb.finish_and_clear();
    let rss_held = rss(args);
    let held_end = counts(ep).await?;
    pool.send_all(|| Command::Stop);
    let outcomes = pool.done(&ProgressBar::hidden(), None).await?;
    let alive: u64 = outcomes.iter().map(|o| o.alive).sum();
    let drain = match &base {
        Some(base) => {
            counts_until(ep, Duration::from_secs(30), |c| {
                c.sockets <= base.sockets && c.connections <= base.connections
            })
            .await?
        }
        None => None,
    };
    let settle = Duration::from_secs_f64(args.settle.max(0.0));
    tokio::time::sleep(settle).await;
    let rss_after = rss(args);
    let per_socket = match (rss_before, rss_held) {
        (Some(b), Some(h)) if opened > 0 => Some(h.saturating_sub(b) as f64 / opened as f64),
        _ => None,
    };
    let counts_exact = match (&base, &held, &held_end) {
        (Some(base), Some(held), Some(end)) => {
            let sockets = base.sockets + opened;
            let conns = base.connections + opened * per as u64;
            Some(
                held.sockets == sockets
                    && held.connections == conns
                    && end.sockets == sockets
                    && end.connections == conns,
            )
        }
        _ => None,
    };
    let (after, drained, drain_s) = match drain {
        Some((after, drained, secs)) => (Some(after), Some(drained), Some(round3(secs))),
        None => (None, None, None),
    };
    Ok(json!({
        "scenario": "hold",
        "url": args.url[0],
        "sockets": n,
        "topics": args.topics,
        "topics_per_socket": per,
        "workers": workers,
        "sources": args.sources,
        "rate_target": args.rate,
        "hold_s": args.hold,
        "token": args.token_secret.as_ref().map(|_| json!({
            "alg": "HS256",
            "in": args.token_in,
            "topics": args.token_topics,
        })),
        "open": open,
        "flood": flood,
        "alive_at_end": alive,
        "server": {
            "stats": if base.is_some() { Value::from("GET /api/stats") } else { Value::from(NO_STATS) },
            "baseline": brief(&base),
            "held": brief(&held),
            "held_at_end": brief(&held_end),
            "after_close": brief(&after),
            "counts_exact": counts_exact,
            "drained": drained,
            "drain_s": drain_s,
        },
        "rss": {
            "pid": args.pid(),
            "before": rss_before,
            "open": rss_open,
            "held": rss_held,
            "after_close": rss_after,
            "settle_s": args.settle,
            "bytes_per_socket": per_socket.map(|b| b.round() as u64),
            "after_close_vs_before": match (rss_before, rss_after) {
                (Some(b), Some(a)) if b > 0 => Some(round3(a as f64 / b as f64)),
                _ => None,
            },
        },
    }))
}

/// The human summary's lines for this report.
pub(super) fn summary(r: &Value, line: &mut impl FnMut(String)) {
    let o = &r["open"];
    line(format!(
        "hold: {} sockets × {} topic(s) over {} topics, {} worker(s)",
        r["sockets"], r["topics_per_socket"], r["topics"], r["workers"]
    ));
    if let Some(t) = r["token"].as_object() {
        line(format!(
            "  tokens: {} per socket, in {}, topics claim {}",
            t["alg"], t["in"], t["topics"]
        ));
    }
    line(format!(
        "  opened {} failed {} in {} s → {} connect+join/s",
        o["opened"], o["failed"], o["seconds"], o["connect_join_per_s"]
    ));
    if o["failed"].as_u64().unwrap_or(0) > 0 {
        line(format!(
            "  errors: {} (rate limited: {})",
            o["errors"], o["rate_limited"]
        ));
    }
    if let Some(f) = r["flood"].as_object() {
        line(format!(
            "  flood: {} joins sent ({}/s, target {}/s) over {} s: ok {}, rate limited {}, errors {}, skipped {}, closed by server {}",
            f["sent"], f["sent_per_s"], f["rate_target"], f["seconds"], f["replies_ok"],
            f["rate_limited"], f["errors"], f["skipped"], f["closed_by_server"]
        ));
    }
    line(format!(
        "  connect      {}",
        lat_line(&o["connect_latency"])
    ));
    line(format!("  join         {}", lat_line(&o["join_latency"])));
    line(format!(
        "  connect+join {}",
        lat_line(&o["connect_join_latency"])
    ));
    line(cpu_line(&o["cpu"], "socket"));
    let s = &r["server"];
    if s["counts_exact"].is_null() {
        line(format!(
            "  server: {}; alive at end {}",
            s["stats"].as_str().unwrap_or(""),
            r["alive_at_end"]
        ));
    } else {
        line(format!(
            "  server: held {} sockets / {} memberships (exact: {}), alive at end {}, drained {} in {} s",
            s["held"]["sockets"], s["held"]["connections"], s["counts_exact"],
            r["alive_at_end"], s["drained"], s["drain_s"]
        ));
    }
    let m = &r["rss"];
    if m["pid"].is_number() {
        line(format!(
            "  server RSS: before {}  held {}  after close {} (+{} s)  → {} bytes/socket, after/before {}",
            kib(&m["before"]), kib(&m["held"]), kib(&m["after_close"]), m["settle_s"],
            m["bytes_per_socket"], m["after_close_vs_before"]
        ));
    }
}
