//! `fvdsim img` on QED images (`docs/qed.md`), found by their magic as `qemu-img` probes: info,
//! check (`--repair` with QEMU's semantics), read, write, map, and `create --format qed`.
//!
//! The same promises as for FVD: arguments checked before anything is opened, read-only opens
//! where nothing is written, bounded buffers, and `create` through a temporary file renamed into
//! place.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use fvd_engine::BlockDevice;
use fvd_qed::format::{F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, F_NEED_CHECK, HEADER_BYTES};
use fvd_qed::{ClusterState, QedCreateOptions, QedError, QedHeader, QedImage};

use super::json::{self, CheckJson, InfoJson, MapEntry, Output};
use super::{
    CreateArgs, EXIT_FOUND, EXIT_OK, ImgError, RangeArgs, TempFiles, absolute, allocated_bytes, beside,
    check_alignment, check_range, file_error, header_name, human_size, merge_extents, read_range, write_range,
};
use crate::campaign::guest::GuestImage;
use crate::host::{FileDevice, HostExecutor};

impl From<QedError> for ImgError {
    fn from(error: QedError) -> ImgError {
        ImgError::input(error.to_string())
    }
}

/// True if the file at `path` starts with QED's magic.
pub(super) fn is_qed(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 0)).is_ok()
        && &magic == b"QED\0"
}

/// The header and the backing file's name, read with a read-only handle.
fn read_header(path: &Path) -> Result<(QedHeader, Option<PathBuf>), ImgError> {
    let file = std::fs::File::open(path).map_err(|e| file_error("cannot open image", path, &e))?;
    let len = file.metadata().map_err(|e| file_error("cannot read image", path, &e))?.len();
    let mut bytes = vec![0u8; HEADER_BYTES.min(len as usize)];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0)
        .map_err(|e| file_error("cannot read image", path, &e))?;
    let header = QedHeader::decode(&bytes, len)?;
    if !header.has_backing_file() {
        return Ok((header, None));
    }
    // Bounded: decode checked that the name lies inside the header clusters, inside the file.
    let mut name = vec![0u8; header.backing_name_bytes as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut name, u64::from(header.backing_name_offset))
        .map_err(|e| file_error("cannot read the backing file name of", path, &e))?;
    Ok((header, Some(PathBuf::from(std::ffi::OsStr::from_bytes(&name)))))
}

/// Opens the image (and its backing file, resolved beside it). A writable open of an image with
/// NEED_CHECK repairs it first, as QEMU does.
fn open(executor: &HostExecutor, path: &Path, writable: bool) -> Result<QedImage, ImgError> {
    let (_, backing_name) = read_header(path)?;
    let image = Rc::new(FileDevice::open(path, writable).map_err(|e| file_error("cannot open image", path, &e))?)
        as Rc<dyn BlockDevice>;
    let backing = match backing_name {
        Some(name) => {
            let resolved = beside(path, &name);
            let device = FileDevice::open(&resolved, false).map_err(|e| {
                ImgError::input(format!(
                    "cannot open backing file {} (named {} in the header; relative to the image's directory): {e}",
                    resolved.display(),
                    name.display()
                ))
            })?;
            Some(Rc::new(device) as Rc<dyn BlockDevice>)
        }
        None => None,
    };
    let opened = executor.block_on(async move {
        if writable { QedImage::open_writable(image, backing).await } else { QedImage::open(image, backing).await }
    });
    Ok(opened?)
}

fn feature_names(features: u64) -> String {
    let mut names = Vec::new();
    for (bit, name) in
        [(F_BACKING_FILE, "backing file"), (F_NEED_CHECK, "need check"), (F_BACKING_FORMAT_NO_PROBE, "backing raw")]
    {
        if features & bit != 0 {
            names.push(name);
        }
    }
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

pub(super) fn info(path: &Path, output: Output) -> Result<u8, ImgError> {
    let (header, backing) = read_header(path)?;
    if output == Output::Json {
        json::print(&InfoJson {
            filename: path.display().to_string(),
            format: "qed",
            virtual_size: header.image_bytes,
            actual_size: allocated_bytes(path).unwrap_or(0),
            cluster_size: Some(header.cluster_bytes),
            backing_filename: backing.map(|b| b.display().to_string()),
            dirty_flag: header.needs_check(),
        });
        return Ok(EXIT_OK);
    }
    say!("image: {}", path.display());
    say!("file format: qed");
    say!("virtual size: {} ({} bytes)", human_size(header.image_bytes), header.image_bytes);
    say!("disk size: {}", human_size(allocated_bytes(path).unwrap_or(0)));
    say!("cluster_size: {}", header.cluster_bytes);
    say!("table size: {} cluster(s), {} entries per table", header.table_clusters, header.table_entries());
    say!("header size: {} cluster(s); L1 table at {:#x}", header.header_clusters, header.l1_offset);
    say!("features: {:#x} ({})", header.features, feature_names(header.features));
    say!("backing file: {}", backing.map_or("none".into(), |b| b.display().to_string()));
    say!("dirty flag: {}", header.needs_check());
    Ok(EXIT_OK)
}

pub(super) fn check(executor: &HostExecutor, path: &Path, repair: bool, output: Output) -> Result<u8, ImgError> {
    let qed = open(executor, path, repair)?;
    let report = executor.block_on(async move {
        let report = qed.check(repair).await;
        let closed = qed.close().await;
        report.and_then(|r| closed.map(|()| r))
    })?;
    if output == Output::Json {
        json::print(&CheckJson {
            filename: path.display().to_string(),
            format: "qed",
            check_errors: 0,
            corruptions: report.corruptions - report.corruptions_fixed,
            leaks: report.leaks,
            corruptions_fixed: report.corruptions_fixed,
            leaks_fixed: 0,
            allocated_clusters: Some(report.allocated_clusters),
            image_end_offset: None,
        });
        return Ok(if report.is_consistent() { EXIT_OK } else { EXIT_FOUND });
    }
    for line in &report.messages {
        say!("ERROR {line}");
    }
    if report.leaks > 0 {
        say!("{} leaked cluster(s) (counted, never reclaimed, as qemu-img does)", report.leaks);
    }
    say!(
        "{} corruption(s), {} fixed, {} leak(s), {} allocated cluster(s)",
        report.corruptions,
        report.corruptions_fixed,
        report.leaks,
        report.allocated_clusters
    );
    Ok(if report.is_consistent() { EXIT_OK } else { EXIT_FOUND })
}

pub(super) fn read(executor: &HostExecutor, args: &RangeArgs) -> Result<u8, ImgError> {
    let (offset, len) = (args.offset, args.len);
    check_alignment("read", offset, len)?;
    let (header, _) = read_header(&args.image)?;
    check_range("read", offset, len, header.image_bytes)?;
    let qed = open(executor, &args.image, false)?;
    read_range(executor, GuestImage::Qed(Rc::new(qed)), offset, len, args.pattern)
}

pub(super) fn write(executor: &HostExecutor, args: &RangeArgs) -> Result<u8, ImgError> {
    let (offset, len, pattern) = (args.offset, args.len, args.pattern.unwrap_or(0xcd));
    check_alignment("write", offset, len)?;
    let (header, _) = read_header(&args.image)?;
    check_range("write", offset, len, header.image_bytes)?;
    let qed = open(executor, &args.image, true)?;
    write_range(executor, GuestImage::Qed(Rc::new(qed)), offset, len, pattern)
}

pub(super) fn map(executor: &HostExecutor, path: &Path, output: Output) -> Result<u8, ImgError> {
    let qed = open(executor, path, false)?;
    let header = qed.header();
    let has_backing = header.has_backing_file();
    let clusters = executor.block_on(async move {
        let cluster = header.cluster_bytes;
        let mut clusters = Vec::new();
        let mut at = 0u64;
        while at < header.image_bytes {
            let len = cluster.min(header.image_bytes - at);
            clusters.push((at, len, qed.cluster_state(at).await?));
            at += len;
        }
        Ok::<_, QedError>(clusters)
    })?;
    let extents = merge_extents(clusters, |last, since, state| match (last, state) {
        (ClusterState::Data(a), ClusterState::Data(b)) => a + since == b,
        (a, b) => a == b,
    });
    if output == Output::Json {
        let entries: Vec<MapEntry> = extents
            .iter()
            .map(|&(offset, len, state)| match state {
                ClusterState::Data(host) => MapEntry::image(offset, len, host),
                ClusterState::Zero => MapEntry::zeros(offset, len, true),
                ClusterState::Unallocated if has_backing => MapEntry::backing(offset, len),
                ClusterState::Unallocated => MapEntry::zeros(offset, len, false),
            })
            .collect();
        json::print(&entries);
        return Ok(EXIT_OK);
    }
    say!("{:>16} {:>16} {:>16}  where", "offset", "length", "data offset");
    for (offset, len, state) in extents {
        let (mapped, place) = match state {
            ClusterState::Data(host) => (format!("{host:#x}"), "image"),
            ClusterState::Zero => ("-".into(), "zero cluster"),
            ClusterState::Unallocated if has_backing => ("-".into(), "backing file"),
            ClusterState::Unallocated => ("-".into(), "unallocated (zeros)"),
        };
        say!("{offset:>#16x} {len:>#16x} {mapped:>16}  {place}");
    }
    Ok(EXIT_OK)
}

/// `img create --format qed`: QEMU's layout (`docs/qed.md` §2), built in a temporary file renamed
/// into place.
pub(super) fn create(executor: &HostExecutor, args: &CreateArgs) -> Result<u8, ImgError> {
    let fvd_only = [
        ("--compact", args.compact),
        ("--block-size", args.block_size.is_some()),
        ("--chunk-size", args.chunk_size.is_some()),
        ("--grow-unit", args.grow_unit.is_some()),
        ("--journal-size", args.journal_size.is_some()),
        ("--copy-on-read", args.copy_on_read),
        ("--data-file", args.data_file.is_some()),
    ];
    if let Some((option, _)) = fvd_only.iter().find(|(_, given)| *given) {
        return Err(ImgError::input(format!("{option} is an FVD option; QED has no such setting")));
    }
    let image_path = &args.image;
    let backing = match &args.base {
        Some(given) => {
            let resolved = beside(image_path, given);
            let metadata = std::fs::metadata(&resolved)
                .map_err(|e| ImgError::input(format!("cannot read backing file {}: {e}", resolved.display())))?;
            if absolute(&resolved) == absolute(image_path) {
                return Err(ImgError::input(format!(
                    "cannot create {}: it is its own backing file",
                    image_path.display()
                )));
            }
            Some((header_name(given, "base")?, metadata.len()))
        }
        None => None,
    };
    let size = args
        .size
        .or(backing.as_ref().map(|(_, len)| *len))
        .ok_or_else(|| ImgError::input("--size is required without --base"))?;
    let options = QedCreateOptions {
        size_bytes: size,
        cluster_bytes: args.cluster_size.unwrap_or(64 << 10),
        table_clusters: args.table_size.unwrap_or(4),
        backing_name: backing.map(|(name, _)| name),
    };
    let mut temps = TempFiles { files: Vec::new(), committed: false };
    let device = temps.create(image_path)?;
    executor.block_on(async move { fvd_qed::create(&device, &options).await })?;
    temps.commit()?;
    say!("Formatting '{}', fmt=qed size={size}", image_path.display());
    Ok(EXIT_OK)
}
