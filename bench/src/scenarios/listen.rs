//! A socket that only listens once it has joined: it reads its pushes until
//! told to stop, sending a heartbeat meanwhile. `bench occupancy`'s
//! watchers and `bench presence`'s members are such sockets; what each does
//! with a frame, and with what a batch of frames found, is its own.

use crate::client::{Ws, HEARTBEAT, OP_CLOSE};
use std::time::Duration;
use tokio::sync::watch;

/// What a listening socket does with what it reads.
pub(super) trait Listener {
    /// One frame other than a close.
    fn frame(&mut self, op: u8, data: &[u8]);
    /// After each batch of frames (the first: those read along with the
    /// join reply), and after each heartbeat.
    fn batch(&mut self);
}

/// How the listening ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Told to stop: the socket was closed, or had closed after the word.
    Stopped,
    /// The socket closed, or failed, before the end.
    Gone,
}

enum Step {
    Read(bool),
    Beat,
    Stop,
}

/// Listens on `ws` until `stop` is set (then sends a close frame) or the
/// socket goes. `shrink_over`: after each batch, a read buffer grown past
/// this many bytes (a big push) is let go.
pub(super) async fn listen(
    ws: &mut Ws,
    listener: &mut impl Listener,
    heartbeat: Duration,
    stop: &mut watch::Receiver<bool>,
    shrink_over: Option<usize>,
) -> End {
    let mut beat = tokio::time::interval(heartbeat);
    beat.tick().await;
    let mut closed = false;
    let mut step = match ws.drain_buffered(&mut |op, d| sort(listener, &mut closed, op, d)) {
        Ok(()) => Step::Read(true),
        Err(_) => Step::Read(false),
    };
    loop {
        listener.batch();
        match step {
            Step::Read(true) if !closed => {}
            Step::Read(_) => {
                return if *stop.borrow() {
                    End::Stopped
                } else {
                    End::Gone
                };
            }
            Step::Beat => {
                if ws.send_text(HEARTBEAT).await.is_err() {
                    return End::Gone;
                }
            }
            Step::Stop => {
                let _ = ws.send_close().await;
                return End::Stopped;
            }
        }
        step = {
            let mut on = |op: u8, d: &[u8]| sort(listener, &mut closed, op, d);
            tokio::select! {
                r = ws.read_batch(&mut on) => Step::Read(r.unwrap_or(false)),
                _ = beat.tick() => Step::Beat,
                _ = stop.changed() => Step::Stop,
            }
        };
        if let Some(limit) = shrink_over {
            ws.shrink_read_buffer(limit);
        }
    }
}

/// A close frame ends the listening; any other goes to the listener.
fn sort(listener: &mut impl Listener, closed: &mut bool, op: u8, data: &[u8]) {
    if op == OP_CLOSE {
        *closed = true;
    } else {
        listener.frame(op, data);
    }
}
