//! The scenario runner: configurations and named scenarios, the run loop with crash injection
//! and recovery, failure files and exact replay, shrinking, and the run directory (report.json,
//! charts, index.html).

pub mod config;
pub mod coverage;
pub mod enumerate;
pub mod guest;
pub mod outcome;
pub mod output;
pub mod qemu_judge;
pub mod run;
pub mod shrink;
pub mod study;
pub mod swarm;
mod verify;
mod workload;

pub use config::{RunConfig, SCENARIOS, scenario};
pub use run::{Failure, FailureClass, RunOutcome, RunSummary, run};
