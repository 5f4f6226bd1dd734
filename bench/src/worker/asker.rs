//! One `bench query` asker: a socket joined to `patterns:stats` that asks
//! in a closed loop (get_local_stats / get_cluster_stats with the
//! `limit`/`prefix` filters, or get_occupancy of random populated topics),
//! times each answer, counts error replies by reason (`rate limited` apart),
//! and keeps a recent ok reply for [`check_reply`] to look into.

use super::open::{error_name, topic};
use super::WorkerSpec;
use crate::client::{self, Status, Ws};
use crate::hist::Hist;
use crate::rng::Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Every this many queries, the ok reply is kept as the sample.
const SAMPLE_EVERY: u64 = 16;

/// What askers saw, merged over them.
#[derive(Default)]
pub(super) struct Asked {
    pub(super) latency: Hist,
    /// Failed queries but rate-limited ones: error replies, I/O errors, timeouts.
    pub(super) errors: u64,
    pub(super) reasons: BTreeMap<String, u64>,
    /// Error replies `{"reason":"rate limited"}`.
    pub(super) rate_limited: u64,
    /// Bytes of the ok replies.
    pub(super) reply_bytes: u64,
    pub(super) last_count: u64,
    /// A recent ok reply, and the topics it asked about (occupancy).
    pub(super) sample: Option<(Vec<u8>, Vec<String>)>,
}

impl Asked {
    pub(super) fn merge(&mut self, other: Asked) {
        self.latency.merge(&other.latency);
        self.errors += other.errors;
        for (k, v) in other.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
        self.rate_limited += other.rate_limited;
        self.reply_bytes += other.reply_bytes;
        if other.last_count > 0 {
            self.last_count = other.last_count;
        }
        if other.sample.is_some() {
            self.sample = other.sample;
        }
    }

    fn error(&mut self, reason: String) {
        self.errors += 1;
        *self.reasons.entry(reason).or_default() += 1;
    }
}

pub(super) struct Asker<'a> {
    spec: &'a WorkerSpec,
    occupancy: bool,
    /// The event pushed after an ok stats reply (read before the next ask).
    push: Option<&'static str>,
    rng: Rng,
    pub(super) asked: Asked,
}

impl<'a> Asker<'a> {
    pub(super) fn new(spec: &'a WorkerSpec, i: usize) -> Asker<'a> {
        let push = match spec.query_event.as_str() {
            "get_local_stats" => Some("local_stats"),
            "get_cluster_stats" => Some("cluster_stats"),
            _ => None,
        };
        Asker {
            spec,
            occupancy: spec.query_event == "get_occupancy",
            push,
            rng: Rng::new(0x5eed ^ ((i as u64) << 20) ^ (spec.index as u64)),
            asked: Asked::default(),
        }
    }

    /// Asks until `deadline` or until `budget` runs out; gives the socket
    /// back. An I/O error or a 10 s silence ends this asker.
    pub(super) async fn run(
        &mut self,
        mut ws: Ws,
        deadline: Instant,
        budget: &AtomicU64,
        answered: &AtomicU64,
    ) -> Ws {
        let spec = self.spec;
        let event = spec.query_event.as_str();
        let mut n = 0u64;
        while Instant::now() < deadline
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_ok()
        {
            n += 1;
            let reference = format!("q{n}");
            let topics: Vec<String> = if self.occupancy {
                self.rng
                    .distinct(spec.topics_per_query.max(1), spec.topics.max(1))
                    .into_iter()
                    .map(|t| topic(spec, t))
                    .collect()
            } else {
                Vec::new()
            };
            let payload = if self.occupancy {
                json!({ "topics": topics }).to_string()
            } else {
                spec.query_payload.clone()
            };
            let frame = format!("[\"0\",\"{reference}\",\"patterns:stats\",\"{event}\",{payload}]");
            let keep = n % SAMPLE_EVERY == 1;
            let push = self.push;
            let t0 = Instant::now();
            let ask = async {
                ws.send_text(&frame).await?;
                let reply = ws
                    .await_reply_with(&reference, |data| {
                        let dt = t0.elapsed().as_micros() as u64;
                        let status = Status::of(data);
                        let count = client::number_after(data, b"\"connection_count\":");
                        let kept = (keep && status == Status::Ok).then(|| data.to_vec());
                        (dt, status, data.len() as u64, count, kept)
                    })
                    .await?;
                // The same figures follow an ok stats reply as a push; take
                // it before the next request so it is not counted in that
                // one's time.
                if let (Status::Ok, Some(push)) = (&reply.1, push) {
                    ws.await_event(push).await?;
                }
                Ok::<_, std::io::Error>(reply)
            };
            match tokio::time::timeout(Duration::from_secs(10), ask).await {
                Ok(Ok((dt, Status::Ok, bytes, count, kept))) => {
                    self.asked.latency.record(dt);
                    self.asked.reply_bytes += bytes;
                    if let Some(c) = count {
                        self.asked.last_count = c;
                    }
                    if let Some(reply) = kept {
                        self.asked.sample = Some((reply, topics));
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok((_, status, ..))) if status.is_rate_limited() => self.asked.rate_limited += 1,
                Ok(Ok((_, Status::Error(reason), ..))) => self.asked.error(reason),
                Ok(Err(e)) => {
                    self.asked.error(error_name(&e));
                    break;
                }
                Err(_) => {
                    self.asked.error("timed out".into());
                    break;
                }
            }
        }
        ws
    }
}

/// What a sampled ok reply held, against what was asked: stats replies
/// (with `limit`/`prefix` from `payload`) give their map's size, the
/// `topics_omitted` field and whether the filters held; occupancy replies
/// whether every asked topic is there with `connections` 1 (each populated
/// topic has exactly one member).
pub(super) fn check_reply(event: &str, reply: &[u8], asked: &[String], payload: &str) -> Value {
    let Ok(frame) = serde_json::from_slice::<Value>(reply) else {
        return json!({"parsed": false});
    };
    let r = &frame[4]["response"];
    if event == "get_occupancy" {
        let topics = &r["topics"];
        let answered = asked.iter().filter(|t| topics.get(t).is_some()).count();
        let exact = asked
            .iter()
            .filter(|t| topics[t.as_str()]["connections"].as_u64() == Some(1))
            .count();
        return json!({
            "topics_asked": asked.len(),
            "topics_answered": answered,
            "topics_exact": exact,
            "all_exact": !asked.is_empty() && exact == asked.len(),
            "source": r["source"],
        });
    }
    let filters: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
    let map = r["connections_by_topic"].as_object();
    let in_reply = map.map(|m| m.len());
    let within_limit = match (filters["limit"].as_u64(), in_reply) {
        (Some(limit), Some(n)) => Some(n as u64 <= limit),
        _ => None,
    };
    let prefix_held = match (filters["prefix"].as_str(), map) {
        (Some(p), Some(m)) => Some(m.keys().all(|k| k.starts_with(p))),
        _ => None,
    };
    json!({
        "connection_count": r["connection_count"],
        "topics_in_reply": in_reply,
        "topics_omitted": r["topics_omitted"],
        "within_limit": within_limit,
        "prefix_held": prefix_held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_replies_are_checked_topic_by_topic() {
        let reply = br#"[null,"q1","patterns:stats","phx_reply",{"status":"ok","response":{"topics":{"b:1":{"connections":1,"nodes":{"a":1}},"b:2":{"connections":2,"nodes":{"a":2}}},"source":"local","degraded":false}}]"#;
        let asked = ["b:1".to_string(), "b:2".to_string(), "b:3".to_string()];
        let c = check_reply("get_occupancy", reply, &asked, "");
        assert_eq!(c["topics_asked"], 3);
        assert_eq!(c["topics_answered"], 2);
        assert_eq!(c["topics_exact"], 1);
        assert_eq!(c["all_exact"], false);
        assert_eq!(c["source"], "local");
        let c = check_reply("get_occupancy", reply, &asked[..1], "");
        assert_eq!(c["all_exact"], true);
    }

    #[test]
    fn stats_replies_are_checked_against_limit_and_prefix() {
        let reply = br#"["0","q1","patterns:stats","phx_reply",{"status":"ok","response":{"connection_count":7,"connections_by_topic":{"b:1":{"n":3},"b:2":{"n":2}},"topics_omitted":4}}]"#;
        let c = check_reply(
            "get_local_stats",
            reply,
            &[],
            r#"{"limit":2,"prefix":"b:"}"#,
        );
        assert_eq!(c["connection_count"], 7);
        assert_eq!(c["topics_in_reply"], 2);
        assert_eq!(c["topics_omitted"], 4);
        assert_eq!(c["within_limit"], true);
        assert_eq!(c["prefix_held"], true);
        let c = check_reply(
            "get_cluster_stats",
            reply,
            &[],
            r#"{"limit":1,"prefix":"c"}"#,
        );
        assert_eq!(c["within_limit"], false);
        assert_eq!(c["prefix_held"], false);
        let c = check_reply("get_local_stats", reply, &[], "{}");
        assert_eq!(c["within_limit"], Value::Null);
        assert_eq!(
            check_reply("get_local_stats", b"nope", &[], "{}")["parsed"],
            false
        );
    }
}
