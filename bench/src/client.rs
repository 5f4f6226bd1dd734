//! A lean WebSocket client for the load generator: one `TcpStream`, one read
//! buffer, a fixed handshake, masked text frames out and unmasked frames in.
//! No per-message allocation, so 20,000 of them sharing two cores with the
//! server leave the server most of the CPU.

use crate::token::Credential;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;

/// A V2 heartbeat, as every long-held bench socket sends it.
pub const HEARTBEAT: &str = "[null,\"hb\",\"phoenix\",\"heartbeat\",{}]";

/// Where to connect and what to ask for.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Path and query of the WebSocket endpoint, e.g. `/socket/websocket?vsn=2.0.0`.
    pub path: String,
    pub host: String,
}

/// Opens a TCP connection from `source` (any port) to `addr`. The port is
/// chosen at connect time (IP_BIND_ADDRESS_NO_PORT), so each source address
/// offers the whole ephemeral range per destination.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        if ip.is_ipv4() == addr.is_ipv4() {
            set_bind_no_port(&socket);
            socket.bind(SocketAddr::new(ip, 0))?;
        }
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn set_bind_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    // Failure only means ports are picked at bind time, which still works.
    let one: libc::c_int = 1;
    let _ = setsockopt(
        socket.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        &one,
    );
}

/// Sets SO_LINGER 0: closing then resets the connection (no TIME_WAIT).
pub fn set_linger_zero(stream: &TcpStream) {
    let _ = try_set_linger_zero(stream);
}

/// As [`set_linger_zero`], saying whether it worked.
pub fn try_set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &l)
}

/// One socket option, set from a plain C value.
fn setsockopt<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<T>()` bytes from a valid pointer;
    // a bad descriptor or option is an error it returns, not undefined
    // behaviour.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One WebSocket connection.
pub struct Ws {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Start of unparsed bytes in `buf`.
    at: usize,
    /// End of the bytes read into `buf`.
    end: usize,
    out: Vec<u8>,
}

/// One frame from the server, borrowed from the read buffer.
pub struct Frame<'a> {
    pub opcode: u8,
    pub data: &'a [u8],
}

impl Ws {
    /// TCP connect plus the HTTP upgrade; fails unless the server answers 101.
    pub async fn connect(target: &Target, source: Option<IpAddr>) -> io::Result<Ws> {
        Ws::connect_as(target, source, None).await
    }

    /// As [`Ws::connect`], presenting a signed token (`?token=` or the
    /// bearer subprotocol) when one is given.
    pub async fn connect_as(
        target: &Target,
        source: Option<IpAddr>,
        credential: Option<&Credential>,
    ) -> io::Result<Ws> {
        let mut stream = tcp_connect(target.addr, source).await?;
        let (query, protocol) = match credential {
            None => (String::new(), String::new()),
            Some(Credential::Query(token)) => {
                let sep = if target.path.contains('?') { '&' } else { '?' };
                (format!("{sep}token={token}"), String::new())
            }
            Some(Credential::Protocol(value)) => (
                String::new(),
                format!("Sec-WebSocket-Protocol: {value}\r\n"),
            ),
        };
        let req = format!(
            "GET {}{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n",
            target.path, target.host
        );
        stream.write_all(req.as_bytes()).await?;
        let mut ws = Ws {
            stream,
            buf: vec![0; 4096],
            at: 0,
            end: 0,
            out: Vec::new(),
        };
        loop {
            if let Some(end) = find(&ws.buf[..ws.end], b"\r\n\r\n") {
                let head = &ws.buf[..end];
                if !head.starts_with(b"HTTP/1.1 101") {
                    let line = head.split(|b| *b == b'\r').next().unwrap_or(b"");
                    return Err(io::Error::other(format!(
                        "upgrade refused: {}",
                        String::from_utf8_lossy(line)
                    )));
                }
                ws.at = end + 4;
                return Ok(ws);
            }
            if ws.end > 16 * 1024 {
                return Err(io::Error::other("upgrade response too long"));
            }
            if ws.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads more bytes into the buffer; 0 at EOF. `buf` is always fully
    /// initialised; `end` marks how much of it holds data.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.at == self.end {
            self.at = 0;
            self.end = 0;
        } else if self.at > self.buf.len() / 2 {
            self.buf.copy_within(self.at..self.end, 0);
            self.end -= self.at;
            self.at = 0;
        }
        if self.buf.len() - self.end < 2048 {
            let grow = self.buf.len().max(4096);
            self.buf.resize(self.buf.len() + grow, 0);
        }
        loop {
            self.stream.readable().await?;
            match self.stream.try_read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one masked text frame.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.out.clear();
        encode_client_frame(&mut self.out, OP_TEXT, text.as_bytes());
        self.stream.write_all(&self.out).await
    }

    /// Queues a text frame to be sent by `flush` (several in one syscall).
    pub fn queue_text(&mut self, text: &str) {
        encode_client_frame(&mut self.out, OP_TEXT, text.as_bytes());
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        let r = self.stream.write_all(&self.out).await;
        self.out.clear();
        r
    }

    /// Sends a close frame (code 1000) without waiting for the answer.
    pub async fn send_close(&mut self) -> io::Result<()> {
        self.out.clear();
        encode_client_frame(&mut self.out, OP_CLOSE, &1000u16.to_be_bytes());
        self.stream.write_all(&self.out).await
    }

    /// The next whole frame, reading as needed. EOF is an error.
    pub async fn next(&mut self) -> io::Result<Frame<'_>> {
        let (opcode, data) = self.next_at().await?;
        Ok(Frame {
            opcode,
            data: &self.buf[data],
        })
    }

    /// The next whole frame: its opcode, and where its payload lies in
    /// `buf` (until the next read).
    async fn next_at(&mut self) -> io::Result<(u8, Range<usize>)> {
        loop {
            if let Some((opcode, start, end)) = parse(&self.buf[self.at..self.end])? {
                let data = self.at + start..self.at + end;
                self.at += end;
                return Ok((opcode, data));
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Skips frames until a text frame that has `needle` in its first
    /// `head` bytes and that `also` accepts; returns where its payload lies
    /// in `buf`. A close frame is an error.
    async fn await_text(
        &mut self,
        needle: &[u8],
        head: usize,
        also: impl Fn(&[u8]) -> bool,
    ) -> io::Result<Range<usize>> {
        loop {
            let (opcode, data) = self.next_at().await?;
            match opcode {
                OP_TEXT => {
                    let d = &self.buf[data.clone()];
                    if find(&d[..d.len().min(head)], needle).is_some() && also(d) {
                        return Ok(data);
                    }
                }
                OP_CLOSE => return Err(io::Error::other("closed by server")),
                _ => {}
            }
        }
    }

    /// Calls `on` for every whole frame already buffered or readable now,
    /// reading at least once; returns false at EOF.
    pub async fn read_batch(&mut self, on: &mut impl FnMut(u8, &[u8])) -> io::Result<bool> {
        if self.fill().await? == 0 {
            return Ok(false);
        }
        while let Some((opcode, start, end)) = parse(&self.buf[self.at..self.end])? {
            on(opcode, &self.buf[self.at + start..self.at + end]);
            self.at += end;
        }
        Ok(true)
    }

    /// Calls `on` for every whole frame already in the read buffer (read
    /// along with an earlier reply), without reading more.
    pub fn drain_buffered(&mut self, on: &mut impl FnMut(u8, &[u8])) -> io::Result<()> {
        while let Some((opcode, start, end)) = parse(&self.buf[self.at..self.end])? {
            on(opcode, &self.buf[self.at + start..self.at + end]);
            self.at += end;
        }
        Ok(())
    }

    /// Waits for the reply to `reference` (V2: `[join_ref, "ref", ...]`),
    /// skipping pushes; returns whether its status is ok.
    pub async fn await_reply(&mut self, reference: &str) -> io::Result<bool> {
        Ok(self.await_status(reference).await? == Status::Ok)
    }

    /// Waits for the reply to `reference`, skipping pushes; returns its
    /// status (an error's reason included).
    pub async fn await_status(&mut self, reference: &str) -> io::Result<Status> {
        let needle = format!(",\"{reference}\",");
        let is_reply = |d: &[u8]| find(d, b"\"phx_reply\"").is_some();
        let data = self.await_text(needle.as_bytes(), 64, is_reply).await?;
        Ok(Status::of(&self.buf[data]))
    }

    /// Shrinks the read buffer to nothing while the socket is held idle.
    pub fn release_buffers(&mut self) {
        if self.at == self.end {
            self.buf = Vec::new();
            self.at = 0;
            self.end = 0;
        }
        self.out = Vec::new();
    }

    /// Drops the read buffer once it has grown past `limit` bytes (for a
    /// large push) and holds nothing unread; the next read starts small.
    pub fn shrink_read_buffer(&mut self, limit: usize) {
        if self.buf.len() > limit && self.at == self.end {
            self.buf = Vec::new();
            self.at = 0;
            self.end = 0;
        }
    }

    /// Waits for the reply to `reference` and hands its frame to `f`.
    pub async fn await_reply_with<R>(
        &mut self,
        reference: &str,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        let needle = format!(",\"{reference}\",");
        let data = self.await_text(needle.as_bytes(), 64, |_| true).await?;
        Ok(f(&self.buf[data]))
    }

    /// Waits for a push of `event` (V2 `[.., .., topic, "event", ..]`).
    pub async fn await_event(&mut self, event: &str) -> io::Result<()> {
        let needle = format!("\",\"{event}\",");
        self.await_text(needle.as_bytes(), 128, |_| true).await?;
        Ok(())
    }

    /// Gives the connection back as a bare stream (dropping the buffers).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

/// Parses one server frame at the start of `buf`: (opcode, payload start, end).
fn parse(buf: &[u8]) -> io::Result<Option<(u8, usize, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0F;
    if buf[1] & 0x80 != 0 {
        return Err(io::Error::other("server frame is masked"));
    }
    let (len, at) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (usize::from(n), 2),
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    Ok(Some((opcode, at, at + len)))
}

/// Appends a client frame. The mask key is zero: a valid key that makes
/// masking free; the server under test unmasks whatever the key.
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// What a `phx_reply` says: ok, or an error with its `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// The `reason` of an error reply ("" when it has none).
    Error(String),
}

/// The reason every per-socket limit of the server gives (SPEC §8.4).
pub const RATE_LIMITED: &str = "rate limited";

impl Status {
    /// The status of a reply frame, found by byte search.
    pub fn of(reply: &[u8]) -> Status {
        if find(reply, b"\"status\":\"ok\"").is_some() {
            Status::Ok
        } else {
            Status::Error(reason(reply).unwrap_or_default())
        }
    }

    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Status::Error(r) if r == RATE_LIMITED)
    }
}

/// The string after `"reason":` in a reply (JSON escapes are kept as sent).
pub fn reason(data: &[u8]) -> Option<String> {
    let key = b"\"reason\":\"";
    let at = find(data, key)? + key.len();
    let mut end = at;
    while end < data.len() && data[end] != b'"' {
        end += if data[end] == b'\\' { 2 } else { 1 };
    }
    Some(String::from_utf8_lossy(&data[at..end.min(data.len())]).into_owned())
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer that follows `key` (e.g. `"seq":`) in `hay`.
pub fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(hay, key)? + key.len();
    let mut n: u64 = 0;
    let mut any = false;
    for b in &hay[at..] {
        if b.is_ascii_digit() {
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_frames_and_numbers() {
        let mut buf = vec![0x81, 5];
        buf.extend_from_slice(b"hello");
        buf.extend_from_slice(&[0x81, 126, 0, 200]);
        buf.extend(std::iter::repeat_n(b'a', 200));
        assert_eq!(parse(&buf).unwrap(), Some((1, 2, 7)));
        assert_eq!(parse(&buf[7..]).unwrap(), Some((1, 4, 204)));
        assert_eq!(parse(&buf[7..100]).unwrap(), None);
        assert_eq!(number_after(br#"{"seq":42,"t":7}"#, b"\"seq\":"), Some(42));
        assert_eq!(number_after(br#"{"seq":42,"t":7}"#, b"\"t\":"), Some(7));
        assert_eq!(number_after(br#"{"x":1}"#, b"\"t\":"), None);
    }

    #[test]
    fn reply_statuses_and_reasons() {
        let ok = br#"["1","2","t","phx_reply",{"status":"ok","response":{}}]"#;
        assert_eq!(Status::of(ok), Status::Ok);
        let limited =
            br#"["1","2","t","phx_reply",{"status":"error","response":{"reason":"rate limited"}}]"#;
        assert!(Status::of(limited).is_rate_limited());
        let other = br#"[null,"2","t","phx_reply",{"status":"error","response":{"reason":"unknown event","event":"x"}}]"#;
        assert_eq!(Status::of(other), Status::Error("unknown event".into()));
        assert!(!Status::of(other).is_rate_limited());
        let bare = br#"[null,"2","t","phx_reply",{"status":"error","response":{}}]"#;
        assert_eq!(Status::of(bare), Status::Error(String::new()));
        assert_eq!(reason(br#"{"reason":"a\"b"}"#).as_deref(), Some(r#"a\"b"#));
    }
}
