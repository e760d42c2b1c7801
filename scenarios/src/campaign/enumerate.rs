//! Crash-state enumeration: run the workload once and, at every moment where what a crash could
//! leave has changed, derive many crash states from the devices as they stand (copy-on-write
//! copies, [`fvd_sim::SimDisk::crash_state`]); recover and verify each in a world of its own.
//!
//! At a moment with `n` unflushed writes (executed but not durable, or still in flight):
//! - `n <= SUBSET_LIMIT`: every subset of the writes (CrashMonkey bounds its enumeration the same
//!   way), as [`CrashStrategy::Subset`];
//! - otherwise every prefix in execution order ([`CrashStrategy::PrefixAt`], at most
//!   `MAX_PREFIXES`, evenly spaced) plus `SAMPLES` seeded random subsets
//!   ([`CrashStrategy::Sampled`]);
//! - and torn variants of each prefix: the cut write lands its first atomic unit only, or with
//!   no atomic unit a seeded number of bytes of it.
//!
//! States whose devices hold the same bytes as one already verified against the same oracle
//! state are counted once. Each state is recovered in a world seeded by its content. Every state
//! is named by a [`CrashSpec`] (a crash at event `occurrence` of the workload with an enumerated
//! strategy), so a failing one replays through the ordinary runner: [`run_enumerated`] does that
//! replay itself and returns its outcome, whose failure file and repro command are the usual
//! ones.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use fvd_engine::{Devices, Env, FvdImage, OpenOptions};
use fvd_sim::{
    AtomicUnit, CrashImage, CrashPlan, CrashStrategy, DiskConfig, Seed, Sim, SimDisk, SimEnv, SimOptions, SimRng,
};

use super::config::{CrashPoint, CrashSpec, RunConfig};
use super::guest::{FormatName, GuestImage};
use super::outcome::{ConfigError, RunOutcome};
use super::run::{DEFAULT_LOG_TAIL, Observer, run, run_observed};
use super::verify::{check_devices, is_byte_mix, read_sectors};
use super::workload::Shared;
use crate::oracle::TORN;
use crate::rig::Rig;
use crate::stamp::SECTOR_BYTES;

/// Every subset is tried up to this many unflushed writes (2^6 = 64 states).
pub const SUBSET_LIMIT: usize = 6;
/// Prefixes tried at one moment at most.
pub const MAX_PREFIXES: usize = 32;
/// Seeded random subsets per moment beyond the subset limit. 128 rather than 64: on the
/// exhaustive workloads, 23-28x the distinct states of one crash per event instead of 12.5-15x,
/// at about 1.8x the wall time (`fvdsim bench crash-states`).
pub const SAMPLES: u32 = 128;
/// Settled written sectors read back per crash state (a seeded sample; every unsettled sector,
/// one an unflushed write may have changed, is read back too).
pub const SAMPLED_SECTORS: usize = 64;

/// Unchosen sectors at most this many between two chosen ones are read back and judged too: a
/// read of up to 32 KiB costs about what a one-sector read does. Measured on `exhaustive` seed
/// 1, fastest of 3: no gap and gaps of 7 sectors judged 0.85 and 1.19 million sectors in 0.98 s
/// each; with a faster judge, gaps of 7, 15, 31, 63, 127 and 255 judged 1.19, 1.42, 1.71, 1.94,
/// 2.12 and 2.86 million in 0.79, 0.83, 0.83, 0.78, 0.81 and 1.13 s.
pub const FILL_GAP_SECTORS: u64 = 63;

/// What an enumeration found.
#[derive(Debug)]
pub struct EnumerationOutcome {
    /// Events of the workload (from its first request to its end).
    pub events: u64,
    /// Moments observed where the crash states differed from the moment before.
    pub moments: u64,
    /// Crash states recovered and verified (distinct: same bytes and oracle state counted once).
    pub crash_states: u64,
    /// Crash states derived but identical to one already verified.
    pub duplicate_states: u64,
    /// Sectors read back and judged over all crash states.
    pub sectors_verified: u64,
    /// The crash-free run (its clean close and check).
    pub clean: RunOutcome,
    /// The first failing crash state, if any.
    pub failure: Option<EnumeratedFailure>,
}

/// A crash state that failed.
#[derive(Debug)]
pub struct EnumeratedFailure {
    /// The crash that names it: replay with this as the run's only crash.
    pub spec: CrashSpec,
    /// What was wrong, as the enumeration saw it.
    pub message: String,
    /// The ordinary run with `spec` as its crash: its failure (if it reproduced) carries the
    /// failure file and repro command.
    pub replay: RunOutcome,
}

/// What tells crash states apart (the runner's key for the crashes it applies too).
type StateKey = super::outcome::CrashStateKey;

/// Mutable enumeration state shared with the step hook.
struct State {
    seen_moments: BTreeSet<(u64, u64, u64)>,
    seen_states: BTreeSet<StateKey>,
    moments: u64,
    /// Crash states this worker derived (its moments' strategies).
    derived: u64,
    /// The distinct states this worker verified, with the sectors judged in each.
    verified: BTreeMap<StateKey, u64>,
    /// The first failing state: its place in the enumeration order, its crash, the message.
    failure: Option<((u64, usize), CrashSpec, String)>,
}

impl State {
    fn new() -> State {
        State {
            seen_moments: BTreeSet::new(),
            seen_states: BTreeSet::new(),
            moments: 0,
            derived: 0,
            verified: BTreeMap::new(),
            failure: None,
        }
    }
}

/// What the step hook needs besides the driver.
struct Context {
    seed: Seed,
    image: SimDisk,
    data: Option<SimDisk>,
    base: Option<(fvd_sim::ProceduralContent, u64, DiskConfig)>,
    open: OpenOptions,
    profile: fvd_engine::Profile,
    atomic_unit: AtomicUnit,
    disk_sectors: u64,
    /// `(index, count)`: this worker verifies the states whose key falls in its share.
    shard: (u64, u64),
    /// The image format (recovery and check per format).
    format: super::guest::FormatName,
    /// Forked by a state's content hash to sample the sectors read back (never drawn from
    /// itself: a state's sample does not depend on when it is derived).
    sampling: SimRng,
    /// The buffer verification reads go into, reused from state to state.
    read_buffer: RefCell<Vec<u8>>,
    /// Seeded random subsets per moment beyond the subset limit ([`SAMPLES`] unless told).
    samples: u32,
}

/// The strategies tried at a moment with `writes` unflushed writes.
fn strategies(writes: usize, atomic_unit: AtomicUnit, samples: u32, rng: &mut SimRng) -> Vec<CrashStrategy> {
    let mut out = Vec::new();
    // Prefixes (and torn cuts below) at most MAX_PREFIXES apart from each other, the last included.
    let step = writes.div_ceil(MAX_PREFIXES).max(1);
    if writes <= SUBSET_LIMIT {
        out.extend((0..1u64 << writes).map(|keep_mask| CrashStrategy::Subset { keep_mask }));
    } else {
        let cuts = (0..writes).step_by(step).chain(std::iter::once(writes));
        out.extend(cuts.map(|cut| CrashStrategy::PrefixAt { writes: cut as u32, units: 0, torn_bytes: 0 }));
    }
    if writes == 0 {
        return out;
    }
    // Unit-level random subsets: writes landing in part, in any order.
    // The variant is drawn, so moments with the same unflushed writes sample different subsets.
    out.extend((0..samples).map(|_| CrashStrategy::Sampled {
        variant: rng.next_u64() as u32,
        keep_per_mille: 500,
        tear_per_mille: 200,
    }));
    // Torn cuts: after a prefix, the next write lands in part (some units; with no atomic unit,
    // some bytes of a unit).
    for cut in (0..writes).step_by(step) {
        let units = rng.range_inclusive(0, 7) as u32;
        let torn_bytes = match atomic_unit {
            AtomicUnit::None => rng.range_inclusive(1, 511) as u32,
            AtomicUnit::Sector | AtomicUnit::Page => 0,
        };
        out.push(CrashStrategy::PrefixAt {
            writes: cut as u32,
            units: units.max(u32::from(torn_bytes == 0)),
            torn_bytes,
        });
    }
    out
}

/// Crashes at every moment of `config`'s workload, many crash states per moment (see the module
/// documentation); stops at the first failure and replays it through the ordinary runner.
///
/// `jobs` workers (OS threads) each run the workload (a small part of the cost) and derive and
/// verify the crash states of every `jobs`-th moment. A state's world and its sampled sectors are
/// seeded by its content, so a state derived at moments of two workers gets the same verdict
/// from both and is counted once: the states verified, the duplicates skipped, the sectors
/// judged and the first failure (in enumeration order) are the same for any `jobs`.
/// `progress(moments, crash_states)` is told by the first worker as it goes.
///
/// Errors: [`ConfigError`] for a configuration the runner refuses.
pub fn run_enumerated(
    config: &RunConfig,
    jobs: usize,
    progress: impl FnMut(u64, u64) + Send + 'static,
) -> Result<EnumerationOutcome, ConfigError> {
    run_enumerated_sampled(config, jobs, SAMPLES, progress)
}

/// [`run_enumerated`] with `samples` seeded random subsets per moment instead of [`SAMPLES`]
/// (fewer states per seed in less time: `fvdsim bench crash-states` matches the re-run's wall
/// time this way). A failing state replays the same whatever `samples` was: its
/// [`CrashStrategy::Sampled`] names it.
///
/// Errors: [`ConfigError`] for a configuration the runner refuses.
pub fn run_enumerated_sampled(
    config: &RunConfig,
    jobs: usize,
    samples: u32,
    progress: impl FnMut(u64, u64) + Send + 'static,
) -> Result<EnumerationOutcome, ConfigError> {
    let jobs = jobs.max(1) as u64;
    let mut progress = Some(progress);
    let shards: Vec<Result<(RunOutcome, State), ConfigError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs)
            .map(|index| {
                let tell = progress.take();
                scope.spawn(move || {
                    let tell: Box<dyn FnMut(u64, u64)> = match tell {
                        Some(tell) => Box::new(tell),
                        None => Box::new(|_, _| {}),
                    };
                    enumerate_shard(config, (index, jobs), samples, tell)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let mut clean = None;
    let mut merged = State::new();
    for shard in shards {
        let (outcome, state) = shard?;
        if clean.is_none() {
            merged.moments = state.moments;
            clean = Some(outcome);
        }
        merged.derived += state.derived;
        // A state derived at moments of two workers is verified by both, with the same verdict
        // (its world is seeded by its content): counted once.
        for (key, sectors) in state.verified {
            merged.verified.entry(key).or_insert(sectors);
        }
        if let Some(found) = state.failure
            && merged.failure.as_ref().is_none_or(|first| found.0 < first.0)
        {
            merged.failure = Some(found);
        }
    }
    let crash_states = merged.verified.len() as u64;
    let sectors_verified = merged.verified.values().sum();
    let mut clean = clean.expect("at least one worker");
    super::coverage::add(&mut clean.summary.coverage, "crash: enumerated crash state", crash_states);
    let failure = match merged.failure {
        None => None,
        Some((_, spec, message)) => {
            let mut replay_config = config.clone();
            replay_config.crashes.count = 1;
            replay_config.crashes.schedule = Some(vec![spec]);
            replay_config.verify_sample_sectors = replay_config.verify_sample_sectors.max(1 << 20);
            let replay = run(&replay_config)?;
            Some(EnumeratedFailure { spec, message, replay })
        }
    };
    Ok(EnumerationOutcome {
        events: clean.summary_events,
        moments: merged.moments,
        crash_states,
        duplicate_states: merged.derived.saturating_sub(crash_states),
        sectors_verified,
        clean,
        failure,
    })
}

/// [`run_enumerated`] on one worker, as one run's outcome (for campaigns that handle runs): the
/// replay's outcome when a crash state failed (with the enumeration's finding put in its place
/// when the ordinary runner did not reproduce it), the crash-free run's otherwise; and the crash
/// states verified.
///
/// Errors: [`ConfigError`] for a configuration the runner refuses.
pub fn run_enumerated_as_run(config: &RunConfig) -> Result<(RunOutcome, u64), ConfigError> {
    let outcome = run_enumerated(config, 1, |_, _| {})?;
    let states = outcome.crash_states;
    let Some(found) = outcome.failure else { return Ok((outcome.clean, states)) };
    let mut replay = found.replay;
    if replay.failure.is_none() {
        replay.failure = Some(super::outcome::Failure {
            class: super::outcome::FailureClass::Check,
            message: format!(
                "enumerated crash state at event {} ({:?}) failed: {} (the ordinary runner did not reproduce it)",
                found.spec.occurrence, found.spec.strategy, found.message
            ),
            sectors: Vec::new(),
            at_request: 0,
            after_crashes: 1,
        });
    }
    Ok((replay, states))
}

/// One worker: the crash-free run with the step hook deriving every state and verifying its share.
fn enumerate_shard(
    config: &RunConfig,
    shard: (u64, u64),
    samples: u32,
    progress: Box<dyn FnMut(u64, u64)>,
) -> Result<(RunOutcome, State), ConfigError> {
    let mut clean_config = config.clone();
    clean_config.crashes.count = 0;
    clean_config.crashes.schedule = Some(Vec::new());
    let state = Rc::new(RefCell::new(State::new()));
    let open = OpenOptions {
        read_only: false,
        profile: config.profile.into(),
        commit: config.commit.into(),
        copy_on_read: Some(config.copy_on_read),
        prefetch: config.prefetch.map(|p| p.engine_config()),
    };
    let atomic_unit = *config.crashes.atomic_units.first().unwrap_or(&AtomicUnit::Sector);
    let base_profile = fvd_sim::DeviceProfile::named(&config.image.base_device)
        .ok_or_else(|| ConfigError(format!("unknown device profile {:?}", config.image.base_device)))?;
    let observer: Observer = {
        let state = Rc::clone(&state);
        let seed = config.seed;
        let profile = config.profile.into();
        let disk_sectors = config.image.size_bytes / SECTOR_BYTES;
        let base_bytes = config.image.base_bytes;
        let format = config.format;
        Box::new(move |rig: &Rig, driver: &Shared| {
            let context = Rc::new(Context {
                seed,
                image: rig.image.clone(),
                data: rig.data.clone(),
                base: rig.base_content.map(|c| (c, base_bytes, DiskConfig::new(base_profile))),
                open,
                profile,
                atomic_unit,
                disk_sectors,
                shard,
                format,
                sampling: SimRng::stream(seed, fvd_sim::streams::CRASH_STATES).fork(u64::MAX),
                read_buffer: RefCell::new(Vec::new()),
                samples,
            });
            let driver = Rc::clone(driver);
            let mut progress = progress;
            let mut rng = SimRng::stream(seed, fvd_sim::streams::CRASH_STATES);
            rig.sim.set_step_hook(move |count| {
                let first_event = {
                    let d = driver.borrow();
                    if d.next_request == 0 || d.failure.is_some() {
                        return;
                    }
                    d.first_event
                };
                if count <= first_event || state.borrow().failure.is_some() {
                    return;
                }
                observe(&context, &driver, &state, &mut rng, count - first_event);
                let s = state.borrow();
                progress(s.moments, s.verified.len() as u64);
            });
        })
    };
    let clean = run_observed(&clean_config, DEFAULT_LOG_TAIL, None, Some(observer))?;
    let state = std::mem::replace(&mut *state.borrow_mut(), State::new());
    Ok((clean, state))
}

/// One moment: derives its crash states and verifies the new ones.
fn observe(context: &Context, driver: &Shared, state: &Rc<RefCell<State>>, rng: &mut SimRng, occurrence: u64) {
    let oracle_generation = driver.borrow().oracle.crash_generation();
    let moment = (
        context.image.crash_generation(),
        context.data.as_ref().map_or(0, SimDisk::crash_generation),
        oracle_generation,
    );
    if !state.borrow_mut().seen_moments.insert(moment) {
        return;
    }
    let moment_index = {
        let mut s = state.borrow_mut();
        s.moments += 1;
        s.moments - 1
    };
    let writes = context.image.unflushed_writes() + context.data.as_ref().map_or(0, SimDisk::unflushed_writes);
    // Drawn by every worker, so the enumeration stream stays in step whichever moments it takes.
    let strategies = strategies(writes, context.atomic_unit, context.samples, rng);
    let (index, count) = context.shard;
    if moment_index % count != index {
        return;
    }
    // What the oracle says is the same for every state of the moment: listed once.
    let sectors = {
        let d = driver.borrow();
        MomentSectors { unsettled: d.oracle.unsettled_sectors(), touched: d.oracle.touched_sectors().collect() }
    };
    for (order, strategy) in strategies.into_iter().enumerate() {
        let plan = CrashPlan { strategy, atomic_unit: context.atomic_unit };
        let image = context.image.crash_image(plan);
        let data = context.data.as_ref().map(|d| d.crash_image(plan.for_next_device(image.record.writes.len())));
        let key = (image.image_hash(), data.as_ref().map_or(0, CrashImage::image_hash), oracle_generation);
        {
            let mut s = state.borrow_mut();
            s.derived += 1;
            if !s.seen_states.insert(key) {
                continue;
            }
        }
        let key_hash = (key.0 ^ key.1.rotate_left(17) ^ key.2).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // The world is seeded by the state's content, and so are the sectors sampled: a state
        // gets the same recovery and the same verdict at whichever moment and in whichever
        // worker it is derived.
        let world = Sim::with_options(
            Seed(context.seed.0 ^ key_hash),
            SimOptions { log_tail_capacity: 16, record_all_events: false },
        );
        let handle = world.handle();
        let image = image.into_disk(&handle);
        let data = data.map(|d| d.into_disk(&handle));
        // Recovery runs without injected faults, as in the ordinary runner: the fault plan is
        // about the workload's requests.
        image.set_faults(fvd_sim::FaultPlan::default());
        if let Some(data) = &data {
            data.set_faults(fvd_sim::FaultPlan::default());
        }
        let spec = CrashSpec {
            after_request: 0,
            point: CrashPoint::RandomEvent,
            occurrence,
            strategy,
            atomic_unit: context.atomic_unit,
        };
        let verdict =
            recover_and_verify(context, driver, &sectors, &world, image, data, &mut context.sampling.fork(key_hash));
        let mut s = state.borrow_mut();
        match verdict {
            Ok(sectors) => {
                s.verified.insert(key, sectors);
            }
            Err(message) => {
                s.failure = Some(((occurrence, order), spec, message));
                return;
            }
        }
    }
}

/// The oracle's sectors at one moment (the same for every crash state derived from it).
struct MomentSectors {
    /// Sectors an unflushed write may have changed: every one is read back.
    unsettled: Vec<u64>,
    /// Every sector written so far: a sample is read back.
    touched: Vec<u64>,
}

/// Opens the crash state (recovery), reads back every unsettled sector, a sample of the other
/// written sectors and a few unwritten ones, and runs `check`.
fn recover_and_verify(
    context: &Context,
    driver: &Shared,
    moment: &MomentSectors,
    world: &Sim,
    image: SimDisk,
    data: Option<SimDisk>,
    rng: &mut SimRng,
) -> Result<u64, String> {
    let handle = world.handle();
    let base = context
        .base
        .as_ref()
        .map(|(content, len, config)| SimDisk::with_content(&handle, "base", *len, config.clone(), Rc::new(*content)));
    let devices = Devices {
        image: Rc::new(image),
        data: data.map(|d| Rc::new(d) as Rc<dyn fvd_engine::BlockDevice>),
        base: base.map(|d| Rc::new(d) as Rc<dyn fvd_engine::BlockDevice>),
    };
    let env: Rc<dyn Env> = Rc::new(SimEnv::new(&handle));
    let image = open_recovered(context, world, &devices, env)?;
    let sectors: Vec<u64> = {
        // The moment's unsettled sectors (ascending) and the state's sample, sorted and deduplicated.
        let mut chosen: Vec<u64> = Vec::with_capacity(moment.unsettled.len() + SAMPLED_SECTORS + 16);
        chosen.extend_from_slice(&moment.unsettled);
        let touched = &moment.touched;
        if !touched.is_empty() {
            chosen.extend((0..SAMPLED_SECTORS).map(|_| touched[rng.below(touched.len() as u64) as usize]));
        }
        chosen.extend((0..16).map(|_| rng.below(context.disk_sectors)));
        chosen.sort_unstable();
        chosen.dedup();
        // Sectors between two chosen ones close together are read and judged too: one read
        // instead of several costs no more, and judges more.
        let mut filled: Vec<u64> = Vec::with_capacity(chosen.len());
        for sector in chosen {
            if let Some(&last) = filled.last()
                && sector - last > 1
                && sector - last <= FILL_GAP_SECTORS + 1
            {
                filled.extend(last + 1..sector);
            }
            filled.push(sector);
        }
        filled
    };
    let mut buf = context.read_buffer.borrow_mut();
    let read = read_sectors(world, &image, &sectors, &mut buf);
    let results = read.map_err(|error| format!("liveness while verifying: {error}"))?;
    let d = driver.borrow();
    let torn_allowed = context.atomic_unit == AtomicUnit::None;
    let mut verified = 0;
    let mut sector_slices = buf.chunks_exact(SECTOR_BYTES as usize);
    for (first, count, result) in results {
        result.map_err(|error| format!("verification read failed: {error}"))?;
        for (sector, bytes) in (first..first + count).zip(sector_slices.by_ref()) {
            let allowed = d.oracle.allowed_after_crash(sector);
            if let Err(failure) = d.judge(sector, bytes, &allowed)
                && !(torn_allowed && is_byte_mix(&d, sector, bytes, &allowed))
                && !allowed.contains(&TORN)
            {
                return Err(format!(
                    "sector {sector} holds {} after recovery; allowed: {}",
                    failure.actual,
                    failure.allowed.join(" or ")
                ));
            }
            verified += 1;
        }
    }
    debug_assert_eq!(verified as usize, sectors.len(), "every sector read back is judged, none twice");
    drop((d, buf));
    check_devices(world, context.format, devices, context.profile, "after recovery").map_err(|(_, message)| message)?;
    Ok(verified)
}

/// Recovery of a crash state in the context's format: FVD's open (journal replay), QED's and
/// Parallels' writable open (QEMU's check and repair).
fn open_recovered(context: &Context, world: &Sim, devices: &Devices, env: Rc<dyn Env>) -> Result<GuestImage, String> {
    let (image, base) = (Rc::clone(&devices.image), devices.base.clone());
    let opened = match context.format {
        FormatName::Fvd => {
            let (devices, options) = (devices.clone(), context.open);
            world.run(async move {
                FvdImage::open(devices, env, options).await.map(GuestImage::Fvd).map_err(|e| e.to_string())
            })
        }
        FormatName::Qed => world.run(async move {
            fvd_qed::QedImage::open_writable(image, base)
                .await
                .map(|q| GuestImage::Qed(Rc::new(q)))
                .map_err(|e| e.to_string())
        }),
        FormatName::Parallels => world.run(async move {
            fvd_parallels::ParallelsImage::open_writable(image)
                .await
                .map(|p| GuestImage::Parallels(Rc::new(p)))
                .map_err(|e| e.to_string())
        }),
    };
    match opened {
        Ok(Ok(image)) => Ok(image),
        Ok(Err(error)) => Err(format!("recovery failed: {error}")),
        Err(error) => Err(format!("liveness in recovery: {error}")),
    }
}
