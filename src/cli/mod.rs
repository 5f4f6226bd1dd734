//! Client-side subcommands of the binary (`stats`, `watch`), kept in the library so
//! `main.rs` only parses arguments.

pub mod fetch;
pub mod stats;
pub mod watch;
