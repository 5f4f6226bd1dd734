//! `bench fanout`: N subscribers on one topic, M messages published over
//! HTTP or by a member; deliveries, losses and latency. The member count
//! is checked when the target has headcount's `/api/stats`.

use super::failed;
use super::measure::{counts, quiet_counts, Cpu, NO_STATS};
use super::pool::{bar, specs_for, worker_count, Pool};
use super::report::{cpu_line, lat_line, per_s, round3};
use crate::client::Status;
use crate::hist::Hist;
use crate::http::Http;
use crate::worker::{self, now_us, Event, Kind};
use crate::{BenchArgs, BenchError, Endpoint, Publish};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn run(args: &BenchArgs, ep: &Endpoint) -> Result<Value, BenchError> {
    let n = args.sockets;
    let workers = worker_count(args, n);
    let topic = format!("{}0", args.topic_prefix);
    let mut specs = specs_for(args, ep, Kind::Fanout, n, workers);
    for s in &mut specs {
        s.topics = 1;
    }
    let base = quiet_counts(ep).await?;
    let mut pool = Pool::start(specs).await?;
    let open = pool.opened(n as u64, "subscribe").await?;
    let subscribers = open["opened"].as_u64().unwrap_or(0);
    let before = counts(ep).await?;
    let members_before = match (&base, &before) {
        (Some(base), Some(before)) => Some(
            before.by_topic.get(&topic).copied().unwrap_or(0)
                - base.by_topic.get(&topic).copied().unwrap_or(0),
        ),
        _ => None,
    };

    // Publishers: HTTP connections, or client sockets joined to the topic;
    // on --publish-url's node if given (then every message is relayed).
    let pub_ep = match &args.publish_url {
        Some(url) => crate::endpoint(url).await?,
        None => ep.clone(),
    };
    let target = pub_ep.target();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let rate_limited = Arc::new(AtomicU64::new(0));
    let messages = args.messages;
    let cpu = Cpu::now(args, &pool);
    let start_us = now_us();
    let start = Instant::now();
    let mut pubs = tokio::task::JoinSet::new();
    for p in 0..args.publishers.max(1) {
        let (next, errors, rate_limited, target, topic) = (
            next.clone(),
            errors.clone(),
            rate_limited.clone(),
            target.clone(),
            topic.clone(),
        );
        let (mode, rate, addr) = (args.publish, args.publish_rate, pub_ep.addr);
        let mut ws = match mode {
            Publish::Client => Some(
                worker::open_joined(&target, None, std::slice::from_ref(&topic))
                    .await
                    .map_err(|e| failed(format!("publisher {p}: {e}")))?
                    .0,
            ),
            Publish::Http => None,
        };
        pubs.spawn(async move {
            let mut http = Http::new(addr);
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= messages {
                    break;
                }
                if rate > 0.0 {
                    let due = start + Duration::from_secs_f64(seq as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let payload = format!("{{\"seq\":{seq},\"t\":{}}}", now_us());
                let ok = match &mut ws {
                    None => {
                        let body = format!(
                            "{{\"topic\":\"{topic}\",\"event\":\"bench\",\"payload\":{payload}}}"
                        );
                        matches!(
                            http.request("POST", "/api/broadcast", Some(&body)).await,
                            Ok((202, _))
                        )
                    }
                    Some(ws) => {
                        let reference = format!("b{seq}");
                        let frame = format!(
                            "[\"0\",\"{reference}\",\"{topic}\",\"broadcast\",{{\"event\":\"bench\",\"payload\":{payload}}}]"
                        );
                        let status = match ws.send_text(&frame).await {
                            Ok(()) => ws.await_status(&reference).await.ok(),
                            Err(_) => None,
                        };
                        if status.as_ref().is_some_and(Status::is_rate_limited) {
                            rate_limited.fetch_add(1, Ordering::Relaxed);
                        }
                        status == Some(Status::Ok)
                    }
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            // A client publisher keeps its socket until the end, so the
            // member count stays what it was while messages fan out.
            ws
        });
    }
    let pb = bar(subscribers * messages, "deliveries");
    let mut publishers_left = Vec::new();
    let mut listening = true;
    loop {
        tokio::select! {
            r = pubs.join_next() => match r {
                Some(Ok(ws)) => publishers_left.push(ws),
                Some(Err(e)) => return Err(failed(e)),
                None => break,
            },
            ev = pool.events.recv(), if listening => match ev {
                Some((i, Event::Progress(n))) => pool.progress(i, n, &pb),
                Some((i, Event::Failed(e))) => return Err(failed(format!("worker {i}: {e}"))),
                Some((i, Event::Done(o))) => pool.early.push((i, o)),
                Some(_) => {}
                // Every worker has finished (all messages arrived).
                None => listening = false,
            },
        }
    }
    let publish_s = start.elapsed().as_secs_f64();
    // Subscribers end when they have every message; those still waiting
    // after the drain time are told to stop and the rest count as lost.
    let outcomes = pool.done(&pb, Some(Duration::from_secs(10))).await?;
    let wall = start.elapsed().as_secs_f64();
    let delivered_all: u64 = outcomes.iter().map(|o| o.delivered).sum();
    let cpu = cpu.since(args, &pool, delivered_all, wall);
    {
        pb.finish_and_clear();
        let mut lat = Hist::default();
        let (mut delivered, mut dups, mut closed) = (0, 0, 0);
        let (mut first, mut last) = (u64::MAX, 0);
        for o in &outcomes {
            lat.merge(&Hist::from_wire(&o.latency));
            delivered += o.delivered;
            dups += o.duplicates;
            closed += o.closed_early;
            if o.delivered > 0 {
                first = first.min(o.first_us);
                last = last.max(o.last_us);
            }
        }
        drop(publishers_left);
        let expected = subscribers * messages;
        let span = if last > start_us {
            (last - start_us) as f64 / 1e6
        } else {
            0.0
        };
        let publish_errors = errors.load(Ordering::Relaxed);
        Ok(json!({
            "scenario": "fanout",
            "url": args.url[0],
            "publish_url": args.publish_url.as_deref().unwrap_or(&args.url[0]),
            "topic": topic,
            "subscribers": subscribers,
            "members_seen_by_server": members_before,
            "workers": workers,
            "publish": format!("{:?}", args.publish).to_lowercase(),
            "publishers": args.publishers.max(1),
            "publish_rate_target": args.publish_rate,
            "messages": messages,
            "publish_errors": publish_errors,
            "publish_rate_limited": rate_limited.load(Ordering::Relaxed),
            "server_stats": if base.is_some() { Value::Null } else { Value::from(NO_STATS) },
            "publish_s": round3(publish_s),
            "messages_per_s": per_s(messages, publish_s),
            "subscribe": open,
            "expected_deliveries": expected,
            "delivered": delivered,
            "lost": expected.saturating_sub(delivered),
            "duplicates": dups,
            "subscribers_closed_early": closed,
            "span_s": round3(span),
            "deliveries_per_s": per_s(delivered, span),
            "latency": lat.summary(),
            "cpu_per_delivery": cpu,
        }))
    }
}

/// The human summary's lines for this report.
pub(super) fn summary(r: &Value, line: &mut impl FnMut(String)) {
    line(format!(
        "fanout: {} subscribers on {}, {} messages via {} ({} publisher(s))",
        r["subscribers"], r["topic"], r["messages"], r["publish"], r["publishers"]
    ));
    if r["publish_url"] != r["url"] {
        line(format!(
            "  published through {} (relayed to {})",
            r["publish_url"].as_str().unwrap_or(""),
            r["url"].as_str().unwrap_or("")
        ));
    }
    line(format!(
        "  published in {} s ({} msg/s), errors {} (rate limited {})",
        r["publish_s"], r["messages_per_s"], r["publish_errors"], r["publish_rate_limited"]
    ));
    match r["members_seen_by_server"].as_u64() {
        Some(m) => line(format!("  members seen by the server: {m}")),
        None => line(format!("  {}", r["server_stats"].as_str().unwrap_or(""))),
    }
    line(format!(
        "  delivered {} of {} (lost {}, duplicates {}, subscribers closed {}) in {} s → {} deliveries/s",
        r["delivered"], r["expected_deliveries"], r["lost"], r["duplicates"],
        r["subscribers_closed_early"], r["span_s"], r["deliveries_per_s"]
    ));
    line(format!("  latency {}", lat_line(&r["latency"])));
    line(cpu_line(&r["cpu_per_delivery"], "delivery"));
}
