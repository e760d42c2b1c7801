//! Every persisted file version loads (`fvd_scenarios::schema`): a committed example of each, read
//! with the product's own types and loaders. A change that stops an existing file from loading, or
//! a version bump without a new example, fails here.

use std::path::{Path, PathBuf};

use fvd_scenarios::schema;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schema").join(name)
}

fn load<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let text = std::fs::read_to_string(example(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} no longer loads: {e}"))
}

/// The `schema_version` an example file says it has.
fn version_of(path: &Path) -> u64 {
    let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    value["schema_version"].as_u64().unwrap_or_else(|| panic!("{} has no schema_version", path.display()))
}

#[test]
fn every_example_is_of_the_version_this_build_writes() {
    for (name, version) in [
        ("run-report-v1.json", schema::RUN_REPORT),
        ("study-v2.json", schema::STUDY),
        ("swarm-failures-v1.json", schema::SWARM_FAILURE_DB),
        ("bench-sim-v4.json", schema::BENCH),
        ("qemu-report-v1.json", schema::QEMU_REPORT),
        ("qemu-campaign-v1.json", schema::QEMU_CAMPAIGN),
        ("qemu-finding-v1.json", schema::QEMU_FINDING),
    ] {
        assert_eq!(version_of(&example(name)), u64::from(version), "{name}: bump means a new example");
        assert!(name.contains(&format!("-v{version}.")), "{name}: the file name carries the version");
    }
}

#[test]
fn a_run_report_loads_and_redraws() {
    let report: fvd_scenarios::campaign::output::Report = load("run-report-v1.json");
    assert_eq!(report.schema_version, schema::RUN_REPORT);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example("run-report-v1.json"), dir.path().join("report.json")).unwrap();
    let charts = fvd_scenarios::campaign::output::redraw_run(dir.path()).unwrap();
    assert!(charts > 0 && dir.path().join("index.html").exists());
}

#[test]
fn a_failure_file_written_before_the_mirror_types_still_replays_as_the_same_config() {
    // Written by an earlier build, when the simulator's types went into files directly.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/swarm-close-waits-for-prefetch-read.json");
    assert_eq!(version_of(&path), u64::from(schema::FAILURE_FILE));
    let file = fvd_scenarios::campaign::output::read_failure_file(&path).unwrap();
    // Writing it again gives the same JSON: the mirrors write what the simulator's derives wrote.
    let before: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let after = serde_json::to_value(&file).unwrap();
    // Fields added since (with defaults) are allowed; every field the old file has must read
    // back and write out the same.
    for (key, old) in before["config"].as_object().unwrap() {
        assert_eq!(&after["config"][key], old, "config.{key} changed");
    }
}

#[test]
fn a_study_loads_and_redraws() {
    let study: fvd_scenarios::campaign::study::StudyReport = load("study-v2.json");
    assert_eq!(study.schema_version, schema::STUDY);
    assert!(!study.results.is_empty() && !study.results[0].seeds.is_empty());
}

#[test]
fn a_swarm_failure_database_loads() {
    let db = fvd_scenarios::campaign::swarm::FailureDb::read(&example("swarm-failures-v1.json")).unwrap();
    assert_eq!(db.schema_version, schema::SWARM_FAILURE_DB);
    assert_eq!(db.failures.len(), 1);
}

#[test]
fn a_bench_report_loads() {
    let bench: fvd_scenarios::bench::SimBenchReport = load("bench-sim-v4.json");
    assert_eq!(bench.schema_version, schema::BENCH);
    assert_eq!(bench.random_write.len(), 6, "three sizes, two payloads");
    assert_eq!(bench.copy_floor.len(), 3);
    let table = bench.to_string();
    assert!(table.contains("1024 MiB  stamped") && table.contains("copy floor"), "{table}");
}

#[test]
fn qemu_reports_campaigns_and_finding_files_load() {
    let report: fvd_scenarios::qemu_crash::QemuReport = load("qemu-report-v1.json");
    assert_eq!(report.schema_version, schema::QEMU_REPORT);
    let campaign: fvd_scenarios::qemu_crash::campaign::CampaignReport = load("qemu-campaign-v1.json");
    assert_eq!(campaign.schema_version, schema::QEMU_CAMPAIGN);
    let finding = fvd_scenarios::qemu_crash::FindingFile::read(&example("qemu-finding-v1.json")).unwrap();
    assert_eq!(finding.schema_version, schema::QEMU_FINDING);
    assert!(!finding.ops.is_empty());
}
