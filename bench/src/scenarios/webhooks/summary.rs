//! The human summary of a `bench webhooks` report, read off the JSON report
//! itself so that the printed lines and `--json` never disagree.

use super::super::report::lat_line;
use serde_json::Value;

pub(in super::super) fn summary(r: &Value, line: &mut impl FnMut(String)) {
    line(format!(
        "webhooks: {} node(s), {} topics over {} s (held {} s each, vacate delay {} ms{}), receiver {}",
        r["nodes"],
        r["topics"],
        r["duration_s"],
        r["hold_s"],
        r["vacate_delay_ms"],
        if r["presence"] == true { ", presence" } else { "" },
        r["receiver"].as_str().unwrap_or("")
    ));
    let t = &r["schedule"]["tally"];
    line(format!(
        "  {} actors: joins {} ok of {}, leaves {} ok of {} in {} s; rate limited {}, refused {}, actor errors {}, untracked topics {}",
        r["actors"]["total"], t["joins_ok"], t["joins_sent"], t["leaves_ok"], t["leaves_sent"],
        r["schedule"]["seconds"], t["rate_limited"], t["refused"], t["actor_errors"], t["untracked_topics"]
    ));
    let w = &r["webhooks"];
    if let Some(names) = w["by_name"].as_object() {
        for (name, n) in names {
            if n["expected"] == 0 && n["received"] == 0 {
                continue;
            }
            line(format!(
                "  {name}: expected {} delivered {} lost {} doubled {} unexpected {} (received {}); after the transition {}",
                n["expected"], n["delivered"], n["lost"], n["doubled"], n["unexpected"], n["received"],
                lat_line(&n["latency"])
            ));
        }
    }
    line(format!(
        "  events = transitions (none lost, doubled or unexpected): {}; delivery after the transition {}",
        w["exact"],
        lat_line(&w["latency"])
    ));
    line(format!(
        "  {} POSTs ({} events, at most {} a batch), redelivered {}, foreign {}, bad signatures {}, bad bodies {}, not JSON {}; waited {} s for the last",
        w["posts"], w["events_received"], w["max_batch"], w["redelivered"], w["foreign"],
        w["bad_signatures"], w["bad_bodies"], w["wrong_content_type"], r["waited_s"]
    ));
}

#[cfg(test)]
mod tests {
    use super::super::ledger::{Ledger, OCCUPIED};
    use super::*;
    use serde_json::json;

    #[test]
    fn a_run_with_nothing_delivered_reads_as_such() {
        let mut l = Ledger::new("b:wh-1-");
        l.expect(OCCUPIED, "b:wh-1-0", None, std::time::Instant::now());
        let r = json!({
            "nodes": 1, "topics": 1, "duration_s": 1.0, "hold_s": 0.5, "vacate_delay_ms": 0,
            "presence": false, "receiver": "http://127.0.0.1:1/hook",
            "actors": {"total": 2},
            "schedule": {"seconds": 1.0, "tally": {"joins_ok": 1, "joins_sent": 1, "leaves_ok": 0,
                "leaves_sent": 0, "rate_limited": 0, "refused": {}, "actor_errors": {}, "untracked_topics": 0}},
            "waited_s": 5.0,
            "webhooks": l.report(),
        });
        let mut out = Vec::new();
        summary(&r, &mut |s| out.push(s));
        let text = out.join("\n");
        assert!(
            text.contains("channel_occupied: expected 1 delivered 0 lost 1"),
            "{text}"
        );
        assert!(!text.contains("channel_vacated"), "{text}");
        assert!(
            text.contains("none lost, doubled or unexpected): false"),
            "{text}"
        );
    }
}
