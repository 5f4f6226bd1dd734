//! What the serving side of a node shares — the sessions, the channels and
//! the HTTP routes: settings and the components, built bottom-up here
//! (metrics → registry → bus → cluster backend). Nothing below the server
//! sees this bundle: the registry, the bus and the cluster backend were each
//! given only what they use.

use crate::auth::{KeyError, Verifier};
use crate::bus::{relay_channel, Bus};
use crate::cluster::{Cluster, Parts, RedisSettings, RedisSetupError};
use crate::config::Config;
use crate::globs::Globs;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::registry::Registry;
use crate::stats::Reporter;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    #[error("auth key: {0}")]
    Key(#[from] KeyError),
}

pub struct Ctx {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub reporter: Arc<Reporter>,
    pub presence: Arc<Presence>,
    pub bus: Arc<Bus>,
    pub cluster: Cluster,
    pub metrics: Arc<Metrics>,
    /// `--allow-topic`, compiled.
    pub allowed_topics: Globs,
    /// `--public-topic`, compiled: what anonymous sockets may join.
    pub public_topics: Globs,
    /// `--allowed-origins`, compiled; `None`: any origin.
    pub origins: Option<Globs>,
    /// Checks tokens when `--auth-secret` or `--auth-public-key` is set.
    pub auth: Option<Verifier>,
    pub max_connections: u64,
    /// Cancelled when the node starts draining; every task watches it.
    pub stop: CancellationToken,
    /// Every task of the node, sessions included: draining waits on it.
    pub tasks: TaskTracker,
}

impl Ctx {
    /// Builds the node's components. Nothing here waits on Redis.
    pub fn assemble(config: Config, max_connections: u64) -> Result<Arc<Ctx>, SetupError> {
        let auth = Verifier::from_settings(
            config.auth_secret.as_deref(),
            config.auth_public_key.as_deref(),
        )?;
        let metrics = Arc::new(Metrics::with_mode(config.redis.is_some()));
        metrics.set_static(max_connections);
        let registry = Registry::new(&config.node, config.max_topics, config.redis.is_some());
        let reporter = Arc::new(Reporter::new(registry.clone()));
        let origin = crate::cluster::origin_id(&config.node);
        let presence = Presence::new(
            &config.node,
            Globs::new(&config.presence_topic),
            config.presence_max_members,
            &origin,
            config.redis.is_some(),
        );
        let (bus, cluster) = match &config.redis {
            None => {
                let bus = Bus::new(registry.clone(), metrics.clone(), None);
                (Arc::new(bus), Cluster::single(reporter.clone()))
            }
            Some(url) => {
                let (relay, relayed) = relay_channel();
                let bus = Arc::new(Bus::new(registry.clone(), metrics.clone(), Some(relay)));
                let settings = RedisSettings {
                    url: url.clone(),
                    origin: origin.clone(),
                    prefix: config.redis_prefix.clone(),
                    node: config.node.clone(),
                    ttl_ms: config.node_ttl_ms,
                };
                let parts = Parts {
                    registry: registry.clone(),
                    presence: presence.clone(),
                    bus: bus.clone(),
                    metrics: metrics.clone(),
                    relay: relayed,
                };
                (bus, Cluster::redis(settings, reporter.clone(), parts)?)
            }
        };
        Ok(Arc::new(Ctx {
            allowed_topics: Globs::new(&config.allow_topic),
            public_topics: Globs::new(&config.public_topic),
            origins: (!config.allowed_origins.is_empty())
                .then(|| Globs::new(&config.allowed_origins)),
            auth,
            config,
            registry,
            reporter,
            presence,
            bus,
            cluster,
            metrics,
            max_connections,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }))
    }

    /// Whether the node is draining (new sockets are refused).
    pub fn draining(&self) -> bool {
        self.stop.is_cancelled()
    }
}
