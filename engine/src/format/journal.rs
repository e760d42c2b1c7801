//! Journal sectors: 512-byte, self-contained units of metadata records (`fvd-v1.md` §2.2).
//!
//! Records (little-endian), as in v1:
//! - `BITMAP`: `u32 0x3F2AB8ED, u32 num_dirty_sectors, u64 dirty_sector_begin` (16 bytes): the
//!   blocks overlapping the guest sector range are in the image;
//! - `TABLE`: `u32 0xB4E6F7AC, u32 first_chunk, u32 n, n × u32 entry` (12 + 4n bytes);
//! - `EMPTY`: `u32 0`, the terminator.
//!
//! A **v1 sector** holds records from byte 0. A **hardened sector** starts with a 24-byte header
//! `u32 magic "FVJ2", u32 crc32c, u64 epoch, u64 sequence`, records follow from byte 24, and the
//! CRC covers bytes 8..512 with the epoch and sequence. Recovery applies a hardened sector only if
//! its CRC holds and its epoch is the header extension's current epoch, so torn sectors and
//! sectors from an earlier round of the journal are never applied.

use crate::error::FvdError;

/// `BITMAP_JRECORD` type.
pub const BITMAP_RECORD: u32 = 0x3F2A_B8ED;
/// `TABLE_JRECORD` type.
pub const TABLE_RECORD: u32 = 0xB4E6_F7AC;
/// Hardened sector magic, `"FVJ2"` little-endian (never a v1 record type).
pub const HARDENED_SECTOR_MAGIC: u32 = u32::from_le_bytes(*b"FVJ2");
use fvd_contract::SECTOR_BYTES_USIZE;
/// Where records start in a hardened sector.
pub const HARDENED_RECORDS_START: usize = 24;

/// One metadata change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalRecord {
    /// Blocks overlapping `[first_sector, first_sector + sectors)` are in the image.
    Bitmap {
        /// First guest sector.
        first_sector: u64,
        /// Number of sectors.
        sectors: u32,
    },
    /// `table[first_chunk + i] = entries[i]`.
    Table {
        /// First chunk.
        first_chunk: u32,
        /// Entries (a v1 entry may carry the dirty bit; replay clears it).
        entries: Vec<u32>,
    },
}

impl JournalRecord {
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            JournalRecord::Bitmap { .. } => 16,
            JournalRecord::Table { entries, .. } => 12 + 4 * entries.len(),
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            JournalRecord::Bitmap { first_sector, sectors } => {
                out.extend_from_slice(&BITMAP_RECORD.to_le_bytes());
                out.extend_from_slice(&sectors.to_le_bytes());
                out.extend_from_slice(&first_sector.to_le_bytes());
            }
            JournalRecord::Table { first_chunk, entries } => {
                out.extend_from_slice(&TABLE_RECORD.to_le_bytes());
                out.extend_from_slice(&first_chunk.to_le_bytes());
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for entry in entries {
                    out.extend_from_slice(&entry.to_le_bytes());
                }
            }
        }
    }
}

/// The journal format an engine profile writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectorFormat {
    /// The 2011 format: records from byte 0, no checksum, no epoch.
    V1,
    /// Checksummed and epoch-stamped.
    Hardened {
        /// The journal round the sector belongs to.
        epoch: u64,
    },
}

impl SectorFormat {
    fn records_start(self) -> usize {
        match self {
            SectorFormat::V1 => 0,
            SectorFormat::Hardened { .. } => HARDENED_RECORDS_START,
        }
    }

    /// Record bytes available per sector.
    pub fn capacity(self) -> usize {
        SECTOR_BYTES_USIZE - self.records_start()
    }
}

/// Encodes one sector holding `records` (which must fit: see [`pack_sectors`]).
pub fn encode_sector(format: SectorFormat, sequence: u64, records: &[JournalRecord]) -> [u8; SECTOR_BYTES_USIZE] {
    let mut body = Vec::with_capacity(SECTOR_BYTES_USIZE);
    for record in records {
        record.encode_into(&mut body);
    }
    assert!(body.len() <= format.capacity(), "packed records overflow a journal sector");
    let mut sector = [0u8; SECTOR_BYTES_USIZE];
    let start = format.records_start();
    sector[start..start + body.len()].copy_from_slice(&body);
    if let SectorFormat::Hardened { epoch } = format {
        sector[0..4].copy_from_slice(&HARDENED_SECTOR_MAGIC.to_le_bytes());
        sector[8..16].copy_from_slice(&epoch.to_le_bytes());
        sector[16..24].copy_from_slice(&sequence.to_le_bytes());
        let crc = crc32c::crc32c(&sector[8..]);
        sector[4..8].copy_from_slice(&crc.to_le_bytes());
    }
    sector
}

/// What one journal sector holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodedSector {
    /// A hardened sector with a valid CRC.
    Hardened {
        /// Its epoch.
        epoch: u64,
        /// Its append sequence number.
        sequence: u64,
        /// Its records.
        records: Vec<JournalRecord>,
    },
    /// A hardened sector whose CRC fails (torn or damaged).
    Torn,
    /// Parsed as v1: whatever records precede the terminator or the first unknown word.
    V1 {
        /// The records (possibly empty).
        records: Vec<JournalRecord>,
        /// True if parsing stopped at an unknown record type rather than a terminator or the end.
        stopped_at_garbage: bool,
    },
}

fn parse_records(bytes: &[u8]) -> (Vec<JournalRecord>, bool) {
    let mut records = Vec::new();
    let mut at = 0usize;
    let word = |at: usize| bytes.get(at..at + 4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")));
    while let Some(kind) = word(at) {
        match kind {
            0 => return (records, false),
            BITMAP_RECORD => {
                let Some(body) = bytes.get(at + 4..at + 16) else { return (records, true) };
                let sectors = u32::from_le_bytes(body[0..4].try_into().expect("4 bytes"));
                let first_sector = u64::from_le_bytes(body[4..12].try_into().expect("8 bytes"));
                records.push(JournalRecord::Bitmap { first_sector, sectors });
                at += 16;
            }
            TABLE_RECORD => {
                let (Some(first_chunk), Some(count)) = (word(at + 4), word(at + 8)) else { return (records, true) };
                let end = at + 12 + 4 * count as usize;
                let Some(body) = bytes.get(at + 12..end) else { return (records, true) };
                let entries =
                    body.chunks_exact(4).map(|e| u32::from_le_bytes(e.try_into().expect("4 bytes"))).collect();
                records.push(JournalRecord::Table { first_chunk, entries });
                at = end;
            }
            _ => return (records, true),
        }
    }
    (records, false)
}

/// Decodes a journal sector: hardened if it starts with the hardened magic, v1 otherwise.
pub fn decode_sector(sector: &[u8]) -> DecodedSector {
    assert_eq!(sector.len(), SECTOR_BYTES_USIZE, "journal sectors are 512 bytes");
    if u32::from_le_bytes(sector[0..4].try_into().expect("4 bytes")) == HARDENED_SECTOR_MAGIC {
        let crc = u32::from_le_bytes(sector[4..8].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&sector[8..]) {
            return DecodedSector::Torn;
        }
        let (records, garbage) = parse_records(&sector[HARDENED_RECORDS_START..]);
        if garbage {
            // A valid CRC over garbage: written that way. Treat as damaged, never apply.
            return DecodedSector::Torn;
        }
        return DecodedSector::Hardened {
            epoch: u64::from_le_bytes(sector[8..16].try_into().expect("8 bytes")),
            sequence: u64::from_le_bytes(sector[16..24].try_into().expect("8 bytes")),
            records,
        };
    }
    let (records, stopped_at_garbage) = parse_records(sector);
    DecodedSector::V1 { records, stopped_at_garbage }
}

/// Packs the metadata change of one guest write into sectors, keeping each table run in the same
/// sector as the bitmap record for the guest sectors those chunks hold, so a sector-granular tear
/// never makes a bitmap bit durable without its chunk mapping (`fvd-v1.md` §2.2, mixed records).
///
/// `bitmap`: the guest sector range `(first, count)` whose blocks enter the image, if any.
/// `table`: `(first_chunk, entries)` for the chunks the write touches, if compact.
/// `sectors_per_chunk`: chunk size in sectors (compact only).
pub fn pack_sectors(
    format: SectorFormat,
    bitmap: Option<(u64, u64)>,
    table: Option<(u32, &[u32])>,
    sectors_per_chunk: u64,
) -> Result<Vec<Vec<JournalRecord>>, FvdError> {
    let capacity = format.capacity();
    let mut sectors = Vec::new();
    match table {
        None => {
            let (first, count) = bitmap.expect("a journal write changes the bitmap or the table");
            // A bitmap record covers up to u32::MAX sectors; split longer ranges.
            let per_record = u64::from(u32::MAX);
            let records: Vec<JournalRecord> = (0..count.div_ceil(per_record))
                .map(|i| JournalRecord::Bitmap {
                    first_sector: first + i * per_record,
                    sectors: (count - i * per_record).min(per_record) as u32,
                })
                .collect();
            for chunk in records.chunks(capacity / 16) {
                sectors.push(chunk.to_vec());
            }
        }
        Some((first_chunk, entries)) => {
            let bitmap_bytes = if bitmap.is_some() { 16 } else { 0 };
            let per_sector = (capacity - 12 - bitmap_bytes) / 4;
            for (i, run) in entries.chunks(per_sector).enumerate() {
                let run_first = u64::from(first_chunk) + (i * per_sector) as u64;
                let mut records = vec![JournalRecord::Table { first_chunk: run_first as u32, entries: run.to_vec() }];
                if let Some((first, count)) = bitmap {
                    let run_start = run_first * sectors_per_chunk;
                    let run_end = (run_first + run.len() as u64) * sectors_per_chunk;
                    let from = first.max(run_start);
                    let to = (first + count).min(run_end);
                    if from < to {
                        records.push(JournalRecord::Bitmap { first_sector: from, sectors: (to - from) as u32 });
                    }
                }
                sectors.push(records);
            }
        }
    }
    for records in &sectors {
        let used: usize = records.iter().map(JournalRecord::encoded_len).sum();
        debug_assert!(used <= capacity, "packed {used} bytes into a {capacity}-byte sector");
    }
    Ok(sectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_sectors_round_trip_and_stop_at_the_terminator() {
        let records = vec![
            JournalRecord::Table { first_chunk: 3, entries: vec![7, 8 | 0x8000_0000] },
            JournalRecord::Bitmap { first_sector: 100, sectors: 8 },
        ];
        let sector = encode_sector(SectorFormat::V1, 0, &records);
        assert_eq!(&sector[0..4], &TABLE_RECORD.to_le_bytes(), "v1 records start at byte 0");
        assert_eq!(decode_sector(&sector), DecodedSector::V1 { records: records.clone(), stopped_at_garbage: false });
        let mut garbage = sector;
        garbage[36..40].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        assert_eq!(decode_sector(&garbage), DecodedSector::V1 { records, stopped_at_garbage: true });
    }

    #[test]
    fn hardened_sectors_carry_epoch_and_detect_any_tear() {
        let records = vec![JournalRecord::Bitmap { first_sector: 5, sectors: 3 }];
        let sector = encode_sector(SectorFormat::Hardened { epoch: 9 }, 77, &records);
        assert_eq!(decode_sector(&sector), DecodedSector::Hardened { epoch: 9, sequence: 77, records });
        for byte in [5usize, 9, 17, 30, 511] {
            let mut torn = sector;
            torn[byte] ^= 0x40;
            assert_eq!(decode_sector(&torn), DecodedSector::Torn, "flipping byte {byte}");
        }
    }

    #[test]
    fn mixed_packing_keeps_each_table_run_with_its_bitmap_range() {
        let entries: Vec<u32> = (0..300).collect();
        let format = SectorFormat::Hardened { epoch: 1 };
        let sectors = pack_sectors(format, Some((10, 300 * 8 - 20)), Some((0, &entries)), 8).unwrap();
        let per_sector = (format.capacity() - 12 - 16) / 4;
        assert_eq!(sectors.len(), 300usize.div_ceil(per_sector));
        let mut covered = 0u64;
        for records in &sectors {
            let JournalRecord::Table { first_chunk, entries } = &records[0] else { panic!("table first") };
            let JournalRecord::Bitmap { first_sector, sectors } = records[1] else { panic!("bitmap second") };
            assert!(first_sector >= u64::from(*first_chunk) * 8);
            assert!(first_sector + u64::from(sectors) <= (u64::from(*first_chunk) + entries.len() as u64) * 8);
            covered += u64::from(sectors);
            let encoded = encode_sector(format, 0, records);
            assert!(matches!(decode_sector(&encoded), DecodedSector::Hardened { .. }));
        }
        assert_eq!(covered, 300 * 8 - 20, "the bitmap ranges tile the guest range");
        let bitmap_only = pack_sectors(SectorFormat::V1, Some((0, 16)), None, 0).unwrap();
        assert_eq!(bitmap_only, vec![vec![JournalRecord::Bitmap { first_sector: 0, sectors: 16 }]]);
    }
}
