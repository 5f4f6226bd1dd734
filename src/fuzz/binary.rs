//! Target `binary`: the V2 binary push decoder (`protocol::decode_binary`),
//! the one place a client's length bytes are trusted to index into its
//! frame. Layout (SPEC §2): kind (0 push), four u8 sizes (join_ref, ref,
//! topic, event), those fields, then the payload. Properties, for any bytes:
//!
//! - it never reads past the end: the bytes are decoded from the front of
//!   a larger buffer whose tail holds other, valid-looking fields, and no
//!   decoded field may come from that tail;
//! - the answer is the layout's, field by field, checked against an
//!   independent walk of the sizes: a push decodes only with kind 0 and
//!   ref, topic and event within the frame and UTF-8; a field whose size
//!   points past the end, or that is not UTF-8, is absent from the answer;
//! - a recoverable `Malformed` (topic and ref present) carries exactly the
//!   bytes of those fields, and its error reply parses as JSON;
//! - a V1 socket's binary frame is always unrecoverable (dropped).

use super::mutate::{mutate_generated, mutated, seeds};
use super::{ensure, Input, Verdict};
use crate::protocol::{self, JsonRef, Payload, Vsn};
use proptest::collection::vec;
use proptest::prelude::*;

const TARGET: &str = "binary";

const DICT: &[&[u8]] = &[
    b"\x00",
    b"\x01",
    b"\x02",
    b"\xff",
    b"phoenix",
    b"heartbeat",
    b"phx_join",
    b"rooms:a",
    b"\xc3",
    b"\xed\xa0\x80",
];

/// What follows the frame in memory: fields that would decode if read.
const TAIL: &[u8] = b"\x00\x01\x01\x05\x05TRtopicevent";

#[derive(Clone, Debug)]
pub struct BinaryInput(Vec<u8>);

impl Input for BinaryInput {
    fn from_seed(bytes: &[u8]) -> Self {
        BinaryInput(bytes.to_vec())
    }

    fn to_seed(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// The four fields as the layout defines them: `None` when the field does
/// not lie within the frame or is not UTF-8; a field after one that runs
/// past the end is absent too.
fn walk(data: &[u8]) -> Option<[Option<String>; 4]> {
    if data.len() < 5 || data[0] != 0 {
        return None;
    }
    let mut fields: [Option<String>; 4] = Default::default();
    let mut at = 5usize;
    for (i, field) in fields.iter_mut().enumerate() {
        let size = usize::from(data[1 + i]);
        if at + size > data.len() {
            break;
        }
        *field = String::from_utf8(data[at..at + size].to_vec()).ok();
        at += size;
    }
    Some(fields)
}

fn property(input: &BinaryInput) -> Verdict {
    let data = &input.0;
    let mut memory = data.clone();
    memory.extend_from_slice(TAIL);
    let frame = &memory[..data.len()];

    ensure!(
        protocol::decode_binary(Vsn::V1, frame)
            .is_err_and(|m| m.topic.is_none() && m.reference.is_none() && m.join_ref.is_none()),
        "a V1 binary frame must be dropped"
    );

    let got = protocol::decode_binary(Vsn::V2, frame);
    super::note(
        TARGET,
        match &got {
            Ok(_) => "pushes decoded",
            Err(m) if m.topic.is_some() && m.reference.is_some() => "malformed, replied to",
            Err(_) => "malformed, dropped",
        },
    );
    let walked = walk(data);
    let as_ref = |s: &Option<String>| s.as_deref().map(JsonRef::from_str_value);
    match (&got, &walked) {
        (Ok(m), Some([join_ref, reference, topic, event])) => {
            ensure!(
                reference.is_some() && topic.is_some() && event.is_some(),
                "decoded {m:?} though the layout gives {walked:?}"
            );
            ensure!(
                Some(&m.reference) == as_ref(reference).as_ref()
                    && Some(&m.topic) == topic.as_ref()
                    && Some(&m.event) == event.as_ref()
                    && m.join_ref == as_ref(join_ref),
                "decoded {m:?}, the layout gives {walked:?}"
            );
            ensure!(
                matches!(m.payload, Payload::Binary),
                "a binary push has a binary payload"
            );
            let jr = m.join_ref.as_ref();
            let reply = protocol::encode_reply(Vsn::V2, jr, &m.reference, &m.topic, false, "{}");
            ensure!(
                serde_json::from_slice::<serde::de::IgnoredAny>(&reply).is_ok(),
                "reply is not JSON: {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        (Ok(m), None) => return Err(format!("decoded {m:?} from a frame that is no push")),
        (Err(m), walked) => {
            let [join_ref, reference, topic, event] = walked.clone().unwrap_or_default();
            ensure!(
                walked.is_none() || reference.is_none() || topic.is_none() || event.is_none(),
                "malformed {m:?} though the layout gives a push {walked:?}"
            );
            ensure!(
                m.reference == as_ref(&reference)
                    && m.topic == topic
                    && m.join_ref == as_ref(&join_ref),
                "malformed with {m:?}, the layout gives {:?}",
                (join_ref, reference, topic)
            );
            if let (Some(t), Some(r)) = (&m.topic, &m.reference) {
                let body = protocol::reason("malformed message");
                let reply =
                    protocol::encode_reply(Vsn::V2, m.join_ref.as_ref(), r, t, false, &body);
                ensure!(
                    serde_json::from_slice::<serde::de::IgnoredAny>(&reply).is_ok(),
                    "error reply is not JSON: {:?}",
                    String::from_utf8_lossy(&reply)
                );
            }
        }
    }
    Ok(())
}

/// A push frame: fields of any bytes, sizes that are theirs or not.
fn push_frame() -> impl Strategy<Value = Vec<u8>> {
    let field = || {
        prop_oneof![
            3 => "[a-z:_0-9]{0,10}".prop_map(String::into_bytes),
            1 => vec(any::<char>(), 0..4).prop_map(|c| c.into_iter().collect::<String>().into_bytes()),
            1 => vec(any::<u8>(), 0..6),
            1 => Just(vec![b'x'; 255]),
        ]
    };
    let size = prop_oneof![6 => Just(None), 1 => any::<u8>().prop_map(Some)];
    (
        prop_oneof![8 => Just(0u8), 1 => 1u8..3, 1 => any::<u8>()],
        [field(), field(), field(), field()],
        [size.clone(), size.clone(), size.clone(), size],
        vec(any::<u8>(), 0..16),
        prop_oneof![4 => Just(None), 1 => any::<prop::sample::Index>().prop_map(Some)],
    )
        .prop_map(|(kind, fields, sizes, payload, cut)| {
            let mut out = vec![kind];
            for (f, s) in fields.iter().zip(sizes) {
                out.push(s.unwrap_or(f.len().min(255) as u8));
            }
            for f in &fields {
                out.extend_from_slice(&f[..f.len().min(255)]);
            }
            out.extend_from_slice(&payload);
            if let Some(cut) = cut {
                out.truncate(cut.index(out.len() + 1));
            }
            out
        })
}

fn strategy() -> impl Strategy<Value = BinaryInput> {
    let seeds = seeds(TARGET);
    prop_oneof![
        3 => mutated(seeds, DICT, 6).prop_map(BinaryInput).boxed(),
        4 => push_frame().prop_map(BinaryInput).boxed(),
        2 => mutate_generated(push_frame(), DICT, 3).prop_map(BinaryInput).boxed(),
        1 => vec(any::<u8>(), 0..40).prop_map(BinaryInput).boxed(),
    ]
}

#[test]
fn fuzz_binary() {
    super::run(TARGET, 15_000, strategy(), property);
}
