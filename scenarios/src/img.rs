//! `fvdsim img`: build, inspect, check, repair, read and write FVD images on real files, the way
//! `qemu-img` and `qemu-io` do, so a user can examine the image a failing simulated run saved.
//!
//! Exit codes: 0 success, 1 a check found corruption or a pattern mismatched, 3 usage or input
//! error (a corrupt image that cannot be opened is an input error).

use std::path::{Path, PathBuf};
use std::rc::Rc;

use clap::{Args, Subcommand, ValueEnum};
use fvd_engine::{
    BaseImage, BlockDevice, CreateOptions, Devices, FvdError, FvdImage, JournalSize, MapSource, OpenOptions, Profile,
    check,
};
use fvd_sim::Seed;

use crate::host::{FileDevice, HostEnv, HostExecutor};

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
        /// The image file.
        image: PathBuf,
    },
    /// Check an image for corruption and leaks; exit 1 if corruption is found.
    Check {
        /// Repair what is found.
        #[arg(long)]
        repair: bool,
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
        /// The image file.
        image: PathBuf,
    },
}

/// Options of `img create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Virtual disk size (K, M, G, T suffixes); defaults to the base image's size.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Base image (a raw file); stored in the header as given.
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
    /// Keep data in a separate file.
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
    /// The image file.
    pub image: PathBuf,
    /// First byte (a multiple of 512; K, M, G suffixes).
    #[arg(value_parser = parse_size)]
    pub offset: u64,
    /// Length in bytes (a multiple of 512).
    #[arg(value_parser = parse_size)]
    pub len: u64,
}

fn file_error(what: &str, path: &Path, error: &std::io::Error) -> ImgError {
    ImgError::input(format!("{what} {}: {error}", path.display()))
}

/// Resolves a file named in a header relative to the image's directory (as qemu does).
fn beside(image: &Path, name: &str) -> PathBuf {
    let named = Path::new(name);
    if named.is_absolute() { named.to_path_buf() } else { image.parent().unwrap_or(Path::new(".")).join(named) }
}

/// Opens the devices of an existing image: the image, and the base image and data file its header
/// names.
fn open_devices(image_path: &Path, writable: bool) -> Result<Devices, ImgError> {
    let image = FileDevice::open(image_path, writable).map_err(|e| file_error("cannot open image", image_path, &e))?;
    let mut region = vec![0u8; fvd_engine::format::HEADER_REGION_BYTES.min(image.len_bytes()) as usize];
    let executor = HostExecutor::new();
    let image: Rc<dyn BlockDevice> = Rc::new(image);
    let reader = Rc::clone(&image);
    region = executor
        .block_on(async move { reader.read_at(0, &mut region).await.map(|()| region) })
        .map_err(|e| ImgError::input(e.to_string()))?;
    let header = fvd_engine::format::Header::decode(&region)?;
    let base = if header.base_img.is_empty() {
        None
    } else {
        let path = beside(image_path, &header.base_img);
        Some(Rc::new(FileDevice::open(&path, false).map_err(|e| file_error("cannot open base image", &path, &e))?)
            as Rc<dyn BlockDevice>)
    };
    let data = if header.data_file.is_empty() {
        None
    } else {
        let path = beside(image_path, &header.data_file);
        Some(Rc::new(FileDevice::open(&path, writable).map_err(|e| file_error("cannot open data file", &path, &e))?)
            as Rc<dyn BlockDevice>)
    };
    Ok(Devices { image, data, base })
}

fn open_image(executor: &HostExecutor, path: &Path, writable: bool, profile: Profile) -> Result<FvdImage, ImgError> {
    let devices = open_devices(path, writable)?;
    let env = Rc::new(HostEnv::new(executor, Seed(0)));
    Ok(executor.block_on(FvdImage::open(
        devices,
        env,
        OpenOptions { read_only: !writable, profile, ..OpenOptions::default() },
    ))?)
}

/// Runs an `img` command, printing to stdout. Returns the exit code.
pub fn run(command: ImgCommand) -> Result<u8, ImgError> {
    let executor = HostExecutor::new();
    match command {
        ImgCommand::Create(args) => create(&executor, args),
        ImgCommand::Info { image } => {
            let opened = open_image(&executor, &image, false, Profile::Hardened)?;
            let info = opened.info();
            let l = info.layout;
            say!("image: {}", image.display());
            say!("virtual size: {} bytes", l.virtual_size);
            say!(
                "base image: {}",
                if info.base_image.is_empty() {
                    "none".into()
                } else {
                    format!("{} ({} bytes covered, block size {})", info.base_image, l.base_size, l.block_size)
                }
            );
            say!(
                "data file: {}",
                if info.data_file.is_empty() {
                    "none (data follows the metadata)".into()
                } else {
                    info.data_file.clone()
                }
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
        ImgCommand::Check { repair, profile, image } => {
            let devices = open_devices(&image, repair)?;
            let report = executor.block_on(async move { check(&devices, profile.into(), repair).await })?;
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
        ImgCommand::Read(args) => {
            let opened = open_image(&executor, &args.image, false, args.profile.into())?;
            let (offset, len) = (args.offset, args.len);
            let data = executor.block_on(async move {
                let mut buf = vec![0u8; len as usize];
                opened.read(offset, &mut buf).await.map(|()| buf)
            })?;
            if let Some(pattern) = args.pattern
                && let Some(bad) = data.iter().position(|b| *b != pattern)
            {
                say!(
                    "Pattern verification failed at offset {}: found {:#04x}, expected {pattern:#04x}",
                    offset + bad as u64,
                    data[bad]
                );
                return Ok(EXIT_FOUND);
            }
            say!("read {len}/{len} bytes at offset {offset}");
            Ok(EXIT_OK)
        }
        ImgCommand::Write(args) => {
            let opened = open_image(&executor, &args.image, true, args.profile.into())?;
            let (offset, len, pattern) = (args.offset, args.len, args.pattern.unwrap_or(0xcd));
            executor.block_on(async move {
                opened.write(offset, &vec![pattern; len as usize]).await?;
                opened.flush().await?;
                opened.close().await
            })?;
            say!("wrote {len}/{len} bytes at offset {offset}");
            Ok(EXIT_OK)
        }
        ImgCommand::Map { image } => {
            let opened = open_image(&executor, &image, false, Profile::Hardened)?;
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

fn create(executor: &HostExecutor, args: CreateArgs) -> Result<u8, ImgError> {
    let base = match &args.base {
        Some(path) => {
            let len = std::fs::metadata(path).map_err(|e| file_error("cannot read base image", path, &e))?.len();
            Some(BaseImage { name: path.display().to_string(), format: "raw".into(), len_bytes: len })
        }
        None => None,
    };
    let size = args
        .size
        .or(base.as_ref().map(|b| b.len_bytes))
        .ok_or_else(|| ImgError::input("--size is required without --base"))?;
    let mut options = CreateOptions::new(size);
    options.base = base;
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
    options.data_file = args.data_file.as_ref().map(|p| p.display().to_string());
    let image =
        Rc::new(FileDevice::create(&args.image, 0).map_err(|e| file_error("cannot create image", &args.image, &e))?)
            as Rc<dyn BlockDevice>;
    let data = match &args.data_file {
        Some(path) => {
            Some(Rc::new(FileDevice::create(path, 0).map_err(|e| file_error("cannot create data file", path, &e))?)
                as Rc<dyn BlockDevice>)
        }
        None => None,
    };
    let devices = Devices { image, data, base: None };
    executor.block_on(async move { FvdImage::create(&devices, &options).await })?;
    say!("Formatting '{}', fmt=fvd size={size}", args.image.display());
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
}
