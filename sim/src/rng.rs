//! Seeds and named random streams.
//!
//! One master [`Seed`] drives a run. Each subsystem draws from its own named stream
//! ([`SimRng::stream`]): the same ChaCha8 key (the master seed) with a ChaCha stream number
//! derived from the name, so extra draws in one subsystem never reshuffle another. The wrapper
//! exposes integer-only sampling built directly on `next_u64`, so a replay depends only on the
//! ChaCha8 block function (pinned by `Cargo.lock`), never on `rand`'s distribution code, which may
//! change values between minor versions.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The master seed of a run.
///
/// Parsed from decimal (`12345`), hex (`0x3039`), or a 40-hex-digit git commit hash (folded to
/// 64 bits, so CI can use the commit as the seed). Displayed as `0x` followed by 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Seed(pub u64);

/// A seed string that is neither decimal, `0x` hex, nor a 40-hex git hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid seed {input:?}: expected a decimal number, 0x-prefixed hex, or a 40-hex-digit git commit")]
pub struct SeedParseError {
    /// The text that failed to parse.
    pub input: String,
}

impl std::str::FromStr for Seed {
    type Err = SeedParseError;

    fn from_str(text: &str) -> Result<Seed, SeedParseError> {
        let trimmed = text.trim();
        let error = || SeedParseError { input: text.to_string() };
        if let Some(hex) = trimmed.strip_prefix("0x").or_else(|| trimmed.strip_prefix("0X")) {
            return u64::from_str_radix(hex, 16).map(Seed).map_err(|_| error());
        }
        if trimmed.len() == 40 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
            // A git commit: fold the 160 bits into 64 with XOR of its 16-hex-digit pieces.
            let mut folded = 0u64;
            for piece in trimmed.as_bytes().chunks(16) {
                let piece = std::str::from_utf8(piece).map_err(|_| error())?;
                folded ^= u64::from_str_radix(piece, 16).map_err(|_| error())?;
            }
            return Ok(Seed(folded));
        }
        trimmed.parse::<u64>().map(Seed).map_err(|_| error())
    }
}

impl std::fmt::Display for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// FNV-1a over a stream name: the ChaCha stream number of that name.
fn stream_number(name: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The names of every random stream a run draws from, in one place: the stream's name is part of
/// the replay format (renaming one changes every run that draws from it).
pub mod streams {
    /// Task choice among ready tasks and timeline ties (the executor).
    pub const SCHEDULER: &str = "scheduler";
    /// The engine's `Env::random_u64` (prefetch coin flips and pauses).
    pub const ENGINE: &str = "engine";
    /// The workload: random testers' requests, verification samples.
    pub const WORKLOAD: &str = "workload";
    /// The procedural base image's content seed.
    pub const BASE_CONTENT: &str = "base-content";
    /// The crash schedule of a run.
    pub const CRASH_PLAN: &str = "crash-plan";
    /// The configuration a swarm seed draws.
    pub const SWARM: &str = "swarm";
    /// Crash-state enumeration: torn-byte counts and sampled sectors of each derived state.
    pub const CRASH_STATES: &str = "crash-states";
    /// The QEMU judge's sample of unwritten sectors on large disks (`fvdsim run --qemu-judge`).
    pub const QEMU_JUDGE: &str = "qemu-judge";
    /// Crash points chosen by the simulator benchmark.
    pub const BENCH_CRASH_POINTS: &str = "crash-points";
    /// The pages the simulator benchmark's copy floor copies into (no simulation).
    pub const BENCH_COPY_FLOOR: &str = "bench/copy-floor";

    /// A simulated disk's completion timing: `disk/<name>`.
    pub fn disk(name: &str) -> String {
        format!("disk/{name}")
    }

    /// A simulated disk's injected faults: `faults/<name>`.
    pub fn faults(name: &str) -> String {
        format!("faults/{name}")
    }

    /// A simulated disk's crash resolution: `crash/<name>`.
    pub fn crash(name: &str) -> String {
        format!("crash/{name}")
    }

    /// A simulated disk's contention phases: `contention/<name>`.
    pub fn contention(name: &str) -> String {
        format!("contention/{name}")
    }
}

/// A deterministic random stream: ChaCha8 with integer-only sampling helpers.
#[derive(Clone)]
pub struct SimRng {
    inner: ChaCha8Rng,
    draws: u64,
}

impl std::fmt::Debug for SimRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRng").field("draws", &self.draws).finish()
    }
}

impl SimRng {
    /// The stream called `name` under `seed`. Different names give independent streams; the same
    /// `(seed, name)` always gives the same stream.
    pub fn stream(seed: Seed, name: &str) -> SimRng {
        let mut inner = ChaCha8Rng::seed_from_u64(seed.0);
        inner.set_stream(stream_number(name));
        SimRng { inner, draws: 0 }
    }

    /// An independent stream derived from this one's current state and `variant`, without
    /// advancing this one: the same state and variant always give the same fork.
    pub fn fork(&self, variant: u64) -> SimRng {
        let mut inner = self.inner.clone();
        let stream = inner.get_stream();
        inner.set_stream(stream ^ variant.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        SimRng { inner, draws: 0 }
    }

    /// How many 64-bit words this stream has produced (for determinism diagnostics).
    pub fn draws(&self) -> u64 {
        self.draws
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.draws += 1;
        self.inner.next_u64()
    }

    /// A uniform integer in `0..bound`; `bound` must be positive. Unbiased (Lemire's method).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "SimRng::below needs a positive bound");
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            let low = product as u64;
            if low >= bound.wrapping_neg() % bound {
                return (product >> 64) as u64;
            }
        }
    }

    /// A uniform integer in `low..=high`.
    pub fn range_inclusive(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "empty range {low}..={high}");
        match (high - low).checked_add(1) {
            Some(span) => low + self.below(span),
            None => self.next_u64(),
        }
    }

    /// True with probability `numerator / denominator`.
    pub fn ratio(&mut self, numerator: u64, denominator: u64) -> bool {
        assert!(denominator > 0 && numerator <= denominator, "bad ratio {numerator}/{denominator}");
        self.below(denominator) < numerator
    }

    /// True with probability `per_million / 1_000_000`. Draws nothing when the probability is 0,
    /// so a disabled fault leaves its stream untouched.
    pub fn chance_per_million(&mut self, per_million: u32) -> bool {
        if per_million == 0 {
            return false;
        }
        self.ratio(u64::from(per_million.min(1_000_000)), 1_000_000)
    }

    /// A uniformly chosen element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        assert!(!items.is_empty(), "pick from an empty slice");
        &items[self.below(items.len() as u64) as usize]
    }

    /// Fills `buf` with random bytes.
    pub fn fill_bytes(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_in_every_documented_form() {
        assert_eq!("12345".parse::<Seed>().unwrap(), Seed(12345));
        assert_eq!("0x3039".parse::<Seed>().unwrap(), Seed(12345));
        let commit = "0123456789abcdef1111111111111111deadbeef";
        let expected = 0x0123_4567_89ab_cdef ^ 0x1111_1111_1111_1111 ^ 0xdead_beef;
        assert_eq!(commit.parse::<Seed>().unwrap(), Seed(expected));
        assert!("12x".parse::<Seed>().is_err());
        assert!("0xzz".parse::<Seed>().is_err());
        assert_eq!(Seed(255).to_string(), "0x00000000000000ff");
        assert_eq!(Seed(255).to_string().parse::<Seed>().unwrap(), Seed(255));
    }

    #[test]
    fn streams_are_independent_and_reproducible() {
        let seed = Seed(7);
        let mut a = SimRng::stream(seed, "disk");
        let mut b = SimRng::stream(seed, "disk");
        let mut c = SimRng::stream(seed, "workload");
        let a_words: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let b_words: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let c_words: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(a_words, b_words);
        assert_ne!(a_words, c_words);
        // Draws on one stream do not move another.
        let mut d = SimRng::stream(seed, "workload");
        let _ = SimRng::stream(seed, "disk").next_u64();
        assert_eq!(d.next_u64(), c_words[0]);
    }

    #[test]
    fn pinned_chacha8_output_never_changes() {
        // If this fails, a dependency change altered the random streams: every recorded seed
        // would replay differently. Do not update the constant without bumping the report schema.
        let mut rng = SimRng::stream(Seed(0), "scheduler");
        let first = rng.next_u64();
        assert_eq!(first, PINNED_FIRST_WORD, "ChaCha8 stream changed: got {first:#x}");
    }

    const PINNED_FIRST_WORD: u64 = 0x789c_de2a_af27_8905;

    #[test]
    fn the_first_draw_of_adjacent_small_seeds_is_uniform() {
        // Campaigns give run i the seed S + i and often draw one choice from it (a cluster size):
        // the first draw over adjacent small seeds must not favour a value. 10,000 seeds, 5
        // values: each count is 2,000 ± 40 (one standard deviation); 5 deviations is a real bias.
        for name in ["qemu-cluster-size", "swarm", "workload"] {
            let mut counts = [0u32; 5];
            for seed in 1..=10_000u64 {
                counts[SimRng::stream(Seed(seed), name).below(5) as usize] += 1;
            }
            assert!(counts.iter().all(|c| (1_800..=2_200).contains(c)), "{name}: {counts:?}");
        }
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SimRng::stream(Seed(1), "t");
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = rng.below(7);
            assert!(v < 7);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(rng.range_inclusive(5, 5), 5);
        let v = rng.range_inclusive(0, u64::MAX);
        let _ = v;
    }
}
