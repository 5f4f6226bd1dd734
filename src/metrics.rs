//! Prometheus metrics for one node. Each node owns its own recorder (no
//! global), so several servers in one process never mix their figures.
//! Gauges that mirror counts are set from the registry at render time, so
//! `/metrics` can never disagree with `/api/stats`. Cluster-only gauges are
//! left out on a single node, so an alert on `headcount_redis_up == 0` never
//! fires where there is no Redis.

use crate::presence::Presence;
use crate::registry::Registry;
use crate::topics::BUILTIN;
use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::sync::atomic::{AtomicUsize, Ordering};

static META: Metadata<'static> = Metadata::new("headcount", Level::INFO, Some("headcount"));

/// Why a join was refused (label `reason`, in `JOIN_REASONS` order).
#[derive(Clone, Copy, Debug)]
pub enum JoinRejection {
    UnmatchedTopic,
    TooManyChannels,
    InvalidSubsystem,
    BadPayload,
    TooManyTopics,
    Unauthorized,
    RateLimited,
    MetaTooLarge,
}

const JOIN_REASONS: [&str; 8] = [
    "unmatched_topic",
    "too_many_channels",
    "invalid_subsystem",
    "bad_payload",
    "too_many_topics",
    "unauthorized",
    "rate_limited",
    "meta_too_large",
];

/// Why a frame was refused (label `reason`, in `FRAME_REASONS` order).
#[derive(Clone, Copy, Debug)]
pub enum FrameRejection {
    Malformed,
    TooLarge,
    InvalidUtf8,
    Protocol,
    RateLimited,
}

const FRAME_REASONS: [&str; 5] = [
    "malformed",
    "too_large",
    "invalid_utf8",
    "protocol_error",
    "rate_limited",
];

/// Why an upgrade was refused (label `reason`, in `SOCKET_REASONS` order).
#[derive(Clone, Copy, Debug)]
pub enum SocketRefusal {
    /// At `--max-connections` or out of file descriptors.
    Limit,
    Draining,
    Origin,
    /// At `--max-connections-per-ip`.
    PerIp,
}

const SOCKET_REASONS: [&str; 4] = ["limit", "draining", "origin", "per_ip"];

/// How a webhook batch's try went (label `outcome`).
const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "failed", "dropped"];

/// Why a socket's token was refused (in the order of `auth::AuthFailure`).
const AUTH_REASONS: [&str; 3] = ["missing_token", "invalid_token", "expired_token"];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    join_rejections: [Counter; 8],
    frame_rejections: [Counter; 5],
    socket_refusals: [Counter; 4],
    auth_failures: [Counter; 3],
    webhook_deliveries: [Counter; 3],
    /// Webhook events this node holds: its batch in flight and its queue.
    pub webhook_pending: Gauge,
    pub slow_consumer_closes: Counter,
    pub rate_limit_closes: Counter,
    pub token_expiries: Counter,
    pub idle_timeouts: Counter,
    pub events_in: Counter,
    pub events_rejected: Counter,
    pub deliveries: Counter,
    pub relay_in: Counter,
    pub relay_out: Counter,
    pub relay_rejected: Counter,
    pub relay_dropped: Counter,
    pub redis_commands: Counter,
    pub redis_up: Gauge,
    pub cluster_nodes: Gauge,
    pub oldest_node_age: Gauge,
    pub outbound_queue_high_water: Gauge,
    queue_high_water: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics of a single node: no cluster gauges.
    pub fn new() -> Metrics {
        Self::with_mode(false)
    }

    /// `cluster`: whether the node runs with `--redis`, which decides
    /// whether `headcount_redis_up` and the cluster gauges are exported.
    /// Their fields exist either way (as no-ops on a single node), so code
    /// that sets them needs no check.
    pub fn with_mode(cluster: bool) -> Metrics {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counter = |name: &'static str, labels: Vec<Label>, help: &'static str| {
            recorder.describe_counter(name.into(), None, help.into());
            recorder.register_counter(&Key::from_parts(name, labels), &META)
        };
        let reason = |r: &'static str| vec![Label::new("reason", r)];
        let cluster_gauge = |name: &'static str| {
            if cluster {
                recorder.register_gauge(&Key::from_name(name), &META)
            } else {
                Gauge::noop()
            }
        };
        let by_reason = |name: &'static str, help: &'static str, reasons: &[&'static str]| {
            reasons
                .iter()
                .map(|r| counter(name, reason(r), help))
                .collect::<Vec<_>>()
        };
        let m = Metrics {
            join_rejections: array(by_reason(
                "headcount_join_rejections_total",
                "Joins refused, by reason",
                &JOIN_REASONS,
            )),
            frame_rejections: array(by_reason(
                "headcount_frames_rejected_total",
                "Inbound frames refused, by reason",
                &FRAME_REASONS,
            )),
            socket_refusals: array(by_reason(
                "headcount_sockets_refused_total",
                "WebSocket upgrades refused, by reason (auth failures have their own counter)",
                &SOCKET_REASONS,
            )),
            auth_failures: array(by_reason(
                "headcount_auth_failures_total",
                "WebSocket upgrades refused for their token, by reason",
                &AUTH_REASONS,
            )),
            webhook_deliveries: array(
                WEBHOOK_OUTCOMES
                    .iter()
                    .map(|o| {
                        counter(
                            "headcount_webhook_deliveries_total",
                            vec![Label::new("outcome", *o)],
                            "Webhook batch tries, by outcome (failed ones are retried until dropped)",
                        )
                    })
                    .collect(),
            ),
            webhook_pending: recorder.register_gauge(&Key::from_name("headcount_webhook_pending"), &META),
            rate_limit_closes: counter(
                "headcount_rate_limit_closes_total",
                vec![],
                "Sockets closed 1008 for staying over --max-messages-per-second for 10 s",
            ),
            token_expiries: counter(
                "headcount_token_expiry_closes_total",
                vec![],
                "Sockets closed 4001 when their token expired",
            ),
            slow_consumer_closes: counter(
                "headcount_slow_consumer_closes_total",
                vec![],
                "Sockets closed 1008 because their outbound queue was full",
            ),
            idle_timeouts: counter(
                "headcount_idle_timeouts_total",
                vec![],
                "Sockets closed for sending nothing within the idle timeout",
            ),
            events_in: counter(
                "headcount_bus_events_in_total",
                vec![],
                "Events and broadcasts accepted by the bus on this node",
            ),
            events_rejected: counter(
                "headcount_bus_events_rejected_total",
                vec![],
                "Events refused by validation (HTTP or Redis ingress)",
            ),
            deliveries: counter(
                "headcount_bus_deliveries_total",
                vec![],
                "Messages queued to subscribers by the bus (events out)",
            ),
            relay_in: counter(
                "headcount_relay_messages_in_total",
                vec![],
                "Messages received from other nodes through Redis",
            ),
            relay_out: counter(
                "headcount_relay_messages_out_total",
                vec![],
                "Messages published to other nodes through Redis",
            ),
            relay_rejected: counter(
                "headcount_relay_messages_rejected_total",
                vec![],
                "Invalid messages received on the Redis events channel",
            ),
            relay_dropped: counter(
                "headcount_relay_messages_dropped_total",
                vec![],
                "Messages not relayed to other nodes because Redis was slow or down",
            ),
            redis_commands: if cluster {
                counter(
                    "headcount_redis_commands_total",
                    vec![],
                    "Commands this node sent to Redis (cluster mode)",
                )
            } else {
                Counter::noop()
            },
            redis_up: cluster_gauge("headcount_redis_up"),
            cluster_nodes: cluster_gauge("headcount_cluster_nodes"),
            oldest_node_age: cluster_gauge("headcount_cluster_oldest_node_age_seconds"),
            outbound_queue_high_water: recorder.register_gauge(
                &Key::from_name("headcount_outbound_queue_high_water_messages"),
                &META,
            ),
            queue_high_water: AtomicUsize::new(0),
            recorder,
            handle,
        };
        m.describe_gauges();
        m
    }

    fn describe_gauges(&self) {
        let r = &self.recorder;
        let g = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            r.describe_gauge(name.into(), unit, help.into())
        };
        g("headcount_sockets", None, "Open WebSocket connections");
        g(
            "headcount_memberships",
            None,
            "Channel memberships on this node",
        );
        g(
            "headcount_topic_memberships",
            None,
            "Memberships of each built-in topic",
        );
        g("headcount_topics", None, "Topics with at least one member");
        g(
            "headcount_webhook_pending",
            None,
            "Webhook events this node holds for delivery",
        );
        g(
            "headcount_presence_users",
            None,
            "Distinct presence users of each built-in presence topic, cluster-wide",
        );
        g(
            "headcount_redis_up",
            None,
            "1 when the Redis connection works (cluster mode)",
        );
        g(
            "headcount_cluster_nodes",
            None,
            "Live nodes in the last cluster read",
        );
        g(
            "headcount_cluster_oldest_node_age_seconds",
            Some(Unit::Seconds),
            "Age of the oldest node figures in the last cluster read",
        );
        g(
            "headcount_outbound_queue_high_water_messages",
            None,
            "Deepest outbound queue seen on any socket",
        );
        g(
            "headcount_process_resident_memory_bytes",
            Some(Unit::Bytes),
            "Resident set size",
        );
        g(
            "headcount_sockets_limit",
            None,
            "Sockets beyond this are refused with HTTP 503 (--max-connections)",
        );
        g(
            "headcount_process_open_fds",
            None,
            "Open file descriptors of the process",
        );
        g(
            "headcount_process_max_fds",
            None,
            "Open file limit of the process (soft RLIMIT_NOFILE)",
        );
        g(
            "headcount_start_time_seconds",
            Some(Unit::Seconds),
            "When this node started, seconds since the Unix epoch",
        );
        g(
            "headcount_build_info",
            None,
            "Always 1; the label `version` is the running version",
        );
        r.describe_counter(
            "headcount_joins_total".into(),
            None,
            "Memberships started".into(),
        );
        r.describe_counter(
            "headcount_leaves_total".into(),
            None,
            "Memberships ended, by any path".into(),
        );
    }

    pub fn join_rejected(&self, why: JoinRejection) {
        self.join_rejections[why as usize].increment(1);
    }

    pub fn frame_rejected(&self, why: FrameRejection) {
        self.frame_rejections[why as usize].increment(1);
    }

    pub fn webhook_delivery(&self, outcome: &str) {
        if let Some(i) = WEBHOOK_OUTCOMES.iter().position(|o| *o == outcome) {
            self.webhook_deliveries[i].increment(1);
        }
    }

    pub fn socket_refused(&self, why: SocketRefusal) {
        self.socket_refusals[why as usize].increment(1);
    }

    /// A token refused; `index` is the failure's place in `AUTH_REASONS`.
    pub fn auth_failed(&self, label: &str) {
        if let Some(i) = AUTH_REASONS.iter().position(|r| *r == label) {
            self.auth_failures[i].increment(1);
        }
    }

    /// Records a queue depth; the gauge keeps the highest seen.
    pub fn queue_depth(&self, depth: usize) {
        let prev = self.queue_high_water.fetch_max(depth, Ordering::Relaxed);
        if depth > prev {
            self.outbound_queue_high_water.set(depth as f64);
        }
    }

    /// Sets the figures that do not change while the node runs: its socket
    /// limit, start time and version.
    pub fn set_static(&self, sockets_limit: u64) {
        let gauge = |name: &'static str, labels: Vec<Label>| {
            self.recorder
                .register_gauge(&Key::from_parts(name, labels), &META)
        };
        gauge("headcount_sockets_limit", vec![]).set(sockets_limit as f64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        gauge("headcount_start_time_seconds", vec![]).set(now.floor());
        gauge(
            "headcount_build_info",
            vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
        )
        .set(1.0);
    }

    /// Prometheus text, with count gauges read from the registry right now,
    /// families sorted by name so the page reads the same on every scrape.
    pub fn render(&self, registry: &Registry, presence: &Presence) -> String {
        let totals = registry.totals();
        let gauge = |name: &'static str, labels: Vec<Label>| {
            self.recorder
                .register_gauge(&Key::from_parts(name, labels), &META)
        };
        gauge("headcount_sockets", vec![]).set(totals.sockets as f64);
        gauge("headcount_memberships", vec![]).set(totals.memberships as f64);
        gauge("headcount_topics", vec![]).set(totals.topics as f64);
        for topic in BUILTIN {
            gauge(
                "headcount_topic_memberships",
                vec![Label::new("topic", topic)],
            )
            .set(registry.count(topic) as f64);
            // Users only for built-ins that keep presence: no unbounded labels.
            if presence.covers(topic) {
                gauge("headcount_presence_users", vec![Label::new("topic", topic)])
                    .set(presence.counts(topic).1 as f64);
            }
        }
        let counter =
            |name: &'static str| self.recorder.register_counter(&Key::from_name(name), &META);
        counter("headcount_joins_total").absolute(totals.joins);
        counter("headcount_leaves_total").absolute(totals.leaves);
        gauge("headcount_process_resident_memory_bytes", vec![])
            .set(crate::stats::rss_bytes() as f64);
        if let Some(open) = open_fds() {
            gauge("headcount_process_open_fds", vec![]).set(open as f64);
        }
        gauge("headcount_process_max_fds", vec![]).set(max_fds() as f64);
        sort_families(&self.handle.render())
    }
}

/// The counters of one family, as the fixed-size array the struct holds.
fn array<const N: usize>(counters: Vec<Counter>) -> [Counter; N] {
    let mut it = counters.into_iter();
    std::array::from_fn(|_| it.next().unwrap_or_else(Counter::noop))
}

/// Entries of /proc/self/fd (less the one the read itself holds open).
fn open_fds() -> Option<usize> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(n.saturating_sub(1))
}

/// The soft open-file limit.
fn max_fds() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    lim.rlim_cur
}

/// The exporter writes families in hash order, one block each, separated by
/// blank lines; this orders the blocks by metric name.
fn sort_families(text: &str) -> String {
    let mut blocks: Vec<&str> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .collect();
    let name = |block: &str| -> String {
        let line = block.lines().next().unwrap_or("");
        let line = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .unwrap_or(line);
        line.split([' ', '{']).next().unwrap_or("").to_owned()
    };
    blocks.sort_by_cached_key(|b| name(b));
    let mut out = String::with_capacity(text.len() + 2);
    for block in blocks {
        out.push_str(block);
        out.push_str("\n\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_leaves_out_cluster_gauges_and_sorts_families() {
        let registry = Registry::new("n@h", 100, false);
        let presence = Presence::new("n@h", crate::globs::Globs::default(), 10, "o", false);
        let m = Metrics::with_mode(false);
        m.set_static(42);
        m.redis_up.set(1.0);
        let text = m.render(&registry, &presence);
        assert!(!text.contains("headcount_redis_up"), "{text}");
        assert!(!text.contains("headcount_cluster_nodes"), "{text}");
        assert!(text.contains("headcount_sockets_limit 42\n"), "{text}");
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);

        let m = Metrics::with_mode(true);
        m.redis_up.set(1.0);
        m.cluster_nodes.set(3.0);
        let text = m.render(&registry, &presence);
        assert!(text.contains("headcount_redis_up 1\n"), "{text}");
        assert!(text.contains("headcount_cluster_nodes 3\n"), "{text}");
    }
}
