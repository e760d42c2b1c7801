//! Every file fvdsim writes for a person or a later run to read, with its version, in one place
//! (`docs/file-formats.md`). A change to a persisted type that changes its JSON bumps the version
//! here; `scenarios/tests/schema.rs` loads a committed example of every file version
//! (`scenarios/tests/schema/`), so a change that stops an existing file from loading fails a test.
//!
//! The simulator's own types that go into files (crash strategies, atomic units, fault plans) are
//! written through mirror types ([`sim`]), so a refactor of `fvd-sim` cannot change a file format
//! without a compile error here.

pub mod sim;

/// `report.json` of `fvdsim run` ([`crate::campaign::output::Report`]).
pub const RUN_REPORT: u32 = 1;

/// `failure-*.json` of a failing run, and what `fvdsim shrink` writes
/// ([`crate::campaign::output::FailureFile`]).
pub const FAILURE_FILE: u32 = 1;

/// `study.json` of `fvdsim prefetch-study` ([`crate::campaign::study::StudyReport`]); 2: results
/// per seed, the goal, exact interval percentiles.
pub const STUDY: u32 = 2;

/// `failures.json`, the failing-seed database of `fvdsim swarm` and the nightly campaign
/// ([`crate::campaign::swarm::FailureDb`]).
pub const SWARM_FAILURE_DB: u32 = 1;

/// `fvdsim bench --json` ([`crate::bench`]). 3: `bench sim` reports every size and payload as
/// the fastest of repeated runs, and the copy floor; 4: random writes are measured after a fill
/// of every page (`fill_writes`, `fill_wall_seconds`).
pub const BENCH: u32 = 4;

/// `report.json` of one `fvdsim qemu` run ([`crate::qemu_crash::QemuReport`]).
pub const QEMU_REPORT: u32 = 1;

/// `campaign.json` of `fvdsim qemu` ([`crate::qemu_crash::campaign::CampaignReport`]).
pub const QEMU_CAMPAIGN: u32 = 1;

/// `finding-state-K.json` of `fvdsim qemu` ([`crate::qemu_crash::FindingFile`]).
pub const QEMU_FINDING: u32 = 1;
