//! The fuzz targets on the stable toolchain (issue #9): every target of `fvd_scenarios::fuzz`
//! runs its seed corpus, then a fixed number of deterministic mutations of it (a ChaCha stream
//! per target): bit flips, byte overwrites, truncation, splicing with another corpus entry,
//! interesting integers (0, 1, `u32::MAX`, `u64::MAX`, `i64::MAX`, powers of two) at 4- and
//! 8-byte aligned offsets, and random bytes appended (for the `image` target, random edits).
//!
//! `FUZZ_CASES=N` runs N mutated cases per target instead of the defaults; `FUZZ_SEED=S` draws
//! other mutations. A failing case is written to the temporary directory and named, to replay
//! with `cargo +nightly fuzz run TARGET FILE` or by hand.
//!
//! `cargo xtask fuzz` writes the seed corpus for cargo-fuzz with the ignored test
//! `write_corpus` (`FUZZ_CORPUS_DIR` names the directory that receives `<target>/seed-<i>`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use fvd_scenarios::fuzz::{INTERESTING, TARGETS, seed_corpus, target};
use fvd_sim::{Seed, SimRng};

/// Mutated cases per target unless `FUZZ_CASES` says otherwise: the whole file runs in a few
/// seconds in the dev profile.
fn default_cases(name: &str) -> u64 {
    match name {
        "image" => 5000,
        "failure_file" => 5000,
        _ => 20_000,
    }
}

fn cases(name: &str) -> u64 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| default_cases(name))
}

fn seed() -> Seed {
    std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(Seed(0xf5d_0009))
}

/// One mutation of `input` (`corpus` for splicing).
fn mutate(rng: &mut SimRng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = input.len() as u64;
    match rng.below(7) {
        0 if len > 0 => {
            let at = rng.below(len) as usize;
            input[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len) as usize;
            input[at] = rng.next_u64() as u8;
        }
        2 if len > 0 => input.truncate(rng.below(len) as usize),
        3 => {
            let other = rng.pick(corpus);
            let cut = rng.below(len + 1) as usize;
            let from = rng.below(other.len() as u64 + 1) as usize;
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        4 | 5 if len >= 4 => {
            let wide = rng.ratio(1, 2) && len >= 8;
            let width = if wide { 8 } else { 4 };
            let at = rng.below(len - width as u64 + 1) as usize / width * width;
            let value = if rng.ratio(1, 3) { 1u64 << rng.below(64) } else { *rng.pick(&INTERESTING) };
            input[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        _ => {
            let n = rng.range_inclusive(1, 48) as usize;
            let mut tail = vec![0u8; n];
            rng.fill_bytes(&mut tail);
            input.extend_from_slice(&tail);
        }
    }
}

/// Runs one input; on a panic, saves it and fails naming the file.
fn run_case(name: &str, harness: fn(&[u8]), input: &[u8], label: &str) {
    if catch_unwind(AssertUnwindSafe(|| harness(input))).is_err() {
        let path = std::env::temp_dir().join(format!("fvdsim-fuzz-{name}-{label}.bin"));
        let saved = std::fs::write(&path, input).map_or_else(|e| format!("could not save: {e}"), |()| "saved".into());
        panic!(
            "fuzz target {name} panicked on {label} ({} bytes, {saved} at {}); replay with `cargo +nightly fuzz run \
             {name} {}` from the repository root",
            input.len(),
            path.display(),
            path.display()
        );
    }
}

fn run_target(name: &str) {
    let harness = target(name).expect("a known target");
    let corpus = seed_corpus(name);
    assert!(!corpus.is_empty(), "{name} has a seed corpus");
    let started = Instant::now();
    for (i, input) in corpus.iter().enumerate() {
        run_case(name, harness, input, &format!("seed-{i}"));
    }
    let mut rng = SimRng::stream(seed(), &format!("fuzz/{name}"));
    let cases = cases(name);
    for case in 0..cases {
        let mut input = rng.pick(&corpus).clone();
        for _ in 0..rng.range_inclusive(1, 4) {
            mutate(&mut rng, &mut input, &corpus);
        }
        run_case(name, harness, &input, &format!("case-{case}"));
    }
    eprintln!(
        "fuzz_cases: {name}: {} seed inputs + {cases} mutated cases in {:.2} s",
        corpus.len(),
        started.elapsed().as_secs_f64()
    );
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_target(stringify!($name));
            }
        )*

        #[test]
        fn every_target_has_a_test_and_a_cargo_fuzz_file() {
            let tested = [$(stringify!($name)),*];
            let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, tested);
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
            for name in names {
                let file = dir.join(format!("{name}.rs"));
                let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                assert!(text.contains(&format!("fvd_scenarios::fuzz::{name}(")), "{} calls its harness", file.display());
            }
        }
    };
}

targets!(header_and_extension, layout, journal, image, trace_cloudphysics, trace_msr, trace_plain, failure_file);

/// Writes every target's seed corpus into `$FUZZ_CORPUS_DIR/<target>/seed-<i>` (what
/// `cargo xtask fuzz` starts cargo-fuzz from).
#[test]
#[ignore = "run by cargo xtask fuzz"]
fn write_corpus() {
    let dir = std::path::PathBuf::from(std::env::var_os("FUZZ_CORPUS_DIR").expect("FUZZ_CORPUS_DIR names a directory"));
    for (name, _) in TARGETS {
        let target_dir = dir.join(name);
        std::fs::create_dir_all(&target_dir).expect("create the corpus directory");
        for (i, input) in seed_corpus(name).iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{i}")), input).expect("write a corpus file");
        }
    }
}

// Findings of the fuzzers, pinned.

/// trace_msr, found by the stable run: MSR timestamps are absolute, so a trace spanning more than
/// `MAX_TIME_NS` passed every per-line check and gave request times beyond the limit (up to
/// 1.8e19 ns, which overflowed when added to the replay's start time).
#[test]
fn msr_trace_spanning_beyond_the_latest_time_is_refused_with_its_line() {
    let text = "1,hm,1,Read,0,512,1\n128165090339300000,hm,1,Read,3584,1000,1\n";
    let error = fvd_scenarios::trace::parse(text, fvd_scenarios::trace::TraceFormat::Msr, "m.csv").unwrap_err();
    assert_eq!(error.line, 2, "{error}");
    assert!(error.to_string().contains("beyond the latest time fvdsim replays"), "{error}");
    fvd_scenarios::fuzz::trace_msr(text.as_bytes());
}
