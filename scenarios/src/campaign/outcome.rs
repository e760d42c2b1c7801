//! What a run produces: its counters, crashes, failure and outcome, and what a watcher sees
//! while it runs.

use std::collections::BTreeMap;

use fvd_reports::latency::LatencyRecorder;
use serde::{Deserialize, Serialize};

use super::config::{CrashPoint, CrashSpec, RunConfig};
use crate::trace::TraceRequest;

/// What a run tells whoever watches it (a progress bar, periodic lines), every
/// [`PROGRESS_EVERY_REQUESTS`] requests and at each crash. It cannot change the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Workload requests issued so far.
    pub issued: u64,
    /// Workload requests in all.
    pub total: u64,
    /// Crashes applied so far.
    pub crashes: usize,
    /// Crashes planned.
    pub crashes_planned: usize,
    /// Simulated time, seconds.
    pub simulated_seconds: f64,
    /// True once a failure was found.
    pub failed: bool,
}

/// How often [`Progress`] is reported, in requests.
pub const PROGRESS_EVERY_REQUESTS: u64 = 1000;

/// A watcher of a run: called with progress; returning `false` stops the run where it stands
/// (Ctrl-C), which is then reported as interrupted.
pub type Watcher = Box<dyn FnMut(&Progress) -> bool>;

/// What kind of failure a run found. Exit codes: safety, check and invariant 1; liveness 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// A read or a post-crash sector held a value no rule allows.
    WrongData,
    /// Recovery failed, or the engine's check found corruption.
    Check,
    /// An engine or simulator assertion failed (a panic).
    Invariant,
    /// A guest request never completed (stall) or the virtual time limit passed.
    Liveness,
    /// The engine returned an I/O error although no fault was injected.
    UnexpectedError,
}

impl FailureClass {
    /// The process exit code for this class.
    pub fn exit_code(self) -> u8 {
        match self {
            FailureClass::Liveness => 2,
            _ => 1,
        }
    }
}

/// One sector that held a value no rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectorFailure {
    /// Guest sector.
    pub sector: u64,
    /// The values it could legally hold, decoded.
    pub allowed: Vec<String>,
    /// What it held, decoded.
    pub actual: String,
}

/// A failure, with what is needed to understand it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The class.
    pub class: FailureClass,
    /// One line.
    pub message: String,
    /// Failing sectors (at most 16).
    pub sectors: Vec<SectorFailure>,
    /// Workload requests issued when it was found.
    pub at_request: u64,
    /// Crashes applied before it was found.
    pub after_crashes: usize,
}

/// One applied crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashSummary {
    /// The plan entry.
    pub spec: CrashSpec,
    /// The point it fired at (a named point may fall back to a random event).
    pub fired_at: CrashPoint,
    /// True when the named point did not come in time and the crash fell back to a random event.
    pub fallback: bool,
    /// Virtual time, ns.
    pub at_ns: u64,
    /// Workload requests issued before it.
    pub at_request: u64,
    /// Unflushed writes resolved: kept, dropped, torn units.
    pub units_kept: u64,
    /// Units dropped.
    pub units_dropped: u64,
    /// Units torn.
    pub units_torn: u64,
    /// Sectors verified after recovery.
    pub sectors_verified: u64,
    /// Journal sectors replayed by the recovery.
    pub journal_sectors_replayed: u64,
    /// The crash state applied: every unflushed write of the image disk and the fate of each of
    /// its atomic units (`K` kept, `D` dropped, `T` torn).
    #[serde(with = "crate::schema::sim::write_fates")]
    pub writes: Vec<fvd_sim::WriteFate>,
}

/// Counters of a run.
///
/// Every issued request ends one way: `completed + failed + dropped_at_crash` equals `issued`
/// once the workload ended (a failure halts the run with requests still in flight).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Workload requests issued (taken from the workload, whether or not the engine saw them
    /// before a crash).
    pub issued: u64,
    /// Workload requests that completed successfully.
    pub completed: u64,
    /// Workload requests that failed (injected I/O errors).
    pub failed: u64,
    /// Workload requests lost to a crash: in flight, or waiting for their time, when it came.
    pub dropped_at_crash: u64,
    /// Trace requests whose offsets were folded onto the virtual disk (`--wrap`).
    pub folded: u64,
    /// Trace requests stamped earlier than one before them (replayed in file order).
    pub out_of_order: u64,
    /// Trace requests longer than the longest request issued, split into pieces.
    pub split: u64,
    /// Crashes the plan asked for.
    pub crashes_planned: u64,
    /// Why fewer crashes were applied than planned, if they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crashes_note: Option<String>,
    /// True if the run was stopped early (Ctrl-C): every figure covers what ran.
    #[serde(default)]
    pub interrupted: bool,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Guest flushes completed.
    pub flushes: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Requests that failed with an injected I/O error.
    pub io_errors: u64,
    /// Crashes by the point they fired at.
    pub crashes_by_point: BTreeMap<String, u64>,
    /// Sectors checked by reads during the run and after crashes.
    pub sectors_verified: u64,
    /// Simulated time, seconds.
    pub simulated_seconds: f64,
    /// Journal recycles (all opens).
    pub recycles: u64,
    /// Journal writes (all opens).
    pub journal_writes: u64,
    /// Copy-on-write bytes (all opens).
    pub copy_on_write_bytes: u64,
    /// What the run exercised: engine paths, crash points, configuration dimensions
    /// (`super::coverage::PATHS`).
    #[serde(default)]
    pub coverage: super::coverage::Coverage,
    /// Memory the simulated image and data disks hold at the end (their pages and volatile
    /// caches), bytes: grows with distinct foreign data written, not with copies of the base.
    #[serde(default)]
    pub disk_resident_bytes: u64,
    /// What the QEMU judge saw (`--qemu-judge`), if it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<super::qemu_judge::QemuJudgeSummary>,
}

/// What tells one crash state from another of the same workload: the image's and the data
/// file's content hashes right after the crash ([`fvd_sim::SimDisk::image_hash`]; 0 with no data
/// file) and the oracle's crash generation at that moment (what it allows then). Crash-state
/// enumeration counts distinct states by the same key.
pub type CrashStateKey = (u64, u64, u64);

/// Everything a run produced.
pub struct RunOutcome {
    /// The configuration, with the crash schedule made explicit.
    pub config: RunConfig,
    /// Counters.
    pub summary: RunSummary,
    /// The first failure, if any.
    pub failure: Option<Failure>,
    /// Crashes applied.
    pub crashes: Vec<CrashSummary>,
    /// Simulated latencies.
    pub latency: LatencyRecorder,
    /// Rolling hash of the event log.
    pub log_hash: u64,
    /// Hash of the final image disk content.
    pub image_hash: u64,
    /// The last events of the log.
    pub last_events: Vec<String>,
    /// Every workload request as it was issued, by request index (what `fvdsim shrink` turns
    /// into an inline workload).
    pub issued_requests: Vec<TraceRequest>,
    /// Events logged from the first workload request to the end of the workload.
    pub summary_events: u64,
    /// Prefetch telemetry at the end of the workload, if prefetch ran.
    pub prefetch: Option<fvd_engine::PrefetchTelemetry>,
    /// Each applied crash's state key, in order (see [`CrashStateKey`]; recorded by
    /// [`super::run::run_recording_crash_states`] only, empty otherwise): how
    /// many distinct crash states a set of runs reached.
    pub crash_state_keys: Vec<CrashStateKey>,
}

impl std::fmt::Debug for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOutcome")
            .field("summary", &self.summary)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

/// An error in the configuration or its input (exit code 3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Why a phase of a run stopped it: the step value every phase of the run loop returns instead
/// of recording a failure and returning (`run.rs` records it in one place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stop {
    /// A finding: recorded as the run's failure.
    Fail {
        /// Its class.
        class: FailureClass,
        /// What happened.
        message: String,
        /// The sectors that hold data no rule allows (wrong-data findings).
        sectors: Vec<SectorFailure>,
    },
    /// The workload already recorded its failure, or the watcher stopped the run.
    Recorded,
}

impl Stop {
    /// A finding without sectors.
    pub(super) fn fail(class: FailureClass, message: impl Into<String>) -> Stop {
        Stop::Fail { class, message: message.into(), sectors: Vec::new() }
    }
}
