//! The FVD (Fast Virtual Disk) image engine.
//!
//! The engine sees storage only through [`BlockDevice`] and sees time, randomness, background
//! tasks and progress reporting only through [`Env`]. It owns no I/O, clock, thread or RNG, so the
//! same code runs on the deterministic simulator (`fvd-sim`) and on real files (`fvd-scenarios`'
//! host module). See `ARCHITECTURE.md` for the map and `docs/format.md` for the byte layout.

pub use fvd_contract::{device, env};

pub use device::{BlockDevice, DeviceError, IoFuture, IoKind, SECTOR_BYTES, SECTOR_BYTES_USIZE, WriteFlags};
pub use env::{Env, Join, LocalFuture, Progress, ProgressPoint, ready};
pub mod error;
pub mod format;
pub mod image;

pub use error::FvdError;
pub use image::{
    BaseImage, CheckReport, CommitMode, CreateOptions, Devices, EngineStats, FvdImage, GROUP_COMMIT_DELAY_NS,
    GROUP_COMMIT_MAX_QUEUED, ImageInfo, JournalSize, MapExtent, MapSource, OpenOptions, PrefetchConfig,
    PrefetchMeasure, PrefetchPhase, PrefetchPolicy, PrefetchSample, PrefetchTelemetry, Profile, WindowSide, check,
};
