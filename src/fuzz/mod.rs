//! Fuzzing on the stable toolchain (issue 11): the code that reads bytes a
//! stranger chose — the frame codec, the V1 and V2 serializers, the V2
//! binary decoder, the event validator and the token parser — fed
//! arbitrary and structure-aware inputs, each checked against properties
//! (what must hold of every answer), not only "it did not panic".
//!
//! Why here and why proptest: the modules under test are private, so the
//! targets are unit tests of the crate (`cargo test` runs them, no nightly
//! `cargo fuzz`, no extra crate). proptest is already a dev-dependency and
//! gives what the targets need: composable strategies for structure-aware
//! inputs (valid frames and JSON, then mutated) and shrinking, so a failure
//! is reported as a small input. It is not coverage-guided; the seed
//! corpus and the mutators (bit flips, truncation, corrupted lengths,
//! dictionary tokens, splices of two seeds) stand in for that.
//!
//! Each target:
//! 1. runs its property on every file of `tests/fuzz-corpus/<target>/`
//!    (the seeds, and regressions of every bug found);
//! 2. then on generated inputs: by default a fixed number per target, from
//!    a fixed RNG seed, so `cargo test` stays short and reproducible; with
//!    `HEADCOUNT_FUZZ_SECS=N` for N seconds per target from a fresh seed,
//!    reporting the inputs tried on stderr (`--nocapture`).
//!    `HEADCOUNT_FUZZ_SEED=S` picks the seed either way.
//!
//! A failing input is shrunk, printed, and written to
//! `target/fuzz-failures/<target>/`, ready to be copied into the corpus.

mod binary;
mod codec;
mod events;
mod mutate;
mod serializers;
mod token;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// An input of one target: built from a corpus file, and written back as
/// one when it fails.
pub trait Input: Clone + Debug {
    fn from_seed(bytes: &[u8]) -> Self;
    fn to_seed(&self) -> Vec<u8>;
}

/// What a property says about one input: `Err` names what does not hold.
pub type Verdict = Result<(), String>;

/// Fails the property with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}
pub(crate) use ensure;

/// Outcomes seen per target, so a run shows its properties were not
/// vacuous (that inputs got past the first check).
static NOTES: std::sync::Mutex<BTreeMap<(&str, &str), u64>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Counts one outcome of `target`.
pub fn note(target: &'static str, outcome: &'static str) {
    let mut notes = NOTES.lock().unwrap_or_else(|e| e.into_inner());
    *notes.entry((target, outcome)).or_default() += 1;
}

fn notes(target: &str) -> String {
    let notes = NOTES.lock().unwrap_or_else(|e| e.into_inner());
    notes
        .iter()
        .filter(|((t, _), _)| *t == target)
        .map(|((_, what), n)| format!("{what} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The corpus directory of a target.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target)
}

/// Every file of a target's corpus, by name.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, bytes)
        })
        .filter(|(name, _)| !name.starts_with('.') && !name.ends_with(".md"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz corpus {} is empty", dir.display());
    files
}

/// How long a target runs: a number of inputs (the default) or a time.
#[derive(Clone, Copy, Debug)]
enum Budget {
    Cases(u64),
    Time(Duration),
}

fn budget(default_cases: u64) -> Budget {
    match std::env::var("HEADCOUNT_FUZZ_SECS") {
        Ok(s) if !s.trim().is_empty() => {
            let secs: f64 = s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("HEADCOUNT_FUZZ_SECS={s:?} is not a number"));
            Budget::Time(Duration::from_secs_f64(secs))
        }
        _ => Budget::Cases(default_cases),
    }
}

fn seed(budget: Budget) -> u64 {
    match std::env::var("HEADCOUNT_FUZZ_SEED") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("HEADCOUNT_FUZZ_SEED={s:?} is not a u64")),
        // Reproducible in CI; a long run explores from somewhere new.
        _ => match budget {
            Budget::Cases(_) => 0x1105_c0de,
            Budget::Time(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
        },
    }
}

/// 32 RNG seed bytes for batch `batch` of a run seeded `seed` (splitmix64).
fn batch_rng(seed: u64, batch: u64) -> TestRng {
    let mut state = seed ^ batch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Writes a failing input where it can be picked up for the corpus.
fn keep_failure(target: &str, input: &[u8]) -> PathBuf {
    // FNV-1a: a stable name for the same input.
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/fuzz-failures")
        .join(target);
    let path = dir.join(format!("{hash:016x}"));
    let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
    path
}

/// Runs one target: its property on every corpus file, then on inputs of
/// `strategy` for the budget. Panics with the (shrunk) input on the first
/// failure.
pub fn run<I, S>(target: &str, default_cases: u64, strategy: S, property: impl Fn(&I) -> Verdict)
where
    I: Input,
    S: Strategy<Value = I>,
{
    let started = Instant::now();
    let seeds = corpus(target);
    for (name, bytes) in &seeds {
        let input = I::from_seed(bytes);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| property(&input)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(why)) => panic!("fuzz {target}: corpus file {name}: {why}\ninput: {input:?}"),
            Err(_) => panic!("fuzz {target}: corpus file {name} panicked\ninput: {input:?}"),
        }
    }
    let budget = budget(default_cases);
    let seed = seed(budget);
    const BATCH: u64 = 256;
    let mut tried = 0u64;
    let mut batch = 0u64;
    let fuzz_start = Instant::now();
    loop {
        let cases = match budget {
            Budget::Cases(n) if tried >= n => break,
            Budget::Cases(n) => (n - tried).min(BATCH),
            Budget::Time(d) if fuzz_start.elapsed() >= d => break,
            Budget::Time(_) => BATCH,
        };
        let config = Config {
            cases: cases as u32,
            failure_persistence: None,
            max_shrink_iters: 20_000,
            max_shrink_time: 120_000,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, batch_rng(seed, batch));
        let result = runner.run(&strategy, |input| {
            property(&input).map_err(TestCaseError::fail)
        });
        if let Err(e) = result {
            let kept = match &e {
                proptest::test_runner::TestError::Fail(_, input) => {
                    let path = keep_failure(target, &input.to_seed());
                    format!("\nminimal input written to {}", path.display())
                }
                _ => String::new(),
            };
            panic!(
                "fuzz {target}: HEADCOUNT_FUZZ_SEED={seed}, batch {batch}, after {tried} inputs: {e}{kept}"
            );
        }
        tried += cases;
        batch += 1;
    }
    eprintln!(
        "fuzz {target}: {tried} generated inputs + {} corpus files in {:.1} s \
         (HEADCOUNT_FUZZ_SEED={seed}), 0 failures; outcomes: {}",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        notes(target)
    );
}
