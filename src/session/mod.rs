//! One socket's Phoenix protocol state, in one task: the decoded messages it
//! receives, its joins and leaves, its replies, its idle timer, and how it
//! ends. The transport below it (`transport::connection`) does the bytes;
//! the registry counts. The session owns its memberships: when it ends, for
//! whatever reason, dropping them counts them down.

use crate::auth::{self, Identity};
use crate::channels::{self, Channel};
use crate::context::Ctx;
use crate::limits::{self, Bucket};
use crate::metrics::{FrameRejection, JoinRejection};
use crate::outbox::{CloseReason, Outbox};
use crate::presence::{self, Tracked};
use crate::protocol::{self, reason, Inbound, JsonRef, Malformed, Vsn};
use crate::registry::{JoinError, Member, Membership, SocketSlot, JOINING};
use crate::transport::codec::{self, close, WsMessage};
use crate::transport::connection::{Connection, Goodbye, ReadError, Socket};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The close code of a socket whose token expired (SPEC §8.1).
const TOKEN_EXPIRED: u16 = 4001;

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

    fn goodbye(self) -> Goodbye {
        match self {
            End::Gone => Goodbye::Silent,
            End::PeerClose(code) => Goodbye::Close(code.unwrap_or(close::NORMAL), ""),
            // A slow consumer gets its close code next, not after the backlog.
            End::Close(close::POLICY, why) => Goodbye::CloseNow(close::POLICY, why),
            End::Close(code, why) => Goodbye::Close(code, why),
        }
    }
}

/// One membership: the join_ref it was made with, and the value whose drop
/// ends it.
struct Joined {
    join_ref: JsonRef,
    channel: Channel,
    /// The presence meta, on presence topics; dropped with the membership,
    /// just before it (fields drop in order), so that whoever the
    /// membership's end wakes (occupancy, the cluster writer) sees both.
    _presence: Option<Box<Tracked>>,
    membership: Membership,
}

/// What the upgrade settled for a new socket.
pub struct Opening {
    pub vsn: Vsn,
    pub slot: SocketSlot,
    /// Who the socket is, when it presented a token.
    pub identity: Option<Box<Identity>>,
}

struct Session {
    ctx: Arc<Ctx>,
    vsn: Vsn,
    outbox: Arc<Outbox>,
    joined: Vec<Joined>,
    last_seen: Instant,
    end: Option<End>,
    slot: SocketSlot,
    identity: Option<Box<Identity>>,
    messages: Bucket,
    joins: Bucket,
    /// Since when (µs, `limits::now_us`) inbound messages have been refused
    /// without a second's break, and when the last was; 0 when not.
    flooding_since: u64,
    last_refused: u64,
    /// When the socket's token stops being valid, if it has one.
    expires: Option<Instant>,
}

/// How long a socket may stay over `--max-messages-per-second` before it is
/// closed.
const FLOOD_LIMIT_US: u64 = 10_000_000;

/// Runs a socket from just after its 101 response until it is closed.
/// `prelude` holds bytes the HTTP layer had already read past the handshake.
///
/// The setup is done here, before the future is made: what a socket's task
/// holds for its whole life is only what `live` takes (an async fn keeps its
/// arguments for its whole life, and every byte here is paid per socket).
pub fn run<S: Socket>(
    ctx: Arc<Ctx>,
    stream: S,
    mut prelude: Vec<u8>,
    opening: Opening,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let Opening {
        vsn,
        slot,
        identity,
    } = opening;
    tracing::debug!(node = %ctx.config.node, socket_id = slot.id(), "socket opened");
    // The token's `exp` shares the idle timer: whichever comes first. To
    // the millisecond (not rounded to this second), and for a token past
    // its `exp` within the leeway, when the leeway ends (`closes_at`).
    let expires = identity.as_ref().and_then(|i| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i.closes_at(now)
            .map(|at| Instant::now() + at.saturating_sub(now))
    });
    let mut conn = Connection::new(stream);
    let mut s = Session {
        outbox: Arc::new(Outbox::with_wire(
            ctx.config.outbound_queue,
            ctx.config.outbound_queue_bytes,
            conn.wire(),
        )),
        ctx,
        vsn,
        joined: Vec::new(),
        last_seen: Instant::now(),
        end: None,
        slot,
        identity,
        messages: Bucket::default(),
        joins: Bucket::default(),
        flooding_since: 0,
        last_refused: 0,
        expires,
    };
    if !prelude.is_empty() {
        let max_frame = s.ctx.config.max_frame_bytes;
        let fed = conn.feed(&mut prelude, max_frame, &mut |m| s.on_message(m));
        s.read_failed(fed.err());
    }
    live(s, conn)
}

/// The socket's life: its task waits here. Not an `async fn`, whose
/// arguments would be kept twice in the future (as given and as moved into
/// its body): the block below uses `s` and `conn` where they were captured.
/// `a_sockets_task_stays_small` keeps it so.
#[allow(clippy::manual_async_fn)]
fn live<S: Socket>(
    mut s: Session,
    mut conn: Connection<S>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        let ctx = s.ctx.clone();
        let mut stopped = std::pin::pin!(ctx.stop.cancelled());
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(s.deadline()));
        loop {
            if s.end.is_none() {
                if let Some(reason) = s.outbox.close_requested() {
                    s.close_for(reason);
                }
            }
            if s.end.is_some() {
                break;
            }
            tokio::select! {
                biased;
                _ = s.outbox.ready() => s.flush(),
                ready = conn.ready(s.outbox.has_backlog()) => match ready {
                    Ok(ready) => {
                        if ready.is_writable() && s.outbox.has_backlog() {
                            s.flush();
                        }
                        if ready.is_readable() && s.end.is_none() {
                            let max_frame = s.ctx.config.max_frame_bytes;
                            let read = conn.read(max_frame, &mut |m| s.on_message(m));
                            match read {
                                Ok(true) => s.last_seen = Instant::now(),
                                Ok(false) => {}
                                Err(e) => s.read_failed(Some(e)),
                            }
                        }
                    }
                    Err(_) => s.end = Some(End::Gone),
                },
                _ = &mut sleep => {
                    let now = Instant::now();
                    if s.expires.is_some_and(|e| now >= e) {
                        s.ctx.metrics.token_expiries.increment(1);
                        s.end = Some(End::Close(TOKEN_EXPIRED, "token expired"));
                    } else if now >= s.last_seen + s.idle() {
                        s.ctx.metrics.idle_timeouts.increment(1);
                        s.end = Some(End::Close(close::NORMAL, "idle timeout"));
                    } else {
                        sleep.as_mut().reset(s.deadline());
                    }
                }
                _ = &mut stopped => s.close_for(CloseReason::Shutdown),
            }
        }
        let end = s.end.unwrap_or(End::Gone);
        if tracing::enabled!(tracing::Level::DEBUG) {
            for j in &s.joined {
                s.log_left(j.membership.topic(), "close");
            }
            tracing::debug!(
                node = %s.ctx.config.node,
                socket_id = s.slot.id(),
                reason = end.describe(),
                memberships = s.joined.len(),
                "socket closed"
            );
        }
        // Every membership and the socket itself stop counting here, before any
        // goodbye is written.
        let outbox = s.outbox.clone();
        drop(s);
        // Boxed: its timers would otherwise be part of every socket's future
        // for the socket's whole life.
        Box::pin(conn.goodbye(&outbox, end.goodbye())).await;
    }
}

impl Session {
    fn idle(&self) -> Duration {
        Duration::from_millis(self.ctx.config.idle_timeout_ms)
    }

    /// When the idle timer or the token's end closes the socket.
    fn deadline(&self) -> Instant {
        let idle_at = self.last_seen + self.idle();
        self.expires.map_or(idle_at, |e| e.min(idle_at))
    }

    fn read_failed(&mut self, error: Option<ReadError>) {
        match error {
            None => {}
            Some(ReadError::Gone) => self.end = Some(End::Gone),
            Some(ReadError::Violation(v)) => {
                let why = match v.code {
                    close::TOO_BIG => FrameRejection::TooLarge,
                    close::INVALID_DATA => FrameRejection::InvalidUtf8,
                    _ => FrameRejection::Protocol,
                };
                self.ctx.metrics.frame_rejected(why);
                self.end = Some(End::Close(v.code, v.reason));
            }
        }
    }

    fn on_message(&mut self, message: WsMessage<'_>) -> bool {
        match message {
            WsMessage::Text(text) => self.inbound(protocol::decode_text(self.vsn, text)),
            WsMessage::Binary(data) => self.inbound(protocol::decode_binary(self.vsn, data)),
            // Answered at once; pings count against the message rate.
            WsMessage::Ping(data) => {
                if self.within_message_rate() {
                    self.outbox.push(codec::frame(codec::OP_PONG, data));
                }
            }
            WsMessage::Pong => {}
            WsMessage::Close(code) => self.end = Some(End::PeerClose(code)),
        }
        self.end.is_none()
    }

    fn inbound(&mut self, decoded: Result<Inbound, Malformed>) {
        if !self.within_message_rate() {
            let (join_ref, reference, topic) = match &decoded {
                Ok(m) => (m.join_ref.as_ref(), Some(&m.reference), Some(&*m.topic)),
                Err(bad) => (
                    bad.join_ref.as_ref(),
                    bad.reference.as_ref(),
                    bad.topic.as_deref(),
                ),
            };
            if let (Some(reference), Some(topic)) = (reference, topic) {
                self.reply(join_ref, reference, topic, false, &reason("rate limited"));
            }
            return;
        }
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

    /// Takes one inbound message from the socket's bucket. A socket that
    /// stays over the limit (refused at least once a second) for 10 s is
    /// closed with 1008; other sockets never notice.
    fn within_message_rate(&mut self) -> bool {
        let config = &self.ctx.config;
        let now = limits::now_us();
        if self.messages.take(
            now,
            config.max_messages_per_second,
            config.max_messages_burst,
        ) {
            if self.flooding_since != 0 && now - self.last_refused > 1_000_000 {
                self.flooding_since = 0;
            }
            return true;
        }
        self.ctx.metrics.frame_rejected(FrameRejection::RateLimited);
        if self.flooding_since == 0 || now - self.last_refused > 1_000_000 {
            self.flooding_since = now;
        }
        self.last_refused = now;
        if now - self.flooding_since >= FLOOD_LIMIT_US {
            self.ctx.metrics.rate_limit_closes.increment(1);
            self.end = Some(End::Close(close::POLICY, "rate limited"));
        }
        false
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
            let old_ref = self.end_membership(i, "leave");
            self.reply(m.join_ref.as_ref(), &m.reference, &m.topic, true, "{}");
            self.push_close(&m.topic, &old_ref);
            return;
        }
        let (channel, join_ref) = (self.joined[i].channel, self.joined[i].join_ref.clone());
        let answer = channels::handle(&self.ctx, channel, &m.topic, &m.event, &m.payload);
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

    fn join(&mut self, m: Inbound) {
        let ctx = self.ctx.clone();
        let Some(channel) = channels::route(&ctx, &m.topic) else {
            ctx.metrics.join_rejected(JoinRejection::UnmatchedTopic);
            let body = reason("unmatched topic");
            self.reply(m.join_ref.as_ref(), &m.reference, &m.topic, false, &body);
            return;
        };
        // Refusals that leave everything as it was, an earlier membership
        // of the topic included.
        let config = &ctx.config;
        if !self.joins.take(
            limits::now_us(),
            config.max_joins_per_second,
            config.max_joins_burst,
        ) {
            ctx.metrics.join_rejected(JoinRejection::RateLimited);
            self.refuse(&m, &reason("rate limited"));
            return;
        }
        let identity = self.identity.as_deref();
        if !auth::may_join(identity, &ctx.public_topics, config.auth, &m.topic) {
            ctx.metrics.join_rejected(JoinRejection::Unauthorized);
            self.refuse(&m, &reason("unauthorized"));
            return;
        }
        // A second join of the same topic ends the first membership first.
        if let Some(i) = self.position(&m.topic) {
            let old_ref = self.end_membership(i, "rejoin");
            self.push_close(&m.topic, &old_ref);
        }
        let params = channels::params(&m.payload);
        let wants = match params
            .as_ref()
            .map_err(|r| r.clone())
            .and_then(|p| channels::join(channel, p))
        {
            Ok(wants) => wants,
            Err(refusal) => {
                ctx.metrics.join_rejected(refusal.metric);
                self.refuse(&m, &refusal.reason);
                return;
            }
        };
        let presence_topic = ctx.presence.covers(&m.topic);
        let presence = match (&params, presence_topic) {
            (Ok(params), true) => {
                let identity = self.identity.as_deref();
                let sub = identity.map(Identity::sub);
                let info = identity.and_then(Identity::info);
                match presence::joining(sub, info, params, self.slot.id()) {
                    Ok(joining) => Some(joining),
                    Err(presence::MetaTooLarge) => {
                        ctx.metrics.join_rejected(JoinRejection::MetaTooLarge);
                        self.refuse(&m, &reason("meta too large"));
                        return;
                    }
                }
            }
            _ => None,
        };
        if self.joined.len() >= ctx.config.max_channels_per_socket {
            ctx.metrics.join_rejected(JoinRejection::TooManyChannels);
            self.refuse(&m, &reason("too many channels joined"));
            return;
        }
        let member = Member {
            outbox: self.outbox.clone(),
            vsn: self.vsn,
            tag: wants.tag,
            occupancy: wants.occupancy,
            // Until `after_join` below, for a member figures may be pushed
            // to (a watcher, or any member of a presence topic, which may
            // turn count-only): the occupancy task, woken by this join,
            // must not push figures before the reply or repeat the joiner's
            // own.
            seen: if wants.occupancy || presence_topic {
                JOINING
            } else {
                0
            },
        };
        let membership = match ctx.registry.join(&m.topic, self.slot.id(), member) {
            Ok(membership) => membership,
            Err(JoinError::TooManyTopics) => {
                ctx.metrics.join_rejected(JoinRejection::TooManyTopics);
                self.refuse(&m, &reason("too many topics"));
                return;
            }
        };
        let join_ref = m.join_ref.clone().unwrap_or_else(|| m.reference.clone());
        tracing::debug!(
            node = %ctx.config.node,
            socket_id = self.slot.id(),
            topic = %m.topic,
            "joined"
        );
        self.reply(m.join_ref.as_ref(), &m.reference, &m.topic, true, "{}");
        // Tracked after the membership: the joiner is subscribed to the
        // topic's diffs before its `presence_state` is taken.
        let tracked = presence.map(|j| Box::new(ctx.presence.track(membership.topic(), j)));
        if tracked.is_some() {
            // The occupancy task may have counted the membership before
            // its meta: have it look again, for `users`.
            ctx.registry.touch(membership.topic());
        }
        let socket = self.slot.id();
        for (event, payload) in channels::after_join(&ctx, channel, &m.topic, socket, wants) {
            self.push(Some(&join_ref), &m.topic, event, &payload);
        }
        if self.joined.len() == self.joined.capacity() {
            self.joined.reserve_exact(1);
        }
        self.joined.push(Joined {
            join_ref,
            channel,
            membership,
            _presence: tracked,
        });
    }

    fn refuse(&self, m: &Inbound, body: &str) {
        self.reply(m.join_ref.as_ref(), &m.reference, &m.topic, false, body);
    }

    /// Ends the membership at `i` (its drop counts it down); returns its
    /// join_ref for the `phx_close` push.
    fn end_membership(&mut self, i: usize, why: &'static str) -> JsonRef {
        let old = self.joined.swap_remove(i);
        self.log_left(old.membership.topic(), why);
        old.join_ref
    }

    /// The debug line of a membership that ended; `reason` is `leave`,
    /// `rejoin` (replaced by a second join) or `close` (its socket closed).
    fn log_left(&self, topic: &str, reason: &'static str) {
        tracing::debug!(
            node = %self.ctx.config.node,
            socket_id = self.slot.id(),
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
        self.outbox.push(codec::text_frame(&protocol::encode_reply(
            self.vsn, join_ref, reference, topic, ok, body,
        )));
    }

    fn push(&self, join_ref: Option<&JsonRef>, topic: &str, event: &str, payload: &str) {
        self.outbox.push(codec::text_frame(&protocol::encode(
            self.vsn, join_ref, None, topic, event, payload,
        )));
    }

    /// `phx_close` for a membership that ended: V2 carries the join_ref as
    /// both refs, V1 as its ref (as Phoenix does).
    fn push_close(&self, topic: &str, join_ref: &JsonRef) {
        self.outbox.push(codec::text_frame(&protocol::encode(
            self.vsn,
            Some(join_ref),
            Some(join_ref),
            topic,
            "phx_close",
            "{}",
        )));
    }

    /// Writes what waits in the outbox, as much as the kernel takes.
    fn flush(&mut self) {
        self.ctx.metrics.queue_depth(self.outbox.len());
        if self.outbox.flush().is_err() {
            self.end = Some(End::Gone);
        }
    }

    fn close_for(&mut self, reason: CloseReason) {
        self.end = Some(match reason {
            CloseReason::SlowConsumer => {
                self.ctx.metrics.slow_consumer_closes.increment(1);
                End::Close(close::POLICY, "slow consumer")
            }
            CloseReason::Shutdown => End::Close(close::GOING_AWAY, "server shutting down"),
            CloseReason::Broken => End::Gone,
        });
    }
}

#[cfg(test)]
mod tests;
