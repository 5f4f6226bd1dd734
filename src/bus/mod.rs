//! The event bus: validated producer events and raw broadcasts become
//! deliveries (topic, push event, payload), which the registry fans out to
//! every local member exactly once.
//!
//! The seam for clustering is the relay channel: `publish` delivers locally
//! and then queues the same deliveries for the cluster backend, which carries
//! them to the other nodes; deliveries arriving from another node come back
//! in through `deliver_local`, which never relays again, so a message is
//! never echoed back.
//!
//! ```
//! use headcount::bus::Event;
//! use serde_json::json;
//!
//! let event = Event::new("pattern_detected", json!({"pattern_type": "spike", "confidence": 0.9}))
//!     .expect("a valid event");
//! // With a running server: `server.bus().publish(event);`
//! # let _ = event;
//! ```

mod event;

pub use event::{subsystem_number, Event, EventError};

use crate::metrics::Metrics;
use crate::registry::{Registry, Select};
use crate::throttle::Throttle;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Largest body accepted from a producer (HTTP or Redis).
pub const MAX_BODY: usize = 1 << 20;
/// Most events in one request or one Redis message.
pub const MAX_BATCH: usize = 1000;
/// Deliveries waiting for the relay; beyond this they are dropped (and
/// counted) rather than held in memory while Redis is away.
pub const RELAY_QUEUE: usize = 4096;

/// Push events the protocol gives a meaning to (SPEC §4.4): a raw broadcast
/// of one would make clients act on it (phoenix.js closes a channel on
/// `phx_close`), so neither members nor producers may send them.
pub fn reserved(event: &str) -> bool {
    event.starts_with("phx_")
        || matches!(
            event,
            "presence_state"
                | "presence_diff"
                | "occupancy"
                | "stats_update"
                | "stats_changed"
                | "local_stats"
                | "cluster_stats"
                | "initial_stats"
        )
}

/// A push ready for subscribers: where it goes, its event name and payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub topic: String,
    pub event: String,
    /// JSON text of the payload.
    pub payload: String,
    /// 1..=5 restricts a `patterns:vsm` push to that subsystem (and `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<u8>,
}

impl Delivery {
    fn select(&self) -> Select {
        match self.subsystem {
            Some(n) => Select::Subsystem(n),
            None => Select::All,
        }
    }
}

/// Where the bus queues deliveries for the other nodes.
pub struct RelaySender {
    tx: mpsc::Sender<Vec<Delivery>>,
    complaints: Throttle,
}

/// What the cluster backend reads to carry deliveries to the other nodes.
pub type RelayReceiver = mpsc::Receiver<Vec<Delivery>>;

/// A bounded channel from the bus to the cluster backend.
pub fn relay_channel() -> (RelaySender, RelayReceiver) {
    let (tx, rx) = mpsc::channel(RELAY_QUEUE);
    let sender = RelaySender {
        tx,
        complaints: Throttle::new(),
    };
    (sender, rx)
}

/// Publishes to this node's members and, through the relay, to the rest of
/// the cluster.
pub struct Bus {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    relay: Option<RelaySender>,
}

impl Bus {
    /// `relay`: `None` on a single node.
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>, relay: Option<RelaySender>) -> Bus {
        Bus {
            registry,
            metrics,
            relay,
        }
    }

    /// Publishes one validated event to every subscriber in the cluster.
    pub fn publish(&self, event: Event) -> usize {
        self.publish_all(std::slice::from_ref(&event))
    }

    /// Publishes validated events in order; returns local deliveries.
    pub fn publish_all(&self, events: &[Event]) -> usize {
        let deliveries: Vec<Delivery> = events
            .iter()
            .flat_map(|e| e.deliveries().iter().cloned())
            .collect();
        self.metrics.events_in.increment(events.len() as u64);
        self.send(deliveries)
    }

    /// A raw push to any topic (`/api/broadcast`, client `broadcast`).
    pub fn broadcast(&self, topic: &str, event: &str, payload: &str) -> usize {
        self.metrics.events_in.increment(1);
        self.send(vec![Delivery {
            topic: topic.into(),
            event: event.into(),
            payload: payload.into(),
            subsystem: None,
        }])
    }

    fn send(&self, deliveries: Vec<Delivery>) -> usize {
        let n = self.deliver_local(&deliveries);
        if let Some(relay) = &self.relay {
            if !deliveries.is_empty() {
                self.relay(relay, deliveries);
            }
        }
        n
    }

    fn relay(&self, relay: &RelaySender, deliveries: Vec<Delivery>) {
        match relay.tx.try_send(deliveries) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.relay_dropped.increment(1);
                if let Some(more) = relay.complaints.allow() {
                    tracing::warn!(
                        suppressed = more,
                        "relay queue full (redis slow or down): message not sent to other nodes"
                    );
                }
            }
            // The backend has stopped: the node is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Delivers to this node's members only: the relay's way in.
    pub fn deliver_local(&self, deliveries: &[Delivery]) -> usize {
        let mut n = 0;
        for d in deliveries {
            n += self
                .registry
                .publish(&d.topic, &d.event, &d.payload, d.select());
        }
        self.metrics.deliveries.increment(n as u64);
        n
    }
}
