//! One socket's way out. Producers (its own session, the registry's
//! fan-out, the stats timers) `push` whole WebSocket frames without waiting.
//! When nothing is waiting for the socket, a push writes the frame straight
//! into it from the producer's thread — one non-blocking write, no task
//! woken — and only a frame the kernel will not take (or take whole) is
//! queued for the session, which writes the queue when the socket is
//! writable again. All writes to the socket go through here, under one
//! lock, so frames never interleave.
//!
//! The queue is bounded in frames and in bytes: a push that finds it full
//! marks the socket a slow consumer instead of growing memory. It holds no
//! allocation while it is empty.

use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::Interest;
use tokio::sync::Notify;

/// Most frames handed to the kernel in one write.
const WRITE_BATCH: usize = 64;

/// Why the server is closing a socket from outside its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    SlowConsumer,
    Shutdown,
    /// A write failed: the peer is gone.
    Broken,
}

/// A socket frames can be written into without waiting.
pub trait Wire: Send + Sync {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// One buffer: the common case of a frame written as it comes.
    fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write_vectored(&[IoSlice::new(buf)])
    }
}

/// `send(2)` rather than `writev(2)`: a fan-out makes one of these per
/// subscriber, and the socket call skips the file layer's work (a tenth of
/// the kernel's time per small frame). Through `try_io`, so that the
/// runtime learns when the socket is full.
fn send(socket: &(impl AsRawFd + ?Sized), buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes for the whole call, and
    // the descriptor is the caller's own open socket.
    let n = unsafe {
        libc::send(
            socket.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

macro_rules! wire_impl {
    ($t:ty) => {
        impl Wire for $t {
            fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
                <$t>::try_write_vectored(self, bufs)
            }

            fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
                self.try_io(Interest::WRITABLE, || send(self, buf))
            }
        }
    };
}

wire_impl!(tokio::net::TcpStream);
wire_impl!(tokio::net::UnixStream);

#[derive(Default)]
struct State {
    /// Whole frames waiting for the socket.
    queue: VecDeque<Bytes>,
    /// Bytes of the frames in `queue`.
    bytes: usize,
    /// The rest of a frame the kernel took only in part: it goes first.
    partial: Bytes,
    close: Option<CloseReason>,
}

pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: u32,
    max_bytes: u32,
    /// Where frames are written; `None` keeps every frame queued (tests).
    wire: Option<Arc<dyn Wire>>,
}

/// One non-blocking write of `slices`; returns the bytes the kernel took.
fn write(wire: &dyn Wire, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        let written = match slices {
            [one] => wire.try_send(one),
            _ => wire.try_write_vectored(slices),
        };
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

impl State {
    /// Drops `n` written bytes from the front: `partial`, then whole
    /// frames, the last one perhaps in part.
    fn consume(&mut self, mut n: usize) {
        let from_partial = n.min(self.partial.len());
        self.partial.advance(from_partial);
        if self.partial.is_empty() {
            // An empty slice still holds its whole frame (a presence_state
            // of a megabyte, say) for as long as the socket lives.
            self.partial = Bytes::new();
        }
        n -= from_partial;
        while n > 0 {
            let Some(frame) = self.queue.pop_front() else {
                return;
            };
            self.bytes -= frame.len();
            if n < frame.len() {
                self.partial = frame.slice(n..);
                return;
            }
            n -= frame.len();
        }
    }

    fn backlog(&self) -> bool {
        !self.partial.is_empty() || !self.queue.is_empty()
    }
}

impl Outbox {
    /// A queue only: frames wait until taken (no socket to write into).
    pub fn new(capacity: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX).max(1),
            wire: None,
        }
    }

    /// At most `capacity` frames and `max_bytes` bytes queued for `wire`.
    pub fn with_wire(capacity: usize, max_bytes: usize, wire: Arc<dyn Wire>) -> Outbox {
        Outbox {
            wire: Some(wire),
            ..Outbox::new(capacity, max_bytes)
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one whole frame: written at once when nothing waits and the
    /// kernel takes it, else queued for the session. Returns false when the
    /// socket is closing or has just been found too slow (then it is closed
    /// 1008).
    pub fn push(&self, frame: Bytes) -> bool {
        let mut state = self.lock();
        if state.close.is_some() {
            return false;
        }
        if let Some(wire) = &self.wire {
            if !state.backlog() {
                match write(&**wire, &[IoSlice::new(&frame)]) {
                    Ok(n) => {
                        if n < frame.len() {
                            // The kernel took part of it: the session
                            // writes the rest when the socket is writable.
                            state.partial = frame.slice(n..);
                            drop(state);
                            self.notify.notify_one();
                        }
                        return true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return self.enqueue(state, frame);
                    }
                    Err(_) => {
                        state.close = Some(CloseReason::Broken);
                        drop(state);
                        self.notify.notify_one();
                        return false;
                    }
                }
            }
        }
        self.enqueue(state, frame)
    }

    /// Queues one whole frame for the session to write, with whatever else
    /// comes meanwhile, in one syscall (a busy topic's messages).
    pub fn push_later(&self, frame: Bytes) -> bool {
        let state = self.lock();
        if state.close.is_some() {
            return false;
        }
        self.enqueue(state, frame)
    }

    fn enqueue(&self, mut state: MutexGuard<'_, State>, frame: Bytes) -> bool {
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
        let wake = !state.backlog();
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

    /// The close request, if any.
    pub fn close_requested(&self) -> Option<CloseReason> {
        self.lock().close
    }

    /// Whether frames wait for the socket to be writable.
    pub fn has_backlog(&self) -> bool {
        self.lock().backlog()
    }

    /// Frames waiting (for the metrics).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Writes what waits, as much as the kernel takes now: `Ok(true)` when
    /// nothing is left.
    pub fn flush(&self) -> io::Result<bool> {
        let Some(wire) = &self.wire else {
            return Ok(!self.lock().backlog());
        };
        let mut state = self.lock();
        while state.backlog() {
            // On the stack: a busy socket flushes on every wakeup.
            let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
            let mut n = 0;
            if !state.partial.is_empty() {
                slices[0] = IoSlice::new(&state.partial);
                n = 1;
            }
            for frame in state.queue.iter().take(WRITE_BATCH - n) {
                slices[n] = IoSlice::new(frame);
                n += 1;
            }
            let written = write(&**wire, &slices[..n]);
            match written {
                Ok(n) => state.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        state.queue = VecDeque::new();
        Ok(true)
    }

    /// Queues the socket's last frame, past the bounds: after what waits,
    /// or (`drop_backlog`, a slow consumer's close) right after the frame
    /// in flight. Nothing can be pushed afterwards.
    pub fn finish(&self, last: Bytes, drop_backlog: bool) {
        let mut state = self.lock();
        if drop_backlog {
            state.queue.clear();
            state.bytes = 0;
        }
        state.bytes += last.len();
        state.queue.push_back(last);
        if state.close.is_none() {
            state.close = Some(CloseReason::Shutdown);
        }
    }

    /// Resolves when something was queued or a close was requested.
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Takes every queued frame and the close request (queue-only outboxes).
    #[cfg(test)]
    pub fn take(&self) -> (VecDeque<Bytes>, Option<CloseReason>) {
        let mut state = self.lock();
        state.bytes = 0;
        (std::mem::take(&mut state.queue), state.close)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// A socket that takes `room` more bytes, then would block.
    struct Kernel {
        room: Mutex<usize>,
        got: Mutex<Vec<u8>>,
    }

    impl Wire for Kernel {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(*room - n);
                self.got.lock().unwrap().extend_from_slice(&b[..take]);
                n += take;
                if n == *room {
                    break;
                }
            }
            *room -= n;
            Ok(n)
        }
    }

    #[test]
    fn frames_go_straight_out_until_the_kernel_is_full_then_in_order_from_the_queue() {
        let kernel = Arc::new(Kernel {
            room: Mutex::new(8),
            got: Mutex::default(),
        });
        let o = Outbox::with_wire(10, 1000, kernel.clone());
        assert!(o.push(Bytes::from_static(b"abc")));
        assert!(!o.has_backlog(), "written at once");
        assert!(o.push(Bytes::from_static(b"defgh!")), "in part");
        assert!(o.has_backlog());
        assert!(o.push(Bytes::from_static(b"ij")), "queued behind the rest");
        assert!(!o.flush().unwrap(), "the kernel is still full");
        *kernel.room.lock().unwrap() = 100;
        assert!(o.flush().unwrap());
        assert_eq!(&kernel.got.lock().unwrap()[..], b"abcdefgh!ij");
        assert!(o.push(Bytes::from_static(b"k")));
        assert_eq!(&kernel.got.lock().unwrap()[..], b"abcdefgh!ijk");
    }

    #[test]
    fn a_frame_written_in_part_is_let_go_once_its_rest_is_out() {
        /// Counts as alive (a strong count of `alive`) while the frame
        /// is held.
        struct Owner(#[allow(dead_code)] Arc<()>);
        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                b"a large presence_state"
            }
        }
        let alive = Arc::new(());
        let frame = Bytes::from_owner(Owner(alive.clone()));
        let kernel = Arc::new(Kernel {
            room: Mutex::new(5),
            got: Mutex::default(),
        });
        let o = Outbox::with_wire(10, 1000, kernel.clone());
        assert!(o.push(frame));
        assert!(o.has_backlog(), "in part");
        *kernel.room.lock().unwrap() = 100;
        assert!(o.flush().unwrap());
        assert_eq!(&kernel.got.lock().unwrap()[..], b"a large presence_state");
        assert_eq!(
            Arc::strong_count(&alive),
            1,
            "the socket still holds the frame"
        );
    }
}
