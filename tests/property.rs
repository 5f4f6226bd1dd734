//! Counting against a model: random sequences of join, leave, duplicate
//! join, refused join, close (close frame, FIN, TCP reset) and idle timeout
//! over several V1 and V2 sockets, all against ONE server. At quiescence
//! every per-topic count, the total, `stream_count` and `socket_count`
//! equal the model, and `/metrics` agrees (joins − leaves = memberships).

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const TOPICS: [&str; 5] = [STATS, STREAM, VSM, "rooms:a", "rooms:b"];
const SLOTS: usize = 6;
const MAX_CHANNELS: usize = 4;
const IDLE_MS: u64 = 1000;
const KEEPALIVE: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug)]
enum Ending {
    CloseFrame,
    Fin,
    Reset,
}

#[derive(Clone, Debug)]
enum Op {
    /// Join (a duplicate join when the slot already holds the topic).
    Join {
        slot: usize,
        topic: usize,
    },
    /// Join patterns:vsm with an invalid subsystem: refused, and a held
    /// vsm membership ends first.
    BadJoin {
        slot: usize,
    },
    Leave {
        slot: usize,
        topic: usize,
    },
    Close {
        slot: usize,
        how: Ending,
    },
    /// Stop talking: the server's idle timeout must close it.
    GoIdle {
        slot: usize,
    },
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![
        Just(Ending::CloseFrame),
        Just(Ending::Fin),
        Just(Ending::Reset)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let topic = 0..TOPICS.len();
    let join = (slot.clone(), topic.clone()).prop_map(|(slot, topic)| Op::Join { slot, topic });
    let bad_join = slot.clone().prop_map(|slot| Op::BadJoin { slot });
    let leave = (slot.clone(), topic).prop_map(|(slot, topic)| Op::Leave { slot, topic });
    let close = (slot.clone(), ending()).prop_map(|(slot, how)| Op::Close { slot, how });
    let idle = slot.prop_map(|slot| Op::GoIdle { slot });
    prop_oneof![
        6 => join,
        1 => bad_join,
        3 => leave,
        2 => close,
        1 => idle,
    ]
}

#[derive(Default)]
struct Slot {
    client: Option<Client>,
    joined: BTreeSet<usize>,
}

struct World<'a> {
    server: &'a Server,
    slots: Vec<Slot>,
    idle: Vec<Client>,
    last_keepalive: Instant,
}

impl World<'_> {
    async fn open(&mut self, i: usize) -> &mut Client {
        if self.slots[i].client.is_none() {
            let vsn = Vsn::alternating(i);
            self.slots[i].client = Some(client(self.server.addr, vsn).await);
            self.slots[i].joined.clear();
        }
        self.slots[i].client.as_mut().unwrap()
    }

    /// Heartbeats every live socket, so only the abandoned ones idle out.
    async fn keepalive(&mut self, force: bool) {
        if !force && self.last_keepalive.elapsed() < KEEPALIVE {
            return;
        }
        for s in self.slots.iter_mut() {
            if let Some(c) = s.client.as_mut() {
                c.heartbeat().await;
                c.take_stash();
            }
        }
        self.last_keepalive = Instant::now();
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Join { slot, topic } => {
                let held = self.slots[slot].joined.contains(&topic);
                let full = self.slots[slot].joined.len() >= MAX_CHANNELS;
                let params = if TOPICS[topic] == VSM {
                    json!({ "subsystem": (["all", "s1", "S3", "s5"][slot % 4]) })
                } else {
                    json!({})
                };
                let c = self.open(slot).await;
                let reply = c.join(TOPICS[topic], params).await;
                if held || !full {
                    reply.assert_ok();
                    if held {
                        c.expect_event(TOPICS[topic], "phx_close").await;
                    }
                    self.slots[slot].joined.insert(topic);
                } else {
                    assert_eq!(
                        reply.assert_error(),
                        &json!({"reason": "too many channels joined"})
                    );
                }
            }
            Op::BadJoin { slot } => {
                let c = self.open(slot).await;
                c.join(VSM, json!({"subsystem": "s9"})).await.assert_error();
                let vsm = TOPICS.iter().position(|t| *t == VSM).unwrap();
                self.slots[slot].joined.remove(&vsm);
            }
            Op::Leave { slot, topic } => {
                let c = self.open(slot).await;
                c.leave(TOPICS[topic]).await.assert_ok();
                self.slots[slot].joined.remove(&topic);
            }
            Op::Close { slot, how } => {
                if let Some(c) = self.slots[slot].client.take() {
                    match how {
                        Ending::CloseFrame => c.close().await,
                        Ending::Fin => c.vanish(),
                        Ending::Reset => c.abort(),
                    }
                }
                self.slots[slot].joined.clear();
            }
            Op::GoIdle { slot } => {
                if let Some(c) = self.slots[slot].client.take() {
                    self.idle.push(c);
                }
                self.slots[slot].joined.clear();
            }
        }
    }

    /// (per-topic counts, memberships, sockets) the model expects.
    fn model(&self) -> (BTreeMap<String, u64>, u64, u64) {
        let mut topics = BTreeMap::new();
        let mut sockets = 0;
        for s in &self.slots {
            if s.client.is_some() {
                sockets += 1;
                for t in &s.joined {
                    *topics.entry(TOPICS[*t].to_owned()).or_insert(0) += 1;
                }
            }
        }
        let total = topics.values().sum();
        (topics, total, sockets)
    }
}

async fn quiet_and_empty(server: &Server) {
    wait_stats(server.addr, "no sockets left from the last case", |s| {
        s["socket_count"] == 0 && s["connection_count"] == 0
    })
    .await;
}

async fn run_case(server: &Server, ops: &[Op]) {
    quiet_and_empty(server).await;
    let mut world = World {
        server,
        slots: (0..SLOTS).map(|_| Slot::default()).collect(),
        idle: Vec::new(),
        last_keepalive: Instant::now(),
    };
    for op in ops {
        world.apply(op).await;
        world.keepalive(false).await;
    }
    // Quiescence: abandoned sockets time out; live ones keep talking.
    let (topics, total, sockets) = world.model();
    let deadline = Instant::now() + Duration::from_millis(IDLE_MS) + Duration::from_secs(5);
    let last = loop {
        world.keepalive(false).await;
        let s = stats(server.addr).await;
        if topic_counts(&s) == topics
            && s["connection_count"] == total
            && s["socket_count"] == sockets
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "counts never matched the model\nops: {ops:?}\nmodel: {topics:?} total {total} sockets {sockets}\nserver: {s}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_local_stats(&last, &server.node);
    assert_eq!(
        last["stream_count"],
        topics.get(STREAM).copied().unwrap_or(0),
        "{last}"
    );
    let m = metrics(server.addr).await;
    assert_eq!(
        m.value("headcount_joins_total", &[]) - m.value("headcount_leaves_total", &[]),
        total as f64,
        "joins - leaves = memberships"
    );
    assert_eq!(m.get("headcount_memberships", &[]), Some(total as f64));
    assert_eq!(m.get("headcount_sockets", &[]), Some(sockets as f64));
    // Every abandoned socket was closed by the server, with a close frame.
    for mut c in world.idle.drain(..) {
        assert_ne!(c.expect_closed().await, Closed::NoFrame);
    }
    // Tear down and check everything goes back to zero.
    for s in world.slots.iter_mut() {
        if let Some(c) = s.client.take() {
            c.close().await;
        }
    }
    quiet_and_empty(server).await;
}

#[test]
fn random_membership_histories_match_the_model_at_quiescence() {
    let server = Server::start(&[
        "--idle-timeout-ms",
        &IDLE_MS.to_string(),
        "--allow-topic",
        "rooms:*",
        "--max-channels-per-socket",
        &MAX_CHANNELS.to_string(),
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 8,
        // A failing case waits out its deadline; keep shrinking bounded.
        max_shrink_iters: 8,
        max_shrink_time: 60_000,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 8..48), |ops| {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(run_case(&server, &ops))
        }));
        outcome.map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            TestCaseError::fail(msg)
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
