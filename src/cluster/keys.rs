//! Where a cluster keeps things in Redis: key and channel names, and the two
//! Lua scripts that write one node's figures and read everybody's.
//!
//! Layout, for prefix `P` and node `N`:
//! - `P:{N}:meta`   hash `c` connections, `s` stream, `k` sockets, `at` written
//!   at (ms, Redis clock). Its TTL is the node's `--node-ttl-ms`: it is the
//!   node's liveness, so a node that stops refreshing expires by itself.
//! - `P:{N}:topics` hash topic → memberships on N (non-empty topics only),
//!   same TTL.
//! - `P:nodes`      zset N → last refresh (ms, node clock): the registry the
//!   reader walks. Entries whose meta is gone are removed by the reader.
//! - `P:relay`      pub/sub channel between nodes (shaped deliveries).
//! - `P:events`     pub/sub channel where any producer may PUBLISH events.
//!
//! The per-node keys share the hash tag `{N}`, so a node's write touches one
//! slot and stays atomic on Redis Cluster too.

use redis::Script;
use std::sync::LazyLock;

/// The read script, sent as EVALSHA (and loaded again on NOSCRIPT).
pub static READ_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(READ));

/// Names derived from `--redis-prefix` and `--node`.
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
    pub meta: String,
    pub topics: String,
    pub registry: String,
    pub relay: String,
    pub events: String,
}

impl Keys {
    pub fn new(prefix: &str, node: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            meta: format!("{prefix}:{{{node}}}:meta"),
            topics: format!("{prefix}:{{{node}}}:topics"),
            registry: format!("{prefix}:nodes"),
            relay: format!("{prefix}:relay"),
            events: format!("{prefix}:events"),
        }
    }
}

/// Writes one node's absolute figures and refreshes their TTL.
///
/// KEYS: meta, topics. ARGV: ttl_ms, full (`1`/`0`), connections, stream,
/// sockets, origin (the writing process), then topic/count pairs (count `0`
/// removes the topic). A full
/// write replaces the topics hash; a partial one (a diff against what this
/// node wrote before) is refused with -1 when the meta key is missing, which
/// means Redis lost or expired the figures and the node must write them all.
/// Returns `{write time (ms, Redis clock), origin of the previous write}`
/// or -1. A foreign previous origin on a partial write means two processes
/// run with the same `--node`.
pub const WRITE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local full = ARGV[2] == '1'
if not full and redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if full then
  redis.call('DEL', KEYS[2])
end
local prev = redis.call('HGET', KEYS[1], 'o') or ''
redis.call('HSET', KEYS[1], 'c', ARGV[3], 's', ARGV[4], 'k', ARGV[5], 'at', now, 'o', ARGV[6])
local set, del = {}, {}
for i = 7, #ARGV - 1, 2 do
  if ARGV[i + 1] == '0' then
    del[#del + 1] = ARGV[i]
  else
    set[#set + 1] = ARGV[i]
    set[#set + 1] = ARGV[i + 1]
  end
  if #set >= 1000 then
    redis.call('HSET', KEYS[2], unpack(set))
    set = {}
  end
  if #del >= 1000 then
    redis.call('HDEL', KEYS[2], unpack(del))
    del = {}
  end
end
if #set > 0 then
  redis.call('HSET', KEYS[2], unpack(set))
end
if #del > 0 then
  redis.call('HDEL', KEYS[2], unpack(del))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return {now, prev}
"#;

/// Reads every live node: one round trip, cost ∝ live nodes × their topics.
///
/// KEYS: registry. ARGV: prefix, mode (`full` or `census`). Registry entries
/// whose meta has expired are dropped on the way. Returns
/// `{now_ms, {node, c, s, k, at, {topic, n, …}}, …}` in `full` mode and
/// `{now_ms, live_nodes, oldest_at}` in `census` mode.
pub const READ: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local full = ARGV[2] == 'full'
local names = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {now}
local live, oldest = 0, now
for _, name in ipairs(names) do
  local base = ARGV[1] .. ':{' .. name .. '}:'
  local m = redis.call('HMGET', base .. 'meta', 'c', 's', 'k', 'at')
  if m[1] and m[4] then
    live = live + 1
    local at = tonumber(m[4])
    if at and at < oldest then
      oldest = at
    end
    if full then
      out[#out + 1] = {name, m[1], m[2], m[3], m[4], redis.call('HGETALL', base .. 'topics')}
    end
  else
    redis.call('ZREM', KEYS[1], name)
  end
end
if not full then
  out[2] = live
  out[3] = oldest
end
return out
"#;

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn node_keys_share_a_hash_tag() {
        let k = Keys::new("hc", "a@h");
        assert_eq!(k.meta, "hc:{a@h}:meta");
        assert_eq!(k.topics, "hc:{a@h}:topics");
        assert_eq!(k.registry, "hc:nodes");
        assert_eq!(k.events, "hc:events");
        assert_eq!(k.relay, "hc:relay");
    }
}
