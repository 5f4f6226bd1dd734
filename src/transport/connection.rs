//! One WebSocket connection's reading side over the raw socket handed over
//! after the 101 (by `upgrade`, or by hyper) — bytes in → whole messages —
//! and its closing handshake. It knows nothing of Phoenix; the session
//! above it gets decoded messages. Frames out go through the socket's
//! outbox (`crate::outbox`), which shares the socket and writes into it
//! directly.
//!
//! Memory is what limits how many sockets a node holds, so an idle
//! connection keeps no buffer: reads go through a stack buffer and only an
//! incomplete frame is kept.

use super::codec::{self, Decoder, Violation, WsMessage};
use crate::outbox::{Outbox, Wire};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{Interest, Ready};
use tokio::time::Instant;

/// How long a closing connection may take to flush its goodbye and hear
/// the peer's.
const LINGER: Duration = Duration::from_secs(3);
const READ_CHUNK: usize = 8192;

/// A socket a connection can run over: readiness plus non-blocking reads
/// and writes (a TCP stream in the server, a Unix socket pair in tests).
pub trait Socket: Wire + AsRawFd + Send + Sync + 'static {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
}

macro_rules! socket_impl {
    ($t:ty) => {
        impl Socket for $t {
            fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$t>::readable(self)
            }
            fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$t>::writable(self)
            }
            fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send {
                <$t>::ready(self, interest)
            }
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::try_read(self, buf)
            }
        }
    };
}

socket_impl!(tokio::net::TcpStream);
socket_impl!(tokio::net::UnixStream);

/// Why reading stopped for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// EOF or a reset: the peer is gone.
    Gone,
    /// The peer broke RFC 6455; close with this code.
    Violation(Violation),
}

/// How a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodbye {
    /// The peer vanished: nothing more can be said.
    Silent,
    /// Send a close frame with this code and reason.
    Close(u16, &'static str),
    /// As `Close`, but first drop the whole frames still queued behind the
    /// one being written (a slow consumer gets its close code next).
    CloseNow(u16, &'static str),
}

pub struct Connection<S> {
    stream: Arc<S>,
    decoder: Decoder,
}

impl<S: Socket> Connection<S> {
    pub fn new(stream: S) -> Connection<S> {
        Connection {
            stream: Arc::new(stream),
            decoder: Decoder::default(),
        }
    }

    /// The socket, for the outbox to write into.
    pub fn wire(&self) -> Arc<dyn Wire> {
        self.stream.clone()
    }

    /// Resolves when there may be bytes to read or, with `also_writable`
    /// (only worth it while the outbox has a backlog), when the kernel
    /// takes bytes again. One readiness future for both, so a socket's task
    /// carries one and not two.
    pub fn ready(
        &self,
        also_writable: bool,
    ) -> impl Future<Output = io::Result<Ready>> + Send + '_ {
        let interest = if also_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.stream.ready(interest)
    }

    /// Reads what the kernel holds and calls `on` for every complete
    /// message until it returns false. `Ok(true)` when bytes arrived.
    pub fn read(
        &mut self,
        max: usize,
        on: &mut dyn FnMut(WsMessage<'_>) -> bool,
    ) -> Result<bool, ReadError> {
        let mut buf = [0u8; READ_CHUNK];
        match self.stream.try_read(&mut buf) {
            Ok(0) => Err(ReadError::Gone),
            Ok(n) => {
                self.feed(&mut buf[..n], max, on)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(_) => Err(ReadError::Gone),
        }
    }

    /// Decodes bytes read elsewhere (what the upgrade, direct or through
    /// hyper, read past the handshake).
    pub fn feed(
        &mut self,
        bytes: &mut [u8],
        max: usize,
        on: &mut dyn FnMut(WsMessage<'_>) -> bool,
    ) -> Result<(), ReadError> {
        self.decoder
            .feed(bytes, max, on)
            .map_err(ReadError::Violation)
    }

    /// Writes the close frame (after what `outbox` still holds), then waits
    /// briefly for the peer to close so the kernel does not reset the
    /// connection.
    pub async fn goodbye(self, outbox: &Outbox, goodbye: Goodbye) {
        let (code, reason, drop_backlog) = match goodbye {
            Goodbye::Silent => return,
            Goodbye::Close(code, reason) => (code, reason, false),
            Goodbye::CloseNow(code, reason) => (code, reason, true),
        };
        outbox.finish(codec::close_frame(code, reason), drop_backlog);
        let deadline = Instant::now() + LINGER;
        loop {
            match outbox.flush() {
                Ok(true) => break,
                Ok(false) => {}
                Err(_) => return,
            }
            match tokio::time::timeout_at(deadline, self.stream.writable()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        // Half-close: the peer sees the end of our side and closes its own.
        // SAFETY: shutdown only acts on this socket's own descriptor, which
        // the Arc keeps open.
        unsafe {
            libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_WR);
        }
        let mut sink = [0u8; 512];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.readable()).await {
                Ok(Ok(())) => match self.stream.try_read(&mut sink) {
                    Ok(n) if n > 0 => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    _ => return,
                },
                _ => return,
            }
        }
    }
}
