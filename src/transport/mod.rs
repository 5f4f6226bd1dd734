//! The WebSocket transport: RFC 6455 framing over a raw socket taken over
//! from hyper after the upgrade. Owning the framing lets an idle socket hold
//! no buffer at all and lets one syscall carry many queued messages.

pub mod codec;
pub mod connection;
pub mod handshake;
