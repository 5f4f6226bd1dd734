//! A worker's share of `bench hold`: open its sockets, keep them alive with
//! heartbeats until told to stop, then count those still open.

use super::open::{open_many, topic};
use super::{Command, Event, Link, Outcome, WorkerSpec};
use crate::client::{self, HEARTBEAT, OP_CLOSE, OP_TEXT};
use std::time::Duration;

pub(super) async fn run(spec: &WorkerSpec, link: &mut Link) -> Result<Outcome, String> {
    let k = spec.topics.max(1);
    let per = spec.topics_per_socket.max(1);
    let (held, setup) = open_many(
        spec,
        |g| (0..per).map(|j| topic(spec, (g * per + j) % k)).collect(),
        &link.progress,
    )
    .await;
    let _ = link.events.send(Event::Ready(setup));
    let mut frame = Vec::new();
    client::encode_client_frame(&mut frame, OP_TEXT, HEARTBEAT.as_bytes());
    let mut beat = tokio::time::interval(Duration::from_millis(spec.heartbeat_ms.max(1000)));
    beat.tick().await;
    loop {
        tokio::select! {
            c = link.commands.recv() => match c {
                Some(Command::Go) => continue,
                Some(Command::Stop) | None => break,
            },
            _ = beat.tick() => {
                for ws in &held {
                    let _ = ws.stream.try_write(&frame);
                }
                // Read the heartbeat replies so the kernel buffers stay small.
                let mut sink = [0u8; 512];
                for ws in &held {
                    while let Ok(n) = ws.stream.try_read(&mut sink) {
                        if n == 0 { break; }
                    }
                }
            }
        }
    }
    let mut alive = 0;
    let mut sink = [0u8; 512];
    let mut close = Vec::new();
    client::encode_client_frame(&mut close, OP_CLOSE, &1000u16.to_be_bytes());
    for ws in &held {
        let open = loop {
            match ws.stream.try_read(&mut sink) {
                Ok(0) => break false,
                Ok(n) => {
                    if sink[..n].contains(&(0x80 | OP_CLOSE)) && n <= 130 {
                        break false;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        };
        if open {
            alive += 1;
            let _ = ws.stream.try_write(&close);
        }
    }
    // Give the server a moment to read the close frames before the resets.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(held);
    Ok(Outcome {
        alive,
        ..Outcome::default()
    })
}
