//! A minimal keep-alive HTTP/1.1 client for the publisher and the stats
//! reads: one connection, one request at a time, content-length bodies.

use super::client::find;
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Http {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            stream: None,
            buf: Vec::with_capacity(8192),
        }
    }

    /// Sends one request; returns the status and body. Reconnects once if
    /// the kept-alive connection was closed.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> io::Result<(u16, String)> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\n",
            self.addr
        );
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        match self.once(&req).await {
            Ok(r) => Ok(r),
            Err(_) => {
                self.stream = None;
                self.once(&req).await
            }
        }
    }

    async fn once(&mut self, req: &str) -> io::Result<(u16, String)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().ok_or(io::ErrorKind::NotConnected)?;
        stream.write_all(req.as_bytes()).await?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        let (head_end, len) = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, len);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        while self.buf.len() < head_end + len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let status = std::str::from_utf8(self.buf.get(9..12).unwrap_or(b"000"))
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + len]).into_owned();
        Ok((status, body))
    }
}
