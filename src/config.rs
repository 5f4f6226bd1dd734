//! Every `serve` setting in one struct, resolved from flags, `HEADCOUNT_*`
//! environment variables, a TOML file and defaults, in that precedence.

use clap::builder::BoolishValueParser;
use clap::Args;
use serde::Deserialize;
use std::path::PathBuf;

/// `headcount serve` flags. Each one is optional here so that a value from
/// the config file or the default can fill what neither flag nor env set.
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// Read settings from this TOML file (keys are flag names with `_`).
    #[arg(long, env = "HEADCOUNT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address; port 0 picks a free port. [default: 127.0.0.1:4000]
    #[arg(long, env = "HEADCOUNT_BIND")]
    pub bind: Option<String>,
    /// This node's name in every stats map. [default: headcount@<hostname>]
    #[arg(long, env = "HEADCOUNT_NODE")]
    pub node: Option<String>,
    /// redis:// URL; set → cluster mode.
    #[arg(long, env = "HEADCOUNT_REDIS")]
    pub redis: Option<String>,
    /// Prefix of every Redis key and channel. [default: headcount]
    #[arg(long, env = "HEADCOUNT_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// A node silent this long is dropped from cluster stats. [default: 5000]
    #[arg(long, env = "HEADCOUNT_NODE_TTL_MS")]
    pub node_ttl_ms: Option<u64>,
    /// Period of `stats_update` pushes. [default: 5000]
    #[arg(long, env = "HEADCOUNT_STATS_INTERVAL_MS")]
    pub stats_interval_ms: Option<u64>,
    /// Close a socket that sends nothing for this long. [default: 60000]
    #[arg(long, env = "HEADCOUNT_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Refuse sockets beyond this with HTTP 503. [default: open-file limit less a reserve]
    #[arg(long, env = "HEADCOUNT_MAX_CONNECTIONS")]
    pub max_connections: Option<u64>,
    /// Joins per socket beyond this are refused. [default: 100]
    #[arg(long, env = "HEADCOUNT_MAX_CHANNELS_PER_SOCKET")]
    pub max_channels_per_socket: Option<usize>,
    /// A larger inbound frame or message closes the socket with 1009. [default: 65536]
    #[arg(long, env = "HEADCOUNT_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Messages queued per socket before it is closed as a slow consumer. [default: 1024]
    #[arg(long, env = "HEADCOUNT_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// Extra topics clients may join, as globs (`rooms:*`); repeatable.
    #[arg(long, env = "HEADCOUNT_ALLOW_TOPIC", value_delimiter = ',')]
    pub allow_topic: Vec<String>,
    /// Let clients push `broadcast` on generic topics.
    #[arg(long, env = "HEADCOUNT_CLIENT_BROADCAST", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub client_broadcast: Option<bool>,
    /// Demand `Authorization: Bearer <key>` on the HTTP write API.
    #[arg(long, env = "HEADCOUNT_API_KEY")]
    pub api_key: Option<String>,
    /// `text` or `json`. [default: text]
    #[arg(long, env = "HEADCOUNT_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// The same settings as read from `--config`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    node: Option<String>,
    redis: Option<String>,
    redis_prefix: Option<String>,
    node_ttl_ms: Option<u64>,
    stats_interval_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
    max_channels_per_socket: Option<usize>,
    max_frame_bytes: Option<usize>,
    outbound_queue: Option<usize>,
    allow_topic: Option<Vec<String>>,
    client_broadcast: Option<bool>,
    api_key: Option<String>,
    log_format: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Resolved settings of one node.
#[derive(Clone, Debug)]
pub struct Config {
    pub bind: String,
    pub node: String,
    pub redis: Option<String>,
    pub redis_prefix: String,
    pub node_ttl_ms: u64,
    pub stats_interval_ms: u64,
    pub idle_timeout_ms: u64,
    /// `None`: the open-file limit less a reserve, worked out at start.
    pub max_connections: Option<u64>,
    pub max_channels_per_socket: usize,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    pub allow_topic: Vec<String>,
    pub client_broadcast: bool,
    pub api_key: Option<String>,
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("bad config file {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    #[error("invalid setting {0}: {1}")]
    Invalid(&'static str, String),
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: "127.0.0.1:4000".into(),
            node: default_node(),
            redis: None,
            redis_prefix: "headcount".into(),
            node_ttl_ms: 5000,
            stats_interval_ms: 5000,
            idle_timeout_ms: 60_000,
            max_connections: None,
            max_channels_per_socket: 100,
            max_frame_bytes: 65_536,
            outbound_queue: 1024,
            allow_topic: Vec::new(),
            client_broadcast: false,
            api_key: None,
            log_format: LogFormat::Text,
        }
    }
}

fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("headcount@{host}")
}

impl Config {
    /// Flag (or env, which clap already folded in) beats file beats default.
    pub fn resolve(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read(path.clone(), e))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::Parse(path.clone(), e))?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let log_format = match args
            .log_format
            .or(file.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::Invalid(
                    "log-format",
                    format!("{other:?} is neither text nor json"),
                ))
            }
        };
        let allow_topic = if args.allow_topic.is_empty() {
            file.allow_topic.unwrap_or_default()
        } else {
            args.allow_topic
        };
        let config = Config {
            bind: args.bind.or(file.bind).unwrap_or(d.bind),
            node: args.node.or(file.node).unwrap_or(d.node),
            redis: args.redis.or(file.redis).filter(|s| !s.is_empty()),
            redis_prefix: args
                .redis_prefix
                .or(file.redis_prefix)
                .unwrap_or(d.redis_prefix),
            node_ttl_ms: args
                .node_ttl_ms
                .or(file.node_ttl_ms)
                .unwrap_or(d.node_ttl_ms),
            stats_interval_ms: args
                .stats_interval_ms
                .or(file.stats_interval_ms)
                .unwrap_or(d.stats_interval_ms),
            idle_timeout_ms: args
                .idle_timeout_ms
                .or(file.idle_timeout_ms)
                .unwrap_or(d.idle_timeout_ms),
            max_connections: args.max_connections.or(file.max_connections),
            max_channels_per_socket: args
                .max_channels_per_socket
                .or(file.max_channels_per_socket)
                .unwrap_or(d.max_channels_per_socket),
            max_frame_bytes: args
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(d.max_frame_bytes),
            outbound_queue: args
                .outbound_queue
                .or(file.outbound_queue)
                .unwrap_or(d.outbound_queue),
            allow_topic,
            client_broadcast: args
                .client_broadcast
                .or(file.client_broadcast)
                .unwrap_or(false),
            api_key: args.api_key.or(file.api_key).filter(|k| !k.is_empty()),
            log_format,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("node-ttl-ms", self.node_ttl_ms),
            ("stats-interval-ms", self.stats_interval_ms),
            ("idle-timeout-ms", self.idle_timeout_ms),
            ("max-frame-bytes", self.max_frame_bytes as u64),
            ("outbound-queue", self.outbound_queue as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(name, "must be greater than 0".into()));
            }
        }
        if self.node.is_empty() {
            return Err(ConfigError::Invalid("node", "must not be empty".into()));
        }
        if self.max_frame_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "max-frame-bytes",
                "at most 64 MiB".into(),
            ));
        }
        if let Some(url) = &self.redis {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                return Err(ConfigError::Invalid(
                    "redis",
                    format!("{url:?} is not a redis:// URL"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = std::env::temp_dir().join(format!("hc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "stats_interval_ms = 1000\nnode_ttl_ms = 7\nallow_topic = [\"rooms:*\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            node_ttl_ms: Some(9),
            ..ServeArgs::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.stats_interval_ms, 1000);
        assert_eq!(c.node_ttl_ms, 9);
        assert_eq!(c.allow_topic, vec!["rooms:*".to_string()]);
        assert_eq!(c.idle_timeout_ms, 60_000);
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        assert!(Config::resolve(args).is_err());
    }
}
