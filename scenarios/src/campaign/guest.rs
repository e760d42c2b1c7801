//! The format seam of the runner: one open image of any format the harness drives (FVD, QED,
//! Parallels), with the operations the workload, recovery and verification use. FVD-only
//! facilities (engine counters, prefetch) answer `None` or nothing for the other formats.

use std::rc::Rc;

use fvd_engine::{Devices, EngineStats, FvdImage, PrefetchTelemetry};
use fvd_parallels::ParallelsImage;
use fvd_qed::QedImage;
use serde::{Deserialize, Serialize};

/// The image format a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FormatName {
    /// FVD (the default; every feature of the harness).
    #[default]
    Fvd,
    /// QED (`docs/qed.md`): random-event crashes, recovery by QEMU's check and repair.
    Qed,
    /// Parallels (`docs/parallels.md`): random-event crashes, recovery by QEMU's check and repair;
    /// no base image.
    Parallels,
}

impl FormatName {
    /// The lower-case name (`fvd`, `qed`, `parallels`).
    pub fn name(self) -> &'static str {
        match self {
            FormatName::Fvd => "fvd",
            FormatName::Qed => "qed",
            FormatName::Parallels => "parallels",
        }
    }
}

impl std::fmt::Display for FormatName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An error of any format's engine, as text naming what and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError(pub String);

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(error: impl std::fmt::Display) -> ImageError {
    ImageError(error.to_string())
}

/// An open image of any format. Cloning gives another handle on the same image.
#[derive(Clone)]
pub enum GuestImage {
    /// FVD.
    Fvd(FvdImage),
    /// QED.
    Qed(Rc<QedImage>),
    /// Parallels.
    Parallels(Rc<ParallelsImage>),
}

impl std::fmt::Debug for GuestImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GuestImage::Fvd(_) => "GuestImage::Fvd",
            GuestImage::Qed(_) => "GuestImage::Qed",
            GuestImage::Parallels(_) => "GuestImage::Parallels",
        })
    }
}

impl GuestImage {
    /// Reads guest bytes at `offset_bytes`.
    pub async fn read(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        match self {
            GuestImage::Fvd(image) => image.read(offset_bytes, buf).await.map_err(err),
            GuestImage::Qed(image) => image.read(offset_bytes, buf).await.map_err(err),
            GuestImage::Parallels(image) => image.read(offset_bytes, buf).await.map_err(err),
        }
    }

    /// Writes guest bytes at `offset_bytes`.
    pub async fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<(), ImageError> {
        match self {
            GuestImage::Fvd(image) => image.write(offset_bytes, data).await.map_err(err),
            GuestImage::Qed(image) => image.write(offset_bytes, data).await.map_err(err),
            GuestImage::Parallels(image) => image.write(offset_bytes, data).await.map_err(err),
        }
    }

    /// A guest flush: every write completed before it is durable when it completes.
    pub async fn flush(&self) -> Result<(), ImageError> {
        match self {
            GuestImage::Fvd(image) => image.flush().await.map_err(err),
            GuestImage::Qed(image) => image.flush().await.map_err(err),
            GuestImage::Parallels(image) => image.flush().await.map_err(err),
        }
    }

    /// A clean close.
    pub async fn close(self) -> Result<(), ImageError> {
        match self {
            GuestImage::Fvd(image) => image.close().await.map_err(err),
            GuestImage::Qed(image) => image.close().await.map_err(err),
            GuestImage::Parallels(image) => image.close().await.map_err(err),
        }
    }

    /// FVD's engine counters (`None` for other formats).
    pub fn stats(&self) -> Option<EngineStats> {
        match self {
            GuestImage::Fvd(image) => Some(image.stats()),
            _ => None,
        }
    }

    /// FVD's prefetch telemetry.
    pub fn prefetch_telemetry(&self) -> Option<PrefetchTelemetry> {
        match self {
            GuestImage::Fvd(image) => image.prefetch_telemetry(),
            _ => None,
        }
    }

    /// FVD's invariants (the other engines assert theirs inline).
    pub fn assert_invariants(&self) {
        if let GuestImage::Fvd(image) = self {
            image.assert_invariants();
        }
    }

    /// Waits for FVD's prefetch to finish (nothing to wait for in other formats).
    pub async fn wait_prefetch(&self) {
        if let GuestImage::Fvd(image) = self {
            image.wait_prefetch().await;
        }
    }

    /// Journal sectors the last FVD recovery replayed (0 for other formats).
    pub fn recovered_sectors(&self) -> u64 {
        self.stats().map_or(0, |s| s.recovered_sectors)
    }
}

/// Checks the image of `format` on `devices` without repairing: `Ok(corruptions)`, each a line
/// naming it (leaks are not corruption, as for `qemu-img check`; nor is the `in_use` flag of a
/// Parallels image open for writing). FVD's check reads its journal per `profile`.
///
/// Errors: the engine's error when the image cannot even be read for the check.
pub async fn check_format(
    format: FormatName,
    devices: Devices,
    profile: fvd_engine::Profile,
) -> Result<Vec<String>, ImageError> {
    match format {
        FormatName::Fvd => Ok(fvd_engine::check(&devices, profile, false).await.map_err(err)?.corruptions),
        FormatName::Qed => {
            let qed = QedImage::open(devices.image, devices.base).await.map_err(err)?;
            let report = qed.check(false).await.map_err(err)?;
            Ok(if report.corruptions == 0 { Vec::new() } else { report.messages })
        }
        FormatName::Parallels => {
            let prl = ParallelsImage::open(devices.image).await.map_err(err)?;
            let report = prl.check(false).await.map_err(err)?;
            Ok(report.corruption_messages().map(str::to_owned).collect())
        }
    }
}
