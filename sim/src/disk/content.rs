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
    /// Fills `buf` with the bytes at `offset_bytes..offset_bytes + buf.len()`: every byte of it
    /// (a disk's reads stage their bytes in reused buffers and rely on it).
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

/// The stamp magic at bytes 16..24 of a stamped sector (v2: body words `key + word * step`; v1
/// mixed every word separately, which made stamps slow to generate and to recognise).
pub const STAMP_MAGIC: &[u8; 8] = b"FVDSIMv2";

/// Procedural content: sector `s` holds `[BASE_SECTOR_MAGIC, s, seed]` then 61 body words
/// (`key + word * step`, the key a mix of seed and `s`) as little-endian u64 words (64 words per
/// 512-byte sector).
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

/// The step between consecutive body words (the golden-ratio constant, odd: 64 steps never
/// repeat a word).
const BODY_STEP: u64 = 0x9e37_79b9_7f4a_7c15;

/// Body word `word` of a sector whose body key is `key`: `key + word * BODY_STEP`. The key is a
/// full mix of everything the sector names, so bodies of different sectors, writes and seeds
/// differ in every word (whole sectors are generated and compared with [`BODY_OFFSETS`]).
#[inline]
fn body_word(key: u64, word: u64) -> u64 {
    key.wrapping_add(word.wrapping_mul(BODY_STEP))
}

/// The body key of procedural sector `sector` under `seed`.
#[inline]
fn base_key(seed: u64, sector: u64) -> u64 {
    finalise(seed ^ sector.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) ^ BASE_SECTOR_MAGIC)
}

/// The body key of the stamp of `write_id` for `sector` under `seed`.
#[inline]
fn stamp_key(seed: u64, write_id: u64, sector: u64) -> u64 {
    finalise(finalise(seed ^ write_id.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ sector.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
}

/// Word `word` (0..64) of procedural sector `sector` under `seed`.
#[inline]
pub fn base_word(seed: u64, sector: u64, word: u64) -> u64 {
    base_header(seed, sector).get(word as usize).copied().unwrap_or_else(|| body_word(base_key(seed, sector), word))
}

/// The first words of procedural sector `sector` under `seed`: magic, sector, seed.
#[inline]
fn base_header(seed: u64, sector: u64) -> [u64; 3] {
    [BASE_SECTOR_MAGIC, sector, seed]
}

/// Word `word` (0..64) of the stamp of write `write_id` for sector `sector` under `seed`:
/// `write_id`, `sector`, `"FVDSIMv2"`, `seed`, then 60 body words (`key + word * step`, the key
/// a mix of all four).
#[inline]
pub fn stamp_word(seed: u64, write_id: u64, sector: u64, word: u64) -> u64 {
    stamp_header(seed, write_id, sector)
        .get(word as usize)
        .copied()
        .unwrap_or_else(|| body_word(stamp_key(seed, write_id, sector), word))
}

/// The first words of the stamp of `write_id` for `sector` under `seed`.
#[inline]
fn stamp_header(seed: u64, write_id: u64, sector: u64) -> [u64; 4] {
    [write_id, sector, u64::from_le_bytes(*STAMP_MAGIC), seed]
}

/// `word * BODY_STEP` for every word of a sector: body word `i` is `key + BODY_OFFSETS[i]`, so
/// generating and recognising a body are element-wise passes over two arrays, which the
/// compiler vectorises (these are the simulator's hottest loops: every sector a workload writes
/// is generated, and every sector a disk receives is recognised).
const BODY_OFFSETS: [u64; SECTOR_BYTES_USIZE / 8] = {
    let mut offsets = [0u64; SECTOR_BYTES_USIZE / 8];
    let mut i = 0;
    while i < offsets.len() {
        offsets[i] = (i as u64).wrapping_mul(BODY_STEP);
        i += 1;
    }
    offsets
};

/// Writes `header` into the first words of `out` (one sector) and the body of `key` into the
/// rest.
#[inline]
fn fill_sector<const N: usize>(out: &mut [u8], header: [u64; N], key: u64) {
    let out: &mut [u8; SECTOR_BYTES_USIZE] = out.try_into().expect("one sector");
    let (words, _) = out.as_chunks_mut::<8>();
    for (chunk, offset) in words.iter_mut().zip(BODY_OFFSETS) {
        *chunk = key.wrapping_add(offset).to_le_bytes();
    }
    for (chunk, word) in words.iter_mut().zip(header) {
        *chunk = word.to_le_bytes();
    }
}

/// True if `bytes` (one sector) start with `header` and carry the body of `key` in every other
/// word: every word compared, in a branch-free reduction.
#[inline]
fn sector_matches<const N: usize>(bytes: &[u8], header: [u64; N], key: u64) -> bool {
    let bytes: &[u8; SECTOR_BYTES_USIZE] = bytes.try_into().expect("one sector");
    let (words, _) = bytes.as_chunks::<8>();
    let mut diff = 0u64;
    for (chunk, offset) in words[N..].iter().zip(&BODY_OFFSETS[N..]) {
        diff |= u64::from_le_bytes(*chunk).wrapping_sub(key) ^ offset;
    }
    for (chunk, expected) in words.iter().zip(header) {
        diff |= u64::from_le_bytes(*chunk) ^ expected;
    }
    diff == 0
}

/// True if `bytes` (one sector) are all zeros: eight bytes at a time, without an early exit
/// (every sector held as bytes is asked when its page is hashed or written).
pub fn is_zero_sector(bytes: &[u8]) -> bool {
    let bytes: &[u8; SECTOR_BYTES_USIZE] = bytes.try_into().expect("one sector");
    bytes.as_chunks::<8>().0.iter().fold(0, |any, word| any | u64::from_le_bytes(*word)) == 0
}

/// Fills `out` (512 bytes) with procedural sector `sector` under `seed` (the hot path of every
/// base read).
pub fn fill_base_sector(seed: u64, sector: u64, out: &mut [u8]) {
    fill_sector(out, base_header(seed, sector), base_key(seed, sector));
}

/// True if `bytes` (512) are exactly procedural sector `sector` under `seed`.
pub fn is_base_sector(seed: u64, sector: u64, bytes: &[u8]) -> bool {
    sector_matches(bytes, base_header(seed, sector), base_key(seed, sector))
}

/// Fills `out` (a whole number of sectors) with the stamps of write `write_id` starting at
/// sector `first_sector` under `seed`. Panics if `out` is not whole sectors (an invariant of
/// every caller: workloads write whole sectors).
pub fn fill_stamp(seed: u64, write_id: u64, first_sector: u64, out: &mut [u8]) {
    assert!(out.len().is_multiple_of(SECTOR_BYTES_USIZE), "stamps fill whole sectors");
    for (i, sector_bytes) in out.chunks_exact_mut(SECTOR_BYTES_USIZE).enumerate() {
        let sector = first_sector + i as u64;
        fill_sector(sector_bytes, stamp_header(seed, write_id, sector), stamp_key(seed, write_id, sector));
    }
}

/// True if `bytes` (512) are exactly the stamp of `write_id` for `sector` under `seed`.
pub fn is_stamp(seed: u64, write_id: u64, sector: u64, bytes: &[u8]) -> bool {
    sector_matches(bytes, stamp_header(seed, write_id, sector), stamp_key(seed, write_id, sector))
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

    #[test]
    fn recognition_compares_every_word_of_the_body() {
        let mut a = [0u8; 512];
        fill_stamp(9, 42, 100, &mut a);
        // Every single word changed, anywhere, is seen.
        for word in 0..64 {
            let mut changed = a;
            changed[word * 8 + 3] ^= 0x10;
            assert!(!is_stamp(9, 42, 100, &changed), "word {word}");
        }
        // A torn mix of two writes to the same sector is neither (their bodies differ in every
        // word, not only in the header).
        let mut b = [0u8; 512];
        fill_stamp(9, 43, 100, &mut b);
        assert!((4..64).all(|w| stamp_word(9, 42, 100, w) != stamp_word(9, 43, 100, w)));
        let mut torn = a;
        torn[256..].copy_from_slice(&b[256..]);
        assert!(!is_stamp(9, 42, 100, &torn) && !is_stamp(9, 43, 100, &torn));
        // Base sectors likewise.
        let mut base = [0u8; 512];
        fill_base_sector(7, 5, &mut base);
        assert!(is_base_sector(7, 5, &base));
        for word in 0..64 {
            let mut changed = base;
            changed[word * 8] ^= 1;
            assert!(!is_base_sector(7, 5, &changed), "word {word}");
        }
        assert_eq!(
            (0..64).map(|w| base_word(7, 5, w).to_le_bytes()).collect::<Vec<_>>().concat(),
            base.to_vec(),
            "base_word agrees with fill_base_sector"
        );
        assert_eq!(
            (0..64).map(|w| stamp_word(9, 42, 100, w).to_le_bytes()).collect::<Vec<_>>().concat(),
            a.to_vec(),
            "stamp_word agrees with fill_stamp"
        );
    }
}
