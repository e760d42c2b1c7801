//! A fixed set of seeds per scenario that must pass in CI, small enough to run in seconds, plus
//! the v1 profile failing where the hardened engine passes.

use fvd_scenarios::campaign::config::WorkloadConfig;
use fvd_scenarios::campaign::{FailureClass, RunConfig, SCENARIOS, run};
use fvd_sim::Seed;

/// A scenario scaled down for CI: fewer requests and crashes.
fn small(name: &str, seed: u64) -> RunConfig {
    let scenario = SCENARIOS.iter().find(|s| s.name == name).expect("known scenario");
    let mut config = (scenario.build)(Seed(seed));
    match &mut config.workload {
        WorkloadConfig::Random { requests, .. } => *requests = 1_500,
        WorkloadConfig::Trace { .. } | WorkloadConfig::Inline { .. } => config.max_requests = Some(3_000),
    }
    config.crashes.count = 6;
    config.verify_sample_sectors = 512;
    config
}

fn assert_passes(name: &str, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let outcome = run(&small(name, seed)).expect("valid configuration");
        assert!(outcome.failure.is_none(), "{name} seed {seed}: {:?}", outcome.failure);
        assert!(outcome.summary.writes > 0 && outcome.summary.reads > 0, "{name} seed {seed}: {:?}", outcome.summary);
        assert!(!outcome.crashes.is_empty(), "{name} seed {seed}: no crash fired");
    }
}

#[test]
fn random_passes_on_fixed_seeds() {
    assert_passes("random", 0..6);
}

#[test]
fn every_other_scenario_passes_on_fixed_seeds() {
    for name in ["random-faults", "torn", "tiny-journal", "plain"] {
        assert_passes(name, 0..3);
    }
}

#[test]
fn the_main_job_passes_on_a_prefix_of_the_cloudphysics_trace() {
    let mut config = small("cloudphysics", 1);
    config.max_requests = Some(8_000);
    config.crashes.count = 4;
    let outcome = run(&config).expect("the trace lies beside the repository");
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    assert_eq!(outcome.summary.issued, 8_000);
    // Group commit batches the records of 64 requests per guest flush.
    assert!(outcome.summary.journal_writes >= 100, "{:?}", outcome.summary);
    assert_eq!(outcome.crashes.len(), 4);
    assert!(!outcome.crashes.is_empty());
}

#[test]
fn the_v1_profile_fails_where_the_hardened_engine_passes() {
    let mut found = Vec::new();
    for seed in 0..4 {
        let mut config = small("random", seed);
        config.profile = fvd_scenarios::campaign::config::ProfileName::V1;
        if let Some(failure) = run(&config).unwrap().failure {
            found.push((seed, failure.message));
        }
        let mut hardened = small("random", seed);
        hardened.profile = fvd_scenarios::campaign::config::ProfileName::Hardened;
        assert!(run(&hardened).unwrap().failure.is_none(), "hardened failed on seed {seed}");
    }
    assert!(!found.is_empty(), "the v1 profile should fail on one of four seeds");
}

#[test]
fn a_seed_replays_exactly_and_different_seeds_differ() {
    let config = small("random", 11);
    let first = run(&config).unwrap();
    let second = run(&config).unwrap();
    assert_eq!((first.log_hash, first.image_hash), (second.log_hash, second.image_hash));
    assert_eq!(first.summary, second.summary);
    let other = run(&small("random", 12)).unwrap();
    assert_ne!(first.log_hash, other.log_hash);
}

#[test]
fn a_failure_replays_from_its_recorded_config_and_shrinks() {
    // The v1 profile fails; the recorded config (with its explicit crash schedule) replays it.
    let failing = (0..8).find_map(|seed| {
        let mut config = small("random", seed);
        config.profile = fvd_scenarios::campaign::config::ProfileName::V1;
        let outcome = run(&config).unwrap();
        outcome.failure.is_some().then_some(outcome)
    });
    let outcome = failing.expect("a v1 failure among eight seeds");
    let replay = run(&outcome.config).unwrap();
    assert_eq!(replay.failure, outcome.failure);
    assert_eq!(replay.log_hash, outcome.log_hash);
    let class = outcome.failure.as_ref().unwrap().class;
    let shrunk = fvd_scenarios::campaign::shrink::shrink(&outcome.config, class, 40, |_| {}).unwrap();
    assert_eq!(shrunk.outcome.failure.as_ref().unwrap().class, class);
    assert!(shrunk.outcome.summary.issued <= outcome.summary.issued);
}

#[test]
fn the_main_jobs_v1_failure_shrinks_to_a_few_inline_requests_that_replay_alone() {
    let mut config = small("cloudphysics", 1);
    config.profile = fvd_scenarios::campaign::config::ProfileName::V1;
    config.max_requests = Some(4_000);
    config.crashes.count = 3;
    let outcome = run(&config).unwrap();
    let class = outcome.failure.as_ref().expect("v1 fails on the trace").class;
    let shrunk = fvd_scenarios::campaign::shrink::shrink(&outcome.config, class, 800, |_| {}).unwrap();
    let WorkloadConfig::Inline { requests, .. } = &shrunk.outcome.config.workload else {
        panic!("the shrunk case carries its requests inline: {:?}", shrunk.outcome.config.workload)
    };
    assert!(requests.len() <= 20, "{} requests", requests.len());
    assert_eq!(shrunk.outcome.summary.issued, requests.len() as u64);
    // It stands alone: the same failure from the config alone, the trace not needed.
    let replay = run(&shrunk.outcome.config).unwrap();
    assert_eq!(replay.failure, shrunk.outcome.failure);
    assert_eq!(replay.log_hash, shrunk.outcome.log_hash);
}

#[test]
#[ignore = "a longer sweep for bug hunting: cargo test --release -- --ignored sweep"]
fn sweep() {
    let seeds: u64 = std::env::var("SWEEP_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut failures = Vec::new();
    for name in ["random", "random-faults", "torn", "tiny-journal", "plain"] {
        for seed in 0..seeds {
            let mut config = small(name, seed);
            if let WorkloadConfig::Random { requests, .. } = &mut config.workload {
                *requests = 6_000;
            }
            config.crashes.count = 12;
            let outcome = run(&config).expect("valid configuration");
            if let Some(failure) = outcome.failure {
                failures.push(format!(
                    "{name} seed {seed}: {} {}",
                    serde_json::to_string(&failure.class).unwrap(),
                    failure.message
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_short_run_survives_every_enumerated_crash_state() {
    // Seeds 1 and 3 found a recycle that wrote the bitmap home before the table: a crash between
    // the two left a block mapped to an unmapped chunk (zeros where the base image has data).
    use fvd_scenarios::campaign::enumerate::run_enumerated;
    for name in ["exhaustive", "exhaustive-torn"] {
        let scenario = SCENARIOS.iter().find(|s| s.name == name).unwrap();
        for seed in [1u64, 3] {
            let config = (scenario.build)(Seed(seed));
            let outcome = run_enumerated(&config, 1, |_, _| {}).unwrap();
            assert!(
                outcome.failure.is_none(),
                "{name} seed {seed}: {:?}",
                outcome.failure.as_ref().map(|f| (&f.spec, &f.message))
            );
            assert!(outcome.clean.failure.is_none());
            assert!(outcome.events > 400, "a run of 48 requests logs hundreds of events, got {}", outcome.events);
            assert!(outcome.moments > 50, "{name} seed {seed}: only {} moments", outcome.moments);
            // Many distinct crash states per moment, not one per event.
            assert!(
                outcome.crash_states > 2 * outcome.events,
                "{name} seed {seed}: {} crash states for {} events",
                outcome.crash_states,
                outcome.events
            );
        }
    }
}

#[test]
fn enumeration_catches_v1_and_its_crash_state_replays_through_the_runner() {
    // v1 writes journal records without flushing the data and metadata they describe
    // (fvd-v1.md §3): some crash state of a short run must show it, and the ordinary runner,
    // given the enumerated crash as its schedule, must fail the same way.
    use fvd_scenarios::campaign::enumerate::run_enumerated;
    let scenario = SCENARIOS.iter().find(|s| s.name == "exhaustive").unwrap();
    let mut config = (scenario.build)(Seed(1));
    config.profile = fvd_scenarios::campaign::config::ProfileName::V1;
    let outcome = run_enumerated(&config, 1, |_, _| {}).unwrap();
    let found = outcome.failure.expect("v1 fails some crash state");
    assert!(
        matches!(
            found.spec.strategy,
            fvd_sim::CrashStrategy::Subset { .. }
                | fvd_sim::CrashStrategy::PrefixAt { .. }
                | fvd_sim::CrashStrategy::Sampled { .. }
        ),
        "{:?}",
        found.spec
    );
    let replayed = found.replay.failure.expect("the runner reproduces the enumerated crash state");
    assert_eq!(replayed.after_crashes, 1, "it failed after its one crash: {replayed:?}");
    assert!(!replayed.message.is_empty());
    // The failure file names the enumerated crash, so `fvdsim repro` replays it exactly.
    let schedule = found.replay.config.crashes.schedule.as_ref().unwrap();
    assert_eq!(schedule[0], found.spec);
}

#[test]
fn enumeration_finds_the_same_states_and_the_same_first_failure_with_any_number_of_workers() {
    // Workers take whole moments; a state derived at moments of two workers is verified by
    // both in a world seeded by its content, so counts, sectors judged and the first failure
    // (in enumeration order) do not depend on --jobs.
    use fvd_scenarios::campaign::enumerate::run_enumerated;
    let scenario = SCENARIOS.iter().find(|s| s.name == "exhaustive-torn").unwrap();
    let config = (scenario.build)(Seed(2));
    let figures = |jobs: usize| {
        let outcome = run_enumerated(&config, jobs, |_, _| {}).unwrap();
        assert!(outcome.failure.is_none());
        (outcome.moments, outcome.crash_states, outcome.duplicate_states, outcome.sectors_verified)
    };
    let one = figures(1);
    assert!(one.1 > 1_000, "{one:?}");
    assert_eq!(figures(2), one);
    assert_eq!(figures(3), one);
    let mut v1 = (SCENARIOS.iter().find(|s| s.name == "exhaustive").unwrap().build)(Seed(2));
    v1.profile = fvd_scenarios::campaign::config::ProfileName::V1;
    let first = |jobs: usize| {
        let found = run_enumerated(&v1, jobs, |_, _| {}).unwrap().failure.expect("v1 fails some crash state");
        (found.spec, found.message)
    };
    let alone = first(1);
    assert_eq!(first(2), alone);
    assert_eq!(first(3), alone);
}

#[test]
fn prefetch_scenarios_pass_with_the_hardened_engine() {
    for name in ["prefetch", "prefetch-dense", "prefetch-stall", "prefetch-faults"] {
        for seed in 1..3 {
            let scenario = SCENARIOS.iter().find(|s| s.name == name).unwrap();
            let mut config = (scenario.build)(Seed(seed));
            if let WorkloadConfig::Random { requests, .. } = &mut config.workload {
                *requests = (*requests).min(2_000);
            }
            config.crashes.count = config.crashes.count.min(4);
            let outcome = run(&config).unwrap();
            assert!(outcome.failure.is_none(), "{name} seed {seed}: {:?}", outcome.failure);
            let prefetch = outcome.prefetch.expect("prefetch ran");
            assert!(prefetch.bytes_copied > 0, "{name} seed {seed}: nothing copied");
        }
    }
}

#[test]
fn v1_prefetch_marks_blocks_it_never_copied() {
    // v1 sets every bit at completion (fvd-v1.md §4.4, flaw 2): under dense overlapping writes a
    // block skipped while locked is later read from unwritten image storage (wrong data), or a
    // copy-on-write finds its block already marked (the engine's assertion). Hardened rescans.
    let scenario = SCENARIOS.iter().find(|s| s.name == "prefetch-dense").unwrap();
    let mut v1_failed = 0;
    for seed in 1..6 {
        let mut config = (scenario.build)(Seed(seed));
        config.profile = fvd_scenarios::campaign::config::ProfileName::V1;
        if let Some(failure) = run(&config).unwrap().failure {
            assert!(
                matches!(failure.class, FailureClass::WrongData | FailureClass::Invariant),
                "seed {seed}: {failure:?}"
            );
            v1_failed += 1;
        }
        let hardened = (scenario.build)(Seed(seed));
        assert!(run(&hardened).unwrap().failure.is_none(), "hardened failed on seed {seed}");
    }
    assert!(v1_failed >= 2, "v1 failed on only {v1_failed} of 5 seeds");
}

#[test]
fn v1_prefetch_stalls_as_a_liveness_failure() {
    // fvd-v1.md §4.4, flaw 1: every filled slot discarded while a pause was requested; v1 neither
    // pauses nor reads again and prefetch never finishes.
    let scenario = SCENARIOS.iter().find(|s| s.name == "prefetch-stall").unwrap();
    let (seed, failure) = (1..=10)
        .find_map(|seed| {
            let mut config = (scenario.build)(Seed(seed));
            config.profile = fvd_scenarios::campaign::config::ProfileName::V1;
            run(&config).unwrap().failure.map(|f| (seed, f))
        })
        .expect("v1 stalls on one of seeds 1-10 (3, 6 and 10 today)");
    assert_eq!(failure.class, FailureClass::Liveness, "{failure:?}");
    assert!(failure.message.contains("prefetch never finished"), "{}", failure.message);
    assert!(failure.message.contains("waits on engine: prefetch to finish"), "{}", failure.message);
    assert!(run(&(scenario.build)(Seed(seed))).unwrap().failure.is_none(), "hardened pauses and finishes");
}

#[test]
fn a_prefetch_study_writes_series_charts_and_a_tradeoff() {
    use fvd_scenarios::campaign::study::{StudyOptions, StudySetting, default_sweep, run_study};
    let dir = std::env::temp_dir().join(format!("fvdsim-study-test-{}", std::process::id()));
    let settings: Vec<StudySetting> = default_sweep()
        .into_iter()
        .filter(|s| s.label == "v1 defaults" || s.label == "--aimd-target-us 2000 --aimd-max-kb-s 65536")
        .collect();
    assert_eq!(settings.len(), 2, "the sweep names its settings by their flags");
    let options = StudyOptions { seeds: 2, requests: 4_000, ..StudyOptions::new(Seed(1)) };
    let report = run_study(&options, &settings, &dir, |_| {}).unwrap();
    assert_eq!(report.results.len(), 2);
    for result in &report.results {
        assert!(result.failure.is_none(), "{result:?}");
        assert!(result.time_to_finish_s.is_some(), "{} did not finish", result.setting.label);
        assert_eq!(result.seeds.len(), 2);
        // The idle disk finishes first, and the interval holds foreground requests to measure.
        let ratio = result.finish_ratio.unwrap();
        assert!(ratio >= 1.0, "{}: {ratio}× the idle time", result.setting.label);
        assert!(result.seeds.iter().all(|s| s.requests_during_prefetch > 0 && s.baseline_p99_us > 0.0));
        let (low, high) = result.p99_inflation_range_percent;
        assert!(low <= result.p99_inflation_percent && result.p99_inflation_percent <= high);
        // Blocks the foreground wrote first are never copied: most of the 512 MiB base, not all.
        for seed in &result.seeds {
            assert!(seed.bytes_copied >= 256 << 20, "{} copied {}", result.setting.label, seed.bytes_copied);
        }
    }
    for file in [
        "study.json",
        "index.html",
        "tradeoff.svg",
        "v1_defaults.json",
        "v1_defaults-prefetch.svg",
        "v1_defaults-latency.svg",
        "aimd-target-us_2000_aimd-max-kb-s_65536-latency.svg",
    ] {
        assert!(dir.join(file).exists(), "missing {file}");
    }
    let index = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(
        index.contains("closest to the goal") && index.contains("fvdsimSort"),
        "the index answers the goal in a sortable table"
    );
    // Charts redraw from the saved JSON alone.
    let before = std::fs::read_to_string(dir.join("v1_defaults-prefetch.svg")).unwrap();
    std::fs::remove_file(dir.join("v1_defaults-prefetch.svg")).unwrap();
    std::fs::remove_file(dir.join("tradeoff.svg")).unwrap();
    fvd_scenarios::campaign::study::redraw_study(&dir).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("v1_defaults-prefetch.svg")).unwrap(), before);
    assert!(dir.join("tradeoff.svg").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn prefetch_finishing_while_guest_writes_commit_keeps_their_stale_bits() {
    // Seed 22 once failed `stale ⊆ snapshot ⊆ fresh`: writing the metadata home replaced the stale
    // bitmap with its snapshot and dropped the bits of writes that committed meanwhile.
    let scenario = SCENARIOS.iter().find(|s| s.name == "prefetch-slow-image").unwrap();
    let outcome = run(&(scenario.build)(Seed(22))).unwrap();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
}

#[test]
fn a_runs_crash_state_key_names_the_state_its_crash_left() {
    // The re-run baseline of `fvdsim bench crash-states` counts distinct states by this key, as
    // enumeration does: the same crash gives the same key, crashes at events that change nothing
    // a crash could leave give the same key, and a crash that drops unflushed writes gives
    // another key than one that keeps them.
    use fvd_scenarios::campaign::config::{CrashPoint, CrashSpec};
    use fvd_sim::CrashStrategy;
    let scenario = SCENARIOS.iter().find(|s| s.name == "exhaustive").unwrap();
    let config = (scenario.build)(Seed(1));
    let key_at = |occurrence: u64, strategy: CrashStrategy| {
        let mut at = config.clone();
        at.crashes.schedule = Some(vec![CrashSpec {
            after_request: 0,
            point: CrashPoint::RandomEvent,
            occurrence,
            strategy,
            atomic_unit: fvd_sim::AtomicUnit::Sector,
        }]);
        assert!(run(&at).unwrap().crash_state_keys.is_empty(), "the plain runner records no key");
        let outcome = fvd_scenarios::campaign::run::run_recording_crash_states(&at).unwrap();
        assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
        assert_eq!(outcome.crash_state_keys.len(), 1, "one crash, one key");
        outcome.crash_state_keys[0]
    };
    let events = 80u64;
    let kept: Vec<_> = (1..=events).map(|k| key_at(k, CrashStrategy::Clean)).collect();
    assert_eq!(key_at(7, CrashStrategy::Clean), kept[6], "the same crash, the same key");
    let distinct: std::collections::BTreeSet<_> = kept.iter().collect();
    assert!(distinct.len() > 5, "the state moves as the workload runs: {} keys", distinct.len());
    assert!(distinct.len() < kept.len(), "some events change nothing a crash could leave");
    let dropped_differs =
        (1..=events).any(|k| key_at(k, CrashStrategy::Subset { keep_mask: 0 }) != kept[(k - 1) as usize]);
    assert!(dropped_differs, "dropping the unflushed writes leaves another state somewhere");
}
