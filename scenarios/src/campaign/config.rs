//! What a run does: the configuration recorded in every report and failure file, and the named
//! scenarios (`fvdsim scenarios`).

use serde::{Deserialize, Serialize};

use crate::trace::TraceFormat;
use fvd_engine::ProgressPoint;
use fvd_sim::{AtomicUnit, CrashStrategy, FaultPlan, Seed};

use super::guest::FormatName;

/// Engine profile, as written in configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ProfileName {
    /// The hardened engine (default).
    #[default]
    Hardened,
    /// The 2011 behaviour.
    V1,
}

impl std::fmt::Display for ProfileName {
    /// The name as on the command line and in configs (`hardened`, `v1`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProfileName::Hardened => "hardened",
            ProfileName::V1 => "v1",
        })
    }
}

impl From<ProfileName> for fvd_engine::Profile {
    fn from(name: ProfileName) -> fvd_engine::Profile {
        match name {
            ProfileName::Hardened => fvd_engine::Profile::Hardened,
            ProfileName::V1 => fvd_engine::Profile::V1,
        }
    }
}

/// When the hardened engine makes metadata durable, as written in configs (`--commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CommitName {
    /// Group commit: records queued, made durable at guest flushes (the default).
    #[default]
    Group,
    /// A durable record per allocating write before its acknowledgement.
    Sync,
}

impl From<CommitName> for fvd_engine::CommitMode {
    fn from(name: CommitName) -> fvd_engine::CommitMode {
        match name {
            CommitName::Group => fvd_engine::CommitMode::Group,
            CommitName::Sync => fvd_engine::CommitMode::Sync,
        }
    }
}

/// How trace requests are issued.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ReplayMode {
    /// At the recorded times, multiplied by `time_scale` (0.01 replays 100× faster).
    OpenLoop {
        /// Multiplier of recorded times.
        time_scale: f64,
        /// Cap on requests in flight (further requests wait).
        max_in_flight: u32,
    },
    /// As fast as completions allow, `queue_depth` requests in flight.
    ClosedLoop {
        /// Requests in flight.
        queue_depth: u32,
    },
}

/// The guest workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum WorkloadConfig {
    /// Replay a block trace as recorded: every request at its offset (the disk must hold the
    /// trace's extent, checked before the run) unless `wrap` folds offsets onto the disk.
    Trace {
        /// Trace file (absolute), or [`crate::trace::BUILTIN_CLOUDPHYSICS`].
        path: String,
        /// Its format.
        format: TraceFormat,
        /// How requests are issued.
        mode: ReplayMode,
        /// Fold requests beyond the disk onto it (counted in the summary as `folded`).
        #[serde(default)]
        wrap: bool,
    },
    /// An explicit list of requests (what `fvdsim shrink` writes, so a failure file stands alone).
    Inline {
        /// The requests, in issue order.
        requests: Vec<InlineRequest>,
        /// How they are issued.
        mode: ReplayMode,
    },
    /// qemu-test style (`fvd-v1.md` §5.3): `testers` in parallel, reads and writes, half of the
    /// offsets near another tester's request so requests overlap and race.
    Random {
        /// Parallel testers, one request in flight each.
        testers: u32,
        /// Requests in all.
        requests: u64,
        /// Longest request, sectors.
        max_sectors: u64,
        /// Reads per mille of requests (the rest are writes).
        read_per_mille: u32,
    },
}

/// One request of an inline workload: `[time_ns, first_sector, sectors, "r" | "w"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineRequest(pub u64, pub u64, pub u64, pub crate::trace::TraceOp);

impl From<InlineRequest> for crate::trace::TraceRequest {
    fn from(r: InlineRequest) -> crate::trace::TraceRequest {
        crate::trace::TraceRequest { time_ns: r.0, offset_sectors: r.1, len_sectors: r.2, op: r.3 }
    }
}

impl From<crate::trace::TraceRequest> for InlineRequest {
    fn from(r: crate::trace::TraceRequest) -> InlineRequest {
        InlineRequest(r.time_ns, r.offset_sectors, r.len_sectors, r.op)
    }
}

/// The image under test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Virtual disk size, bytes.
    pub size_bytes: u64,
    /// Base image size, bytes (0: none). Procedural, non-zero content.
    pub base_bytes: u64,
    /// Compact image.
    pub compact: bool,
    /// Block size, bytes.
    pub block_bytes: u64,
    /// Chunk size, bytes (compact).
    pub chunk_bytes: u64,
    /// Storage grow unit, bytes (compact).
    pub grow_unit_bytes: u64,
    /// Journal size, bytes.
    pub journal_bytes: u64,
    /// Data in a separate file.
    pub separate_data: bool,
    /// Device profile of the image disk (`nvme`, `ssd`, `hdd`, `nfs`).
    pub image_device: String,
    /// Device profile of the base image disk.
    pub base_device: String,
}

/// Where a crash is aimed: a random event, or a named point of one format's protocol. A named
/// crash point is the engine's [`ProgressPoint`] (what `Env::progress` reports: an event such as
/// "journal write submitted") with, where one event serves two points, a filter on its detail
/// (`in-use-set` and `in-use-cleared` are one event); [`CrashPoint::progress`] is the one
/// conversion. Crash points are named for the state the disk is in (`journal-write-in-flight`),
/// progress points for what the engine did; the crash names are the ones files and flags use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrashPoint {
    /// At a random event of the event log (any format).
    RandomEvent,
    /// FVD: while a journal write is in flight.
    JournalWriteInFlight,
    /// FVD: after a journal write landed, before the guest was acknowledged.
    JournalWriteLanded,
    /// FVD: during a journal recycle (just after it began).
    MidRecycle,
    /// FVD: right after the bitmap and table were written home.
    MetadataWrittenHome,
    /// FVD: during a copy-on-read or prefetch store.
    CopyStore,
    /// FVD group commit: right after a write's change was queued (before its acknowledgement).
    RecordQueued,
    /// FVD group commit: while the data flush before a batch is in flight.
    CommitDataFlush,
    /// FVD group commit: a batch is durable, the guest flush not yet acknowledged.
    CommitLanded,
    /// QED: the header with NEED_CHECK set was written, before its flush (the first allocating
    /// write of a clean period: the run closes the image cleanly and reopens it to get there).
    NeedCheckSet,
    /// QED: an L2 table write (a new table or changed entries) is in flight, among the first
    /// allocations after a clean close and reopen (a new clean period).
    L2UpdateInFlight,
    /// QED: an L1 entry write is in flight (a new L2 table is being linked).
    L1UpdateInFlight,
    /// Parallels: a BAT write is in flight (at a guest flush).
    BatUpdateInFlight,
    /// Parallels: the header with `in_use` set was written at a writable open, before its flush.
    /// The run closes the image cleanly and reopens it to get there.
    InUseSet,
    /// Parallels: the header with `in_use` cleared was written at close, before the flush and
    /// the truncation. The run closes the image cleanly (and reopens it) to get there.
    InUseCleared,
}

impl CrashPoint {
    /// Every crash point, in declaration order.
    pub const ALL: [CrashPoint; 15] = [
        CrashPoint::RandomEvent,
        CrashPoint::JournalWriteInFlight,
        CrashPoint::JournalWriteLanded,
        CrashPoint::MidRecycle,
        CrashPoint::MetadataWrittenHome,
        CrashPoint::CopyStore,
        CrashPoint::RecordQueued,
        CrashPoint::CommitDataFlush,
        CrashPoint::CommitLanded,
        CrashPoint::NeedCheckSet,
        CrashPoint::L2UpdateInFlight,
        CrashPoint::L1UpdateInFlight,
        CrashPoint::BatUpdateInFlight,
        CrashPoint::InUseSet,
        CrashPoint::InUseCleared,
    ];

    /// The points an FVD run may aim at (the random event and FVD's named points), in
    /// declaration order. The swarm draws from this list (and maps the draw onto another
    /// format's points with [`CrashPoint::for_format`]), so a seed's FVD draw never changes
    /// when another format gains a point.
    pub const FVD: [CrashPoint; 9] = [
        CrashPoint::RandomEvent,
        CrashPoint::JournalWriteInFlight,
        CrashPoint::JournalWriteLanded,
        CrashPoint::MidRecycle,
        CrashPoint::MetadataWrittenHome,
        CrashPoint::CopyStore,
        CrashPoint::RecordQueued,
        CrashPoint::CommitDataFlush,
        CrashPoint::CommitLanded,
    ];

    /// QED's named points.
    pub const QED: [CrashPoint; 3] =
        [CrashPoint::NeedCheckSet, CrashPoint::L2UpdateInFlight, CrashPoint::L1UpdateInFlight];

    /// Parallels' named points.
    pub const PARALLELS: [CrashPoint; 3] =
        [CrashPoint::BatUpdateInFlight, CrashPoint::InUseSet, CrashPoint::InUseCleared];

    /// The kebab-case name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::RandomEvent => "random-event",
            CrashPoint::JournalWriteInFlight => "journal-write-in-flight",
            CrashPoint::JournalWriteLanded => "journal-write-landed",
            CrashPoint::MidRecycle => "mid-recycle",
            CrashPoint::MetadataWrittenHome => "metadata-written-home",
            CrashPoint::CopyStore => "copy-store",
            CrashPoint::RecordQueued => "record-queued",
            CrashPoint::CommitDataFlush => "commit-data-flush",
            CrashPoint::CommitLanded => "commit-landed",
            CrashPoint::NeedCheckSet => "need-check-set",
            CrashPoint::L2UpdateInFlight => "l2-update-in-flight",
            CrashPoint::L1UpdateInFlight => "l1-update-in-flight",
            CrashPoint::BatUpdateInFlight => "bat-update-in-flight",
            CrashPoint::InUseSet => "in-use-set",
            CrashPoint::InUseCleared => "in-use-cleared",
        }
    }

    /// The format whose engine reports this point (`None`: the random event, any format).
    pub fn format(self) -> Option<FormatName> {
        if self == CrashPoint::RandomEvent {
            None
        } else if CrashPoint::QED.contains(&self) {
            Some(FormatName::Qed)
        } else if CrashPoint::PARALLELS.contains(&self) {
            Some(FormatName::Parallels)
        } else {
            Some(FormatName::Fvd)
        }
    }

    /// The progress report that fires this point, with the detail it must carry when the point
    /// shares its report with another (`in_use` set and cleared); `None` for the random event.
    pub fn progress(self) -> Option<(ProgressPoint, Option<u64>)> {
        Some(match self {
            CrashPoint::RandomEvent => return None,
            CrashPoint::JournalWriteInFlight => (ProgressPoint::JournalWriteSubmitted, None),
            CrashPoint::JournalWriteLanded => (ProgressPoint::JournalWriteCompleted, None),
            CrashPoint::MidRecycle => (ProgressPoint::RecycleBegin, None),
            CrashPoint::MetadataWrittenHome => (ProgressPoint::MetadataWrittenHome, None),
            CrashPoint::CopyStore => (ProgressPoint::CopyStored, None),
            CrashPoint::RecordQueued => (ProgressPoint::RecordQueued, None),
            CrashPoint::CommitDataFlush => (ProgressPoint::CommitDataFlushSubmitted, None),
            CrashPoint::CommitLanded => (ProgressPoint::CommitDurable, None),
            CrashPoint::NeedCheckSet => (ProgressPoint::NeedCheckWritten, Some(1)),
            CrashPoint::L2UpdateInFlight => (ProgressPoint::L2UpdateSubmitted, None),
            CrashPoint::L1UpdateInFlight => (ProgressPoint::L1UpdateSubmitted, None),
            CrashPoint::BatUpdateInFlight => (ProgressPoint::BatWriteSubmitted, None),
            CrashPoint::InUseSet => (ProgressPoint::InUseWritten, Some(1)),
            CrashPoint::InUseCleared => (ProgressPoint::InUseWritten, Some(0)),
        })
    }

    /// True for the points a run gets to by closing the image cleanly at the planned request and
    /// reopening it (the workload then carries on): Parallels' `in_use` written at close and at
    /// open; QED's NEED_CHECK, set once per clean period (the first allocating write after an
    /// open, a clean close or, in QEMU, the idle timer); and QED's L2 updates, so that they are
    /// the first allocations of a clean period, where NEED_CHECK has just been set (QEMU's driver
    /// leaves that header write unflushed: see docs/qed.md).
    pub fn at_restart(self) -> bool {
        matches!(
            self,
            CrashPoint::InUseSet | CrashPoint::InUseCleared | CrashPoint::NeedCheckSet | CrashPoint::L2UpdateInFlight
        )
    }

    /// True for points that come seldom in a workload (once per recycle, commit batch, clean
    /// period or new L2 table): their crash waits two segments before falling back, and aims at
    /// the first occurrence.
    pub fn is_rare(self) -> bool {
        matches!(
            self,
            CrashPoint::MidRecycle
                | CrashPoint::MetadataWrittenHome
                | CrashPoint::CopyStore
                | CrashPoint::CommitDataFlush
                | CrashPoint::CommitLanded
                | CrashPoint::NeedCheckSet
                | CrashPoint::L1UpdateInFlight
                | CrashPoint::InUseSet
                | CrashPoint::InUseCleared
        )
    }

    /// The named points of `format` (without the random event).
    pub fn named_of(format: FormatName) -> &'static [CrashPoint] {
        match format {
            FormatName::Fvd => &CrashPoint::FVD[1..],
            FormatName::Qed => &CrashPoint::QED,
            FormatName::Parallels => &CrashPoint::PARALLELS,
        }
    }

    /// `points` for a run of `format`: the random event stays; each named point of another
    /// format becomes one of `format`'s points, in turn (the i-th named point becomes the
    /// format's (i mod n)-th), so every scenario aims at each format's own protocol.
    pub fn for_format(points: &[CrashPoint], format: FormatName) -> Vec<CrashPoint> {
        let own = CrashPoint::named_of(format);
        let mut named = 0usize;
        points
            .iter()
            .map(|point| match point.format() {
                None => *point,
                Some(f) if f == format => *point,
                Some(_) => {
                    named += 1;
                    own[(named - 1) % own.len()]
                }
            })
            .collect()
    }

    /// True for the mid-journal points: a journal write or a group commit in flight or landed.
    pub fn is_mid_journal(self) -> bool {
        matches!(
            self,
            CrashPoint::JournalWriteInFlight
                | CrashPoint::JournalWriteLanded
                | CrashPoint::CommitDataFlush
                | CrashPoint::CommitLanded
        )
    }
}

/// One planned crash.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CrashSpec {
    /// Armed once this many workload requests were issued.
    pub after_request: u64,
    /// Where it is aimed.
    pub point: CrashPoint,
    /// Which occurrence of the point after arming (1-based), or events after arming for
    /// `random-event`.
    pub occurrence: u64,
    /// How unflushed writes resolve.
    #[serde(with = "crate::schema::sim::crash_strategy")]
    pub strategy: CrashStrategy,
    /// The disk's atomic unit.
    #[serde(with = "crate::schema::sim::atomic_unit")]
    pub atomic_unit: AtomicUnit,
}

/// The crash plan: either drawn from the seed or explicit (repro and shrink files carry it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashConfig {
    /// Crashes to draw when `schedule` is absent.
    pub count: u32,
    /// Points to cycle through when drawing (in order, with random occurrences).
    pub points: Vec<CrashPoint>,
    /// Atomic units to draw from.
    #[serde(with = "crate::schema::sim::atomic_units")]
    pub atomic_units: Vec<AtomicUnit>,
    /// The explicit schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Vec<CrashSpec>>,
}

/// Whole-image prefetch settings of a run (`fvd-v1.md` §4.1 units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchSpec {
    /// Delay after open, ms.
    pub start_delay_ms: u64,
    /// Slots.
    pub slots: u32,
    /// Bytes per slot.
    pub bytes_per_prefetch: u64,
    /// Measurement window, ms of accumulated latency (reads and writes).
    pub measure_ms: u64,
    /// Moving-average weight of the past, percent.
    pub alpha_percent: u32,
    /// Minimum read and write throughput, KB/s.
    pub min_kb_s: u64,
    /// Longest pause, ms.
    pub throttle_ms: u64,
    /// AIMD policy instead of v1's: target guest mean latency, µs (None: v1's policy).
    #[serde(default)]
    pub aimd_target_us: Option<u64>,
    /// AIMD: highest rate, KB/s.
    #[serde(default = "aimd_max")]
    pub aimd_max_kb_s: u64,
    /// AIMD: the additive step per window without a latency breach, KB/s (`None`: a sixteenth
    /// of the highest rate, at least 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aimd_step_kb_s: Option<u64>,
    /// Wait for prefetch to finish after the workload (a stall is a liveness failure); otherwise
    /// it is stopped at close.
    #[serde(default = "yes")]
    pub wait_for_finish: bool,
}

fn yes() -> bool {
    true
}

fn aimd_max() -> u64 {
    1 << 20
}

impl PrefetchSpec {
    /// [`fvd_engine::PrefetchConfig::v1`] (where v1's numbers are written) with a 200 ms start
    /// delay, as a run's settings.
    pub fn v1_defaults() -> PrefetchSpec {
        let v1 = fvd_engine::PrefetchConfig::v1(200);
        debug_assert_eq!(v1.read_measure_ms, v1.write_measure_ms, "one window for both sides");
        debug_assert_eq!(v1.min_read_kb_s, v1.min_write_kb_s, "one minimum for both sides");
        PrefetchSpec {
            start_delay_ms: v1.start_delay_ms,
            slots: v1.slots,
            bytes_per_prefetch: v1.bytes_per_prefetch,
            measure_ms: v1.read_measure_ms,
            alpha_percent: v1.alpha_percent,
            min_kb_s: v1.min_read_kb_s,
            throttle_ms: v1.throttle_ms,
            aimd_target_us: None,
            aimd_max_kb_s: aimd_max(),
            aimd_step_kb_s: None,
            wait_for_finish: true,
        }
    }

    /// The engine's settings.
    pub fn engine_config(&self) -> fvd_engine::PrefetchConfig {
        fvd_engine::PrefetchConfig {
            start_delay_ms: self.start_delay_ms,
            slots: self.slots,
            bytes_per_prefetch: self.bytes_per_prefetch,
            read_measure_ms: self.measure_ms,
            write_measure_ms: self.measure_ms,
            alpha_percent: self.alpha_percent,
            min_read_kb_s: self.min_kb_s,
            min_write_kb_s: self.min_kb_s,
            throttle_ms: self.throttle_ms,
            policy: match self.aimd_target_us {
                None => fvd_engine::PrefetchPolicy::V1,
                Some(target) => fvd_engine::PrefetchPolicy::Aimd {
                    target_guest_latency_us: target,
                    window_ms: 100,
                    step_kb_s: self.aimd_step_kb_s.unwrap_or((self.aimd_max_kb_s / 16).max(64)),
                    min_kb_s: (self.aimd_max_kb_s / 64).max(64),
                    max_kb_s: self.aimd_max_kb_s,
                },
            },
        }
    }
}

/// Everything that determines a run (with the seed and the build).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Scenario name.
    pub scenario: String,
    /// Master seed.
    pub seed: Seed,
    /// Engine profile.
    pub profile: ProfileName,
    /// Commit mode of the hardened profile (v1 ignores it).
    #[serde(default)]
    pub commit: CommitName,
    /// Workload.
    pub workload: WorkloadConfig,
    /// Image.
    pub image: ImageConfig,
    /// Crashes.
    pub crashes: CrashConfig,
    /// Faults injected on the image disk.
    #[serde(default, with = "crate::schema::sim::fault_plan")]
    pub faults: FaultPlan,
    /// A guest flush after every this many requests (0: never).
    pub flush_every_requests: u64,
    /// Stop after this many workload requests (shrink uses it; `None`: all).
    #[serde(default)]
    pub max_requests: Option<u64>,
    /// Touched sectors sampled for verification after each crash, beyond every unsettled one.
    pub verify_sample_sectors: u64,
    /// Copy-on-read.
    #[serde(default)]
    pub copy_on_read: bool,
    /// Whole-image prefetch.
    #[serde(default)]
    pub prefetch: Option<PrefetchSpec>,
    /// The image format (FVD unless said: failure files from before formats existed are FVD).
    #[serde(default)]
    pub format: super::guest::FormatName,
    /// After every crash, judge the crash state with QEMU's tools before recovery and compare
    /// our recovery with QEMU's repair (`fvdsim run --qemu-judge`, QED and Parallels; needs
    /// `qemu-img`). Runs on host files: the simulated run is the same with or without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qemu_judge: bool,
}

impl RunConfig {
    /// What the run is called in the summary, the report title and failure file names: the
    /// trace's file name (without `.gz`/`.csv`/`.txt`) when it replays a trace of the user's,
    /// the scenario otherwise. Only `[A-Za-z0-9._-]`, so it is safe in a file name.
    pub fn name(&self) -> String {
        let name = match &self.workload {
            WorkloadConfig::Trace { path, .. } if path != crate::trace::BUILTIN_CLOUDPHYSICS => {
                let file = std::path::Path::new(path).file_name().map_or(path.clone(), |f| f.to_string_lossy().into());
                let mut stem = file.as_str();
                for suffix in [".gz", ".csv", ".txt", ".trace"] {
                    stem = stem.strip_suffix(suffix).unwrap_or(stem);
                }
                stem.to_string()
            }
            _ => self.scenario.clone(),
        };
        // Named for its format unless the scenario already is (`qed`, `qed-backing`, `parallels`).
        let name = match self.format {
            super::guest::FormatName::Fvd => name,
            other if name.split('-').any(|word| word == other.name()) => name,
            other => format!("{name}-{other}"),
        };
        let clean: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        if clean.is_empty() { "trace".into() } else { clean }
    }

    /// True for the scenarios whose crash states are enumerated (`fvdsim run` runs them through
    /// `campaign::enumerate`): those with `exhaustive` among the words of their name.
    pub fn enumerates(&self) -> bool {
        self.scenario.split('-').any(|word| word == "exhaustive")
    }

    /// This configuration on another image format, with what that format cannot do removed or
    /// translated: named crash points become the format's own ([`CrashPoint::for_format`]); QED
    /// and Parallels have no prefetch, copy-on-read or separate data file, and Parallels no base
    /// image.
    pub fn on_format(mut self, format: super::guest::FormatName) -> RunConfig {
        self.format = format;
        self.crashes.points = CrashPoint::for_format(&self.crashes.points, format);
        if format == FormatName::Fvd {
            return self;
        }
        if format == FormatName::Qed && self.image.base_bytes > 0 {
            // QED never sets NEED_CHECK over a backing file: aim at the L2 update instead.
            for point in &mut self.crashes.points {
                if *point == CrashPoint::NeedCheckSet {
                    *point = CrashPoint::L2UpdateInFlight;
                }
            }
        }
        self.prefetch = None;
        self.copy_on_read = false;
        self.image.separate_data = false;
        if format == FormatName::Parallels {
            self.image.base_bytes = 0;
        }
        self
    }

    /// One line describing a trace workload (path, format, replay mode), if it is one.
    pub fn workload_line(&self) -> Option<String> {
        match &self.workload {
            WorkloadConfig::Trace { path, format, mode, wrap } => Some(format!(
                "trace {path} ({} format), {}{}",
                format.name(),
                match mode {
                    ReplayMode::OpenLoop { time_scale, max_in_flight } => {
                        format!("open loop at time scale {time_scale}, at most {max_in_flight} in flight")
                    }
                    ReplayMode::ClosedLoop { queue_depth } => format!("closed loop at queue depth {queue_depth}"),
                },
                if *wrap { ", offsets folded onto the disk (--wrap)" } else { "" }
            )),
            WorkloadConfig::Inline { requests, mode } => Some(format!(
                "{} inline requests, {}",
                requests.len(),
                match mode {
                    ReplayMode::OpenLoop { time_scale, .. } => format!("open loop at time scale {time_scale}"),
                    ReplayMode::ClosedLoop { queue_depth } => format!("closed loop at queue depth {queue_depth}"),
                }
            )),
            WorkloadConfig::Random { .. } => None,
        }
    }
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A named scenario: name, one-line description, and its configuration for a seed.
pub struct Scenario {
    /// Name for `--scenario`.
    pub name: &'static str,
    /// One line for `fvdsim scenarios`.
    pub description: &'static str,
    /// Builds the configuration.
    pub build: fn(Seed) -> RunConfig,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

fn mixed_points() -> Vec<CrashPoint> {
    // At least half mid-journal (a record or a group commit in flight or just landed).
    vec![
        CrashPoint::JournalWriteInFlight,
        CrashPoint::JournalWriteLanded,
        CrashPoint::RandomEvent,
        CrashPoint::CommitDataFlush,
        CrashPoint::MidRecycle,
        CrashPoint::CommitLanded,
        CrashPoint::MetadataWrittenHome,
        CrashPoint::RecordQueued,
    ]
}

fn cloudphysics(seed: Seed) -> RunConfig {
    RunConfig {
        scenario: "cloudphysics".into(),
        seed,
        profile: ProfileName::Hardened,
        commit: CommitName::Group,
        workload: WorkloadConfig::Trace {
            path: crate::trace::BUILTIN_CLOUDPHYSICS.into(),
            format: TraceFormat::Cloudphysics,
            mode: ReplayMode::OpenLoop { time_scale: 0.01, max_in_flight: 64 },
            wrap: false,
        },
        image: ImageConfig {
            size_bytes: 32 * GIB,
            base_bytes: 16 * GIB,
            compact: true,
            block_bytes: 7680,       // 15 sectors: not a power of two, as test-fvd.sh used
            chunk_bytes: 7680 * 256, // 1.875 MiB: 17,477 chunks, so a small journal is legal
            grow_unit_bytes: 7680 * 256 * 32,
            journal_bytes: 80 << 10, // 160 sectors, just above the minimum: frequent recycles
            separate_data: false,
            image_device: "ssd".into(),
            base_device: "nfs".into(),
        },
        crashes: CrashConfig {
            count: 24,
            points: mixed_points(),
            atomic_units: vec![AtomicUnit::Sector, AtomicUnit::Page],
            schedule: None,
        },
        faults: FaultPlan::default(),
        flush_every_requests: 64,
        max_requests: None,
        verify_sample_sectors: 20_000,
        copy_on_read: false,
        // A late, throttled prefetch from the NFS base for the report's prefetch chart; stopped at
        // close (copying all 16 GiB would take minutes and as much memory).
        prefetch: Some(PrefetchSpec {
            start_delay_ms: 1_000,
            bytes_per_prefetch: 256 << 10,
            aimd_target_us: Some(20_000),
            aimd_max_kb_s: 8 << 10,
            wait_for_finish: false,
            ..PrefetchSpec::v1_defaults()
        }),
        format: super::guest::FormatName::Fvd,
        qemu_judge: false,
    }
}

fn random(seed: Seed) -> RunConfig {
    RunConfig {
        scenario: "random".into(),
        seed,
        profile: ProfileName::Hardened,
        commit: CommitName::Group,
        workload: WorkloadConfig::Random { testers: 8, requests: 20_000, max_sectors: 128, read_per_mille: 450 },
        image: ImageConfig {
            size_bytes: 64 * MIB,
            base_bytes: 48 * MIB,
            compact: true,
            block_bytes: 4096,
            chunk_bytes: 64 << 10,
            grow_unit_bytes: MIB,
            journal_bytes: 64 << 10,
            separate_data: false,
            image_device: "nvme".into(),
            base_device: "nfs".into(),
        },
        crashes: CrashConfig {
            count: 20,
            points: mixed_points(),
            atomic_units: vec![AtomicUnit::Sector, AtomicUnit::Page],
            schedule: None,
        },
        faults: FaultPlan::default(),
        flush_every_requests: 50,
        max_requests: None,
        verify_sample_sectors: 4096,
        copy_on_read: false,
        prefetch: None,
        format: super::guest::FormatName::Fvd,
        qemu_judge: false,
    }
}

fn random_faults(seed: Seed) -> RunConfig {
    let mut config = random(seed);
    config.scenario = "random-faults".into();
    config.faults = FaultPlan {
        read_error_per_million: 2_000,
        write_error_per_million: 2_000,
        flush_error_per_million: 5_000,
        ..FaultPlan::default()
    };
    config
}

fn torn(seed: Seed) -> RunConfig {
    let mut config = random(seed);
    config.scenario = "torn".into();
    config.crashes.atomic_units = vec![AtomicUnit::None];
    config.image.separate_data = true;
    config.image.block_bytes = 7680;
    config.image.chunk_bytes = 7680 * 8;
    config
}

fn tiny_journal(seed: Seed) -> RunConfig {
    let mut config = random(seed);
    config.scenario = "tiny-journal".into();
    config.image.journal_bytes = 4096;
    config.crashes.points = vec![
        CrashPoint::MidRecycle,
        CrashPoint::MetadataWrittenHome,
        CrashPoint::JournalWriteInFlight,
        CrashPoint::JournalWriteLanded,
    ];
    config
}

fn plain(seed: Seed) -> RunConfig {
    let mut config = random(seed);
    config.scenario = "plain".into();
    config.image.compact = false;
    config.image.block_bytes = 15872; // 31 sectors
    config
}

fn exhaustive(seed: Seed) -> RunConfig {
    let mut config = random(seed);
    config.scenario = "exhaustive".into();
    config.workload = WorkloadConfig::Random { testers: 4, requests: 48, max_sectors: 24, read_per_mille: 300 };
    config.image.journal_bytes = 4096;
    config.flush_every_requests = 6;
    config.verify_sample_sectors = 256;
    config
}

fn prefetch(seed: Seed) -> RunConfig {
    let mut config = random(seed);
    config.scenario = "prefetch".into();
    config.copy_on_read = true;
    config.prefetch = Some(PrefetchSpec {
        bytes_per_prefetch: 256 << 10,
        min_kb_s: 40_000,
        throttle_ms: 50,
        ..PrefetchSpec::v1_defaults()
    });
    config.crashes.points = vec![
        CrashPoint::CopyStore,
        CrashPoint::JournalWriteInFlight,
        CrashPoint::CopyStore,
        CrashPoint::JournalWriteLanded,
        CrashPoint::RandomEvent,
    ];
    config
}

fn prefetch_dense(seed: Seed) -> RunConfig {
    // Dense overlapping writes over a small base while prefetch runs: blocks skipped under a lock
    // are marked copied by v1's completion (fvd-v1.md §4.4, flaw 2).
    let mut config = random(seed);
    config.scenario = "prefetch-dense".into();
    config.image.size_bytes = 4 << 20;
    config.image.base_bytes = 2 << 20;
    config.image.grow_unit_bytes = 256 << 10;
    config.workload = WorkloadConfig::Random { testers: 8, requests: 4_000, max_sectors: 16, read_per_mille: 100 };
    config.prefetch = Some(PrefetchSpec {
        start_delay_ms: 2,
        slots: 8,
        bytes_per_prefetch: 8 << 10,
        measure_ms: 1,
        min_kb_s: 1 << 30,
        throttle_ms: 3,
        ..PrefetchSpec::v1_defaults()
    });
    config.crashes.count = 0;
    config.verify_sample_sectors = 8192;
    config
}

fn prefetch_stall(seed: Seed) -> RunConfig {
    // Slots discarded while a pause is pending (fvd-v1.md §4.4, flaw 1). The image writer must fall
    // behind the base reader for both slots to be full: a fast base, a slow image.
    let mut config = prefetch_dense(seed);
    config.scenario = "prefetch-stall".into();
    config.image.base_device = "nvme".into();
    config.image.image_device = "nfs".into();
    config
}

fn prefetch_slow_image(seed: Seed) -> RunConfig {
    // prefetch-dense on a slow image disk: prefetch finishes while guest writes commit.
    let mut config = prefetch_dense(seed);
    config.scenario = "prefetch-slow-image".into();
    config.image.image_device = "hdd".into();
    config
}

fn prefetch_faults(seed: Seed) -> RunConfig {
    // Guest writes that fail while prefetch skips their blocks: v1 marks them copied anyway.
    let mut config = prefetch_dense(seed);
    config.scenario = "prefetch-faults".into();
    config.prefetch = Some(PrefetchSpec {
        start_delay_ms: 5,
        slots: 2,
        bytes_per_prefetch: 32 << 10,
        throttle_ms: 0,
        ..PrefetchSpec::v1_defaults()
    });
    config.workload = WorkloadConfig::Random { testers: 8, requests: 4_000, max_sectors: 16, read_per_mille: 50 };
    config.faults = FaultPlan { write_error_per_million: 200_000, ..FaultPlan::default() };
    config
}

fn rare_flush(seed: Seed) -> RunConfig {
    // Group commit's hardest case: many allocating writes between rare guest flushes, so batches
    // are large, background commits run, and crashes land at every step of a batch.
    let mut config = random(seed);
    config.scenario = "rare-flush".into();
    config.workload = WorkloadConfig::Random { testers: 8, requests: 20_000, max_sectors: 64, read_per_mille: 200 };
    config.image.size_bytes = 256 * MIB;
    config.image.base_bytes = 192 * MIB;
    config.image.journal_bytes = 32 << 10;
    config.flush_every_requests = 2_000;
    config.crashes.points = vec![
        CrashPoint::RecordQueued,
        CrashPoint::CommitDataFlush,
        CrashPoint::JournalWriteInFlight,
        CrashPoint::CommitLanded,
        CrashPoint::JournalWriteLanded,
        CrashPoint::RandomEvent,
        CrashPoint::MidRecycle,
    ];
    config
}

fn exhaustive_torn(seed: Seed) -> RunConfig {
    let mut config = exhaustive(seed);
    config.scenario = "exhaustive-torn".into();
    config.crashes.atomic_units = vec![AtomicUnit::None];
    config
}

fn qed(seed: Seed) -> RunConfig {
    let mut config = random(seed);
    config.scenario = "qed".into();
    // 4 KiB clusters and QEMU's 4-cluster tables: 8 MiB per L2 table, 2,048 of them, so new
    // tables (and L1 updates) keep coming through the run; no backing file, so every clean period
    // starts by setting NEED_CHECK.
    config.image.size_bytes = 16 * GIB;
    config.image.base_bytes = 0;
    config.image.block_bytes = 4096;
    config.image.chunk_bytes = MIB;
    config.image.journal_bytes = 256 << 10;
    config.crashes.points = vec![
        CrashPoint::NeedCheckSet,
        CrashPoint::L2UpdateInFlight,
        CrashPoint::RandomEvent,
        CrashPoint::L1UpdateInFlight,
        CrashPoint::L2UpdateInFlight,
    ];
    config.on_format(super::guest::FormatName::Qed)
}

fn qed_exhaustive(seed: Seed) -> RunConfig {
    let mut config = exhaustive(seed);
    config.scenario = "qed-exhaustive".into();
    // No backing file (so NEED_CHECK guards every allocation), 4 KiB clusters: eight L2 tables
    // of 8 MiB, so a short run allocates both new tables and entries in existing ones.
    config.image.base_bytes = 0;
    config.image.block_bytes = 4096;
    config.on_format(super::guest::FormatName::Qed)
}

fn qed_backing(seed: Seed) -> RunConfig {
    let mut config = random(seed);
    config.scenario = "qed-backing".into();
    // 64 KiB clusters (QEMU's default) over a raw backing file: partial-cluster writes copy the
    // rest of the cluster from it, and the data flush before the L2 update is what keeps them.
    // 4 GiB (65,536 clusters) so that allocations go on all run; two L2 tables of 2 GiB, so L1
    // updates are the `qed` scenario's business.
    config.image.size_bytes = 4 * GIB;
    config.image.base_bytes = 3 * GIB;
    config.image.block_bytes = 64 << 10;
    config.image.chunk_bytes = MIB;
    config.image.journal_bytes = 256 << 10;
    config.crashes.points = vec![CrashPoint::L2UpdateInFlight, CrashPoint::RandomEvent];
    config.on_format(super::guest::FormatName::Qed)
}

fn parallels(seed: Seed) -> RunConfig {
    let mut config = random(seed);
    config.scenario = "parallels".into();
    // 64 KiB clusters; the BAT is written at guest flushes, `in_use` at each open and close (the
    // run closes and reopens the image to crash there).
    config.image.size_bytes = 256 * MIB;
    config.image.base_bytes = 0;
    config.image.block_bytes = 64 << 10;
    config.crashes.points = vec![
        CrashPoint::BatUpdateInFlight,
        CrashPoint::InUseCleared,
        CrashPoint::RandomEvent,
        CrashPoint::InUseSet,
        CrashPoint::BatUpdateInFlight,
    ];
    config.on_format(super::guest::FormatName::Parallels)
}

/// Every named scenario.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "cloudphysics",
        description: "the main job: the CloudPhysics trace, compact image over a 16 GiB base, tiny journal, 24 crashes (most mid-journal)",
        build: cloudphysics,
    },
    Scenario {
        name: "random",
        description: "qemu-test style: 8 racing testers on a 64 MiB compact image, 20 crashes",
        build: random,
    },
    Scenario {
        name: "random-faults",
        description: "random, with injected read, write and flush errors on the image disk",
        build: random_faults,
    },
    Scenario {
        name: "torn",
        description: "random, with no atomic unit: writes tear inside sectors at crashes; separate data file",
        build: torn,
    },
    Scenario {
        name: "tiny-journal",
        description: "random with a one-page journal: recycles all the time, crashes aimed at recycles",
        build: tiny_journal,
    },
    Scenario {
        name: "plain",
        description: "random on a non-compact image with 31-sector blocks (bitmap only)",
        build: plain,
    },
    Scenario {
        name: "prefetch",
        description: "random with copy-on-read and whole-image prefetch from an NFS base, crashes aimed at copy stores",
        build: prefetch,
    },
    Scenario {
        name: "prefetch-dense",
        description: "prefetch under dense overlapping writes (v1 marks blocks it skipped as copied)",
        build: prefetch_dense,
    },
    Scenario {
        name: "prefetch-stall",
        description: "prefetch-dense with a fast base and a slow image, constant pause requests (v1 stalls: exit 2)",
        build: prefetch_stall,
    },
    Scenario {
        name: "prefetch-slow-image",
        description: "prefetch-dense on an hdd image: prefetch finishes while guest writes commit",
        build: prefetch_slow_image,
    },
    Scenario {
        name: "prefetch-faults",
        description: "prefetch while guest writes fail (v1 marks the blocks it skipped as copied)",
        build: prefetch_faults,
    },
    Scenario {
        name: "rare-flush",
        description: "group commit's hard case: allocating writes with a guest flush only every 2,000 requests, crashes at each commit step",
        build: rare_flush,
    },
    Scenario {
        name: "exhaustive-torn",
        description: "exhaustive, with no atomic unit: every unflushed sector may tear at any byte",
        build: exhaustive_torn,
    },
    Scenario {
        name: "exhaustive",
        description: "a short random run crashed at every one of its events in turn (clean, prefix, random), each recovered and verified",
        build: exhaustive,
    },
    Scenario {
        name: "qed",
        description: "QED, no backing file, 4 KiB clusters on a 16 GiB disk: crashes at need-check set, L2 and L1 updates in flight",
        build: qed,
    },
    Scenario {
        name: "qed-exhaustive",
        description: "exhaustive on QED without a backing file: every moment of a short run, many crash states each",
        build: qed_exhaustive,
    },
    Scenario {
        name: "qed-backing",
        description: "QED with 64 KiB clusters over a 3 GiB raw backing file: copy-on-write of partial clusters, crashes at L2 updates",
        build: qed_backing,
    },
    Scenario {
        name: "parallels",
        description: "Parallels with 64 KiB clusters: crashes at BAT writes and at in_use set and cleared (clean close and reopen)",
        build: parallels,
    },
];

/// The scenario called `name`.
pub fn scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// Draws the crash schedule for `config` over `total_requests` from the seed's `crash-plan`
/// stream. Crash `i` of `n` is armed at a request drawn from `[i·total/n, (i+1)·total/n)`, so
/// the plan spreads over the whole workload and holds every crash asked for, however short the
/// workload (several crashes may share a request; each is armed after the previous recovered).
/// An empty workload holds none.
pub fn draw_schedule(config: &RunConfig, total_requests: u64) -> Vec<CrashSpec> {
    if let Some(schedule) = &config.crashes.schedule {
        return schedule.clone();
    }
    let mut rng = fvd_sim::SimRng::stream(config.seed, fvd_sim::streams::CRASH_PLAN);
    let count = u64::from(config.crashes.count);
    if count == 0 || total_requests == 0 || config.crashes.points.is_empty() {
        return Vec::new();
    }
    (0..count)
        .map(|i| {
            let point = config.crashes.points[(i % config.crashes.points.len() as u64) as usize];
            let occurrence = match point {
                CrashPoint::RandomEvent => rng.range_inclusive(1, 5_000),
                CrashPoint::JournalWriteInFlight | CrashPoint::JournalWriteLanded => rng.range_inclusive(1, 4),
                CrashPoint::RecordQueued => rng.range_inclusive(1, 16),
                CrashPoint::L2UpdateInFlight | CrashPoint::BatUpdateInFlight => rng.range_inclusive(1, 4),
                // Rare points: the first one after arming.
                CrashPoint::MidRecycle
                | CrashPoint::MetadataWrittenHome
                | CrashPoint::CopyStore
                | CrashPoint::CommitDataFlush
                | CrashPoint::CommitLanded
                | CrashPoint::NeedCheckSet
                | CrashPoint::L1UpdateInFlight
                | CrashPoint::InUseSet
                | CrashPoint::InUseCleared => 1,
            };
            let strategy = match rng.below(4) {
                0 => CrashStrategy::Prefix,
                1 => CrashStrategy::Clean,
                _ => CrashStrategy::RANDOM,
            };
            // u128: total × count stays exact for any u64 total and u32 count.
            let slot = (u128::from(i) * u128::from(total_requests) + u128::from(rng.below(total_requests)))
                / u128::from(count);
            CrashSpec {
                after_request: u64::try_from(slot).expect("below total_requests"),
                point,
                occurrence,
                strategy,
                atomic_unit: *rng.pick(&config.crashes.atomic_units),
            }
        })
        .collect()
}
