//! Where a cluster keeps things in Redis: key and channel names, and the Lua
//! script that writes one node's snapshot.
//!
//! Layout, for prefix `P` and node `N`:
//! - `P:{N}:meta`   hash `c` connections, `s` stream, `k` sockets, `q` the
//!   sequence number of the write, `o` the writing process, `at` written at
//!   (ms, Redis clock). Its TTL is the node's `--node-ttl-ms`, so a node that
//!   stops refreshing expires by itself.
//! - `P:{N}:topics` hash topic → memberships on N (non-empty topics only),
//!   same TTL.
//! - `P:{N}:presence` hash phx_ref → `[topic, KEY, META]` of N's presence
//!   metas, same TTL. With `meta` and `topics`, the node's snapshot: what a
//!   node that missed some of N's deltas reads to catch up.
//! - `P:nodes`      zset N → last write (ms, node clock): who to read at start.
//! - `P:view`       pub/sub channel of every node's deltas (one per write).
//! - `P:relay`      pub/sub channel between nodes (bus deliveries).
//! - `P:events`     pub/sub channel where any producer may PUBLISH events.
//!
//! The per-node keys share the hash tag `{N}`, so a node's write touches one
//! slot and stays atomic on Redis Cluster too.

use redis::Script;
use std::sync::LazyLock;

/// Names derived from `--redis-prefix` and `--node`.
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
    pub meta: String,
    pub topics: String,
    pub presence: String,
    pub registry: String,
    pub view: String,
    pub relay: String,
    pub events: String,
}

impl Keys {
    pub fn new(prefix: &str, node: &str) -> Keys {
        let [meta, topics, presence] = Keys::snapshot(prefix, node);
        Keys {
            prefix: prefix.to_owned(),
            meta,
            topics,
            presence,
            registry: format!("{prefix}:nodes"),
            view: format!("{prefix}:view"),
            relay: format!("{prefix}:relay"),
            events: format!("{prefix}:events"),
        }
    }

    /// The snapshot keys of any node: meta, topics, presence.
    pub fn snapshot(prefix: &str, node: &str) -> [String; 3] {
        ["meta", "topics", "presence"].map(|k| format!("{prefix}:{{{node}}}:{k}"))
    }
}

/// Writes one node's snapshot and refreshes its TTL; sent as EVALSHA (and
/// loaded again when Redis answers NOSCRIPT).
///
/// KEYS: meta, topics, presence. ARGV: ttl_ms, full (`1`/`0`), connections,
/// stream, sockets, origin (the writing process), seq, then the number of
/// topic/count pairs and the pairs (count `0` removes the topic), then the
/// number of presence ref/entry pairs and the pairs, then presence refs to
/// remove. A full write replaces the topics and presence hashes; a partial
/// one (what changed since this node's last write) is refused with -1 when
/// the meta key is missing, which means Redis lost or expired the snapshot
/// and the node must write it all. Returns `{write time (ms, Redis clock),
/// origin of the previous write}` or -1. A foreign previous origin on a
/// partial write means two processes run with the same `--node`.
pub static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local full = ARGV[2] == '1'
if not full and redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if full then
  redis.call('DEL', KEYS[2], KEYS[3])
end
local prev = redis.call('HGET', KEYS[1], 'o') or ''
redis.call('HSET', KEYS[1], 'c', ARGV[3], 's', ARGV[4], 'k', ARGV[5], 'at', now, 'o', ARGV[6], 'q', ARGV[7])
-- HSET/HDEL in chunks: Lua's unpack has a limit.
local function flush(cmd, key, list)
  if #list > 0 then
    redis.call(cmd, key, unpack(list))
  end
  return {}
end
local set, del = {}, {}
local nt = tonumber(ARGV[8])
local i = 9
for _ = 1, nt do
  if ARGV[i + 1] == '0' then
    del[#del + 1] = ARGV[i]
  else
    set[#set + 1] = ARGV[i]
    set[#set + 1] = ARGV[i + 1]
  end
  if #set >= 1000 then set = flush('HSET', KEYS[2], set) end
  if #del >= 1000 then del = flush('HDEL', KEYS[2], del) end
  i = i + 2
end
set = flush('HSET', KEYS[2], set)
del = flush('HDEL', KEYS[2], del)
local np = tonumber(ARGV[i])
i = i + 1
for _ = 1, np do
  set[#set + 1] = ARGV[i]
  set[#set + 1] = ARGV[i + 1]
  if #set >= 1000 then set = flush('HSET', KEYS[3], set) end
  i = i + 2
end
set = flush('HSET', KEYS[3], set)
while i <= #ARGV do
  del[#del + 1] = ARGV[i]
  if #del >= 1000 then del = flush('HDEL', KEYS[3], del) end
  i = i + 1
end
del = flush('HDEL', KEYS[3], del)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
for _, k in ipairs({KEYS[2], KEYS[3]}) do
  if redis.call('EXISTS', k) == 1 then
    redis.call('PEXPIRE', k, ARGV[1])
  end
end
return {now, prev}
"#,
    )
});

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn node_keys_share_a_hash_tag() {
        let k = Keys::new("hc", "a@h");
        assert_eq!(k.meta, "hc:{a@h}:meta");
        assert_eq!(k.topics, "hc:{a@h}:topics");
        assert_eq!(k.presence, "hc:{a@h}:presence");
        assert_eq!(k.registry, "hc:nodes");
        assert_eq!(k.view, "hc:view");
        assert_eq!(k.events, "hc:events");
        assert_eq!(k.relay, "hc:relay");
    }
}
