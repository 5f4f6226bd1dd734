//! Target `codec`: the RFC 6455 frame decoder (`transport::codec`) is the
//! first code every byte of every socket meets, and the frame writer the
//! last. Properties, for any bytes and any frame limit:
//!
//! - feeding the bytes at once, byte by byte, or cut anywhere gives the
//!   same messages and the same close code (the kernel decides the cuts);
//! - after every read it holds at most `max + 13` bytes of an incomplete
//!   frame (a header is at most 14) and at most `max` of a fragmented
//!   message, its buffers' capacity stays within twice that (plus the read
//!   for the frame buffer), and when nothing is incomplete it holds no
//!   buffer at all;
//! - messages are at most `max` bytes, text is UTF-8, pings ≤ 125 bytes;
//! - generated frame sequences (fragmented, interleaved with control
//!   frames, 7/16/64-bit lengths, reserved bits, unmasked, bad close codes,
//!   invalid UTF-8) decode to exactly what an independent model of RFC 6455
//!   says: the messages, then the close code (1002, 1007 or 1009);
//! - every frame the server writes (`write_frame`, `write_close` with any
//!   reason) has a minimal length header and, masked, decodes back to
//!   itself: a close reason stays valid UTF-8 within 123 bytes.

use super::mutate::{mutate_generated, mutated, seeds};
use super::{ensure, Input, Verdict};
use crate::transport::codec::{self, Decoder, Violation, WsMessage};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

const TARGET: &str = "codec";
const DEFAULT_MAX: usize = 65_536;

/// Frame headers and payload bytes worth inserting anywhere.
const DICT: &[&[u8]] = &[
    b"\x81\x80\0\0\0\0",
    b"\x82\x80\0\0\0\0",
    b"\x01\x80\0\0\0\0",
    b"\x00\x80\0\0\0\0",
    b"\x80\x80\0\0\0\0",
    b"\x89\x80\0\0\0\0",
    b"\x8a\x80\0\0\0\0",
    b"\x88\x80\0\0\0\0",
    b"\x88\x81\0\0\0\0\x03",
    b"\x88\x82\0\0\0\0\x03\xe8",
    b"\x88\x82\0\0\0\0\x03\xed",
    b"\x81\xfe\x00\x7e",
    b"\x81\xfe\xff\xff",
    b"\x81\xff\x00\x00\x00\x00\x00\x01\x00\x00",
    b"\x81\xff\x80\x00\x00\x00\x00\x00\x00\x00",
    b"\x81\x05hello",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xf0\x9f\x98",
];

/// Close codes the server sends.
const SERVER_CODES: &[u16] = &[1000, 1001, 1002, 1007, 1008, 1009, 1011, 4001];

#[derive(Clone, Debug)]
pub struct FrameSpec {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    /// 0: minimal length encoding, 1: at least 16-bit, 2: 64-bit.
    wide: u8,
    /// A length that differs from the payload's (the stream desyncs).
    declared: Option<u64>,
    mask: [u8; 4],
    payload: Vec<u8>,
}

impl FrameSpec {
    fn len(&self) -> u64 {
        self.declared.unwrap_or(self.payload.len() as u64)
    }

    /// The 7-bit length code of the header.
    fn len7(&self) -> u8 {
        let len = self.len();
        match self.wide {
            0 if len < 126 => len as u8,
            0 | 1 if len <= 0xFFFF => 126,
            _ => 127,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.opcode & 0x0F));
        let mask_bit = u8::from(self.masked) << 7;
        let len = self.len();
        match self.len7() {
            126 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            127 => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
            n => out.push(mask_bit | n),
        }
        if self.masked {
            out.extend_from_slice(&self.mask);
            out.extend(
                self.payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ self.mask[i & 3]),
            );
        } else {
            out.extend_from_slice(&self.payload);
        }
    }
}

fn encode_all(frames: &[FrameSpec]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out);
    }
    out
}

#[derive(Clone, Debug)]
pub struct CodecInput {
    bytes: Vec<u8>,
    max: usize,
    cuts: Vec<Index>,
    /// The frames `bytes` encodes, when generated and not mutated since.
    frames: Option<Vec<FrameSpec>>,
}

impl Input for CodecInput {
    fn from_seed(bytes: &[u8]) -> Self {
        CodecInput {
            bytes: bytes.to_vec(),
            max: DEFAULT_MAX,
            cuts: Vec::new(),
            frames: None,
        }
    }

    fn to_seed(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

/// A message, owned, for comparing outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

impl From<WsMessage<'_>> for Msg {
    fn from(m: WsMessage<'_>) -> Msg {
        match m {
            WsMessage::Text(t) => Msg::Text(t.to_owned()),
            WsMessage::Binary(b) => Msg::Binary(b.to_vec()),
            WsMessage::Ping(b) => Msg::Ping(b.to_vec()),
            WsMessage::Pong => Msg::Pong,
            WsMessage::Close(c) => Msg::Close(c),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    msgs: Vec<Msg>,
    /// The close code the decoder asked for, if any.
    error: Option<u16>,
}

/// Feeds `bytes` cut at `cuts` (sorted), as reads would, checking what the
/// decoder holds after every read; stops at the first violation.
fn decode_in(bytes: &[u8], max: usize, cuts: &[usize]) -> Result<Outcome, String> {
    let mut d = Decoder::default();
    let mut msgs = Vec::new();
    let mut from = 0;
    let ends = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < bytes.len())
        .chain(std::iter::once(bytes.len()));
    let mut largest_read = 0;
    for end in ends {
        if end <= from && !(end == 0 && bytes.is_empty()) {
            continue;
        }
        let mut chunk = bytes[from..end].to_vec();
        largest_read = largest_read.max(chunk.len());
        from = end;
        let fed = d.feed(&mut chunk, max, &mut |m| {
            msgs.push(Msg::from(m));
            true
        });
        if let Err(Violation { code, .. }) = fed {
            return Ok(Outcome {
                msgs,
                error: Some(code),
            });
        }
        let [(frame_len, frame_cap), (message_len, message_cap)] = d.held();
        ensure!(
            frame_len <= max + 13,
            "holds {frame_len} bytes of an incomplete frame, max {max}"
        );
        ensure!(
            message_len <= max,
            "holds {message_len} bytes of a fragmented message, max {max}"
        );
        ensure!(
            frame_cap <= 2 * (max + 14 + largest_read),
            "incomplete-frame buffer capacity {frame_cap} (max {max}, reads ≤ {largest_read})"
        );
        // A Vec<u8> that grows holds at least 8 bytes: for a tiny max the
        // bound is that.
        ensure!(
            message_cap <= 2 * max.max(8),
            "fragment buffer capacity {message_cap}, max {max}"
        );
        ensure!(
            frame_len > 0 || frame_cap == 0,
            "keeps a {frame_cap}-byte buffer with no incomplete frame"
        );
        ensure!(
            message_len > 0 || message_cap == 0,
            "keeps a {message_cap}-byte fragment buffer for an empty message"
        );
    }
    Ok(Outcome { msgs, error: None })
}

/// RFC 6455 as a reader of these frame specs would apply it, in the
/// decoder's order of checks. `None` when a declared length that is not
/// the payload's makes the rest of the stream unknowable here.
fn model(frames: &[FrameSpec], max: usize) -> Option<Outcome> {
    let mut msgs = Vec::new();
    let fail = |msgs: Vec<Msg>, code: u16| {
        Some(Outcome {
            msgs,
            error: Some(code),
        })
    };
    let text_or_binary = |opcode: u8, data: Vec<u8>| match opcode {
        1 => String::from_utf8(data).map(Msg::Text).ok(),
        _ => Some(Msg::Binary(data)),
    };
    let mut fragments: Option<(u8, Vec<u8>)> = None;
    for f in frames {
        let control = f.opcode >= 8;
        if f.rsv & 7 != 0 || !matches!(f.opcode, 0 | 1 | 2 | 8 | 9 | 10) {
            return fail(msgs, 1002);
        }
        if control && (!f.fin || f.len7() > 125) {
            return fail(msgs, 1002);
        }
        if !f.masked {
            return fail(msgs, 1002);
        }
        if f.len() > max as u64 {
            return fail(msgs, 1009);
        }
        if f.declared.is_some_and(|d| d != f.payload.len() as u64) {
            return None;
        }
        let data = f.payload.clone();
        match f.opcode {
            8 => match data.len() {
                0 => msgs.push(Msg::Close(None)),
                1 => return fail(msgs, 1002),
                _ => {
                    let code = u16::from_be_bytes([data[0], data[1]]);
                    if !matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999) {
                        return fail(msgs, 1002);
                    }
                    if std::str::from_utf8(&data[2..]).is_err() {
                        return fail(msgs, 1007);
                    }
                    msgs.push(Msg::Close(Some(code)));
                }
            },
            9 => msgs.push(Msg::Ping(data)),
            10 => msgs.push(Msg::Pong),
            1 | 2 => {
                if fragments.is_some() {
                    return fail(msgs, 1002);
                }
                if f.fin {
                    match text_or_binary(f.opcode, data) {
                        Some(m) => msgs.push(m),
                        None => return fail(msgs, 1007),
                    }
                } else {
                    fragments = Some((f.opcode, data));
                }
            }
            _ => {
                let Some((first, mut acc)) = fragments.take() else {
                    return fail(msgs, 1002);
                };
                if acc.len() + data.len() > max {
                    return fail(msgs, 1009);
                }
                acc.extend_from_slice(&data);
                if f.fin {
                    match text_or_binary(first, acc) {
                        Some(m) => msgs.push(m),
                        None => return fail(msgs, 1007),
                    }
                } else {
                    fragments = Some((first, acc));
                }
            }
        }
    }
    Some(Outcome { msgs, error: None })
}

/// A server frame as a client would send it: the mask bit set, a mask
/// key, the payload masked. Checks the header is minimal and exact.
fn as_client_frame(server: &[u8]) -> Result<Vec<u8>, String> {
    ensure!(server.len() >= 2, "server frame of {} bytes", server.len());
    ensure!(server[0] & 0x80 != 0, "server frame without FIN");
    ensure!(server[1] & 0x80 == 0, "server frame is masked");
    let (len, at) = match server[1] & 0x7F {
        126 => (u64::from(u16::from_be_bytes([server[2], server[3]])), 4),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&server[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    let minimal = match at {
        2 => len < 126,
        4 => (126..=0xFFFF).contains(&len),
        _ => len > 0xFFFF,
    };
    ensure!(
        minimal,
        "length {len} not minimally encoded ({at}-byte header)"
    );
    ensure!(
        server.len() as u64 == at as u64 + len,
        "frame of {} bytes declares {len} after a {at}-byte header",
        server.len()
    );
    let mask = [0x37u8, 0xFA, 0x21, 0x3D];
    let mut out = vec![server[0], server[1] | 0x80];
    out.extend_from_slice(&server[2..at]);
    out.extend_from_slice(&mask);
    out.extend(
        server[at..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3]),
    );
    Ok(out)
}

/// What the server writes reads back as what it meant.
fn check_writer(bytes: &[u8]) -> Verdict {
    let payload = &bytes[..bytes.len().min(70_000)];
    let mut expect = vec![(codec::OP_BINARY, Msg::Binary(payload.to_vec()))];
    if let Ok(text) = std::str::from_utf8(payload) {
        expect.push((codec::OP_TEXT, Msg::Text(text.to_owned())));
    }
    for (opcode, msg) in expect {
        let mut out = Vec::new();
        codec::write_frame(&mut out, opcode, payload);
        let got = decode_in(&as_client_frame(&out)?, 1 << 20, &[])?;
        ensure!(
            got.error.is_none() && got.msgs == [msg],
            "write_frame({opcode}) of {} bytes read back as {got:?}",
            payload.len()
        );
    }
    let reason = String::from_utf8_lossy(bytes);
    let code = SERVER_CODES[bytes.len() % SERVER_CODES.len()];
    let mut out = Vec::new();
    codec::write_close(&mut out, code, &reason);
    ensure!(
        out.len() <= 2 + 125,
        "close frame of {} bytes: control frames carry at most 125",
        out.len()
    );
    let got = decode_in(&as_client_frame(&out)?, DEFAULT_MAX, &[])?;
    ensure!(
        got == Outcome {
            msgs: vec![Msg::Close(Some(code))],
            error: None
        },
        "write_close({code}, {reason:?}) read back as {got:?}"
    );
    ensure!(
        reason.as_bytes().starts_with(&out[4..]),
        "the close reason is not a prefix of the one given"
    );
    Ok(())
}

fn property(input: &CodecInput) -> Verdict {
    let len = input.bytes.len();
    let mut maxes = vec![input.max];
    if input.max != DEFAULT_MAX {
        maxes.push(DEFAULT_MAX);
    }
    for max in maxes {
        let whole = decode_in(&input.bytes, max, &[])?;
        let every: Vec<usize> = (1..len).collect();
        let bytewise = decode_in(&input.bytes, max, &every)?;
        ensure!(
            whole == bytewise,
            "max {max}: at once {whole:?}\nbyte by byte {bytewise:?}"
        );
        let mut cuts: Vec<usize> = input.cuts.iter().map(|c| c.index(len + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let split = decode_in(&input.bytes, max, &cuts)?;
        ensure!(
            whole == split,
            "max {max}: at once {whole:?}\ncut at {cuts:?} {split:?}"
        );
        for m in &whole.msgs {
            let ok = match m {
                Msg::Text(t) => t.len() <= max,
                Msg::Binary(b) => b.len() <= max,
                Msg::Ping(b) => b.len() <= 125.min(max),
                Msg::Pong | Msg::Close(_) => true,
            };
            ensure!(ok, "max {max}: message out of bounds: {m:?}");
        }
        if max == input.max {
            super::note(
                TARGET,
                match whole.error {
                    None if whole.msgs.is_empty() => "no message",
                    None => "messages, no violation",
                    Some(1002) => "closed 1002",
                    Some(1007) => "closed 1007",
                    Some(1009) => "closed 1009",
                    Some(_) => "closed otherwise",
                },
            );
            if let Some(expected) = input.frames.as_deref().and_then(|f| model(f, max)) {
                super::note(TARGET, "checked against the model");
                ensure!(
                    whole == expected,
                    "max {max}: decoded {whole:?}\nthe model says {expected:?}"
                );
            }
        }
    }
    check_writer(&input.bytes)
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<char>(), 0..24).prop_map(|c| c.into_iter().collect::<String>().into_bytes()),
        2 => vec(any::<u8>(), 0..24),
        2 => (
            prop_oneof![
                Just(1000u16), Just(1001), Just(1005), Just(1006), Just(1011), Just(1012),
                Just(1015), Just(2999), Just(3000), Just(4999), Just(5000), Just(0), any::<u16>()
            ],
            vec(any::<char>(), 0..8)
        )
            .prop_map(|(code, reason)| {
                let mut b = code.to_be_bytes().to_vec();
                b.extend(reason.into_iter().collect::<String>().into_bytes());
                b
            }),
        2 => (
            prop_oneof![Just(0usize), Just(1), Just(2), Just(124), Just(125), Just(126),
                        Just(127), Just(128), Just(199), Just(200), Just(255), Just(256), Just(300)],
            any::<bool>()
        )
            .prop_map(|(n, wide_chars)| {
                // "é" is two bytes: a cut at an odd length splits one.
                let unit: &[u8] = if wide_chars { "é".as_bytes() } else { b"a" };
                unit.iter().copied().cycle().take(n).collect()
            }),
        1 => Just(br#"["1","2","phoenix","heartbeat",{}]"#.to_vec()),
    ]
}

fn frame() -> impl Strategy<Value = FrameSpec> {
    let opcode = prop_oneof![
        5 => Just(1u8), 3 => Just(2u8), 3 => Just(0u8), 2 => Just(8u8),
        2 => Just(9u8), 1 => Just(10u8), 1 => 3u8..8, 1 => 11u8..16
    ];
    let rsv = prop_oneof![12 => Just(0u8), 1 => 1u8..8];
    let masked = prop_oneof![15 => Just(true), 1 => Just(false)];
    let wide = prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)];
    let declared = prop_oneof![
        12 => Just(None),
        1 => prop_oneof![
            Just(126u64), Just(65_535), Just(65_537), Just(1 << 32), Just(u64::MAX >> 1),
            Just(u64::MAX), 0u64..300
        ]
        .prop_map(Some)
    ];
    let fin = prop_oneof![3 => Just(true), 1 => Just(false)];
    (
        fin,
        rsv,
        opcode,
        masked,
        wide,
        declared,
        any::<[u8; 4]>(),
        payload(),
    )
        .prop_map(
            |(fin, rsv, opcode, masked, wide, declared, mask, payload)| FrameSpec {
                fin,
                rsv,
                opcode,
                masked,
                wide,
                declared,
                mask,
                payload,
            },
        )
}

fn max() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(2),
        Just(125),
        Just(126),
        Just(127),
        Just(128),
        Just(200),
        Just(300),
        Just(65_535),
        Just(DEFAULT_MAX),
    ]
}

fn strategy() -> impl Strategy<Value = CodecInput> {
    let seeds = seeds(TARGET);
    let cuts = || vec(any::<Index>(), 0..8);
    let plain = |bytes: Vec<u8>, max, cuts| CodecInput {
        bytes,
        max,
        cuts,
        frames: None,
    };
    prop_oneof![
        4 => (mutated(seeds, DICT, 6), max(), cuts()).prop_map(move |(b, m, c)| plain(b, m, c)).boxed(),
        4 => (vec(frame(), 1..8), max(), cuts()).prop_map(|(frames, max, cuts)| CodecInput {
            bytes: encode_all(&frames),
            max,
            cuts,
            frames: Some(frames),
        }).boxed(),
        2 => (
            mutate_generated(vec(frame(), 1..6).prop_map(|f| encode_all(&f)), DICT, 4),
            max(),
            cuts()
        )
            .prop_map(move |(b, m, c)| plain(b, m, c)).boxed(),
        1 => (vec(any::<u8>(), 0..64), max(), cuts()).prop_map(move |(b, m, c)| plain(b, m, c)).boxed(),
    ]
}

#[test]
fn fuzz_codec() {
    super::run(TARGET, 10_000, strategy(), property);
}

#[test]
fn the_model_agrees_with_hand_written_cases() {
    let text = |fin, opcode, payload: &[u8]| FrameSpec {
        fin,
        rsv: 0,
        opcode,
        masked: true,
        wide: 0,
        declared: None,
        mask: [1, 2, 3, 4],
        payload: payload.to_vec(),
    };
    let frames = [
        text(false, 1, b"he"),
        text(true, 9, b"p"),
        text(true, 0, b"llo"),
    ];
    let expected = model(&frames, 100).unwrap();
    assert_eq!(
        expected.msgs,
        [Msg::Ping(b"p".to_vec()), Msg::Text("hello".into())]
    );
    assert_eq!(decode_in(&encode_all(&frames), 100, &[]).unwrap(), expected);
    assert_eq!(
        model(&[text(true, 1, &[0xff])], 100).unwrap().error,
        Some(1007)
    );
}
