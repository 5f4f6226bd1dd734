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
//! slot and stays atomic on Redis Cluster too. On a Redis Cluster the view
//! and relay channels are sharded: `{P:k}:view` and `{P:k}:relay` for 16
//! partitions `k`, each pair on one slot; a node publishes on the partition
//! of its name (so its deltas keep their order) and every node subscribes
//! to all of them. Producers' events stay classic pub/sub.

use redis::Script;
use std::sync::LazyLock;

/// Sharded channel pairs on a Redis Cluster.
pub const PARTITIONS: u64 = 16;

/// What a channel carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carries {
    View,
    Relay,
    Events,
}

/// Names derived from `--redis-prefix` and `--node`.
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
    pub meta: String,
    pub topics: String,
    pub presence: String,
    pub registry: String,
    /// Where this node publishes its deltas and its relayed deliveries.
    pub view: String,
    pub relay: String,
    pub events: String,
    /// Every view and relay channel (one each unless sharded).
    pub views: Vec<String>,
    pub relays: Vec<String>,
}

impl Keys {
    /// `sharded`: the view and relay channels of a Redis Cluster.
    pub fn new(prefix: &str, node: &str, sharded: bool) -> Keys {
        let [meta, topics, presence] = Keys::snapshot(prefix, node);
        let (views, relays): (Vec<String>, Vec<String>) = if sharded {
            (0..PARTITIONS)
                .map(|k| {
                    (
                        format!("{{{prefix}:{k}}}:view"),
                        format!("{{{prefix}:{k}}}:relay"),
                    )
                })
                .unzip()
        } else {
            (
                vec![format!("{prefix}:view")],
                vec![format!("{prefix}:relay")],
            )
        };
        let mine = if sharded { partition(node) } else { 0 };
        Keys {
            prefix: prefix.to_owned(),
            meta,
            topics,
            presence,
            registry: format!("{prefix}:nodes"),
            view: views[mine].clone(),
            relay: relays[mine].clone(),
            events: format!("{prefix}:events"),
            views,
            relays,
        }
    }

    /// What a channel a message arrived on carries.
    pub fn carries(&self, channel: &[u8]) -> Option<Carries> {
        let named = |list: &[String]| list.iter().any(|c| c.as_bytes() == channel);
        if named(&self.views) {
            Some(Carries::View)
        } else if named(&self.relays) {
            Some(Carries::Relay)
        } else if channel == self.events.as_bytes() {
            Some(Carries::Events)
        } else {
            None
        }
    }

    /// The snapshot keys of any node: meta, topics, presence.
    pub fn snapshot(prefix: &str, node: &str) -> [String; 3] {
        ["meta", "topics", "presence"].map(|k| format!("{prefix}:{{{node}}}:{k}"))
    }
}

/// A node's partition: a stable hash of its name.
pub fn partition(node: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % PARTITIONS) as usize
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
    use super::*;

    #[test]
    fn node_keys_share_a_hash_tag() {
        let k = Keys::new("hc", "a@h", false);
        assert_eq!(k.meta, "hc:{a@h}:meta");
        assert_eq!(k.topics, "hc:{a@h}:topics");
        assert_eq!(k.presence, "hc:{a@h}:presence");
        assert_eq!(k.registry, "hc:nodes");
        assert_eq!(k.view, "hc:view");
        assert_eq!(k.events, "hc:events");
        assert_eq!(k.relay, "hc:relay");
        assert_eq!(k.carries(b"hc:view"), Some(Carries::View));
        assert_eq!(k.carries(b"hc:other"), None);
    }

    #[test]
    fn sharded_channels_pair_up_on_a_partition() {
        let k = Keys::new("hc", "a@h", true);
        assert_eq!(k.views.len(), 16);
        let p = partition("a@h");
        assert_eq!(k.view, format!("{{hc:{p}}}:view"));
        assert_eq!(k.relay, format!("{{hc:{p}}}:relay"));
        assert_eq!(k.carries(b"{hc:3}:relay"), Some(Carries::Relay));
        assert_eq!(k.carries(b"hc:events"), Some(Carries::Events));
    }
}
