//! One socket's bounded outbound queue. Producers (its own session, the hub's
//! fan-out, the stats timers) `push` encoded frames without waiting; a push
//! that finds the queue full marks the socket a slow consumer instead of
//! growing memory. The queue holds no allocation while it is empty.

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
    close: Option<CloseReason>,
}

pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
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
        if state.queue.len() >= self.capacity {
            state.close = Some(CloseReason::SlowConsumer);
            state.queue = VecDeque::new();
            drop(state);
            self.notify.notify_one();
            return false;
        }
        let wake = state.queue.is_empty();
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
        let o = Outbox::new(2);
        assert!(o.push(Bytes::from_static(b"a")));
        assert!(o.push(Bytes::from_static(b"b")));
        assert!(!o.push(Bytes::from_static(b"c")));
        let (q, close) = o.take();
        assert!(q.is_empty());
        assert_eq!(close, Some(CloseReason::SlowConsumer));
        assert!(!o.push(Bytes::from_static(b"d")));
    }
}
