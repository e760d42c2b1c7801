//! Content the world can regenerate: what never-written bytes read as, and the stamped sectors
//! workloads write.
//!
//! [`ProceduralContent`] makes a base image of any size from a seed without storing it: the bytes
//! of sector *s* are a function of the seed and *s*. Each sector starts with a recognisable
//! stamp (magic, sector number, seed) so a misplaced base sector names where it came from.
//!
//! [`fill_stamp`] makes the sector a workload writes: it names the write, the sector it was meant
//! for and the run's seed (qemu-test's idea, `fvd-v1.md` §5.3, with the sector number added).
//!
//! Both are functions of a few numbers, so the simulated disk keeps such sectors as a
//! [`super::page::Symbol`] instead of 512 bytes: memory grows with distinct *foreign* data
//! written, not with copies of the base or stamped writes.

pub use fvd_contract::SECTOR_BYTES_USIZE;

/// A read-only source of bytes by offset.
pub trait ContentSource {
    /// Fills `buf` with the bytes at `offset_bytes..offset_bytes + buf.len()`.
    fn fill(&self, offset_bytes: u64, buf: &mut [u8]);

    /// The symbol of sector `sector`, if the source's sectors are regenerable (procedural). A
    /// source that gives one gives one for every sector, and sector `s + i` is symbol `s`
    /// advanced by `i`.
    fn symbol(&self, _sector: u64) -> Option<super::page::Symbol> {
        None
    }
}

/// The first 8 bytes of every procedural base sector (little-endian), `"BASE-SEC"` in ASCII.
pub const BASE_SECTOR_MAGIC: u64 = u64::from_le_bytes(*b"BASE-SEC");

/// The stamp magic at bytes 16..24 of a stamped sector.
pub const STAMP_MAGIC: &[u8; 8] = b"FVDSIMv1";

/// Procedural content: sector `s` holds `[BASE_SECTOR_MAGIC, s, seed, mix(seed, s, 3), …]` as
/// little-endian u64 words (64 words per 512-byte sector).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProceduralContent {
    /// The content seed (usually drawn from the run's `workload` stream).
    pub seed: u64,
}

#[inline]
fn finalise(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The part of a base word that depends on the seed and the sector.
#[inline]
fn base_key(seed: u64, sector: u64) -> u64 {
    seed ^ sector.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[inline]
fn mix(seed: u64, sector: u64, word: u64) -> u64 {
    finalise(base_key(seed, sector) ^ word.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
}

/// Word `word` (0..64) of procedural sector `sector` under `seed`.
#[inline]
pub fn base_word(seed: u64, sector: u64, word: u64) -> u64 {
    match word {
        0 => BASE_SECTOR_MAGIC,
        1 => sector,
        2 => seed,
        _ => mix(seed, sector, word),
    }
}

fn stamp_mix(seed: u64, write_id: u64, sector: u64, word: u64) -> u64 {
    let mut z = seed
        ^ write_id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ sector.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ word.rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Word `word` (0..64) of the stamp of write `write_id` for sector `sector` under `seed`:
/// `write_id`, `sector`, `"FVDSIMv1"`, `seed`, then 60 words of a mix of all four.
#[inline]
pub fn stamp_word(seed: u64, write_id: u64, sector: u64, word: u64) -> u64 {
    match word {
        0 => write_id,
        1 => sector,
        2 => u64::from_le_bytes(*STAMP_MAGIC),
        3 => seed,
        _ => stamp_mix(seed, write_id, sector, word),
    }
}

#[inline]
fn fill_words(out: &mut [u8], word: impl Fn(u64) -> u64) {
    debug_assert_eq!(out.len(), SECTOR_BYTES_USIZE);
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(i as u64).to_le_bytes());
    }
}

#[inline]
fn equals_words(bytes: &[u8], word: impl Fn(u64) -> u64) -> bool {
    debug_assert_eq!(bytes.len(), SECTOR_BYTES_USIZE);
    bytes.chunks_exact(8).enumerate().all(|(i, chunk)| chunk == word(i as u64).to_le_bytes())
}

/// Fills `out` (512 bytes) with procedural sector `sector` under `seed` (the hot path of every
/// base read: the header words, then a branch-free loop the compiler can unroll).
pub fn fill_base_sector(seed: u64, sector: u64, out: &mut [u8]) {
    assert_eq!(out.len(), SECTOR_BYTES_USIZE, "one sector");
    out[0..8].copy_from_slice(&BASE_SECTOR_MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&sector.to_le_bytes());
    out[16..24].copy_from_slice(&seed.to_le_bytes());
    let key = base_key(seed, sector);
    for (i, chunk) in out[24..].chunks_exact_mut(8).enumerate() {
        let word = i as u64 + 3;
        chunk.copy_from_slice(&finalise(key ^ word.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)).to_le_bytes());
    }
}

/// True if `bytes` (512) are exactly procedural sector `sector` under `seed`.
pub fn is_base_sector(seed: u64, sector: u64, bytes: &[u8]) -> bool {
    assert_eq!(bytes.len(), SECTOR_BYTES_USIZE, "one sector");
    let key = base_key(seed, sector);
    bytes[0..8] == BASE_SECTOR_MAGIC.to_le_bytes()
        && bytes[8..16] == sector.to_le_bytes()
        && bytes[16..24] == seed.to_le_bytes()
        && bytes[24..].chunks_exact(8).enumerate().fold(true, |same, (i, chunk)| {
            let word = i as u64 + 3;
            same & (chunk == finalise(key ^ word.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)).to_le_bytes())
        })
}

/// Fills `out` (a whole number of sectors) with the stamps of write `write_id` starting at
/// sector `first_sector` under `seed`. Panics if `out` is not whole sectors (an invariant of
/// every caller: workloads write whole sectors).
pub fn fill_stamp(seed: u64, write_id: u64, first_sector: u64, out: &mut [u8]) {
    assert!(out.len().is_multiple_of(SECTOR_BYTES_USIZE), "stamps fill whole sectors");
    for (i, sector_bytes) in out.chunks_exact_mut(SECTOR_BYTES_USIZE).enumerate() {
        let sector = first_sector + i as u64;
        fill_words(sector_bytes, |w| stamp_word(seed, write_id, sector, w));
    }
}

/// True if `bytes` (512) are exactly the stamp of `write_id` for `sector` under `seed`.
pub fn is_stamp(seed: u64, write_id: u64, sector: u64, bytes: &[u8]) -> bool {
    equals_words(bytes, |w| stamp_word(seed, write_id, sector, w))
}

impl ProceduralContent {
    /// The 8-byte word `word` (0..64) of sector `sector`.
    pub fn word(&self, sector: u64, word: u64) -> u64 {
        base_word(self.seed, sector, word)
    }

    /// The whole 512-byte sector `sector`.
    pub fn sector(&self, sector: u64) -> [u8; 512] {
        let mut out = [0u8; 512];
        fill_base_sector(self.seed, sector, &mut out);
        out
    }
}

impl ContentSource for ProceduralContent {
    fn fill(&self, offset_bytes: u64, buf: &mut [u8]) {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset_bytes + done as u64;
            let sector = at / SECTOR_BYTES_USIZE as u64;
            let in_sector = (at % SECTOR_BYTES_USIZE as u64) as usize;
            let n = (SECTOR_BYTES_USIZE - in_sector).min(buf.len() - done);
            if n == SECTOR_BYTES_USIZE {
                // Whole sectors: generated in place (the common, fast case).
                fill_base_sector(self.seed, sector, &mut buf[done..done + SECTOR_BYTES_USIZE]);
            } else {
                let whole = self.sector(sector);
                buf[done..done + n].copy_from_slice(&whole[in_sector..in_sector + n]);
            }
            done += n;
        }
    }

    fn symbol(&self, sector: u64) -> Option<super::page::Symbol> {
        Some(super::page::Symbol::base(self.seed, sector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procedural_sectors_are_stamped_and_position_dependent() {
        let content = ProceduralContent { seed: 42 };
        let s7 = content.sector(7);
        assert_eq!(u64::from_le_bytes(s7[0..8].try_into().unwrap()), BASE_SECTOR_MAGIC);
        assert_eq!(u64::from_le_bytes(s7[8..16].try_into().unwrap()), 7);
        assert_ne!(content.sector(8)[16..], s7[16..]);
        assert_ne!(ProceduralContent { seed: 43 }.sector(7)[24..], s7[24..]);
        // Unaligned fills agree with whole sectors.
        let mut piece = [0u8; 100];
        content.fill(7 * 512 + 13, &mut piece);
        assert_eq!(&piece[..], &s7[13..113]);
        let mut two = [0u8; 1024 + 20];
        content.fill(7 * 512, &mut two);
        assert_eq!(&two[..512], &s7[..]);
        assert_eq!(&two[512..1024], &content.sector(8)[..]);
        assert_eq!(&two[1024..], &content.sector(9)[..20]);
        assert!(is_base_sector(42, 7, &s7));
        assert!(!is_base_sector(42, 8, &s7));
    }

    #[test]
    fn stamps_name_write_sector_and_seed() {
        let mut out = [0u8; 1024];
        fill_stamp(9, 42, 100, &mut out);
        assert_eq!(u64::from_le_bytes(out[0..8].try_into().unwrap()), 42);
        assert_eq!(u64::from_le_bytes(out[512 + 8..512 + 16].try_into().unwrap()), 101);
        assert_eq!(&out[16..24], STAMP_MAGIC);
        assert!(is_stamp(9, 42, 100, &out[..512]));
        assert!(is_stamp(9, 42, 101, &out[512..]));
        assert!(!is_stamp(9, 43, 100, &out[..512]));
    }
}
