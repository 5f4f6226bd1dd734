//! `bench floor-server`: a minimal Phoenix Channels V2 server written
//! directly on tokio-tungstenite, as the floor to compare headcount with:
//! what the protocol costs with no counting, no cluster, no limits and no
//! batching — a task per socket, a bounded mpsc channel per socket, one
//! write per message. It accepts `phx_join` (reply ok `{}`) on any topic,
//! `phx_leave`, `heartbeat`, relays a member's `broadcast` push to every
//! member of the topic, answers `POST /api/broadcast` with 202 and delivers
//! it, and `GET /healthz`. Every scenario of the bench runs against it
//! (their count checks are skipped: it has no `/api/stats`).
//!
//! One addition past the minimum, so that `bench occupancy` can be checked
//! end to end before the server has occupancy: a join with
//! `{"occupancy": true}` gets `occupancy` pushes `{"topic","connections",
//! "timestamp"}` (this node's count; `timestamp` in unix ms), at once and on
//! every change, uncoalesced. And, so that `bench webhooks` can be checked
//! end to end likewise, with `--webhook-url`: `channel_occupied` /
//! `channel_vacated` webhooks for this one node (`webhooks`).
//!
//! Listens on loopback only; prints one start line and runs until SIGINT or
//! SIGTERM. Modules: `hub` (topics and their members), `session` (one
//! WebSocket), `http` (the two routes), `wire` (V2 frames), `webhooks`.

mod http;
mod hub;
mod session;
mod webhooks;
mod wire;

pub use webhooks::Config as WebhookConfig;

use crate::BenchError;
use hub::Hub;
use serde_json::{json, Value};
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The path WebSocket upgrades come to; every other request is HTTP.
const WS_PATH: &[u8] = b"GET /socket/websocket";

/// Serves on `bind` (already checked to be loopback) until `shutdown`
/// resolves; returns what it served.
pub async fn run(
    bind: SocketAddr,
    webhooks: Option<WebhookConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<Value, BenchError> {
    let listener = listen(bind)
        .map_err(|e| BenchError::Failed(format!("floor-server: cannot listen on {bind}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let mut hub = Hub::default();
    hub.webhooks = webhooks.map(webhooks::start);
    let hub = Arc::new(hub);
    println!(
        "headcount-floor listening on {addr} (minimal Phoenix V2 server on tokio-tungstenite; not headcount)"
    );
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, hub.clone()));
                }
                // Out of descriptors: refuse for a moment rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
    let t = &hub.tally;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": "floor-server",
        "addr": addr.to_string(),
        "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "sockets_accepted": get(&t.sockets),
        "sockets_open": get(&t.open),
        "http_requests": get(&t.http_requests),
        "frames_in": get(&t.frames_in),
        "messages_out": get(&t.messages_out),
        "slow_consumers_closed": get(&t.slow_consumers),
    }))
}

/// The listening socket, with the same backlog (4096) as headcount's.
fn listen(bind: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if bind.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(bind)?;
    socket.listen(4096)
}

/// One accepted connection: a WebSocket upgrade on /socket/websocket, or
/// HTTP. The request line is peeked at, not read, so either side gets the
/// whole request.
async fn connection(stream: TcpStream, hub: Arc<Hub>) {
    let _ = stream.set_nodelay(true);
    match is_upgrade(&stream).await {
        Some(true) => session::run(stream, hub).await,
        Some(false) => http::serve(stream, hub).await,
        None => {}
    }
}

/// Whether the request starts `GET /socket/websocket`; `None` when the
/// client sends nothing for 10 s or closes.
async fn is_upgrade(stream: &TcpStream) -> Option<bool> {
    let mut buf = [0u8; 32];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        let seen = &buf[..n];
        if n >= WS_PATH.len() || seen.contains(&b'\n') {
            return Some(seen.starts_with(WS_PATH));
        }
        if Instant::now() > deadline {
            return None;
        }
        // Part of the request line is in: wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Summary lines for `bench floor-server` when it stops.
pub fn summary(r: &Value, line: &mut impl FnMut(String)) {
    line(format!(
        "floor-server on {} for {} s: {} sockets, {} HTTP requests, {} frames in, {} messages out, {} slow consumers closed",
        r["addr"].as_str().unwrap_or(""),
        r["seconds"],
        r["sockets_accepted"],
        r["http_requests"],
        r["frames_in"],
        r["messages_out"],
        r["slow_consumers_closed"]
    ));
}
