//! Crash states: how the unflushed writes of a volatile cache resolve at power loss.
//!
//! At a crash everything made durable by a completed flush (or a completed FUA write) survives.
//! Every other write (executed and sitting in the cache, or still in flight) is cut into atomic
//! units aligned to absolute offsets, and each unit is kept, dropped, or (with no atomic unit)
//! torn at a byte boundary inside its sector. Units resolve in execution order, so where two
//! kept writes overlap the later one wins, as a write-back cache that held both would leave it.
//! The resolution is drawn from the disk's `crash` stream and returned as a [`CrashRecord`], so a
//! replay reproduces it exactly and a report can show it.

use serde::{Deserialize, Serialize};

use crate::SimRng;

/// The unit a device writes atomically at power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AtomicUnit {
    /// 512-byte sectors land whole or not at all.
    Sector,
    /// 4 KiB pages land whole or not at all.
    Page,
    /// Nothing is atomic: a 512-byte sector may be torn at any byte.
    None,
}

impl AtomicUnit {
    /// The unit length in bytes (512 for `None`, whose sectors may tear inside).
    pub fn len_bytes(self) -> u64 {
        match self {
            AtomicUnit::Sector | AtomicUnit::None => 512,
            AtomicUnit::Page => 4096,
        }
    }
}

/// How to choose which unflushed units survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CrashStrategy {
    /// Each unit independently: kept with `keep_per_mille`, torn with `tear_per_mille` (only
    /// when the atomic unit is `None`), otherwise dropped (FoundationDB / SQLite crash VFS style).
    RandomSubset {
        /// Chance per mille a unit is kept.
        keep_per_mille: u32,
        /// Chance per mille a unit is torn (byte-granular), when tearing is possible.
        tear_per_mille: u32,
    },
    /// Writes in execution order up to a random cut survive; the write at the cut lands a random
    /// prefix of its units (dm-log-writes replay style).
    Prefix,
    /// Everything lands (a clean power-off after the cache drained).
    Clean,
    /// One enumerated crash state: unflushed write `i` (resolution order; see
    /// [`CrashPlan::for_next_device`] for worlds of several devices) lands whole if bit `i` of
    /// `keep_mask` is set and not at all otherwise; writes from the 64th on are dropped. FUA
    /// writes always land. Used by crash-state enumeration (every subset of a few writes).
    Subset {
        /// Bit `i` set: write `i` lands.
        keep_mask: u64,
    },
    /// One enumerated prefix: writes before `writes` land whole; write `writes` lands its first
    /// `units` atomic units and, with no atomic unit, the first `torn_bytes` bytes of the unit
    /// after them (dm-log-writes prefix replay with the cut torn); later writes are dropped.
    PrefixAt {
        /// Writes that land whole.
        writes: u32,
        /// Units of the cut write that land.
        units: u32,
        /// Bytes of the next unit that land (only with no atomic unit).
        torn_bytes: u32,
    },
    /// A random subset like [`CrashStrategy::RandomSubset`], drawn from variant `variant` of the
    /// crash stream: the stream's state forked, not advanced, so the states sampled at one crash
    /// point are independent and each replays alone.
    Sampled {
        /// Which fork of the crash stream.
        variant: u32,
        /// Chance per mille a unit is kept.
        keep_per_mille: u32,
        /// Chance per mille a unit is torn (no atomic unit only).
        tear_per_mille: u32,
    },
}

impl CrashStrategy {
    /// The default random-subset strategy: keep half, tear a tenth when tearing is possible.
    pub const RANDOM: CrashStrategy = CrashStrategy::RandomSubset { keep_per_mille: 500, tear_per_mille: 100 };
}

/// A crash request: strategy and atomic unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashPlan {
    /// How units are chosen.
    pub strategy: CrashStrategy,
    /// What is atomic.
    pub atomic_unit: AtomicUnit,
}

impl CrashPlan {
    /// The plan for the next device of a world after one whose crash resolved `writes` writes:
    /// enumerated strategies count writes over the devices in turn (the image's first, then the
    /// data file's), so one [`CrashStrategy::Subset`] or [`CrashStrategy::PrefixAt`] names a
    /// crash state of the whole world. Other strategies apply to each device alike.
    pub fn for_next_device(self, writes: usize) -> CrashPlan {
        let writes = u32::try_from(writes).unwrap_or(u32::MAX);
        let strategy = match self.strategy {
            CrashStrategy::Subset { keep_mask } => {
                CrashStrategy::Subset { keep_mask: keep_mask.checked_shr(writes).unwrap_or(0) }
            }
            CrashStrategy::PrefixAt { writes: cut, units, torn_bytes } if cut >= writes => {
                CrashStrategy::PrefixAt { writes: cut - writes, units, torn_bytes }
            }
            // The cut fell in an earlier device: nothing of this one lands.
            CrashStrategy::PrefixAt { .. } => CrashStrategy::PrefixAt { writes: 0, units: 0, torn_bytes: 0 },
            other => other,
        };
        CrashPlan { strategy, atomic_unit: self.atomic_unit }
    }
}

/// The fate of one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitFate {
    /// The new data landed.
    Kept,
    /// The old data stayed.
    Dropped,
    /// The first `new_prefix_bytes` bytes landed, the rest stayed old.
    TornPrefix {
        /// Bytes of new data at the unit's start.
        new_prefix_bytes: u32,
    },
}

/// What became of one unflushed write at a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFate {
    /// The disk's request number.
    pub request: u64,
    /// First byte.
    pub offset_bytes: u64,
    /// Length.
    pub len_bytes: u64,
    /// False for a write still in flight (never executed) at the crash.
    pub executed: bool,
    /// One letter per atomic unit in address order: `K` kept, `D` dropped, `T` torn.
    pub units: String,
}

/// The recorded resolution of a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashRecord {
    /// Device name.
    pub device: String,
    /// Virtual time of the crash.
    pub at_ns: u64,
    /// The plan applied.
    pub plan: CrashPlan,
    /// Device length before the crash.
    pub len_bytes_before: u64,
    /// Device length after it.
    pub len_bytes_after: u64,
    /// Every unflushed write, in resolution order.
    pub writes: Vec<WriteFate>,
}

impl CrashRecord {
    /// Units kept, dropped and torn over all writes.
    pub fn unit_counts(&self) -> (u64, u64, u64) {
        let mut counts = (0, 0, 0);
        for fate in &self.writes {
            for unit in fate.units.chars() {
                match unit {
                    'K' => counts.0 += 1,
                    'D' => counts.1 += 1,
                    _ => counts.2 += 1,
                }
            }
        }
        counts
    }
}

/// The atomic-unit pieces of a write at `offset_bytes` of `len_bytes`: `(start, len)` pairs.
pub fn unit_pieces(offset_bytes: u64, len_bytes: u64, unit: AtomicUnit) -> impl Iterator<Item = (u64, u64)> {
    let unit_len = unit.len_bytes();
    let end = offset_bytes + len_bytes;
    let mut at = offset_bytes;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = ((at / unit_len) + 1) * unit_len;
        let piece = (at, next.min(end) - at);
        at = next.min(end);
        Some(piece)
    })
}

/// Chooses unit fates for a list of candidate writes. `forced[i]` marks writes that are already
/// durable (FUA) and must be kept. `unit_counts[i]` is how many units write `i` has.
pub(crate) fn choose_fates(
    plan: CrashPlan,
    rng: &mut SimRng,
    unit_counts: &[usize],
    forced: &[bool],
    piece_lens: &dyn Fn(usize, usize) -> u64,
) -> Vec<Vec<UnitFate>> {
    let tearable = plan.atomic_unit == AtomicUnit::None;
    let kept_if = |write: usize, keep: bool| if forced[write] || keep { UnitFate::Kept } else { UnitFate::Dropped };
    match plan.strategy {
        CrashStrategy::Clean => unit_counts.iter().map(|&n| vec![UnitFate::Kept; n]).collect(),
        CrashStrategy::Subset { keep_mask } => unit_counts
            .iter()
            .enumerate()
            .map(|(write, &n)| vec![kept_if(write, write < 64 && keep_mask >> write & 1 == 1); n])
            .collect(),
        CrashStrategy::PrefixAt { writes, units, torn_bytes } => {
            let (cut, cut_units) = (writes as usize, units as usize);
            unit_counts
                .iter()
                .enumerate()
                .map(|(write, &n)| {
                    (0..n)
                        .map(|unit| {
                            let landed = write < cut || (write == cut && unit < cut_units);
                            let torn = write == cut && unit == cut_units && tearable && torn_bytes > 0;
                            let len = piece_lens(write, unit);
                            if torn && !forced[write] && u64::from(torn_bytes) < len {
                                UnitFate::TornPrefix { new_prefix_bytes: torn_bytes }
                            } else {
                                kept_if(write, landed || (torn && u64::from(torn_bytes) >= len))
                            }
                        })
                        .collect()
                })
                .collect()
        }
        CrashStrategy::Sampled { variant, keep_per_mille, tear_per_mille } => {
            let mut forked = rng.fork(u64::from(variant));
            let plan = CrashPlan {
                strategy: CrashStrategy::RandomSubset { keep_per_mille, tear_per_mille },
                atomic_unit: plan.atomic_unit,
            };
            choose_fates(plan, &mut forked, unit_counts, forced, piece_lens)
        }
        CrashStrategy::RandomSubset { keep_per_mille, tear_per_mille } => unit_counts
            .iter()
            .enumerate()
            .map(|(write, &n)| {
                (0..n)
                    .map(|unit| {
                        if forced[write] {
                            return UnitFate::Kept;
                        }
                        let roll = rng.below(1000) as u32;
                        let piece_len = piece_lens(write, unit);
                        if roll < keep_per_mille {
                            UnitFate::Kept
                        } else if tearable && piece_len > 1 && roll < keep_per_mille.saturating_add(tear_per_mille) {
                            UnitFate::TornPrefix { new_prefix_bytes: rng.range_inclusive(1, piece_len - 1) as u32 }
                        } else {
                            UnitFate::Dropped
                        }
                    })
                    .collect()
            })
            .collect(),
        CrashStrategy::Prefix => {
            let cut = rng.below(unit_counts.len() as u64 + 1) as usize;
            let cut_units = unit_counts.get(cut).map_or(0, |&n| rng.below(n as u64 + 1) as usize);
            unit_counts
                .iter()
                .enumerate()
                .map(|(write, &n)| {
                    (0..n)
                        .map(|unit| {
                            let kept = forced[write] || write < cut || (write == cut && unit < cut_units);
                            if kept { UnitFate::Kept } else { UnitFate::Dropped }
                        })
                        .collect()
                })
                .collect()
        }
    }
}

/// The letter of a fate in [`WriteFate::units`].
pub(crate) fn fate_letter(fate: UnitFate) -> char {
    match fate {
        UnitFate::Kept => 'K',
        UnitFate::Dropped => 'D',
        UnitFate::TornPrefix { .. } => 'T',
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Seed;

    #[test]
    fn pieces_follow_absolute_unit_boundaries() {
        let pieces: Vec<_> = unit_pieces(1000, 5000, AtomicUnit::Page).collect();
        assert_eq!(pieces, vec![(1000, 3096), (4096, 1904)]);
        let pieces: Vec<_> = unit_pieces(512, 1024, AtomicUnit::Sector).collect();
        assert_eq!(pieces, vec![(512, 512), (1024, 512)]);
        assert_eq!(unit_pieces(0, 0, AtomicUnit::Sector).count(), 0);
    }

    #[test]
    fn strategies_respect_forced_writes_and_tearing_rules() {
        let mut rng = SimRng::stream(Seed(9), "crash");
        let counts = [4usize, 4, 4];
        let forced = [false, true, false];
        let lens = |_: usize, _: usize| 512u64;
        for _ in 0..50 {
            let plan = CrashPlan {
                strategy: CrashStrategy::RandomSubset { keep_per_mille: 0, tear_per_mille: 0 },
                atomic_unit: AtomicUnit::Sector,
            };
            let fates = choose_fates(plan, &mut rng, &counts, &forced, &lens);
            assert!(fates[1].iter().all(|f| *f == UnitFate::Kept));
            assert!(fates[0].iter().all(|f| *f == UnitFate::Dropped));
            let plan = CrashPlan { strategy: CrashStrategy::Prefix, atomic_unit: AtomicUnit::Sector };
            let fates = choose_fates(plan, &mut rng, &counts, &forced, &lens);
            let flat: Vec<bool> = fates
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .flat_map(|(_, f)| f.iter().map(|u| *u == UnitFate::Kept))
                .collect();
            // A prefix: no kept unit after a dropped one.
            assert!(flat.windows(2).all(|w| w[0] || !w[1]), "{flat:?}");
            let plan = CrashPlan {
                strategy: CrashStrategy::RandomSubset { keep_per_mille: 0, tear_per_mille: 1000 },
                atomic_unit: AtomicUnit::Sector,
            };
            let fates = choose_fates(plan, &mut rng, &counts, &forced, &lens);
            assert!(fates[0].iter().all(|f| *f == UnitFate::Dropped), "sectors are atomic: no tearing");
            let plan = CrashPlan {
                strategy: CrashStrategy::RandomSubset { keep_per_mille: 0, tear_per_mille: 1000 },
                atomic_unit: AtomicUnit::None,
            };
            let fates = choose_fates(plan, &mut rng, &counts, &forced, &lens);
            assert!(fates[0].iter().all(
                |f| matches!(f, UnitFate::TornPrefix { new_prefix_bytes } if (1..512).contains(new_prefix_bytes))
            ));
        }
    }
}
