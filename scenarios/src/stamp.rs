//! Stamped sectors: every sector a workload writes names the write, the sector it was meant for
//! and the run's seed, so a wrong sector says which operation put it there (qemu-test's idea,
//! `fvd-v1.md` §5.3, with the sector number added).
//!
//! Layout of a stamped 512-byte sector (little-endian): `u64 write_id`, `u64 sector`,
//! `8 bytes "FVDSIMv2"`, `u64 seed`, then 60 body words `key + i * step` (the key a full mix of
//! seed, write and sector; see `fvd_sim::disk::content`).

use fvd_sim::ProceduralContent;
use fvd_sim::disk::content::{BASE_SECTOR_MAGIC, is_base_sector, is_stamp, is_zero_sector};

pub use fvd_engine::SECTOR_BYTES;
pub use fvd_sim::disk::content::STAMP_MAGIC;

/// Fills `out` (a whole number of sectors) with the stamps of write `write_id` starting at
/// sector `first_sector`. The generator lives in the simulator, which keeps stamped sectors as
/// symbols (`fvd_sim::disk::page`).
pub fn stamp(seed: u64, write_id: u64, first_sector: u64, out: &mut [u8]) {
    fvd_sim::disk::content::fill_stamp(seed, write_id, first_sector, out);
}

/// What a sector holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectorValue {
    /// Never written: the base image's bytes for this sector, or zeros beyond the base.
    Original,
    /// A whole, intact stamp of write `write_id` for sector `sector` (which may differ from the
    /// sector it was read from: misplaced data).
    Stamped {
        /// The write that produced it.
        write_id: u64,
        /// The sector the write meant it for.
        sector: u64,
    },
    /// The base image's bytes of another sector.
    OtherBaseSector {
        /// The base sector it came from.
        sector: u64,
    },
    /// All zeros where the base image has data (read from never-written image storage).
    Zeros,
    /// Anything else: torn or foreign bytes.
    Garbage,
}

impl std::fmt::Display for SectorValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SectorValue::Original => f.write_str("its original content"),
            SectorValue::Stamped { write_id, sector } => write!(f, "write #{write_id}'s data for sector {sector}"),
            SectorValue::OtherBaseSector { sector } => write!(f, "base image sector {sector}"),
            SectorValue::Zeros => f.write_str("zeros where the base image has data"),
            SectorValue::Garbage => f.write_str("garbage (neither original, stamped nor base data)"),
        }
    }
}

/// The original content of `sector`: base bytes inside the base image, zeros beyond.
pub fn original(sector: u64, base: Option<(&ProceduralContent, u64)>, out: &mut [u8]) {
    match base {
        Some((content, base_sectors)) if sector < base_sectors => out.copy_from_slice(&content.sector(sector)),
        _ => out.fill(0),
    }
}

/// Decodes the 512 bytes read from `sector`. `base` is the base image content and its length in
/// sectors, if any.
pub fn decode(seed: u64, sector: u64, bytes: &[u8], base: Option<(&ProceduralContent, u64)>) -> SectorValue {
    // A stamp first: most sectors judged hold one, and checking it needs no original. Every
    // test compares the bytes with what the numbers regenerate, without building the sector.
    let stamped = &bytes[16..24] == STAMP_MAGIC;
    if stamped {
        let write_id = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
        let meant = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if is_stamp(seed, write_id, meant, bytes) {
            return SectorValue::Stamped { write_id, sector: meant };
        }
    }
    let inside_base = base.filter(|(_, base_sectors)| sector < *base_sectors);
    let original = match inside_base {
        Some((content, _)) => is_base_sector(content.seed, sector, bytes),
        None => is_zero_sector(bytes),
    };
    if original {
        return SectorValue::Original;
    }
    if stamped {
        return SectorValue::Garbage;
    }
    if u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")) == BASE_SECTOR_MAGIC
        && let Some((content, _)) = base
    {
        let other = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if is_base_sector(content.seed, other, bytes) {
            return SectorValue::OtherBaseSector { sector: other };
        }
    }
    if is_zero_sector(bytes) {
        return SectorValue::Zeros;
    }
    SectorValue::Garbage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_decode_and_name_misplaced_or_torn_data() {
        let base = ProceduralContent { seed: 5 };
        let mut data = vec![0u8; 1024];
        stamp(9, 42, 100, &mut data);
        assert_eq!(
            decode(9, 100, &data[..512], Some((&base, 1000))),
            SectorValue::Stamped { write_id: 42, sector: 100 }
        );
        assert_eq!(decode(9, 7, &data[512..], Some((&base, 1000))), SectorValue::Stamped { write_id: 42, sector: 101 });
        let mut torn = data[..512].to_vec();
        torn[400] ^= 1;
        assert_eq!(decode(9, 100, &torn, Some((&base, 1000))), SectorValue::Garbage);
        assert_eq!(decode(9, 100, &base.sector(100), Some((&base, 1000))), SectorValue::Original);
        assert_eq!(decode(9, 100, &base.sector(3), Some((&base, 1000))), SectorValue::OtherBaseSector { sector: 3 });
        assert_eq!(
            decode(9, 100, &[0u8; 512], Some((&base, 1000))),
            SectorValue::Zeros,
            "zeros where the base has data are wrong"
        );
        assert_eq!(
            decode(9, 2000, &[0u8; 512], Some((&base, 1000))),
            SectorValue::Original,
            "beyond the base, zeros are original"
        );
    }
}
