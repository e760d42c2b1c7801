//! Scenarios, the oracle, benchmarks and the `fvdsim` command line.

pub mod bench;
pub mod campaign;
pub mod demo;
pub mod host;
pub mod img;
pub mod oracle;
pub mod rig;
pub mod stamp;
pub mod trace;
