//! The bitmap: one bit per block of the base image, LSB first (block *n* is bit `n % 8` of byte
//! `n / 8`). A set bit means the block's data lives in the FVD image (`fvd-v1.md` §1.3).

use crate::error::FvdError;

/// An in-memory bitmap over `blocks` blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    bytes: Vec<u8>,
    blocks: u64,
}

impl Bitmap {
    /// All zeros (every block in the base image).
    pub fn new(blocks: u64) -> Bitmap {
        Bitmap { bytes: vec![0; blocks.div_ceil(8) as usize], blocks }
    }

    /// Decodes the on-disk bitmap; bits beyond `blocks` must be zero.
    pub fn decode(on_disk: &[u8], blocks: u64) -> Result<Bitmap, FvdError> {
        let needed = blocks.div_ceil(8) as usize;
        if on_disk.len() < needed {
            return Err(FvdError::corrupt(
                "bitmap",
                format!("{} bytes", on_disk.len()),
                format!("must hold {blocks} bits"),
            ));
        }
        let bitmap = Bitmap { bytes: on_disk[..needed].to_vec(), blocks };
        let stray = (blocks..needed as u64 * 8)
            .find(|&b| bitmap.bytes[(b / 8) as usize] & (1 << (b % 8)) != 0)
            .or_else(|| first_nonzero(&on_disk[needed..]).map(|i| (needed + i) as u64 * 8));
        if let Some(block) = stray {
            return Err(FvdError::corrupt(
                format!("bitmap bit {block}"),
                1,
                format!("lies beyond the base image ({blocks} blocks)"),
            ));
        }
        Ok(bitmap)
    }

    /// The bits of the first `blocks` blocks of `on_disk` (bits beyond are ignored; see
    /// [`Bitmap::stray_bits`] to count them). Panics if `on_disk` holds fewer than `blocks` bits
    /// (callers size it from the layout).
    pub fn from_bits(on_disk: &[u8], blocks: u64) -> Bitmap {
        let needed = blocks.div_ceil(8) as usize;
        assert!(on_disk.len() >= needed, "the bitmap region holds every block's bit");
        let mut bytes = on_disk[..needed].to_vec();
        if !blocks.is_multiple_of(8)
            && let Some(last) = bytes.last_mut()
        {
            *last &= (1u8 << (blocks % 8)) - 1;
        }
        Bitmap { bytes, blocks }
    }

    /// Bits set in `on_disk` at or beyond bit `blocks`.
    pub fn stray_bits(on_disk: &[u8], blocks: u64) -> u64 {
        let needed = blocks.div_ceil(8) as usize;
        let partial = if blocks.is_multiple_of(8) || needed == 0 || on_disk.len() < needed {
            0
        } else {
            u64::from((on_disk[needed - 1] & !((1u8 << (blocks % 8)) - 1)).count_ones())
        };
        // Eight bytes at a time (the padding is most of a large bitmap's sectors).
        let (words, tail) = on_disk.get(needed..).unwrap_or(&[]).as_chunks::<8>();
        partial
            + words.iter().map(|w| u64::from(u64::from_le_bytes(*w).count_ones())).sum::<u64>()
            + tail.iter().map(|b| u64::from(b.count_ones())).sum::<u64>()
    }

    /// The set blocks, ascending (skipping zero bytes: cheap on a sparse bitmap).
    pub fn set_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .flat_map(|(i, &b)| (0..8u64).filter(move |bit| b & (1 << bit) != 0).map(move |bit| i as u64 * 8 + bit))
    }

    /// Encodes into `size_bytes` bytes (the padded on-disk size).
    pub fn encode(&self, size_bytes: u64) -> Vec<u8> {
        let mut out = self.bytes.clone();
        out.resize(size_bytes as usize, 0);
        out
    }

    /// Blocks covered.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// True if `block` is in the image. Blocks beyond the base count as in the image.
    pub fn get(&self, block: u64) -> bool {
        block >= self.blocks || self.bytes[(block / 8) as usize] & (1 << (block % 8)) != 0
    }

    /// Sets blocks `first..end` (clipped to the bitmap).
    pub fn set_range(&mut self, first: u64, end: u64) {
        for block in first..end.min(self.blocks) {
            self.bytes[(block / 8) as usize] |= 1 << (block % 8);
        }
    }

    /// Clears one block (repair only: bits are otherwise never cleared).
    pub fn clear(&mut self, block: u64) {
        if block < self.blocks {
            self.bytes[(block / 8) as usize] &= !(1 << (block % 8));
        }
    }

    /// True if every block in `first..end` is in the image.
    pub fn all_set(&self, first: u64, end: u64) -> bool {
        (first..end.min(self.blocks)).all(|b| self.get(b))
    }

    /// Sets every block (prefetch finished).
    pub fn set_all(&mut self) {
        self.set_range(0, self.blocks);
    }

    /// Number of set blocks.
    pub fn count_set(&self) -> u64 {
        self.bytes.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// Sets every block set in `other` (same size).
    pub fn union_with(&mut self, other: &Bitmap) {
        assert_eq!(self.blocks, other.blocks, "bitmaps of one image have one size");
        for (a, b) in self.bytes.iter_mut().zip(&other.bytes) {
            *a |= b;
        }
    }

    /// True if every bit set here is also set in `other` (`stale ⊆ fresh`).
    pub fn is_subset_of(&self, other: &Bitmap) -> bool {
        if self.blocks != other.blocks {
            return false;
        }
        debug_assert_eq!(self.bytes.len(), other.bytes.len(), "same blocks, same length");
        // Eight bytes at a time, branch-free (check compares the whole bitmap).
        let ((mine, my_tail), (theirs, their_tail)) = (self.bytes.as_chunks::<8>(), other.bytes.as_chunks::<8>());
        let words =
            mine.iter().zip(theirs).fold(0, |extra, (a, b)| extra | (u64::from_le_bytes(*a) & !u64::from_le_bytes(*b)));
        let tail = my_tail.iter().zip(their_tail).fold(0, |extra, (a, b)| extra | (a & !b));
        words == 0 && tail == 0
    }
}

/// The index of the first nonzero byte of `bytes`. The padding after the bitmap's last block
/// is checked at every open and is mostly zeros: compared 64 bytes at a time (the OR of a chunk
/// vectorises; a byte-by-byte search with an early exit does not).
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let chunks = bytes.chunks(64);
    for (index, chunk) in chunks.enumerate() {
        if chunk.iter().fold(0u8, |any, b| any | b) != 0 {
            let within = chunk.iter().position(|b| *b != 0).expect("a chunk with a set bit has a nonzero byte");
            return Some(index * 64 + within);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_read_from_disk_agree_bit_by_bit_and_strays_are_counted() {
        // 13 blocks in 3 bytes: bits 13..24 are strays.
        let on_disk = [0b1000_0101u8, 0b1110_0000, 0b0000_0011];
        let bitmap = Bitmap::from_bits(&on_disk, 13);
        for block in 0..13 {
            assert_eq!(bitmap.get(block), on_disk[(block / 8) as usize] & (1 << (block % 8)) != 0, "block {block}");
        }
        assert_eq!(bitmap.set_blocks().collect::<Vec<_>>(), vec![0, 2, 7]);
        assert_eq!(Bitmap::stray_bits(&on_disk, 13), 5);
        assert_eq!(Bitmap::stray_bits(&on_disk, 24), 0);
        assert_eq!(Bitmap::stray_bits(&on_disk, 16), 2);
    }

    #[test]
    fn bits_are_lsb_first_and_round_trip() {
        let mut bitmap = Bitmap::new(20);
        bitmap.set_range(1, 3);
        bitmap.set_range(9, 10);
        let bytes = bitmap.encode(4096);
        assert_eq!(bytes.len(), 4096);
        assert_eq!(bytes[0], 0b0000_0110);
        assert_eq!(bytes[1], 0b0000_0010);
        assert_eq!(Bitmap::decode(&bytes, 20).unwrap(), bitmap);
        assert!(bitmap.get(25), "blocks beyond the base count as in the image");
        assert!(bitmap.all_set(1, 3) && !bitmap.all_set(0, 3));
        assert_eq!(bitmap.count_set(), 3);
        let mut fresh = bitmap.clone();
        fresh.set_range(0, 1);
        assert!(bitmap.is_subset_of(&fresh) && !fresh.is_subset_of(&bitmap));
    }

    #[test]
    fn a_stray_byte_in_the_padding_is_named_wherever_it_lies() {
        // 20 blocks need 3 bytes; the rest of the region is padding, searched 64 bytes at a time.
        for at in [3usize, 63, 64, 65, 127, 128, 4000, 4095] {
            let mut bytes = vec![0u8; 4096];
            bytes[at] = 0x80;
            let error = Bitmap::decode(&bytes, 20).unwrap_err().to_string();
            let bit = at * 8;
            assert!(error.contains(&format!("bitmap bit {bit}")), "byte {at}: {error}");
        }
        assert_eq!(first_nonzero(&[0u8; 200]), None);
        assert_eq!(first_nonzero(&[]), None);
    }

    #[test]
    fn stray_bits_beyond_the_base_are_corruption() {
        let mut bytes = vec![0u8; 4096];
        bytes[2] = 0b0001_0000; // block 20 of a 20-block bitmap
        let error = Bitmap::decode(&bytes, 20).unwrap_err().to_string();
        assert!(error.contains("bitmap bit 20"), "{error}");
        let mut bytes = vec![0u8; 4096];
        bytes[100] = 1;
        assert!(Bitmap::decode(&bytes, 20).is_err());
    }
}
