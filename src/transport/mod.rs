//! The WebSocket transport: the upgrade (answered directly when it can be,
//! else through hyper) and RFC 6455 framing over the raw socket. Owning the
//! framing lets an idle socket hold no buffer at all and lets one syscall
//! carry many queued messages.

pub mod codec;
pub mod connection;
pub mod handshake;
pub mod prefixed;
pub mod upgrade;
