//! The payload shapes of SPEC §3–§4 built from the tally: LocalStats,
//! the monitoring block and the single-node ClusterStats. They are written
//! as text around the tally's cached `connections_by_topic`, so a query with
//! 10,000 topics costs a copy, not a walk.

use crate::protocol::json_string;
use crate::tally::{Snapshot, Tally};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Instant, SystemTime};

/// RFC 3339 UTC with milliseconds.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Resident set size of this process, from /proc (0 where unavailable).
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// LocalStats for one snapshot.
pub fn local_json(node: &str, snap: &Snapshot) -> String {
    let mut out = String::with_capacity(snap.by_topic_json.len() + node.len() + 160);
    let _ = write!(
        out,
        "{{\"node\":{},\"connection_count\":{},\"stream_count\":{},\"socket_count\":{},\"connections_by_topic\":{},\"timestamp\":\"{}\"}}",
        json_string(node),
        snap.connection_count,
        snap.stream_count,
        snap.socket_count,
        snap.by_topic_json,
        timestamp()
    );
    out
}

pub fn local_stats(tally: &Tally) -> String {
    local_json(tally.node(), &tally.snapshot())
}

/// The `get_monitoring` reply.
pub fn monitoring(tally: &Tally, started: Instant) -> String {
    format!(
        "{{\"websocket_connections\":{},\"node\":{},\"uptime_s\":{},\"memory_bytes\":{},\"version\":\"{}\"}}",
        local_stats(tally),
        json_string(tally.node()),
        started.elapsed().as_secs(),
        rss_bytes(),
        env!("CARGO_PKG_VERSION")
    )
}

/// ClusterStats made of this node's own figures: the single-node form, or
/// the degraded form (with `error`) when Redis cannot answer.
pub fn local_cluster_json(tally: &Tally, error: Option<&str>) -> String {
    let snap = tally.snapshot();
    let node = json_string(tally.node());
    let mut out = String::with_capacity(snap.by_topic_json.len() + 400);
    let _ = write!(
        out,
        "{{\"connection_count\":{c},\"stream_count\":{s},\"socket_count\":{k},\"connections_by_topic\":{t},\"nodes\":{{{node}:{{\"connection_count\":{c},\"stream_count\":{s},\"socket_count\":{k},\"age_ms\":0}}}},\"total_connections\":{c},\"cluster_size\":1,\"source\":\"local\",\"degraded\":{d},",
        c = snap.connection_count,
        s = snap.stream_count,
        k = snap.socket_count,
        t = snap.by_topic_json,
        d = error.is_some(),
    );
    if let Some(error) = error {
        let _ = write!(out, "\"error\":{},", json_string(error));
    }
    let _ = write!(out, "\"node\":{node},\"timestamp\":\"{}\"}}", timestamp());
    out
}

/// LocalStats as read back by clients (the CLI, the cluster reader, tests).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LocalStats {
    pub node: String,
    pub connection_count: u64,
    pub stream_count: u64,
    pub socket_count: u64,
    pub connections_by_topic: BTreeMap<String, BTreeMap<String, u64>>,
    pub timestamp: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_cluster_shapes_parse_back() {
        let t = Tally::new("a@h");
        let _slot = t.try_open_socket(10).unwrap();
        let _m = t.join("patterns:stream");
        let parsed: LocalStats = serde_json::from_str(&local_stats(&t)).unwrap();
        assert_eq!(parsed.connection_count, 1);
        assert_eq!(parsed.stream_count, 1);
        assert_eq!(parsed.socket_count, 1);
        assert_eq!(parsed.connections_by_topic["patterns:stream"]["a@h"], 1);
        assert!(parsed.timestamp.ends_with('Z') && parsed.timestamp.len() == 24);
        let c: serde_json::Value =
            serde_json::from_str(&local_cluster_json(&t, Some("down"))).unwrap();
        assert_eq!(c["cluster_size"], 1);
        assert_eq!(c["degraded"], true);
        assert_eq!(c["error"], "down");
        assert_eq!(c["nodes"]["a@h"]["connection_count"], 1);
        let m: serde_json::Value = serde_json::from_str(&monitoring(&t, Instant::now())).unwrap();
        assert_eq!(m["websocket_connections"]["connection_count"], 1);
    }
}
