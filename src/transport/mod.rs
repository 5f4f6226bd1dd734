//! The WebSocket transport: the handshake's accept key and RFC 6455 framing
//! over the raw socket. The upgrade itself, which hands a socket to a
//! session, is in src/upgrade.rs, so that this module depends on nothing
//! above it. Owning the framing lets an idle socket hold no buffer at all
//! and lets one syscall carry many queued messages.

pub mod codec;
pub mod connection;
pub mod handshake;
pub mod prefixed;
