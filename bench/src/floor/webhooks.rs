//! The floor server's occupancy webhooks (SPEC §10 for one node, with
//! `--webhook-url`), so that `bench webhooks` can be checked end to end
//! before headcount has them: `channel_occupied` when a topic gets its
//! first member, `channel_vacated` once it has had none for the vacate
//! delay (a topic back within the delay sends nothing), batched for up to
//! 50 ms or 100 events, POSTed with `X-Headcount-Signature`, retried
//! twice. No presence events, no redelivery across restarts.

use crate::client::find;
use crate::webhook_sig;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const BATCH_FOR: Duration = Duration::from_millis(50);
const BATCH_MAX: usize = 100;

/// Where and how to send.
#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    pub path: String,
    pub secret: String,
    pub delay: Duration,
}

/// A topic's count went from 0 to 1, or to 0.
pub(super) enum Change {
    Occupied(String),
    Vacated(String),
}

/// Starts the sender; the hub tells it of every change.
pub(super) fn start(cfg: Config) -> mpsc::UnboundedSender<Change> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(cfg, rx));
    tx
}

async fn run(cfg: Config, mut rx: mpsc::UnboundedReceiver<Change>) {
    let mut vacating: HashMap<String, Instant> = HashMap::new();
    let mut batch: Vec<Value> = Vec::new();
    let mut batch_since: Option<Instant> = None;
    let mut next_id = 0u64;
    let far = Duration::from_secs(3600);
    loop {
        let due = vacating.values().min().copied();
        let flush_at = batch_since.map(|s| s + BATCH_FOR);
        let wake = [due, flush_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + far);
        let mut add = |name: &str, topic: String, batch: &mut Vec<Value>| {
            next_id += 1;
            batch.push(json!({"id": format!("floor-{next_id}"), "name": name, "channel": topic}));
            batch_since.get_or_insert_with(Instant::now);
        };
        tokio::select! {
            c = rx.recv() => match c {
                None => return,
                Some(Change::Occupied(t)) => {
                    // Back within the delay: nothing to tell.
                    if vacating.remove(&t).is_none() {
                        add("channel_occupied", t, &mut batch);
                    }
                }
                Some(Change::Vacated(t)) => {
                    vacating.insert(t, Instant::now() + cfg.delay);
                }
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                let gone: Vec<String> = vacating
                    .iter()
                    .filter(|(_, d)| **d <= now)
                    .map(|(t, _)| t.clone())
                    .collect();
                for t in gone {
                    vacating.remove(&t);
                    add("channel_vacated", t, &mut batch);
                }
            }
        }
        let full = batch.len() >= BATCH_MAX;
        if full || batch_since.is_some_and(|s| s.elapsed() >= BATCH_FOR) {
            let events = std::mem::take(&mut batch);
            batch_since = None;
            let body = json!({"time_ms": unix_ms(), "events": events}).to_string();
            for _ in 0..3 {
                if post(&cfg, &body)
                    .await
                    .is_ok_and(|s| (200..300).contains(&s))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One signed POST on its own connection; the response's status.
async fn post(cfg: &Config, body: &str) -> std::io::Result<u16> {
    let sig = webhook_sig::sign(cfg.secret.as_bytes(), body.as_bytes());
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nX-Headcount-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        cfg.path,
        cfg.addr,
        body.len()
    );
    let one = async {
        let mut s = TcpStream::connect(cfg.addr).await?;
        s.write_all(req.as_bytes()).await?;
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while find(&head, b"\r\n").is_none() {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&chunk[..n]);
        }
        std::str::from_utf8(head.get(9..12).unwrap_or(b""))
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))
    };
    tokio::time::timeout(Duration::from_secs(5), one)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Reads one request's body from `listener` and answers 200.
    async fn one_body(listener: &TcpListener) -> (String, String) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if buf.len() >= end + 4 + len {
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]);
                    let sig = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-headcount-signature: "))
                        .unwrap()
                        .to_string();
                    return (body.into_owned(), sig);
                }
            }
        }
    }

    #[tokio::test]
    async fn occupied_then_vacated_after_the_delay_and_nothing_for_a_quick_return() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = Config {
            addr: listener.local_addr().unwrap(),
            path: "/hook".into(),
            secret: "k".into(),
            delay: Duration::from_millis(150),
        };
        let tx = start(cfg);
        tx.send(Change::Occupied("a".into())).unwrap();
        tx.send(Change::Vacated("a".into())).unwrap();
        tx.send(Change::Occupied("a".into())).unwrap();
        tx.send(Change::Occupied("b".into())).unwrap();
        let (body, sig) = one_body(&listener).await;
        assert!(webhook_sig::verify(b"k", body.as_bytes(), &sig));
        let v: Value = serde_json::from_str(&body).unwrap();
        let names: Vec<(&str, &str)> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["channel"].as_str().unwrap()))
            .collect();
        // "a" came back within the delay: one occupied, no vacate.
        assert_eq!(
            names,
            [("channel_occupied", "a"), ("channel_occupied", "b")]
        );
        let t0 = Instant::now();
        tx.send(Change::Vacated("b".into())).unwrap();
        let (body, _) = one_body(&listener).await;
        assert!(t0.elapsed() >= Duration::from_millis(150));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["events"][0]["name"], "channel_vacated");
        assert_eq!(v["events"][0]["channel"], "b");
        assert_ne!(v["events"][0]["id"], "floor-1");
    }
}
