//! The deterministic world of fvdsim: seeded ChaCha streams ([`SimRng`]), a virtual clock and a
//! seeded single-threaded executor ([`Sim`]), the simulated disk ([`SimDisk`]) and the event log.
//!
//! Nothing here reads the wall clock, spawns an OS thread, iterates a `HashMap` or draws
//! unseeded randomness (`sim/clippy.toml` bans them). The same seed and build give the same event
//! log, byte for byte.

pub mod rng;

pub use rng::{Seed, SeedParseError, SimRng, streams};
pub mod executor;
pub mod log;

pub use executor::{
    EventSink, Halt, HaltCause, JoinHandle, RunError, Sim, SimHandle, SimOptions, StallReport, TaskId, WaitLabel,
};
pub use log::{Event, EventKind, EventLog, FaultKind, Source};
pub mod disk;

pub use disk::content::{ContentSource, ProceduralContent};
pub use disk::crash::{AtomicUnit, CrashPlan, CrashRecord, CrashStrategy, WriteFate};
pub use disk::fault::{FaultEffect, FaultOp, FaultPlan, FaultRule};
pub use disk::profile::{Contention, DeviceProfile, LatencyRange};
pub use disk::{CrashImage, DiskConfig, DiskStats, SimDisk};
pub mod env;
mod hint;

pub use env::SimEnv;
