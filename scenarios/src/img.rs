//! `fvdsim img`: build, inspect, check, repair, read and write FVD, QED and Parallels images on
//! real files, the way `qemu-img` and `qemu-io` do, so a user can examine the image a failing
//! simulated run saved. QED and Parallels images are recognised by their magic (the `qed` and
//! `parallels` submodules).
//!
//! Exit codes: 0 success, 1 a check found corruption or a pattern mismatched, 3 usage or input
//! error (a corrupt image that cannot be opened is an input error).
//!
//! Hostile input never damages the user's files: arguments are checked before anything is opened,
//! nothing is opened read-write that need not be (`read` only for copy-on-read, `check` only with
//! `--repair`), every error path after a read-write open closes the image cleanly, `create`
//! validates everything and then builds the image in temporary files beside the target that are
//! renamed into place, and reads and writes move at most [`IO_CHUNK_BYTES`] per request whatever
//! the range. Names in a header (base image, data file) are relative to the image's directory, as
//! qemu-img treats backing files.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use clap::{Args, Subcommand, ValueEnum};
use fvd_engine::format::{HEADER_REGION_BYTES, Header, SECTOR_BYTES};
use fvd_engine::{
    BaseImage, BlockDevice, CreateOptions, DeviceError, Devices, FvdError, FvdImage, IoFuture, IoKind, JournalSize,
    MapSource, OpenOptions, Profile, WriteFlags, check,
};
use fvd_sim::Seed;

use crate::host::{FileDevice, HostEnv, HostExecutor};

pub mod json;
mod parallels;
mod qed;

use crate::campaign::guest::{GuestImage, ImageError};
use json::{CheckJson, InfoJson, MapEntry, Output};

/// Exit code of a successful command.
pub const EXIT_OK: u8 = 0;
/// Exit code when a check found corruption or a pattern mismatched.
pub const EXIT_FOUND: u8 = 1;
/// Exit code of a usage or input error.
pub const EXIT_USAGE: u8 = 3;

/// An `img` failure with its exit code.
#[derive(Debug)]
pub struct ImgError {
    /// Process exit code.
    pub code: u8,
    /// What went wrong, naming what and where.
    pub message: String,
}

impl ImgError {
    fn input(message: impl Into<String>) -> ImgError {
        ImgError { code: EXIT_USAGE, message: message.into() }
    }
}

impl From<FvdError> for ImgError {
    fn from(error: FvdError) -> ImgError {
        ImgError::input(error.to_string())
    }
}

/// Parses a byte size: a number with an optional `K`, `M`, `G` or `T` suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let shift_of = |c: char| match c.to_ascii_uppercase() {
        'K' => Some(10),
        'M' => Some(20),
        'G' => Some(30),
        'T' => Some(40),
        _ => None,
    };
    let (digits, shift) = match text.char_indices().last() {
        Some((i, c)) if shift_of(c).is_some() && !text.starts_with("0x") => (&text[..i], shift_of(c).unwrap_or(0)),
        _ => (text, 0),
    };
    let value: u64 =
        if let Some(hex) = digits.strip_prefix("0x") { u64::from_str_radix(hex, 16) } else { digits.parse() }
            .map_err(|_| format!("invalid size {text:?}: expected a number with an optional K, M, G or T suffix"))?;
    value.checked_shl(shift).filter(|v| v >> shift == value).ok_or_else(|| format!("invalid size {text:?}: too large"))
}

fn parse_pattern(text: &str) -> Result<u8, String> {
    let value = if let Some(hex) = text.strip_prefix("0x") { u8::from_str_radix(hex, 16) } else { text.parse() };
    value.map_err(|_| format!("invalid pattern {text:?}: expected a byte, decimal or 0x hex"))
}

/// Engine behaviour on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProfileArg {
    /// Correct on volatile-cache media (default).
    Hardened,
    /// The 2011 behaviour, flaws included.
    V1,
}

impl From<ProfileArg> for Profile {
    fn from(arg: ProfileArg) -> Profile {
        match arg {
            ProfileArg::Hardened => Profile::Hardened,
            ProfileArg::V1 => Profile::V1,
        }
    }
}

/// `fvdsim img` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImgCommand {
    /// Create an image.
    Create(CreateArgs),
    /// Print the header, layout and allocation of an image.
    Info {
        /// `human` (default) or `json` (qemu-img's keys).
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// The image file.
        image: PathBuf,
    },
    /// Check an image for corruption and leaks; exit 1 if corruption is found.
    Check {
        /// Repair what is found.
        #[arg(long)]
        repair: bool,
        /// `human` (default) or `json` (qemu-img's keys).
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Engine behaviour (decides how the journal is read).
        #[arg(long, value_enum, default_value = "hardened")]
        profile: ProfileArg,
        /// The image file.
        image: PathBuf,
    },
    /// Read a range; with --pattern, exit 1 unless every byte equals it.
    Read(RangeArgs),
    /// Write a range filled with a pattern byte.
    Write(RangeArgs),
    /// Print where each range of the virtual disk lives (base image, image data, unallocated).
    Map {
        /// `human` (default) or `json` (qemu-img's keys: start, length, depth, present, zero,
        /// data, offset).
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// The image file.
        image: PathBuf,
    },
}

/// Image formats `img create` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// FVD (default).
    Fvd,
    /// QED, QEMU's layout (`docs/qed.md`).
    Qed,
    /// Parallels, QEMU's layout (`docs/parallels.md`).
    Parallels,
}

/// Options of `img create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image format.
    #[arg(long, short = 'f', value_enum, default_value = "fvd")]
    pub format: FormatArg,
    /// QED: cluster size (a power of two, 4K to 64M; default 64K). Parallels: cluster size (a
    /// multiple of 512; default 1M, as qemu-img).
    #[arg(long, value_parser = parse_size)]
    pub cluster_size: Option<u64>,
    /// QED: table size in clusters (a power of two, 1 to 16; default 4).
    #[arg(long)]
    pub table_size: Option<u64>,
    /// Virtual disk size (K, M, G, T suffixes); defaults to the base image's size.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Base image (a raw file); stored in the header as given. A relative name is relative to
    /// the image's directory, as qemu-img treats backing files.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Compact image: chunks allocated on first write.
    #[arg(long)]
    pub compact: bool,
    /// Bytes per bitmap bit (a multiple of 512).
    #[arg(long, value_parser = parse_size)]
    pub block_size: Option<u64>,
    /// Bytes per chunk (compact).
    #[arg(long, value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// Bytes the data storage grows by (compact).
    #[arg(long, value_parser = parse_size)]
    pub grow_unit: Option<u64>,
    /// Journal size; 0 disables the journal.
    #[arg(long, value_parser = parse_size)]
    pub journal_size: Option<u64>,
    /// Enable copy-on-read.
    #[arg(long)]
    pub copy_on_read: bool,
    /// Keep data in a separate file; stored in the header as given, and a relative name is
    /// relative to the image's directory.
    #[arg(long)]
    pub data_file: Option<PathBuf>,
    /// Engine behaviour.
    #[arg(long, value_enum, default_value = "hardened")]
    pub profile: ProfileArg,
    /// The image file to create (replaced if it exists).
    pub image: PathBuf,
}

/// Arguments of `img read` and `img write`.
#[derive(Debug, Args)]
pub struct RangeArgs {
    /// The byte every byte of the range holds (read: expected; write: written; default 0xcd).
    #[arg(long, value_parser = parse_pattern)]
    pub pattern: Option<u8>,
    /// Engine behaviour.
    #[arg(long, value_enum, default_value = "hardened")]
    pub profile: ProfileArg,
    /// Commit mode of the hardened profile (`docs/format.md` §7): group (default) or sync. Either
    /// way the tool flushes and closes the image before it exits, so the data is durable.
    #[arg(long, value_enum, default_value = "group")]
    pub commit: crate::campaign::config::CommitName,
    /// The image file.
    pub image: PathBuf,
    /// First byte (a multiple of 512; K, M, G suffixes).
    #[arg(value_parser = parse_size)]
    pub offset: u64,
    /// Length in bytes (a multiple of 512).
    #[arg(value_parser = parse_size)]
    pub len: u64,
}

/// Bytes a read or write moves per engine request: buffers stay this small whatever the range.
pub const IO_CHUNK_BYTES: u64 = 1 << 20;

/// Reads `[offset, offset + len)` of `image` (QED or Parallels through the format seam) in
/// [`IO_CHUNK_BYTES`] pieces and prints the verdict as `qemu-io` does: with `pattern`, the first
/// byte that differs (exit 1).
fn read_range(
    executor: &HostExecutor,
    image: GuestImage,
    offset: u64,
    len: u64,
    pattern: Option<u8>,
) -> Result<u8, ImgError> {
    let mismatch = executor.block_on(async move {
        let mut buf = vec![0u8; len.min(IO_CHUNK_BYTES) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(IO_CHUNK_BYTES) as usize;
            image.read(at, &mut buf[..n]).await?;
            if let Some(pattern) = pattern
                && let Some(bad) = buf[..n].iter().position(|b| *b != pattern)
            {
                return Ok(Some((at + bad as u64, buf[bad], pattern)));
            }
            at += n as u64;
        }
        Ok::<_, ImageError>(None)
    })?;
    if let Some((at, found, expected)) = mismatch {
        say!("Pattern verification failed at offset {at}: found {found:#04x}, expected {expected:#04x}");
        return Ok(EXIT_FOUND);
    }
    say!("read {len}/{len} bytes at offset {offset}");
    Ok(EXIT_OK)
}

/// Writes `pattern` over `[offset, offset + len)` of `image` in [`IO_CHUNK_BYTES`] pieces, then
/// closes it on every path (QED clears NEED_CHECK, Parallels clears `in_use` and truncates).
fn write_range(executor: &HostExecutor, image: GuestImage, offset: u64, len: u64, pattern: u8) -> Result<u8, ImgError> {
    executor.block_on(async move {
        let buf = vec![pattern; len.min(IO_CHUNK_BYTES) as usize];
        let mut result = Ok(());
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(IO_CHUNK_BYTES) as usize;
            if let Err(error) = image.write(at, &buf[..n]).await {
                result = Err(error);
                break;
            }
            at += n as u64;
        }
        let closed = image.close().await;
        result.and(closed)
    })?;
    say!("wrote {len}/{len} bytes at offset {offset}");
    Ok(EXIT_OK)
}

/// Joins per-cluster places `(guest offset, length, place)` into extents: a cluster joins the
/// extent before it when `continues(previous place, bytes since the extent's start, place)`.
fn merge_extents<P: Copy>(
    clusters: impl IntoIterator<Item = (u64, u64, P)>,
    continues: impl Fn(P, u64, P) -> bool,
) -> Vec<(u64, u64, P)> {
    let mut extents: Vec<(u64, u64, P)> = Vec::new();
    for (at, len, place) in clusters {
        match extents.last_mut() {
            Some((start, length, last)) if continues(*last, at - *start, place) => *length += len,
            _ => extents.push((at, len, place)),
        }
    }
    extents
}

impl From<ImageError> for ImgError {
    fn from(error: ImageError) -> ImgError {
        ImgError::input(error.0)
    }
}

fn file_error(what: &str, path: &Path, error: &std::io::Error) -> ImgError {
    ImgError::input(format!("{what} {}: {error}", path.display()))
}

/// Resolves a file named in a header (or given to `create`) relative to the image's directory, as
/// qemu does for backing files.
fn beside(image: &Path, name: &Path) -> PathBuf {
    if name.is_absolute() { name.to_path_buf() } else { image.parent().unwrap_or(Path::new("")).join(name) }
}

/// Reads and decodes the header with a read-only handle (nothing is opened read-write for it).
fn read_header(image_path: &Path) -> Result<Header, ImgError> {
    let file = std::fs::File::open(image_path).map_err(|e| file_error("cannot open image", image_path, &e))?;
    let len = file.metadata().map_err(|e| file_error("cannot read image", image_path, &e))?.len();
    let mut region = vec![0u8; HEADER_REGION_BYTES.min(len) as usize];
    file.read_exact_at(&mut region, 0).map_err(|e| file_error("cannot read the header of", image_path, &e))?;
    Header::decode(&region).map_err(|e| ImgError::input(format!("{}: {e}", image_path.display())))
}

/// What to do about the base image an image names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BaseNeed {
    /// Reads may need it: a missing base image is an error.
    Required,
    /// Nothing reads it (`info`, `map`): a missing base image is described, not an error.
    Tolerated,
    /// Not opened at all (`check` never reads the base image).
    Unused,
}

/// Stands in for a base image that is missing, for commands that never read it.
#[derive(Debug)]
struct MissingBase {
    path: String,
}

impl MissingBase {
    fn error(&self, kind: IoKind, offset_bytes: u64, len_bytes: u64) -> DeviceError {
        DeviceError::Os {
            device: self.path.clone(),
            kind,
            offset_bytes,
            len_bytes,
            error_kind: std::io::ErrorKind::NotFound,
            message: "the base image is missing".into(),
        }
    }
}

impl BlockDevice for MissingBase {
    fn name(&self) -> &str {
        &self.path
    }
    fn len_bytes(&self) -> u64 {
        0
    }
    fn read_at<'a>(&'a self, offset_bytes: u64, buf: &'a mut [u8]) -> IoFuture<'a, ()> {
        Box::pin(std::future::ready(Err(self.error(IoKind::Read, offset_bytes, buf.len() as u64))))
    }
    fn write_at<'a>(&'a self, offset_bytes: u64, data: &'a [u8], _flags: WriteFlags) -> IoFuture<'a, ()> {
        Box::pin(std::future::ready(Err(self.error(IoKind::Write, offset_bytes, data.len() as u64))))
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(std::future::ready(Err(self.error(IoKind::Flush, 0, 0))))
    }
    fn set_len(&self, len_bytes: u64) -> IoFuture<'_, ()> {
        Box::pin(std::future::ready(Err(self.error(IoKind::SetLen, len_bytes, 0))))
    }
}

/// The devices of an existing image, and what became of its base image.
struct Opened {
    devices: Devices,
    /// The base image's path and why it could not be opened (`BaseNeed::Tolerated` only).
    missing_base: Option<(PathBuf, std::io::Error)>,
    /// The data file's path, if the header names one.
    data_path: Option<PathBuf>,
}

/// Opens the devices of an existing image: the image, and the base image and data file its header
/// names (relative to the image's directory). Only the image and data file may be writable.
fn open_devices(image_path: &Path, header: &Header, writable: bool, base_need: BaseNeed) -> Result<Opened, ImgError> {
    let image = FileDevice::open(image_path, writable).map_err(|e| file_error("cannot open image", image_path, &e))?;
    let image: Rc<dyn BlockDevice> = Rc::new(image);
    let mut missing_base = None;
    let base = if header.base_img.is_empty() || base_need == BaseNeed::Unused {
        None
    } else {
        let path = beside(image_path, Path::new(&header.base_img));
        match FileDevice::open(&path, false) {
            Ok(device) => Some(Rc::new(device) as Rc<dyn BlockDevice>),
            Err(error) if base_need == BaseNeed::Tolerated => {
                let stand_in = MissingBase { path: path.display().to_string() };
                missing_base = Some((path, error));
                Some(Rc::new(stand_in) as Rc<dyn BlockDevice>)
            }
            Err(error) => {
                return Err(ImgError::input(format!(
                    "cannot open base image {} (named {:?} by {}): {error}",
                    path.display(),
                    header.base_img,
                    image_path.display()
                )));
            }
        }
    };
    let (data, data_path) = if header.data_file.is_empty() {
        (None, None)
    } else {
        let path = beside(image_path, Path::new(&header.data_file));
        let device = FileDevice::open(&path, writable).map_err(|e| {
            ImgError::input(format!(
                "cannot open data file {} (named {:?} by {}): {e}",
                path.display(),
                header.data_file,
                image_path.display()
            ))
        })?;
        (Some(Rc::new(device) as Rc<dyn BlockDevice>), Some(path))
    };
    Ok(Opened { devices: Devices { image, data, base }, missing_base, data_path })
}

fn open_engine(
    executor: &HostExecutor,
    devices: Devices,
    writable: bool,
    profile: Profile,
    commit: fvd_engine::CommitMode,
) -> Result<FvdImage, ImgError> {
    let env = Rc::new(HostEnv::new(executor, Seed(0)));
    Ok(executor.block_on(FvdImage::open(
        devices,
        env,
        OpenOptions { read_only: !writable, profile, commit, ..OpenOptions::default() },
    ))?)
}

/// Checks a range's alignment before anything is opened.
fn check_alignment(kind: &str, offset: u64, len: u64) -> Result<(), ImgError> {
    if !offset.is_multiple_of(SECTOR_BYTES) || !len.is_multiple_of(SECTOR_BYTES) || len == 0 {
        return Err(ImgError::input(format!(
            "{kind} of {len} bytes at offset {offset}: offset and length must be multiples of 512, and the length \
             positive"
        )));
    }
    Ok(())
}

/// Checks a range against the virtual disk before anything is opened read-write or allocated.
fn check_range(kind: &str, offset: u64, len: u64, disk_size: u64) -> Result<(), ImgError> {
    if offset.checked_add(len).is_none_or(|end| end > disk_size) {
        return Err(ImgError::input(format!(
            "{kind} of {len} bytes at offset {offset}: lies beyond the end of the virtual disk ({disk_size} bytes)"
        )));
    }
    Ok(())
}

/// A size the way `qemu-img info` prints it: three significant digits in the largest binary unit
/// in which the value is at least 1000/1024 (`64 MiB`, `196 KiB`, `0.977 KiB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while unit + 1 < UNITS.len() && value >= 1000.0 {
        value /= 1024.0;
        unit += 1;
    }
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else if value >= 1.0 {
        2
    } else {
        3
    };
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text} {}", UNITS[unit])
}

/// Bytes the file system allocated for `path` (`st_blocks` × 512), if it can be read.
fn allocated_bytes(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
}

/// Runs an `img` command, printing to stdout. Returns the exit code.
pub fn run(command: ImgCommand) -> Result<u8, ImgError> {
    let executor = HostExecutor::new();
    match command {
        ImgCommand::Create(args) if args.format == FormatArg::Qed => qed::create(&executor, &args),
        ImgCommand::Create(args) if args.format == FormatArg::Parallels => parallels::create(&executor, &args),
        ImgCommand::Create(args) => create(&executor, args),
        ImgCommand::Info { image, output } if qed::is_qed(&image) => qed::info(&image, output),
        ImgCommand::Check { repair, image, output, .. } if qed::is_qed(&image) => {
            qed::check(&executor, &image, repair, output)
        }
        ImgCommand::Read(args) if qed::is_qed(&args.image) => qed::read(&executor, &args),
        ImgCommand::Write(args) if qed::is_qed(&args.image) => qed::write(&executor, &args),
        ImgCommand::Map { image, output } if qed::is_qed(&image) => qed::map(&executor, &image, output),
        ImgCommand::Info { image, output } if parallels::is_parallels(&image) => parallels::info(&image, output),
        ImgCommand::Check { repair, image, output, .. } if parallels::is_parallels(&image) => {
            parallels::check(&executor, &image, repair, output)
        }
        ImgCommand::Read(args) if parallels::is_parallels(&args.image) => parallels::read(&executor, &args),
        ImgCommand::Write(args) if parallels::is_parallels(&args.image) => parallels::write(&executor, &args),
        ImgCommand::Map { image, output } if parallels::is_parallels(&image) => {
            parallels::map(&executor, &image, output)
        }
        ImgCommand::Info { image, output } => info(&executor, &image, output),
        ImgCommand::Check { repair, profile, image, output } => {
            let header = read_header(&image)?;
            // check never reads the base image; it opens the image read-write only to repair.
            let opened = open_devices(&image, &header, repair, BaseNeed::Unused)?;
            let devices = opened.devices;
            let report = executor.block_on(async move { check(&devices, profile.into(), repair).await })?;
            if output == Output::Json {
                // A repair fixes everything it found or fails.
                let (corruptions, leaks) = (report.corruptions.len() as u64, report.leaks.len() as u64);
                let (left, fixed) = if report.repaired { (0, 1) } else { (1, 0) };
                json::print(&CheckJson {
                    filename: image.display().to_string(),
                    format: "fvd",
                    check_errors: 0,
                    corruptions: corruptions * left,
                    leaks: leaks * left,
                    corruptions_fixed: corruptions * fixed,
                    leaks_fixed: leaks * fixed,
                    allocated_clusters: None,
                    image_end_offset: None,
                });
                return Ok(if report.is_clean() || report.repaired { EXIT_OK } else { EXIT_FOUND });
            }
            for line in &report.corruptions {
                say!("ERROR {line}");
            }
            for line in &report.leaks {
                say!("Leaked: {line}");
            }
            if report.needs_recovery {
                say!(
                    "The image was not shut down cleanly: {} journal sector(s) to replay, {} torn",
                    report.journal_sectors_valid,
                    report.journal_sectors_torn
                );
            }
            for line in &report.fixes {
                say!("{} {line}", if report.repaired { "Repaired:" } else { "Would" });
            }
            say!(
                "{} corruption(s), {} leak(s){}",
                report.corruptions.len(),
                report.leaks.len(),
                if report.repaired { ", repaired" } else { "" }
            );
            Ok(if report.is_clean() || report.repaired { EXIT_OK } else { EXIT_FOUND })
        }
        ImgCommand::Read(args) => read(&executor, &args),
        ImgCommand::Write(args) => write(&executor, &args),
        ImgCommand::Map { image, output } => {
            let header = read_header(&image)?;
            let opened = open_devices(&image, &header, false, BaseNeed::Tolerated)?;
            let opened = open_engine(&executor, opened.devices, false, Profile::Hardened, Default::default())?;
            if output == Output::Json {
                let entries: Vec<MapEntry> = opened
                    .map()
                    .into_iter()
                    .map(|e| match e.source {
                        MapSource::Base => MapEntry::backing(e.offset_bytes, e.len_bytes),
                        MapSource::Image { data_offset_bytes } => {
                            MapEntry::image(e.offset_bytes, e.len_bytes, data_offset_bytes)
                        }
                        MapSource::Zero => MapEntry::zeros(e.offset_bytes, e.len_bytes, false),
                    })
                    .collect();
                json::print(&entries);
                return Ok(EXIT_OK);
            }
            say!("{:>16} {:>16} {:>16}  where", "offset", "length", "data offset");
            for extent in opened.map() {
                let (mapped, place) = match extent.source {
                    MapSource::Base => ("-".to_string(), "base image"),
                    MapSource::Image { data_offset_bytes } => (format!("{data_offset_bytes:#x}"), "image"),
                    MapSource::Zero => ("-".to_string(), "unallocated (zeros)"),
                };
                say!("{:>#16x} {:>#16x} {:>16}  {place}", extent.offset_bytes, extent.len_bytes, mapped);
            }
            Ok(EXIT_OK)
        }
    }
}

fn info(executor: &HostExecutor, image: &Path, output: Output) -> Result<u8, ImgError> {
    let header = read_header(image)?;
    // info reads no guest data, so a missing base image is described rather than refused.
    let opened = open_devices(image, &header, false, BaseNeed::Tolerated)?;
    let Opened { devices, missing_base, data_path } = opened;
    let engine = open_engine(executor, devices, false, Profile::Hardened, Default::default())?;
    let info = engine.info();
    let l = info.layout;
    let disk_size = [Some(image.to_path_buf()), data_path].iter().flatten().filter_map(|p| allocated_bytes(p)).sum();
    if output == Output::Json {
        json::print(&InfoJson {
            filename: image.display().to_string(),
            format: "fvd",
            virtual_size: l.virtual_size,
            actual_size: disk_size,
            cluster_size: (l.block_size > 0).then_some(l.block_size),
            backing_filename: (!info.base_image.is_empty()).then(|| info.base_image.clone()),
            dirty_flag: !header.clean_shutdown,
        });
        return Ok(EXIT_OK);
    }
    say!("image: {}", image.display());
    say!("file format: fvd");
    say!("virtual size: {} ({} bytes)", human_size(l.virtual_size), l.virtual_size);
    say!("disk size: {}", human_size(disk_size));
    say!(
        "base image: {}",
        if info.base_image.is_empty() {
            "none".into()
        } else {
            let missing = match &missing_base {
                Some((path, error)) => format!(", missing: {}: {error}", path.display()),
                None => String::new(),
            };
            format!("{} ({} bytes covered, block size {}{missing})", info.base_image, l.base_size, l.block_size)
        }
    );
    say!(
        "data file: {}",
        if info.data_file.is_empty() { "none (data follows the metadata)".into() } else { info.data_file.clone() }
    );
    say!(
        "compact: {}",
        if l.compact {
            format!(
                "yes, chunk size {}, {} chunks allocated, {} bytes of storage",
                l.chunk_size, info.chunks_allocated, info.storage_bytes
            )
        } else {
            "no".into()
        }
    );
    say!(
        "bitmap: {} of {} blocks in the image (offset {}, {} bytes)",
        info.blocks_in_image,
        l.bitmap_blocks,
        l.bitmap_offset,
        l.bitmap_size
    );
    say!("table: offset {}, {} entries, {} bytes", l.table_offset, l.table_entries, l.table_size);
    say!(
        "journal: offset {}, {} bytes, epoch {}",
        l.journal_offset,
        l.journal_size,
        info.journal_epoch.map_or("none (v1 image)".into(), |e| e.to_string())
    );
    say!("metadata size: {} bytes", l.metadata_size);
    say!("all data in image: {}", info.all_data_in_image);
    Ok(EXIT_OK)
}

fn read(executor: &HostExecutor, args: &RangeArgs) -> Result<u8, ImgError> {
    let (offset, len) = (args.offset, args.len);
    check_alignment("read", offset, len)?;
    let header = read_header(&args.image)?;
    check_range("read", offset, len, header.virtual_disk_size)?;
    // Reads write to the image only to copy base data in (copy-on-read); otherwise read-only.
    let writable = header.copy_on_read && !header.base_img.is_empty() && !header.all_data_in_fvd_img;
    let opened = open_devices(&args.image, &header, writable, BaseNeed::Required)?;
    let image = open_engine(executor, opened.devices, writable, args.profile.into(), args.commit.into())?;
    let pattern = args.pattern;
    let (mismatch, result) = executor.block_on(async move {
        let mut buf = vec![0u8; len.min(IO_CHUNK_BYTES) as usize];
        let mut mismatch = None;
        let mut result = Ok(());
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(IO_CHUNK_BYTES) as usize;
            if let Err(error) = image.read(at, &mut buf[..n]).await {
                result = Err(error);
                break;
            }
            if let Some(pattern) = pattern
                && let Some(bad) = buf[..n].iter().position(|b| *b != pattern)
            {
                mismatch = Some((at + bad as u64, buf[bad], pattern));
                break;
            }
            at += n as u64;
        }
        // Close even after an error: a copy-on-read image was opened read-write, and close waits
        // for the background copies so they reach the metadata.
        let closed = image.close().await;
        (mismatch, result.and(closed))
    });
    result?;
    if let Some((at, found, expected)) = mismatch {
        say!("Pattern verification failed at offset {at}: found {found:#04x}, expected {expected:#04x}");
        return Ok(EXIT_FOUND);
    }
    say!("read {len}/{len} bytes at offset {offset}");
    Ok(EXIT_OK)
}

fn write(executor: &HostExecutor, args: &RangeArgs) -> Result<u8, ImgError> {
    let (offset, len, pattern) = (args.offset, args.len, args.pattern.unwrap_or(0xcd));
    check_alignment("write", offset, len)?;
    let header = read_header(&args.image)?;
    check_range("write", offset, len, header.virtual_disk_size)?;
    let opened = open_devices(&args.image, &header, true, BaseNeed::Required)?;
    let image = open_engine(executor, opened.devices, true, args.profile.into(), args.commit.into())?;
    executor.block_on(async move {
        let buf = vec![pattern; len.min(IO_CHUNK_BYTES) as usize];
        let mut result = Ok(());
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(IO_CHUNK_BYTES) as usize;
            if let Err(error) = image.write(at, &buf[..n]).await {
                result = Err(error);
                break;
            }
            at += n as u64;
        }
        if result.is_ok() {
            result = image.flush().await;
        }
        // Every path closes the image, so a failed write never leaves it marked unclean.
        let closed = image.close().await;
        result.and(closed)
    })?;
    say!("wrote {len}/{len} bytes at offset {offset}");
    Ok(EXIT_OK)
}

/// A path as a header string (UTF-8, as the header requires).
fn header_name(path: &Path, option: &str) -> Result<String, ImgError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| ImgError::input(format!("--{option} {}: the name must be UTF-8", path.display())))
}

/// `path` made absolute against the current directory, without touching the file system.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Files `create` is building: removed on drop unless committed.
struct TempFiles {
    /// (temporary, final) pairs.
    files: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl TempFiles {
    /// A temporary file beside `target`, created empty (never an existing file).
    fn create(&mut self, target: &Path) -> Result<FileDevice, ImgError> {
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = target.with_file_name(format!(".{name}.fvdsim-create-{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| file_error("cannot create temporary file", &temp, &e))?;
        self.files.push((temp.clone(), target.to_path_buf()));
        FileDevice::create(&temp, 0).map_err(|e| file_error("cannot create temporary file", &temp, &e))
    }

    /// Renames every temporary file into place (data files first, the image last).
    fn commit(mut self) -> Result<(), ImgError> {
        for (temp, target) in self.files.iter().rev() {
            std::fs::rename(temp, target)
                .map_err(|e| file_error("cannot move the new file into place at", target, &e))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        if !self.committed {
            for (temp, _) in &self.files {
                let _ = std::fs::remove_file(temp);
            }
        }
    }
}

fn create(executor: &HostExecutor, args: CreateArgs) -> Result<u8, ImgError> {
    if args.cluster_size.is_some() || args.table_size.is_some() {
        return Err(ImgError::input(
            "--cluster-size and --table-size are QED and Parallels options (use --format qed or parallels)",
        ));
    }
    // 1. Validate everything; nothing is created or truncated yet.
    let image_path = &args.image;
    if image_path.file_name().is_none() {
        return Err(ImgError::input(format!("cannot create image {}: not a file name", image_path.display())));
    }
    let image_dir = image_path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !image_dir.is_dir() {
        return Err(ImgError::input(format!(
            "cannot create image {}: directory {} does not exist",
            image_path.display(),
            image_dir.display()
        )));
    }
    if image_path.is_dir() {
        return Err(ImgError::input(format!("cannot create image {}: it is a directory", image_path.display())));
    }
    let base = match &args.base {
        Some(given) => {
            // qemu-img semantics: the name is stored as given and read relative to the image.
            let resolved = beside(image_path, given);
            let metadata = std::fs::metadata(&resolved).map_err(|e| {
                ImgError::input(format!(
                    "cannot read base image {} (--base {}; a relative name is relative to the image's directory): \
                     {e}",
                    resolved.display(),
                    given.display()
                ))
            })?;
            if metadata.is_dir() {
                return Err(ImgError::input(format!("base image {} is a directory", resolved.display())));
            }
            if absolute(&resolved) == absolute(image_path) {
                return Err(ImgError::input(format!(
                    "cannot create image {}: it is its own base image",
                    image_path.display()
                )));
            }
            Some((
                resolved,
                BaseImage { name: header_name(given, "base")?, format: "raw".into(), len_bytes: metadata.len() },
            ))
        }
        None => None,
    };
    let data_file = match &args.data_file {
        Some(given) => {
            let resolved = beside(image_path, given);
            let clashes = absolute(&resolved) == absolute(image_path)
                || base.as_ref().is_some_and(|(b, _)| absolute(b) == absolute(&resolved));
            if clashes {
                return Err(ImgError::input(format!(
                    "--data-file {}: must differ from the image and the base image",
                    given.display()
                )));
            }
            if resolved.is_dir() {
                return Err(ImgError::input(format!("data file {} is a directory", resolved.display())));
            }
            Some((resolved, header_name(given, "data-file")?))
        }
        None => None,
    };
    let size = args
        .size
        .or(base.as_ref().map(|(_, b)| b.len_bytes))
        .ok_or_else(|| ImgError::input("--size is required without --base"))?;
    let mut options = CreateOptions::new(size);
    options.base = base.map(|(_, b)| b);
    options.compact = args.compact;
    options.block_size = args.block_size;
    options.chunk_size = args.chunk_size;
    options.storage_grow_unit = args.grow_unit;
    options.journal = match args.journal_size {
        None => JournalSize::Default,
        Some(0) => JournalSize::Disabled,
        Some(bytes) => JournalSize::Bytes(bytes),
    };
    options.copy_on_read = args.copy_on_read;
    options.profile = args.profile.into();
    options.data_file = data_file.as_ref().map(|(_, name)| name.clone());
    options.validate()?;
    // 2. Build the image in temporary files beside the targets, then rename them into place. An
    // existing image is replaced (as qemu-img does), but only once the new one is complete.
    let mut temps = TempFiles { files: Vec::new(), committed: false };
    let image = Rc::new(temps.create(image_path)?) as Rc<dyn BlockDevice>;
    let data = match &data_file {
        Some((path, _)) => Some(Rc::new(temps.create(path)?) as Rc<dyn BlockDevice>),
        None => None,
    };
    let devices = Devices { image, data, base: None };
    executor.block_on(async move { FvdImage::create(&devices, &options).await })?;
    temps.commit()?;
    say!("Formatting '{}', fmt=fvd size={size}", image_path.display());
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_patterns_parse_with_clear_errors() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("0x200"), Ok(512));
        assert!(parse_size("12Q").unwrap_err().contains("K, M, G or T"));
        assert!(parse_size("abc").unwrap_err().contains("expected a number"));
        assert!(parse_size("99999999999T").unwrap_err().contains("too large"));
        assert_eq!(parse_pattern("0xab"), Ok(0xab));
        assert!(parse_pattern("300").is_err());
    }

    #[test]
    fn human_sizes_follow_qemu_img() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1000), "0.977 KiB");
        assert_eq!(human_size(196 << 10), "196 KiB");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(1536 << 20), "1.5 GiB");
        assert_eq!(human_size(u64::MAX), "16 EiB");
    }
}
