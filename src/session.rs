//! One socket's life, in one task: reading and decoding its frames, running
//! its joins and leaves, answering its requests, writing what its outbox
//! holds, and closing it. The session owns its memberships; when it ends,
//! for whatever reason, dropping them counts them down.
//!
//! Memory is what limits how many sockets a node holds, so an idle session
//! keeps no buffers: reads go through a stack buffer and only an incomplete
//! frame is kept; writes go through a per-thread scratch buffer and only
//! bytes the kernel would not take yet are kept.

use crate::channels::{self, Channel, Handled};
use crate::context::{Ctx, Registration};
use crate::hub::Subscription;
use crate::metrics::{FrameRejection, JoinRejection};
use crate::outbox::{CloseReason, Outbox};
use crate::protocol::{self, reason, Inbound, JsonRef, Malformed, Vsn};
use crate::tally::{Membership, SocketSlot};
use crate::transport::codec::{self, close, Decoder, WsMessage};
use bytes::Bytes;
use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a closing socket may take to flush its goodbye and hear the peer's.
const LINGER: Duration = Duration::from_secs(3);
const READ_CHUNK: usize = 8192;

thread_local! {
    /// Frames for one write are assembled here, so sockets own no write buffer.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How the session ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The peer vanished (EOF, reset): nothing more can be said.
    Gone,
    /// The peer sent a close frame: echo its code.
    PeerClose(Option<u16>),
    /// This server closes with a code and a reason.
    Close(u16, &'static str),
}

impl End {
    /// A short reason for the logs.
    fn describe(self) -> &'static str {
        match self {
            End::Gone => "connection lost",
            End::PeerClose(_) => "closed by client",
            End::Close(_, why) => why,
        }
    }
}

/// One membership: the join_ref it was made with, and the values whose drop
/// ends it in the tally and in the hub.
struct Joined {
    join_ref: JsonRef,
    channel: Channel,
    membership: Membership,
    _subscription: Subscription,
}

struct Session {
    ctx: Arc<Ctx>,
    vsn: Vsn,
    outbox: Arc<Outbox>,
    joined: Vec<Joined>,
    pongs: Vec<Bytes>,
    last_seen: Instant,
    end: Option<End>,
    registration: Registration,
    _slot: SocketSlot,
}

/// Runs a socket from just after its 101 response until it is closed.
/// `prelude` holds bytes the HTTP layer had already read past the handshake.
pub async fn run(ctx: Arc<Ctx>, stream: TcpStream, prelude: Vec<u8>, vsn: Vsn, slot: SocketSlot) {
    let outbox = Arc::new(Outbox::new(ctx.config.outbound_queue));
    let registration = ctx.register(outbox.clone());
    if ctx.draining() {
        outbox.close(CloseReason::Shutdown);
    }
    let idle = Duration::from_millis(ctx.config.idle_timeout_ms);
    tracing::debug!(
        node = %ctx.config.node,
        socket_id = registration.id(),
        "socket opened"
    );
    let mut s = Session {
        ctx,
        vsn,
        outbox,
        joined: Vec::new(),
        pongs: Vec::new(),
        last_seen: Instant::now(),
        end: None,
        registration,
        _slot: slot,
    };
    let mut decoder = Decoder::default();
    let mut pending = Pending::default();
    {
        let mut bytes = prelude;
        if !bytes.is_empty() {
            s.feed(&mut decoder, &mut bytes);
        }
    }
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    loop {
        if s.end.is_none() {
            if let Err(_e) = s.flush(&stream, &mut pending) {
                s.end = Some(End::Gone);
            }
        }
        if s.end.is_some() {
            break;
        }
        tokio::select! {
            biased;
            _ = s.outbox.ready() => {}
            ready = stream.readable() => match ready {
                Ok(()) => s.read(&stream, &mut decoder),
                Err(_) => s.end = Some(End::Gone),
            },
            ready = stream.writable(), if !pending.is_empty() => match ready {
                Ok(()) => {
                    if pending.write_some(&stream).is_err() {
                        s.end = Some(End::Gone);
                    }
                }
                Err(_) => s.end = Some(End::Gone),
            },
            _ = &mut sleep => {
                let deadline = s.last_seen + idle;
                if Instant::now() >= deadline {
                    s.ctx.metrics.idle_timeouts.increment(1);
                    s.end = Some(End::Close(close::NORMAL, "idle timeout"));
                } else {
                    sleep.as_mut().reset(deadline);
                }
            }
        }
    }
    let end = s.end.unwrap_or(End::Gone);
    if tracing::enabled!(tracing::Level::DEBUG) {
        for j in &s.joined {
            s.log_left(j.membership.topic(), "close");
        }
        tracing::debug!(
            node = %s.ctx.config.node,
            socket_id = s.registration.id(),
            reason = end.describe(),
            memberships = s.joined.len(),
            "socket closed"
        );
    }
    // Every membership and the socket itself stop counting here, before any
    // goodbye is written.
    drop(s);
    // Boxed: its buffers and timers would otherwise be part of every
    // socket's future for the socket's whole life.
    Box::pin(goodbye(stream, pending, end)).await;
}

/// Writes the close frame (after what is still pending), then waits briefly
/// for the peer to close so the kernel does not reset the connection.
async fn goodbye(stream: TcpStream, mut pending: Pending, end: End) {
    let frame = match end {
        End::Gone => return,
        End::PeerClose(Some(code)) => (code, ""),
        End::PeerClose(None) => (close::NORMAL, ""),
        End::Close(code, why) => (code, why),
    };
    if frame.0 == close::POLICY {
        // A slow consumer gets its close code next, not after the backlog.
        pending.drop_whole_frames();
    }
    codec::write_close(&mut pending.bytes, frame.0, frame.1);
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
    let mut stream = stream;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
    let mut sink = [0u8; 512];
    loop {
        match tokio::time::timeout_at(
            deadline,
            tokio::io::AsyncReadExt::read(&mut stream, &mut sink),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => continue,
            _ => return,
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
    fn write_some(&mut self, stream: &TcpStream) -> io::Result<()> {
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

impl Session {
    fn read(&mut self, stream: &TcpStream, decoder: &mut Decoder) {
        let mut buf = [0u8; READ_CHUNK];
        match stream.try_read(&mut buf) {
            Ok(0) => self.end = Some(End::Gone),
            Ok(n) => {
                self.last_seen = Instant::now();
                self.feed(decoder, &mut buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.end = Some(End::Gone),
        }
    }

    fn feed(&mut self, decoder: &mut Decoder, bytes: &mut [u8]) {
        let max = self.ctx.config.max_frame_bytes;
        if let Err(v) = decoder.feed(bytes, max, &mut |m| self.on_message(m)) {
            let why = match v.code {
                close::TOO_BIG => FrameRejection::TooLarge,
                close::INVALID_DATA => FrameRejection::InvalidUtf8,
                _ => FrameRejection::Protocol,
            };
            self.ctx.metrics.frame_rejected(why);
            self.end = Some(End::Close(v.code, v.reason));
        }
    }

    fn on_message(&mut self, message: WsMessage<'_>) -> bool {
        match message {
            WsMessage::Text(text) => self.inbound(protocol::decode_text(self.vsn, text)),
            WsMessage::Binary(data) => self.inbound(protocol::decode_binary(self.vsn, data)),
            WsMessage::Ping(data) => {
                if self.pongs.len() < 16 {
                    self.pongs.push(Bytes::copy_from_slice(data));
                }
            }
            WsMessage::Pong => {}
            WsMessage::Close(code) => self.end = Some(End::PeerClose(code)),
        }
        self.end.is_none()
    }

    fn inbound(&mut self, decoded: Result<Inbound, Malformed>) {
        match decoded {
            Ok(message) => self.dispatch(message),
            Err(bad) => {
                self.ctx.metrics.frame_rejected(FrameRejection::Malformed);
                if let (Some(topic), Some(reference)) = (bad.topic, bad.reference) {
                    let body = reason("malformed message");
                    self.reply(bad.join_ref.as_ref(), &reference, &topic, false, &body);
                }
            }
        }
    }

    fn dispatch(&mut self, m: Inbound) {
        if m.topic == "phoenix" && m.event == "heartbeat" {
            self.reply(m.join_ref.as_ref(), &m.reference, &m.topic, true, "{}");
            return;
        }
        if m.event == "phx_join" {
            self.join(m);
            return;
        }
        let Some(i) = self.position(&m.topic) else {
            if m.event == "phx_leave" {
                self.reply(m.join_ref.as_ref(), &m.reference, &m.topic, true, "{}");
            } else {
                let body = reason("unmatched topic");
                self.reply(m.join_ref.as_ref(), &m.reference, &m.topic, false, &body);
            }
            return;
        };
        if let Some(join_ref) = &m.join_ref {
            if !join_ref.is_null() && *join_ref != self.joined[i].join_ref {
                return; // a message for an earlier membership of this topic
            }
        }
        if m.event == "phx_leave" {
            let old = self.joined.swap_remove(i);
            let old_ref = old.join_ref.clone();
            drop(old);
            self.log_left(&m.topic, "leave");
            self.reply(m.join_ref.as_ref(), &m.reference, &m.topic, true, "{}");
            self.push_close(&m.topic, &old_ref);
            return;
        }
        let (channel, join_ref) = (self.joined[i].channel, self.joined[i].join_ref.clone());
        match channels::handle(&self.ctx, channel, &m.topic, &m.event, &m.payload) {
            Handled::Now(answer) => {
                self.reply(
                    m.join_ref.as_ref(),
                    &m.reference,
                    &m.topic,
                    answer.ok,
                    &answer.body,
                );
                if let Some(event) = answer.push {
                    self.push(Some(&join_ref), &m.topic, event, &answer.body);
                }
            }
            Handled::Later(work) => {
                let (outbox, vsn) = (self.outbox.clone(), self.vsn);
                tokio::spawn(async move {
                    let answer = work.await;
                    let reply = protocol::encode_reply(
                        vsn,
                        m.join_ref.as_ref(),
                        &m.reference,
                        &m.topic,
                        answer.ok,
                        &answer.body,
                    );
                    outbox.push(reply);
                    if let Some(event) = answer.push {
                        outbox.push(protocol::encode(
                            vsn,
                            Some(&join_ref),
                            None,
                            &m.topic,
                            event,
                            &answer.body,
                        ));
                    }
                });
            }
        }
    }

    fn join(&mut self, m: Inbound) {
        let ctx = self.ctx.clone();
        let Some(channel) = channels::route(&ctx, &m.topic) else {
            ctx.metrics.join_rejected(JoinRejection::UnmatchedTopic);
            let body = reason("unmatched topic");
            self.reply(m.join_ref.as_ref(), &m.reference, &m.topic, false, &body);
            return;
        };
        // A second join of the same topic ends the first membership first.
        if let Some(i) = self.position(&m.topic) {
            let old = self.joined.swap_remove(i);
            let old_ref = old.join_ref.clone();
            drop(old);
            self.log_left(&m.topic, "rejoin");
            self.push_close(&m.topic, &old_ref);
        }
        let tag = match channels::params(&m.payload).and_then(|p| channels::join(channel, &p)) {
            Ok(tag) => tag,
            Err(refusal) => {
                ctx.metrics.join_rejected(refusal.metric);
                self.reply(
                    m.join_ref.as_ref(),
                    &m.reference,
                    &m.topic,
                    false,
                    &refusal.reason,
                );
                return;
            }
        };
        if self.joined.len() >= ctx.config.max_channels_per_socket {
            ctx.metrics.join_rejected(JoinRejection::TooManyChannels);
            let body = reason("too many channels joined");
            self.reply(m.join_ref.as_ref(), &m.reference, &m.topic, false, &body);
            return;
        }
        let join_ref = m.join_ref.clone().unwrap_or_else(|| m.reference.clone());
        let membership = ctx.tally.join(&m.topic);
        tracing::debug!(
            node = %ctx.config.node,
            socket_id = self.registration.id(),
            topic = %m.topic,
            "joined"
        );
        self.reply(m.join_ref.as_ref(), &m.reference, &m.topic, true, "{}");
        let subscription = ctx.hub.subscribe(
            membership.topic().clone(),
            self.registration.id(),
            self.outbox.clone(),
            self.vsn,
            tag,
        );
        if let Some((event, payload)) = channels::after_join(&ctx, channel) {
            self.push(Some(&join_ref), &m.topic, event, &payload);
        }
        if self.joined.len() == self.joined.capacity() {
            self.joined.reserve_exact(1);
        }
        self.joined.push(Joined {
            join_ref,
            channel,
            membership,
            _subscription: subscription,
        });
    }

    /// The debug line of a membership that ended; `reason` is `leave`,
    /// `rejoin` (replaced by a second join) or `close` (its socket closed).
    fn log_left(&self, topic: &str, reason: &'static str) {
        tracing::debug!(
            node = %self.ctx.config.node,
            socket_id = self.registration.id(),
            topic = %topic,
            reason,
            "left"
        );
    }

    fn position(&self, topic: &str) -> Option<usize> {
        self.joined
            .iter()
            .position(|j| &**j.membership.topic() == topic)
    }

    fn reply(
        &self,
        join_ref: Option<&JsonRef>,
        reference: &JsonRef,
        topic: &str,
        ok: bool,
        body: &str,
    ) {
        self.outbox.push(protocol::encode_reply(
            self.vsn, join_ref, reference, topic, ok, body,
        ));
    }

    fn push(&self, join_ref: Option<&JsonRef>, topic: &str, event: &str, payload: &str) {
        self.outbox.push(protocol::encode(
            self.vsn, join_ref, None, topic, event, payload,
        ));
    }

    /// `phx_close` for a membership that ended: V2 carries the join_ref as
    /// both refs, V1 as its ref (as Phoenix does).
    fn push_close(&self, topic: &str, join_ref: &JsonRef) {
        self.outbox.push(protocol::encode(
            self.vsn,
            Some(join_ref),
            Some(join_ref),
            topic,
            "phx_close",
            "{}",
        ));
    }

    /// Writes what the outbox holds, or notes a close it asks for.
    fn flush(&mut self, stream: &TcpStream, pending: &mut Pending) -> io::Result<()> {
        if !pending.is_empty() {
            // The kernel is still full: leave new frames queued (so a peer
            // that never reads fills its queue) but notice a close request.
            if let Some(reason) = self.outbox.close_requested() {
                self.close_for(reason);
            }
            return Ok(());
        }
        let (queue, close) = self.outbox.take();
        if let Some(reason) = close {
            self.close_for(reason);
            if reason == CloseReason::SlowConsumer {
                return Ok(());
            }
        }
        if queue.is_empty() && self.pongs.is_empty() {
            return Ok(());
        }
        self.ctx
            .metrics
            .queue_depth(queue.len(), &self.ctx.queue_high_water);
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            for pong in self.pongs.drain(..) {
                codec::write_frame(&mut buf, codec::OP_PONG, &pong);
            }
            for frame in &queue {
                codec::write_frame(&mut buf, codec::OP_TEXT, frame);
            }
            let mut at = 0;
            let result = loop {
                if at == buf.len() {
                    break Ok(());
                }
                match stream.try_write(&buf[at..]) {
                    Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => at += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        pending.keep(&buf, at);
                        break Ok(());
                    }
                    Err(e) => break Err(e),
                }
            };
            if buf.capacity() > 1 << 20 {
                *buf = Vec::new();
            }
            result
        })?;
        self.pongs = Vec::new();
        Ok(())
    }

    fn close_for(&mut self, reason: CloseReason) {
        self.end = Some(match reason {
            CloseReason::SlowConsumer => {
                self.ctx.metrics.slow_consumer_closes.increment(1);
                End::Close(close::POLICY, "slow consumer")
            }
            CloseReason::Shutdown => End::Close(close::GOING_AWAY, "server shutting down"),
        });
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
