//! Read-only content sources: what the never-written bytes of a device read as.
//!
//! [`ProceduralContent`] makes a base image of any size from a seed without storing it: the bytes
//! of sector *s* are a function of the seed and *s*. Each sector starts with a recognisable
//! stamp (magic, sector number, seed) so a misplaced base sector names where it came from.

/// A read-only source of bytes by offset.
pub trait ContentSource {
    /// Fills `buf` with the bytes at `offset_bytes..offset_bytes + buf.len()`.
    fn fill(&self, offset_bytes: u64, buf: &mut [u8]);
}

/// The first 8 bytes of every procedural base sector (little-endian), `"BASE-SEC"` in ASCII.
pub const BASE_SECTOR_MAGIC: u64 = u64::from_le_bytes(*b"BASE-SEC");

/// Procedural content: sector `s` holds `[BASE_SECTOR_MAGIC, s, seed, mix(seed, s, 3), …]` as
/// little-endian u64 words (64 words per 512-byte sector).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProceduralContent {
    /// The content seed (usually drawn from the run's `workload` stream).
    pub seed: u64,
}

fn mix(seed: u64, sector: u64, word: u64) -> u64 {
    let mut z = seed ^ sector.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ word.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl ProceduralContent {
    /// The 8-byte word `word` (0..64) of sector `sector`.
    pub fn word(&self, sector: u64, word: u64) -> u64 {
        match word {
            0 => BASE_SECTOR_MAGIC,
            1 => sector,
            2 => self.seed,
            _ => mix(self.seed, sector, word),
        }
    }

    /// The whole 512-byte sector `sector`.
    pub fn sector(&self, sector: u64) -> [u8; 512] {
        let mut out = [0u8; 512];
        self.fill(sector * 512, &mut out);
        out
    }
}

impl ContentSource for ProceduralContent {
    fn fill(&self, offset_bytes: u64, buf: &mut [u8]) {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset_bytes + done as u64;
            let word_index = at / 8;
            let in_word = (at % 8) as usize;
            let bytes = self.word(word_index / 64, word_index % 64).to_le_bytes();
            let n = (8 - in_word).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[in_word..in_word + n]);
            done += n;
        }
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
    }
}
