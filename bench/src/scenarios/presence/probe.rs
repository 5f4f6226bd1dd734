//! `bench presence`'s `presence_state` timing, on the quiet first node
//! once the members have joined: a probe socket joins the presence topic
//! (`user_id` `probe-<k>`) `--probes` times, each time timing its join
//! request to the reply and to the `presence_state` push, then leaves.
//! The median time to the state is an upper bound of the node's encode
//! time for that many keys (it also holds the join itself and two trips
//! over loopback); the time from the reply to the state narrows it. The
//! state's size and key count are reported with it.

use super::super::actor::is_push;
use crate::client::{find, Status, Ws, OP_CLOSE, OP_TEXT};
use crate::Endpoint;
use serde::de::IgnoredAny;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Between probes: the probe's own diffs are flushed (≤ 100 ms) first.
const PAUSE: Duration = Duration::from_millis(300);

/// One probe's figures, in µs and bytes.
struct Probe {
    to_reply: u64,
    to_state: u64,
    bytes: u64,
    keys: Option<u64>,
}

/// The number of keys of a `presence_state` frame.
pub(super) fn state_keys(frame: &[u8]) -> Option<u64> {
    type Frame = (
        IgnoredAny,
        IgnoredAny,
        IgnoredAny,
        IgnoredAny,
        HashMap<String, IgnoredAny>,
    );
    let (_, _, _, _, state) = serde_json::from_slice::<Frame>(frame).ok()?;
    Some(state.len() as u64)
}

pub(super) async fn run(ep: &Endpoint, topic: &str, probes: usize) -> Result<Value, String> {
    let mut ws = Ws::connect(&ep.target(), None)
        .await
        .map_err(|e| format!("probe socket: {e}"))?;
    let mut got = Vec::with_capacity(probes);
    for k in 0..probes {
        let p = tokio::time::timeout(Duration::from_secs(30), once(&mut ws, topic, k))
            .await
            .map_err(|_| "probe: no presence_state within 30 s".to_string())??;
        got.push(p);
        tokio::time::sleep(PAUSE).await;
    }
    let _ = ws.send_close().await;
    let median = |f: &dyn Fn(&Probe) -> u64| -> u64 {
        let mut v: Vec<u64> = got.iter().map(f).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let keys = got.last().and_then(|p| p.keys);
    Ok(json!({
        "probes": got.len(),
        "join_to_reply_us": median(&|p| p.to_reply),
        "join_to_state_us": median(&|p| p.to_state),
        "reply_to_state_us": median(&|p| p.to_state.saturating_sub(p.to_reply)),
        "join_to_state_min_us": got.iter().map(|p| p.to_state).min(),
        "join_to_state_max_us": got.iter().map(|p| p.to_state).max(),
        "state_bytes": median(&|p| p.bytes),
        "state_keys": keys,
    }))
}

/// One join, its reply and state, and the leave.
async fn once(ws: &mut Ws, topic: &str, k: usize) -> Result<Probe, String> {
    let jr = format!("p{k}");
    let frame =
        format!("[\"{jr}\",\"{jr}\",\"{topic}\",\"phx_join\",{{\"user_id\":\"probe-{k}\"}}]");
    let needle = format!(",\"{jr}\",");
    let t0 = Instant::now();
    ws.send_text(&frame).await.map_err(|e| e.to_string())?;
    let mut to_reply = None;
    let probe = loop {
        let f = ws.next().await.map_err(|e| e.to_string())?;
        match f.opcode {
            OP_CLOSE => return Err("probe: closed by server".into()),
            OP_TEXT => {}
            _ => continue,
        }
        let head = &f.data[..f.data.len().min(96)];
        if to_reply.is_none()
            && find(head, needle.as_bytes()).is_some()
            && find(f.data, b"\"phx_reply\"").is_some()
        {
            match Status::of(f.data) {
                Status::Ok => to_reply = Some(t0.elapsed().as_micros() as u64),
                Status::Error(r) => return Err(format!("probe join refused: {r}")),
            }
        } else if is_push(f.data, "presence_state") {
            let to_state = t0.elapsed().as_micros() as u64;
            break Probe {
                to_reply: to_reply.unwrap_or(to_state),
                to_state,
                bytes: f.data.len() as u64,
                keys: state_keys(f.data),
            };
        }
    };
    let lr = format!("q{k}");
    ws.send_text(&format!(
        "[\"{jr}\",\"{lr}\",\"{topic}\",\"phx_leave\",{{}}]"
    ))
    .await
    .map_err(|e| e.to_string())?;
    ws.await_status(&lr).await.map_err(|e| e.to_string())?;
    ws.shrink_read_buffer(64 * 1024);
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_are_counted() {
        let f = br#"["p0","p0","bench:presence","presence_state",{"u1":{"metas":[{"phx_ref":"a"}]},"u2":{"metas":[]}}]"#;
        assert_eq!(state_keys(f), Some(2));
        assert_eq!(
            state_keys(br#"[null,null,"t","presence_state",{}]"#),
            Some(0)
        );
        assert_eq!(state_keys(b"[]"), None);
    }
}
