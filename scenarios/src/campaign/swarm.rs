//! Swarm testing (`fvdsim swarm`): every seed draws its whole configuration, as TigerBeetle's
//! VOPR and FoundationDB's simulation do, so a bug that needs a combination no fixed scenario has
//! is reached by chance. The configuration is a pure function of the seed (`fvdsim run
//! --swarm-seed S` replays it), failures are deduplicated into a failing-seed database by
//! signature, and coverage is summed over the campaign.
//!
//! Seed `i` of a campaign with base seed `B` is `swarm_seed(B, i)`; `--shard I/N` runs the `i` with
//! `i % N == I`, so shards of one night never overlap and their databases merge.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use fvd_sim::{AtomicUnit, FaultPlan, Seed, SimRng};
use serde::{Deserialize, Serialize};

use super::config::{
    CommitName, CrashConfig, CrashPoint, ImageConfig, PrefetchSpec, ProfileName, ReplayMode, RunConfig, WorkloadConfig,
};
use super::coverage::Coverage;
use super::run::{ConfigError, FailureClass, RunOutcome, SectorFailure};

const MIB: u64 = 1 << 20;

/// Seed `index` of the campaign whose base seed is `base` (a SplitMix64 step: distinct, spread).
pub fn swarm_seed(base: Seed, index: u64) -> Seed {
    let mut z = base.0 ^ index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    Seed(z ^ (z >> 31))
}

/// Which engine profiles a swarm draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwarmProfiles {
    /// The hardened engine only (a nightly campaign: every failure is a bug).
    #[default]
    Hardened,
    /// One seed in eight runs the v1 profile (its known flaws show up as failures).
    WithV1,
}

/// The scenario name of swarm configurations whose crash states are enumerated
/// ([`super::enumerate`]); `fvdsim run` enumerates every scenario named `exhaustive*`.
pub const ENUMERATED_SCENARIO: &str = "exhaustive-swarm";

/// The configuration seed `seed` draws (stream `swarm`): workload, queue depth, flush frequency,
/// image geometry and options, profile and commit mode, devices, atomic units, faults, crashes.
/// Always a configuration the engine accepts (checked by [`super::run::validate`]; a draw that is
/// not is redrawn from the same stream).
pub fn swarm_config(seed: Seed, profiles: SwarmProfiles) -> RunConfig {
    let mut rng = SimRng::stream(seed, fvd_sim::streams::SWARM);
    loop {
        let config = draw(seed, &mut rng, profiles);
        if super::run::validate(&config).is_ok() {
            return config;
        }
    }
}

fn pick<T: Copy>(rng: &mut SimRng, items: &[T]) -> T {
    *rng.pick(items)
}

fn draw(seed: Seed, rng: &mut SimRng, profiles: SwarmProfiles) -> RunConfig {
    let size_bytes = pick(rng, &[4, 16, 64, 256, 1024]) * MIB;
    let block_bytes = pick(rng, &[512, 4096, 7680, 15872, 65536]);
    let base_bytes = match rng.below(4) {
        0 => 0,
        1 => size_bytes,
        _ => (size_bytes / 512 * rng.range_inclusive(1, 15) / 16) * 512,
    };
    let compact = rng.ratio(3, 4);
    let chunk_bytes = block_bytes * pick(rng, &[1, 2, 8, 64, 256]);
    let image = ImageConfig {
        size_bytes,
        base_bytes,
        compact,
        block_bytes,
        chunk_bytes,
        grow_unit_bytes: chunk_bytes * pick(rng, &[1, 4, 32]),
        journal_bytes: pick(rng, &[0, 4 << 10, 16 << 10, 64 << 10, 1 << 20]),
        separate_data: rng.ratio(1, 4),
        image_device: pick(rng, &["nvme", "ssd", "hdd", "nfs"]).to_string(),
        base_device: pick(rng, &["nvme", "ssd", "nfs"]).to_string(),
    };
    let workload = if rng.ratio(1, 5) {
        let mode = if rng.ratio(1, 2) {
            ReplayMode::OpenLoop { time_scale: pick(rng, &[0.001, 0.01, 0.1]), max_in_flight: pick(rng, &[1, 8, 64]) }
        } else {
            ReplayMode::ClosedLoop { queue_depth: pick(rng, &[1, 4, 16, 32]) }
        };
        WorkloadConfig::Trace {
            path: crate::trace::BUILTIN_CLOUDPHYSICS.into(),
            format: crate::trace::TraceFormat::Cloudphysics,
            mode,
            wrap: true,
        }
    } else {
        WorkloadConfig::Random {
            testers: pick(rng, &[1, 2, 4, 8, 16]),
            requests: pick(rng, &[300, 1_000, 3_000, 6_000]),
            max_sectors: pick(rng, &[1, 8, 64, 256]),
            read_per_mille: pick(rng, &[0, 200, 450, 800]),
        }
    };
    let max_requests = matches!(workload, WorkloadConfig::Trace { .. }).then(|| pick(rng, &[1_000, 3_000, 6_000]));
    let has_base = base_bytes > 0;
    let copy_on_read = has_base && rng.ratio(1, 4);
    let prefetch = (has_base && rng.ratio(1, 4)).then(|| PrefetchSpec {
        start_delay_ms: pick(rng, &[2, 50, 500]),
        slots: pick(rng, &[1, 2, 8]),
        bytes_per_prefetch: pick(rng, &[8 << 10, 256 << 10, 1 << 20]),
        min_kb_s: pick(rng, &[5_120, 40_000, 1 << 30]),
        throttle_ms: pick(rng, &[0, 3, 50]),
        aimd_target_us: rng.ratio(1, 3).then(|| pick(rng, &[2_000, 20_000])),
        aimd_max_kb_s: 64 << 10,
        wait_for_finish: rng.ratio(1, 2),
        ..PrefetchSpec::v1_defaults()
    });
    // Drawn whatever `profiles` says, so the rest of the configuration is the same for a seed in
    // every swarm (`fvdsim run --swarm-seed S --profile v1` replays a v1 draw).
    let v1 = rng.ratio(1, 8);
    let profile = if profiles == SwarmProfiles::WithV1 && v1 { ProfileName::V1 } else { ProfileName::Hardened };
    let commit = if rng.ratio(1, 3) { CommitName::Sync } else { CommitName::Group };
    let points: Vec<CrashPoint> = (0..rng.range_inclusive(1, 5)).map(|_| pick(rng, &CrashPoint::FVD)).collect();
    let units = [AtomicUnit::Sector, AtomicUnit::Page, AtomicUnit::None];
    let atomic_units: Vec<AtomicUnit> = (0..rng.range_inclusive(1, 2)).map(|_| pick(rng, &units)).collect();
    let faults = match rng.below(5) {
        0 => FaultPlan {
            read_error_per_million: pick(rng, &[0, 2_000, 20_000]),
            write_error_per_million: pick(rng, &[0, 2_000, 20_000]),
            flush_error_per_million: pick(rng, &[0, 5_000]),
            ..FaultPlan::default()
        },
        _ => FaultPlan::default(),
    };
    // Without a journal, metadata reaches disk only at a clean close, and a crash leaves an image
    // that v1's rule refuses to open (`DirtyWithoutJournal`): no crashes then.
    let crash_count = pick(rng, &[0, 1, 4, 12, 30]);
    let count = if image.journal_bytes == 0 && (image.compact || image.base_bytes > 0) { 0 } else { crash_count };
    // One short random workload in six enumerates its crash states (every moment, many states
    // each) instead of crashing at a few points; drawn last, so the rest of a seed's draw stays.
    // Each state copies the devices' written pages: small images keep that cheap.
    let enumerate = rng.ratio(1, 6)
        && count > 0
        && matches!(workload, WorkloadConfig::Random { .. })
        && image.size_bytes <= 64 * MIB
        && prefetch.is_none();
    let workload = match workload {
        WorkloadConfig::Random { max_sectors, read_per_mille, .. } if enumerate => WorkloadConfig::Random {
            testers: pick(rng, &[1, 2, 4]),
            requests: pick(rng, &[16, 32, 48]),
            max_sectors: max_sectors.min(64),
            read_per_mille,
        },
        other => other,
    };
    // The image format: one seed in six QED, one in six Parallels (drawn last, so the rest of a
    // seed's draw stays; what the format cannot do is dropped by `on_format`).
    let format = match rng.below(6) {
        0 => super::guest::FormatName::Qed,
        1 => super::guest::FormatName::Parallels,
        _ => super::guest::FormatName::Fvd,
    };
    let config = RunConfig {
        scenario: if enumerate { ENUMERATED_SCENARIO.into() } else { "swarm".into() },
        seed,
        profile,
        commit,
        workload,
        image,
        crashes: CrashConfig { count, points, atomic_units, schedule: None },
        faults,
        flush_every_requests: pick(rng, &[0, 1, 16, 64, 2_000]),
        max_requests,
        verify_sample_sectors: 1_024,
        copy_on_read,
        prefetch,
        format: super::guest::FormatName::Fvd,
        qemu_judge: false,
    };
    let mut config = config.on_format(format);
    if matches!(format, super::guest::FormatName::Qed | super::guest::FormatName::Parallels) {
        // QED and Parallels rely on sector-atomic writes (docs/qed.md: a torn L1/L2 entry is
        // found by `exhaustive-torn --format qed`, pinned in tests/formats.rs; a BAT entry torn
        // inside its sector names another cluster, which the repair copies as a duplicate: swarm
        // seed 0x9156ca5dfeebe1a9): draw what they assume.
        for unit in &mut config.crashes.atomic_units {
            if *unit == AtomicUnit::None {
                *unit = AtomicUnit::Sector;
            }
        }
    }
    config
}

/// What identifies a failure across seeds: its class, where the crash before it fired, and the
/// failure's message with numbers removed (so "sector 517923 held write #1419's data" and
/// "sector 3 held write #7's data" are the same bug).
pub fn signature(outcome: &RunOutcome) -> Option<String> {
    let failure = outcome.failure.as_ref()?;
    let class =
        serde_json::to_value(failure.class).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    // A failure in a recovery comes before its crash is summarised: name the crash it recovered
    // from (as planned: where it fired is in the failure's message).
    let recovering = (failure.after_crashes > outcome.crashes.len())
        .then(|| outcome.config.crashes.schedule.as_ref()?.get(failure.after_crashes.checked_sub(1)?).copied())
        .flatten();
    let last_crash = match recovering {
        Some(spec) => format!("a crash at {}", spec.point.name()),
        None => outcome.crashes.last().map_or("no crash".to_string(), |c| c.fired_at.name().to_string()),
    };
    let shape = without_numbers(failure.message.lines().next().unwrap_or_default());
    let first_sector = failure.sectors.first().map_or(String::new(), |s: &SectorFailure| {
        format!("; held {}", s.actual.chars().filter(|c| !c.is_ascii_digit()).collect::<String>())
    });
    Some(format!("{class} after {last_crash}: {shape}{first_sector}"))
}

/// `text` with every number taken out (a run of digits, or a `0x` hexadecimal literal, which
/// would otherwise leave its letters: `0x2ff0000` and `0x5f0000` are one shape), runs that stood
/// between words leaving one `#`, so that messages differing only in sectors, counts or offsets
/// compare equal: the shape part of a failure [`signature`] (persisted in failing-seed
/// databases: changing it splits known failures. Hexadecimal literals are taken out since
/// December 2026, when a 10-minute swarm listed one QED bug twice).
pub fn without_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let hex = c == '0'
            && chars.peek() == Some(&'x')
            && chars.clone().nth(1).is_some_and(|after| after.is_ascii_hexdigit());
        if hex {
            chars.next();
            while chars.peek().is_some_and(|d| d.is_ascii_hexdigit()) {
                chars.next();
            }
            out.push('#');
        } else {
            out.push(if c.is_ascii_digit() { '#' } else { c });
        }
    }
    out.split('#').filter(|piece| !piece.is_empty()).collect::<Vec<_>>().join("#")
}

/// One distinct failure in the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownFailure {
    /// [`signature`].
    pub signature: String,
    /// Its class.
    pub class: FailureClass,
    /// The first seed that showed it (the seed whose run the database keeps).
    pub first_seed: String,
    /// Seeds that showed it, at most 16 kept.
    pub seeds: Vec<String>,
    /// How many runs showed it, over every campaign merged in.
    pub count: u64,
    /// The smallest failing run seen: its workload requests.
    pub smallest_requests: u64,
    /// The command that replays the smallest failing run.
    pub repro_command: String,
    /// The failure message of the smallest failing run.
    pub message: String,
    /// The campaign that first showed it (its start, RFC 3339 UTC).
    #[serde(default)]
    pub first_seen: String,
    /// The latest campaign that showed it.
    #[serde(default)]
    pub last_seen: String,
}

/// The failing-seed database: one JSON file per campaign directory (`failures.json`), mergeable
/// across shards and nights.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailureDb {
    /// Database format version.
    pub schema_version: u32,
    /// Distinct failures by signature.
    pub failures: BTreeMap<String, KnownFailure>,
}

impl FailureDb {
    /// Reads a database file.
    pub fn read(path: &Path) -> Result<FailureDb> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let db: FailureDb = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a fvdsim failing-seed database (failures.json)", path.display()))?;
        anyhow::ensure!(
            db.schema_version == 1,
            "{}: database schema {} (this fvdsim reads 1)",
            path.display(),
            db.schema_version
        );
        Ok(db)
    }

    /// Records a failing run of the campaign labelled `seen` (its start, RFC 3339 UTC).
    pub fn record(&mut self, outcome: &RunOutcome, repro_command: &str, seen: &str) {
        let Some(signature) = signature(outcome) else { return };
        let failure = outcome.failure.as_ref().expect("a signature means a failure");
        let seed = outcome.config.seed.to_string();
        let requests = outcome.summary.issued;
        let entry = self.failures.entry(signature.clone()).or_insert_with(|| KnownFailure {
            signature,
            class: failure.class,
            first_seed: seed.clone(),
            seeds: Vec::new(),
            count: 0,
            smallest_requests: u64::MAX,
            repro_command: String::new(),
            message: String::new(),
            first_seen: seen.to_string(),
            last_seen: String::new(),
        });
        entry.count += 1;
        entry.last_seen = entry.last_seen.clone().max(seen.to_string());
        if entry.seeds.len() < 16 && !entry.seeds.contains(&seed) {
            entry.seeds.push(seed);
        }
        if requests < entry.smallest_requests {
            entry.smallest_requests = requests;
            entry.repro_command = repro_command.to_string();
            entry.message = failure.message.clone();
        }
    }

    /// Merges `other` into this database.
    pub fn merge(&mut self, other: FailureDb) {
        for (signature, theirs) in other.failures {
            match self.failures.get_mut(&signature) {
                None => {
                    self.failures.insert(signature, theirs);
                }
                Some(ours) => {
                    ours.count += theirs.count;
                    if ours.first_seen.is_empty()
                        || (!theirs.first_seen.is_empty() && theirs.first_seen < ours.first_seen)
                    {
                        ours.first_seen = theirs.first_seen.clone();
                    }
                    ours.last_seen = ours.last_seen.clone().max(theirs.last_seen.clone());
                    for seed in theirs.seeds {
                        if ours.seeds.len() < 16 && !ours.seeds.contains(&seed) {
                            ours.seeds.push(seed);
                        }
                    }
                    if theirs.smallest_requests < ours.smallest_requests {
                        ours.smallest_requests = theirs.smallest_requests;
                        ours.repro_command = theirs.repro_command;
                        ours.message = theirs.message;
                    }
                }
            }
        }
    }

    /// Writes the database.
    pub fn write(&self, path: &Path) -> Result<()> {
        let db = FailureDb { schema_version: crate::schema::SWARM_FAILURE_DB, failures: self.failures.clone() };
        std::fs::write(path, serde_json::to_string_pretty(&db)?).with_context(|| format!("writing {}", path.display()))
    }
}

/// One seed's result in a campaign.
#[derive(Debug)]
pub struct SeedResult {
    /// The seed's index in the campaign.
    pub index: u64,
    /// The run (or the configuration error: a bug in the swarm's drawing).
    pub outcome: std::result::Result<RunOutcome, ConfigError>,
    /// Crash states the run verified (enumerated ones included).
    pub crash_states: u64,
}

/// A campaign's totals (`swarm.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwarmSummary {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds that failed.
    pub failing_seeds: u64,
    /// Crash states recovered and verified.
    pub crashes_verified: u64,
    /// Sectors verified.
    pub sectors_verified: u64,
    /// Distinct failures.
    pub distinct_failures: usize,
    /// Coverage summed over the campaign.
    pub coverage: Coverage,
    /// Paths never reached.
    pub never_reached: Vec<String>,
    /// Wall time, seconds.
    pub wall_seconds: f64,
}

impl SwarmSummary {
    /// Adds another campaign's totals (shards of one night, for `--merge`).
    pub fn merge(&mut self, other: &SwarmSummary) {
        self.seeds += other.seeds;
        self.failing_seeds += other.failing_seeds;
        self.crashes_verified += other.crashes_verified;
        self.sectors_verified += other.sectors_verified;
        self.wall_seconds = self.wall_seconds.max(other.wall_seconds);
        for (path, count) in &other.coverage {
            *self.coverage.entry(path.clone()).or_default() += count;
        }
        self.never_reached = super::coverage::missing(&self.coverage).into_iter().map(str::to_owned).collect();
    }

    /// The campaign's page: figures, coverage bars for every path, failures.
    pub fn page(&self, title: &str, db: &FailureDb) -> fvd_reports::campaign::CampaignPage {
        use fvd_reports::campaign::{CampaignPage, CoverageRow, FailureRow};
        let per_second = |n: u64| n as f64 / self.wall_seconds.max(1e-9);
        CampaignPage {
            title: title.to_string(),
            summary: vec![
                ("seeds".into(), format!("{} ({:.0} per minute)", self.seeds, per_second(self.seeds) * 60.0)),
                ("failing seeds".into(), format!("{} ({} distinct failures)", self.failing_seeds, db.failures.len())),
                (
                    "crash states verified".into(),
                    format!("{} ({:.0} per second)", self.crashes_verified, per_second(self.crashes_verified)),
                ),
                ("sectors verified".into(), self.sectors_verified.to_string()),
                ("wall time".into(), format!("{:.1} s", self.wall_seconds)),
            ],
            coverage: super::coverage::PATHS
                .iter()
                .map(|path| CoverageRow {
                    path: (*path).to_string(),
                    count: self.coverage.get(*path).copied().unwrap_or(0),
                })
                .collect(),
            failures: db
                .failures
                .values()
                .map(|f| FailureRow {
                    signature: f.signature.clone(),
                    count: f.count,
                    first_seed: f.first_seed.clone(),
                    seen: if f.first_seen == f.last_seen {
                        f.first_seen.clone()
                    } else {
                        format!("{} to {}", f.first_seen, f.last_seen)
                    },
                    message: f.message.clone(),
                    repro_command: f.repro_command.clone(),
                })
                .collect(),
            files: vec![
                ("the campaign's totals and coverage".into(), "swarm.json".into()),
                ("the failing-seed database".into(), "failures.json".into()),
            ],
            tables: Vec::new(),
        }
    }
    /// Adds one run that verified `crash_states` crash states.
    pub fn add(&mut self, outcome: &RunOutcome, crash_states: u64) {
        self.seeds += 1;
        self.failing_seeds += u64::from(outcome.failure.is_some());
        self.crashes_verified += crash_states;
        self.sectors_verified += outcome.summary.sectors_verified;
        for (path, count) in &outcome.summary.coverage {
            *self.coverage.entry(path.clone()).or_default() += count;
        }
        self.never_reached = super::coverage::missing(&self.coverage).into_iter().map(str::to_owned).collect();
    }
}

/// Runs the seeds `indices` of the campaign with base seed `base`, `jobs` at a time (each run is
/// single-threaded and deterministic; only the order results arrive in depends on the host).
/// `each` sees every result as it arrives; `keep_going` is asked before each seed starts.
pub fn run_seeds(
    base: Seed,
    profiles: SwarmProfiles,
    indices: impl Iterator<Item = u64> + Send,
    jobs: usize,
    keep_going: &(dyn Fn() -> bool + Sync),
    each: &mut (dyn FnMut(SeedResult) + Send),
) {
    let indices = std::sync::Mutex::new(indices);
    let (sender, receiver) = std::sync::mpsc::channel::<SeedResult>();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let sender = sender.clone();
            let indices = &indices;
            scope.spawn(move || {
                loop {
                    if !keep_going() {
                        return;
                    }
                    let Some(index) = indices.lock().unwrap_or_else(|p| p.into_inner()).next() else { return };
                    let config = swarm_config(swarm_seed(base, index), profiles);
                    let (outcome, crash_states) = if config.scenario == ENUMERATED_SCENARIO {
                        match super::enumerate::run_enumerated_as_run(&config) {
                            Ok((outcome, states)) => (Ok(outcome), states),
                            Err(error) => (Err(error), 0),
                        }
                    } else {
                        let outcome = super::run::run(&config);
                        let states = outcome.as_ref().map_or(0, |o| o.crashes.len() as u64);
                        (outcome, states)
                    };
                    if sender.send(SeedResult { index, outcome, crash_states }).is_err() {
                        return;
                    }
                }
            });
        }
        drop(sender);
        for result in receiver {
            each(result);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_are_a_pure_function_of_the_seed_and_vary() {
        let a = swarm_config(Seed(11), SwarmProfiles::Hardened);
        assert_eq!(a, swarm_config(Seed(11), SwarmProfiles::Hardened));
        let configs: Vec<RunConfig> =
            (0..64).map(|i| swarm_config(swarm_seed(Seed(1), i), SwarmProfiles::Hardened)).collect();
        let distinct =
            |f: &dyn Fn(&RunConfig) -> String| configs.iter().map(f).collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct(&|c| c.image.block_bytes.to_string()) >= 4);
        assert!(distinct(&|c| format!("{}", c.image.compact)) == 2);
        assert!(distinct(&|c| format!("{:?}", c.commit)) == 2);
        assert!(distinct(&|c| format!("{}", c.image.separate_data)) == 2);
        assert!(distinct(&|c| format!("{}", c.copy_on_read)) == 2);
        assert!(configs.iter().all(|c| c.profile == ProfileName::Hardened));
        assert!(configs.iter().all(|c| super::super::run::validate(c).is_ok()));
        let seeds: std::collections::BTreeSet<u64> = (0..1000).map(|i| swarm_seed(Seed(1), i).0).collect();
        assert_eq!(seeds.len(), 1000);
        // Some seeds enumerate crash states, always on a short random workload with crashes.
        let enumerated: Vec<&RunConfig> = configs.iter().filter(|c| c.scenario == ENUMERATED_SCENARIO).collect();
        assert!(!enumerated.is_empty() && enumerated.len() < configs.len() / 2, "{}", enumerated.len());
        for config in enumerated {
            assert!(matches!(config.workload, WorkloadConfig::Random { requests, .. } if requests <= 48));
            assert!(config.crashes.count > 0 && config.prefetch.is_none());
        }
    }

    #[test]
    fn an_enumerated_seed_verifies_many_crash_states_and_passes() {
        let mut config = (0..64)
            .map(|i| swarm_config(swarm_seed(Seed(1), i), SwarmProfiles::Hardened))
            .find(|c| c.scenario == ENUMERATED_SCENARIO)
            .expect("an enumerated seed among 64");
        // The first requests are enough here (and keep a debug-build test quick).
        config.max_requests = Some(6);
        let (outcome, states) = super::super::enumerate::run_enumerated_as_run(&config).unwrap();
        assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
        assert!(states > 10, "{states} crash states");
    }

    #[test]
    fn signatures_ignore_numbers_and_databases_merge() {
        let mut config = swarm_config(Seed(3), SwarmProfiles::Hardened);
        config.format = super::super::guest::FormatName::Fvd;
        config.profile = ProfileName::V1;
        config.workload = WorkloadConfig::Random { testers: 8, requests: 1_500, max_sectors: 128, read_per_mille: 450 };
        config.image.base_bytes = config.image.size_bytes / 2;
        config.image.journal_bytes = 64 << 10;
        config.crashes.count = 6;
        config.crashes.points = vec![CrashPoint::JournalWriteInFlight, CrashPoint::RandomEvent];
        config.faults = FaultPlan::default();
        let failing = (0..16u64)
            .map(|s| RunConfig { seed: Seed(s), ..config.clone() })
            .filter_map(|c| super::super::run::run(&c).ok())
            .filter(|o| o.failure.is_some())
            .take(2)
            .collect::<Vec<_>>();
        assert!(!failing.is_empty(), "v1 fails somewhere in sixteen seeds");
        let mut one = FailureDb::default();
        one.record(&failing[0], "fvdsim repro a.json", "2026-12-01T00:00:00Z");
        let signature = signature(&failing[0]).unwrap();
        assert!(!signature.chars().any(|c| c.is_ascii_digit()), "{signature}");
        let mut other = FailureDb::default();
        other.record(&failing[0], "fvdsim repro b.json", "2026-12-02T00:00:00Z");
        one.merge(other);
        assert_eq!(one.failures[&signature].count, 2);
        assert_eq!(one.failures.len(), 1);
    }
}
