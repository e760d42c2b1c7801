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
//! once), so a case takes well under a millisecond. Devices, seed images and the properties are
//! `fvd_scenarios::fuzz`'s, shared with the `image` fuzz target.

use fvd_engine::format::journal::{JournalRecord, decode_sector, encode_sector};
use fvd_engine::format::table::decode_table;
use fvd_engine::format::{Bitmap, HEADER_BYTES, HEADER_REGION_BYTES, Header, Layout};
use fvd_scenarios::fuzz::{
    HEADER_FIELDS, check_mutated_image, devices_for, header_field_is_u32, open_and_read, run_check, sector_format,
    seed_images as seeds,
};
use fvd_scenarios::host::HostExecutor;
use proptest::prelude::*;

fn pinned_config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = proptest::test_runner::RngSeed::Fixed(0xf5d_0009);
    }
    config
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
            let width = if header_field_is_u32(at) { 4 } else { 8 };
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
            let sector = encode_sector(sector_format(image), 0, &[record]);
            image[at..at + 512].copy_from_slice(&sector);
            image[4300..4304].copy_from_slice(&0u32.to_le_bytes()); // dirty, so replay runs
        }
    }
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
        // The image fuzz target's properties (a panic fails the case and proptest shrinks it).
        check_mutated_image(seed, &image);
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
        let _ = fvd_engine::format::HeaderExtension::newest(region);
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
