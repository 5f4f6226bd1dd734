//! The `headcount` binary: argument parsing and logging set-up only; the
//! work lives in the library, and `bench` in the `headcount-bench` crate.

mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use cli::stats::StatsArgs;
use cli::watch::WatchArgs;
use headcount::config::{Config, LogFormat, ServeArgs};
use headcount::Server;
use std::io::Write as _;

// The allocator: jemalloc by default (it holds idle sockets in the fewest
// bytes and gives the most back after they close, BENCHMARKS.md); glibc's
// with `--no-default-features`, mimalloc with `--features mimalloc`, to
// compare.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc purges freed pages only when it is called, unless a background
/// thread does it: without one an idle node never gives memory back. Two
/// arenas, not jemalloc's four per core: a node's allocations come from
/// tokio's workers, and every arena keeps partly used pages of its own, so
/// the default spreads a node's memory over more of them (a presence member cost
/// 230–340 B of RSS with it, 200–210 B with one or two arenas, at the same
/// fan-out and connect rates; BENCHMARKS.md). A machine with many cores can
/// ask for more at start: `_RJEM_MALLOC_CONF=narenas:N`.
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_CONF: &[u8; 70] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2\0";

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "headcount",
    version,
    about = "Exact per-topic WebSocket membership counts, over the Phoenix Channels protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start a node: WebSocket, HTTP API and metrics on one port.
    Serve(ServeArgs),
    /// Print a running node's stats as a table (or JSON).
    Stats(StatsArgs),
    /// Live view of a node's stats in the terminal (Ctrl-C quits).
    Watch(WatchArgs),
    /// Sign a token for a node's --auth-secret or --auth-public-key.
    Token(cli::token::TokenArgs),
    /// Load generator: hold, fanout, query, churn, cluster, occupancy,
    /// presence, webhooks (loopback only); floor-server runs a minimal
    /// Phoenix server to compare with.
    Bench(headcount_bench::BenchArgs),
    /// One load-generating worker process, driven by `bench` over stdin/stdout.
    #[command(hide = true)]
    BenchWorker,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Installs the SIGTERM/SIGINT handlers at once, and resolves when either
/// arrives. Called before the start line is printed: a signal sent as soon
/// as the line is seen must start a graceful shutdown, not kill the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    // `serve --help` shows each setting's default, taken from the code
    // that applies it rather than written a second time in a doc comment.
    let command = Cli::command().mut_subcommand("serve", headcount::config::with_defaults_in_help);
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    if let Command::Token(args) = &cli.command {
        // Bad input exits 2, like a bad flag.
        match cli::token::run(args) {
            Ok(token) => {
                println!("{token}");
                return Ok(());
            }
            Err(e) => {
                eprintln!("headcount token: {e}");
                std::process::exit(2);
            }
        }
    }
    if let Command::BenchWorker = cli.command {
        // One thread per worker process: the coordinator starts as many
        // processes as the load needs, and the server keeps the other core.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Each worker holds as many sockets as its hard file limit allows.
        headcount::raise_file_limit();
        runtime.block_on(headcount_bench::worker::main_stdio())?;
        runtime.shutdown_timeout(std::time::Duration::from_millis(100));
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => {
            // A bad setting exits 2, like a bad flag does in clap, with one
            // line naming the setting.
            let config = Config::resolve(args).unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(2)
            });
            init_logging(config.log_format);
            runtime.block_on(async {
                let server = Server::bind(config).await?;
                let shutdown = shutdown_signal();
                println!(
                    "headcount listening on {} node {}",
                    server.local_addr(),
                    server.node()
                );
                std::io::stdout().flush()?;
                tracing::info!(
                    addr = %server.local_addr(),
                    node = server.node(),
                    max_connections = server.max_connections(),
                    "serving"
                );
                server.run(shutdown).await;
                anyhow::Ok(())
            })?;
        }
        Command::BenchWorker | Command::Token(_) => {}
        Command::Bench(args) => {
            // The in-process worker too: up to the hard file limit.
            headcount::raise_file_limit();
            let out = runtime.block_on(headcount_bench::run(args))?;
            print!("{out}");
            std::io::stdout().flush()?;
        }
        Command::Stats(args) => {
            let out = runtime.block_on(cli::stats::run(&args))?;
            print!("{out}");
            if !out.ends_with('\n') {
                println!();
            }
        }
        Command::Watch(args) => runtime.block_on(cli::watch::run(&args))?,
    }
    // Sockets still lingering must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}
