//! The channel router: which channel a topic belongs to, what its join
//! params mean, and how it answers each event. Channels are plain functions
//! over the serving side's context; the session owns the memberships.

mod generic;
mod occupancy;
pub mod presence;
pub mod stats;
mod stream;
mod vsm;

pub use occupancy::run as run_occupancy;
pub use presence::run as run_presence;

/// The topics of an occupancy query (1..=100 strings), for HTTP too.
pub fn occupancy_topics(list: &Value) -> Option<Vec<String>> {
    occupancy::topics(Some(list))
}

use crate::context::Ctx;
use crate::metrics::JoinRejection;
use crate::protocol::{reason, Payload};
use crate::registry::Tag;
use crate::stats::{to_json, Filter};
use crate::topics::{STATS, STREAM, VSM};
use serde::Serialize;
use serde_json::{Map, Value};

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
#[derive(Clone)]
pub struct Refusal {
    pub reason: String,
    pub metric: JoinRejection,
}

/// What a joiner asked for in its params.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wants {
    /// Tells the registry which of the channel's pushes this member gets.
    pub tag: Tag,
    /// `occupancy: true`: live `occupancy` pushes of the topic (§7.1).
    pub occupancy: bool,
}

/// Reads join params.
pub fn join(channel: Channel, params: &Map<String, Value>) -> Result<Wants, Refusal> {
    let tag = match channel {
        Channel::Stats => stats::join(params),
        Channel::Vsm => vsm::join(params)?,
        Channel::Stream | Channel::Generic => Tag::Plain,
    };
    Ok(Wants {
        tag,
        occupancy: params.get("occupancy") == Some(&Value::Bool(true)),
    })
}

/// Pushes the joiner (socket `socket`) gets right after its `ok` reply.
pub fn after_join(
    ctx: &Ctx,
    channel: Channel,
    topic: &str,
    socket: u64,
    wants: Wants,
) -> Vec<(&'static str, String)> {
    let mut pushes = Vec::new();
    match channel {
        Channel::Stats => pushes.push(("stats_update", stats::update_payload(ctx))),
        Channel::Stream => pushes.push(("initial_stats", stream::initial_stats(ctx))),
        Channel::Vsm | Channel::Generic => {}
    }
    let presence = ctx.presence.covers(topic);
    if presence {
        pushes.extend(presence::after_join(ctx, topic));
    }
    // A count-only presence topic sends every member its figures.
    // Either way a member that joined as `JOINING` (a watcher, or on a
    // presence topic) ends it: figures pushed from now on follow these.
    if wants.occupancy || (presence && ctx.presence.count_only(topic)) {
        let figures = occupancy::Figures::now(ctx, topic);
        ctx.registry.set_seen(topic, socket, figures.seen());
        pushes.push(("occupancy", figures.payload(topic)));
    } else if presence {
        ctx.registry.set_seen(topic, socket, 0);
    }
    pushes
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

/// Answers one event on a joined channel.
pub fn handle(ctx: &Ctx, channel: Channel, topic: &str, event: &str, payload: &Payload) -> Answer {
    let answer = match event {
        "get_connection_stats" => Some(filtered(payload, |f| Answer::ok(ctx.reporter.local(f)))),
        "get_monitoring" => Some(Answer::ok(ctx.reporter.monitoring(&Filter::default()))),
        "get_occupancy" => Some(occupancy::query(ctx, payload)),
        "get_presence_stats" => Some(presence::query(ctx, payload)),
        _ => None,
    };
    let answer = answer.or_else(|| match channel {
        Channel::Stats => stats::handle(ctx, event, payload),
        Channel::Generic => generic::handle(ctx, topic, event, payload),
        Channel::Stream | Channel::Vsm => None,
    });
    answer.unwrap_or_else(|| {
        Answer::error(to_json(&UnknownEvent {
            reason: "unknown event",
            event,
        }))
    })
}

#[derive(Serialize)]
struct UnknownEvent<'a> {
    reason: &'static str,
    event: &'a str,
}

/// Reads the `prefix`/`limit` filters of a stats query (§7.3) and answers
/// with them, or refuses a bad one.
pub fn filtered(payload: &Payload, answer: impl FnOnce(&Filter) -> Answer) -> Answer {
    let params = payload
        .json()
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
    match Filter::from_payload(params.as_ref().and_then(Value::as_object)) {
        Ok(filter) => answer(&filter),
        Err(e) => Answer::error(reason(e.reason())),
    }
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
