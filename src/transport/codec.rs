//! RFC 6455 frames: parsing client frames (masked, possibly fragmented) into
//! whole messages, and writing unmasked server frames. Partial input is kept
//! only while a frame is incomplete, so an idle socket owns no buffer.

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes this server sends.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// One complete message from the client.
#[derive(Debug)]
pub enum WsMessage<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// The close code the client sent, if any.
    Close(Option<u16>),
}

/// Why the connection must be closed, with the code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

impl Violation {
    fn protocol(reason: &'static str) -> Violation {
        Violation {
            code: close::PROTOCOL,
            reason,
        }
    }
}

struct Head {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    len: usize,
}

/// Parses one frame header, or `Ok(None)` when more bytes are needed.
fn parse_head(buf: &[u8], max: usize) -> Result<Option<Head>, Violation> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(Violation::protocol("reserved bits set"));
    }
    let opcode = b0 & 0x0F;
    let fin = b0 & 0x80 != 0;
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || (b1 & 0x7F) > 125 {
                return Err(Violation::protocol("bad control frame"));
            }
        }
        _ => return Err(Violation::protocol("unknown opcode")),
    }
    if b1 & 0x80 == 0 {
        return Err(Violation::protocol("client frames must be masked"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > max as u64 {
        return Err(Violation {
            code: close::TOO_BIG,
            reason: "frame too large",
        });
    }
    if buf.len() < at + 4 {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[at..at + 4]);
    Ok(Some(Head {
        fin,
        opcode,
        mask,
        header_len: at + 4,
        len: len as usize,
    }))
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Turns a byte stream into messages. Holds bytes only while a frame or a
/// fragmented message is incomplete.
#[derive(Default)]
pub struct Decoder {
    pending: Vec<u8>,
    fragments: Option<(u8, Vec<u8>)>,
}

impl Decoder {
    /// Bytes held for an incomplete frame or message (0 when idle).
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.pending.capacity() + self.fragments.as_ref().map_or(0, |f| f.1.capacity())
    }

    /// What is held, in detail: (length, capacity) of the incomplete frame's
    /// bytes and of the fragmented message's.
    #[cfg(test)]
    pub fn held(&self) -> [(usize, usize); 2] {
        let fragments = self
            .fragments
            .as_ref()
            .map_or((0, 0), |f| (f.1.len(), f.1.capacity()));
        [(self.pending.len(), self.pending.capacity()), fragments]
    }

    /// Feeds newly read bytes; calls `on` for every complete message until it
    /// returns false. `max` bounds a frame and a reassembled message.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        max: usize,
        on: &mut dyn FnMut(WsMessage<'_>) -> bool,
    ) -> Result<(), Violation> {
        if self.pending.is_empty() {
            let used = self.consume(input, max, on)?;
            if used < input.len() {
                self.pending.extend_from_slice(&input[used..]);
            }
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(input);
            let used = self.consume(&mut pending, max, on)?;
            pending.drain(..used);
            if !pending.is_empty() {
                self.pending = pending;
            }
        }
        Ok(())
    }

    /// Parses whole frames from `buf`; returns how many bytes were used.
    fn consume(
        &mut self,
        buf: &mut [u8],
        max: usize,
        on: &mut dyn FnMut(WsMessage<'_>) -> bool,
    ) -> Result<usize, Violation> {
        let mut at = 0;
        loop {
            let Some(head) = parse_head(&buf[at..], max)? else {
                return Ok(at);
            };
            let start = at + head.header_len;
            let end = start + head.len;
            if buf.len() < end {
                return Ok(at);
            }
            let data = &mut buf[start..end];
            unmask(data, head.mask);
            at = end;
            if !self.frame(head.fin, head.opcode, data, max, on)? {
                return Ok(at);
            }
        }
    }

    fn frame(
        &mut self,
        fin: bool,
        opcode: u8,
        data: &[u8],
        max: usize,
        on: &mut dyn FnMut(WsMessage<'_>) -> bool,
    ) -> Result<bool, Violation> {
        match opcode {
            OP_PING => Ok(on(WsMessage::Ping(data))),
            OP_PONG => Ok(on(WsMessage::Pong)),
            OP_CLOSE => {
                let code = close_code(data)?;
                Ok(on(WsMessage::Close(code)))
            }
            OP_TEXT | OP_BINARY => {
                if self.fragments.is_some() {
                    return Err(Violation::protocol("expected a continuation frame"));
                }
                if fin {
                    Ok(deliver(opcode, data, on)?)
                } else {
                    self.fragments = Some((opcode, data.to_vec()));
                    Ok(true)
                }
            }
            _ => {
                let Some((first, mut acc)) = self.fragments.take() else {
                    return Err(Violation::protocol("continuation without a message"));
                };
                if acc.len() + data.len() > max {
                    return Err(Violation {
                        code: close::TOO_BIG,
                        reason: "message too large",
                    });
                }
                acc.extend_from_slice(data);
                if fin {
                    Ok(deliver(first, &acc, on)?)
                } else {
                    self.fragments = Some((first, acc));
                    Ok(true)
                }
            }
        }
    }
}

fn deliver(
    opcode: u8,
    data: &[u8],
    on: &mut dyn FnMut(WsMessage<'_>) -> bool,
) -> Result<bool, Violation> {
    if opcode == OP_TEXT {
        let text = std::str::from_utf8(data).map_err(|_| Violation {
            code: close::INVALID_DATA,
            reason: "invalid utf-8",
        })?;
        Ok(on(WsMessage::Text(text)))
    } else {
        Ok(on(WsMessage::Binary(data)))
    }
}

fn close_code(data: &[u8]) -> Result<Option<u16>, Violation> {
    match data.len() {
        0 => Ok(None),
        1 => Err(Violation::protocol("bad close frame")),
        _ => {
            let code = u16::from_be_bytes([data[0], data[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(Violation::protocol("bad close code"));
            }
            if std::str::from_utf8(&data[2..]).is_err() {
                return Err(Violation {
                    code: close::INVALID_DATA,
                    reason: "invalid utf-8",
                });
            }
            Ok(Some(code))
        }
    }
}

/// Appends one unmasked, final server frame.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// One whole server frame, ready for a socket's outbox.
pub fn frame(opcode: u8, payload: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    write_frame(&mut out, opcode, payload);
    out.into()
}

/// A text frame of `payload`.
pub fn text_frame(payload: &[u8]) -> bytes::Bytes {
    frame(OP_TEXT, payload)
}

/// A close frame with a code and a short reason.
pub fn close_frame(code: u16, reason: &str) -> bytes::Bytes {
    let mut out = Vec::with_capacity(4 + reason.len().min(123));
    write_close(&mut out, code, reason);
    out.into()
}

/// Appends a close frame with a code and a short reason.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    // A control frame carries at most 125 bytes: the code and 123 of the
    // reason, cut on a character boundary so that it stays UTF-8 (a peer
    // fails the connection on a reason that is not).
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    write_frame(out, OP_CLOSE, &payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn collect(d: &mut Decoder, bytes: &[u8], max: usize) -> Result<Vec<String>, Violation> {
        let mut got = Vec::new();
        let mut input = bytes.to_vec();
        d.feed(&mut input, max, &mut |m| {
            got.push(format!("{m:?}"));
            true
        })?;
        Ok(got)
    }

    #[test]
    fn byte_by_byte_input_yields_one_message_and_frees_buffer() {
        let frame = client_frame(true, OP_TEXT, b"hello");
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in &frame {
            got.extend(collect(&mut d, &[*b], 100).unwrap());
        }
        assert_eq!(got, vec!["Text(\"hello\")"]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn fragments_are_reassembled_around_a_ping() {
        let mut bytes = client_frame(false, OP_TEXT, b"hel");
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(client_frame(true, OP_CONT, b"lo"));
        let got = collect(&mut Decoder::default(), &bytes, 100).unwrap();
        assert_eq!(got, vec!["Ping([112])", "Text(\"hello\")"]);
    }

    #[test]
    fn oversized_frame_and_message_are_1009() {
        let big = client_frame(true, OP_TEXT, &[b'a'; 200]);
        assert_eq!(
            collect(&mut Decoder::default(), &big, 100)
                .unwrap_err()
                .code,
            1009
        );
        let mut bytes = client_frame(false, OP_TEXT, &[b'a'; 60]);
        bytes.extend(client_frame(true, OP_CONT, &[b'a'; 60]));
        assert_eq!(
            collect(&mut Decoder::default(), &bytes, 100)
                .unwrap_err()
                .code,
            1009
        );
        let huge = client_frame(true, OP_BINARY, &vec![0; 70000]);
        assert_eq!(
            collect(&mut Decoder::default(), &huge, 65536)
                .unwrap_err()
                .code,
            1009
        );
    }

    #[test]
    fn invalid_utf8_is_1007_and_unmasked_is_1002() {
        let bad = client_frame(true, OP_TEXT, &[0xff, 0xfe]);
        assert_eq!(
            collect(&mut Decoder::default(), &bad, 100)
                .unwrap_err()
                .code,
            1007
        );
        let unmasked = [0x81u8, 0x01, b'a'];
        assert_eq!(
            collect(&mut Decoder::default(), &unmasked, 100)
                .unwrap_err()
                .code,
            1002
        );
    }

    #[test]
    fn a_long_close_reason_is_cut_on_a_character_boundary() {
        // Found by the fuzzer: cut at byte 123, the "é" lost its second byte
        // and the reason was not UTF-8 (a peer fails the connection on it).
        let reason = format!("{}é", "a".repeat(122));
        let mut out = Vec::new();
        write_close(&mut out, 1008, &reason);
        assert_eq!(usize::from(out[1]), 2 + 122);
        assert_eq!(&out[4..], "a".repeat(122).as_bytes());
        out.clear();
        write_close(&mut out, 1000, &"é".repeat(100));
        assert_eq!(usize::from(out[1]), 2 + 122);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn server_frames_use_extended_lengths() {
        let mut out = Vec::new();
        write_frame(&mut out, OP_TEXT, &[0; 300]);
        assert_eq!(&out[..4], &[0x81, 126, 1, 44]);
        out.clear();
        write_frame(&mut out, OP_TEXT, &vec![0; 70000]);
        assert_eq!(out[1], 127);
    }
}
