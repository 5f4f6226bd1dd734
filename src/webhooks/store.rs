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
//!
//! The hash holds, for each occupied channel or present member, the Redis
//! time (ms) it was recorded at. A departure carries how long the deciding
//! node has seen the thing gone; one that was recorded again after that (the
//! node's view is stale: it came back elsewhere) is refused.
//!
//! An epoch marker beside the hash (a random value, set by whichever node
//! first finds it missing) tells a Redis that lost the hash (restarted
//! empty, flushed): every decision names the epoch its node last restored,
//! and a decision under another is refused, so the node first restores what
//! it believed Redis held (silently: no event) under the new one.
//!
//! All keys share one hash tag, `{<prefix>:webhooks}`: one slot on a Redis
//! Cluster.

use crate::cluster::RedisAccess;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamClaimReply, StreamPendingCountReply,
    StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, Script, Value};
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Longest a store command may take.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Events kept in the stream at most (delivered ones are deleted).
const STREAM_MAX: u64 = 100_000;
/// Fields restored by one script call.
const RESTORE_BATCH: usize = 500;
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
    /// For a departure: when this node saw the thing go.
    pub gone_since: Option<Instant>,
}

impl Decision {
    /// The arbiter's state field of the channel or member.
    pub fn field(&self) -> String {
        match &self.user {
            None => channel_field(&self.channel),
            Some(user) => member_field(&self.channel, user),
        }
    }

    /// Whether this decision starts the state it names.
    pub fn starts(&self) -> bool {
        self.name.starts()
    }
}

/// The state field of a channel.
pub fn channel_field(channel: &str) -> String {
    format!("c\n{channel}")
}

/// The state field of a member (a presence KEY on a channel).
pub fn member_field(channel: &str, user: &str) -> String {
    format!("m\n{channel}\n{user}")
}

/// What a state field names.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    Channel(Arc<str>),
    Member(Arc<str>, Arc<str>),
}

/// The channel or member of a state field; `None` for a member whose
/// channel and KEY cannot be told apart (both hold a line feed).
pub fn parse_field(field: &str) -> Option<Held> {
    if let Some(channel) = field.strip_prefix("c\n") {
        return Some(Held::Channel(Arc::from(channel)));
    }
    let rest = field.strip_prefix("m\n")?;
    let (channel, user) = rest.split_once('\n')?;
    if user.contains('\n') {
        return None;
    }
    Some(Held::Member(Arc::from(channel), Arc::from(user)))
}

/// What the arbiter made of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This decision flipped the state: its event is queued.
    Flipped,
    /// The state already was so (another node decided it).
    Unchanged,
    /// A departure of a thing recorded again since this node saw it go:
    /// this node's view was stale.
    Stale,
    /// Redis's epoch is not the one this node last restored (or it has none
    /// yet): nothing was done; restore, then decide again.
    NewEpoch,
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

/// The Redis time in ms, as `now` (a script prelude).
const NOW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// Flips the state and appends the event only when it flipped.
/// KEYS: state hash, stream, epoch marker. ARGV: field, `1` (start) or `0`
/// (end), name, channel, user id (or empty), stream length bound, the
/// node's epoch, for an end how long the node has seen the thing gone (ms).
/// Returns 1 flipped, 0 unchanged, -1 stale (an end refused: recorded again
/// since the node saw it go), -2 another epoch (nothing done).
static DECIDE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"
if redis.call('GET', KEYS[3]) ~= ARGV[7] then
  return -2
end
{NOW}
if ARGV[2] == '1' then
  if redis.call('HSETNX', KEYS[1], ARGV[1], string.format('%d', now)) == 0 then
    return 0
  end
else
  local since = redis.call('HGET', KEYS[1], ARGV[1])
  if not since then
    return 0
  end
  since = tonumber(since)
  if since and since > now - tonumber(ARGV[8]) then
    return -1
  end
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local fields = {{'name', ARGV[3], 'channel', ARGV[4]}}
if ARGV[5] ~= '' then
  fields[#fields + 1] = 'user_id'
  fields[#fields + 1] = ARGV[5]
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', unpack(fields))
return 1
"#
    ))
});

/// The epoch marker, set to ARGV[1] when missing. KEYS: the marker.
/// Returns its value.
static EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return epoch
"#,
    )
});

/// Records what a node believed Redis held, where Redis holds nothing (no
/// event). KEYS: state hash, epoch marker. ARGV: the epoch, then pairs of
/// field and `1` (here: recorded now) or `0` (leaving: recorded as of long
/// ago, so that its departure goes through). Returns 1, or -2 under
/// another epoch (nothing done).
static RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return -2
end
{NOW}
for i = 2, #ARGV, 2 do
  local since = '0'
  if ARGV[i + 1] == '1' then
    since = string.format('%d', now)
  end
  redis.call('HSETNX', KEYS[1], ARGV[i], since)
end
return 1
"#
    ))
});

/// One step of a scan of the state hash. KEYS: state hash. ARGV: cursor,
/// count, age (ms). Returns the next cursor, then the fields recorded at
/// least that long ago.
static SCAN_OLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"
{NOW}
local before = now - tonumber(ARGV[3])
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local out = {{page[1]}}
local kv = page[2]
for i = 1, #kv, 2 do
  local since = tonumber(kv[i + 1])
  if not since or since <= before then
    out[#out + 1] = kv[i]
  end
end
return out
"#
    ))
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
    /// The epoch marker.
    epoch_key: String,
    /// The epoch this node last restored its beliefs under.
    epoch: Mutex<Option<String>>,
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
            epoch_key: format!("{tag}:epoch"),
            epoch: Mutex::new(None),
            stream: tag,
            access,
            grouped: Mutex::new(false),
            takeover_idle,
        })
    }

    /// Whether decisions are shared with other nodes (Redis), rather than
    /// this node's alone.
    pub fn shared(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// Records a transition; the event is queued only if this decision is
    /// the one that flipped the state.
    pub async fn decide(&self, d: &Decision) -> Result<Outcome, String> {
        match self {
            Store::Memory(m) => {
                let mut state = lock(&m.state);
                let flipped = if d.starts() {
                    state.insert(d.field())
                } else {
                    state.remove(&d.field())
                };
                drop(state);
                if !flipped {
                    return Ok(Outcome::Unchanged);
                }
                let n = m.next.fetch_add(1, Ordering::Relaxed);
                lock(&m.queue).push_back(Event {
                    id: format!("{}-{n}", super::deliver::unix_ms()),
                    name: d.name.as_str().into(),
                    channel: d.channel.to_string(),
                    user_id: d.user.as_ref().map(|u| u.to_string()),
                });
                Ok(Outcome::Flipped)
            }
            Store::Redis(r) => {
                let Some(epoch) = lock(&r.epoch).clone() else {
                    return Ok(Outcome::NewEpoch);
                };
                let gone_for = d.gone_since.map_or(0, |t| t.elapsed().as_millis() as u64);
                let mut invocation = DECIDE.key(&r.state);
                invocation
                    .key(&r.stream)
                    .key(&r.epoch_key)
                    .arg(d.field())
                    .arg(if d.starts() { "1" } else { "0" })
                    .arg(d.name.as_str())
                    .arg(&*d.channel)
                    .arg(d.user.as_deref().unwrap_or(""))
                    .arg(STREAM_MAX)
                    .arg(epoch)
                    .arg(gone_for);
                let mut conn = r.access.conn.clone();
                match bounded(invocation.invoke_async::<i64>(&mut conn)).await? {
                    1 => Ok(Outcome::Flipped),
                    0 => Ok(Outcome::Unchanged),
                    -1 => Ok(Outcome::Stale),
                    -2 => Ok(Outcome::NewEpoch),
                    other => Err(format!("unexpected decision reply {other}")),
                }
            }
        }
    }

    /// Redis's epoch marker (set now if missing), when it is not the one
    /// this node last restored under: Redis lost the state, or this node
    /// has not restored yet. `None` on a single node.
    pub async fn new_epoch(&self) -> Result<Option<String>, String> {
        let Store::Redis(r) = self else {
            return Ok(None);
        };
        let fresh = format!(
            "{}-{}",
            r.access.origin,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let mut invocation = EPOCH.key(&r.epoch_key);
        invocation.arg(fresh);
        let mut conn = r.access.conn.clone();
        let epoch: String = bounded(invocation.invoke_async(&mut conn)).await?;
        Ok((lock(&r.epoch).as_deref() != Some(epoch.as_str())).then_some(epoch))
    }

    /// Records, silently, what this node believed Redis held — each field
    /// with whether the thing is here (`true`) or leaving — where Redis
    /// holds nothing, under `epoch` (from `new_epoch`), which becomes this
    /// node's. `Ok(false)` if the epoch changed again meanwhile.
    pub async fn restore(&self, epoch: &str, held: &[(String, bool)]) -> Result<bool, String> {
        let Store::Redis(r) = self else {
            return Ok(true);
        };
        // At least one call, even with nothing to restore: it checks the
        // epoch.
        let mut batches = held.chunks(RESTORE_BATCH).peekable();
        let empty: &[(String, bool)] = &[];
        let first = batches.peek().is_none().then_some(empty);
        for batch in first.into_iter().chain(batches) {
            let mut invocation = RESTORE.key(&r.state);
            invocation.key(&r.epoch_key).arg(epoch);
            for (field, here) in batch {
                invocation.arg(field).arg(if *here { "1" } else { "0" });
            }
            let mut conn = r.access.conn.clone();
            match bounded(invocation.invoke_async::<i64>(&mut conn)).await? {
                1 => {}
                -2 => return Ok(false),
                other => return Err(format!("unexpected restore reply {other}")),
            }
        }
        *lock(&r.epoch) = Some(epoch.to_owned());
        Ok(true)
    }

    /// One step of a scan of what Redis holds as occupied or present:
    /// from `cursor` (`"0"` to start), about `count` fields, those
    /// recorded at least `age` ago, and the next cursor (`"0"`: done).
    /// Nothing on a single node.
    pub async fn scan_old(
        &self,
        cursor: &str,
        count: usize,
        age: Duration,
    ) -> Result<(String, Vec<String>), String> {
        let Store::Redis(r) = self else {
            return Ok(("0".into(), Vec::new()));
        };
        let mut invocation = SCAN_OLD.key(&r.state);
        invocation
            .arg(cursor)
            .arg(count)
            .arg(age.as_millis() as u64);
        let mut conn = r.access.conn.clone();
        let reply: Vec<Vec<u8>> = bounded(invocation.invoke_async(&mut conn)).await?;
        let mut reply = reply.into_iter();
        let next = reply
            .next()
            .and_then(|c| String::from_utf8(c).ok())
            .ok_or("bad scan reply")?;
        Ok((
            next,
            reply.filter_map(|f| String::from_utf8(f).ok()).collect(),
        ))
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

    /// Events this node took from the stream and has not acknowledged: a
    /// read (or takeover) whose reply was lost — it timed out here while
    /// Redis, stalled, still held the command, and ran it on waking — left
    /// its events pending under this node's name, where no `next` finds
    /// them again. Read back (from the oldest) instead of waiting for
    /// another node's takeover. Empty on a single node. With them, whether
    /// there may be more (`max` were pending).
    pub async fn unacknowledged(&self, max: usize) -> Result<(Vec<Event>, bool), String> {
        let Store::Redis(r) = self else {
            return Ok((Vec::new(), false));
        };
        r.group().await?;
        let mut conn = r.access.conn.clone();
        let pending: StreamPendingCountReply = r.grouped(
            bounded(conn.xpending_consumer_count(
                &r.stream,
                GROUP,
                "-",
                "+",
                max,
                &r.access.origin,
            ))
            .await,
        )?;
        if pending.ids.is_empty() {
            return Ok((Vec::new(), false));
        }
        let more = pending.ids.len() >= max;
        let ids: Vec<String> = pending.ids.into_iter().map(|p| p.id).collect();
        // Claimed by this node again (the idle time starts over); entries
        // deleted meanwhile leave the pending list without a reply.
        let claimed: StreamClaimReply =
            r.grouped(bounded(conn.xclaim(&r.stream, GROUP, &r.access.origin, 0, &ids)).await)?;
        let (events, bad): (Vec<_>, Vec<_>) = claimed
            .ids
            .iter()
            .map(|id| (id.id.clone(), event(id)))
            .partition(|(_, e)| e.is_some());
        if !bad.is_empty() {
            // Not an event of ours: dropped, or it would come back forever.
            let bad: Vec<String> = bad.into_iter().map(|(id, _)| id).collect();
            self.done(&bad).await?;
        }
        Ok((events.into_iter().filter_map(|(_, e)| e).collect(), more))
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
            gone_since: None,
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

    #[test]
    fn a_state_field_names_its_channel_or_member() {
        for d in [
            d(Name::ChannelOccupied, "rooms:a", None),
            d(Name::MemberAdded, "rooms:a", Some("u:1")),
            d(Name::MemberAdded, "rooms:\na", Some("u:1")),
        ] {
            let want = match &d.user {
                None => Held::Channel(d.channel.clone()),
                Some(u) => Held::Member(d.channel.clone(), u.clone()),
            };
            if d.channel.contains('\n') {
                assert_eq!(parse_field(&d.field()), None, "ambiguous");
            } else {
                assert_eq!(parse_field(&d.field()), Some(want));
            }
        }
        assert_eq!(
            parse_field("c\nrooms:\nline"),
            Some(Held::Channel(Arc::from("rooms:\nline")))
        );
        assert_eq!(parse_field("x\nrooms:a"), None);
    }
}
