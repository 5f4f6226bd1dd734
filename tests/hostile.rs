//! Hostile clients at the socket level (issue 11, SPEC §2 and §6.3): 50
//! sockets send 100,000 frames of every malformed kind — bad JSON, wrong
//! arity and types, bad binary headers, unknown events, joins of unmatched
//! topics and refused joins, deep nesting, heartbeat and ping floods, and
//! the frames that end a connection (invalid UTF-8 1007, oversized 1009,
//! unmasked and other protocol errors 1002, random bytes), reconnecting
//! after each — while 10 well-behaved sockets stay joined and keep asking
//! for their stats. The fuzz targets (src/fuzz/) check the decoders one by
//! one; this checks the node as a whole under the same input:
//!
//! - the node stays up (`/healthz` answers throughout);
//! - every reply a hostile socket gets answers a ref it sent, once, with the
//!   answer SPEC §2 gives for that frame (or `rate limited`, SPEC §8.4), and
//!   every connection ends with the close code its last frame calls for;
//! - the well-behaved sockets never see an error or a close, and every
//!   answer they get counts exactly their own memberships (the hostile
//!   sockets join only `hostile:*` topics, which are told apart);
//! - once the hostile sockets are gone, LocalStats and the `/metrics` gauges
//!   are exactly the well-behaved memberships, and the refused frames were
//!   counted.
//!
//! The per-socket rate limits are raised out of the way so that the frames
//! reach the decoders; a `rate limited` answer is tolerated all the same.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const HOSTILE_SOCKETS: usize = 50;
const FRAMES: usize = 100_000;
const WELL_BEHAVED: usize = 10;
const MAX_FRAME: usize = 4096;
/// Hostile sockets join only topics `hostile:0` .. `hostile:9`.
const HOSTILE_TOPICS: u64 = 10;
/// The whole storm must be over within this (bounded waits only).
const STORM_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// A small deterministic RNG (splitmix64): each hostile socket its own stream.
// ---------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------
// Client frames, built by hand: masked or not, any opcode, any length.
// ---------------------------------------------------------------------------

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CONT: u8 = 0;
const CLOSE: u8 = 8;
const PING: u8 = 9;

fn raw_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: &[u8],
    declared: Option<u64>,
) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | rsv << 4 | opcode];
    let mask_bit = u8::from(masked) << 7;
    let len = declared.unwrap_or(payload.len() as u64);
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if masked {
        let mask = [0xA5u8, 0x3C, 0x0F, 0x96];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(true, 0, opcode, true, payload, None)
}

fn text(s: &str) -> Vec<u8> {
    frame(TEXT, s.as_bytes())
}

/// A client message in the socket's serializer; refs are JSON texts.
fn msg(vsn: Vsn, join_ref: &str, r: &str, topic: &str, event: &str, payload: &str) -> String {
    match vsn {
        Vsn::V1 => format!(
            r#"{{"topic":{},"event":{},"payload":{payload},"ref":{r},"join_ref":{join_ref}}}"#,
            json!(topic),
            json!(event)
        ),
        Vsn::V2 => format!(
            "[{join_ref},{r},{},{},{payload}]",
            json!(topic),
            json!(event)
        ),
    }
}

// ---------------------------------------------------------------------------
// What a hostile connection expects back.
// ---------------------------------------------------------------------------

/// The answer a frame's ref must get.
#[derive(Clone, Debug)]
enum Expect {
    Ok,
    /// An error reply with one of these reasons.
    Error(&'static [&'static str]),
    /// No reply, or an error with one of these reasons (a message whose
    /// answer depends on a membership the test does not track exactly).
    Maybe(&'static [&'static str]),
}

/// How a connection must end after a frame that ends it.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Code(u16),
    /// Anything: random bytes may mean anything, or nothing until EOF.
    Any,
}

/// What the reader of one connection saw.
#[derive(Default)]
struct Seen {
    expected: HashMap<String, Expect>,
    answered: BTreeSet<String>,
    /// Replies checked, by status and reason.
    replies: BTreeMap<String, u64>,
    /// Random bytes were sent: replies to refs not sent are possible.
    chaotic: bool,
    /// The close code the server sent (0: a close frame without one).
    close: Option<u16>,
    close_reason: String,
    ended: bool,
    violations: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

/// The server frames of one connection, until it ends.
async fn read_server(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut buf: Vec<u8>,
    vsn: Vsn,
    seen: Shared,
) {
    let mut chunk = [0u8; 16384];
    'read: loop {
        // Whole frames in `buf`.
        while let Some((opcode, payload, used)) = server_frame(&buf) {
            let payload = payload.to_vec();
            buf.drain(..used);
            match opcode {
                1 => check_reply(vsn, &payload, &seen),
                8 => {
                    let mut s = seen.lock().unwrap();
                    s.close = Some(if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        0
                    });
                    s.close_reason =
                        String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
                    if std::str::from_utf8(payload.get(2..).unwrap_or(&[])).is_err() {
                        s.violations.push("close reason is not UTF-8".into());
                    }
                    break 'read;
                }
                9 | 10 => {}
                other => {
                    let mut s = seen.lock().unwrap();
                    s.violations
                        .push(format!("server frame with opcode {other}"));
                }
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    seen.lock().unwrap().ended = true;
}

/// One unmasked server frame at the front of `buf`: (opcode, payload, bytes used).
fn server_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, at) = match buf[1] & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = buf.get(at..at + len)?;
    Some((buf[0] & 0x0F, payload, at + len))
}

fn check_reply(vsn: Vsn, payload: &[u8], seen: &Shared) {
    let mut s = seen.lock().unwrap();
    let Ok(text) = std::str::from_utf8(payload) else {
        s.violations.push("text frame not UTF-8".into());
        return;
    };
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        s.violations
            .push(format!("server sent invalid JSON: {text}"));
        return;
    };
    let (event, reference, reply) = match vsn {
        Vsn::V1 => (v["event"].clone(), v["ref"].clone(), v["payload"].clone()),
        Vsn::V2 => (v[3].clone(), v[1].clone(), v[4].clone()),
    };
    match event.as_str() {
        Some("phx_reply") => {}
        // A duplicate join or a leave ends a `hostile:*` membership.
        Some("phx_close") => return,
        _ => {
            s.violations.push(format!("unexpected push: {text}"));
            return;
        }
    }
    let key = reference.to_string();
    let status = reply["status"].as_str().unwrap_or("?").to_owned();
    let reason = reply["response"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let Some(expect) = s.expected.get(&key).cloned() else {
        if !s.chaotic {
            s.violations
                .push(format!("reply to a ref never sent: {text}"));
        }
        return;
    };
    if !s.answered.insert(key) {
        s.violations
            .push(format!("second reply to one ref: {text}"));
    }
    let ok = match (&expect, status.as_str()) {
        (_, "error") if reason == "rate limited" => true,
        (Expect::Ok, "ok") => true,
        (Expect::Error(reasons) | Expect::Maybe(reasons), "error") => {
            reasons.contains(&reason.as_str())
        }
        _ => false,
    };
    if !ok {
        s.violations
            .push(format!("expected {expect:?}, got {text}"));
    }
    *s.replies.entry(format!("{status} {reason}")).or_default() += 1;
}

// ---------------------------------------------------------------------------
// A hostile connection: a raw TCP socket after a hand-written upgrade.
// ---------------------------------------------------------------------------

struct Conn {
    wr: OwnedWriteHalf,
    seen: Shared,
    reader: Option<JoinHandle<()>>,
    next_ref: u64,
}

impl Conn {
    async fn open(addr: SocketAddr, vsn: Vsn) -> Conn {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let query = if vsn == Vsn::V2 { "?vsn=2.0.0" } else { "" };
        let request = format!(
            "GET /socket/websocket{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        wr.write_all(request.as_bytes())
            .await
            .expect("upgrade request");
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = tokio::time::timeout(TIMEOUT, rd.read(&mut chunk))
                .await
                .expect("upgrade response timed out")
                .expect("upgrade response");
            assert!(n > 0, "connection closed during the upgrade");
            head.extend_from_slice(&chunk[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "upgrade refused: {}",
            String::from_utf8_lossy(&head)
        );
        let rest = head[end..].to_vec();
        let seen = Shared::default();
        let reader = tokio::spawn(read_server(rd, rest, vsn, seen.clone()));
        Conn {
            wr,
            seen,
            reader: Some(reader),
            next_ref: 0,
        }
    }

    /// A fresh ref, as JSON text: a string, or on V1 now and then a number
    /// (replies must echo it with its JSON type).
    fn fresh(&mut self, vsn: Vsn) -> String {
        self.next_ref += 1;
        if vsn == Vsn::V1 && self.next_ref.is_multiple_of(3) {
            self.next_ref.to_string()
        } else {
            format!("\"{}\"", self.next_ref)
        }
    }

    fn expect(&self, r: &str, e: Expect) {
        self.seen.lock().unwrap().expected.insert(r.to_owned(), e);
    }

    fn ended(&self) -> bool {
        self.seen.lock().unwrap().ended
    }

    /// Waits for the server to end the connection: its close code (`None`
    /// when it sent no close frame) and reason; `None` on timeout.
    async fn wait_end(&mut self) -> Option<(Option<u16>, String)> {
        if let Some(mut reader) = self.reader.take() {
            if tokio::time::timeout(TIMEOUT, &mut reader).await.is_err() {
                self.reader = Some(reader);
                return None;
            }
        }
        let s = self.seen.lock().unwrap();
        Some((s.close, s.close_reason.clone()))
    }
}

/// What one hostile socket did, summed at the end.
#[derive(Default, Debug)]
struct Report {
    frames: usize,
    by_kind: BTreeMap<&'static str, usize>,
    connections: usize,
    closes: BTreeMap<String, usize>,
    replies: BTreeMap<String, u64>,
    violations: Vec<String>,
}

impl Report {
    fn merge(&mut self, other: Report) {
        self.frames += other.frames;
        for (k, v) in other.by_kind {
            *self.by_kind.entry(k).or_default() += v;
        }
        self.connections += other.connections;
        for (k, v) in other.closes {
            *self.closes.entry(k).or_default() += v;
        }
        for (k, v) in other.replies {
            *self.replies.entry(k).or_default() += v;
        }
        self.violations.extend(other.violations);
    }

    /// Takes what the reader of a finished connection saw.
    fn collect(&mut self, conn: &Conn) {
        let mut s = conn.seen.lock().unwrap();
        for (k, v) in std::mem::take(&mut s.replies) {
            *self.replies.entry(k).or_default() += v;
        }
        self.violations.append(&mut s.violations);
    }
}

/// One batch of frames: the bytes, how many frames they are, and, for a
/// batch that ends the connection, how.
struct Batch {
    kind: &'static str,
    bytes: Vec<u8>,
    frames: usize,
    ending: Option<Ending>,
}

fn batch(kind: &'static str, bytes: Vec<u8>, frames: usize) -> Batch {
    Batch {
        kind,
        bytes,
        frames,
        ending: None,
    }
}

fn ending(kind: &'static str, bytes: Vec<u8>, frames: usize, how: Ending) -> Batch {
    Batch {
        kind,
        bytes,
        frames,
        ending: Some(how),
    }
}

const UNMATCHED: &[&str] = &["unmatched topic"];
const MALFORMED: &[&str] = &["malformed message"];
/// On a `hostile:*` topic the socket may or may not hold.
const ON_HOSTILE: &[&str] = &[
    "unknown event",
    "unmatched topic",
    "client broadcast disabled",
];

/// The next batch of hostile frames for `c`.
fn next_batch(rng: &mut Rng, c: &mut Conn, vsn: Vsn, left: usize) -> Batch {
    let hostile = |k: u64| format!("hostile:{k}");
    let k = rng.below(HOSTILE_TOPICS);
    let roll = rng.below(1000);
    match roll {
        // --- frames that keep the connection ------------------------------
        0..=99 => {
            let bad = [
                "{",
                "[",
                "nope",
                "",
                r#"{"topic":"t","event":"e","payload":{},"ref":"1""#,
                r#"["1","2","t","e",{}"#,
                r#"{"topic":"t" "event":1}"#,
                "[1,2,]",
                r#"{"a":}"#,
                "\u{feff}[]",
            ];
            batch(
                "bad json",
                text(bad[rng.below(bad.len() as u64) as usize]),
                1,
            )
        }
        100..=199 => {
            let r = c.fresh(vsn);
            c.expect(&r, Expect::Error(MALFORMED));
            let t = json!(hostile(k));
            let s = match (vsn, rng.below(2)) {
                (Vsn::V2, 0) => format!(r#"["1",{r},{t},"e"]"#),
                (Vsn::V2, _) => format!(r#"["1",{r},{t},"e",{{}},6]"#),
                (Vsn::V1, 0) => format!(r#"{{"topic":{t},"event":"e","ref":{r}}}"#),
                (Vsn::V1, _) => format!(r#"{{"topic":{t},"payload":{{}},"ref":{r}}}"#),
            };
            batch("wrong arity", text(&s), 1)
        }
        200..=279 => {
            let r = c.fresh(vsn);
            let t = json!(hostile(k));
            let s = match (vsn, rng.below(3)) {
                (Vsn::V2, 0) => {
                    c.expect(&r, Expect::Error(MALFORMED));
                    format!(r#"[{{}},{r},{t},"e",{{}}]"#)
                }
                (Vsn::V2, 1) => format!(r#"["1",{r},5,"e",{{}}]"#),
                (Vsn::V2, _) => {
                    c.expect(&r, Expect::Error(MALFORMED));
                    format!(r#"["1",{r},{t},7,{{}}]"#)
                }
                (Vsn::V1, 0) => {
                    c.expect(&r, Expect::Error(MALFORMED));
                    format!(r#"{{"topic":{t},"event":7,"payload":{{}},"ref":{r}}}"#)
                }
                (Vsn::V1, 1) => format!(r#"{{"topic":{t},"event":"e","payload":{{}},"ref":{{}}}}"#),
                // An array on a V1 socket is not a frame.
                (Vsn::V1, _) => format!(r#"[{t},"e",{{}},{r}]"#),
            };
            batch("wrong types", text(&s), 1)
        }
        280..=379 => {
            let topic = hostile(k);
            let payload = match (vsn, rng.below(5)) {
                (Vsn::V1, _) => binary_push("1", "2", &topic, "e", b"x"),
                (Vsn::V2, 0) => vec![1, 1, 1, 1, 1, b'a', b'b', b'c', b'd'],
                (Vsn::V2, 1) => vec![0, 1, 2],
                (Vsn::V2, 2) => {
                    let mut p = binary_push("1", "22", &topic, "e", b"");
                    p[3] = 200; // the topic's size points past the end
                    p
                }
                (Vsn::V2, 3) => {
                    let r = c.fresh(vsn);
                    let raw: String = serde_json::from_str(&r).unwrap();
                    c.expect(&json!(raw).to_string(), Expect::Error(MALFORMED));
                    let mut p = binary_push("1", &raw, &topic, "ev", b"");
                    let at = p.len() - 1;
                    p[at] = 0xFF; // the event is not UTF-8
                    p
                }
                (Vsn::V2, _) => {
                    // A well-formed binary push, to a topic that is not joined
                    // or on which no event takes a binary payload; ignored
                    // when joined under another join_ref.
                    let r = c.fresh(vsn);
                    let raw: String = serde_json::from_str(&r).unwrap();
                    c.expect(&json!(raw).to_string(), Expect::Maybe(ON_HOSTILE));
                    binary_push("1", &raw, &topic, "ev", &rng.bytes(8))
                }
            };
            batch("binary", frame(BINARY, &payload), 1)
        }
        380..=459 => {
            let r = c.fresh(vsn);
            c.expect(&r, Expect::Error(ON_HOSTILE));
            let event = [
                "nope",
                "phx_reply",
                "phx_close",
                "broadcast",
                "get_local_stats!",
            ][rng.below(5) as usize];
            batch(
                "unknown event",
                text(&msg(vsn, "null", &r, &hostile(k), event, "{}")),
                1,
            )
        }
        460..=519 => {
            let r = c.fresh(vsn);
            c.expect(&r, Expect::Error(UNMATCHED));
            let topic = [
                "nope",
                "patterns:",
                "patterns:stats:x",
                "hostile",
                "",
                "phoenix",
            ][rng.below(6) as usize];
            batch(
                "join unmatched",
                text(&msg(vsn, &r, &r, topic, "phx_join", "{}")),
                1,
            )
        }
        520..=549 => {
            let r = c.fresh(vsn);
            c.expect(&r, Expect::Error(&["invalid subsystem"]));
            let sub = ["s9", "S0", "", "ss1"][rng.below(4) as usize];
            let p = json!({ "subsystem": sub }).to_string();
            batch(
                "join refused",
                text(&msg(vsn, &r, &r, VSM, "phx_join", &p)),
                1,
            )
        }
        550..=619 => {
            let r = c.fresh(vsn);
            if rng.below(3) == 0 {
                c.expect(&r, Expect::Ok);
                batch(
                    "leave",
                    text(&msg(vsn, "null", &r, &hostile(k), "phx_leave", "{}")),
                    1,
                )
            } else {
                c.expect(&r, Expect::Ok);
                batch(
                    "join hostile",
                    text(&msg(vsn, &r, &r, &hostile(k), "phx_join", "{}")),
                    1,
                )
            }
        }
        620..=649 => {
            // A message for an earlier membership: ignored when joined.
            let r = c.fresh(vsn);
            c.expect(&r, Expect::Maybe(UNMATCHED));
            let s = msg(vsn, "\"stale\"", &r, &hostile(k), "nope", "{}");
            batch("stale join_ref", text(&s), 1)
        }
        650..=759 => {
            let n = (1 + rng.below(20) as usize).min(left);
            let mut bytes = Vec::new();
            for _ in 0..n {
                let r = c.fresh(vsn);
                c.expect(&r, Expect::Ok);
                bytes.extend(text(&msg(vsn, "null", &r, "phoenix", "heartbeat", "{}")));
            }
            batch("heartbeat flood", bytes, n)
        }
        760..=819 => {
            let n = (1 + rng.below(20) as usize).min(left);
            let bytes = (0..n).flat_map(|_| frame(PING, b"are you there")).collect();
            batch("ping flood", bytes, n)
        }
        820..=869 if left >= 3 => {
            // A heartbeat in three fragments, a ping between them.
            let r = c.fresh(vsn);
            c.expect(&r, Expect::Ok);
            let s = msg(vsn, "null", &r, "phoenix", "heartbeat", "{}");
            let (a, b) = s.as_bytes().split_at(s.len() / 2);
            let mut bytes = raw_frame(false, 0, TEXT, true, a, None);
            bytes.extend(frame(PING, b""));
            bytes.extend(raw_frame(true, 0, CONT, true, b, None));
            batch("fragmented", bytes, 3)
        }
        870..=919 => {
            // serde_json reads at most 128 levels: a frame nested deeper is
            // bad JSON as a whole (dropped, no topic or ref to answer).
            let shallow = rng.below(3) == 0;
            let depth = if shallow {
                1 + rng.below(100)
            } else {
                200 + rng.below(1600)
            } as usize;
            let nest = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            if rng.below(2) == 0 {
                batch("deep nesting", text(&nest), 1)
            } else {
                // A join with nested params: within the limit they are not
                // an object, so no params (joined); beyond it, dropped.
                let r = c.fresh(vsn);
                if shallow {
                    c.expect(&r, Expect::Ok);
                } else {
                    c.expect(&r, Expect::Maybe(MALFORMED));
                }
                batch(
                    "deep join params",
                    text(&msg(vsn, &r, &r, &hostile(k), "phx_join", &nest)),
                    1,
                )
            }
        }
        920..=959 => batch("empty binary", frame(BINARY, b""), 1),
        // --- frames that end the connection -------------------------------
        960..=965 => ending(
            "invalid utf-8",
            frame(TEXT, b"[\"\xff\"]"),
            1,
            Ending::Code(1007),
        ),
        966..=968 if left >= 2 => {
            let mut bytes = raw_frame(false, 0, TEXT, true, "é".as_bytes(), None);
            bytes.extend(raw_frame(true, 0, CONT, true, b"\xc3", None));
            ending("invalid utf-8 fragments", bytes, 2, Ending::Code(1007))
        }
        969..=973 => {
            // Only the header: the length alone is refused.
            let len = [MAX_FRAME as u64 + 1, 1 << 20, u64::MAX >> 1][rng.below(3) as usize];
            ending(
                "oversized",
                raw_frame(true, 0, TEXT, true, &[], Some(len)),
                1,
                Ending::Code(1009),
            )
        }
        974..=975 if left >= 3 => {
            let part = vec![b' '; MAX_FRAME / 2];
            let mut bytes = raw_frame(false, 0, TEXT, true, &part, None);
            bytes.extend(raw_frame(false, 0, CONT, true, &part, None));
            bytes.extend(raw_frame(true, 0, CONT, true, &part, None));
            ending("oversized message", bytes, 3, Ending::Code(1009))
        }
        976..=979 => ending(
            "unmasked",
            raw_frame(true, 0, TEXT, false, b"[]", None),
            1,
            Ending::Code(1002),
        ),
        980..=985 => {
            let (what, bytes) = match rng.below(6) {
                0 => ("reserved bits", raw_frame(true, 4, TEXT, true, b"[]", None)),
                1 => ("opcode 3", raw_frame(true, 0, 3, true, b"", None)),
                2 => (
                    "continuation first",
                    raw_frame(true, 0, CONT, true, b"x", None),
                ),
                3 => ("ping of 126", frame(PING, &[0u8; 126])),
                4 => ("close 1005", frame(CLOSE, &1005u16.to_be_bytes())),
                _ => ("ping not final", raw_frame(false, 0, PING, true, b"", None)),
            };
            ending(what, bytes, 1, Ending::Code(1002))
        }
        986..=989 => {
            let n = 1 + rng.below(64) as usize;
            c.seen.lock().unwrap().chaotic = true;
            ending("random bytes", rng.bytes(n), 1, Ending::Any)
        }
        990..=992 => {
            let mut p = 1000u16.to_be_bytes().to_vec();
            p.push(0xFF);
            ending("close bad reason", frame(CLOSE, &p), 1, Ending::Code(1007))
        }
        993..=995 => ending(
            "close",
            frame(CLOSE, &4000u16.to_be_bytes()),
            1,
            Ending::Code(4000),
        ),
        _ => batch("bad json", text("]"), 1),
    }
}

/// One hostile socket: `frames` frames, reconnecting whenever one ends the
/// connection; the last connection ends with a clean close after a
/// heartbeat that proves every earlier reply arrived.
async fn hostile(addr: SocketAddr, index: usize, frames: usize) -> Report {
    let vsn = Vsn::alternating(index);
    let mut rng = Rng(0x5eed_0000 + index as u64);
    let mut report = Report::default();
    let mut c = Conn::open(addr, vsn).await;
    report.connections += 1;
    while report.frames < frames {
        // Up to 16 frames per write; a frame that ends the connection ends
        // the write too.
        let mut bytes = Vec::new();
        let mut end = None;
        let mut kinds = Vec::new();
        while report.frames < frames && kinds.len() < 16 && end.is_none() {
            let b = next_batch(&mut rng, &mut c, vsn, frames - report.frames);
            report.frames += b.frames;
            *report.by_kind.entry(b.kind).or_default() += b.frames;
            bytes.extend(b.bytes);
            kinds.push(b.kind);
            end = b.ending.map(|e| (b.kind, e));
        }
        if c.wr.write_all(&bytes).await.is_err() && end.is_none() {
            // Written into a connection the server had ended: why?
            let why = c.wait_end().await;
            report
                .violations
                .push(format!("connection ended during {kinds:?}: {why:?}"));
        }
        if c.ended() && end.is_none() {
            let why = c.wait_end().await;
            if !matches!(&why, Some((Some(1008), r)) if r == "rate limited") {
                report
                    .violations
                    .push(format!("connection ended after {kinds:?}: {why:?}"));
            }
            end = Some(("ended", Ending::Any));
        }
        let Some((kind, how)) = end else { continue };
        if matches!(how, Ending::Any) {
            // The server may wait for the rest of a frame: say no more.
            let _ = c.wr.shutdown().await;
        }
        let got = c.wait_end().await;
        report.collect(&c);
        let label = match &got {
            None => {
                report
                    .violations
                    .push(format!("{kind}: the server did not end the connection"));
                "no end".to_owned()
            }
            Some((None, _)) => "no close frame".to_owned(),
            Some((Some(code), reason)) => format!("{code} {reason}"),
        };
        if let (Ending::Code(want), Some((code, _))) = (how, &got) {
            if *code != Some(want) {
                report
                    .violations
                    .push(format!("{kind}: closed {got:?}, expected {want}"));
            }
        }
        *report.closes.entry(label).or_default() += 1;
        c = Conn::open(addr, vsn).await;
        report.connections += 1;
    }
    // Every reply before a heartbeat has arrived once it is answered.
    let r = c.fresh(vsn);
    c.expect(&r, Expect::Ok);
    let marker = text(&msg(vsn, "null", &r, "phoenix", "heartbeat", "{}"));
    c.wr.write_all(&marker).await.expect("the last heartbeat");
    let deadline = Instant::now() + TIMEOUT;
    while !c.seen.lock().unwrap().answered.contains(&r) {
        assert!(
            Instant::now() < deadline,
            "hostile {index}: no reply to the last heartbeat"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    {
        let s = c.seen.lock().unwrap();
        for (r, e) in &s.expected {
            if !s.answered.contains(r) && !matches!(e, Expect::Maybe(_)) {
                report
                    .violations
                    .push(format!("hostile {index}: no reply to {r} ({e:?})"));
            }
        }
    }
    c.wr.write_all(&frame(CLOSE, &1000u16.to_be_bytes()))
        .await
        .expect("close");
    match c.wait_end().await {
        Some((Some(1000), _)) => {}
        other => report
            .violations
            .push(format!("hostile {index}: clean close answered {other:?}")),
    }
    report.collect(&c);
    report
}

// ---------------------------------------------------------------------------
// The well-behaved sockets
// ---------------------------------------------------------------------------

/// The topics well-behaved socket `i` joins.
fn topics_of(i: usize) -> Vec<(&'static str, Value)> {
    match i % 3 {
        0 => vec![(STATS, json!({}))],
        1 => vec![(STREAM, json!({})), ("rooms:a", json!({}))],
        _ => vec![
            (VSM, json!({"subsystem": "s1"})),
            (STATS, json!({})),
            ("rooms:b", json!({})),
        ],
    }
}

fn expected_counts() -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for i in 0..WELL_BEHAVED {
        for (t, _) in topics_of(i) {
            *m.entry(t.to_owned()).or_default() += 1;
        }
    }
    m
}

/// LocalStats as a well-behaved socket may see it mid-storm: its topics
/// exact, anything else a `hostile:*` topic, the totals consistent.
fn check_counts(s: &Value, node: &str, exact: bool) {
    assert_local_stats(s, node);
    let want = expected_counts();
    let mut got = topic_counts(s);
    let hostile: Vec<String> = got
        .keys()
        .filter(|t| t.starts_with("hostile:"))
        .cloned()
        .collect();
    if exact {
        assert!(hostile.is_empty(), "hostile topics left behind: {s}");
    }
    for t in hostile {
        got.remove(&t);
    }
    assert_eq!(got, want, "well-behaved memberships miscounted: {s}");
    assert_eq!(s["stream_count"], want[STREAM], "{s}");
    let sockets = s["socket_count"].as_u64().unwrap();
    assert!(sockets >= WELL_BEHAVED as u64, "{s}");
    if exact {
        assert_eq!(sockets, WELL_BEHAVED as u64, "{s}");
        assert_eq!(s["connection_count"], want.values().sum::<u64>(), "{s}");
    }
}

/// Pushes a well-behaved socket may get besides its replies.
fn allowed_push(m: &Msg) -> bool {
    !m.is_reply()
        && matches!(
            m.event.as_str(),
            "stats_update" | "initial_stats" | "local_stats"
        )
}

async fn well_behaved(
    addr: SocketAddr,
    node: String,
    i: usize,
    joined: Arc<tokio::sync::Barrier>,
    stop: Arc<AtomicBool>,
) -> (usize, Client) {
    let mut c = client(addr, Vsn::alternating(i)).await;
    let topics = topics_of(i);
    for (t, params) in &topics {
        c.join_ok(t, params.clone()).await;
    }
    // Counts are exact once every well-behaved socket has joined.
    joined.wait().await;
    let mut rounds = 0;
    loop {
        let last = stop.load(Ordering::SeqCst);
        c.heartbeat().await;
        let (topic, _) = &topics[rounds % topics.len()];
        let reply = c.request(topic, "get_connection_stats", json!({})).await;
        check_counts(reply.assert_ok(), &node, false);
        if topics.iter().any(|(t, _)| *t == STATS) {
            let reply = c.request(STATS, "get_local_stats", json!({})).await;
            check_counts(reply.assert_ok(), &node, false);
        }
        for m in c.take_stash() {
            assert!(allowed_push(&m), "well-behaved socket {i} got {}", m.raw);
        }
        rounds += 1;
        if last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The storm is over: once every hostile socket is gone, exact.
    wait_stats(addr, "only the well-behaved sockets left", |s| {
        s["socket_count"] == WELL_BEHAVED as u64
            && s["connection_count"] == expected_counts().values().sum::<u64>()
    })
    .await;
    let reply = c
        .request(topics[0].0, "get_connection_stats", json!({}))
        .await;
    check_counts(reply.assert_ok(), &node, true);
    c.heartbeat().await;
    for m in c.take_stash() {
        assert!(allowed_push(&m), "well-behaved socket {i} got {}", m.raw);
    }
    // Still open: the last checks of the node count it.
    (rounds, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_hostile_frames_leave_the_node_and_its_counts_intact() {
    let started = Instant::now();
    let max_frame = MAX_FRAME.to_string();
    let mut args = vec![
        "--allow-topic",
        "rooms:*",
        "--allow-topic",
        "hostile:*",
        "--max-frame-bytes",
        &max_frame,
    ];
    args.extend(NO_LIMITS);
    let server = Server::start(&args);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(tokio::sync::Barrier::new(WELL_BEHAVED));
    let mut good = Vec::new();
    for i in 0..WELL_BEHAVED {
        let (node, joined, stop) = (server.node.clone(), joined.clone(), stop.clone());
        good.push(tokio::spawn(well_behaved(addr, node, i, joined, stop)));
    }
    // The well-behaved memberships are in before the storm.
    wait_stats(addr, "the well-behaved sockets joined", |s| {
        s["connection_count"] == expected_counts().values().sum::<u64>()
    })
    .await;
    let health = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut probes = 0;
            while !stop.load(Ordering::SeqCst) {
                let res = get(addr, "/healthz").await;
                assert_eq!((res.status, res.text().trim()), (200, "ok"), "/healthz");
                probes += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            probes
        })
    };
    let storm = Instant::now();
    let per_socket = FRAMES / HOSTILE_SOCKETS;
    let tasks: Vec<_> = (0..HOSTILE_SOCKETS)
        .map(|i| tokio::spawn(hostile(addr, i, per_socket)))
        .collect();
    let mut total = Report::default();
    for t in tasks {
        let report = tokio::time::timeout_at((storm + STORM_LIMIT).into(), t)
            .await
            .expect("the storm did not end in time")
            .expect("a hostile socket panicked");
        total.merge(report);
    }
    let storm_time = storm.elapsed();
    stop.store(true, Ordering::SeqCst);
    let probes = health.await.expect("/healthz probe");
    let mut rounds = 0;
    let mut clients = Vec::new();
    for g in good {
        let (n, c) = g.await.expect("a well-behaved socket failed");
        rounds += n;
        clients.push(c);
    }
    eprintln!(
        "hostile: {} frames over {} connections of {HOSTILE_SOCKETS} sockets in {:.1} s \
         ({probes} /healthz probes, {rounds} well-behaved rounds)\n  frames by kind: {:?}\n  \
         closes: {:?}\n  replies: {:?}",
        total.frames,
        total.connections,
        storm_time.as_secs_f64(),
        total.by_kind,
        total.closes,
        total.replies,
    );
    assert!(
        total.violations.is_empty(),
        "{} violations, the first: {:#?}",
        total.violations.len(),
        &total.violations[..total.violations.len().min(10)]
    );
    assert_eq!(total.frames, FRAMES);

    // Exact at quiet: LocalStats and the gauges are the well-behaved ones.
    let want = expected_counts();
    let memberships: u64 = want.values().sum();
    let s = stats(addr).await;
    check_counts(&s, &server.node, true);
    let m = metrics(addr).await;
    assert_eq!(
        m.get("headcount_sockets", &[]),
        Some(WELL_BEHAVED as f64),
        "{}",
        m.text
    );
    assert_eq!(
        m.get("headcount_memberships", &[]),
        Some(memberships as f64),
        "{}",
        m.text
    );
    for t in [STATS, STREAM, VSM] {
        assert_eq!(
            m.get("headcount_topic_memberships", &[("topic", t)]),
            Some(want[t] as f64),
            "{t}: {}",
            m.text
        );
    }
    assert_eq!(
        m.value("headcount_joins_total", &[]) - m.value("headcount_leaves_total", &[]),
        memberships as f64,
        "joins - leaves"
    );
    // Every refused frame was counted (at least those whose outcome is
    // certain; random bytes add an unknown number).
    let rejected = |reason| m.value("headcount_frames_rejected_total", &[("reason", reason)]);
    let kinds = |names: &[&str]| {
        names
            .iter()
            .map(|k| total.by_kind.get(k).copied().unwrap_or(0))
            .sum::<usize>() as f64
    };
    assert!(
        rejected("malformed") >= kinds(&["bad json", "deep nesting"]),
        "{}",
        m.text
    );
    assert!(
        rejected("invalid_utf8")
            >= total
                .closes
                .iter()
                .filter(|(k, _)| k.starts_with("1007"))
                .map(|(_, n)| *n)
                .sum::<usize>() as f64
    );
    assert!(
        rejected("too_large")
            >= total
                .closes
                .iter()
                .filter(|(k, _)| k.starts_with("1009"))
                .map(|(_, n)| *n)
                .sum::<usize>() as f64
    );
    assert!(
        m.value(
            "headcount_join_rejections_total",
            &[("reason", "unmatched_topic")]
        ) >= kinds(&["join unmatched"]),
        "{}",
        m.text
    );
    assert_eq!(get(addr, "/healthz").await.status, 200);
    for c in clients {
        c.close().await;
    }
    wait_stats(addr, "every socket closed", |s| {
        s["socket_count"] == 0 && s["connection_count"] == 0
    })
    .await;
    eprintln!(
        "hostile: whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
