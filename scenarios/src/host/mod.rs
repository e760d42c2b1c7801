//! The host environment: the engine on real files, outside the simulator.
//!
//! [`FileDevice`] implements [`BlockDevice`] with `pread`/`pwrite`/`fdatasync`; [`HostEnv`]
//! implements [`Env`] with the wall clock and a plain single-threaded executor ([`HostExecutor`]).
//! This is the only place in fvdsim that touches real files and real time for the engine.

mod executor;
mod file;

pub use executor::{HostEnv, HostExecutor};
pub use file::FileDevice;

#[cfg(test)]
mod tests;
