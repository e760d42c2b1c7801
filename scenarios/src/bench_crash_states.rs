//! `fvdsim bench crash-states`: crash states recovered and verified per second by crash-state
//! enumeration ([`crate::campaign::enumerate`]) on the exhaustive scenario's workload, beside the
//! approach it replaced (re-running the workload's prefix once per event, one crash state each)
//! in the same invocation. Every time is the fastest of [`TIMED_RUNS`] runs (this machine's
//! noise is about 15% from one minute to the next), and both sides count distinct states by
//! the same key ([`crate::campaign::outcome::CrashStateKey`]).

use std::collections::BTreeSet;
use std::time::Instant;

use fvd_sim::{CrashStrategy, Seed};
use serde::Serialize;

use crate::campaign::config::{CrashPoint, CrashSpec, RunConfig};
use crate::campaign::enumerate::{run_enumerated, run_enumerated_sampled};
use crate::campaign::run::run_recording_crash_states;
use crate::campaign::scenario;

/// One seed's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CrashStateRow {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Workload events.
    pub events: u64,
    /// Distinct crash states enumeration recovered and verified.
    pub enumerated_states: u64,
    /// Its wall time with one worker, seconds.
    pub enumerated_seconds: f64,
    /// Its wall time with `jobs` workers, seconds.
    pub enumerated_parallel_seconds: f64,
    /// Runs of the re-run approach (one per event, one crash each).
    pub rerun_runs: u64,
    /// Distinct crash states they verified (runs crashing at two events with nothing between
    /// that changes what a crash leaves reach the same state).
    pub rerun_states: u64,
    /// Its wall time, seconds.
    pub rerun_seconds: f64,
    /// Distinct crash states of the enumeration with [`MATCHED_SAMPLES`] samples per moment
    /// (the target's "no more wall time" measured, not extrapolated).
    pub matched_states: u64,
    /// Its wall time with one worker, seconds.
    pub matched_seconds: f64,
    /// Its wall time with `jobs` workers, seconds.
    pub matched_parallel_seconds: f64,
}

impl CrashStateRow {
    /// Enumerated states per wall second on one core.
    pub fn states_per_second(&self) -> f64 {
        self.enumerated_states as f64 / self.enumerated_seconds.max(1e-9)
    }
}

/// Seeded samples per moment of the enumeration timed against the re-run's wall time (the
/// enumeration proper takes [`crate::campaign::enumerate::SAMPLES`]): on seeds 1-3 of the
/// exhaustive workloads, 32 samples verify 3,200-3,650 distinct states in about the re-run's
/// time on one core.
pub const MATCHED_SAMPLES: u32 = 32;

/// Each time is the fastest of this many runs.
pub const TIMED_RUNS: usize = 3;

/// The fastest of [`TIMED_RUNS`] runs of `f`: its last result and the time in seconds.
fn fastest<T>(mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let mut best = f64::INFINITY;
    let mut result = None;
    for _ in 0..TIMED_RUNS {
        let started = Instant::now();
        result = Some(f()?);
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok((result.expect("at least one run"), best))
}

/// Runs seeds `1..=seeds` of `exhaustive` and `exhaustive-torn` both ways; `jobs` workers for the
/// parallel enumeration figure.
///
/// Errors: a configuration the runner refuses, or a failure (the benchmark measures a passing
/// workload).
pub fn run_crash_state_bench(
    seeds: u64,
    jobs: usize,
    mut row: impl FnMut(&CrashStateRow),
) -> anyhow::Result<Vec<CrashStateRow>> {
    let mut rows = Vec::new();
    for name in ["exhaustive", "exhaustive-torn"] {
        let build = scenario(name).ok_or_else(|| anyhow::anyhow!("no scenario {name}"))?.build;
        for seed in 1..=seeds {
            let config = build(Seed(seed));
            let (one, enumerated_seconds) = fastest(|| Ok(run_enumerated(&config, 1, |_, _| {})?))?;
            anyhow::ensure!(one.failure.is_none(), "{name} seed {seed}: a crash state failed");
            let (_, enumerated_parallel_seconds) = fastest(|| Ok(run_enumerated(&config, jobs, |_, _| {})?))?;
            let (rerun_states, rerun_seconds) = fastest(|| rerun_every_event(&config, one.events))?;
            let config = &config;
            let sampled = |jobs| move || Ok(run_enumerated_sampled(config, jobs, MATCHED_SAMPLES, |_, _| {})?);
            let (matched, matched_seconds) = fastest(sampled(1))?;
            anyhow::ensure!(matched.failure.is_none(), "{name} seed {seed}: a crash state failed");
            let (_, matched_parallel_seconds) = fastest(sampled(jobs))?;
            let figures = CrashStateRow {
                scenario: name.into(),
                seed,
                events: one.events,
                enumerated_states: one.crash_states,
                enumerated_seconds,
                enumerated_parallel_seconds,
                rerun_runs: one.events,
                rerun_states,
                rerun_seconds,
                matched_states: matched.crash_states,
                matched_seconds,
                matched_parallel_seconds,
            };
            row(&figures);
            rows.push(figures);
        }
    }
    Ok(rows)
}

/// The approach enumeration replaced: one run per event `k`, crashed at `k` (random, prefix and
/// clean strategies in turn), recovered and verified. Returns the distinct crash states verified.
fn rerun_every_event(config: &RunConfig, events: u64) -> anyhow::Result<u64> {
    let strategies = [CrashStrategy::RANDOM, CrashStrategy::Prefix, CrashStrategy::Clean];
    let mut states = BTreeSet::new();
    for k in 1..=events {
        let mut at = config.clone();
        at.crashes.schedule = Some(vec![CrashSpec {
            after_request: 0,
            point: CrashPoint::RandomEvent,
            occurrence: k,
            strategy: strategies[(k % 3) as usize],
            atomic_unit: *config.crashes.atomic_units.first().unwrap_or(&fvd_sim::AtomicUnit::Sector),
        }]);
        let outcome = run_recording_crash_states(&at)?;
        anyhow::ensure!(outcome.failure.is_none(), "the crash at event {k} failed");
        anyhow::ensure!(outcome.crash_state_keys.len() == 1, "the crash at event {k} did not fire");
        states.extend(outcome.crash_state_keys);
    }
    Ok(states.len() as u64)
}

/// The table's header.
pub fn header(jobs: usize) -> String {
    format!(
        "crash-state benchmark: exhaustive workloads (48 requests); enumeration vs one re-run per event (this build); distinct states, fastest of {TIMED_RUNS} runs\n  {:<16} {:>4} {:>6} | {:>8} {:>7} {:>8} {:>7} | {:>6} {:>8} {:>7} | {:>8} {:>7} {:>7} {:>8} {:>8} {:>8}",
        "",
        "",
        "",
        "enumeration",
        "",
        "",
        "",
        "re-run",
        "",
        "",
        &format!("{MATCHED_SAMPLES} samples per moment"),
        "",
        "",
        "",
        "",
        "",
    ) + &format!(
        "\n  {:<16} {:>4} {:>6} | {:>8} {:>7} {:>8} {:>7} | {:>6} {:>8} {:>7} | {:>8} {:>7} {:>7} {:>8} {:>8} {:>8}",
        "scenario",
        "seed",
        "events",
        "states",
        "1 job s",
        "states/s",
        &format!("{jobs} jobs s"),
        "runs",
        "distinct",
        "s",
        "states",
        "1 job s",
        &format!("{jobs} jobs s"),
        "x states",
        "x time 1",
        &format!("x time {jobs}"),
    )
}

/// One row of the table.
pub fn row_line(row: &CrashStateRow) -> String {
    let rerun_seconds = row.rerun_seconds.max(1e-9);
    format!(
        "  {:<16} {:>4} {:>6} | {:>8} {:>7.2} {:>8.0} {:>7.2} | {:>6} {:>8} {:>7.2} | {:>8} {:>7.2} {:>7.2} {:>8.1} {:>8.2} {:>8.2}",
        row.scenario,
        row.seed,
        row.events,
        row.enumerated_states,
        row.enumerated_seconds,
        row.states_per_second(),
        row.enumerated_parallel_seconds,
        row.rerun_runs,
        row.rerun_states,
        row.rerun_seconds,
        row.matched_states,
        row.matched_seconds,
        row.matched_parallel_seconds,
        row.matched_states as f64 / row.rerun_states.max(1) as f64,
        row.matched_seconds / rerun_seconds,
        row.matched_parallel_seconds / rerun_seconds,
    )
}
