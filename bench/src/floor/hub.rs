//! The floor server's topics: who is joined to each, behind one mutex, and
//! the fan-out of a message to a topic's members through their channels
//! (a member whose channel is full is closed as a slow consumer). Also the
//! `occupancy` pushes of watched topics, the webhook sender's changes (a
//! topic's first member, its last), and the server's tallies.

use super::webhooks::Change;
use super::wire;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;

/// Messages queued for one socket before it is closed as a slow consumer.
pub(super) const QUEUE: usize = 1024;

/// One socket as the hub reaches it.
#[derive(Clone)]
pub(super) struct Peer {
    pub(super) id: u64,
    pub(super) tx: mpsc::Sender<Message>,
    /// Told when the socket's queue overflowed.
    pub(super) kill: Arc<Notify>,
}

#[derive(Default)]
struct Topic {
    /// Members by socket id, and whether each watches occupancy.
    members: HashMap<u64, (Peer, bool)>,
    watchers: usize,
}

#[derive(Default)]
pub(super) struct Tally {
    pub(super) sockets: AtomicU64,
    pub(super) open: AtomicU64,
    pub(super) http_requests: AtomicU64,
    pub(super) frames_in: AtomicU64,
    pub(super) messages_out: AtomicU64,
    pub(super) slow_consumers: AtomicU64,
}

#[derive(Default)]
pub(super) struct Hub {
    topics: Mutex<HashMap<String, Topic>>,
    next_id: AtomicU64,
    pub(super) tally: Tally,
    /// With `--webhook-url`: where occupied / vacated changes go.
    pub(super) webhooks: Option<mpsc::UnboundedSender<Change>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Hub {
    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn topics(&self) -> MutexGuard<'_, HashMap<String, Topic>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces) `peer`'s membership of `topic`.
    pub(super) fn join(&self, topic: &str, peer: &Peer, watch: bool) {
        let mut topics = self.topics();
        let t = topics.entry(topic.to_string()).or_default();
        if t.members.is_empty() {
            if let Some(w) = &self.webhooks {
                let _ = w.send(Change::Occupied(topic.to_string()));
            }
        }
        if let Some((_, was)) = t.members.insert(peer.id, (peer.clone(), watch)) {
            t.watchers -= usize::from(was);
        }
        t.watchers += usize::from(watch);
        self.count_changed(topic, t);
    }

    /// Ends `id`'s membership of `topic`, if it had one.
    pub(super) fn leave(&self, topic: &str, id: u64) {
        let mut topics = self.topics();
        let Some(t) = topics.get_mut(topic) else {
            return;
        };
        if let Some((_, watched)) = t.members.remove(&id) {
            t.watchers -= usize::from(watched);
            if t.members.is_empty() {
                topics.remove(topic);
                if let Some(w) = &self.webhooks {
                    let _ = w.send(Change::Vacated(topic.to_string()));
                }
            } else {
                self.count_changed(topic, t);
            }
        }
    }

    /// Queues `text` for every member of `topic`; returns how many.
    pub(super) fn broadcast(&self, topic: &str, text: String) -> usize {
        let topics = self.topics();
        let Some(t) = topics.get(topic) else {
            return 0;
        };
        let msg = Message::text(text);
        for (peer, _) in t.members.values() {
            self.send(peer, msg.clone());
        }
        t.members.len()
    }

    fn send(&self, peer: &Peer, msg: Message) {
        match peer.tx.try_send(msg) {
            Ok(()) => {
                self.tally.messages_out.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.tally.slow_consumers.fetch_add(1, Ordering::Relaxed);
                peer.kill.notify_one();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// An `occupancy` push to the topic's watchers, if it has any.
    fn count_changed(&self, topic: &str, t: &Topic) {
        if t.watchers == 0 {
            return;
        }
        let msg = Message::text(wire::occupancy(topic, t.members.len(), unix_ms()));
        for (peer, watching) in t.members.values() {
            if *watching {
                self.send(peer, msg.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(hub: &Hub) -> (Peer, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(2);
        let p = Peer {
            id: hub.next_id(),
            tx,
            kill: Arc::new(Notify::new()),
        };
        (p, rx)
    }

    fn texts(rx: &mut mpsc::Receiver<Message>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m.into_text().unwrap().to_string());
        }
        out
    }

    #[test]
    fn members_get_broadcasts_and_watchers_counts() {
        let hub = Hub::default();
        let (a, mut ra) = peer(&hub);
        let (b, mut rb) = peer(&hub);
        hub.join("t", &a, true);
        assert!(texts(&mut ra)[0].contains("\"connections\":1"));
        hub.join("t", &b, false);
        assert!(texts(&mut ra)[0].contains("\"connections\":2"));
        assert!(texts(&mut rb).is_empty());
        assert_eq!(hub.broadcast("t", wire::push("t", "e", "{}")), 2);
        assert_eq!(texts(&mut rb), vec![r#"[null,null,"t","e",{}]"#]);
        assert_eq!(texts(&mut ra).len(), 1);
        hub.leave("t", b.id);
        assert!(texts(&mut ra)[0].contains("\"connections\":1"));
        hub.leave("t", a.id);
        assert_eq!(hub.broadcast("t", "x".into()), 0);
        assert!(hub.topics().is_empty());
    }

    #[test]
    fn a_full_queue_tells_the_socket_to_close() {
        let hub = Hub::default();
        let (a, _ra) = peer(&hub);
        hub.join("t", &a, false);
        for _ in 0..3 {
            hub.broadcast("t", "m".into());
        }
        assert_eq!(hub.tally.slow_consumers.load(Ordering::Relaxed), 1);
        assert_eq!(hub.tally.messages_out.load(Ordering::Relaxed), 2);
    }
}
