//! Hostile images (issue #9): random byte flips, overwrites, field values and forged journal
//! sectors applied to valid images of every kind (plain, compact with a base, separate data file,
//! a dirty `v1` image, a dirty hardened image whose journal wrapped). Properties:
//!
//! - nothing panics: not the decoders, not open, check or check --repair, not reads of an image
//!   that opened;
//! - check knows every rule open knows: if open refuses an image as corrupt, check reports a
//!   corruption;
//! - a repair works: after check --repair (when the header itself was readable), the image opens
//!   and checks clean.
//!
//! The engine runs on in-memory devices with the host executor (every request completes at
//! once), so a case takes well under a millisecond.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;

use fvd_engine::format::journal::{JournalRecord, SectorFormat, decode_sector, encode_sector};
use fvd_engine::format::table::decode_table;
use fvd_engine::format::{Bitmap, HEADER_BYTES, HEADER_REGION_BYTES, Header, HeaderExtension, Layout};
use fvd_engine::{
    BaseImage, BlockDevice, CreateOptions, DeviceError, Devices, FvdError, FvdImage, IoFuture, IoKind, JournalSize,
    OpenOptions, Profile, WriteFlags, check,
};
use fvd_scenarios::host::{HostEnv, HostExecutor};
use proptest::prelude::*;

fn pinned_config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = proptest::test_runner::RngSeed::Fixed(0xf5d_0009);
    }
    config
}

/// A byte vector as a [`BlockDevice`]; requests complete at once.
struct MemDevice {
    name: String,
    bytes: RefCell<Vec<u8>>,
}

impl MemDevice {
    fn new(name: &str, bytes: Vec<u8>) -> Rc<MemDevice> {
        Rc::new(MemDevice { name: name.into(), bytes: RefCell::new(bytes) })
    }

    fn snapshot(&self) -> Vec<u8> {
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
        self.bytes.borrow_mut().resize(len_bytes as usize, 0);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A valid image to mutate: its bytes, its data file and base image, and the profile it was
/// written with.
#[derive(Debug, Clone)]
struct SeedImage {
    kind: &'static str,
    image: Vec<u8>,
    data: Option<Vec<u8>>,
    base: Option<Vec<u8>>,
    profile: Profile,
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
    executor.block_on(async move { FvdImage::create(&target, &create).await.unwrap() });
    let env = Rc::new(HostEnv::new(&executor, fvd_sim::Seed(7)));
    let opened =
        executor.block_on(FvdImage::open(devices, env, OpenOptions { profile, ..OpenOptions::default() })).unwrap();
    let writes = writes.to_vec();
    executor.block_on(async move {
        for (i, (offset, len)) in writes.into_iter().enumerate() {
            opened.write(offset, &vec![i as u8 + 1; len as usize]).await.unwrap();
        }
        if !dirty {
            opened.close().await.unwrap();
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

fn seeds() -> &'static [SeedImage] {
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

/// One change to an image.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip bit `bit` of the byte at `pos` (reduced into `region`).
    Flip { region: usize, pos: u32, bit: u8 },
    /// Overwrite the byte at `pos` of `region`.
    Byte { region: usize, pos: u32, value: u8 },
    /// Overwrite the 8-byte header field `field` (index into [`HEADER_FIELDS`]) with a value.
    Field { field: usize, value: u64, pick: u8 },
    /// Write a hardened journal sector with a valid CRC and the current epoch (or a v1 sector on
    /// an image without extension) holding one record built from `a`, `b` and `n`.
    Forge { sector: u32, table: bool, a: u64, b: u32, n: u8, pick: u8 },
}

/// Offsets of the header's numeric fields (docs/format.md §1).
const HEADER_FIELDS: [usize; 16] =
    [8, 12, 20, 1068, 1076, 1084, 1092, 2148, 2168, 2208, 2212, 2220, 2228, 4284, 4292, 4300];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (0usize..5, any::<u32>(), 0u8..8).prop_map(|(region, pos, bit)| Mutation::Flip { region, pos, bit }),
        2 => (0usize..5, any::<u32>(), any::<u8>()).prop_map(|(region, pos, value)| Mutation::Byte { region, pos, value }),
        3 => (0usize..HEADER_FIELDS.len(), any::<u64>(), any::<u8>())
            .prop_map(|(field, value, pick)| Mutation::Field { field, value, pick }),
        3 => (any::<u32>(), any::<bool>(), any::<u64>(), any::<u32>(), 0u8..6, any::<u8>())
            .prop_map(|(sector, table, a, b, n, pick)| Mutation::Forge { sector, table, a, b, n, pick }),
    ]
}

/// `[start, end)` of region `index` of an image laid out as `header` says: header, extension
/// slots, bitmap, table, journal (an empty region falls back to the header).
fn region(image: &[u8], header: Option<&Header>, index: usize) -> (usize, usize) {
    let len = image.len();
    let clip = |start: u64, size: u64| {
        let start = (start as usize).min(len);
        (start, (start.saturating_add(size as usize)).min(len))
    };
    let picked = match (index, header) {
        (0, _) | (_, None) => (0, HEADER_BYTES.min(len)),
        (1, _) => clip(4608, 1024),
        (2, Some(h)) => clip(h.bitmap_offset, h.bitmap_size),
        (3, Some(h)) if h.compact_image => clip(h.table_offset, 4096),
        (4, Some(h)) => clip(h.journal_offset, h.journal_size),
        _ => (0, 0),
    };
    if picked.0 < picked.1 { picked } else { (0, HEADER_BYTES.min(len)) }
}

fn apply(image: &mut [u8], mutation: &Mutation) {
    let header = Header::decode(&image[..(HEADER_REGION_BYTES as usize).min(image.len())]).ok();
    match *mutation {
        Mutation::Flip { region: r, pos, bit } => {
            let (start, end) = region(image, header.as_ref(), r);
            image[start + pos as usize % (end - start)] ^= 1 << bit;
        }
        Mutation::Byte { region: r, pos, value } => {
            let (start, end) = region(image, header.as_ref(), r);
            image[start + pos as usize % (end - start)] = value;
        }
        Mutation::Field { field, value, pick } => {
            let at = HEADER_FIELDS[field];
            let current = u64::from_le_bytes(image[at..at + 8].try_into().unwrap());
            let value = match pick % 8 {
                0 => value,
                1 => current.wrapping_add(value % 8 * 512 + 1),
                2 => current.wrapping_add(512),
                3 => current.wrapping_sub(512),
                4 => i64::MAX as u64,
                5 => 0,
                6 => current ^ (1 << (value % 64)),
                _ => value % (1 << 32),
            };
            // 4-byte fields (booleans, block_size, i32s) take the low half only.
            let width = if matches!(at, 8 | 1092 | 2148 | 2168 | 2208 | 4300) { 4 } else { 8 };
            image[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        Mutation::Forge { sector, table, a, b, n, pick } => {
            let Some(h) = header.as_ref().filter(|h| h.journal_size >= 512) else { return };
            let sectors = h.journal_size / 512;
            let at = (h.journal_offset + u64::from(sector) % sectors * 512) as usize;
            if at + 512 > image.len() {
                return;
            }
            // Values near the edges of the table, the storage and the disk, and overflow bait.
            let disk_sectors = h.virtual_disk_size / 512;
            let record = if table {
                let first_chunk = match pick % 4 {
                    0 | 1 => (a % 20) as u32,
                    2 => u32::MAX - (a % 4) as u32,
                    _ => a as u32,
                };
                let first_entry = if pick / 4 % 2 == 0 { b % 40 } else { b };
                let entries = (0..u32::from(n)).map(|i| first_entry.wrapping_add(i)).collect();
                JournalRecord::Table { first_chunk, entries }
            } else {
                let first_sector = match pick % 5 {
                    0 | 1 => a % disk_sectors.max(1),
                    2 => disk_sectors.wrapping_sub(a % 4),
                    3 => u64::MAX - a % 1024,
                    _ => 1 << (a % 64),
                };
                JournalRecord::Bitmap { first_sector, sectors: b % 64 }
            };
            let format = match HeaderExtension::newest(&image[..HEADER_REGION_BYTES as usize]) {
                Some(extension) => SectorFormat::Hardened { epoch: extension.journal_epoch },
                None => SectorFormat::V1,
            };
            image[at..at + 512].copy_from_slice(&encode_sector(format, 0, &[record]));
            image[4300..4304].copy_from_slice(&0u32.to_le_bytes()); // dirty, so replay runs
        }
    }
}

/// Devices for a (mutated) image as `fvdsim img` would find them: the data file and base image
/// its header names (empty ones when the seed has none).
fn devices_for(seed: &SeedImage, image: &[u8]) -> Devices {
    let header = Header::decode(&image[..(HEADER_REGION_BYTES as usize).min(image.len())]).ok();
    let names_data = header.as_ref().is_some_and(|h| !h.data_file.is_empty());
    let names_base = header.as_ref().is_some_and(|h| !h.base_img.is_empty() || h.bitmap_size > 0);
    Devices {
        image: MemDevice::new("image", image.to_vec()),
        data: names_data.then(|| MemDevice::new("data", seed.data.clone().unwrap_or_default()) as Rc<dyn BlockDevice>),
        base: names_base.then(|| MemDevice::new("base", seed.base.clone().unwrap_or_default()) as Rc<dyn BlockDevice>),
    }
}

fn run_check(executor: &HostExecutor, devices: Devices, profile: Profile, repair: bool) -> fvd_engine::CheckReport {
    executor
        .block_on(async move { check(&devices, profile, repair).await })
        .unwrap_or_else(|e| panic!("check failed with an error instead of a report: {e}"))
}

/// Opens, reads the whole disk, closes. Returns the open error, if any.
fn open_and_read(executor: &HostExecutor, devices: Devices, profile: Profile) -> Result<(), FvdError> {
    let env = Rc::new(HostEnv::new(executor, fvd_sim::Seed(9)));
    let image = executor.block_on(FvdImage::open(devices, env, OpenOptions { profile, ..OpenOptions::default() }))?;
    executor.block_on(async move {
        let size = image.layout().virtual_size;
        let mut buf = vec![0u8; 64 << 10];
        let mut at = 0;
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            let _ = image.read(at, &mut buf[..n]).await;
            at += n as u64;
        }
        let _ = image.close().await;
    });
    Ok(())
}

fn refused_as_corrupt(error: &FvdError) -> bool {
    matches!(error, FvdError::Corrupt { .. } | FvdError::DirtyWithoutJournal)
}

proptest! {
    #![proptest_config(pinned_config(1024))]

    #[test]
    fn open_refusals_are_check_corruptions_and_repair_works(
        which in 0usize..5,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let seed = &seeds()[which];
        let mut image = seed.image.clone();
        for m in &mutations {
            apply(&mut image, m);
        }
        let executor = HostExecutor::new();
        let report = run_check(&executor, devices_for(seed, &image), seed.profile, false);
        let opened = open_and_read(&executor, devices_for(seed, &image), seed.profile);
        if let Err(error) = &opened {
            prop_assert!(
                !refused_as_corrupt(error) || !report.is_clean(),
                "{}: open refused ({error}) but check called it clean: {report:?}",
                seed.kind
            );
        }
        // check --repair on a fresh copy; unless the header or layout is beyond repair, the
        // repaired image opens and checks clean.
        let devices = devices_for(seed, &image);
        let repaired_image = devices.image.clone();
        let data = devices.data.clone();
        let repair = run_check(&executor, devices, seed.profile, true);
        if !repair.fatal {
            let repaired = Devices {
                image: repaired_image,
                data,
                base: devices_for(seed, &image).base,
            };
            let again = run_check(&executor, repaired.clone(), seed.profile, false);
            prop_assert!(again.is_clean(), "{}: still corrupt after repair ({repair:?}): {again:?}", seed.kind);
            let reopened = open_and_read(&executor, repaired, seed.profile);
            prop_assert!(reopened.is_ok(), "{}: repaired image ({repair:?}) failed to open: {reopened:?}", seed.kind);
        }
    }

    #[test]
    fn decoders_never_panic_on_mutated_metadata(
        which in 0usize..5,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let seed = &seeds()[which];
        let mut image = seed.image.clone();
        for m in &mutations {
            apply(&mut image, m);
        }
        let region = &image[..(HEADER_REGION_BYTES as usize).min(image.len())];
        let _ = HeaderExtension::newest(region);
        let Ok(header) = Header::decode(region) else { return Ok(()) };
        let data_len = seed.data.as_ref().map_or(image.len(), Vec::len) as u64;
        let Ok(layout) = Layout::from_header(&header, image.len() as u64, data_len) else { return Ok(()) };
        // The layout puts every structure inside the file.
        prop_assert!(layout.metadata_size <= image.len() as u64);
        prop_assert!(layout.journal_offset + layout.journal_size <= layout.metadata_size);
        let bitmap = &image[layout.bitmap_offset as usize..][..layout.bitmap_size as usize];
        let _ = Bitmap::decode(bitmap, layout.bitmap_blocks);
        if layout.compact {
            let table = &image[layout.table_offset as usize..][..layout.table_size as usize];
            let _ = decode_table(table, layout.table_entries, layout.storage_chunks(data_len));
        }
        let journal = &image[layout.journal_offset as usize..][..layout.journal_size as usize];
        for (s, sector) in journal.chunks_exact(512).enumerate() {
            if let fvd_engine::format::DecodedSector::V1 { records, .. }
            | fvd_engine::format::DecodedSector::Hardened { records, .. } = decode_sector(sector)
            {
                for (r, record) in records.iter().enumerate() {
                    let _ = layout.check_journal_record(record, layout.storage_chunks(data_len), s as u64, r);
                }
            }
        }
    }
}

#[test]
fn the_seed_images_are_valid_and_check_clean() {
    let executor = HostExecutor::new();
    for seed in seeds() {
        let report = run_check(&executor, devices_for(seed, &seed.image), seed.profile, false);
        assert!(report.is_clean(), "{}: {report:?}", seed.kind);
        open_and_read(&executor, devices_for(seed, &seed.image), seed.profile)
            .unwrap_or_else(|e| panic!("{}: {e}", seed.kind));
    }
    let dirty: Vec<&str> = seeds().iter().filter(|s| s.image[4300] == 0).map(|s| s.kind).collect();
    assert_eq!(dirty, ["dirty v1", "dirty hardened, journal wrapped"]);
}
