//! `fvdsim img` on Parallels images (`docs/parallels.md`), found by either magic as `qemu-img`
//! probes: info, check (`--repair` with QEMU's semantics), read, write, map, and
//! `create --format parallels`.
//!
//! The same promises as for FVD and QED: arguments checked before anything is opened, read-only
//! opens where nothing is written, bounded buffers, and `create` through a temporary file renamed
//! into place.

use std::path::Path;
use std::rc::Rc;

use fvd_engine::BlockDevice;
use fvd_parallels::format::{HEADER_BYTES, MAGIC_EXT, MAGIC_OLD};
use fvd_parallels::{ParallelsError, ParallelsHeader, ParallelsImage};

use super::json::{self, CheckJson, InfoJson, MapEntry, Output};
use super::{
    CreateArgs, EXIT_FOUND, EXIT_OK, ImgError, RangeArgs, TempFiles, allocated_bytes, check_alignment, check_range,
    file_error, human_size, merge_extents, read_range, write_range,
};
use crate::campaign::guest::GuestImage;
use crate::host::{FileDevice, HostExecutor};

/// QEMU's default cluster size for Parallels images (`qemu-img create -f parallels`).
const DEFAULT_CLUSTER_BYTES: u64 = 1 << 20;

impl From<ParallelsError> for ImgError {
    fn from(error: ParallelsError) -> ImgError {
        ImgError::input(error.to_string())
    }
}

/// True if the file at `path` starts with either Parallels magic.
pub(super) fn is_parallels(path: &Path) -> bool {
    let mut magic = [0u8; 16];
    std::fs::File::open(path).and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 0)).is_ok()
        && (&magic == MAGIC_EXT || &magic == MAGIC_OLD)
}

/// The header, read with a read-only handle.
fn read_header(path: &Path) -> Result<ParallelsHeader, ImgError> {
    let file = std::fs::File::open(path).map_err(|e| file_error("cannot open image", path, &e))?;
    let len = file.metadata().map_err(|e| file_error("cannot read image", path, &e))?.len();
    let mut bytes = vec![0u8; (HEADER_BYTES as usize).min(len as usize)];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0)
        .map_err(|e| file_error("cannot read image", path, &e))?;
    Ok(ParallelsHeader::decode(&bytes, len)?)
}

/// Opens the image. A writable open of an image left in use repairs it first, as QEMU's does.
fn open(executor: &HostExecutor, path: &Path, writable: bool) -> Result<ParallelsImage, ImgError> {
    read_header(path)?;
    let image = Rc::new(FileDevice::open(path, writable).map_err(|e| file_error("cannot open image", path, &e))?)
        as Rc<dyn BlockDevice>;
    let opened = executor.block_on(async move {
        if writable { ParallelsImage::open_writable(image).await } else { ParallelsImage::open(image).await }
    });
    Ok(opened?)
}

pub(super) fn info(path: &Path, output: Output) -> Result<u8, ImgError> {
    let header = read_header(path)?;
    if output == Output::Json {
        json::print(&InfoJson {
            filename: path.display().to_string(),
            format: "parallels",
            virtual_size: header.disk_bytes(),
            actual_size: allocated_bytes(path).unwrap_or(0),
            cluster_size: Some(header.cluster_bytes()),
            backing_filename: None,
            dirty_flag: header.in_use(),
        });
        return Ok(EXIT_OK);
    }
    say!("image: {}", path.display());
    say!("file format: parallels");
    say!("virtual size: {} ({} bytes)", human_size(header.disk_bytes()), header.disk_bytes());
    say!("disk size: {}", human_size(allocated_bytes(path).unwrap_or(0)));
    say!("cluster_size: {}", header.cluster_bytes());
    say!(
        "magic: {}",
        if header.ext { "WithouFreSpacExt (BAT counts clusters)" } else { "WithoutFreeSpace (BAT counts sectors)" }
    );
    say!("BAT: {} entries after the 64-byte header; data from sector {}", header.bat_entries, header.data_off_sectors);
    say!("geometry: {} heads, {} cylinders", header.heads, header.cylinders);
    say!("dirty flag: {}", header.in_use());
    Ok(EXIT_OK)
}

pub(super) fn check(executor: &HostExecutor, path: &Path, repair: bool, output: Output) -> Result<u8, ImgError> {
    let image = open(executor, path, repair)?;
    let report = executor.block_on(async move {
        let report = image.check(repair).await;
        let closed = image.close().await;
        report.and_then(|r| closed.map(|()| r))
    })?;
    if output == Output::Json {
        json::print(&CheckJson {
            filename: path.display().to_string(),
            format: "parallels",
            check_errors: 0,
            corruptions: report.corruptions - report.corruptions_fixed,
            leaks: report.leaks - report.leaks_fixed,
            corruptions_fixed: report.corruptions_fixed,
            leaks_fixed: report.leaks_fixed,
            allocated_clusters: Some(report.allocated_clusters),
            image_end_offset: Some(report.image_end_offset),
        });
        return Ok(if report.is_consistent() { EXIT_OK } else { EXIT_FOUND });
    }
    for line in &report.messages {
        say!("ERROR {line}");
    }
    say!(
        "{} corruption(s), {} fixed, {} leak(s), {} fixed, {} allocated cluster(s), image end offset {}",
        report.corruptions,
        report.corruptions_fixed,
        report.leaks,
        report.leaks_fixed,
        report.allocated_clusters,
        report.image_end_offset
    );
    Ok(if report.is_consistent() { EXIT_OK } else { EXIT_FOUND })
}

pub(super) fn read(executor: &HostExecutor, args: &RangeArgs) -> Result<u8, ImgError> {
    let (offset, len) = (args.offset, args.len);
    check_alignment("read", offset, len)?;
    check_range("read", offset, len, read_header(&args.image)?.disk_bytes())?;
    let image = open(executor, &args.image, false)?;
    read_range(executor, GuestImage::Parallels(Rc::new(image)), offset, len, args.pattern)
}

pub(super) fn write(executor: &HostExecutor, args: &RangeArgs) -> Result<u8, ImgError> {
    let (offset, len, pattern) = (args.offset, args.len, args.pattern.unwrap_or(0xcd));
    check_alignment("write", offset, len)?;
    check_range("write", offset, len, read_header(&args.image)?.disk_bytes())?;
    let image = open(executor, &args.image, true)?;
    write_range(executor, GuestImage::Parallels(Rc::new(image)), offset, len, pattern)
}

pub(super) fn map(executor: &HostExecutor, path: &Path, output: Output) -> Result<u8, ImgError> {
    let image = open(executor, path, false)?;
    let header = image.header();
    let cluster = header.cluster_bytes();
    let disk = header.disk_bytes();
    let clusters = (0..disk.div_ceil(cluster)).map(|index| {
        let at = index * cluster;
        (at, cluster.min(disk - at), image.cluster_offset(index))
    });
    let extents = merge_extents(clusters, |last, since, host| match (last, host) {
        (Some(a), Some(b)) => a + since == b,
        (a, b) => a == b,
    });
    if output == Output::Json {
        let entries: Vec<MapEntry> = extents
            .iter()
            .map(|&(offset, len, host)| match host {
                Some(host) => MapEntry::image(offset, len, host),
                None => MapEntry::zeros(offset, len, false),
            })
            .collect();
        json::print(&entries);
        return Ok(EXIT_OK);
    }
    say!("{:>16} {:>16} {:>16}  where", "offset", "length", "data offset");
    for (offset, len, host) in extents {
        let (mapped, place) = match host {
            Some(host) => (format!("{host:#x}"), "image"),
            None => ("-".into(), "unallocated (zeros)"),
        };
        say!("{offset:>#16x} {len:>#16x} {mapped:>16}  {place}");
    }
    Ok(EXIT_OK)
}

/// `img create --format parallels`: QEMU's layout (the Ext magic, the BAT after the header, data
/// from the first cluster boundary), built in a temporary file renamed into place.
pub(super) fn create(executor: &HostExecutor, args: &CreateArgs) -> Result<u8, ImgError> {
    let not_parallels = [
        ("--table-size", args.table_size.is_some()),
        ("--base", args.base.is_some()),
        ("--compact", args.compact),
        ("--block-size", args.block_size.is_some()),
        ("--chunk-size", args.chunk_size.is_some()),
        ("--grow-unit", args.grow_unit.is_some()),
        ("--journal-size", args.journal_size.is_some()),
        ("--copy-on-read", args.copy_on_read),
        ("--data-file", args.data_file.is_some()),
    ];
    if let Some((option, _)) = not_parallels.iter().find(|(_, given)| *given) {
        return Err(ImgError::input(format!(
            "{option} is not a Parallels setting (Parallels images here have no backing file)"
        )));
    }
    let size = args.size.ok_or_else(|| ImgError::input("--size is required"))?;
    let cluster = args.cluster_size.unwrap_or(DEFAULT_CLUSTER_BYTES);
    let image_path = &args.image;
    let mut temps = TempFiles { files: Vec::new(), committed: false };
    let device = temps.create(image_path)?;
    executor.block_on(async move { fvd_parallels::create(&device, size, cluster).await })?;
    temps.commit()?;
    say!("Formatting '{}', fmt=parallels size={size} cluster_size={cluster}", image_path.display());
    Ok(EXIT_OK)
}
