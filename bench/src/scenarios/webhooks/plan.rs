//! `bench webhooks`' plan, apart from the sockets: topic i is joined at
//! i · duration / T on a random node by one of that node's actors (round
//! robin, none holding more than [`MAX_HELD`] topics), and left `--hold`
//! seconds after its join reply by the same actor. Enough actors that each
//! makes at most [`PER_ACTOR`] requests per second, inside the nodes'
//! default per-socket limits (20 joins/s, 100 messages/s, 100 channels).

use crate::rng::Rng;
use std::time::Duration;

/// Requests per second one actor makes at most, on average.
pub(super) const PER_ACTOR: f64 = 10.0;
/// Topics one actor holds at most (the node's default limit is 100).
pub(super) const MAX_HELD: usize = 90;
/// Most actors in all.
pub(super) const MAX_ACTORS: usize = 2000;

/// Actors per node for `topics` over `duration` s, each held `hold` s.
pub(super) fn actors_per_node(topics: usize, duration: f64, hold: f64, nodes: usize) -> usize {
    let requests_per_s = 2.0 * topics as f64 / duration.max(1e-3);
    let by_rate = (requests_per_s / PER_ACTOR).ceil() as usize;
    // Topics held at once: those joined within the last `hold` seconds.
    let held = (topics as f64 * (hold / duration.max(1e-3)).min(1.0)).ceil() as usize + 1;
    let by_held = held.div_ceil(MAX_HELD);
    // Random nodes: a little over the even share.
    by_rate.max(by_held).max(1).div_ceil(nodes.max(1)) + 1
}

/// When topic `i` of `topics` is joined, from the start.
pub(super) fn join_at(i: usize, topics: usize, duration: f64) -> Duration {
    Duration::from_secs_f64(duration * i as f64 / topics.max(1) as f64)
}

/// Picks nodes and actors; actor `a` of node `n` is number `n * per_node + a`.
pub(super) struct Assign {
    rng: Rng,
    nodes: usize,
    per_node: usize,
    next: Vec<usize>,
    pub(super) held: Vec<usize>,
    pub(super) dead: Vec<bool>,
}

impl Assign {
    pub(super) fn new(nodes: usize, per_node: usize, seed: u64) -> Assign {
        Assign {
            rng: Rng::new(seed),
            nodes: nodes.max(1),
            per_node: per_node.max(1),
            next: vec![0; nodes.max(1)],
            held: vec![0; nodes.max(1) * per_node.max(1)],
            dead: vec![false; nodes.max(1) * per_node.max(1)],
        }
    }

    #[cfg(test)]
    pub(super) fn node_of(&self, actor: usize) -> usize {
        actor / self.per_node
    }

    /// The actor that joins the next topic, on a random node (another node
    /// when that one has no live actor with room), or none at all.
    pub(super) fn pick(&mut self) -> Option<usize> {
        let first = self.rng.below(self.nodes);
        for k in 0..self.nodes {
            let node = (first + k) % self.nodes;
            for _ in 0..self.per_node {
                let a = node * self.per_node + self.next[node];
                self.next[node] = (self.next[node] + 1) % self.per_node;
                if !self.dead[a] && self.held[a] < MAX_HELD {
                    self.held[a] += 1;
                    return Some(a);
                }
            }
        }
        None
    }

    /// `actor` no longer holds one of its topics.
    pub(super) fn release(&mut self, actor: usize) {
        if let Some(h) = self.held.get_mut(actor) {
            *h = h.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_keep_within_the_default_limits() {
        // 10,000 topics over 60 s, held 5 s, 3 nodes: 333 requests/s.
        let per_node = actors_per_node(10_000, 60.0, 5.0, 3);
        assert!(per_node * 3 * 10 >= 334, "{per_node}");
        assert!(per_node * 3 * MAX_HELD >= 835, "{per_node}");
        assert_eq!(actors_per_node(1, 1.0, 0.0, 1), 2);
        // Long holds: bounded by the channels an actor may hold.
        assert!(actors_per_node(10_000, 10.0, 60.0, 1) >= 10_001 / MAX_HELD);
        assert_eq!(join_at(5, 10, 2.0), Duration::from_secs(1));
    }

    #[test]
    fn picks_spread_over_nodes_and_skip_full_or_dead_actors() {
        let mut a = Assign::new(2, 2, 7);
        let mut per_node = [0; 2];
        for _ in 0..200 {
            let x = a.pick().unwrap();
            per_node[a.node_of(x)] += 1;
            a.release(x);
        }
        assert!(per_node[0] > 50 && per_node[1] > 50, "{per_node:?}");
        a.dead = vec![true, true, true, false];
        for _ in 0..MAX_HELD {
            assert_eq!(a.pick(), Some(3));
        }
        assert_eq!(a.pick(), None, "the one live actor is full");
        a.release(3);
        assert_eq!(a.pick(), Some(3));
    }
}
