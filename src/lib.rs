//! headcount: a Phoenix Channels WebSocket server that knows exactly how
//! many clients are joined to each topic on each node.
//!
//! Run a node with [`Server`] (settings in [`Config`]); publish pattern
//! events with [`Bus`] and [`Event`]. The public surface stops there, plus
//! [`auth`] (checking and signing the tokens of SPEC §8, for back-ends and
//! tests) and [`config`] (the settings' one definition, for the binary):
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
pub mod bus;
mod channels;
mod cluster;
pub mod config;
mod context;
mod dashboard;
mod fanout;
// Fuzz targets over the private decoders: unit tests (issue 11).
#[cfg(test)]
mod fuzz;
mod globs;
mod http;
mod limits;
mod metrics;
mod outbox;
mod presence;
mod protocol;
mod query;
mod registry;
mod server;
mod session;
mod stats;
mod summary;
mod throttle;
mod topics;
mod transport;
mod trim;
mod upgrade;
mod webhooks;

pub use bus::{Bus, Event};
pub use config::Config;
pub use server::{raise_file_limit, Server, ServerError};
