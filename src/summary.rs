//! The node's totals as one info log line per period (a minute in a real
//! node), so a log reader sees the figures without scraping metrics. One
//! task per node, ended when the node stops.

use crate::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// How often a serving node logs its totals.
pub const PERIOD: Duration = Duration::from_secs(60);

/// Logs the totals every `period` (the first after one period), until the
/// task is dropped.
pub async fn run(registry: Arc<Registry>, node: String, period: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = registry.totals();
    loop {
        tick.tick().await;
        let now = registry.totals();
        tracing::info!(
            node = %node,
            sockets = now.sockets,
            memberships = now.memberships,
            stream = registry.stream_count(),
            topics = now.topics,
            joins = now.joins - before.joins,
            leaves = now.leaves - before.leaves,
            joins_total = now.joins,
            leaves_total = now.leaves,
            rss_bytes = crate::stats::rss_bytes(),
            "totals"
        );
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use crate::protocol::Vsn;
    use crate::registry::{Member, Tag};
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn logs_totals_every_period_as_json_and_stops_on_shutdown() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let registry = Registry::new("t@h", 100, false);
        let slot = registry.try_open_socket(10, None).unwrap();
        let member = || Member {
            outbox: Arc::new(Outbox::new(8, 1 << 20)),
            vsn: Vsn::V2,
            tag: Tag::Plain,
            occupancy: false,
            seen: 0,
        };
        let _a = registry
            .join("patterns:stream", slot.id(), member())
            .unwrap();
        let _b = registry.join("rooms:x", slot.id(), member()).unwrap();
        let period = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(stop.clone().run_until_cancelled_owned(run(
            registry.clone(),
            "t@h".into(),
            period,
        )));
        let lines = || {
            captured
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|b| **b == b'\n')
                .count()
        };
        while lines() < 2 && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(started.elapsed() >= 2 * period, "no line before a period");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the task ends on shutdown")
            .unwrap();

        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.len() >= 2, "{text}");
        for line in &lines {
            assert_eq!(line["level"], "INFO");
            assert_eq!(line["message"], "totals");
            assert_eq!(line["node"], "t@h");
            assert_eq!(line["sockets"], 1);
            assert_eq!(line["memberships"], 2);
            assert_eq!(line["stream"], 1);
            assert_eq!(line["topics"], 2);
            assert_eq!(line["joins_total"], 2);
        }
        assert_eq!(lines[0]["joins"], 0);
    }
}
