//! Number formats and lines every scenario's report uses alike, so that the
//! same figure reads the same way in every summary.

use crate::hist::fmt_us;
use serde_json::Value;

/// A count per second, as a whole number.
pub(super) fn per_s(count: u64, secs: f64) -> u64 {
    if secs > 0.0 {
        (count as f64 / secs).round() as u64
    } else {
        0
    }
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(super) fn lat_line(v: &Value) -> String {
    let get = |k: &str| v[k].as_u64().unwrap_or(0);
    format!(
        "p50 {}  p99 {}  max {}  (n={})",
        fmt_us(get("p50_us")),
        fmt_us(get("p99_us")),
        fmt_us(get("max_us")),
        get("count")
    )
}

pub(super) fn cpu_line(c: &Value, unit: &str) -> String {
    format!(
        "  cpu: server {} s ({} cores, {} µs/{unit}), client {} s ({} cores, {} µs/{unit})",
        c["server_cpu_s"],
        c["server_cores"],
        c["server_us_per_unit"],
        c["client_cpu_s"],
        c["client_cores"],
        c["client_us_per_unit"]
    )
}

pub(super) fn kib(v: &Value) -> String {
    v.as_u64()
        .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

#[cfg(test)]
mod tests {
    use crate::hist::Hist;

    #[test]
    fn latency_summary_serializes() {
        let mut h = Hist::default();
        h.record(5);
        let v = serde_json::to_value(h.summary()).unwrap();
        assert_eq!(v["p50_us"], 5);
    }
}
