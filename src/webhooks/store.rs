//! Where webhook decisions are made and their events wait for delivery.
//!
//! In a cluster, Redis is the arbiter: one script per decision flips the
//! channel's (or member's) state in a hash and, only when it really flipped,
//! appends the event to a stream — atomically, in one hash slot — so
//! however many nodes see a transition, it is decided once. Every node
//! reads the stream in one consumer group, so each event is delivered by
//! one node; an event is acknowledged after a 2xx, and events a dead node
//! was holding are claimed by the others after a minute (the hidden
//! `--webhook-takeover-ms`). A single node does the same in memory.

use crate::cluster::RedisAccess;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, Script, Value};
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// Longest a store command may take.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Events kept in the stream at most (delivered ones are deleted).
const STREAM_MAX: u64 = 100_000;
const GROUP: &str = "headcount";

/// The four events of SPEC §10.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Name {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
}

impl Name {
    pub fn as_str(self) -> &'static str {
        match self {
            Name::ChannelOccupied => "channel_occupied",
            Name::ChannelVacated => "channel_vacated",
            Name::MemberAdded => "member_added",
            Name::MemberRemoved => "member_removed",
        }
    }

    /// Whether this event starts the state it names (rather than ends it).
    fn starts(self) -> bool {
        matches!(self, Name::ChannelOccupied | Name::MemberAdded)
    }
}

/// A transition this node saw.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    pub name: Name,
    pub channel: Arc<str>,
    pub user: Option<Arc<str>>,
}

impl Decision {
    /// The arbiter's state field of the channel or member.
    fn field(&self) -> String {
        match &self.user {
            None => format!("c\n{}", self.channel),
            Some(user) => format!("m\n{}\n{user}", self.channel),
        }
    }
}

/// One event as the receiver gets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub id: String,
    pub name: String,
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Flips the state and appends the event only when it flipped.
/// KEYS: state hash, stream. ARGV: field, `1` (start) or `0` (end), name,
/// channel, user id (or empty), stream length bound.
static DECIDE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local flipped
if ARGV[2] == '1' then
  flipped = redis.call('HSETNX', KEYS[1], ARGV[1], '1')
else
  flipped = redis.call('HDEL', KEYS[1], ARGV[1])
end
if flipped == 1 then
  local fields = {'name', ARGV[3], 'channel', ARGV[4]}
  if ARGV[5] ~= '' then
    fields[#fields + 1] = 'user_id'
    fields[#fields + 1] = ARGV[5]
  end
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', unpack(fields))
end
return false
"#,
    )
});

#[derive(Default)]
pub struct Memory {
    state: Mutex<HashSet<String>>,
    queue: Mutex<VecDeque<Event>>,
    next: AtomicU64,
}

pub struct Redis {
    access: RedisAccess,
    state: String,
    stream: String,
    /// Whether the consumer group exists (made once).
    grouped: Mutex<bool>,
    /// A pending event idle this long belongs to a node presumed dead
    /// (`--webhook-takeover-ms`).
    takeover_idle: Duration,
}

pub enum Store {
    Memory(Memory),
    Redis(Redis),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn bounded<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .map_err(|_| "redis did not answer within 1 s".to_owned())?
        .map_err(|e| format!("redis error: {e}"))
}

fn field(map: &std::collections::HashMap<String, Value>, name: &str) -> Option<String> {
    match map.get(name)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn event(id: &redis::streams::StreamId) -> Option<Event> {
    Some(Event {
        id: id.id.clone(),
        name: field(&id.map, "name")?,
        channel: field(&id.map, "channel")?,
        user_id: field(&id.map, "user_id"),
    })
}

impl Store {
    pub fn memory() -> Store {
        Store::Memory(Memory::default())
    }

    pub fn redis(access: RedisAccess, takeover_idle: Duration) -> Store {
        let tag = format!("{{{}:webhooks}}", access.prefix);
        Store::Redis(Redis {
            state: format!("{tag}:state"),
            stream: tag,
            access,
            grouped: Mutex::new(false),
            takeover_idle,
        })
    }

    /// Records a transition; the event is queued only if this decision is
    /// the one that flipped the state.
    pub async fn decide(&self, d: &Decision) -> Result<(), String> {
        match self {
            Store::Memory(m) => {
                let mut state = lock(&m.state);
                let flipped = if d.name.starts() {
                    state.insert(d.field())
                } else {
                    state.remove(&d.field())
                };
                drop(state);
                if flipped {
                    let n = m.next.fetch_add(1, Ordering::Relaxed);
                    lock(&m.queue).push_back(Event {
                        id: format!("{}-{n}", super::deliver::unix_ms()),
                        name: d.name.as_str().into(),
                        channel: d.channel.to_string(),
                        user_id: d.user.as_ref().map(|u| u.to_string()),
                    });
                }
                Ok(())
            }
            Store::Redis(r) => {
                let mut invocation = DECIDE.key(&r.state);
                invocation
                    .key(&r.stream)
                    .arg(d.field())
                    .arg(if d.name.starts() { "1" } else { "0" })
                    .arg(d.name.as_str())
                    .arg(&*d.channel)
                    .arg(d.user.as_deref().unwrap_or(""))
                    .arg(STREAM_MAX);
                let mut conn = r.access.conn.clone();
                bounded(invocation.invoke_async::<Value>(&mut conn)).await?;
                Ok(())
            }
        }
    }

    /// Up to `max` new events for this node to deliver.
    pub async fn next(&self, max: usize) -> Result<Vec<Event>, String> {
        match self {
            Store::Memory(m) => {
                let mut queue = lock(&m.queue);
                let n = queue.len().min(max);
                Ok(queue.drain(..n).collect())
            }
            Store::Redis(r) => {
                r.group().await?;
                let opts = StreamReadOptions::default()
                    .group(GROUP, &r.access.origin)
                    .count(max);
                let mut conn = r.access.conn.clone();
                let reply: Option<StreamReadReply> =
                    r.grouped(bounded(conn.xread_options(&[&r.stream], &[">"], &opts)).await)?;
                Ok(reply
                    .into_iter()
                    .flat_map(|reply| reply.keys)
                    .flat_map(|k| k.ids)
                    .filter_map(|id| event(&id))
                    .collect())
            }
        }
    }

    /// Events other nodes took and did not deliver for the takeover time
    /// (they are presumed dead), now this node's.
    pub async fn take_over(&self, max: usize) -> Result<Vec<Event>, String> {
        let Store::Redis(r) = self else {
            return Ok(Vec::new());
        };
        r.group().await?;
        let opts = StreamAutoClaimOptions::default().count(max);
        let mut conn = r.access.conn.clone();
        let reply: StreamAutoClaimReply = r.grouped(
            bounded(conn.xautoclaim_options(
                &r.stream,
                GROUP,
                &r.access.origin,
                r.takeover_idle.as_millis() as u64,
                "0-0",
                opts,
            ))
            .await,
        )?;
        Ok(reply.claimed.iter().filter_map(event).collect())
    }

    /// Still working on these: resets their idle time, so no other node
    /// takes them over while this one retries.
    pub async fn keep(&self, ids: &[String]) {
        let Store::Redis(r) = self else {
            return;
        };
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&r.stream).arg(GROUP).arg(&r.access.origin).arg(0);
        for id in ids {
            cmd.arg(id);
        }
        cmd.arg("JUSTID");
        let mut conn = r.access.conn.clone();
        let _ = bounded(cmd.exec_async(&mut conn)).await;
    }

    /// Delivered (or given up): acknowledged and deleted.
    pub async fn done(&self, ids: &[String]) -> Result<(), String> {
        let Store::Redis(r) = self else {
            return Ok(());
        };
        let mut pipe = redis::pipe();
        pipe.cmd("XACK").arg(&r.stream).arg(GROUP).arg(ids).ignore();
        pipe.cmd("XDEL").arg(&r.stream).arg(ids).ignore();
        let mut conn = r.access.conn.clone();
        bounded(pipe.exec_async(&mut conn)).await
    }

    /// Events waiting in this node's queue (memory) — the stream's wait in
    /// Redis.
    pub fn queued(&self) -> usize {
        match self {
            Store::Memory(m) => lock(&m.queue).len(),
            Store::Redis(_) => 0,
        }
    }
}

impl Redis {
    /// `result` of a command on the group; a `NOGROUP` error (Redis lost
    /// the stream: restarted empty, or flushed) has the group made again
    /// on the next call, rather than every read failing from then on.
    fn grouped<T>(&self, result: Result<T, String>) -> Result<T, String> {
        if result.as_ref().is_err_and(|e| e.contains("NOGROUP")) {
            *lock(&self.grouped) = false;
        }
        result
    }

    async fn group(&self) -> Result<(), String> {
        if *lock(&self.grouped) {
            return Ok(());
        }
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        let mut conn = self.access.conn.clone();
        match bounded(cmd.exec_async(&mut conn)).await {
            Ok(()) => {}
            Err(e) if e.contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        *lock(&self.grouped) = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: Name, channel: &str, user: Option<&str>) -> Decision {
        Decision {
            name,
            channel: Arc::from(channel),
            user: user.map(Arc::from),
        }
    }

    #[tokio::test]
    async fn in_memory_each_transition_is_decided_once() {
        let s = Store::memory();
        for _ in 0..3 {
            s.decide(&d(Name::ChannelOccupied, "t", None))
                .await
                .unwrap();
            s.decide(&d(Name::MemberAdded, "t", Some("u")))
                .await
                .unwrap();
        }
        s.decide(&d(Name::ChannelVacated, "t", None)).await.unwrap();
        s.decide(&d(Name::ChannelVacated, "t", None)).await.unwrap();
        let events = s.next(100).await.unwrap();
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["channel_occupied", "member_added", "channel_vacated"]
        );
        assert_eq!(events[1].user_id.as_deref(), Some("u"));
        let ids: HashSet<&String> = events.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), 3, "unique ids");
        assert!(s.next(100).await.unwrap().is_empty());
    }
}
