//! The human summary of a `bench presence` report, read off the JSON report
//! itself so that the printed lines and `--json` never disagree.

use super::super::report::{kib, lat_line};
use crate::hist::fmt_us;
use serde_json::Value;

pub(in super::super) fn summary(r: &Value, line: &mut impl FnMut(String)) {
    let m = &r["members"];
    line(format!(
        "presence: {} node(s), topic {}, {} members ({} opened, {} failed, {} s), {} per node",
        r["nodes"],
        r["topic"].as_str().unwrap_or(""),
        r["sockets"],
        m["opened"],
        m["failed"],
        m["seconds"],
        m["per_node"]
    ));
    if m["failed"].as_u64().unwrap_or(0) > 0 {
        line(format!("  member errors: {}", m["errors"]));
    }
    line(format!(
        "  every node counts every member: {} ({} s); join → presence_state while joining: {}",
        r["converged"]["ok"],
        r["converged"]["seconds"],
        lat_line(&m["join_to_state"])
    ));
    let s = &r["state"];
    let us = |v: &Value| v.as_u64().map_or("-".into(), fmt_us);
    line(format!(
        "  presence_state of {} keys, {} bytes: join → state {} (median of {}; min {}, max {}), join → reply {}, reply → state {}",
        s["state_keys"],
        s["state_bytes"],
        us(&s["join_to_state_us"]),
        s["probes"],
        us(&s["join_to_state_min_us"]),
        us(&s["join_to_state_max_us"]),
        us(&s["join_to_reply_us"]),
        us(&s["reply_to_state_us"]),
    ));
    if s["state_keys"] == 0 {
        line("  the state is empty: the topic is count-only (more members than the node's --presence-max-members?), so no diffs".into());
    }
    let c = &r["churn"];
    let t = &c["tally"];
    line(format!(
        "  churn on {}: {} changes in {} s ({}/s, target {}/s) by {} churners; skipped ticks {}, rate limited {}, refused {}, churner errors {}",
        c["on"].as_str().unwrap_or(""), c["changes"], c["seconds"], c["changes_per_s"], c["rate_target"], c["churners"],
        t["skipped"], t["rate_limited"], t["refused"], t["churner_errors"]
    ));
    let d = &r["diffs"];
    line(format!(
        "  presence_diff deliveries to members: {} ({}/s, {} B each), per node {}",
        d["deliveries"], d["per_s"], d["bytes_per_delivery"], d["per_node"]
    ));
    let cpu = &r["cpu"];
    line(format!(
        "  cpu: server {} s ({} cores, {} µs per delivered diff), client {} s",
        cpu["server_cpu_s"],
        cpu["server_cores"],
        cpu["server_us_per_delivery"],
        cpu["client_cpu_s"]
    ));
    let cp = &r["churner_pushes"];
    line(format!(
        "  churners received {} presence_state ({} bytes) and {} diffs",
        cp["presence_states"], cp["presence_state_bytes"], cp["presence_diffs"]
    ));
    let p = &r["propagation"];
    line(format!(
        "  diff propagation (reply → first diff with the key on {}, nodes {}): {}",
        p["measured_on"].as_str().unwrap_or(""),
        p["watched_nodes"],
        lat_line(&p["all"])
    ));
    line(format!(
        "    joins {}; leaves {}",
        lat_line(&p["join"]),
        lat_line(&p["leave"])
    ));
    line(format!(
        "    lost (not seen within 5 s) {}, unanswered {}, seen before the reply {}",
        p["lost"], p["unanswered"], p["before_reply"]
    ));
    line(format!(
        "  at the end every node counts {} users and connections: {}; members gone {}",
        r["truth"]["expected"], r["truth"]["exact"], r["members_gone"]
    ));
    let mem = &r["memory"];
    match mem["skipped"].as_str() {
        Some(why) => line(format!("  memory per presence member: skipped ({why})")),
        None => {
            let nodes: Vec<String> = mem["nodes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|n| {
                            format!(
                                "plain {} → presence {} ({} members)",
                                kib(&n["plain"]),
                                kib(&n["presence"]),
                                n["local_members"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            line(format!(
                "  memory per presence member beyond a plain membership: {} B, {} B per meta held on a node ({})",
                mem["bytes_per_presence_member"],
                mem["bytes_per_meta_held"],
                nodes.join("; ")
            ));
        }
    }
}
