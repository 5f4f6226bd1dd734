//! The channel router: which channel a topic belongs to, what its join
//! params mean, and how it answers each event. Channels are plain functions
//! over the serving side's context; the session owns the memberships.

mod generic;
pub mod stats;
mod stream;
mod vsm;

use crate::context::Ctx;
use crate::metrics::JoinRejection;
use crate::protocol::{reason, Payload};
use crate::registry::Tag;
use crate::stats::to_json;
use crate::topics::{STATS, STREAM, VSM};
use serde::Serialize;
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Stats,
    Stream,
    Vsm,
    Generic,
}

/// Which channel serves `topic`, if any.
pub fn route(ctx: &Ctx, topic: &str) -> Option<Channel> {
    match topic {
        STATS => Some(Channel::Stats),
        STREAM => Some(Channel::Stream),
        VSM => Some(Channel::Vsm),
        _ if ctx.allowed_topics.matches(topic) => Some(Channel::Generic),
        _ => None,
    }
}

/// A refused join: the reply reason and the metric label.
pub struct Refusal {
    pub reason: String,
    pub metric: JoinRejection,
}

/// Reads join params; the tag tells the hub what this member wants.
pub fn join(channel: Channel, params: &Map<String, Value>) -> Result<Tag, Refusal> {
    match channel {
        Channel::Stats => Ok(stats::join(params)),
        Channel::Vsm => vsm::join(params),
        Channel::Stream | Channel::Generic => Ok(Tag::Plain),
    }
}

/// Pushes the joiner gets right after its `ok` reply.
pub fn after_join(ctx: &Ctx, channel: Channel) -> Option<(&'static str, String)> {
    match channel {
        Channel::Stats => Some(("stats_update", stats::update_payload(ctx))),
        Channel::Stream => Some(("initial_stats", stream::initial_stats(ctx))),
        Channel::Vsm | Channel::Generic => None,
    }
}

/// A reply, plus a push of the same result for clients that listen for events.
pub struct Answer {
    pub ok: bool,
    pub body: String,
    pub push: Option<&'static str>,
}

impl Answer {
    pub fn ok(body: String) -> Answer {
        Answer {
            ok: true,
            body,
            push: None,
        }
    }

    pub fn error(body: String) -> Answer {
        Answer {
            ok: false,
            body,
            push: None,
        }
    }
}

pub type Deferred = Pin<Box<dyn Future<Output = Answer> + Send>>;

pub enum Handled {
    Now(Answer),
    /// The answer needs I/O (cluster stats on Redis); the session sends it
    /// when it is ready, without waiting.
    Later(Deferred),
}

/// Answers one event on a joined channel.
pub fn handle(
    ctx: &Arc<Ctx>,
    channel: Channel,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Handled {
    match event {
        "get_connection_stats" => return Handled::Now(Answer::ok(ctx.reporter.local())),
        "get_monitoring" => return Handled::Now(Answer::ok(ctx.reporter.monitoring())),
        _ => {}
    }
    let handled = match channel {
        Channel::Stats => stats::handle(ctx, event),
        Channel::Generic => generic::handle(ctx, topic, event, payload),
        Channel::Stream | Channel::Vsm => None,
    };
    handled.unwrap_or_else(|| {
        Handled::Now(Answer::error(to_json(&UnknownEvent {
            reason: "unknown event",
            event,
        })))
    })
}

#[derive(Serialize)]
struct UnknownEvent<'a> {
    reason: &'static str,
    event: &'a str,
}

/// Join params as an object (anything else counts as no params).
pub fn params(payload: &Payload) -> Result<Map<String, Value>, Refusal> {
    match payload {
        Payload::Json(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Ok(Map::new()),
            Err(_) => Err(bad_payload()),
        },
        Payload::Binary => Err(bad_payload()),
    }
}

fn bad_payload() -> Refusal {
    Refusal {
        reason: reason("malformed message"),
        metric: JoinRejection::BadPayload,
    }
}
