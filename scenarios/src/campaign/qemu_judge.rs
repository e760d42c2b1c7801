//! The QEMU judge of a run (`fvdsim run --qemu-judge`, QED and Parallels; issue #12): after
//! every crash, before our recovery, the crash state is exported to a file and judged by QEMU.
//!
//! 1. `qemu-img check` on the crash state: QED must give 0 or 3 (leaks only; 2 is our engine's
//!    bug), Parallels at most the `in_use` corruption; our own check of the same file must count
//!    the same corruptions and leaks.
//! 2. `qemu-img check -r all` on a copy, then `qemu-img convert -O raw`: every sector of QEMU's
//!    repair is judged by the oracle (flushed writes survive, others old or new, nothing from
//!    another offset).
//! 3. After our recovery (the run's own writable open), the recovered image is exported and read
//!    by our engine on the host: every judged sector must equal QEMU's repair.
//!
//! Everything runs on host files (QEMU's tools, our engine on the host executor), never in the
//! simulated world: a judged run's event log is the same as the unjudged run's.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use fvd_engine::BlockDevice;
use fvd_parallels::ParallelsImage;
use fvd_qed::QedImage;
use fvd_sim::{SimDisk, SimRng};
use serde::{Deserialize, Serialize};

use super::guest::FormatName;
use super::outcome::{FailureClass, SectorFailure, Stop};
use super::workload::Shared;
use crate::host::{FileDevice, HostExecutor};
use crate::qemu::{QemuCheck, QemuImg};
use crate::rig::Rig;
use crate::stamp::SECTOR_BYTES;

/// Disks up to this size have every sector judged; larger ones the written sectors and a sample.
const JUDGE_ALL_BYTES: u64 = 256 << 20;
/// Sectors never written, sampled on larger disks.
const UNWRITTEN_SAMPLE: u64 = 4096;

/// What the QEMU judge saw over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuJudgeSummary {
    /// `qemu-img --version`, first line.
    pub version: String,
    /// The format judged (`qed`, `parallels`).
    #[serde(default)]
    pub format: String,
    /// Crash states judged.
    pub crash_states: u64,
    /// Of those, `qemu-img check` found nothing (exit 0).
    pub check_clean: u64,
    /// Of those, leaks only (QED exit 3; Parallels no corruption beyond `in_use`).
    pub check_leaks_only: u64,
    /// Parallels states whose only corruption was the `in_use` flag (leaks or not).
    pub check_in_use: u64,
    /// QED states with corruption under NEED_CHECK (repaired by the check at open).
    #[serde(default)]
    pub check_need_check: u64,
    /// QED states where QEMU counted more leaks than there are unreferenced clusters (QEMU
    /// 10.0.2: one per `cluster_bytes - 1` clusters of file; docs/qed.md).
    #[serde(default)]
    pub qemu_leak_overcount: u64,
    /// Leaked clusters QEMU found, over all states.
    pub leaks: u64,
    /// Sectors of QEMU's repaired images judged by the oracle.
    pub sectors_judged: u64,
    /// Sectors of our recovery compared with QEMU's repair.
    pub sectors_compared: u64,
}

/// The judge: `qemu-img`, a scratch directory, the exported base image.
pub(super) struct QemuJudge {
    qemu: QemuImg,
    dir: tempfile::TempDir,
    format: FormatName,
    base: Option<PathBuf>,
    rng: SimRng,
    pub(super) summary: QemuJudgeSummary,
}

/// Our engine's check of a crash state (no repair).
#[derive(Debug, Clone, Copy)]
struct OurCheck {
    corruptions: u64,
    leaks: u64,
    /// The image says it may be inconsistent: QED's NEED_CHECK, Parallels' `in_use`.
    dirty: bool,
    /// Leaks QEMU 10.0.2's QED check counts beyond the unreferenced clusters: one per
    /// `cluster_bytes - 1` clusters of file (docs/qed.md, "QEMU overcounts leaks"); 0 for
    /// Parallels.
    qemu_extra_leaks: u64,
}

/// One crash state judged before recovery, waiting for our recovery to compare with.
pub(super) struct Judged {
    crash: usize,
    raw: PathBuf,
    sectors: Vec<u64>,
}

fn qemu_format(format: FormatName) -> &'static str {
    match format {
        FormatName::Qed => "qed",
        FormatName::Parallels => "parallels",
        FormatName::Fvd => unreachable!("validate refuses --qemu-judge for FVD"),
    }
}

fn host_error(what: &str, error: impl std::fmt::Display) -> Stop {
    Stop::fail(FailureClass::UnexpectedError, format!("QEMU judge: {what}: {error}"))
}

/// Writes the disk's current content (what the engine would read) to `path`, leaving all-zero
/// MiB as holes.
fn export(disk: &SimDisk, path: &Path) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let len = disk.len_bytes();
    let mut file = std::fs::File::create(path)?;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0;
    while at < len {
        let n = CHUNK.min(len - at) as usize;
        disk.peek(at, &mut buf[..n]);
        if buf[..n].iter().any(|b| *b != 0) {
            file.seek(SeekFrom::Start(at))?;
            file.write_all(&buf[..n])?;
        }
        at += n as u64;
    }
    file.set_len(len)
}

impl QemuJudge {
    /// A judge for a run of `format`, the scratch directory in the system's temporary directory.
    ///
    /// Errors: [`Stop::Fail`] when `qemu-img` is missing or the directory cannot be made.
    pub(super) fn new(rig: &Rig, format: FormatName, seed: fvd_sim::Seed) -> Result<QemuJudge, Stop> {
        let qemu = QemuImg::find().map_err(|e| host_error("qemu-img", e))?;
        let dir = tempfile::Builder::new()
            .prefix("fvdsim-qemu-judge-")
            .tempdir()
            .map_err(|e| host_error("scratch directory", e))?;
        let base = match &rig.base {
            Some(disk) if format == FormatName::Qed => {
                // QED names its backing file `base.raw`, relative to the image.
                let path = dir.path().join("base.raw");
                export(disk, &path).map_err(|e| host_error("export the base image", e))?;
                Some(path)
            }
            _ => None,
        };
        let summary = QemuJudgeSummary {
            version: qemu.version().to_string(),
            format: qemu_format(format).to_string(),
            ..QemuJudgeSummary::default()
        };
        let rng = SimRng::stream(seed, fvd_sim::streams::QEMU_JUDGE);
        Ok(QemuJudge { qemu, dir, format, base, rng, summary })
    }

    /// The image file at `path` and the exported base, read-only.
    fn open_files(&self, path: &Path) -> Result<fvd_engine::Devices, String> {
        let open = |p: &Path| FileDevice::open(p, false).map(|d| Rc::new(d) as Rc<dyn BlockDevice>);
        let image = open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = self.base.as_deref().map(open).transpose().map_err(|e| format!("the base image: {e}"))?;
        Ok(fvd_engine::Devices { image, data: None, base })
    }

    /// Our engine's check of the image file at `path` (no repair).
    fn our_check(&self, path: &Path) -> Result<OurCheck, String> {
        let fvd_engine::Devices { image, base, .. } = self.open_files(path)?;
        let file_bytes = image.len_bytes();
        let format = self.format;
        HostExecutor::new().block_on(async move {
            match format {
                FormatName::Qed => {
                    let qed = QedImage::open(image, base).await.map_err(|e| e.to_string())?;
                    let report = qed.check(false).await.map_err(|e| e.to_string())?;
                    let header = qed.header();
                    let file_clusters = file_bytes / header.cluster_bytes;
                    Ok(OurCheck {
                        corruptions: report.corruptions,
                        leaks: report.leaks,
                        dirty: header.needs_check(),
                        qemu_extra_leaks: file_clusters / (header.cluster_bytes - 1),
                    })
                }
                _ => {
                    let prl = ParallelsImage::open(image).await.map_err(|e| e.to_string())?;
                    let report = prl.check(false).await.map_err(|e| e.to_string())?;
                    Ok(OurCheck {
                        corruptions: report.corruptions,
                        leaks: report.leaks,
                        dirty: report.unclean,
                        qemu_extra_leaks: 0,
                    })
                }
            }
        })
    }

    /// Judges the crash state on the rig's image disk (crash number `crash`, 1-based): QEMU's
    /// check, our check's agreement, QEMU's repair read through the oracle.
    ///
    /// Errors: [`Stop::Fail`] naming what QEMU or the oracle found.
    pub(super) fn before_recovery(
        &mut self,
        rig: &Rig,
        driver: &Shared,
        crash: usize,
        torn_allowed: bool,
    ) -> Result<Judged, Stop> {
        let judged = self.judge_crash_state(rig, driver, crash, torn_allowed);
        judged.map_err(|stop| self.keep_files(stop))
    }

    /// A finding keeps the scratch directory (the crash state, QEMU's repair, its raw read) and
    /// names it in the message; the run replays exactly from its failure file anyway.
    fn keep_files(&mut self, stop: Stop) -> Stop {
        match stop {
            Stop::Fail { class, message, sectors } => {
                self.dir.disable_cleanup(true);
                let message = format!("{message} [QEMU judge's files kept in {}]", self.dir.path().display());
                Stop::Fail { class, message, sectors }
            }
            other => other,
        }
    }

    fn judge_crash_state(
        &mut self,
        rig: &Rig,
        driver: &Shared,
        crash: usize,
        torn_allowed: bool,
    ) -> Result<Judged, Stop> {
        let fmt = qemu_format(self.format);
        let state = self.dir.path().join(format!("crash-{crash}.{fmt}"));
        export(&rig.image, &state).map_err(|e| host_error("export the crash state", e))?;
        let theirs = self.qemu.check(fmt, &state, false).map_err(|e| host_error("qemu-img check", e))?;
        let ours = self.our_check(&state).map_err(|e| host_error("our check of the crash state", e))?;
        self.count_check(&theirs, ours);
        self.verdict_before_repair(&theirs, ours, crash)?;
        // QEMU's repair, on a copy, and the disk as QEMU then reads it.
        let repaired = self.dir.path().join(format!("crash-{crash}-repaired.{fmt}"));
        std::fs::copy(&state, &repaired).map_err(|e| host_error("copy the crash state", e))?;
        let fixed = self.qemu.check(fmt, &repaired, true).map_err(|e| host_error("qemu-img check -r all", e))?;
        if fixed.aborted() || fixed.corruptions > 0 || fixed.check_errors > 0 {
            return Err(Stop::fail(
                FailureClass::Check,
                format!(
                    "QEMU judge, crash {crash}: `qemu-img check -r all` left {} corruption(s) (exit {:?}): {}",
                    fixed.corruptions, fixed.exit_code, fixed.stderr
                ),
            ));
        }
        let raw = self.dir.path().join(format!("crash-{crash}.raw"));
        self.qemu.convert_to_raw(fmt, &repaired, &raw).map_err(|e| host_error("qemu-img convert", e))?;
        let sectors = self.sectors_to_judge(driver);
        self.judge_raw(driver, &raw, &sectors, crash, torn_allowed)?;
        for path in [&state, &repaired] {
            let _ = std::fs::remove_file(path);
        }
        Ok(Judged { crash, raw, sectors })
    }

    fn count_check(&mut self, theirs: &QemuCheck, ours: OurCheck) {
        let s = &mut self.summary;
        s.crash_states += 1;
        s.leaks += theirs.leaks;
        let in_use_only = self.format == FormatName::Parallels && ours.dirty && theirs.corruptions == 1;
        let need_check = self.format == FormatName::Qed && ours.dirty && theirs.corruptions > 0;
        if ours.qemu_extra_leaks > 0 && theirs.leaks == ours.leaks + ours.qemu_extra_leaks {
            s.qemu_leak_overcount += 1;
        }
        if theirs.corruptions == 0 && theirs.leaks == 0 && !theirs.aborted() {
            s.check_clean += 1;
        } else if theirs.corruptions == 0 || in_use_only {
            s.check_leaks_only += u64::from(theirs.leaks > 0);
        }
        s.check_in_use += u64::from(in_use_only);
        s.check_need_check += u64::from(need_check);
    }

    fn verdict_before_repair(&self, theirs: &QemuCheck, ours: OurCheck, crash: usize) -> Result<(), Stop> {
        verdict_before_repair(self.format, theirs, ours, crash)
    }
    /// Every sector on small disks; on larger ones the written and unsettled sectors and a
    /// seeded sample of the others (the judge's own stream: the workload's draws stay the same).
    fn sectors_to_judge(&mut self, driver: &Shared) -> Vec<u64> {
        let d = driver.borrow();
        let disk_sectors = d.disk_sectors;
        if disk_sectors * SECTOR_BYTES <= JUDGE_ALL_BYTES {
            return (0..disk_sectors).collect();
        }
        let mut chosen: BTreeSet<u64> = d.oracle.touched_sectors().collect();
        chosen.extend(d.oracle.unsettled_sectors());
        for _ in 0..UNWRITTEN_SAMPLE {
            chosen.insert(self.rng.below(disk_sectors));
        }
        chosen.into_iter().collect()
    }

    fn judge_raw(
        &mut self,
        driver: &Shared,
        raw: &Path,
        sectors: &[u64],
        crash: usize,
        torn_allowed: bool,
    ) -> Result<(), Stop> {
        let mut file = std::fs::File::open(raw).map_err(|e| host_error("open QEMU's raw image", e))?;
        let d = driver.borrow();
        let mut bad: Vec<SectorFailure> = Vec::new();
        let mut bytes = vec![0u8; SECTOR_BYTES as usize];
        for &sector in sectors {
            read_sector(&mut file, sector, &mut bytes).map_err(|e| host_error("read QEMU's raw image", e))?;
            let allowed = d.oracle.allowed_after_crash(sector);
            if let Err(failure) = d.judge(sector, &bytes, &allowed)
                && !(torn_allowed && super::verify::is_byte_mix(&d, sector, &bytes, &allowed))
            {
                bad.push(failure);
            }
        }
        drop(d);
        self.summary.sectors_judged += sectors.len() as u64;
        if bad.is_empty() {
            return Ok(());
        }
        let message = format!(
            "QEMU judge, crash {crash}: after `qemu-img check -r all`, {} sector(s) read through `qemu-img convert` \
             hold data no rule allows (first: sector {} held {})",
            bad.len(),
            bad[0].sector,
            bad[0].actual
        );
        bad.truncate(16);
        Err(Stop::Fail { class: FailureClass::WrongData, message, sectors: bad })
    }

    /// After our recovery: the recovered image, read by our engine on the host, must hold what
    /// QEMU's repair holds in every judged sector.
    ///
    /// Errors: [`Stop::Fail`] at the first sector where they differ.
    pub(super) fn after_recovery(&mut self, rig: &Rig, driver: &Shared, judged: Judged) -> Result<(), Stop> {
        let compared = self.compare_recovery(rig, driver, judged);
        compared.map_err(|stop| self.keep_files(stop))
    }

    fn compare_recovery(&mut self, rig: &Rig, driver: &Shared, judged: Judged) -> Result<(), Stop> {
        let fmt = qemu_format(self.format);
        let crash = judged.crash;
        let ours_path = self.dir.path().join(format!("crash-{crash}-ours.{fmt}"));
        export(&rig.image, &ours_path).map_err(|e| host_error("export our recovered image", e))?;
        let ours =
            self.read_ours(&ours_path, &judged.sectors).map_err(|e| host_error("read our recovered image", e))?;
        let mut raw = std::fs::File::open(&judged.raw).map_err(|e| host_error("open QEMU's raw image", e))?;
        let mut theirs = vec![0u8; SECTOR_BYTES as usize];
        let d = driver.borrow();
        for (&sector, our_bytes) in judged.sectors.iter().zip(ours.chunks_exact(SECTOR_BYTES as usize)) {
            read_sector(&mut raw, sector, &mut theirs).map_err(|e| host_error("read QEMU's raw image", e))?;
            if our_bytes != theirs.as_slice() {
                let decode = |bytes: &[u8]| {
                    crate::stamp::decode(d.seed, sector, bytes, d.base.as_ref().map(|(c, n)| (c, *n))).to_string()
                };
                return Err(Stop::fail(
                    FailureClass::Check,
                    format!(
                        "QEMU judge, crash {crash}: our recovery and QEMU's repair disagree at sector {sector}: ours \
                         reads {}, QEMU's {}",
                        decode(our_bytes),
                        decode(&theirs)
                    ),
                ));
            }
        }
        drop(d);
        self.summary.sectors_compared += judged.sectors.len() as u64;
        for path in [&ours_path, &judged.raw] {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// Reads `sectors` (ascending) of the image file at `path` with our engine, read-only.
    fn read_ours(&self, path: &Path, sectors: &[u64]) -> Result<Vec<u8>, String> {
        let fvd_engine::Devices { image, base, .. } = self.open_files(path)?;
        let format = self.format;
        let sectors = sectors.to_vec();
        HostExecutor::new().block_on(async move {
            let reader = match format {
                FormatName::Qed => super::guest::GuestImage::Qed(Rc::new(
                    QedImage::open(image, base).await.map_err(|e| e.to_string())?,
                )),
                _ => super::guest::GuestImage::Parallels(Rc::new(
                    ParallelsImage::open(image).await.map_err(|e| e.to_string())?,
                )),
            };
            let mut out = vec![0u8; sectors.len() * SECTOR_BYTES as usize];
            let mut i = 0;
            while i < sectors.len() {
                let mut n = 1;
                while i + n < sectors.len() && n < 256 && sectors[i + n] == sectors[i] + n as u64 {
                    n += 1;
                }
                let buf = &mut out[i * SECTOR_BYTES as usize..(i + n) * SECTOR_BYTES as usize];
                reader.read(sectors[i] * SECTOR_BYTES, buf).await.map_err(|e| e.to_string())?;
                i += n;
            }
            Ok(out)
        })
    }
}

/// What QEMU's check may find in a crash state of our engine: QED exit 0 or 3 (leaks only), or
/// corruption in an image whose NEED_CHECK is set (the format's promise is then only that the
/// check at open repairs it, which the judge's `check -r all` and read-back prove); Parallels
/// nothing but `in_use` (and leaks). Our check must count what QEMU counts.
fn verdict_before_repair(format: FormatName, theirs: &QemuCheck, ours: OurCheck, crash: usize) -> Result<(), Stop> {
    let OurCheck { corruptions, leaks, dirty, qemu_extra_leaks } = ours;
    let allowed_corruptions = match format {
        FormatName::Qed if dirty => u64::MAX,
        FormatName::Parallels if dirty => 1,
        _ => 0,
    };
    if theirs.aborted() || theirs.check_errors > 0 || theirs.corruptions > allowed_corruptions {
        return Err(Stop::fail(
            FailureClass::Check,
            format!(
                "QEMU judge, crash {crash}: `qemu-img check -f {}` on the crash state, before recovery, {} \
                 (exit {:?}; {} corruption(s), {} leak(s)): {}",
                qemu_format(format),
                if theirs.aborted() { "aborted" } else { "finds corruption" },
                theirs.exit_code,
                theirs.corruptions,
                theirs.leaks,
                theirs.stderr
            ),
        ));
    }
    let leaks_agree = theirs.leaks == leaks || theirs.leaks == leaks + qemu_extra_leaks;
    if corruptions != theirs.corruptions || !leaks_agree {
        return Err(Stop::fail(
            FailureClass::Check,
            format!(
                "QEMU judge, crash {crash}: our check counts {corruptions} corruption(s) and {leaks} leak(s) on \
                 the crash state, qemu-img check {} and {} (QEMU's QED leak overcount here: {qemu_extra_leaks})",
                theirs.corruptions, theirs.leaks
            ),
        ));
    }
    Ok(())
}

fn read_sector(file: &mut std::fs::File, sector: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(sector * SECTOR_BYTES))?;
    file.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(exit_code: Option<i32>, corruptions: u64, leaks: u64) -> QemuCheck {
        QemuCheck {
            exit_code,
            corruptions,
            leaks,
            check_errors: 0,
            corruptions_fixed: 0,
            leaks_fixed: 0,
            stderr: String::new(),
        }
    }

    fn ours(corruptions: u64, leaks: u64, dirty: bool, qemu_extra_leaks: u64) -> OurCheck {
        OurCheck { corruptions, leaks, dirty, qemu_extra_leaks }
    }

    #[test]
    fn the_verdict_allows_what_each_format_promises_and_nothing_else() {
        let ok = |format, theirs: QemuCheck, ours| verdict_before_repair(format, &theirs, ours, 1).is_ok();
        // QED: leaks only; corruption only under NEED_CHECK; QEMU's leak overcount tolerated.
        assert!(ok(FormatName::Qed, check(Some(3), 0, 5), ours(0, 5, false, 0)));
        assert!(ok(FormatName::Qed, check(Some(3), 0, 6), ours(0, 5, false, 1)));
        assert!(!ok(FormatName::Qed, check(Some(3), 0, 7), ours(0, 5, false, 1)), "two extra leaks");
        assert!(!ok(FormatName::Qed, check(Some(2), 3, 0), ours(3, 0, false, 0)), "corrupt without NEED_CHECK");
        assert!(ok(FormatName::Qed, check(Some(2), 3, 0), ours(3, 0, true, 0)));
        assert!(!ok(FormatName::Qed, check(Some(2), 3, 0), ours(2, 0, true, 0)), "our check counts otherwise");
        // Parallels: the in_use flag only, and only when the image is in use.
        assert!(ok(FormatName::Parallels, check(Some(2), 1, 2), ours(1, 2, true, 0)));
        assert!(!ok(FormatName::Parallels, check(Some(2), 1, 0), ours(1, 0, false, 0)));
        assert!(!ok(FormatName::Parallels, check(Some(2), 2, 0), ours(2, 0, true, 0)), "more than in_use");
        assert!(!ok(FormatName::Parallels, check(None, 0, 0), ours(0, 0, true, 0)), "QEMU aborted");
        assert!(!ok(FormatName::Parallels, check(Some(0), 0, 1), ours(0, 0, false, 0)), "a leak we missed");
    }
}
