//! Byte-level mutators over seed inputs: the structure-aware half of the
//! fuzzing. A valid frame, JSON text or token with a bit flipped, a length
//! byte set to 126/127/0xFF, a tail cut off, a chunk repeated, a dictionary
//! token (`\ud800`, `1e400`, `"phx_join"`, `.`) inserted or two seeds
//! spliced lands much nearer the decoders' edge cases than random bytes do.
//! Every mutation is a plain value, so proptest can shrink a failing list
//! of them to the one that matters.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use std::sync::Arc;

/// Byte runs that sit on boundaries of lengths, signs and encodings.
const INTERESTING: &[&[u8]] = &[
    &[0x00],
    &[0xFF],
    &[0x7F],
    &[0x80],
    &[0x7D],
    &[0x7E],
    &[0xFE],
    &[0xFF, 0xFF],
    &[0x00, 0x7E],
    &[0x01, 0x00],
    &[0x80, 0x00],
    &[0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
    &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
    &[0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00],
    &[0xC0, 0x80],
    &[0xED, 0xA0, 0x80],
    &[0xF4, 0x90, 0x80, 0x80],
];

#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip one bit.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Overwrite with an interesting run.
    Interesting(Index, Index),
    /// Cut everything from here on.
    Truncate(Index),
    /// Remove up to n bytes.
    Remove(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Insert a dictionary token of the target.
    Dict(Index, Index),
    /// Repeat a chunk (len, extra copies).
    Repeat(Index, u8, u8),
    /// Replace the tail from here with the tail of another seed.
    Splice(Index, Index, Index),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, w)| Mutation::Interesting(i, w)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1u8..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, w)| Mutation::Dict(i, w)),
        1 => (any::<Index>(), 1u8..64, 1u8..8).prop_map(|(i, n, k)| Mutation::Repeat(i, n, k)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(i, s, f)| Mutation::Splice(i, s, f)),
    ]
}

/// A position in `0..len` (0 when empty).
fn at(i: &Index, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        i.index(len)
    }
}

/// A position in `0..=len`, for insertions.
fn gap(i: &Index, len: usize) -> usize {
    i.index(len + 1)
}

fn overwrite(buf: &mut Vec<u8>, pos: usize, run: &[u8]) {
    for (k, b) in run.iter().enumerate() {
        match buf.get_mut(pos + k) {
            Some(slot) => *slot = *b,
            None => buf.push(*b),
        }
    }
}

impl Mutation {
    pub fn apply(&self, buf: &mut Vec<u8>, seeds: &[Vec<u8>], dict: &[&[u8]]) {
        let len = buf.len();
        match self {
            Mutation::Flip(i, bit) => {
                if len > 0 {
                    buf[at(i, len)] ^= 1 << bit;
                }
            }
            Mutation::Set(i, b) => {
                if len > 0 {
                    buf[at(i, len)] = *b;
                }
            }
            Mutation::Interesting(i, w) => {
                overwrite(buf, at(i, len), INTERESTING[w.index(INTERESTING.len())])
            }
            Mutation::Truncate(i) => buf.truncate(at(i, len)),
            Mutation::Remove(i, n) => {
                let from = at(i, len);
                let to = (from + usize::from(*n)).min(len);
                buf.drain(from..to);
            }
            Mutation::Insert(i, bytes) => {
                let p = gap(i, len);
                buf.splice(p..p, bytes.iter().copied());
            }
            Mutation::Dict(i, w) => {
                if !dict.is_empty() {
                    let p = gap(i, len);
                    buf.splice(p..p, dict[w.index(dict.len())].iter().copied());
                }
            }
            Mutation::Repeat(i, n, k) => {
                if len > 0 {
                    let from = at(i, len);
                    let to = (from + usize::from(*n)).min(len);
                    let chunk = buf[from..to].to_vec();
                    for _ in 0..*k {
                        buf.splice(to..to, chunk.iter().copied());
                    }
                }
            }
            Mutation::Splice(i, s, f) => {
                if !seeds.is_empty() {
                    let other = s.get(seeds);
                    buf.truncate(gap(i, len));
                    buf.extend_from_slice(&other[at(f, other.len()).min(other.len())..]);
                }
            }
        }
    }
}

/// A seed picked from `seeds`, then up to `max_ops` mutations applied.
pub fn mutated(
    seeds: Arc<Vec<Vec<u8>>>,
    dict: &'static [&'static [u8]],
    max_ops: usize,
) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty());
    (any::<Index>(), vec(mutation(), 0..=max_ops)).prop_map(move |(pick, ops)| {
        let mut buf = pick.get(&seeds).clone();
        for op in &ops {
            op.apply(&mut buf, &seeds, dict);
        }
        buf
    })
}

/// Up to `max_ops` mutations of the bytes `base` generates.
pub fn mutate_generated(
    base: impl Strategy<Value = Vec<u8>>,
    dict: &'static [&'static [u8]],
    max_ops: usize,
) -> impl Strategy<Value = Vec<u8>> {
    (base, vec(mutation(), 0..=max_ops)).prop_map(move |(mut buf, ops)| {
        for op in &ops {
            op.apply(&mut buf, &[], dict);
        }
        buf
    })
}

/// The contents of a target's corpus files, as mutation seeds.
pub fn seeds(target: &str) -> Arc<Vec<Vec<u8>>> {
    Arc::new(super::corpus(target).into_iter().map(|(_, b)| b).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;

    #[test]
    fn mutations_stay_in_bounds_on_empty_and_tiny_buffers() {
        let seeds = vec![vec![1u8, 2, 3], Vec::new()];
        let dict: &[&[u8]] = &[b"xy"];
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        for _ in 0..2000 {
            let m = mutation()
                .new_tree(&mut runner)
                .expect("a mutation")
                .current();
            for start in [vec![], vec![9u8], vec![1, 2]] {
                let mut buf = start.clone();
                m.apply(&mut buf, &seeds, dict);
            }
        }
    }
}
