//! Client-side subcommands of the binary (`stats`, `watch`, `token`), kept in
//! the library so `main.rs` only parses arguments.

pub mod fetch;
pub mod stats;
pub mod token;
pub mod watch;
