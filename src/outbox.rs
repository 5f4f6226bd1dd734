//! One socket's bounded outbound queue. Producers (its own session, the
//! registry's fan-out, the stats timers) `push` encoded frames without
//! waiting; a push that finds the queue full — in messages or in bytes —
//! marks the socket a slow consumer instead of growing memory. The queue
//! holds no allocation while it is empty.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Why the server is closing a socket from outside its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    SlowConsumer,
    Shutdown,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Bytes>,
    /// Bytes of the frames in `queue`.
    bytes: usize,
    close: Option<CloseReason>,
}

pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: u32,
    max_bytes: u32,
}

impl Outbox {
    /// At most `capacity` frames and `max_bytes` bytes queued.
    pub fn new(capacity: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX).max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the queue inconsistent: every
        // critical section is a single push or take.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one encoded text frame. Returns false when the socket is
    /// closing or has just been found too slow (then it is closed 1008).
    pub fn push(&self, frame: Bytes) -> bool {
        let mut state = self.lock();
        if state.close.is_some() {
            return false;
        }
        let full = state.queue.len() >= self.capacity as usize
            || state.bytes + frame.len() > self.max_bytes as usize;
        if full {
            state.close = Some(CloseReason::SlowConsumer);
            state.queue = VecDeque::new();
            state.bytes = 0;
            drop(state);
            self.notify.notify_one();
            return false;
        }
        let wake = state.queue.is_empty();
        state.bytes += frame.len();
        state.queue.push_back(frame);
        drop(state);
        if wake {
            self.notify.notify_one();
        }
        true
    }

    /// Asks the session to close the socket.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(reason);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// Takes everything queued, and the close request if there is one.
    pub fn take(&self) -> (VecDeque<Bytes>, Option<CloseReason>) {
        let mut state = self.lock();
        state.bytes = 0;
        (std::mem::take(&mut state.queue), state.close)
    }

    /// The close request, if any, leaving queued frames where they are.
    pub fn close_requested(&self) -> Option<CloseReason> {
        self.lock().close
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when something was pushed or a close was requested.
    pub async fn ready(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_marks_slow_consumer_and_drops_backlog() {
        let o = Outbox::new(2, 1000);
        assert!(o.push(Bytes::from_static(b"a")));
        assert!(o.push(Bytes::from_static(b"b")));
        assert!(!o.push(Bytes::from_static(b"c")));
        let (q, close) = o.take();
        assert!(q.is_empty());
        assert_eq!(close, Some(CloseReason::SlowConsumer));
        assert!(!o.push(Bytes::from_static(b"d")));
    }

    #[test]
    fn too_many_queued_bytes_is_a_slow_consumer_too() {
        let o = Outbox::new(100, 10);
        assert!(o.push(Bytes::from_static(b"12345")));
        assert!(o.push(Bytes::from_static(b"12345")));
        let (q, _) = o.take();
        assert_eq!(q.len(), 2, "taking empties the byte count");
        assert!(o.push(Bytes::from_static(b"1234567890")));
        assert!(!o.push(Bytes::from_static(b"1")));
        assert_eq!(o.take().1, Some(CloseReason::SlowConsumer));
    }
}
