//! A node: binds the port, serves HTTP and WebSocket on it, runs the per-node
//! timers, and shuts down gracefully. Modelled on mini-redis's `server.rs`:
//! one accept loop, one task per connection, one shutdown signal.

use crate::bus::Bus;
use crate::config::Config;
use crate::context::Ctx;
use crate::context::SetupError;
use crate::http::Peer;
use crate::metrics::SocketRefusal;
use crate::upgrade::{self, First};
use crate::{channels, http, summary, trim, webhooks};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// File descriptors kept back from `--max-connections` for Redis, HTTP
/// requests and the process itself.
pub const FD_RESERVE: u64 = 100;
/// Longest a graceful shutdown waits for sockets and tasks to end.
const DRAIN_LIMIT: Duration = Duration::from_secs(7);
/// Longest an HTTP connection may take to finish its request at the end.
const HTTP_LINGER: Duration = Duration::from_secs(1);
/// Longest a client may take to send a request's headers (§8.4): a silent
/// or half-open connection cannot hold a node's sockets.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
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
    Setup(#[from] SetupError),
}

/// A node's periodic work, boxed so the tasks can be started in one way.
type Background = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

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
        let ctx = Ctx::assemble(config, max)?;
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

    /// The bus, for code that embeds headcount and publishes events; it
    /// stays usable while `run` serves.
    pub fn bus(&self) -> Arc<Bus> {
        self.ctx.bus.clone()
    }

    pub fn max_connections(&self) -> u64 {
        self.ctx.max_connections
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` turns 503,
    /// new sockets are refused, the node leaves the cluster, every socket is
    /// closed with 1001, and every task ends.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server { ctx, listener, .. } = self;
        let until_stopped = |task| {
            ctx.tasks
                .spawn(ctx.stop.clone().run_until_cancelled_owned(task));
        };
        until_stopped(Box::pin(channels::stats::run_updates(ctx.clone())) as Background);
        until_stopped(Box::pin(channels::stats::run_changes(ctx.clone())));
        until_stopped(Box::pin(channels::run_occupancy(ctx.clone())));
        until_stopped(Box::pin(channels::run_presence(ctx.clone())));
        if ctx.config.webhook_url.is_some() {
            ctx.registry.track_hooks();
            ctx.presence.track_hooks();
            let store = Arc::new(match ctx.cluster.redis_access() {
                Some(access) => webhooks::Store::redis(
                    access,
                    Duration::from_millis(ctx.config.webhook_takeover_ms),
                ),
                None => webhooks::Store::memory(),
            });
            until_stopped(Box::pin(webhooks::watch(ctx.clone(), store.clone())));
            until_stopped(Box::pin(webhooks::deliver(ctx.clone(), store)));
        }
        until_stopped(Box::pin(summary::run(
            ctx.registry.clone(),
            ctx.config.node.clone(),
            summary::PERIOD,
        )));
        until_stopped(Box::pin(trim::run(ctx.registry.clone())));
        ctx.cluster.spawn(&ctx.tasks, &ctx.stop);
        // HTTP outlives the drain (so `/readyz` can say 503 while it lasts)
        // and is closed after it.
        let http = TaskTracker::new();
        let closed = CancellationToken::new();
        let accept = accept_loop(ctx.clone(), listener, &http, &closed);
        let drain = async {
            shutdown.await;
            tracing::info!("shutting down: closing sockets");
            ctx.stop.cancel();
            // Other nodes stop counting this one now, not when its TTL lapses.
            ctx.cluster.leave().await;
            ctx.tasks.close();
            if tokio::time::timeout(DRAIN_LIMIT, ctx.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(open_sockets = ctx.registry.sockets(), "drain timed out");
            }
            tokio::time::sleep(DRAIN_GRACE).await;
        };
        tokio::select! {
            _ = accept => {}
            _ = drain => {}
        }
        closed.cancel();
        http.close();
        let _ = tokio::time::timeout(HTTP_LINGER, http.wait()).await;
        tracing::info!("stopped");
    }
}

async fn accept_loop(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    http: &TaskTracker,
    closed: &CancellationToken,
) {
    let router = http::router(ctx.clone());
    let mut spare = open_spare();
    let mut refused_since_log = 0u64;
    let mut last_log: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                http.spawn(serve_http(
                    ctx.clone(),
                    stream,
                    peer,
                    router.clone(),
                    closed.clone(),
                ));
            }
            Err(e) if is_out_of_files(&e) => {
                // Out of descriptors: free the spare, take the waiting
                // connection and refuse it with a 503, so clients are told
                // and the loop does not spin on a ready listener.
                refused_since_log += 1;
                ctx.metrics.socket_refused(SocketRefusal::Limit);
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
                        open_sockets = ctx.registry.sockets(),
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

async fn serve_http(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    router: axum::Router,
    closed: CancellationToken,
) {
    // The common first request, a WebSocket upgrade, is answered without
    // hyper; the rest comes back with what was read of it.
    let first = tokio::select! {
        first = upgrade::first_request(&ctx, stream, peer, HEADER_TIMEOUT) => first,
        _ = closed.cancelled() => return,
    };
    let (stream, header_timeout) = match first {
        First::Done => return,
        First::Http(stream, left) => (stream, left),
    };
    // Every request carries the client's address (per-address limits).
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        tower::ServiceExt::oneshot(router.clone(), req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = closed.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HTTP_LINGER, conn).await;
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
