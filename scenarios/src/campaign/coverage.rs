//! What a run exercised: engine paths, crash points and configuration dimensions, counted so a
//! campaign that never reaches something says so (issue #11, "coverage you can see").
//!
//! Keys are stable kebab-case names in [`PATHS`]; a run's counts live in
//! `RunSummary::coverage`, a campaign adds them up and lists the paths it never reached.

use std::collections::BTreeMap;

use super::config::{CrashPoint, RunConfig, WorkloadConfig};

/// Counts by path name.
pub type Coverage = BTreeMap<String, u64>;

/// Every path a campaign should reach, in report order.
pub const PATHS: &[&str] = &[
    // Engine paths (from the engine's counters, over every open of a run).
    "engine: fast-path write",
    "engine: slow-path write",
    "engine: partial-block copy-on-write",
    "engine: chunk allocation",
    "engine: storage growth",
    "engine: dependent write (waited for a copy-on-write)",
    "engine: journal write",
    "engine: journal recycle",
    "engine: group commit",
    "engine: guest flush",
    "engine: copy-on-read store",
    "engine: copy-on-read skipped (cap)",
    "engine: prefetch store",
    "engine: prefetch paused",
    "recovery: nothing to replay",
    "recovery: journal replayed",
    "guest: request failed (injected I/O error)",
    "guest: read failed",
    "guest: write failed",
    "guest: flush failed",
    "run: clean close and reopen mid-workload",
    // Crash points (where each applied crash fired).
    "crash: random-event",
    "crash: journal-write-in-flight",
    "crash: journal-write-landed",
    "crash: mid-recycle",
    "crash: metadata-written-home",
    "crash: copy-store",
    "crash: record-queued",
    "crash: commit-data-flush",
    "crash: commit-landed",
    "crash: need-check-set",
    "crash: l2-update-in-flight",
    "crash: l1-update-in-flight",
    "crash: bat-update-in-flight",
    "crash: in-use-set",
    "crash: in-use-cleared",
    "crash: at the end of the workload",
    "crash: enumerated crash state",
    // Configuration dimensions.
    "config: format fvd",
    "config: format qed",
    "config: format parallels",
    "config: profile hardened",
    "config: profile v1",
    "config: commit group",
    "config: commit sync",
    "config: compact image",
    "config: plain image",
    "config: base image",
    "config: no base image",
    "config: separate data file",
    "config: copy-on-read",
    "config: prefetch v1 policy",
    "config: prefetch aimd policy",
    "config: random workload",
    "config: trace workload",
    "config: atomic unit sector",
    "config: atomic unit page",
    "config: atomic unit none",
    "config: injected faults",
];

/// Adds `n` to `key` (which must be one of [`PATHS`]).
pub fn add(coverage: &mut Coverage, key: &str, n: u64) {
    debug_assert!(PATHS.contains(&key), "unknown coverage path {key:?}");
    if n > 0 {
        *coverage.entry(key.to_string()).or_default() += n;
    }
}

/// The engine's counters of one open, as coverage.
pub fn add_engine(coverage: &mut Coverage, stats: &fvd_engine::EngineStats) {
    add(coverage, "engine: fast-path write", stats.fast_path_writes);
    add(coverage, "engine: slow-path write", stats.writes.saturating_sub(stats.fast_path_writes));
    add(coverage, "engine: partial-block copy-on-write", stats.copy_on_write_writes);
    add(coverage, "engine: chunk allocation", stats.chunks_allocated);
    add(coverage, "engine: storage growth", stats.storage_grows);
    add(coverage, "engine: dependent write (waited for a copy-on-write)", stats.dependent_writes);
    add(coverage, "engine: journal write", stats.journal_writes);
    add(coverage, "engine: journal recycle", stats.recycles);
    add(coverage, "engine: group commit", stats.group_commits);
    add(coverage, "engine: guest flush", stats.flushes);
    add(coverage, "engine: copy-on-read store", stats.copy_on_read_stores);
    add(coverage, "engine: copy-on-read skipped (cap)", stats.copy_on_read_skipped);
    add(coverage, "engine: prefetch store", u64::from(stats.prefetch_bytes > 0));
}

/// The crash point key of a crash that fired at `point` (or at the end of the workload).
pub fn crash_key(point: CrashPoint, at_workload_end: bool) -> String {
    if at_workload_end { "crash: at the end of the workload".into() } else { format!("crash: {}", point.name()) }
}

/// The configuration dimensions `config` exercises.
pub fn add_config(coverage: &mut Coverage, config: &RunConfig) {
    let mut on = |key: &str, yes: bool| add(coverage, key, u64::from(yes));
    on("config: format fvd", config.format == super::guest::FormatName::Fvd);
    on("config: format qed", config.format == super::guest::FormatName::Qed);
    on("config: format parallels", config.format == super::guest::FormatName::Parallels);
    let hardened = config.profile == super::config::ProfileName::Hardened;
    on("config: profile hardened", hardened);
    on("config: profile v1", !hardened);
    on("config: commit group", hardened && config.commit == super::config::CommitName::Group);
    on("config: commit sync", hardened && config.commit == super::config::CommitName::Sync);
    on("config: compact image", config.image.compact);
    on("config: plain image", !config.image.compact);
    on("config: base image", config.image.base_bytes > 0);
    on("config: no base image", config.image.base_bytes == 0);
    on("config: separate data file", config.image.separate_data);
    on("config: copy-on-read", config.copy_on_read);
    on("config: prefetch v1 policy", config.prefetch.is_some_and(|p| p.aimd_target_us.is_none()));
    on("config: prefetch aimd policy", config.prefetch.is_some_and(|p| p.aimd_target_us.is_some()));
    on("config: random workload", matches!(config.workload, WorkloadConfig::Random { .. }));
    on("config: trace workload", !matches!(config.workload, WorkloadConfig::Random { .. }));
    let units = &config.crashes.atomic_units;
    on("config: atomic unit sector", units.contains(&fvd_sim::AtomicUnit::Sector));
    on("config: atomic unit page", units.contains(&fvd_sim::AtomicUnit::Page));
    on("config: atomic unit none", units.contains(&fvd_sim::AtomicUnit::None));
    on("config: injected faults", !config.faults.is_empty());
}

/// The paths `coverage` never reached, in [`PATHS`] order.
pub fn missing(coverage: &Coverage) -> Vec<&'static str> {
    PATHS.iter().copied().filter(|p| !coverage.contains_key(*p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crash_point_has_a_path_and_missing_lists_the_rest() {
        for point in CrashPoint::ALL {
            assert!(PATHS.contains(&crash_key(point, false).as_str()), "{point:?}");
        }
        let mut coverage = Coverage::new();
        add(&mut coverage, "engine: journal recycle", 3);
        add(&mut coverage, "engine: group commit", 0);
        let missing = missing(&coverage);
        assert!(!missing.contains(&"engine: journal recycle"));
        assert!(missing.contains(&"engine: group commit"), "a zero count is not coverage");
        assert_eq!(missing.len(), PATHS.len() - 1);
    }
}
