//! The node's totals as one info log line per period (a minute in a real
//! node), so a log reader sees the figures without scraping metrics. One
//! task per node, ended by the node's shutdown signal.

use crate::context::Ctx;
use std::sync::Arc;
use std::time::Duration;

/// How often a serving node logs its totals.
pub const PERIOD: Duration = Duration::from_secs(60);

/// Logs the totals every `period` (the first after one period) until the
/// node begins shutting down.
pub async fn run(ctx: Arc<Ctx>, period: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = ctx.shutdown_signal();
    tokio::pin!(shutdown);
    let (mut joins_before, mut leaves_before) = ctx.tally.totals();
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let snap = ctx.tally.snapshot();
        let (joins, leaves) = ctx.tally.totals();
        tracing::info!(
            node = %ctx.config.node,
            sockets = snap.socket_count,
            memberships = snap.connection_count,
            stream = snap.stream_count,
            topics = snap.topic_count,
            joins = joins - joins_before,
            leaves = leaves - leaves_before,
            joins_total = joins,
            leaves_total = leaves,
            rss_bytes = crate::stats::rss_bytes(),
            "totals"
        );
        (joins_before, leaves_before) = (joins, leaves);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
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

        let ctx = Ctx::new(
            Config {
                node: "t@h".into(),
                ..Config::default()
            },
            10,
        );
        let _slot = ctx.tally.try_open_socket(10);
        let _a = ctx.tally.join("patterns:stream");
        let _b = ctx.tally.join("rooms:x");
        let period = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let task = tokio::spawn(run(ctx.clone(), period));
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
        ctx.begin_shutdown();
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
