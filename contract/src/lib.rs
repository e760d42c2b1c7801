//! The storage contract between image formats and the worlds they run in.
//!
//! A format engine sees storage only through [`BlockDevice`] and sees time, randomness,
//! background tasks and progress reporting only through [`Env`]. The deterministic simulator
//! (`fvd-sim`) and the real-file host (`fvd-scenarios`' `host` module) implement them; formats
//! (`fvd-engine` today) use them. Keeping the contract in its own crate lets `fvd-sim` depend on
//! it without depending on any format, so a format's own tests can run on `SimDisk`.

pub mod device;
pub mod env;
pub mod sync;

pub use device::{BlockDevice, DeviceError, IoFuture, IoKind, SECTOR_BYTES, SECTOR_BYTES_USIZE, WriteFlags};
pub use env::{Env, Join, LocalFuture, Progress, ProgressPoint, ready};
pub use sync::{AsyncLock, AsyncLockGuard};
