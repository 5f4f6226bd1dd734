//! The session's protocol behaviour, in process: a session task on one end
//! of a Unix socket pair, a tungstenite client on the other, and tokio's
//! paused clock, so a 60 s idle timeout takes no real time.

use super::{run, Opening};
use crate::config::Config;
use crate::context::Ctx;
use crate::protocol::Vsn;
use crate::registry::Select;
use crate::topics::STREAM;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Client = WebSocketStream<UnixStream>;

/// A node's serving context (no listener) and one V2 client connected to a
/// session of it.
async fn connect(config: Config) -> (Arc<Ctx>, Client) {
    let ctx = Ctx::assemble(config, 100).expect("a single-node context");
    let (server, client) = UnixStream::pair().expect("a socket pair");
    let slot = ctx
        .registry
        .try_open_socket(100, None)
        .expect("a socket slot");
    let opening = Opening {
        vsn: Vsn::V2,
        slot,
        identity: None,
    };
    tokio::spawn(run(ctx.clone(), server, Vec::new(), opening));
    let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    (ctx, client)
}

fn config() -> Config {
    Config {
        node: "t@h".into(),
        ..Config::default()
    }
}

async fn send(c: &mut Client, frame: Value) {
    c.send(Message::text(frame.to_string()))
        .await
        .expect("send");
}

/// The next text frame as JSON; panics on anything else.
async fn next(c: &mut Client) -> Value {
    match c.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).expect("JSON"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The close frame's code and reason.
async fn closed(c: &mut Client) -> (u16, String) {
    loop {
        match c.next().await {
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Text(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_answered_and_an_idle_socket_closes_after_the_timeout() {
    let (ctx, mut c) = connect(config()).await;
    let opened = Instant::now();
    send(&mut c, json!([null, "1", "phoenix", "heartbeat", {}])).await;
    assert_eq!(
        next(&mut c).await,
        json!([null, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    // Any frame resets the idle timer: 50 s later one more heartbeat.
    tokio::time::sleep(Duration::from_secs(50)).await;
    send(&mut c, json!([null, "2", "phoenix", "heartbeat", {}])).await;
    next(&mut c).await;
    let last = Instant::now();
    assert_eq!(closed(&mut c).await, (1000, "idle timeout".into()));
    let idle = last.elapsed();
    assert!(
        idle >= Duration::from_secs(60) && idle < Duration::from_secs(61),
        "closed after {idle:?} of silence"
    );
    assert!(opened.elapsed() >= Duration::from_secs(110));
    wait_until(|| ctx.registry.sockets() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_second_join_of_a_topic_ends_the_first_membership_first() {
    let (ctx, mut c) = connect(config()).await;
    send(&mut c, json!(["1", "1", STREAM, "phx_join", {}])).await;
    assert_eq!(next(&mut c).await[4]["status"], "ok");
    assert_eq!(next(&mut c).await[3], "initial_stats");
    assert_eq!(ctx.registry.count(STREAM), 1);
    send(&mut c, json!(["2", "2", STREAM, "phx_join", {}])).await;
    assert_eq!(
        next(&mut c).await,
        json!(["1", "1", STREAM, "phx_close", {}]),
        "the old membership is closed with its own join_ref"
    );
    let reply = next(&mut c).await;
    assert_eq!(
        (reply[0].clone(), reply[4]["status"].clone()),
        (json!("2"), json!("ok"))
    );
    assert_eq!(
        ctx.registry.count(STREAM),
        1,
        "net zero, never a double count"
    );
    // A message carrying the stale join_ref is ignored; the new one answers.
    send(
        &mut c,
        json!(["1", "3", STREAM, "get_connection_stats", {}]),
    )
    .await;
    send(
        &mut c,
        json!(["2", "4", STREAM, "get_connection_stats", {}]),
    )
    .await;
    let mut reply = next(&mut c).await;
    while reply[3] != "phx_reply" {
        reply = next(&mut c).await;
    }
    assert_eq!(reply[1], "4");
    assert_eq!(reply[4]["response"]["connection_count"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_outbound_queue_closes_the_socket_as_a_slow_consumer() {
    let (ctx, mut c) = connect(Config {
        allow_topic: vec!["rooms:*".into()],
        outbound_queue: 4,
        ..config()
    })
    .await;
    send(&mut c, json!(["1", "1", "rooms:a", "phx_join", {}])).await;
    assert_eq!(next(&mut c).await[4]["status"], "ok");
    // The client reads nothing: pushes go straight into the socket until
    // its buffers are full, then four wait in the queue, and the next one
    // finds the queue full.
    let payload = json!({ "pad": "x".repeat(1000) }).to_string();
    let mut pushed = 0;
    while ctx
        .registry
        .publish("rooms:a", "tick", &payload, Select::All)
        == 1
    {
        pushed += 1;
        assert!(pushed < 100_000, "the socket never filled up");
    }
    assert!(pushed > 4, "{pushed} pushes went through first");
    assert_eq!(closed(&mut c).await, (1008, "slow consumer".into()));
    wait_until(|| ctx.registry.count("rooms:a") == 0).await;
    assert_eq!(ctx.registry.sockets(), 0);
}

#[tokio::test(start_paused = true)]
async fn draining_closes_every_session_with_1001() {
    let (ctx, mut c) = connect(config()).await;
    send(&mut c, json!(["1", "1", STREAM, "phx_join", {}])).await;
    assert_eq!(next(&mut c).await[4]["status"], "ok");
    ctx.stop.cancel();
    let (code, _) = closed(&mut c).await;
    assert_eq!(CloseCode::from(code), CloseCode::Away);
    wait_until(|| ctx.registry.totals().memberships == 0).await;
}

/// Polls (in paused time) until `done` holds, for at most a virtual minute.
async fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Memory is what bounds the sockets a node holds, and a socket's task is
/// most of it: tokio rounds the task up to 128 bytes and the allocator to
/// its size class, so a future past ~780 bytes costs the next class (1,024
/// bytes rather than 896 per socket), and one that keeps its arguments
/// twice costs 1,536.
#[tokio::test]
async fn a_sockets_task_stays_small() {
    let ctx = Ctx::assemble(Config::default(), 100).expect("a single-node context");
    let (server, _client) = UnixStream::pair().expect("a socket pair");
    let slot = ctx.registry.try_open_socket(100, None).expect("a slot");
    let opening = Opening {
        vsn: Vsn::V2,
        slot,
        identity: None,
    };
    let task = ctx
        .tasks
        .track_future(run(ctx.clone(), server, Vec::new(), opening));
    let size = std::mem::size_of_val(&task);
    assert!(size <= 780, "a socket's future is {size} bytes");
}
