//! Fuzz targets (issue #9): one harness per input fvdsim reads from outside, each a function of
//! `&[u8]` that must never panic, hang or allocate by an unchecked number, whatever the bytes.
//!
//! | target                 | input                                                         |
//! |------------------------|---------------------------------------------------------------|
//! | `header_and_extension` | an image's header region (header and extension slots)         |
//! | `layout`               | `image_len: u64 LE, data_len: u64 LE`, then a header          |
//! | `journal`              | seed-image kind, a flags byte, then 512-byte journal sectors  |
//! | `image`                | seed-image kind, then a list of edits ([`image`])             |
//! | `trace_cloudphysics`, `trace_msr`, `trace_plain` | trace text (or gzip of it)          |
//! | `failure_file`         | a failure file's text                                         |
//!
//! Three runners share the harnesses: `cargo fuzz` (the `fuzz/` crate, nightly, coverage-guided,
//! `cargo xtask fuzz`), the stable CI run `scenarios/tests/fuzz_cases.rs` (the seed corpus plus a
//! fixed number of deterministic mutations of it), and the proptest mutation tests of
//! `scenarios/tests/mutation_props.rs`, which use this module's in-memory devices and seed images.
//!
//! A property violated panics with a message naming it; that is how every runner reports a
//! finding. The image harness runs the engine on [`MemDevice`]s with the host executor, so a case
//! takes well under a millisecond.

use std::cell::RefCell;
use std::io::Read as _;
use std::rc::Rc;
use std::sync::OnceLock;

use fvd_engine::SECTOR_BYTES_USIZE;
use fvd_engine::format::header::EXTENSION_SLOT_OFFSETS;
use fvd_engine::format::journal::{HARDENED_RECORDS_START, HARDENED_SECTOR_MAGIC, SectorFormat, encode_sector};
use fvd_engine::format::table::decode_table;
use fvd_engine::format::{
    Bitmap, DecodedSector, HEADER_BYTES, HEADER_REGION_BYTES, Header, HeaderExtension, JournalRecord, Layout,
    SECTOR_BYTES,
};
use fvd_engine::{
    BaseImage, BlockDevice, CheckReport, CreateOptions, DeviceError, Devices, FvdError, FvdImage, IoFuture, IoKind,
    JournalSize, OpenOptions, Profile, WriteFlags, check,
};

use crate::campaign::config::{CrashPoint, CrashSpec, draw_schedule};
use crate::campaign::output::{FailureFile, parse_failure_file};
use crate::campaign::run::{CrashSummary, Failure, FailureClass, SectorFailure};
use crate::host::{HostEnv, HostExecutor};
use crate::trace::{MAX_DISK_BYTES, MAX_REQUEST_BYTES, TraceFormat};

/// A fuzz target: its name (the `fuzz/fuzz_targets/<name>.rs` file) and its harness.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[Target] = &[
    ("header_and_extension", header_and_extension),
    ("layout", layout),
    ("journal", journal),
    ("image", image),
    ("trace_cloudphysics", trace_cloudphysics),
    ("trace_msr", trace_msr),
    ("trace_plain", trace_plain),
    ("failure_file", failure_file),
];

/// The harness called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

// ---------------------------------------------------------------------------------------------
// In-memory devices and seed images
// ---------------------------------------------------------------------------------------------

/// Largest length a [`MemDevice`] grows to; a longer `set_len` fails as a media error (a real
/// file would be sparse; a fuzzed header must not make the harness allocate gigabytes).
pub const MEM_DEVICE_MAX_BYTES: u64 = 64 << 20;

/// A byte vector as a [`BlockDevice`]; requests complete at once.
#[derive(Debug)]
pub struct MemDevice {
    name: String,
    bytes: RefCell<Vec<u8>>,
}

impl MemDevice {
    /// A device called `name` holding `bytes`.
    pub fn new(name: &str, bytes: Vec<u8>) -> Rc<MemDevice> {
        Rc::new(MemDevice { name: name.into(), bytes: RefCell::new(bytes) })
    }

    /// A copy of the device's bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.borrow().clone()
    }

    fn out_of_range(&self, kind: IoKind, offset_bytes: u64, len_bytes: u64) -> DeviceError {
        DeviceError::OutOfRange {
            device: self.name.clone(),
            kind,
            offset_bytes,
            len_bytes,
            device_len_bytes: self.len_bytes(),
        }
    }
}

impl BlockDevice for MemDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn len_bytes(&self) -> u64 {
        self.bytes.borrow().len() as u64
    }
    fn read_at<'a>(&'a self, offset_bytes: u64, buf: &'a mut [u8]) -> IoFuture<'a, ()> {
        let bytes = self.bytes.borrow();
        let end = offset_bytes.checked_add(buf.len() as u64).filter(|end| *end <= bytes.len() as u64);
        let result = match end {
            Some(end) => {
                buf.copy_from_slice(&bytes[offset_bytes as usize..end as usize]);
                Ok(())
            }
            None => Err(self.out_of_range(IoKind::Read, offset_bytes, buf.len() as u64)),
        };
        Box::pin(std::future::ready(result))
    }
    fn write_at<'a>(&'a self, offset_bytes: u64, data: &'a [u8], _flags: WriteFlags) -> IoFuture<'a, ()> {
        let mut bytes = self.bytes.borrow_mut();
        let end = offset_bytes.checked_add(data.len() as u64).filter(|end| *end <= bytes.len() as u64);
        let result = match end {
            Some(end) => {
                bytes[offset_bytes as usize..end as usize].copy_from_slice(data);
                Ok(())
            }
            None => Err(self.out_of_range(IoKind::Write, offset_bytes, data.len() as u64)),
        };
        Box::pin(std::future::ready(result))
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn set_len(&self, len_bytes: u64) -> IoFuture<'_, ()> {
        let result = if len_bytes > MEM_DEVICE_MAX_BYTES {
            Err(DeviceError::Media {
                device: self.name.clone(),
                kind: IoKind::Write,
                offset_bytes: len_bytes,
                len_bytes: 0,
            })
        } else {
            self.bytes.borrow_mut().resize(len_bytes as usize, 0);
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }
}

/// A valid image to mutate: its bytes, its data file and base image, and the profile it was
/// written with.
#[derive(Debug, Clone)]
pub struct SeedImage {
    /// What kind of image it is, for messages.
    pub kind: &'static str,
    /// The image file.
    pub image: Vec<u8>,
    /// The separate data file, if any.
    pub data: Option<Vec<u8>>,
    /// The base image, if any.
    pub base: Option<Vec<u8>>,
    /// The profile it was written with and is opened with.
    pub profile: Profile,
}

fn base_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i / 512 % 251) as u8 ^ 0xa5).collect()
}

/// Creates an image, writes `writes` (offset, length) through the engine, and closes it unless
/// `dirty` (then the clean flag stays 0 and the journal holds the session's records).
fn build(
    kind: &'static str,
    mut create: CreateOptions,
    base_len: usize,
    writes: &[(u64, u64)],
    dirty: bool,
) -> SeedImage {
    let executor = HostExecutor::new();
    let image = MemDevice::new("image", Vec::new());
    let data = create.data_file.is_some().then(|| MemDevice::new("data", Vec::new()));
    let base = (base_len > 0).then(|| MemDevice::new("base", base_bytes(base_len)));
    if base_len > 0 {
        create.base = Some(BaseImage { name: "base.raw".into(), format: "raw".into(), len_bytes: base_len as u64 });
    }
    let devices = Devices {
        image: image.clone(),
        data: data.clone().map(|d| d as Rc<dyn BlockDevice>),
        base: base.clone().map(|d| d as Rc<dyn BlockDevice>),
    };
    let profile = create.profile;
    let target = devices.clone();
    executor.block_on(async move { FvdImage::create(&target, &create).await.expect("seed images are valid") });
    let env = Rc::new(HostEnv::new(&executor, fvd_sim::Seed(7)));
    let opened = executor
        .block_on(FvdImage::open(devices, env, OpenOptions { profile, ..OpenOptions::default() }))
        .expect("a new seed image opens");
    let writes = writes.to_vec();
    executor.block_on(async move {
        for (i, (offset, len)) in writes.into_iter().enumerate() {
            opened.write(offset, &vec![i as u8 + 1; len as usize]).await.expect("seed writes succeed");
        }
        if !dirty {
            opened.close().await.expect("seed images close");
        }
    });
    SeedImage {
        kind,
        image: image.snapshot(),
        data: data.map(|d| d.snapshot()),
        base: base.map(|d| d.snapshot()),
        profile,
    }
}

/// The valid images every image target starts from (built once per process): plain, compact
/// with a base, separate data file, a dirty `v1` image, and a dirty hardened image whose journal
/// wrapped (a full journal, recycled).
pub fn seed_images() -> &'static [SeedImage] {
    static SEEDS: OnceLock<Vec<SeedImage>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let small = |size: u64| {
            let mut create = CreateOptions::new(size);
            create.block_size = Some(4096);
            create.journal = JournalSize::Bytes(4096);
            create
        };
        let plain = CreateOptions::new(256 << 10);
        let mut compact = small(1 << 20);
        compact.compact = true;
        compact.chunk_size = Some(64 << 10);
        compact.storage_grow_unit = Some(128 << 10);
        let mut separate = compact.clone();
        separate.data_file = Some("image.data".into());
        let mut v1 = small(512 << 10);
        v1.profile = Profile::V1;
        let writes = [(0u64, 4096u64), (8192, 512), (300 << 10, 64 << 10), (700 << 10, 4096)];
        // Twelve slow-path writes into eight journal sectors: the journal wraps and recycles.
        let many: Vec<(u64, u64)> = (0..12u64).map(|i| (i * (80 << 10), 512)).collect();
        vec![
            build("plain", plain, 0, &[(0, 4096), (128 << 10, 8192)], false),
            build("compact with base", compact.clone(), 768 << 10, &writes, false),
            build("separate data file", separate, 0, &writes, false),
            build("dirty v1", v1, 400 << 10, &[(0, 4096), (8192, 512), (200 << 10, 8192)], true),
            build("dirty hardened, journal wrapped", compact, 768 << 10, &many, true),
        ]
    })
}

/// Devices for a (mutated) image as `fvdsim img` would find them: the data file and base image
/// its header names (empty ones when the seed has none).
pub fn devices_for(seed: &SeedImage, image: &[u8]) -> Devices {
    let header = Header::decode(&image[..(HEADER_REGION_BYTES as usize).min(image.len())]).ok();
    let names_data = header.as_ref().is_some_and(|h| !h.data_file.is_empty());
    let names_base = header.as_ref().is_some_and(|h| !h.base_img.is_empty() || h.bitmap_size > 0);
    Devices {
        image: MemDevice::new("image", image.to_vec()),
        data: names_data.then(|| MemDevice::new("data", seed.data.clone().unwrap_or_default()) as Rc<dyn BlockDevice>),
        base: names_base.then(|| MemDevice::new("base", seed.base.clone().unwrap_or_default()) as Rc<dyn BlockDevice>),
    }
}

/// `check` (or `check --repair`); panics if it returns an error instead of a report.
pub fn run_check(executor: &HostExecutor, devices: Devices, profile: Profile, repair: bool) -> CheckReport {
    executor
        .block_on(async move { check(&devices, profile, repair).await })
        .unwrap_or_else(|e| panic!("check failed with an error instead of a report: {e}"))
}

/// Bytes of the virtual disk [`open_and_read`] reads: all of a disk up to this size; of a larger
/// one (a forged header can name a compact disk of petabytes) the first and last half of it.
pub const READ_LIMIT_BYTES: u64 = 8 << 20;

/// Opens, reads the disk (see [`READ_LIMIT_BYTES`]), closes. Returns the open error, if any.
pub fn open_and_read(executor: &HostExecutor, devices: Devices, profile: Profile) -> Result<(), FvdError> {
    let env = Rc::new(HostEnv::new(executor, fvd_sim::Seed(9)));
    let image = executor.block_on(FvdImage::open(devices, env, OpenOptions { profile, ..OpenOptions::default() }))?;
    executor.block_on(async move {
        let size = image.layout().virtual_size;
        let ranges = if size <= READ_LIMIT_BYTES {
            [(0, size), (size, size)]
        } else {
            let tail = (size - READ_LIMIT_BYTES / 2) / SECTOR_BYTES * SECTOR_BYTES;
            [(0, READ_LIMIT_BYTES / 2), (tail, size)]
        };
        let mut buf = vec![0u8; 64 << 10];
        for (mut at, end) in ranges {
            while at < end {
                let n = (end - at).min(buf.len() as u64) as usize;
                let _ = image.read(at, &mut buf[..n]).await;
                at += n as u64;
            }
        }
        let _ = image.close().await;
    });
    Ok(())
}

/// Open refused the image because it is damaged (not for an I/O error or a bad option).
pub fn refused_as_corrupt(error: &FvdError) -> bool {
    matches!(error, FvdError::Corrupt { .. } | FvdError::DirtyWithoutJournal)
}

/// Offsets of the header's numeric fields (docs/format.md §1).
pub const HEADER_FIELDS: [usize; 16] =
    [8, 12, 20, 1068, 1076, 1084, 1092, 2148, 2168, 2208, 2212, 2220, 2228, 4284, 4292, 4300];

/// True for the 4-byte fields of [`HEADER_FIELDS`] (booleans, `block_size`, `i32`s).
pub fn header_field_is_u32(at: usize) -> bool {
    matches!(at, 8 | 1092 | 2148 | 2168 | 2208 | 4300)
}

/// Numbers that break arithmetic: zero, one, sector and block sizes, sign bits, maxima.
pub const INTERESTING: [u64; 16] = [
    0,
    1,
    511,
    512,
    4096,
    0x7fff_ffff,
    0x8000_0000,
    u32::MAX as u64 - 1,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    (i64::MAX as u64) - 511,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 511,
    u64::MAX,
];

/// The journal sector format of `image` (hardened when its header region holds a valid
/// extension, with the extension's epoch).
pub fn sector_format(image: &[u8]) -> SectorFormat {
    match HeaderExtension::newest(&image[..(HEADER_REGION_BYTES as usize).min(image.len())]) {
        Some(extension) => SectorFormat::Hardened { epoch: extension.journal_epoch },
        None => SectorFormat::V1,
    }
}

/// Gives a hardened journal sector (one starting with the hardened magic) a valid checksum, so a
/// fuzzer's records reach the record parser.
pub fn seal_sector(sector: &mut [u8]) {
    if sector.len() == SECTOR_BYTES_USIZE && sector[0..4] == HARDENED_SECTOR_MAGIC.to_le_bytes() {
        let crc = crc32c(&sector[8..]);
        sector[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

fn crc32c(bytes: &[u8]) -> u32 {
    // The engine's checksum (CRC-32C), computed bitwise: the harness needs no extra dependency.
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

// ---------------------------------------------------------------------------------------------
// Harnesses
// ---------------------------------------------------------------------------------------------

/// Header and extension decoders: `Header::decode` of the input (a decoded header re-encodes to
/// the same header), every extension slot, and `HeaderExtension::newest` (a found extension
/// re-encodes to itself).
pub fn header_and_extension(data: &[u8]) {
    if let Ok(header) = Header::decode(data) {
        // Decoded strings are shorter than their fields (NUL-terminated), so they encode.
        let encoded = header.encode();
        let again = Header::decode(&encoded).expect("an encoded header decodes");
        assert_eq!(again, header, "header does not survive encode and decode");
        let _ = header.sector_8();
    }
    for at in EXTENSION_SLOT_OFFSETS {
        let _ = HeaderExtension::decode_slot(data.get(at as usize..).unwrap_or_default());
    }
    let _ = HeaderExtension::decode_slot(data);
    if let Some(extension) = HeaderExtension::newest(data) {
        let sector = extension.encode_sector();
        assert_eq!(HeaderExtension::decode_slot(&sector), Some(extension), "extension does not round-trip");
        assert!(extension.slot_offset() == 4608 || extension.slot_offset() == 5120);
    }
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    let bytes = data.get(at..).unwrap_or_default();
    let n = bytes.len().min(8);
    word[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(word)
}

/// Layout rules: the input is `image_len: u64 LE`, `data_len: u64 LE`, then header bytes (padded
/// with zeros to a whole header). A layout that passes puts every structure inside the file, in
/// order, and sizes nothing beyond it; bitmap and table of that size decode without panicking.
pub fn layout(data: &[u8]) {
    let image_len = u64_at(data, 0);
    let data_len = u64_at(data, 8);
    let mut header = data.get(16..).unwrap_or_default().to_vec();
    if header.len() < HEADER_BYTES {
        header.resize(HEADER_BYTES, 0);
    }
    let Ok(header) = Header::decode(&header) else { return };
    let Ok(layout) = Layout::from_header(&header, image_len, data_len) else { return };
    assert!(layout.metadata_size <= image_len, "metadata beyond the image: {layout:?}");
    assert!(layout.bitmap_offset + layout.bitmap_size <= layout.table_offset.max(layout.journal_offset));
    assert!(layout.journal_offset.checked_add(layout.journal_size).is_some_and(|end| end <= layout.metadata_size));
    assert!(layout.bitmap_blocks.div_ceil(8) <= layout.bitmap_size, "bitmap too small: {layout:?}");
    assert!(layout.table_entries * 4 <= layout.table_size, "table too small: {layout:?}");
    if layout.compact {
        assert!(layout.chunk_size > 0 && layout.table_entries <= 1 << 31);
        assert!(layout.table_offset + layout.table_size <= layout.journal_offset);
    } else {
        assert!(data_len.saturating_sub(layout.data_offset) >= layout.virtual_size, "data area too small");
    }
    if layout.has_base() {
        assert!(layout.block_size > 0 && layout.base_size <= layout.virtual_size);
    }
    // Allocations the engine makes from a layout are bounded by the image: decode structures of
    // that size from zeros (only when the claimed image is small enough to hold in memory).
    if layout.metadata_size <= 16 << 20 {
        let bitmap = vec![0u8; layout.bitmap_size as usize];
        Bitmap::decode(&bitmap, layout.bitmap_blocks).expect("a zero bitmap of the layout's size decodes");
        if layout.compact {
            let table = vec![0xffu8; layout.table_size as usize];
            let storage = layout.storage_chunks(data_len);
            decode_table(&table, layout.table_entries, storage).expect("an empty table of the layout's size decodes");
        }
    }
}

/// Journal sector decoding and the record checks replay makes: the first byte picks a seed
/// image (whose layout the records are checked against), bit 0 of the second asks to seal
/// hardened sectors with a valid checksum, the rest is cut into 512-byte sectors. Every decoded
/// record is checked, a record that passes is applied to a bitmap and table as replay would,
/// and a decoded sector re-encodes to the same records.
pub fn journal(data: &[u8]) {
    let seeds = seed_images();
    let Some((&kind, rest)) = data.split_first() else { return };
    let seed = &seeds[kind as usize % seeds.len()];
    let (flags, sectors) = rest.split_first().map_or((0, &[][..]), |(f, s)| (*f, s));
    let region = &seed.image[..HEADER_REGION_BYTES as usize];
    let header = Header::decode(region).expect("seed headers decode");
    let data_len = seed.data.as_ref().map_or(seed.image.len(), Vec::len) as u64;
    let layout = Layout::from_header(&header, seed.image.len() as u64, data_len).expect("seed layouts hold");
    let storage_chunks = layout.storage_chunks(data_len);
    let mut bitmap = Bitmap::new(layout.bitmap_blocks);
    let mut table = vec![u32::MAX; layout.table_entries as usize];
    for (s, chunk) in sectors.chunks(SECTOR_BYTES_USIZE).take(64).enumerate() {
        let mut sector = [0u8; SECTOR_BYTES_USIZE];
        sector[..chunk.len()].copy_from_slice(chunk);
        if flags & 1 == 1 {
            seal_sector(&mut sector);
        }
        let decoded = fvd_engine::format::journal::decode_sector(&sector);
        let (records, format, sequence) = match &decoded {
            DecodedSector::Torn => continue,
            DecodedSector::Hardened { epoch, sequence, records } => {
                (records, SectorFormat::Hardened { epoch: *epoch }, *sequence)
            }
            DecodedSector::V1 { records, .. } => (records, SectorFormat::V1, 0),
        };
        let used: usize = records.iter().map(record_len).sum();
        assert!(used <= format.capacity(), "decoded {used} record bytes from a {}-byte sector", format.capacity());
        let reencoded = fvd_engine::format::journal::decode_sector(&encode_sector(format, sequence, records));
        let again = match reencoded {
            DecodedSector::Hardened { records, .. } | DecodedSector::V1 { records, .. } => records,
            DecodedSector::Torn => panic!("a re-encoded sector is torn"),
        };
        assert_eq!(&again, records, "journal records do not survive encode and decode");
        for (r, record) in records.iter().enumerate() {
            if layout.check_journal_record(record, storage_chunks, s as u64, r).is_err() {
                continue;
            }
            match record {
                JournalRecord::Bitmap { first_sector, sectors } if layout.has_base() => {
                    let start = first_sector * SECTOR_BYTES;
                    let end = (first_sector + u64::from(*sectors)) * SECTOR_BYTES;
                    bitmap.set_range(start / layout.block_size, end.div_ceil(layout.block_size));
                }
                JournalRecord::Bitmap { .. } => {}
                JournalRecord::Table { first_chunk, entries } => {
                    let first = *first_chunk as usize;
                    table[first..first + entries.len()].copy_from_slice(entries);
                }
            }
        }
    }
}

/// Reads edits from the `image` harness's input.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        let b = self.bytes(2);
        u16::from_le_bytes([b.first().copied().unwrap_or(0), b.get(1).copied().unwrap_or(0)])
    }
    fn u32(&mut self) -> u32 {
        u64_at(self.bytes(4), 0) as u32
    }
    fn u64(&mut self) -> u64 {
        u64_at(self.bytes(8), 0)
    }
}

/// Edits the `image` harness applies at most.
pub const MAX_EDITS: usize = 32;

/// One edit of an image, as encoded in the `image` harness's input (see [`image`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Overwrite bytes at `at` (modulo the image length).
    Bytes {
        /// Offset.
        at: u32,
        /// The bytes (at most 255).
        bytes: Vec<u8>,
    },
    /// Set header field [`HEADER_FIELDS`]`[field % 16]` (its low 4 bytes for a 4-byte field).
    Field {
        /// Index.
        field: u8,
        /// Value.
        value: u64,
    },
    /// Write [`INTERESTING`]`[which % 16]` at `at` rounded down to a multiple of 4, 4 or 8 bytes.
    Interesting {
        /// Offset (modulo the image length).
        at: u32,
        /// Which number.
        which: u8,
        /// 8 bytes rather than 4.
        wide: bool,
    },
    /// Write journal sector `sector % journal sectors` in the image's format holding `records`
    /// (raw record bytes, truncated to fit), sealed with a valid checksum and the current epoch,
    /// and mark the image dirty so open replays it.
    Forge {
        /// Journal sector.
        sector: u16,
        /// Sequence number (hardened).
        sequence: u8,
        /// Record bytes (at most 255).
        records: Vec<u8>,
    },
    /// Cut or extend the image file to `len % (image length + 64 KiB)`.
    Resize {
        /// New length.
        len: u32,
    },
    /// Write `value` (0, 1 or anything) into the clean-shutdown flag.
    Clean {
        /// Value.
        value: u8,
    },
}

impl Edit {
    /// Parses edits from bytes (never fails; stops at the end or after [`MAX_EDITS`]).
    pub fn parse_all(bytes: &[u8]) -> Vec<Edit> {
        let mut cursor = Cursor(bytes);
        let mut edits = Vec::new();
        while !cursor.0.is_empty() && edits.len() < MAX_EDITS {
            let edit = match cursor.u8() % 6 {
                0 => {
                    let at = cursor.u32();
                    let n = cursor.u8() as usize;
                    Edit::Bytes { at, bytes: cursor.bytes(n).to_vec() }
                }
                1 => Edit::Field { field: cursor.u8(), value: cursor.u64() },
                2 => Edit::Interesting { at: cursor.u32(), which: cursor.u8(), wide: cursor.u8() & 1 == 1 },
                3 => {
                    let sector = cursor.u16();
                    let sequence = cursor.u8();
                    let n = cursor.u8() as usize;
                    Edit::Forge { sector, sequence, records: cursor.bytes(n).to_vec() }
                }
                4 => Edit::Resize { len: cursor.u32() },
                _ => Edit::Clean { value: cursor.u8() },
            };
            edits.push(edit);
        }
        edits
    }

    /// Appends this edit's encoding to `out` (the inverse of [`Edit::parse_all`]).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Edit::Bytes { at, bytes } => {
                out.push(0);
                out.extend_from_slice(&at.to_le_bytes());
                out.push(bytes.len().min(255) as u8);
                out.extend_from_slice(&bytes[..bytes.len().min(255)]);
            }
            Edit::Field { field, value } => {
                out.push(1);
                out.push(*field);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Edit::Interesting { at, which, wide } => {
                out.push(2);
                out.extend_from_slice(&at.to_le_bytes());
                out.push(*which);
                out.push(u8::from(*wide));
            }
            Edit::Forge { sector, sequence, records } => {
                out.push(3);
                out.extend_from_slice(&sector.to_le_bytes());
                out.push(*sequence);
                out.push(records.len().min(255) as u8);
                out.extend_from_slice(&records[..records.len().min(255)]);
            }
            Edit::Resize { len } => {
                out.push(4);
                out.extend_from_slice(&len.to_le_bytes());
            }
            Edit::Clean { value } => {
                out.push(5);
                out.push(*value);
            }
        }
    }

    /// Applies the edit to `image`.
    pub fn apply(&self, image: &mut Vec<u8>) {
        let len = image.len();
        match self {
            Edit::Bytes { at, bytes } if len > 0 => {
                let at = *at as usize % len;
                let n = bytes.len().min(len - at);
                image[at..at + n].copy_from_slice(&bytes[..n]);
            }
            Edit::Field { field, value } => {
                let at = HEADER_FIELDS[*field as usize % HEADER_FIELDS.len()];
                let width = if header_field_is_u32(at) { 4 } else { 8 };
                if at + width <= len {
                    image[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
                }
            }
            Edit::Interesting { at, which, wide } if len > 0 => {
                let width = if *wide { 8 } else { 4 };
                let at = (*at as usize % len) & !3;
                let value = INTERESTING[*which as usize % INTERESTING.len()];
                if at + width <= len {
                    image[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
                }
            }
            Edit::Forge { sector, sequence, records } => {
                let region = &image[..(HEADER_REGION_BYTES as usize).min(len)];
                let Ok(header) = Header::decode(region) else { return };
                let sectors = header.journal_size / SECTOR_BYTES;
                if sectors == 0 {
                    return;
                }
                let Some(at) = (u64::from(*sector) % sectors)
                    .checked_mul(SECTOR_BYTES)
                    .and_then(|o| o.checked_add(header.journal_offset))
                    .filter(|at| at.checked_add(SECTOR_BYTES).is_some_and(|end| end <= len as u64))
                else {
                    return;
                };
                let at = at as usize;
                let format = sector_format(image);
                let mut forged = encode_sector(format, u64::from(*sequence), &[]);
                let start = match format {
                    SectorFormat::V1 => 0,
                    SectorFormat::Hardened { .. } => HARDENED_RECORDS_START,
                };
                let n = records.len().min(SECTOR_BYTES_USIZE - start);
                forged[start..start + n].copy_from_slice(&records[..n]);
                seal_sector(&mut forged);
                image[at..at + SECTOR_BYTES_USIZE].copy_from_slice(&forged);
                let clean = Header::CLEAN_SHUTDOWN_OFFSET;
                image[clean..clean + 4].copy_from_slice(&0u32.to_le_bytes());
            }
            Edit::Resize { len: new_len } => {
                let new_len = *new_len as usize % (len + (64 << 10));
                image.resize(new_len, 0);
            }
            Edit::Clean { value } => {
                let clean = Header::CLEAN_SHUTDOWN_OFFSET;
                if clean + 4 <= len {
                    let value = match value % 4 {
                        0 => 0,
                        1 | 2 => 1,
                        _ => u32::from(*value),
                    };
                    image[clean..clean + 4].copy_from_slice(&value.to_le_bytes());
                }
            }
            _ => {}
        }
    }
}

/// Encodes an `image` harness input: the seed kind and the edits.
pub fn image_input(kind: u8, edits: &[Edit]) -> Vec<u8> {
    let mut out = vec![kind];
    for edit in edits {
        edit.encode_into(&mut out);
    }
    out
}

/// The whole open → check → read path on a mutated image. The first byte picks a seed image
/// ([`seed_images`], modulo their number), the rest is a list of [`Edit`]s, each a tag byte
/// (modulo 6: bytes, field, interesting number, forged journal sector, resize, clean flag) and
/// its operands in little-endian.
///
/// Properties: nothing panics (check, open with journal replay, reads, close, check --repair);
/// check returns a report, never an error; if open refuses the image as corrupt, check reports
/// a corruption; and unless the header itself is unreadable, the image check --repair leaves
/// checks clean and opens.
pub fn image(data: &[u8]) {
    let Some((&kind, edits)) = data.split_first() else { return };
    let seeds = seed_images();
    let seed = &seeds[kind as usize % seeds.len()];
    let mut bytes = seed.image.clone();
    for edit in Edit::parse_all(edits) {
        edit.apply(&mut bytes);
    }
    check_mutated_image(seed, &bytes);
}

/// The properties of [`image`] for `seed` mutated into `image`; panics naming the one broken.
pub fn check_mutated_image(seed: &SeedImage, image: &[u8]) {
    let executor = HostExecutor::new();
    let report = run_check(&executor, devices_for(seed, image), seed.profile, false);
    let opened = open_and_read(&executor, devices_for(seed, image), seed.profile);
    if let Err(error) = &opened {
        assert!(
            !refused_as_corrupt(error) || !report.is_clean(),
            "{}: open refused ({error}) but check called it clean: {report:?}",
            seed.kind
        );
    }
    let devices = devices_for(seed, image);
    let repaired_image = devices.image.clone();
    let data = devices.data.clone();
    let repair = run_check(&executor, devices, seed.profile, true);
    if !repair.fatal {
        let repaired = Devices { image: repaired_image, data, base: devices_for(seed, image).base };
        let again = run_check(&executor, repaired.clone(), seed.profile, false);
        assert!(again.is_clean(), "{}: still corrupt after repair ({repair:?}): {again:?}", seed.kind);
        let reopened = open_and_read(&executor, repaired, seed.profile);
        assert!(reopened.is_ok(), "{}: repaired image ({repair:?}) failed to open: {reopened:?}", seed.kind);
    }
}

/// Largest decompressed trace the trace harnesses read from a gzip input.
const GZIP_LIMIT_BYTES: u64 = 1 << 20;

fn trace_text(data: &[u8]) -> String {
    // As `trace::load` does: gzip by its magic bytes (bounded here), then the text.
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut text = Vec::new();
        let decoder = flate2::read::MultiGzDecoder::new(data);
        if decoder.take(GZIP_LIMIT_BYTES).read_to_end(&mut text).is_ok() {
            return String::from_utf8_lossy(&text).into_owned();
        }
    }
    String::from_utf8_lossy(data).into_owned()
}

fn trace(data: &[u8], format: TraceFormat) {
    let text = trace_text(data);
    match crate::trace::parse(&text, format, "fuzz") {
        Ok(trace) => {
            assert!(!trace.requests.is_empty(), "a parsed trace holds requests");
            assert!(trace.extent_sectors <= MAX_DISK_BYTES / SECTOR_BYTES, "extent beyond the largest disk");
            for request in &trace.requests {
                assert!((1..=MAX_REQUEST_BYTES / SECTOR_BYTES).contains(&request.len_sectors), "{request:?}");
                assert!(request.offset_sectors + request.len_sectors <= trace.extent_sectors, "{request:?}");
                assert!(request.time_ns <= crate::trace::MAX_TIME_NS, "{request:?}");
            }
            // Requests in the plain format read back as themselves.
            let plain = crate::trace::to_plain(&trace.requests);
            let again = crate::trace::parse(&plain, TraceFormat::Plain, "again").expect("to_plain output parses");
            assert_eq!(again.requests.len(), trace.requests.len());
        }
        Err(error) => assert!(error.to_string().starts_with("fuzz:"), "{error}"),
    }
}

/// CloudPhysics trace reader.
pub fn trace_cloudphysics(data: &[u8]) {
    trace(data, TraceFormat::Cloudphysics);
}

/// MSR Cambridge trace reader.
pub fn trace_msr(data: &[u8]) {
    trace(data, TraceFormat::Msr);
}

/// Plain trace reader.
pub fn trace_plain(data: &[u8]) {
    trace(data, TraceFormat::Plain);
}

/// Failure-file reader (what `fvdsim repro` and `fvdsim shrink` read first): an error or a
/// failure file, never a panic; a file that reads re-serialises to one that reads, names its run
/// safely, and its crash schedule draws (when no larger than a real run's).
pub fn failure_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(file) = parse_failure_file(&text, "fuzz.json") else { return };
    let name = file.config.name();
    assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)), "unsafe run name {name:?}");
    let _ = file.config.workload_line();
    let json = serde_json::to_string(&file).expect("failure files serialise");
    parse_failure_file(&json, "again.json").expect("a re-serialised failure file reads");
    if file.config.crashes.count <= 4096 {
        let schedule = draw_schedule(&file.config, 10_000);
        assert!(schedule.iter().all(|c| c.after_request < 10_000 || file.config.crashes.schedule.is_some()));
    }
}

// ---------------------------------------------------------------------------------------------
// Seed corpus
// ---------------------------------------------------------------------------------------------

/// Encoded bytes of a journal record.
fn record_len(record: &JournalRecord) -> usize {
    match record {
        JournalRecord::Bitmap { .. } => 16,
        JournalRecord::Table { entries, .. } => 12 + 4 * entries.len(),
    }
}

/// The encoding of one journal record (as [`Edit::Forge`] takes it).
pub fn record_bytes(record: JournalRecord) -> Vec<u8> {
    let len = record_len(&record);
    encode_sector(SectorFormat::V1, 0, &[record])[..len].to_vec()
}

fn bitmap_record(first_sector: u64, sectors: u32) -> Vec<u8> {
    record_bytes(JournalRecord::Bitmap { first_sector, sectors })
}

fn table_record(first_chunk: u32, entries: Vec<u32>) -> Vec<u8> {
    record_bytes(JournalRecord::Table { first_chunk, entries })
}

/// A failure file as a failing run writes it (hand-built: a v1 wrong-data failure after a crash).
pub fn sample_failure_file(scenario: &str, seed: u64) -> FailureFile {
    let build = crate::campaign::config::scenario(scenario).expect("a known scenario").build;
    let mut config = build(fvd_sim::Seed(seed));
    config.crashes.schedule = Some(draw_schedule(&config, 2000));
    let spec = config.crashes.schedule.as_ref().and_then(|s| s.first().cloned()).unwrap_or(CrashSpec {
        after_request: 10,
        point: CrashPoint::RandomEvent,
        occurrence: 1,
        strategy: fvd_sim::CrashStrategy::Prefix,
        atomic_unit: fvd_sim::AtomicUnit::Sector,
    });
    FailureFile {
        schema_version: crate::schema::FAILURE_FILE,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: "0123456789abcdef0123456789abcdef01234567".into(),
        repro_command: format!("fvdsim repro failure-{scenario}-{seed}.json"),
        failure: Failure {
            class: FailureClass::WrongData,
            message: "sector 42 holds write 7's data, which a crash rolled back".into(),
            sectors: vec![SectorFailure {
                sector: 42,
                allowed: vec!["write 9".into(), "zeros".into()],
                actual: "write 7".into(),
            }],
            at_request: 120,
            after_crashes: 1,
        },
        config,
        crashes: vec![CrashSummary {
            fired_at: spec.point,
            spec,
            fallback: false,
            at_ns: 1_000_000,
            at_request: 100,
            units_kept: 3,
            units_dropped: 2,
            units_torn: 1,
            sectors_verified: 64,
            journal_sectors_replayed: 4,
            writes: Vec::new(),
        }],
        last_events: vec!["12 submit image write 0+8".into(), "13 crash".into()],
        log_hash: "0x0123456789abcdef".into(),
    }
}

/// Valid inputs for `target`: serialised seed images (whole header regions, layouts with their
/// file lengths, journals), image edit lists of each kind, trace snippets of each format (plain
/// and gzip), and failure files.
pub fn seed_corpus(target: &str) -> Vec<Vec<u8>> {
    let seeds = seed_images();
    let region = |s: &SeedImage| s.image[..HEADER_REGION_BYTES as usize].to_vec();
    match target {
        "header_and_extension" => seeds.iter().map(region).collect(),
        "layout" => seeds
            .iter()
            .map(|s| {
                let data_len = s.data.as_ref().map_or(s.image.len(), Vec::len) as u64;
                let mut input = (s.image.len() as u64).to_le_bytes().to_vec();
                input.extend_from_slice(&data_len.to_le_bytes());
                input.extend_from_slice(&s.image[..HEADER_BYTES]);
                input
            })
            .collect(),
        "journal" => seeds
            .iter()
            .enumerate()
            .map(|(kind, s)| {
                let header = Header::decode(&region(s)).expect("seed headers decode");
                let start = header.journal_offset as usize;
                let mut input = vec![kind as u8, 0];
                input.extend_from_slice(&s.image[start..start + header.journal_size as usize]);
                input
            })
            .collect(),
        "image" => (0..seeds.len() as u8)
            .flat_map(|kind| {
                [
                    image_input(kind, &[]),
                    image_input(
                        kind,
                        &[
                            Edit::Forge { sector: 1, sequence: 200, records: bitmap_record(8, 16) },
                            Edit::Clean { value: 0 },
                        ],
                    ),
                    image_input(kind, &[Edit::Forge { sector: 0, sequence: 9, records: table_record(1, vec![0, 1]) }]),
                    image_input(
                        kind,
                        &[
                            Edit::Field { field: 1, value: 1 << 20 },
                            Edit::Interesting { at: 2220, which: 4, wide: true },
                        ],
                    ),
                    image_input(kind, &[Edit::Resize { len: 9000 }]),
                ]
            })
            .collect(),
        "trace_cloudphysics" => trace_corpus(&[
            "version,time,op,size,lbn\n1,100,2a,512,42\n1,100,28,4096,7\n1,101,2A,1024,9\n",
            "version,time,op,size,lbn\r\n1,5,28,65536,0\r\n1,5,2a,8388608,100\r\n1,7,28,512,18446744073\r\n",
        ]),
        "trace_msr" => trace_corpus(&[
            "Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime\n128166372003061629,hm,1,Read,3584,1000,1331\n128166372013061629,hm,1,Write,0,512,10\n",
            "128166372003061629,src1,0,Write,8388608,65536,200\n128166372003061620,src1,0,Read,0,4096,90\n",
        ]),
        "trace_plain" => trace_corpus(&[
            "# time_ms offset_sectors len_sectors r|w\n0 0 8 w\n0.5 8 8 r\n2 100 20000 w\n",
            "\u{feff}5 0 1 w\r\n3 8 1 W\r\n9 16 1 r\r\n4 24 1 R\r\n",
        ]),
        "failure_file" => [("random", 1), ("cloudphysics", 2), ("torn", 3)]
            .iter()
            .map(|&(scenario, seed)| {
                let mut file = sample_failure_file(scenario, seed);
                if scenario == "torn" {
                    file.config.profile = crate::campaign::config::ProfileName::V1;
                }
                serde_json::to_vec_pretty(&file).expect("failure files serialise")
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn trace_corpus(texts: &[&str]) -> Vec<Vec<u8>> {
    let mut corpus: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, texts[0].as_bytes()).expect("gzip to memory");
    corpus.push(gz.finish().expect("gzip to memory"));
    corpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_engine() {
        let sector = encode_sector(
            SectorFormat::Hardened { epoch: 3 },
            5,
            &[JournalRecord::Bitmap { first_sector: 1, sectors: 2 }],
        );
        let mut resealed = sector;
        resealed[4..8].fill(0);
        seal_sector(&mut resealed);
        assert_eq!(resealed, sector);
    }

    #[test]
    fn edits_round_trip_through_their_encoding() {
        let edits = vec![
            Edit::Bytes { at: 7, bytes: vec![1, 2, 3] },
            Edit::Field { field: 3, value: u64::MAX },
            Edit::Interesting { at: 4300, which: 2, wide: false },
            Edit::Forge { sector: 3, sequence: 4, records: bitmap_record(1, 1) },
            Edit::Resize { len: 100 },
            Edit::Clean { value: 1 },
        ];
        let input = image_input(2, &edits);
        assert_eq!(Edit::parse_all(&input[1..]), edits);
    }
}
