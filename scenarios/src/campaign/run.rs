//! Runs one configuration: builds the world, replays the workload through the engine with the
//! oracle watching every request, crashes the world where the plan says, recovers, verifies,
//! carries on, and reports.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use fvd_engine::{CreateOptions, FvdImage, JournalSize, ProgressPoint, check};
use fvd_reports::latency::LatencyRecorder;
use fvd_sim::{CrashPlan, DeviceProfile, FaultPlan, RunError, SimHandle, SimRng};
use serde::{Deserialize, Serialize};

use super::config::{CrashPoint, CrashSpec, ReplayMode, RunConfig, WorkloadConfig, draw_schedule};
use crate::oracle::{ORIGINAL, Oracle, TORN};
use crate::rig::{Rig, RigConfig};
use crate::stamp::{SECTOR, SectorValue, decode, original, stamp};
use crate::trace::{TraceOp, TraceRequest};

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
}

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

/// The workload's requests, resolved.
enum Requests {
    Trace(Rc<Vec<TraceRequest>>, ReplayMode, TraceFacts),
    Random { testers: u32, total: u64, max_sectors: u64, read_per_mille: u32 },
}

/// What loading the trace noticed.
#[derive(Debug, Clone, Copy, Default)]
struct TraceFacts {
    out_of_order: u64,
    split: u64,
    wrap: bool,
}

impl Requests {
    fn total(&self) -> u64 {
        match self {
            Requests::Trace(trace, _, _) => trace.len() as u64,
            Requests::Random { total, .. } => *total,
        }
    }
}

/// The state every workload task shares.
struct Driver {
    oracle: Oracle,
    seed: u64,
    disk_sectors: u64,
    base: Option<(fvd_sim::ProceduralContent, u64)>,
    next_request: u64,
    total: u64,
    flush_every: u64,
    faults_on: bool,
    failure: Option<Failure>,
    summary: RunSummary,
    latency: LatencyRecorder,
    rng: SimRng,
    in_flight: BTreeMap<u64, (u64, u64)>,
    /// Requests as issued, by index.
    issued_requests: BTreeMap<u64, TraceRequest>,
    /// Fold trace offsets that do not fit onto the disk (`--wrap`); otherwise they were refused
    /// before the run.
    wrap: bool,
    crashes_applied: usize,
    crashes_planned: usize,
    watcher: Option<Watcher>,
    arm: Option<Arming>,
    fired: Option<CrashPoint>,
    /// Event count when the first workload request was claimed.
    first_event: u64,
    /// Events from the first workload request to the end of the workload.
    workload_events: u64,
    prefetch: Option<fvd_engine::PrefetchTelemetry>,
}

/// A crash waiting for its request count, then for its point.
#[derive(Debug, Clone, Copy)]
struct Arming {
    spec: CrashSpec,
    armed: bool,
    fallback_at_request: u64,
}

type Shared = Rc<RefCell<Driver>>;

impl Driver {
    /// Tells the watcher; false if it asks to stop.
    fn report_progress(&mut self, handle: &SimHandle) -> bool {
        let progress = Progress {
            issued: self.summary.issued,
            total: self.total,
            crashes: self.crashes_applied,
            crashes_planned: self.crashes_planned,
            simulated_seconds: handle.now_ns() as f64 / 1e9,
            failed: self.failure.is_some(),
        };
        self.watcher.as_mut().is_none_or(|watch| watch(&progress))
    }

    /// A request ended: counts it.
    fn ended(&mut self, ok: bool) {
        if ok {
            self.summary.completed += 1;
        } else {
            self.summary.failed += 1;
        }
    }

    /// A crash: every issued request that has not ended is dropped.
    fn drop_outstanding(&mut self) {
        let s = &mut self.summary;
        s.dropped_at_crash = s.issued - s.completed - s.failed;
    }

    fn fail(&mut self, handle: &SimHandle, class: FailureClass, message: String, sectors: Vec<SectorFailure>) {
        if self.failure.is_none() {
            self.failure = Some(Failure {
                class,
                message,
                sectors,
                at_request: self.summary.issued,
                after_crashes: self.crashes_applied,
            });
        }
        handle.halt();
    }

    fn describe(&self, sector: u64, value: u32) -> String {
        if value == TORN {
            return "torn by an earlier crash (any content)".into();
        }
        if value == ORIGINAL {
            return if self.base.is_some_and(|(_, n)| sector < n) {
                "original (base image data)".into()
            } else {
                "original (zeros)".into()
            };
        }
        let (first, count) = self.oracle.write_range(value);
        format!("write #{value} (sectors {first}..{})", first + count)
    }

    /// Checks `bytes` read from `sector` against `allowed`; returns the value found.
    fn judge(&self, sector: u64, bytes: &[u8], allowed: &[u32]) -> Result<u32, SectorFailure> {
        let found = match decode(self.seed, sector, bytes, self.base.as_ref().map(|(c, n)| (c, *n))) {
            SectorValue::Original => Some(ORIGINAL),
            SectorValue::Stamped { write_id, sector: meant } if meant == sector && write_id <= u64::from(u32::MAX) => {
                Some(write_id as u32)
            }
            _ => None,
        };
        if allowed.contains(&TORN) {
            return Ok(found.unwrap_or(TORN));
        }
        match found {
            Some(value) if allowed.contains(&value) => Ok(value),
            _ => Err(SectorFailure {
                sector,
                allowed: allowed.iter().map(|v| self.describe(sector, *v)).collect(),
                actual: decode(self.seed, sector, bytes, self.base.as_ref().map(|(c, n)| (c, *n))).to_string(),
            }),
        }
    }
}

fn device_profile(name: &str) -> Result<DeviceProfile, ConfigError> {
    DeviceProfile::named(name).ok_or_else(|| {
        ConfigError(format!("unknown device profile {name:?} (known: {})", DeviceProfile::BUILT_IN.join(", ")))
    })
}

/// The engine's create options for `config` (the rig adds the base image and data file names).
fn create_options(config: &RunConfig) -> CreateOptions {
    let image = &config.image;
    let mut create = CreateOptions::new(image.size_bytes);
    create.compact = image.compact;
    create.block_size = Some(image.block_bytes);
    create.chunk_size = Some(image.chunk_bytes);
    create.storage_grow_unit = Some(image.grow_unit_bytes);
    create.journal = JournalSize::Bytes(image.journal_bytes);
    create.profile = config.profile.into();
    create
}

/// Checks everything about `config` that would otherwise fail inside the run: the image options
/// the engine would refuse, device profile names, the random workload's parameters.
///
/// Errors: [`ConfigError`] naming the option.
pub fn validate(config: &RunConfig) -> Result<(), ConfigError> {
    let mut create = create_options(config);
    if config.image.base_bytes > 0 {
        create.base = Some(fvd_engine::BaseImage {
            name: "base.raw".into(),
            format: "raw".into(),
            len_bytes: config.image.base_bytes,
        });
    }
    if config.image.separate_data {
        create.data_file = Some("image.data".into());
    }
    create.validate().map_err(|e| ConfigError(format!("image: {e}")))?;
    device_profile(&config.image.image_device)?;
    device_profile(&config.image.base_device)?;
    if let WorkloadConfig::Random { testers, max_sectors, .. } = &config.workload
        && (*testers == 0 || *max_sectors == 0)
    {
        return Err(ConfigError("random workload: testers and max_sectors must be positive".into()));
    }
    Ok(())
}

fn build_rig(config: &RunConfig, log_tail: usize) -> Result<Rig, ConfigError> {
    validate(config)?;
    let image = &config.image;
    let mut create = CreateOptions::new(image.size_bytes);
    create.compact = image.compact;
    create.block_size = Some(image.block_bytes);
    create.chunk_size = Some(image.chunk_bytes);
    create.storage_grow_unit = Some(image.grow_unit_bytes);
    create.journal = JournalSize::Bytes(image.journal_bytes);
    create.profile = config.profile.into();
    let rig = Rig::new(
        config.seed,
        RigConfig {
            create,
            base_bytes: image.base_bytes,
            image_profile: device_profile(&image.image_device)?,
            base_profile: device_profile(&image.base_device)?,
            separate_data: image.separate_data,
            log_tail,
        },
    );
    Ok(rig)
}

fn load_requests(config: &RunConfig) -> Result<Requests, ConfigError> {
    Ok(match &config.workload {
        WorkloadConfig::Trace { path, format, mode, wrap } => {
            let trace = crate::trace::load(std::path::Path::new(path), *format)
                .map_err(|e| ConfigError(format!("trace: {e}")))?;
            let disk_sectors = config.image.size_bytes / SECTOR;
            if !*wrap && trace.extent_sectors > disk_sectors {
                let (index, request) = trace
                    .requests
                    .iter()
                    .enumerate()
                    .find(|(_, r)| r.offset_sectors + r.len_sectors > disk_sectors)
                    .expect("a request reaches the extent");
                return Err(ConfigError(format!(
                    "trace {path}: request {} (sectors {}..{}) does not fit the {}-byte virtual disk; the trace \
                     reaches byte {}. Leave out --size to size the disk to the trace, or fold offsets with --wrap",
                    index + 1,
                    request.offset_sectors,
                    request.offset_sectors + request.len_sectors,
                    config.image.size_bytes,
                    trace.extent_sectors * SECTOR
                )));
            }
            let facts = TraceFacts { out_of_order: trace.out_of_order, split: trace.split, wrap: *wrap };
            Requests::Trace(Rc::new(trace.requests), *mode, facts)
        }
        WorkloadConfig::Inline { requests, mode } => {
            let disk_sectors = config.image.size_bytes / SECTOR;
            if let Some((index, r)) = requests.iter().enumerate().find(|(_, r)| {
                r.2 == 0 || r.2 > crate::trace::MAX_REQUEST_BYTES / SECTOR || r.1.saturating_add(r.2) > disk_sectors
            }) {
                return Err(ConfigError(format!(
                    "inline request {} (sectors {}..{}) is empty, too long or beyond the {}-byte disk",
                    index + 1,
                    r.1,
                    r.1.saturating_add(r.2),
                    config.image.size_bytes
                )));
            }
            let requests: Vec<TraceRequest> = requests.iter().map(|r| (*r).into()).collect();
            Requests::Trace(Rc::new(requests), *mode, TraceFacts::default())
        }
        WorkloadConfig::Random { testers, requests, max_sectors, read_per_mille } => {
            if *testers == 0 || *max_sectors == 0 {
                return Err(ConfigError("random workload: testers and max_sectors must be positive".into()));
            }
            Requests::Random {
                testers: *testers,
                total: *requests,
                max_sectors: *max_sectors,
                read_per_mille: *read_per_mille,
            }
        }
    })
}

/// Runs `config`. Errors only for bad configuration or input; every finding is in the outcome.
pub fn run(config: &RunConfig) -> Result<RunOutcome, ConfigError> {
    run_with(config, DEFAULT_LOG_TAIL)
}

/// Events kept for failure files by default.
pub const DEFAULT_LOG_TAIL: usize = 256;

/// [`run`], keeping the last `log_tail` events for the outcome (a debugging aid: it does not
/// change the run).
pub fn run_with(config: &RunConfig, log_tail: usize) -> Result<RunOutcome, ConfigError> {
    run_watched(config, log_tail, None)
}

/// [`run_with`], telling `watcher` of progress (which may stop the run: Ctrl-C).
pub fn run_watched(config: &RunConfig, log_tail: usize, watcher: Option<Watcher>) -> Result<RunOutcome, ConfigError> {
    let requests = load_requests(config)?;
    let rig = build_rig(config, log_tail)?;
    let total = config.max_requests.map_or(requests.total(), |m| m.min(requests.total()));
    let mut config = config.clone();
    let schedule: Vec<CrashSpec> = draw_schedule(&config, total);
    let crashes_planned = match &config.crashes.schedule {
        Some(explicit) => explicit.len(),
        None => config.crashes.count as usize,
    };
    config.crashes.schedule = Some(schedule.clone());
    let facts = match &requests {
        Requests::Trace(_, _, facts) => *facts,
        Requests::Random { .. } => TraceFacts::default(),
    };
    let seed = config.seed;
    let driver = Rc::new(RefCell::new(Driver {
        oracle: Oracle::new(),
        seed: seed.0,
        disk_sectors: config.image.size_bytes / SECTOR,
        base: rig.base_content.map(|c| (c, config.image.base_bytes.min(config.image.size_bytes) / SECTOR)),
        next_request: 0,
        total,
        flush_every: config.flush_every_requests,
        faults_on: !config.faults.is_empty(),
        failure: None,
        summary: RunSummary {
            out_of_order: facts.out_of_order,
            split: facts.split,
            crashes_planned: crashes_planned as u64,
            ..RunSummary::default()
        },
        latency: LatencyRecorder::new(1_000_000_000),
        rng: SimRng::stream(seed, fvd_sim::streams::WORKLOAD),
        in_flight: BTreeMap::new(),
        issued_requests: BTreeMap::new(),
        wrap: facts.wrap,
        crashes_applied: 0,
        crashes_planned,
        watcher,
        arm: None,
        fired: None,
        first_event: 0,
        workload_events: 0,
        prefetch: None,
    }));
    let mut crashes = Vec::new();
    let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        campaign(&config, &rig, &requests, &schedule, &driver, &mut crashes)
    }));
    if let Err(panic) = body {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "panic".into());
        let mut d = driver.borrow_mut();
        if d.failure.is_none() {
            let at_request = d.summary.issued;
            let after_crashes = d.crashes_applied;
            d.failure = Some(Failure {
                class: FailureClass::Invariant,
                message: format!("assertion failed: {message}"),
                sectors: Vec::new(),
                at_request,
                after_crashes,
            });
        }
    }
    let mut d = driver.borrow_mut();
    d.summary.simulated_seconds = rig.sim.now_ns() as f64 / 1e9;
    super::coverage::add_config(&mut d.summary.coverage, &config);
    let io_errors = d.summary.io_errors;
    super::coverage::add(&mut d.summary.coverage, "guest: request failed (injected I/O error)", io_errors);
    d.summary.disk_resident_bytes =
        rig.image.resident_bytes() + rig.data.as_ref().map_or(0, fvd_sim::SimDisk::resident_bytes);
    if crashes.len() < crashes_planned && d.failure.is_none() && !d.summary.interrupted {
        d.summary.crashes_note = Some(format!(
            "{} of {crashes_planned} planned crashes applied: {}",
            crashes.len(),
            if total == 0 { "the workload has no requests".to_string() } else { "the plan held fewer".to_string() }
        ));
    }
    let last_events = rig.sim.with_log(|log| log.tail().map(|e| e.to_string()).collect());
    let latency = std::mem::replace(&mut d.latency, LatencyRecorder::new(1));
    Ok(RunOutcome {
        config,
        summary: d.summary.clone(),
        failure: d.failure.clone(),
        crashes,
        latency,
        log_hash: rig.sim.log_hash(),
        image_hash: rig.image.image_hash(),
        last_events,
        issued_requests: std::mem::take(&mut d.issued_requests).into_values().collect(),
        summary_events: d.workload_events,
        prefetch: d.prefetch.clone(),
    })
}

fn add_stats(driver: &Shared, image: &FvdImage) {
    let stats = image.stats();
    let telemetry = image.prefetch_telemetry();
    let mut d = driver.borrow_mut();
    if let Some(t) = telemetry {
        // Prefetch restarts after every recovery: keep every open's activity.
        d.prefetch = Some(match d.prefetch.take() {
            None => t,
            Some(mut all) => {
                all.phase = t.phase;
                all.started_ns = all.started_ns.or(t.started_ns);
                all.finished_ns = t.finished_ns.or(all.finished_ns);
                all.pauses.extend(t.pauses);
                all.samples.extend(t.samples);
                all.bytes_copied += t.bytes_copied;
                all.bytes_read += t.bytes_read;
                all.bytes_discarded += t.bytes_discarded;
                all
            }
        });
    }
    d.summary.recycles += stats.recycles;
    d.summary.journal_writes += stats.journal_writes;
    d.summary.copy_on_write_bytes += stats.copy_on_write_bytes;
    super::coverage::add_engine(&mut d.summary.coverage, &stats);
}

/// The whole run; returns early (with the failure recorded in the driver) on the first finding.
fn campaign(
    config: &RunConfig,
    rig: &Rig,
    requests: &Requests,
    schedule: &[CrashSpec],
    driver: &Shared,
    crashes: &mut Vec<CrashSummary>,
) {
    let profile = config.profile.into();
    let handle = rig.sim.handle();
    if let Err(error) = rig.create_image() {
        driver.borrow_mut().fail(&handle, FailureClass::Check, format!("create failed: {error}"), Vec::new());
        return;
    }
    let open_options = fvd_engine::OpenOptions {
        read_only: false,
        profile,
        commit: config.commit.into(),
        copy_on_read: Some(config.copy_on_read),
        prefetch: config.prefetch.map(|p| p.engine_config()),
    };
    let mut image = match rig.open_with(open_options) {
        Ok(image) => image,
        Err(error) => {
            return driver.borrow_mut().fail(&handle, FailureClass::Check, format!("open failed: {error}"), Vec::new());
        }
    };
    rig.image.set_faults(config.faults.clone());
    let mut pending: std::collections::VecDeque<CrashSpec> = schedule.iter().copied().collect();
    loop {
        {
            let mut d = driver.borrow_mut();
            d.arm = pending.front().map(|spec| {
                // Recycles are rare where rewrites take the fast path: give them two segments.
                let rare = matches!(
                    spec.point,
                    CrashPoint::MidRecycle
                        | CrashPoint::MetadataWrittenHome
                        | CrashPoint::CopyStore
                        | CrashPoint::CommitDataFlush
                        | CrashPoint::CommitLanded
                );
                let window = fallback_window(d.total, schedule.len()) * if rare { 2 } else { 1 };
                Arming { spec: *spec, armed: false, fallback_at_request: spec.after_request + window }
            });
            d.fired = None;
        }
        let outcome = run_segment(rig, requests, driver, &image);
        if driver.borrow().failure.is_some() || driver.borrow().summary.interrupted {
            return;
        }
        let mut at_workload_end = false;
        match outcome {
            Ok(()) if pending.is_empty() => break,
            Ok(()) => {
                // The workload ended before this crash fired (its point never came, or the plan
                // put it in the last requests): crash the world as it stands, so every planned
                // crash is applied.
                let mut d = driver.borrow_mut();
                d.arm = None;
                d.fired = Some(CrashPoint::RandomEvent);
                at_workload_end = true;
            }
            Err(RunError::Halted(_)) => {}
            Err(error @ (RunError::Stall(_) | RunError::TimeLimit(_))) => {
                return driver.borrow_mut().fail(
                    &handle,
                    FailureClass::Liveness,
                    format!("liveness: {error}"),
                    Vec::new(),
                );
            }
        }
        // A crash fired.
        let spec = pending.pop_front().expect("a crash fired only when one was pending");
        let fired_at = driver.borrow().fired.unwrap_or(CrashPoint::RandomEvent);
        add_stats(driver, &image);
        let record = rig.crash(CrashPlan { strategy: spec.strategy, atomic_unit: spec.atomic_unit });
        let (kept, dropped, torn) = record.unit_counts();
        let at_request = {
            let mut d = driver.borrow_mut();
            d.oracle.crashed();
            d.in_flight.clear();
            d.drop_outstanding();
            d.crashes_applied += 1;
            let key = if at_workload_end {
                format!("at the end of the workload (no {} came)", spec.point.name())
            } else if fired_at == spec.point {
                fired_at.name().to_string()
            } else {
                format!("{} (no {} came)", fired_at.name(), spec.point.name())
            };
            *d.summary.crashes_by_point.entry(key).or_default() += 1;
            d.summary.issued
        };
        if !driver.borrow_mut().report_progress(&handle) {
            driver.borrow_mut().summary.interrupted = true;
            return;
        }
        // Recovery runs without injected faults: the plan is about the workload's requests.
        rig.image.set_faults(FaultPlan::default());
        image = match rig.open_with(open_options) {
            Ok(image) => image,
            Err(error) => {
                let message = format!(
                    "recovery after crash {} ({} at request {at_request}) failed: {error}",
                    crashes.len() + 1,
                    fired_at.name()
                );
                return driver.borrow_mut().fail(&handle, FailureClass::Check, message, Vec::new());
            }
        };
        let replayed = image.stats().recovered_sectors;
        {
            let mut d = driver.borrow_mut();
            let path = if replayed > 0 { "recovery: journal replayed" } else { "recovery: nothing to replay" };
            super::coverage::add(&mut d.summary.coverage, path, 1);
            let key = super::coverage::crash_key(fired_at, at_workload_end);
            *d.summary.coverage.entry(key).or_default() += 1;
        }
        let verified = match verify_after_crash(
            rig,
            &image,
            driver,
            config.verify_sample_sectors,
            spec.atomic_unit == fvd_sim::AtomicUnit::None,
        ) {
            Ok(verified) => verified,
            Err(()) => return,
        };
        if !check_image(rig, driver, profile, &format!("after crash {}", crashes.len() + 1)) {
            return;
        }
        image.assert_invariants();
        crashes.push(CrashSummary {
            spec,
            fired_at,
            fallback: fired_at != spec.point,
            at_ns: record.at_ns,
            at_request,
            units_kept: kept,
            units_dropped: dropped,
            units_torn: torn,
            sectors_verified: verified,
            journal_sectors_replayed: replayed,
            writes: record.writes,
        });
        rig.image.set_faults(config.faults.clone());
    }
    {
        let mut d = driver.borrow_mut();
        d.workload_events = rig.sim.event_count().saturating_sub(d.first_event);
    }
    // The workload finished: disarm any crash that did not fire, flush, close cleanly, check.
    rig.sim.clear_progress_hook();
    rig.sim.halt_after_events(None);
    if config.prefetch.is_some_and(|p| p.wait_for_finish) {
        // Prefetch must finish: a stall (nothing left to wake anyone) is a liveness failure, and
        // so is ten minutes of virtual time without a byte copied (a livelock). A slow prefetch
        // that keeps copying (a large base on a slow disk with small slots) may take hours.
        const WINDOW_NS: u64 = 600_000_000_000;
        const MAX_WINDOWS: u32 = 200;
        let mut copied = image.stats().prefetch_bytes;
        let mut waited = Ok(());
        for _ in 0..MAX_WINDOWS {
            rig.sim.set_time_limit_ns(Some(rig.sim.now_ns() + WINDOW_NS));
            let waiting = image.clone();
            waited = rig.sim.run(async move { waiting.wait_prefetch().await });
            rig.sim.set_time_limit_ns(None);
            let now_copied = image.stats().prefetch_bytes;
            match &waited {
                Err(RunError::TimeLimit(_)) if now_copied > copied => copied = now_copied,
                _ => break,
            }
        }
        if let Err(error) = waited {
            add_stats(driver, &image);
            return driver.borrow_mut().fail(
                &handle,
                FailureClass::Liveness,
                format!("prefetch never finished: {error}"),
                Vec::new(),
            );
        }
        // With every block in the image, the whole base range must still read its base data
        // (verified without injected faults, as after a recovery: the plan is about the workload).
        rig.image.set_faults(FaultPlan::default());
        if let Err(()) = verify_after_crash(rig, &image, driver, config.verify_sample_sectors, false) {
            return;
        }
    }
    rig.image.set_faults(FaultPlan::default());
    let closing = image.clone();
    let closed = rig.sim.run(async move {
        closing.flush().await?;
        closing.assert_invariants();
        closing.close().await
    });
    add_stats(driver, &image);
    match closed {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            return driver.borrow_mut().fail(
                &handle,
                FailureClass::UnexpectedError,
                format!("final flush and close failed: {error}"),
                Vec::new(),
            );
        }
        Err(error) => {
            return driver.borrow_mut().fail(
                &handle,
                FailureClass::Liveness,
                format!("liveness at close: {error}"),
                Vec::new(),
            );
        }
    }
    check_image(rig, driver, profile, "after the clean close");
}

/// How long an armed named point may take to come before the crash falls back to a random event:
/// one segment of the plan.
fn fallback_window(total: u64, crashes: usize) -> u64 {
    (total / (crashes as u64 + 1)).max(50)
}

/// Runs the workload until it ends, a crash fires or a failure halts the world.
fn run_segment(rig: &Rig, requests: &Requests, driver: &Shared, image: &FvdImage) -> Result<(), RunError> {
    let handle = rig.sim.handle();
    let image = image.clone();
    let driver = Rc::clone(driver);
    match requests {
        Requests::Random { testers, max_sectors, read_per_mille, .. } => {
            let (testers, max_sectors, read_per_mille) = (*testers, *max_sectors, *read_per_mille);
            rig.sim.run(async move {
                let lanes: Vec<_> = (0..u64::from(testers))
                    .map(|lane| {
                        handle.spawn(
                            "tester",
                            random_lane(
                                lane,
                                Rc::clone(&driver),
                                image.clone(),
                                handle.clone(),
                                max_sectors,
                                read_per_mille,
                            ),
                        )
                    })
                    .collect();
                for lane in lanes {
                    lane.await;
                }
            })
        }
        Requests::Trace(trace, ReplayMode::ClosedLoop { queue_depth }, _) => {
            let (trace, depth) = (Rc::clone(trace), *queue_depth);
            rig.sim.run(async move {
                let lanes: Vec<_> = (0..u64::from(depth.max(1)))
                    .map(|lane| {
                        handle.spawn(
                            "replayer",
                            closed_lane(lane, Rc::clone(&driver), image.clone(), handle.clone(), Rc::clone(&trace)),
                        )
                    })
                    .collect();
                for lane in lanes {
                    lane.await;
                }
            })
        }
        Requests::Trace(trace, ReplayMode::OpenLoop { time_scale, max_in_flight }, _) => {
            let (trace, scale, cap) = (Rc::clone(trace), *time_scale, *max_in_flight);
            rig.sim.run(open_loop(driver, image, handle, trace, scale, cap))
        }
    }
}

/// Claims the next request index (arming a crash on the way); `None` when the workload is done.
fn claim(driver: &Shared, handle: &SimHandle) -> Option<u64> {
    let mut d = driver.borrow_mut();
    if d.next_request >= d.total || d.failure.is_some() || handle.halted() {
        return None;
    }
    let index = d.next_request;
    if index == 0 {
        d.first_event = handle.event_count();
    }
    d.next_request += 1;
    d.summary.issued += 1;
    if d.summary.issued.is_multiple_of(PROGRESS_EVERY_REQUESTS) && !d.report_progress(handle) {
        d.summary.interrupted = true;
        handle.halt();
        return None;
    }
    let mut to_arm = None;
    if let Some(arm) = d.arm.as_mut() {
        if !arm.armed && index + 1 >= arm.spec.after_request {
            arm.armed = true;
            to_arm = Some(arm.spec);
        } else if arm.armed && index >= arm.fallback_at_request && arm.spec.point != CrashPoint::RandomEvent {
            // The named point did not come: crash at a random event shortly.
            let events = 1 + d.rng.below(200);
            handle.halt_after_events(Some(handle.event_count() + events));
            d.arm = None;
            d.fired = Some(CrashPoint::RandomEvent);
        }
    }
    drop(d);
    if let Some(spec) = to_arm {
        arm_crash(driver, handle, spec);
    }
    Some(index)
}

fn arm_crash(driver: &Shared, handle: &SimHandle, spec: CrashSpec) {
    let wanted = match spec.point {
        CrashPoint::RandomEvent => {
            handle.halt_after_events(Some(handle.event_count() + spec.occurrence));
            driver.borrow_mut().fired = Some(CrashPoint::RandomEvent);
            return;
        }
        CrashPoint::JournalWriteInFlight => ProgressPoint::JournalWriteSubmitted,
        CrashPoint::JournalWriteLanded => ProgressPoint::JournalWriteCompleted,
        CrashPoint::MidRecycle => ProgressPoint::RecycleBegin,
        CrashPoint::MetadataWrittenHome => ProgressPoint::MetadataWrittenHome,
        CrashPoint::CopyStore => ProgressPoint::CopyStored,
        CrashPoint::RecordQueued => ProgressPoint::RecordQueued,
        CrashPoint::CommitDataFlush => ProgressPoint::CommitDataFlushSubmitted,
        CrashPoint::CommitLanded => ProgressPoint::CommitDurable,
    };
    let mut seen = 0u64;
    let hook_driver = Rc::clone(driver);
    handle.set_progress_hook(move |progress, _| {
        if progress.point != wanted {
            return false;
        }
        seen += 1;
        if seen < spec.occurrence {
            return false;
        }
        let mut d = hook_driver.try_borrow_mut().expect("the driver is never borrowed across engine calls");
        d.fired = Some(spec.point);
        d.arm = None;
        true
    });
}

/// One request: the oracle sees it before and after; reads are judged sector by sector.
async fn perform(
    driver: &Shared,
    image: &FvdImage,
    handle: &SimHandle,
    first: u64,
    count: u64,
    op: TraceOp,
    lane: u64,
) {
    let started = handle.now_ns();
    match op {
        TraceOp::Write => {
            let (id, seed) = {
                let mut d = driver.borrow_mut();
                d.in_flight.insert(lane, (first, count));
                (d.oracle.write_submitted(first, count), d.seed)
            };
            let mut data = vec![0u8; (count * SECTOR) as usize];
            stamp(seed, u64::from(id), first, &mut data);
            let result = image.write(first * SECTOR, &data).await;
            let mut d = driver.borrow_mut();
            d.in_flight.remove(&lane);
            d.oracle.write_completed(id, result.is_ok());
            d.latency.record("write", handle.now_ns(), handle.now_ns() - started);
            d.latency.record("guest", handle.now_ns(), handle.now_ns() - started);
            d.ended(result.is_ok());
            match result {
                Ok(()) => {
                    d.summary.writes += 1;
                    d.summary.write_bytes += count * SECTOR;
                }
                Err(error) => unexpected(&mut d, handle, &error, "write"),
            }
        }
        TraceOp::Read => {
            let ticket = {
                let mut d = driver.borrow_mut();
                d.in_flight.insert(lane, (first, count));
                d.oracle.read_submitted(first, count)
            };
            let mut buf = vec![0u8; (count * SECTOR) as usize];
            let result = image.read(first * SECTOR, &mut buf).await;
            let mut d = driver.borrow_mut();
            d.in_flight.remove(&lane);
            let allowed = d.oracle.read_completed(ticket);
            d.latency.record("read", handle.now_ns(), handle.now_ns() - started);
            d.latency.record("guest", handle.now_ns(), handle.now_ns() - started);
            d.ended(result.is_ok());
            match result {
                Ok(()) => {
                    d.summary.reads += 1;
                    d.summary.read_bytes += count * SECTOR;
                    d.summary.sectors_verified += count;
                    let bad: Vec<SectorFailure> = (0..count)
                        .filter_map(|i| {
                            d.judge(
                                first + i,
                                &buf[(i * SECTOR) as usize..((i + 1) * SECTOR) as usize],
                                &allowed[i as usize],
                            )
                            .err()
                        })
                        .take(16)
                        .collect();
                    if !bad.is_empty() {
                        let message = format!(
                            "a read of sectors {first}..{} returned data no rule allows ({} bad sector(s), first: sector {} held {})",
                            first + count,
                            bad.len(),
                            bad[0].sector,
                            bad[0].actual
                        );
                        d.fail(handle, FailureClass::WrongData, message, bad);
                    }
                }
                Err(error) => unexpected(&mut d, handle, &error, "read"),
            }
        }
    }
}

fn unexpected(d: &mut Driver, handle: &SimHandle, error: &fvd_engine::FvdError, what: &str) {
    if d.faults_on {
        d.summary.io_errors += 1;
    } else {
        d.fail(
            handle,
            FailureClass::UnexpectedError,
            format!("guest {what} failed with no fault injected: {error}"),
            Vec::new(),
        );
    }
}

async fn guest_flush(driver: &Shared, image: &FvdImage, handle: &SimHandle) {
    let started = handle.now_ns();
    let ticket = driver.borrow_mut().oracle.flush_submitted();
    let result = image.flush().await;
    let mut d = driver.borrow_mut();
    d.oracle.flush_completed(ticket, result.is_ok());
    d.latency.record("flush", handle.now_ns(), handle.now_ns() - started);
    match result {
        Ok(()) => d.summary.flushes += 1,
        Err(error) => unexpected(&mut d, handle, &error, "flush"),
    }
}

/// Folds `[offset, offset + len)` (sectors) onto the disk: random testers aim near the end.
fn wrap(driver: &Shared, offset: u64, len: u64) -> (u64, u64) {
    let sectors = driver.borrow().disk_sectors;
    let len = len.min(sectors);
    let offset = if offset.saturating_add(len) > sectors { offset % (sectors - len + 1) } else { offset };
    (offset, len)
}

/// Where a trace request goes: where it was recorded. One that does not fit was refused before
/// the run unless `--wrap` asked to fold it (and it is counted).
fn place(driver: &Shared, request: &TraceRequest) -> (u64, u64) {
    let (offset, len) = (request.offset_sectors, request.len_sectors);
    let mut d = driver.borrow_mut();
    if offset.saturating_add(len) <= d.disk_sectors {
        return (offset, len);
    }
    assert!(d.wrap, "trace requests beyond the disk are refused before the run unless --wrap");
    d.summary.folded += 1;
    drop(d);
    wrap(driver, offset, len)
}

fn record_issued(driver: &Shared, index: u64, request: TraceRequest) {
    driver.borrow_mut().issued_requests.insert(index, request);
}

fn wants_flush(driver: &Shared, index: u64) -> bool {
    let every = driver.borrow().flush_every;
    every > 0 && (index + 1).is_multiple_of(every)
}

async fn random_lane(
    lane: u64,
    driver: Shared,
    image: FvdImage,
    handle: SimHandle,
    max_sectors: u64,
    read_per_mille: u32,
) {
    while let Some(index) = claim(&driver, &handle) {
        let (first, count, op) = {
            let mut d = driver.borrow_mut();
            let op = if d.rng.below(1000) < u64::from(read_per_mille) { TraceOp::Read } else { TraceOp::Write };
            let count = d.rng.range_inclusive(1, max_sectors);
            let others: Vec<u64> = d.in_flight.iter().filter(|(l, _)| **l != lane).map(|(_, r)| r.0).collect();
            let first = if !others.is_empty() && d.rng.ratio(1, 2) {
                // Near another tester's request, so requests overlap and race (qemu-test).
                let anchor = *d.rng.pick(&others);
                (anchor + 2 * max_sectors).saturating_sub(d.rng.below(4 * max_sectors))
            } else {
                let sectors = d.disk_sectors;
                d.rng.below(sectors)
            };
            (first, count, op)
        };
        let (first, count) = wrap(&driver, first, count);
        record_issued(&driver, index, TraceRequest { time_ns: 0, offset_sectors: first, len_sectors: count, op });
        perform(&driver, &image, &handle, first, count, op, lane).await;
        if wants_flush(&driver, index) {
            guest_flush(&driver, &image, &handle).await;
        }
    }
}

async fn closed_lane(lane: u64, driver: Shared, image: FvdImage, handle: SimHandle, trace: Rc<Vec<TraceRequest>>) {
    while let Some(index) = claim(&driver, &handle) {
        let request = trace[index as usize];
        let (first, count) = place(&driver, &request);
        record_issued(&driver, index, TraceRequest { offset_sectors: first, len_sectors: count, ..request });
        perform(&driver, &image, &handle, first, count, request.op, lane).await;
        if wants_flush(&driver, index) {
            guest_flush(&driver, &image, &handle).await;
        }
    }
}

async fn open_loop(
    driver: Shared,
    image: FvdImage,
    handle: SimHandle,
    trace: Rc<Vec<TraceRequest>>,
    scale: f64,
    cap: u32,
) {
    let in_flight = Rc::new(RefCell::new(0u32));
    let origin = {
        let next = driver.borrow().next_request.min(trace.len() as u64 - 1);
        handle.now_ns().saturating_sub((trace[next as usize].time_ns as f64 * scale) as u64)
    };
    let mut lane = 0u64;
    let mut tasks = Vec::new();
    loop {
        // Respect the cap on requests in flight.
        while *in_flight.borrow() >= cap.max(1) {
            handle.sleep_ns(10_000).await;
        }
        let Some(index) = claim(&driver, &handle) else { break };
        let request = trace[index as usize];
        let due = origin.saturating_add((request.time_ns as f64 * scale) as u64);
        let now = handle.now_ns();
        if due > now {
            handle.sleep_ns(due - now).await;
        }
        let (first, count) = place(&driver, &request);
        record_issued(&driver, index, TraceRequest { offset_sectors: first, len_sectors: count, ..request });
        lane += 1;
        *in_flight.borrow_mut() += 1;
        let (d, img, h, counter) = (Rc::clone(&driver), image.clone(), handle.clone(), Rc::clone(&in_flight));
        let flush = wants_flush(&driver, index);
        tasks.push(handle.spawn("request", async move {
            perform(&d, &img, &h, first, count, request.op, lane).await;
            if flush {
                guest_flush(&d, &img, &h).await;
            }
            *counter.borrow_mut() -= 1;
        }));
        if tasks.len() > 4096 {
            tasks.retain(|t| t.try_take().is_none());
        }
    }
    for task in tasks {
        task.await;
    }
}

/// Reads back every unsettled sector and a sample of the others after a recovery; returns how
/// many were verified.
fn verify_after_crash(
    rig: &Rig,
    image: &FvdImage,
    driver: &Shared,
    sample: u64,
    torn_allowed: bool,
) -> Result<u64, ()> {
    let handle = rig.sim.handle();
    let sectors: Vec<u64> = {
        let mut d = driver.borrow_mut();
        let mut chosen: std::collections::BTreeSet<u64> = d.oracle.unsettled_sectors().into_iter().collect();
        let touched: Vec<u64> = d.oracle.touched_sectors().collect();
        if !touched.is_empty() {
            for _ in 0..sample.min(touched.len() as u64) {
                let pick = touched[d.rng.below(touched.len() as u64) as usize];
                chosen.insert(pick);
            }
        }
        for _ in 0..256 {
            let sectors = d.disk_sectors;
            let pick = d.rng.below(sectors);
            chosen.insert(pick);
        }
        chosen.into_iter().collect()
    };
    // Group into runs of consecutive sectors (at most 256 each) and read them.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &sector in &sectors {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == sector && *count < 256 => *count += 1,
            _ => runs.push((sector, 1)),
        }
    }
    let reader = image.clone();
    let read = rig.sim.run(async move {
        let mut out = Vec::with_capacity(runs.len());
        for (first, count) in runs {
            let mut buf = vec![0u8; (count * SECTOR) as usize];
            let result = reader.read(first * SECTOR, &mut buf).await;
            out.push((first, count, buf, result));
        }
        out
    });
    let results = match read {
        Ok(results) => results,
        Err(error) => {
            driver.borrow_mut().fail(
                &handle,
                FailureClass::Liveness,
                format!("liveness while verifying after a crash: {error}"),
                Vec::new(),
            );
            return Err(());
        }
    };
    let mut d = driver.borrow_mut();
    let mut bad = Vec::new();
    let mut verified = 0u64;
    for (first, count, buf, result) in results {
        if let Err(error) = result {
            d.fail(
                &handle,
                FailureClass::UnexpectedError,
                format!("verification read after a crash failed: {error}"),
                Vec::new(),
            );
            return Err(());
        }
        for i in 0..count {
            let sector = first + i;
            let bytes = &buf[(i * SECTOR) as usize..((i + 1) * SECTOR) as usize];
            let allowed = d.oracle.allowed_after_crash(sector);
            match d.judge(sector, bytes, &allowed) {
                Ok(value) => d.oracle.settle(sector, value),
                Err(_) if torn_allowed && is_byte_mix(&d, sector, bytes, &allowed) => {
                    // No atomic unit: an unflushed sector may be torn between its candidates; it
                    // holds no single value until rewritten.
                    d.oracle.settle(sector, TORN);
                }
                Err(failure) => bad.push(failure),
            }
            verified += 1;
        }
    }
    d.summary.sectors_verified += verified;
    d.oracle.settled_all();
    if !bad.is_empty() {
        let message = format!(
            "after crash {} and recovery, {} sector(s) hold data no rule allows (first: sector {} held {})",
            d.crashes_applied,
            bad.len(),
            bad[0].sector,
            bad[0].actual
        );
        bad.truncate(16);
        d.fail(&handle, FailureClass::WrongData, message, bad);
        return Err(());
    }
    Ok(verified)
}

/// True if every byte of `bytes` equals the same byte of some allowed value's content.
fn is_byte_mix(d: &Driver, sector: u64, bytes: &[u8], allowed: &[u32]) -> bool {
    if allowed.len() < 2 {
        return false;
    }
    let contents: Vec<Vec<u8>> = allowed
        .iter()
        .map(|&v| {
            let mut content = vec![0u8; SECTOR as usize];
            if v == ORIGINAL {
                original(sector, d.base.as_ref().map(|(c, n)| (c, *n)), &mut content);
            } else {
                stamp(d.seed, u64::from(v), sector, &mut content);
            }
            content
        })
        .collect();
    bytes.iter().enumerate().all(|(i, b)| contents.iter().any(|c| c[i] == *b))
}

/// Runs the engine's check; records a failure and returns false if it finds corruption.
fn check_image(rig: &Rig, driver: &Shared, profile: fvd_engine::Profile, when: &str) -> bool {
    let devices = rig.devices();
    let handle = rig.sim.handle();
    match rig.sim.run(async move { check(&devices, profile, false).await }) {
        Ok(Ok(report)) if report.is_clean() => true,
        Ok(Ok(report)) => {
            driver.borrow_mut().fail(
                &handle,
                FailureClass::Check,
                format!("check {when} found corruption: {}", report.corruptions.join("; ")),
                Vec::new(),
            );
            false
        }
        Ok(Err(error)) => {
            driver.borrow_mut().fail(
                &handle,
                FailureClass::UnexpectedError,
                format!("check {when} failed: {error}"),
                Vec::new(),
            );
            false
        }
        Err(error) => {
            driver.borrow_mut().fail(
                &handle,
                FailureClass::Liveness,
                format!("liveness in check {when}: {error}"),
                Vec::new(),
            );
            false
        }
    }
}

/// The result of crashing a short run at every one of its events.
#[derive(Debug)]
pub struct ExhaustiveOutcome {
    /// Events of the run without a crash (the crash points tried).
    pub events: u64,
    /// Crash points tried.
    pub runs: u64,
    /// The first failure and the event it crashed at, if any.
    pub failure: Option<(u64, RunOutcome)>,
}

/// Runs `config` once without crashes to count its workload events, then once per event `k`
/// with the world crashed at event `k` (clean, prefix and random strategies in turn), each
/// recovered and verified. Stops at the first failure.
pub fn run_exhaustive(
    config: &RunConfig,
    mut progress: impl FnMut(u64, u64),
) -> Result<ExhaustiveOutcome, ConfigError> {
    let mut probe = config.clone();
    probe.crashes.count = 0;
    probe.crashes.schedule = Some(Vec::new());
    let clean = run(&probe)?;
    if clean.failure.is_some() {
        return Ok(ExhaustiveOutcome { events: 0, runs: 1, failure: Some((0, clean)) });
    }
    // Events from the first request to the end of the workload (create and open come before).
    let events = clean.summary_events;
    let strategies = [fvd_sim::CrashStrategy::RANDOM, fvd_sim::CrashStrategy::Prefix, fvd_sim::CrashStrategy::Clean];
    for k in 1..=events {
        progress(k, events);
        let mut at = config.clone();
        let spec = CrashSpec {
            after_request: 0,
            point: CrashPoint::RandomEvent,
            occurrence: k,
            strategy: strategies[(k % 3) as usize],
            atomic_unit: *config.crashes.atomic_units.first().unwrap_or(&fvd_sim::AtomicUnit::Sector),
        };
        at.crashes.schedule = Some(vec![spec]);
        let outcome = run(&at)?;
        if outcome.failure.is_some() {
            return Ok(ExhaustiveOutcome { events, runs: k + 1, failure: Some((k, outcome)) });
        }
    }
    Ok(ExhaustiveOutcome { events, runs: events + 1, failure: None })
}
