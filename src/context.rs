//! The state one node shares between its tasks: settings, the tally, the
//! hub, the bus, the cluster backend, metrics and the registry of open
//! sockets (so shutdown can reach every one of them).

use crate::bus::Bus;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::outbox::{CloseReason, Outbox};
use crate::tally::Tally;
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::watch;

pub struct Ctx {
    pub config: Config,
    pub tally: Arc<Tally>,
    pub hub: Arc<Hub>,
    pub bus: Bus,
    pub metrics: Arc<Metrics>,
    pub cluster: OnceLock<Cluster>,
    pub started: Instant,
    pub max_connections: u64,
    sockets: DashMap<u64, Arc<Outbox>>,
    next_socket: AtomicU64,
    draining: AtomicBool,
    shutdown: watch::Sender<bool>,
    pub queue_high_water: AtomicUsize,
}

impl Ctx {
    pub fn new(config: Config, max_connections: u64) -> Arc<Ctx> {
        let metrics = Arc::new(Metrics::with_mode(config.redis.is_some()));
        metrics.set_static(max_connections);
        let hub = Hub::new();
        Arc::new(Ctx {
            tally: Tally::new(&config.node),
            bus: Bus::new(hub.clone(), metrics.clone()),
            hub,
            metrics,
            cluster: OnceLock::new(),
            started: Instant::now(),
            max_connections,
            sockets: DashMap::new(),
            next_socket: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            shutdown: watch::Sender::new(false),
            queue_high_water: AtomicUsize::new(0),
            config,
        })
    }

    pub fn cluster(&self) -> &Cluster {
        self.cluster.get_or_init(|| Cluster::Local)
    }

    /// Registers a socket's outbox so shutdown can close it; unregisters on drop.
    pub fn register(self: &Arc<Self>, outbox: Arc<Outbox>) -> Registration {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        self.sockets.insert(id, outbox);
        Registration {
            ctx: self.clone(),
            id,
        }
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts a graceful shutdown: refuse new sockets, close every open one
    /// with 1001, and wake every task that watches the signal.
    pub fn begin_shutdown(&self) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shutdown.send_replace(true);
        for entry in self.sockets.iter() {
            entry.value().close(CloseReason::Shutdown);
        }
    }

    /// Resolves once shutdown has begun.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|down| *down).await;
        }
    }

    /// Gives back the registry's spare capacity after many sockets closed.
    pub fn shrink_registry(&self) {
        self.sockets.shrink_to_fit();
    }

    /// Whether a client may join `topic` as a generic channel.
    pub fn topic_allowed(&self, topic: &str) -> bool {
        self.config.allow_topic.iter().any(|g| glob_match(g, topic))
    }
}

/// One socket's place in the registry.
pub struct Registration {
    ctx: Arc<Ctx>,
    id: u64,
}

impl Registration {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.ctx.sockets.remove(&self.id);
    }
}

/// `*` matches any run of characters, `?` one character; the rest is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("rooms:*", "rooms:lobby"));
        assert!(glob_match("rooms:*", "rooms:"));
        assert!(!glob_match("rooms:*", "room:x"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*:x:*", "a:x:b"));
        assert!(!glob_match("exact", "exactly"));
    }
}
