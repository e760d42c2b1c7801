//! `fvdsim shrink`: cuts a failing run down while the same failure class still occurs: fewer
//! workload requests (binary search on the prefix), fewer crashes (greedy removal), fewer
//! testers and shorter requests (random workloads).

use super::config::{RunConfig, WorkloadConfig};
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
    let attempt = |candidate: &RunConfig, runs: &mut u32| -> Result<Option<RunOutcome>, ConfigError> {
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
    // 3. Fewer testers, shorter requests.
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
    Ok(Shrunk { outcome: best, runs })
}
