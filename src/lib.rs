//! headcount: a Phoenix Channels WebSocket server that knows exactly how
//! many clients are joined to each topic on each node.
//!
//! Run a node with [`Server`]; publish pattern events with [`bus::Bus`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use headcount::{Config, Server, bus::Event};
//! let server = Server::bind(Config { bind: "127.0.0.1:0".into(), ..Config::default() }).await?;
//! let event = Event::new("pattern_detected", serde_json::json!({"confidence": 0.9}))?;
//! server.bus().publish(event);
//! server.run(std::future::pending()).await;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod bench;
pub mod bus;
pub mod channels;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod context;
pub mod dashboard;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod session;
pub mod stats;
pub mod summary;
pub mod tally;
pub mod transport;
pub mod trim;

pub use bus::{Bus, Event};
pub use config::Config;
pub use server::Server;
