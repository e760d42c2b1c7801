//! `fvdsim shrink`: cuts a failing run down while the same failure class still occurs: fewer
//! workload requests (binary search on the prefix), fewer crashes (greedy removal), then the
//! requests as issued written inline and cut by delta debugging (Zeller's ddmin over the request
//! list, crash arming positions remapped), then fewer testers and shorter requests (random
//! workloads that did not reproduce inline), then a simpler world (no faults, crashes that drop
//! every unflushed write or keep a prefix, sector atomicity, nvme devices, no prefetch or
//! copy-on-read, a smaller disk). The result stands alone: an inline workload carries its
//! requests, not a pointer to the trace.

use super::config::{InlineRequest, ReplayMode, RunConfig, WorkloadConfig};
use super::run::{ConfigError, FailureClass, RunOutcome, run};

/// The smallest configuration found and how many runs it took.
pub struct Shrunk {
    /// The last failing outcome (its config is the shrunk configuration).
    pub outcome: RunOutcome,
    /// Runs made.
    pub runs: u32,
}

impl std::fmt::Debug for Shrunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shrunk").field("runs", &self.runs).finish_non_exhaustive()
    }
}

/// Shrinks `config`, which failed with `class`; `note` hears one line per accepted step.
pub fn shrink(
    config: &RunConfig,
    class: FailureClass,
    max_runs: u32,
    mut note: impl FnMut(&str),
) -> Result<Shrunk, ConfigError> {
    let mut runs = 0u32;
    let attempt = move |candidate: &RunConfig, runs: &mut u32| -> Result<Option<RunOutcome>, ConfigError> {
        *runs += 1;
        let outcome = run(candidate)?;
        Ok(outcome.failure.as_ref().is_some_and(|f| f.class == class).then_some(outcome))
    };
    let Some(mut best) = attempt(config, &mut runs)? else {
        return Err(ConfigError(format!("the failure ({class:?}) did not reproduce; nothing to shrink")));
    };
    // 1. Fewer requests: the failure appeared by request `at_request`.
    let mut high = best.failure.as_ref().map_or(1, |f| f.at_request.max(1));
    let mut low = 1u64;
    while low < high && runs < max_runs {
        let mid = low + (high - low) / 2;
        let mut candidate = best.config.clone();
        candidate.max_requests = Some(mid);
        match attempt(&candidate, &mut runs)? {
            Some(outcome) => {
                note(&format!("requests: {mid} still fail"));
                best = outcome;
                high = mid;
            }
            None => low = mid + 1,
        }
    }
    if best.config.max_requests.is_none_or(|m| m > high) {
        let mut candidate = best.config.clone();
        candidate.max_requests = Some(high);
        if let Some(outcome) = attempt(&candidate, &mut runs)? {
            best = outcome;
        }
    }
    // 2. Fewer crashes.
    let mut index = best.config.crashes.schedule.as_ref().map_or(0, Vec::len);
    while index > 0 && runs < max_runs {
        index -= 1;
        let mut candidate = best.config.clone();
        let schedule = candidate.crashes.schedule.get_or_insert_with(Vec::new);
        if index >= schedule.len() {
            continue;
        }
        schedule.remove(index);
        if let Some(outcome) = attempt(&candidate, &mut runs)? {
            note(&format!("crashes: {} left", outcome.config.crashes.schedule.as_ref().map_or(0, Vec::len)));
            best = outcome;
        }
    }
    // 3. The requests as issued, inline (replayed in the same mode), then delta debugging.
    if runs < max_runs {
        let mode = match &best.config.workload {
            WorkloadConfig::Trace { mode, .. } | WorkloadConfig::Inline { mode, .. } => *mode,
            WorkloadConfig::Random { testers, .. } => ReplayMode::ClosedLoop { queue_depth: *testers },
        };
        let issued: Vec<InlineRequest> = best.issued_requests.iter().map(|r| (*r).into()).collect();
        let mut candidate = best.config.clone();
        candidate.workload = WorkloadConfig::Inline { requests: issued, mode };
        candidate.max_requests = None;
        match attempt(&candidate, &mut runs)? {
            Some(outcome) => {
                note(&format!("inline: {} requests as issued still fail", inline_len(&outcome.config)));
                best = outcome;
                // ddmin, then simpler crashes and flush cadence (which can pin the failure to a
                // particular request count), then ddmin again, while something shrinks.
                let mut tried_cadences = std::collections::BTreeSet::new();
                loop {
                    let before = (inline_len(&best.config), best.config.clone());
                    best = ddmin(best, &mut runs, max_runs, &attempt, &mut note)?;
                    best = simplify_crashes_and_flushes(
                        best,
                        &mut tried_cadences,
                        &mut runs,
                        max_runs,
                        &attempt,
                        &mut note,
                    )?;
                    if runs >= max_runs || (inline_len(&best.config), best.config.clone()) == before {
                        break;
                    }
                }
            }
            None => note("inline: the requests as issued do not reproduce the failure (timing); kept the prefix"),
        }
    }
    // 4. Fewer testers, shorter requests.
    for _ in 0..8 {
        if runs >= max_runs {
            break;
        }
        let mut candidate = best.config.clone();
        let changed = match &mut candidate.workload {
            WorkloadConfig::Random { testers, max_sectors, .. } if *testers > 1 => {
                *testers /= 2;
                true
            }
            WorkloadConfig::Random { max_sectors, .. } if *max_sectors > 8 => {
                *max_sectors /= 2;
                true
            }
            _ => false,
        };
        if !changed {
            break;
        }
        match attempt(&candidate, &mut runs)? {
            Some(outcome) => {
                note("workload: fewer testers or shorter requests still fail");
                best = outcome;
            }
            None => break,
        }
    }
    // 5. A simpler world: no faults, plain crash strategies, sector atomicity, fast devices, no
    // copy-on-read or prefetch, a smaller disk, while any of these still fails.
    loop {
        let mut changed = false;
        for (what, simplify) in SIMPLIFICATIONS {
            if runs >= max_runs {
                break;
            }
            let Some(candidate) = simplify(&best.config) else { continue };
            // A simplification the runner refuses (a disk too small for the requests) is no step.
            if let Ok(Some(outcome)) = attempt(&candidate, &mut runs) {
                note(&format!("{what}: still fails"));
                best = outcome;
                changed = true;
            }
        }
        if !changed || runs >= max_runs {
            break;
        }
    }
    Ok(Shrunk { outcome: best, runs })
}

/// A configuration simplification: the simpler configuration, or `None` when it is already so.
type Simplification = fn(&RunConfig) -> Option<RunConfig>;

/// Tried in order, repeatedly, by step 5 of [`shrink`].
const SIMPLIFICATIONS: &[(&str, Simplification)] = &[
    ("no injected faults", |c| {
        (!c.faults.is_empty()).then(|| RunConfig { faults: fvd_sim::FaultPlan::default(), ..c.clone() })
    }),
    ("crashes drop every unflushed write", |c| {
        with_crashes(c, |spec| {
            let drop_all = fvd_sim::CrashStrategy::Subset { keep_mask: 0 };
            (spec.strategy != drop_all).then_some(drop_all)
        })
    }),
    ("crashes keep a prefix", |c| {
        with_crashes(c, |spec| {
            (spec.strategy != fvd_sim::CrashStrategy::Prefix).then_some(fvd_sim::CrashStrategy::Prefix)
        })
    }),
    ("sector-atomic crashes", |c| {
        let mut candidate = c.clone();
        let schedule = candidate.crashes.schedule.as_mut()?;
        let mut changed = false;
        for spec in schedule.iter_mut().filter(|s| s.atomic_unit != fvd_sim::AtomicUnit::Sector) {
            spec.atomic_unit = fvd_sim::AtomicUnit::Sector;
            changed = true;
        }
        changed.then_some(candidate)
    }),
    ("nvme devices", |c| {
        let mut candidate = c.clone();
        candidate.image.image_device = "nvme".into();
        candidate.image.base_device = "nvme".into();
        (candidate != *c).then_some(candidate)
    }),
    ("no prefetch", |c| c.prefetch.is_some().then(|| RunConfig { prefetch: None, ..c.clone() })),
    ("no copy-on-read", |c| c.copy_on_read.then(|| RunConfig { copy_on_read: false, ..c.clone() })),
    ("half the disk", |c| {
        let mut candidate = c.clone();
        let image = &mut candidate.image;
        let half = (image.size_bytes / 2) / image.block_bytes.max(1) * image.block_bytes.max(1);
        if half == 0 || half < image.chunk_bytes {
            return None;
        }
        image.size_bytes = half;
        image.base_bytes = image.base_bytes.min(half);
        Some(candidate)
    }),
];

/// `config` with each scheduled crash's strategy replaced where `replace` says; `None` if none
/// changes.
fn with_crashes(
    config: &RunConfig,
    replace: impl Fn(&super::config::CrashSpec) -> Option<fvd_sim::CrashStrategy>,
) -> Option<RunConfig> {
    let mut candidate = config.clone();
    let mut changed = false;
    for spec in candidate.crashes.schedule.as_mut()?.iter_mut() {
        if let Some(strategy) = replace(spec) {
            spec.strategy = strategy;
            changed = true;
        }
    }
    changed.then_some(candidate)
}

fn inline_len(config: &RunConfig) -> usize {
    match &config.workload {
        WorkloadConfig::Inline { requests, .. } => requests.len(),
        _ => 0,
    }
}

/// `config` (inline) keeping only the requests at `keep` (ascending indices); each crash stays
/// armed after the same surviving request.
fn keep_requests(config: &RunConfig, keep: &[usize]) -> RunConfig {
    let mut candidate = config.clone();
    if let WorkloadConfig::Inline { requests, .. } = &mut candidate.workload {
        *requests = keep.iter().map(|&i| requests[i]).collect();
    }
    if let Some(schedule) = &mut candidate.crashes.schedule {
        for spec in schedule.iter_mut() {
            spec.after_request = keep.partition_point(|&i| (i as u64) < spec.after_request) as u64;
        }
    }
    candidate
}

/// One shrink step: runs a candidate, counting runs; the outcome if it failed the same way.
type Attempt = dyn Fn(&RunConfig, &mut u32) -> Result<Option<RunOutcome>, ConfigError>;

/// Zeller's ddmin over the inline requests: remove one of `n` chunks while the failure holds,
/// doubling `n` when none can go.
fn ddmin(
    mut best: RunOutcome,
    runs: &mut u32,
    max_runs: u32,
    attempt: &Attempt,
    note: &mut dyn FnMut(&str),
) -> Result<RunOutcome, ConfigError> {
    let mut n = 2usize;
    loop {
        let len = inline_len(&best.config);
        if len < 2 || *runs >= max_runs {
            return Ok(best);
        }
        let chunk = len.div_ceil(n);
        let mut reduced = false;
        for start in (0..len).step_by(chunk) {
            if *runs >= max_runs {
                return Ok(best);
            }
            let keep: Vec<usize> = (0..len).filter(|i| *i < start || *i >= start + chunk).collect();
            if keep.is_empty() {
                continue;
            }
            if let Some(outcome) = attempt(&keep_requests(&best.config, &keep), runs)? {
                note(&format!("ddmin: {} requests still fail", keep.len()));
                best = outcome;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if n >= len {
                return Ok(best);
            }
            n = (n * 2).min(len);
        }
    }
}

/// Tries the first occurrence of each named crash point, and other guest-flush cadences.
fn simplify_crashes_and_flushes(
    mut best: RunOutcome,
    tried_cadences: &mut std::collections::BTreeSet<u64>,
    runs: &mut u32,
    max_runs: u32,
    attempt: &Attempt,
    note: &mut dyn FnMut(&str),
) -> Result<RunOutcome, ConfigError> {
    let crashes = best.config.crashes.schedule.as_ref().map_or(0, Vec::len);
    for index in 0..crashes {
        for occurrence in [1, 2] {
            if *runs >= max_runs {
                return Ok(best);
            }
            let mut candidate = best.config.clone();
            let spec = &mut candidate.crashes.schedule.as_mut().expect("a schedule")[index];
            if spec.occurrence <= occurrence {
                break;
            }
            spec.occurrence = occurrence;
            if let Some(outcome) = attempt(&candidate, runs)? {
                note(&format!("crash {}: occurrence {occurrence} still fails", index + 1));
                best = outcome;
                break;
            }
        }
    }
    // Another cadence can free requests that only kept a flush in place; each cadence is tried
    // once per shrink, so the search cannot oscillate between two.
    let len = inline_len(&best.config) as u64;
    for every in [0, 1, 2, 4, 8, 16, len] {
        if *runs >= max_runs || every == best.config.flush_every_requests || !tried_cadences.insert(every) {
            continue;
        }
        let mut candidate = best.config.clone();
        candidate.flush_every_requests = every;
        if let Some(outcome) = attempt(&candidate, runs)? {
            note(&format!("a guest flush every {every} requests still fails"));
            best = outcome;
            break;
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_simplification_changes_something_and_then_has_nothing_left_to_do() {
        let mut config = (super::super::scenario("prefetch-faults").expect("scenario").build)(fvd_sim::Seed(1));
        config.crashes.count = 3;
        config.copy_on_read = true;
        config.image.image_device = "hdd".into();
        config.crashes.schedule = Some(super::super::config::draw_schedule(&config, 1_000));
        config.crashes.schedule.as_mut().unwrap()[0].atomic_unit = fvd_sim::AtomicUnit::None;
        for (what, simplify) in SIMPLIFICATIONS {
            let simpler = simplify(&config).unwrap_or_else(|| panic!("{what}: nothing to simplify in {config:?}"));
            assert_ne!(simpler, config, "{what}");
            assert!(super::super::run::validate(&simpler).is_ok(), "{what}");
            assert!(simplify(&simpler).is_none() || *what == "half the disk", "{what} is not idempotent");
        }
    }
}
