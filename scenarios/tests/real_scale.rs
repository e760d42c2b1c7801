//! Real traces at real scale (issue #8): memory that grows with data, traces replayed as
//! recorded, every planned crash applied, every request accounted for, runs that can be watched
//! and interrupted.

use fvd_scenarios::campaign::config::{ReplayMode, WorkloadConfig};
use fvd_scenarios::campaign::run::{Progress, run, run_watched};
use fvd_scenarios::campaign::{RunConfig, scenario};
use fvd_scenarios::trace::TraceFormat;
use fvd_sim::Seed;

/// The main job's settings replaying `text` (plain format) from a file in `dir`.
fn trace_config(dir: &std::path::Path, text: &str, size_bytes: u64, wrap: bool) -> RunConfig {
    let path = dir.join("t.txt");
    std::fs::write(&path, text).unwrap();
    let mut config = (scenario("cloudphysics").unwrap().build)(Seed(3));
    config.workload = WorkloadConfig::Trace {
        path: path.display().to_string(),
        format: TraceFormat::Plain,
        mode: ReplayMode::OpenLoop { time_scale: 1.0, max_in_flight: 64 },
        wrap,
    };
    config.image.size_bytes = size_bytes;
    config.image.base_bytes = size_bytes;
    config.verify_sample_sectors = 256;
    config
}

#[test]
fn an_idle_gap_of_three_days_with_prefetch_copying_the_base_costs_little_memory() {
    // Before: every copied byte was held in memory (17 GB for a 16 GiB base).
    let dir = tempfile::tempdir().unwrap();
    let base = 512 << 20;
    let mut config = trace_config(dir.path(), "0 0 8 w\n259200000 1048000 8 r\n", base, false);
    config.crashes.count = 2;
    let outcome = run(&config).unwrap();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let prefetch = outcome.prefetch.as_ref().expect("the main job prefetches");
    assert!(prefetch.bytes_copied >= base / 2, "prefetch copied {} bytes", prefetch.bytes_copied);
    assert!(outcome.summary.simulated_seconds > 259_200.0);
    let resident = outcome.summary.disk_resident_bytes;
    assert!(resident < base / 50, "{resident} bytes of disk memory for {} bytes copied", prefetch.bytes_copied);
}

#[test]
fn a_trace_beyond_the_disk_is_refused_naming_its_request_unless_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let text = "0 0 8 w\n1 100 8 r\n2 4096 16 w\n3 8 8 r\n";
    let error = run(&trace_config(dir.path(), text, 1 << 20, false)).unwrap_err().to_string();
    assert!(error.contains("request 3 (sectors 4096..4112) does not fit the 1048576-byte virtual disk"), "{error}");
    assert!(error.contains("--wrap"), "{error}");
    let mut wrapped = trace_config(dir.path(), text, 1 << 20, true);
    wrapped.crashes.count = 0;
    let outcome = run(&wrapped).unwrap();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    assert_eq!(outcome.summary.folded, 1);
    assert_eq!(outcome.summary.completed, 4);
}

#[test]
fn every_planned_crash_is_applied_however_short_the_workload() {
    let dir = tempfile::tempdir().unwrap();
    let text: String =
        (0..30).map(|i| format!("{} {} 8 {}\n", i * 10, i * 64, if i % 3 == 0 { 'r' } else { 'w' })).collect();
    let mut config = trace_config(dir.path(), &text, 4 << 20, false);
    config.crashes.count = 50;
    config.flush_every_requests = 4;
    let outcome = run(&config).unwrap();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    assert_eq!(outcome.crashes.len(), 50, "{:?}", outcome.summary.crashes_by_point);
    let mut random = (scenario("random").unwrap().build)(Seed(5));
    if let WorkloadConfig::Random { requests, .. } = &mut random.workload {
        *requests = 1_000;
    }
    random.crashes.count = 50;
    random.verify_sample_sectors = 64;
    let outcome = run(&random).unwrap();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    assert_eq!(outcome.crashes.len(), 50);
    assert_eq!(outcome.summary.crashes_planned, 50);
    assert_eq!(outcome.summary.crashes_note, None);
}

#[test]
fn every_issued_request_completes_fails_or_is_dropped_at_a_crash() {
    let mut config = (scenario("random-faults").unwrap().build)(Seed(2));
    if let WorkloadConfig::Random { requests, .. } = &mut config.workload {
        *requests = 2_000;
    }
    config.crashes.count = 8;
    config.verify_sample_sectors = 128;
    let outcome = run(&config).unwrap();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let s = &outcome.summary;
    assert_eq!(s.issued, 2_000);
    assert_eq!(s.completed + s.failed + s.dropped_at_crash, s.issued, "{s:?}");
    assert!(s.dropped_at_crash > 0 && s.failed > 0, "{s:?}");
    assert_eq!(s.completed, s.reads + s.writes);
}

#[test]
fn a_watcher_sees_progress_and_can_interrupt_the_run() {
    let mut config = (scenario("random").unwrap().build)(Seed(4));
    config.verify_sample_sectors = 64;
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let log = std::rc::Rc::clone(&seen);
    let watcher = Box::new(move |p: &Progress| {
        log.borrow_mut().push(*p);
        p.issued < 5_000
    });
    let outcome = run_watched(&config, 16, Some(watcher)).unwrap();
    assert!(outcome.summary.interrupted);
    assert!(outcome.failure.is_none());
    assert_eq!(outcome.summary.issued, 5_000);
    let seen = seen.borrow();
    assert!(seen.iter().any(|p| p.issued == 1_000 && p.total == 20_000));
    assert!(seen.windows(2).all(|w| w[0].simulated_seconds <= w[1].simulated_seconds));
}

#[test]
fn a_configuration_that_would_size_an_allocation_by_an_absurd_number_is_refused() {
    // Failure files are input: a crash count of u32::MAX drew billions of schedule entries.
    let mut config = (scenario("random").unwrap().build)(Seed(1));
    config.crashes.count = u32::MAX;
    let error = run(&config).unwrap_err().to_string();
    assert!(error.contains("crashes: 4294967295 is more than 100000"), "{error}");
    config.crashes.count = 3;
    config.crashes.atomic_units.clear();
    let error = run(&config).unwrap_err().to_string();
    assert!(error.contains("needs at least one point and one atomic unit"), "{error}");
}

#[test]
fn a_prefetch_read_completing_after_stop_wakes_close() {
    // Found by a 10-minute `fvdsim swarm`: close waited forever for prefetch I/O to drain, because
    // the read completion that cleared `read_active` woke nobody. The failure file replays it.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/swarm-close-waits-for-prefetch-read.json");
    let file = fvd_scenarios::campaign::output::read_failure_file(&path).unwrap();
    assert_eq!(file.failure.class, fvd_scenarios::campaign::FailureClass::Liveness);
    let outcome = run(&file.config).unwrap();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
}
