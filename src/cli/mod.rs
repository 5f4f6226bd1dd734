//! Client-side subcommands of the binary (`stats`, `watch`, `token`): they
//! talk to a running node over HTTP or sign tokens, and are no part of the
//! server library.

pub mod fetch;
pub mod stats;
pub mod token;
pub mod watch;
