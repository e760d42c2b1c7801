//! Runs one configuration: builds the world, replays the workload through the engine with the
//! oracle watching every request, crashes the world where the plan says, recovers, verifies,
//! carries on, and reports.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use fvd_engine::{CreateOptions, JournalSize};

use super::guest::{FormatName, GuestImage};
use fvd_reports::latency::LatencyRecorder;
use fvd_sim::{CrashPlan, DeviceProfile, FaultPlan, RunError, SimRng};

use super::config::{CrashPoint, CrashSpec, RunConfig, WorkloadConfig, draw_schedule};
use crate::oracle::Oracle;
use crate::rig::{Rig, RigConfig};
use crate::stamp::SECTOR_BYTES;
use crate::trace::TraceRequest;

use super::outcome::Stop;
pub use super::outcome::{
    ConfigError, CrashSummary, Failure, FailureClass, PROGRESS_EVERY_REQUESTS, Progress, RunOutcome, RunSummary,
    SectorFailure, Watcher,
};
use super::qemu_judge::QemuJudge;
use super::verify::{check_image, verify_after_crash};
use super::workload::{Arming, Driver, Requests, Shared, TraceFacts, arm_crash, run_segment};

fn device_profile(name: &str) -> Result<DeviceProfile, ConfigError> {
    DeviceProfile::named(name).ok_or_else(|| {
        ConfigError(format!("unknown device profile {name:?} (known: {})", DeviceProfile::BUILT_IN.join(", ")))
    })
}

/// Largest base image a QEMU-judged run may have.
pub const QEMU_JUDGE_MAX_BASE_BYTES: u64 = 1 << 30;

/// Most crashes a run may plan (each is a few dozen bytes and a recovery).
pub const MAX_CRASHES: u32 = 100_000;

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
    // A failure file is input too: its numbers must not size an allocation.
    if config.crashes.count > MAX_CRASHES {
        return Err(ConfigError(format!("crashes: {} is more than {MAX_CRASHES}", config.crashes.count)));
    }
    if config.crashes.count > 0
        && config.crashes.schedule.is_none()
        && (config.crashes.points.is_empty() || config.crashes.atomic_units.is_empty())
    {
        return Err(ConfigError("crashes: drawing a schedule needs at least one point and one atomic unit".into()));
    }
    if let WorkloadConfig::Random { testers, max_sectors, .. } = &config.workload
        && (*testers == 0 || *max_sectors == 0)
    {
        return Err(ConfigError("random workload: testers and max_sectors must be positive".into()));
    }
    let format = config.format;
    let named = config.crashes.points.iter().chain(config.crashes.schedule.iter().flatten().map(|s| &s.point));
    if let Some((point, owner)) = named.filter_map(|p| p.format().map(|f| (p, f))).find(|(_, f)| *f != format) {
        return Err(ConfigError(format!(
            "format {format}: crash point {} is {owner}'s (the points of {format}: {})",
            point.name(),
            CrashPoint::named_of(format).iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
        )));
    }
    if config.qemu_judge {
        if format == FormatName::Fvd {
            return Err(ConfigError(
                "--qemu-judge: QEMU has no FVD driver; judge a run of --format qed or --format parallels".into(),
            ));
        }
        if config.enumerates() {
            return Err(ConfigError(
                "--qemu-judge judges the crashes of a run, not enumerated crash states (drop --qemu-judge or pick a \
                 scenario that is not exhaustive)"
                    .into(),
            ));
        }
        // QEMU's convert writes the whole disk as it reads it after every crash (backing data
        // included): keep that bounded.
        if config.image.base_bytes > QEMU_JUDGE_MAX_BASE_BYTES {
            return Err(ConfigError(format!(
                "--qemu-judge: a {} MiB base image is more than the judge copies per crash ({} MiB): QEMU's convert \
                 writes the backing data after every crash",
                config.image.base_bytes >> 20,
                QEMU_JUDGE_MAX_BASE_BYTES >> 20
            )));
        }
        crate::qemu::QemuImg::find().map_err(|e| ConfigError(format!("--qemu-judge: {e}")))?;
    }
    if format != FormatName::Fvd {
        if config.prefetch.is_some() || config.copy_on_read || config.image.separate_data {
            return Err(ConfigError(format!("format {format}: prefetch, copy-on-read and a data file are FVD's")));
        }
        if format == FormatName::Parallels && config.image.base_bytes > 0 {
            return Err(ConfigError("format parallels: no base image (backing files are not supported yet)".into()));
        }
    }
    Ok(())
}

fn build_rig(config: &RunConfig, log_tail: usize) -> Result<Rig, ConfigError> {
    validate(config)?;
    let image = &config.image;
    let create = create_options(config);
    let rig = Rig::new(
        config.seed,
        RigConfig {
            create,
            base_bytes: image.base_bytes,
            image_profile: device_profile(&image.image_device)?,
            base_profile: device_profile(&image.base_device)?,
            separate_data: image.separate_data,
            log_tail,
            format: config.format,
        },
    );
    Ok(rig)
}

fn load_requests(config: &RunConfig) -> Result<Requests, ConfigError> {
    Ok(match &config.workload {
        WorkloadConfig::Trace { path, format, mode, wrap } => {
            let trace = crate::trace::load(std::path::Path::new(path), *format)
                .map_err(|e| ConfigError(format!("trace: {e}")))?;
            let disk_sectors = config.image.size_bytes / SECTOR_BYTES;
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
                    trace.extent_sectors * SECTOR_BYTES
                )));
            }
            let facts = TraceFacts { out_of_order: trace.out_of_order, split: trace.split, wrap: *wrap };
            Requests::Trace(Rc::new(trace.requests), *mode, facts)
        }
        WorkloadConfig::Inline { requests, mode } => {
            let disk_sectors = config.image.size_bytes / SECTOR_BYTES;
            if let Some((index, r)) = requests.iter().enumerate().find(|(_, r)| {
                r.2 == 0
                    || r.2 > crate::trace::MAX_REQUEST_BYTES / SECTOR_BYTES
                    || r.1.saturating_add(r.2) > disk_sectors
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

/// [`run`], recording each applied crash's state key in [`RunOutcome::crash_state_keys`] (how
/// many distinct crash states a set of runs reached: `fvdsim bench crash-states`). The same
/// run otherwise; [`run`] leaves the keys empty, since each costs a hash of the whole image.
///
/// Errors: [`ConfigError`] for a configuration the runner refuses.
pub fn run_recording_crash_states(config: &RunConfig) -> Result<RunOutcome, ConfigError> {
    let observer: Observer = Box::new(|_: &Rig, driver: &Shared| driver.borrow_mut().record_crash_state_keys = true);
    run_observed(config, DEFAULT_LOG_TAIL, None, Some(observer))
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
    run_observed(config, log_tail, watcher, None)
}

/// Installs an observer of the workload (a step hook on the world) once the image is open; the
/// runner removes the hook when the workload ends.
pub(super) type Observer = Box<dyn FnOnce(&Rig, &Shared)>;

/// [`run_watched`] with an observer of the workload (crash-state enumeration).
pub(super) fn run_observed(
    config: &RunConfig,
    log_tail: usize,
    watcher: Option<Watcher>,
    observer: Option<Observer>,
) -> Result<RunOutcome, ConfigError> {
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
        disk_sectors: config.image.size_bytes / SECTOR_BYTES,
        base: rig.base_content.map(|c| (c, config.image.base_bytes.min(config.image.size_bytes) / SECTOR_BYTES)),
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
        restart_due: false,
        crash_state_keys: Vec::new(),
        record_crash_state_keys: false,
    }));
    let mut crashes = Vec::new();
    let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        campaign(&config, &rig, &requests, &schedule, &driver, &mut crashes, observer)
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
        crash_state_keys: std::mem::take(&mut d.crash_state_keys),
    })
}

fn add_stats(driver: &Shared, image: &GuestImage) {
    let Some(stats) = image.stats() else { return };
    let telemetry = image.prefetch_telemetry();
    let mut d = driver.borrow_mut();
    if let Some(t) = &telemetry {
        super::coverage::add(&mut d.summary.coverage, "engine: prefetch paused", t.pauses.len() as u64);
    }
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

/// The whole run: records the first finding (the [`Stop`] a phase returned) in the driver.
fn campaign(
    config: &RunConfig,
    rig: &Rig,
    requests: &Requests,
    schedule: &[CrashSpec],
    driver: &Shared,
    crashes: &mut Vec<CrashSummary>,
    observer: Option<Observer>,
) {
    if let Err(Stop::Fail { class, message, sectors }) =
        campaign_steps(config, rig, requests, schedule, driver, crashes, observer)
    {
        driver.borrow_mut().fail(&rig.sim.handle(), class, message, sectors);
    }
}

/// The run's phases in order: create and open, the workload in segments with a crash and
/// recovery after each, then the finish. Each phase returns a step value; the first [`Stop`] ends
/// the run.
fn campaign_steps(
    config: &RunConfig,
    rig: &Rig,
    requests: &Requests,
    schedule: &[CrashSpec],
    driver: &Shared,
    crashes: &mut Vec<CrashSummary>,
    observer: Option<Observer>,
) -> Result<(), Stop> {
    let open_options = open_options(config);
    rig.create_guest().map_err(|error| Stop::fail(FailureClass::Check, format!("create failed: {error}")))?;
    let mut image = rig
        .open_guest(open_options)
        .map_err(|error| Stop::fail(FailureClass::Check, format!("open failed: {error}")))?;
    rig.image.set_faults(config.faults.clone());
    if let Some(install) = observer {
        install(rig, driver);
    }
    let mut judge = match config.qemu_judge {
        true => Some(QemuJudge::new(rig, config.format, config.seed)?),
        false => None,
    };
    let mut pending: std::collections::VecDeque<CrashSpec> = schedule.iter().copied().collect();
    while let Some(fired) =
        run_until_crash(config, rig, requests, driver, &mut image, pending.front().copied(), schedule.len())?
    {
        let spec = pending.pop_front().expect("a crash fired only when one was pending");
        add_stats(driver, &image);
        image = crash_and_recover(config, rig, driver, crashes, spec, fired, judge.as_mut())?;
        rig.image.set_faults(config.faults.clone());
    }
    finish(config, rig, driver, image)
}

/// The engine options every open of the run uses.
fn open_options(config: &RunConfig) -> fvd_engine::OpenOptions {
    fvd_engine::OpenOptions {
        read_only: false,
        profile: config.profile.into(),
        commit: config.commit.into(),
        copy_on_read: Some(config.copy_on_read),
        prefetch: config.prefetch.map(|p| p.engine_config()),
    }
}

/// Where a crash fired.
#[derive(Debug, Clone, Copy)]
struct Fired {
    /// The point it fired at (the planned one, or `random-event` when it fell back).
    point: CrashPoint,
    /// The workload ended before it fired, so it was applied then.
    at_workload_end: bool,
}

/// Runs the workload with `next` armed; `Some` when a crash is due (it fired, or the workload
/// ended with it pending), `None` when the workload ended with nothing pending.
fn run_until_crash(
    config: &RunConfig,
    rig: &Rig,
    requests: &Requests,
    driver: &Shared,
    image: &mut GuestImage,
    next: Option<CrashSpec>,
    planned: usize,
) -> Result<Option<Fired>, Stop> {
    {
        let mut d = driver.borrow_mut();
        d.arm = next.map(|spec| {
            // Recycles are rare where rewrites take the fast path: give them two segments.
            let window = fallback_window(d.total, planned) * if spec.point.is_rare() { 2 } else { 1 };
            Arming { spec, armed: false, fallback_at_request: spec.after_request + window }
        });
        d.fired = None;
    }
    let outcome = loop {
        let outcome = run_segment(rig, requests, driver, image);
        if driver.borrow().failure.is_some() || driver.borrow().summary.interrupted {
            return Err(Stop::Recorded);
        }
        if outcome.is_ok() && driver.borrow().restart_due {
            let spec = next.expect("a restart is due only for an armed crash");
            if let Some(fired) = restart(config, rig, driver, image, spec)? {
                return Ok(Some(fired));
            }
            // The point comes later in the workload (NEED_CHECK at the first allocating write).
            continue;
        }
        break outcome;
    };
    match outcome {
        Ok(()) if next.is_none() => Ok(None),
        Ok(()) => {
            // The workload ended before this crash fired (its point never came, or the plan put
            // it in the last requests): crash the world as it stands, so every planned crash is
            // applied.
            let mut d = driver.borrow_mut();
            d.arm = None;
            d.fired = Some(CrashPoint::RandomEvent);
            Ok(Some(Fired { point: CrashPoint::RandomEvent, at_workload_end: true }))
        }
        Err(RunError::Halted(_)) => {
            let point = driver.borrow().fired.unwrap_or(CrashPoint::RandomEvent);
            Ok(Some(Fired { point, at_workload_end: false }))
        }
        Err(error @ (RunError::Stall(_) | RunError::TimeLimit(_))) => {
            Err(Stop::fail(FailureClass::Liveness, format!("liveness: {error}")))
        }
    }
}

/// Closes the image cleanly in the middle of the workload and reopens it, with the crash `spec`
/// armed ([`CrashPoint::at_restart`]): `Some` where it fired if that was in the close or the
/// open; `None` when the point comes later (the workload carries on with it armed, and falls
/// back to a random event as usual if it never comes). The completed close counts as a guest
/// flush for the oracle (every write completed before it must survive) and is followed by a
/// check. Injected faults are off meanwhile: the plan is about the workload's requests.
fn restart(
    config: &RunConfig,
    rig: &Rig,
    driver: &Shared,
    image: &mut GuestImage,
    spec: CrashSpec,
) -> Result<Option<Fired>, Stop> {
    assert!(spec.point.at_restart(), "only points of the close or the open restart the image");
    let fired = |driver: &Shared| Fired {
        point: driver.borrow().fired.unwrap_or(CrashPoint::RandomEvent),
        at_workload_end: false,
    };
    {
        let mut d = driver.borrow_mut();
        d.restart_due = false;
        if let Some(arm) = d.arm.as_mut() {
            arm.armed = true;
        }
        super::coverage::add(&mut d.summary.coverage, "run: clean close and reopen mid-workload", 1);
    }
    add_stats(driver, image);
    arm_crash(driver, &rig.sim.handle(), spec);
    rig.image.set_faults(FaultPlan::default());
    let ticket = driver.borrow_mut().oracle.flush_submitted();
    let closing = image.clone();
    match rig.sim.run(async move { closing.close().await }) {
        Ok(Ok(())) => driver.borrow_mut().oracle.flush_completed(ticket, true),
        Ok(Err(error)) => {
            return Err(Stop::fail(
                FailureClass::UnexpectedError,
                format!("a clean close before a reopen failed: {error}"),
            ));
        }
        Err(RunError::Halted(_)) => return Ok(Some(fired(driver))),
        Err(error) => return Err(Stop::fail(FailureClass::Liveness, format!("liveness at a clean close: {error}"))),
    }
    check_image(rig, config.profile.into(), "after a clean close before a reopen")?;
    match rig.open_guest(open_options(config)) {
        Ok(reopened) => *image = reopened,
        Err(crate::rig::RigError::Run(RunError::Halted(_))) => return Ok(Some(fired(driver))),
        Err(error) => {
            return Err(Stop::fail(FailureClass::Check, format!("the reopen after a clean close failed: {error}")));
        }
    }
    rig.image.set_faults(config.faults.clone());
    Ok(None)
}

/// Crashes the world per `spec`, reopens (recovery), verifies and checks; returns the reopened
/// image.
fn crash_and_recover(
    config: &RunConfig,
    rig: &Rig,
    driver: &Shared,
    crashes: &mut Vec<CrashSummary>,
    spec: CrashSpec,
    fired: Fired,
    judge: Option<&mut QemuJudge>,
) -> Result<GuestImage, Stop> {
    let record = rig.crash(CrashPlan { strategy: spec.strategy, atomic_unit: spec.atomic_unit });
    let (kept, dropped, torn) = record.unit_counts();
    let at_request = {
        let mut d = driver.borrow_mut();
        if d.record_crash_state_keys {
            let key = (
                rig.image.image_hash(),
                rig.data.as_ref().map_or(0, fvd_sim::SimDisk::image_hash),
                d.oracle.crash_generation(),
            );
            d.crash_state_keys.push(key);
        }
        d.oracle.crashed();
        d.in_flight.clear();
        d.drop_outstanding();
        d.crashes_applied += 1;
        let key = if fired.at_workload_end {
            format!("at the end of the workload (no {} came)", spec.point.name())
        } else if fired.point == spec.point {
            fired.point.name().to_string()
        } else {
            format!("{} (no {} came)", fired.point.name(), spec.point.name())
        };
        *d.summary.crashes_by_point.entry(key).or_default() += 1;
        d.summary.issued
    };
    if !driver.borrow_mut().report_progress(&rig.sim.handle()) {
        driver.borrow_mut().summary.interrupted = true;
        return Err(Stop::Recorded);
    }
    let torn_allowed = spec.atomic_unit == fvd_sim::AtomicUnit::None;
    // QEMU judges the crash state before our recovery changes it (host files only).
    let judged = match judge {
        Some(judge) => Some((judge.before_recovery(rig, driver, crashes.len() + 1, torn_allowed)?, judge)),
        None => None,
    };
    // Recovery runs without injected faults: the plan is about the workload's requests.
    rig.image.set_faults(FaultPlan::default());
    let image = rig.open_guest(open_options(config)).map_err(|error| {
        Stop::fail(
            FailureClass::Check,
            format!(
                "recovery after crash {} ({} at request {at_request}) failed: {error}",
                crashes.len() + 1,
                fired.point.name()
            ),
        )
    })?;
    let replayed = image.recovered_sectors();
    {
        let mut d = driver.borrow_mut();
        let path = if replayed > 0 { "recovery: journal replayed" } else { "recovery: nothing to replay" };
        super::coverage::add(&mut d.summary.coverage, path, 1);
        let key = super::coverage::crash_key(fired.point, fired.at_workload_end);
        *d.summary.coverage.entry(key).or_default() += 1;
    }
    if let Some((state, judge)) = judged {
        judge.after_recovery(rig, driver, state)?;
        driver.borrow_mut().summary.qemu = Some(judge.summary.clone());
    }
    let verified = verify_after_crash(rig, &image, driver, config.verify_sample_sectors, torn_allowed)?;
    check_image(rig, config.profile.into(), &format!("after crash {}", crashes.len() + 1))?;
    image.assert_invariants();
    crashes.push(CrashSummary {
        spec,
        fired_at: fired.point,
        fallback: fired.point != spec.point,
        at_ns: record.at_ns,
        at_request,
        units_kept: kept,
        units_dropped: dropped,
        units_torn: torn,
        sectors_verified: verified,
        journal_sectors_replayed: replayed,
        writes: record.writes,
    });
    Ok(image)
}

/// The workload finished: disarms any crash that did not fire, waits for prefetch where the
/// configuration asks, flushes, closes cleanly and checks.
fn finish(config: &RunConfig, rig: &Rig, driver: &Shared, image: GuestImage) -> Result<(), Stop> {
    {
        let mut d = driver.borrow_mut();
        d.workload_events = rig.sim.event_count().saturating_sub(d.first_event);
    }
    rig.sim.clear_step_hook();
    rig.sim.clear_progress_hook();
    rig.sim.halt_after_events(None);
    if config.prefetch.is_some_and(|p| p.wait_for_finish) {
        wait_for_prefetch(config, rig, driver, &image)?;
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
            return Err(Stop::fail(FailureClass::UnexpectedError, format!("final flush and close failed: {error}")));
        }
        Err(error) => return Err(Stop::fail(FailureClass::Liveness, format!("liveness at close: {error}"))),
    }
    check_image(rig, config.profile.into(), "after the clean close")
}

/// Waits for prefetch to finish: a stall (nothing left to wake anyone) is a liveness failure, and
/// so is ten minutes of virtual time without a byte copied (a livelock). A slow prefetch that
/// keeps copying (a large base on a slow disk with small slots) may take hours. Then the whole
/// base range must still read its base data (verified without injected faults, as after a
/// recovery: the plan is about the workload).
fn wait_for_prefetch(config: &RunConfig, rig: &Rig, driver: &Shared, image: &GuestImage) -> Result<(), Stop> {
    const WINDOW_NS: u64 = 600_000_000_000;
    const MAX_WINDOWS: u32 = 200;
    let mut copied = image.stats().map_or(0, |s| s.prefetch_bytes);
    let mut waited = Ok(());
    for _ in 0..MAX_WINDOWS {
        rig.sim.set_time_limit_ns(Some(rig.sim.now_ns() + WINDOW_NS));
        let waiting = image.clone();
        waited = rig.sim.run(async move { waiting.wait_prefetch().await });
        rig.sim.set_time_limit_ns(None);
        let now_copied = image.stats().map_or(0, |s| s.prefetch_bytes);
        match &waited {
            Err(RunError::TimeLimit(_)) if now_copied > copied => copied = now_copied,
            _ => break,
        }
    }
    if let Err(error) = waited {
        add_stats(driver, image);
        return Err(Stop::fail(FailureClass::Liveness, format!("prefetch never finished: {error}")));
    }
    rig.image.set_faults(FaultPlan::default());
    verify_after_crash(rig, image, driver, config.verify_sample_sectors, false)?;
    Ok(())
}

/// How long an armed named point may take to come before the crash falls back to a random event:
/// one segment of the plan.
fn fallback_window(total: u64, crashes: usize) -> u64 {
    (total / (crashes as u64 + 1)).max(50)
}
