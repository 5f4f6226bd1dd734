//! One floor-server WebSocket: the tokio-tungstenite handshake (selecting
//! the `phoenix` subprotocol when offered), then one task that reads the
//! client's frames and writes, one message per write, both the replies and
//! whatever the hub queued on the socket's channel.

use super::hub::{Hub, Peer, QUEUE};
use super::wire::{self, Inbound, JoinParams, Relay};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

/// Inbound messages larger than this close the socket.
const MAX_MESSAGE: usize = 1 << 20;

/// Checks the path and picks the `phoenix` subprotocol if the client offers it.
// The signature is tungstenite's callback's.
#[allow(clippy::result_large_err)]
fn handshake(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() != "/socket/websocket" {
        let mut err = ErrorResponse::new(Some("not found".into()));
        *err.status_mut() = StatusCode::NOT_FOUND;
        return Err(err);
    }
    let offers_phoenix = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "phoenix");
    if offers_phoenix {
        resp.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("phoenix"),
        );
    }
    Ok(resp)
}

pub(super) async fn run(stream: TcpStream, hub: Arc<Hub>) {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, handshake, Some(config)).await
    else {
        return;
    };
    hub.tally.sockets.fetch_add(1, Ordering::Relaxed);
    hub.tally.open.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let kill = Arc::new(Notify::new());
    let peer = Peer {
        id: hub.next_id(),
        tx,
        kill: kill.clone(),
    };
    // Joined topics and their join_ref (raw JSON).
    let mut joined: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            inbound = ws.next() => {
                let text = match inbound {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    // Pings are answered by tungstenite; binary pushes are
                    // not part of this floor.
                    Some(Ok(_)) => continue,
                };
                hub.tally.frames_in.fetch_add(1, Ordering::Relaxed);
                let mut out = Vec::new();
                if let Some(frame) = wire::decode(text.as_str()) {
                    handle(&hub, &peer, &mut joined, &frame, &mut out);
                }
                let mut failed = false;
                for text in out {
                    if ws.send(Message::text(text)).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed {
                    break;
                }
            }
            Some(msg) = rx.recv() => {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
            _ = kill.notified() => {
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::Policy,
                        reason: "slow consumer".into(),
                    }))
                    .await;
                break;
            }
        }
    }
    for topic in joined.keys() {
        hub.leave(topic, peer.id);
    }
    hub.tally.open.fetch_sub(1, Ordering::Relaxed);
}

/// One client frame: what it does to the hub, and the frames to write back.
fn handle(
    hub: &Hub,
    peer: &Peer,
    joined: &mut HashMap<String, String>,
    f: &Inbound<'_>,
    out: &mut Vec<String>,
) {
    match f.event.as_str() {
        "heartbeat" if f.topic == "phoenix" => out.push(wire::reply(f, true, "{}")),
        "phx_join" => {
            if let Some(old) = joined.remove(&f.topic) {
                // A second join of a topic: the old membership ends first.
                hub.leave(&f.topic, peer.id);
                out.push(wire::close(&old, &f.topic));
            }
            let params: JoinParams = serde_json::from_str(f.payload.get()).unwrap_or_default();
            // The reply is written before anything the hub queues for
            // this socket (its first occupancy push).
            out.push(wire::reply(f, true, "{}"));
            joined.insert(f.topic.clone(), f.join_ref.to_string());
            hub.join(&f.topic, peer, params.occupancy);
        }
        "phx_leave" => {
            out.push(wire::reply(f, true, "{}"));
            if let Some(join_ref) = joined.remove(&f.topic) {
                hub.leave(&f.topic, peer.id);
                out.push(wire::close(&join_ref, &f.topic));
            }
        }
        _ if !joined.contains_key(&f.topic) => out.push(wire::error(f, "unmatched topic")),
        "broadcast" => match serde_json::from_str::<Relay>(f.payload.get()) {
            Ok(relay) => {
                out.push(wire::reply(f, true, "{}"));
                hub.broadcast(
                    &f.topic,
                    wire::push(&f.topic, &relay.event, relay.payload.get()),
                );
            }
            Err(_) => out.push(wire::error(f, "malformed message")),
        },
        _ => out.push(wire::reply(
            f,
            false,
            &format!(
                "{{\"reason\":\"unknown event\",\"event\":{}}}",
                serde_json::to_string(&f.event).unwrap_or_default()
            ),
        )),
    }
}
