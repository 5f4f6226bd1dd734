//! A node: binds the port, serves HTTP and WebSocket on it, runs the per-node
//! timers, and shuts down gracefully. Modelled on mini-redis's `server.rs`:
//! one accept loop, one task per connection, one shutdown signal.

use crate::bus::Bus;
use crate::cluster::{Cluster, RedisCluster, RedisSetupError};
use crate::config::Config;
use crate::context::Ctx;
use crate::{channels, http};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// File descriptors kept back from `--max-connections` for Redis, HTTP
/// requests and the process itself.
pub const FD_RESERVE: u64 = 100;
/// Longest a graceful shutdown waits for sockets to close.
const DRAIN_LIMIT: Duration = Duration::from_secs(7);
/// How long `/readyz` keeps answering 503 after the sockets are gone, so
/// that a load balancer sees the node draining.
const DRAIN_GRACE: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot resolve bind address {0}")]
    Resolve(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, io::Error),
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
}

pub struct Server {
    ctx: Arc<Ctx>,
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// Binds the listening socket; nothing is served until `run`.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let file_limit = raise_file_limit();
        let max = config
            .max_connections
            .unwrap_or_else(|| file_limit.saturating_sub(FD_RESERVE).max(1));
        let addr = tokio::net::lookup_host(&config.bind)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ServerError::Resolve(config.bind.clone()))?;
        let listen = |e| ServerError::Listen(config.bind.clone(), e);
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(listen)?;
        socket.set_reuseaddr(true).map_err(listen)?;
        socket.bind(addr).map_err(listen)?;
        let listener = socket.listen(4096).map_err(listen)?;
        let addr = listener.local_addr().map_err(listen)?;
        let ctx = Ctx::new(config, max);
        if ctx.config.redis.is_some() {
            let (redis, relay) = RedisCluster::new(&ctx.config, ctx.metrics.clone())?;
            let _ = ctx.cluster.set(Cluster::Redis(Box::new(redis)));
            ctx.bus.set_relay(Arc::new(relay));
        }
        Ok(Server {
            ctx,
            listener,
            addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn node(&self) -> &str {
        &self.ctx.config.node
    }

    /// The bus, for code that embeds headcount and publishes events.
    pub fn bus(&self) -> &Bus {
        &self.ctx.bus
    }

    pub fn context(&self) -> Arc<Ctx> {
        self.ctx.clone()
    }

    pub fn max_connections(&self) -> u64 {
        self.ctx.max_connections
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` turns 503,
    /// new sockets are refused, every socket is closed with 1001.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server { ctx, listener, .. } = self;
        let mut tasks = JoinSet::new();
        tasks.spawn(channels::stats::run_updates(ctx.clone()));
        tasks.spawn(channels::stats::run_changes(ctx.clone()));
        Cluster::spawn(&ctx, &mut tasks);
        tasks.spawn(crate::summary::run(ctx.clone(), crate::summary::PERIOD));
        tasks.spawn(crate::trim::run(ctx.clone()));
        let (stop_http, http_stopped) = watch::channel(false);
        let accept = accept_loop(ctx.clone(), listener, http_stopped);
        let drain = async {
            shutdown.await;
            tracing::info!("shutting down: closing sockets");
            ctx.begin_shutdown();
            // Other nodes stop counting this one now, not when its TTL lapses.
            ctx.cluster().leave().await;
            let deadline = Instant::now() + DRAIN_LIMIT;
            while ctx.tally.sockets() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(DRAIN_GRACE).await;
        };
        tokio::select! {
            _ = accept => {}
            _ = drain => {}
        }
        let _ = stop_http.send(true);
        tasks.shutdown().await;
        tracing::info!("stopped");
    }
}

async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let router = http::router(ctx.clone());
    let mut spare = open_spare();
    let mut refused_since_log = 0u64;
    let mut last_log: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_http(stream, router.clone(), stop.clone()));
            }
            Err(e) if is_out_of_files(&e) => {
                // Out of descriptors: free the spare, take the waiting
                // connection and refuse it with a 503, so clients are told
                // and the loop does not spin on a ready listener.
                refused_since_log += 1;
                ctx.metrics.sockets_refused.increment(1);
                if spare.take().is_some() {
                    if let Ok((stream, _)) = listener.accept().await {
                        refuse(stream);
                    }
                    spare = open_spare();
                }
                if spare.is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    spare = open_spare();
                }
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(
                        refused = refused_since_log,
                        open_sockets = ctx.tally.sockets(),
                        "out of file descriptors: refusing new connections"
                    );
                    last_log = Some(Instant::now());
                    refused_since_log = 0;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

fn refuse(stream: TcpStream) {
    let body = "{\"error\":\"too many open files\"}";
    let res = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(res.as_bytes());
}

fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn is_out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

async fn serve_http(stream: TcpStream, router: axum::Router, stop: watch::Receiver<bool>) {
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stop = stop;
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

/// Raises the soft open-file limit to the hard one; returns the limit.
pub fn raise_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}
