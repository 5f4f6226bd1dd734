//! A connection's first request, read here before hyper sees it. Nearly
//! every socket starts with a complete `GET /socket/websocket` in its first
//! read; answering that one directly — parse the head, admit, write the
//! 101, start the session — skips hyper's connection task, its upgrade
//! hand-over and a second task spawn, which a join storm pays per socket.
//! Everything else (another path, a head in pieces, a refusal, a body) goes
//! to hyper with the bytes already read, so that every other answer, error
//! body and refusal metric still comes from the router.

use crate::context::Ctx;
use crate::http::{admit, Admitted};
use crate::transport::prefixed::Prefixed;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most of a request read before deciding; a longer head goes to hyper.
const FIRST_READ: usize = 4096;
/// The most headers a direct upgrade may carry (a browser sends ~15).
const MAX_HEADERS: usize = 48;
const PATH: &str = "/socket/websocket";

/// What became of a connection's first request.
pub enum First {
    /// Upgraded and handed to its session, or gone (closed, timed out).
    Done,
    /// For hyper: the stream with what was read of it, and how much of the
    /// header timeout is left.
    Http(Prefixed, Duration),
}

/// Reads the first request and upgrades it when it is a complete,
/// admissible WebSocket upgrade; otherwise hands it on.
pub async fn first_request(
    ctx: &Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    header_timeout: Duration,
) -> First {
    let deadline = Instant::now() + header_timeout;
    let mut buf = [0u8; FIRST_READ];
    let n = loop {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Ok(Ok(())) => {}
            // Silent for the whole header timeout, or broken: hyper would
            // close it without a word too.
            _ => return First::Done,
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return First::Done,
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return First::Done,
        }
    };
    let read = &buf[..n];
    let (head_len, query, headers) = match parse(read) {
        Head::Upgrade(head_len, query, headers) => (head_len, query, headers),
        // Hyper's header timeout covers every request of the connection
        // (and the wait between them): the first one's head is whole, so
        // the next ones get all of it.
        Head::Other => return First::Http(Prefixed::new(stream, read), header_timeout),
        // The rest of this head has what is left.
        Head::Partial => {
            let left = deadline.saturating_duration_since(Instant::now());
            return First::Http(Prefixed::new(stream, read), left);
        }
    };
    let admitted = match admit(ctx, query.as_deref(), &headers, Some(peer)) {
        Ok(admitted) => admitted,
        // The router answers refusals (and counts them).
        Err(_) => return First::Http(Prefixed::new(stream, read), header_timeout),
    };
    let Admitted { accept, opening } = admitted;
    let mut response = String::with_capacity(160);
    response.push_str(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ",
    );
    response.push_str(&accept.accept_key);
    if let Some(p) = accept.protocol {
        response.push_str("\r\nsec-websocket-protocol: ");
        response.push_str(p);
    }
    response.push_str("\r\n\r\n");
    if write_all(&stream, response.as_bytes(), deadline)
        .await
        .is_err()
    {
        return First::Done;
    }
    let prelude = read[head_len..].to_vec();
    ctx.tasks
        .spawn(crate::session::run(ctx.clone(), stream, prelude, opening));
    First::Done
}

/// What the first read holds.
enum Head {
    /// A complete `GET /socket/websocket` HTTP/1.1 head without a body: its
    /// length, query and headers.
    Upgrade(usize, Option<String>, HeaderMap),
    /// A complete head of anything else (or one not to be taken here).
    Other,
    /// Part of a head.
    Partial,
}

fn parse(read: &[u8]) -> Head {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(read) {
        Ok(httparse::Status::Complete(head_len)) => match websocket_request(&req) {
            Some((query, headers)) => Head::Upgrade(head_len, query, headers),
            None => Head::Other,
        },
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Other,
    }
}

fn websocket_request(req: &httparse::Request<'_, '_>) -> Option<(Option<String>, HeaderMap)> {
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let (path, query) = match req.path?.split_once('?') {
        Some((path, query)) => (path, Some(query.to_string())),
        None => (req.path?, None),
    };
    if path != PATH {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == axum::http::header::CONTENT_LENGTH
            || name == axum::http::header::TRANSFER_ENCODING
        {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    Some((query, headers))
}

/// Writes all of `bytes` by `deadline`.
async fn write_all(stream: &TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout_at(deadline, stream.writable())
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /socket/websocket?vsn=2.0.0&token=a%2Bb HTTP/1.1\r\nHost: x\r\n\
Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn a_complete_upgrade_head_is_taken_with_what_follows_it() {
        let mut read = UPGRADE.to_vec();
        read.extend_from_slice(b"\x81\x80....");
        let Head::Upgrade(len, query, headers) = parse(&read) else {
            panic!("not taken");
        };
        assert_eq!(len, UPGRADE.len());
        assert_eq!(query.as_deref(), Some("vsn=2.0.0&token=a%2Bb"));
        assert_eq!(headers["sec-websocket-version"], "13");
        assert_eq!(headers["upgrade"], "websocket");
    }

    #[test]
    fn anything_else_is_left_to_hyper() {
        assert!(matches!(
            parse(&UPGRADE[..UPGRADE.len() - 2]),
            Head::Partial
        ));
        let others: [&[u8]; 5] = [
            b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /socket/websocket HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /socket/websocket HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET /socket/websocket/x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /socket/websocket HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        ];
        for other in others {
            assert!(
                matches!(parse(other), Head::Other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
