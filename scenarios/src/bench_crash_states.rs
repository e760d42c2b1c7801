//! `fvdsim bench crash-states`: crash states recovered and verified per second by crash-state
//! enumeration ([`crate::campaign::enumerate`]) on the exhaustive scenario's workload, beside the
//! approach it replaced (re-running the workload's prefix once per event, one crash state each)
//! in the same invocation.

use std::time::Instant;

use fvd_sim::{CrashStrategy, Seed};
use serde::Serialize;

use crate::campaign::config::{CrashPoint, CrashSpec, RunConfig};
use crate::campaign::enumerate::run_enumerated;
use crate::campaign::{run, scenario};

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
    /// Crash states the re-run approach verified (one per event).
    pub rerun_states: u64,
    /// Its wall time, seconds.
    pub rerun_seconds: f64,
}

impl CrashStateRow {
    /// Enumerated states per wall second on one core.
    pub fn states_per_second(&self) -> f64 {
        self.enumerated_states as f64 / self.enumerated_seconds.max(1e-9)
    }
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
            let started = Instant::now();
            let one = run_enumerated(&config, 1, |_, _| {})?;
            let enumerated_seconds = started.elapsed().as_secs_f64();
            anyhow::ensure!(one.failure.is_none(), "{name} seed {seed}: a crash state failed");
            let started = Instant::now();
            run_enumerated(&config, jobs, |_, _| {})?;
            let enumerated_parallel_seconds = started.elapsed().as_secs_f64();
            let started = Instant::now();
            let rerun_states = rerun_every_event(&config, one.events)?;
            let rerun_seconds = started.elapsed().as_secs_f64();
            let figures = CrashStateRow {
                scenario: name.into(),
                seed,
                events: one.events,
                enumerated_states: one.crash_states,
                enumerated_seconds,
                enumerated_parallel_seconds,
                rerun_states,
                rerun_seconds,
            };
            row(&figures);
            rows.push(figures);
        }
    }
    Ok(rows)
}

/// The approach enumeration replaced: one run per event `k`, crashed at `k` (random, prefix and
/// clean strategies in turn), recovered and verified. Returns the crash states verified.
fn rerun_every_event(config: &RunConfig, events: u64) -> anyhow::Result<u64> {
    let strategies = [CrashStrategy::RANDOM, CrashStrategy::Prefix, CrashStrategy::Clean];
    for k in 1..=events {
        let mut at = config.clone();
        at.crashes.schedule = Some(vec![CrashSpec {
            after_request: 0,
            point: CrashPoint::RandomEvent,
            occurrence: k,
            strategy: strategies[(k % 3) as usize],
            atomic_unit: *config.crashes.atomic_units.first().unwrap_or(&fvd_sim::AtomicUnit::Sector),
        }]);
        let outcome = run(&at)?;
        anyhow::ensure!(outcome.failure.is_none(), "the crash at event {k} failed");
    }
    Ok(events)
}

/// The table's header.
pub fn header(jobs: usize) -> String {
    format!(
        "crash-state benchmark: exhaustive workloads (48 requests); enumeration vs one re-run per event (on one core, this build)\n  {:<16} {:>4} {:>6} {:>9} {:>8} {:>9} {:>8} {:>8} {:>9} {:>7} {:>9} {:>7}",
        "scenario",
        "seed",
        "events",
        "states",
        "1 job s",
        "states/s",
        &format!("{jobs} jobs s"),
        "rerun",
        "rerun s",
        "x states",
        "x time 1",
        &format!("x time {jobs}")
    )
}

/// One row of the table.
pub fn row_line(row: &CrashStateRow) -> String {
    format!(
        "  {:<16} {:>4} {:>6} {:>9} {:>8.2} {:>9.0} {:>8.2} {:>8} {:>9.2} {:>7.1} {:>9.2} {:>7.2}",
        row.scenario,
        row.seed,
        row.events,
        row.enumerated_states,
        row.enumerated_seconds,
        row.states_per_second(),
        row.enumerated_parallel_seconds,
        row.rerun_states,
        row.rerun_seconds,
        row.enumerated_states as f64 / row.rerun_states.max(1) as f64,
        row.enumerated_seconds / row.rerun_seconds.max(1e-9),
        row.enumerated_parallel_seconds / row.rerun_seconds.max(1e-9)
    )
}
