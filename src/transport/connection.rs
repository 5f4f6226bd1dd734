//! One WebSocket connection's I/O over a socket taken from hyper after the
//! upgrade: bytes in → whole messages, queued frames → one write, and the
//! closing handshake. It knows nothing of Phoenix; the session above it
//! gets decoded messages and hands it encoded frames.
//!
//! Memory is what limits how many sockets a node holds, so an idle
//! connection keeps no buffer: reads go through a stack buffer and only an
//! incomplete frame is kept; writes go through a per-thread scratch buffer
//! and only bytes the kernel would not take yet are kept.

use super::codec::{self, Decoder, Violation, WsMessage};
use bytes::Bytes;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How long a closing connection may take to flush its goodbye and hear
/// the peer's.
const LINGER: Duration = Duration::from_secs(3);
const READ_CHUNK: usize = 8192;

thread_local! {
    /// Frames for one write are assembled here, so connections own no
    /// write buffer.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A socket a connection can run over: readiness plus non-blocking reads
/// and writes (a TCP stream in the server, a Unix socket pair in tests).
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
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
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::try_read(self, buf)
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, buf)
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
    stream: S,
    decoder: Decoder,
    pending: Pending,
}

impl<S: Socket> Connection<S> {
    pub fn new(stream: S) -> Connection<S> {
        Connection {
            stream,
            decoder: Decoder::default(),
            pending: Pending::default(),
        }
    }

    /// Resolves when there may be bytes to read.
    pub fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        self.stream.readable()
    }

    /// Resolves when the kernel takes bytes again; only worth awaiting
    /// while `has_pending`.
    pub fn writable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        self.stream.writable()
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

    /// Decodes bytes read elsewhere (what hyper read past the handshake).
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

    /// Whether bytes wait for the kernel to take them.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes as much of what is pending as the kernel takes now.
    pub fn write_pending(&mut self) -> io::Result<()> {
        self.pending.write_some(&self.stream)
    }

    /// Writes pongs and text frames in one write; what the kernel does not
    /// take yet stays pending. Call only when nothing is pending.
    pub fn send<'a>(
        &mut self,
        pongs: &[Bytes],
        frames: impl IntoIterator<Item = &'a Bytes>,
    ) -> io::Result<()> {
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            for pong in pongs {
                codec::write_frame(&mut buf, codec::OP_PONG, pong);
            }
            for frame in frames {
                codec::write_frame(&mut buf, codec::OP_TEXT, frame);
            }
            let mut at = 0;
            let result = loop {
                if at == buf.len() {
                    break Ok(());
                }
                match self.stream.try_write(&buf[at..]) {
                    Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => at += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.pending.keep(&buf, at);
                        break Ok(());
                    }
                    Err(e) => break Err(e),
                }
            };
            if buf.capacity() > 1 << 20 {
                *buf = Vec::new();
            }
            result
        })
    }

    /// Writes the close frame (after what is still pending), then waits
    /// briefly for the peer to close so the kernel does not reset the
    /// connection.
    pub async fn goodbye(self, goodbye: Goodbye) {
        let Connection {
            mut stream,
            mut pending,
            ..
        } = self;
        let (code, reason) = match goodbye {
            Goodbye::Silent => return,
            Goodbye::Close(code, reason) => (code, reason),
            Goodbye::CloseNow(code, reason) => {
                pending.drop_whole_frames();
                (code, reason)
            }
        };
        codec::write_close(&mut pending.bytes, code, reason);
        let deadline = Instant::now() + LINGER;
        while !pending.is_empty() {
            match tokio::time::timeout_at(deadline, stream.writable()).await {
                Ok(Ok(())) => {
                    if pending.write_some(&stream).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 512];
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => return,
            }
        }
    }
}

/// Bytes the kernel has not taken yet. `cut` is where the frame that was
/// being written when the kernel filled up ends: everything after it is
/// whole frames, which a slow consumer's close may drop without corrupting
/// the stream.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    cut: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Keeps `buf[at..]`, where `buf` holds whole server frames from 0.
    fn keep(&mut self, buf: &[u8], at: usize) {
        let mut end = 0;
        while end < at {
            end += frame_len(&buf[end..]);
        }
        self.bytes.extend_from_slice(&buf[at..]);
        self.cut = end - at;
    }

    /// Drops the whole frames behind the partly written one.
    fn drop_whole_frames(&mut self) {
        self.bytes.truncate(self.cut);
    }

    /// Writes as much as the kernel takes now.
    fn write_some<S: Socket>(&mut self, stream: &S) -> io::Result<()> {
        let mut at = 0;
        let result = loop {
            if at == self.bytes.len() {
                break Ok(());
            }
            match stream.try_write(&self.bytes[at..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.bytes.drain(..at);
        self.cut = self.cut.saturating_sub(at);
        if self.bytes.is_empty() {
            self.bytes = Vec::new();
        }
        result
    }
}

/// Length of the server frame at the start of `buf` (header included).
fn frame_len(buf: &[u8]) -> usize {
    match buf.get(1).map(|b| b & 0x7F) {
        Some(126) if buf.len() >= 4 => 4 + usize::from(u16::from_be_bytes([buf[2], buf[3]])),
        Some(127) if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            10 + usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX / 2)
        }
        Some(n) if n < 126 => 2 + usize::from(n),
        _ => buf.len().max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_knows_where_the_partial_frame_ends() {
        let mut buf = Vec::new();
        codec::write_frame(&mut buf, codec::OP_TEXT, &[b'a'; 10]);
        codec::write_frame(&mut buf, codec::OP_TEXT, &[b'b'; 300]);
        codec::write_frame(&mut buf, codec::OP_TEXT, &[b'c'; 5]);
        let first = 12;
        let second = 4 + 300;
        let mut p = Pending::default();
        p.keep(&buf, first + 100);
        assert_eq!(p.cut, second - 100);
        p.drop_whole_frames();
        assert_eq!(p.bytes.len(), second - 100);
        let mut p = Pending::default();
        p.keep(&buf, first);
        assert_eq!(
            p.cut, 0,
            "a write that stopped on a boundary leaves no partial frame"
        );
    }
}
