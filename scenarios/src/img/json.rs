//! `--output json` of `fvdsim img info|check|map`, with `qemu-img`'s key names (`qemu-img info
//! --output=json`, `check --output=json`, `map --output=json`), so scripts written for one read
//! the other. Keys QEMU does not have are marked in their docs.

use serde::Serialize;

/// `--output`: how `info`, `check` and `map` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Lines for a person (default).
    #[default]
    Human,
    /// One JSON document with qemu-img's key names.
    Json,
}

/// `img info --output json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct InfoJson {
    /// The image file as given.
    pub filename: String,
    /// `fvd`, `qed` or `parallels`.
    pub format: &'static str,
    /// Guest disk size, bytes.
    pub virtual_size: u64,
    /// Bytes the file (and an FVD data file) occupies on the host.
    pub actual_size: u64,
    /// Cluster size (FVD: block size, absent for an image without a base, which has no
    /// blocks), bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// The backing (base) file's name as recorded, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    /// The image says it may be inconsistent (FVD: not shut down cleanly; QED: NEED_CHECK;
    /// Parallels: `in_use`).
    pub dirty_flag: bool,
}

/// `img check --output json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckJson {
    /// The image file as given.
    pub filename: String,
    /// `fvd`, `qed` or `parallels`.
    pub format: &'static str,
    /// Errors that stopped the check (always 0 here: such a check exits 3 with a message).
    pub check_errors: u64,
    /// Corruptions found (left, after a repair).
    pub corruptions: u64,
    /// Leaked clusters found (left, after a repair).
    pub leaks: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// Clusters (FVD: blocks) holding data, where the format counts them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated_clusters: Option<u64>,
    /// End of the data, bytes (Parallels, as QEMU reports it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_end_offset: Option<u64>,
}

/// One extent of `img map --output json` (qemu-img's `map` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    /// First guest byte.
    pub start: u64,
    /// Bytes.
    pub length: u64,
    /// 0: in the image; 1: in the backing (base) file.
    pub depth: u32,
    /// Reads come from an image in the chain (false: unallocated, zeros).
    pub present: bool,
    /// Reads return zeros.
    pub zero: bool,
    /// Reads come from stored data.
    pub data: bool,
    /// Always false: no format here compresses.
    pub compressed: bool,
    /// Where the data lives in the image file (depth 0) or the backing file (depth 1), bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl MapEntry {
    /// Data stored in the image at `offset`.
    pub fn image(start: u64, length: u64, offset: u64) -> MapEntry {
        MapEntry {
            start,
            length,
            depth: 0,
            present: true,
            zero: false,
            data: true,
            compressed: false,
            offset: Some(offset),
        }
    }

    /// Data read from the raw backing (base) file, at the same offset in it. (QEMU also asks the
    /// backing file's file system for holes and reports them as zeros; this reports every
    /// backing range as data.)
    pub fn backing(start: u64, length: u64) -> MapEntry {
        MapEntry {
            start,
            length,
            depth: 1,
            present: true,
            zero: false,
            data: true,
            compressed: false,
            offset: Some(start),
        }
    }

    /// Zeros: a zero cluster in the image (`present`), or unallocated with no backing file.
    pub fn zeros(start: u64, length: u64, present: bool) -> MapEntry {
        MapEntry { start, length, depth: 0, present, zero: true, data: false, compressed: false, offset: None }
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print(value: &impl Serialize) {
    say!("{}", serde_json::to_string_pretty(value).expect("img reports serialise"));
}
