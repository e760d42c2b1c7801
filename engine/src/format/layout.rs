//! Where everything lives, derived from a header and checked against the image length.

use super::header::{HEADER_REGION_BYTES, Header};
use super::journal::JournalRecord;
use crate::error::FvdError;

pub use fvd_contract::SECTOR_BYTES;
/// A table entry for an unallocated chunk.
pub const EMPTY_TABLE_ENTRY: u32 = 0xFFFF_FFFF;
/// In memory and in v1 journal records only: allocated but not yet committed.
pub const DIRTY_TABLE_BIT: u32 = 0x8000_0000;

/// `x` rounded up to a multiple of `to`.
pub fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// The checked geometry of an image (all byte quantities unless named `_sectors`/`_blocks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Virtual disk size.
    pub virtual_size: u64,
    /// Bytes covered by the bitmap (0: no base image).
    pub base_size: u64,
    /// Bytes per bitmap bit.
    pub block_size: u64,
    /// Blocks covered by the bitmap.
    pub bitmap_blocks: u64,
    /// Bitmap offset and size.
    pub bitmap_offset: u64,
    /// Bitmap bytes on disk (padded).
    pub bitmap_size: u64,
    /// Compact image.
    pub compact: bool,
    /// Bytes per chunk (compact).
    pub chunk_size: u64,
    /// Table entries (compact).
    pub table_entries: u64,
    /// Table offset and padded size.
    pub table_offset: u64,
    /// Table bytes on disk (padded to 4 KiB).
    pub table_size: u64,
    /// Journal offset and size (size 0: none).
    pub journal_offset: u64,
    /// Journal bytes.
    pub journal_size: u64,
    /// Header + bitmap + table + journal.
    pub metadata_size: u64,
    /// Where virtual byte 0 (non-compact) or physical chunk 0 (compact) lives on the data device.
    pub data_offset: u64,
    /// Data lives on a separate device.
    pub separate_data: bool,
    /// Storage grow unit (compact).
    pub storage_grow_unit: u64,
}

impl Layout {
    /// Checks every cross-field rule of `header` against an image file of `image_len` bytes and
    /// data storage of `data_len` bytes (the separate data file, or the image file itself).
    /// Errors name the field, its value and the rule.
    ///
    /// This is the one set of layout rules: open and check both call it, so check can never call
    /// clean an image that open refuses for its layout.
    pub fn from_header(header: &Header, image_len: u64, data_len: u64) -> Result<Layout, FvdError> {
        let corrupt =
            |field: &str, value: u64, rule: String| Err(FvdError::corrupt(format!("header.{field}"), value, rule));
        let virtual_size = header.virtual_disk_size;
        if virtual_size == 0 || !virtual_size.is_multiple_of(SECTOR_BYTES) {
            return corrupt("virtual_disk_size", virtual_size, "must be a positive multiple of 512".into());
        }
        let has_base = !header.base_img.is_empty() || header.bitmap_size > 0;
        if header.base_img.is_empty() && header.bitmap_size > 0 && !header.all_data_in_fvd_img {
            return Err(FvdError::corrupt(
                "header.base_img",
                "\"\"",
                format!(
                    "is empty while bitmap_size = {} and all_data_in_fvd_img = 0: the bitmap sends reads to a base \
                     image the header does not name",
                    header.bitmap_size
                ),
            ));
        }
        let base_size = if has_base { header.base_img_size } else { 0 };
        if has_base && (base_size > virtual_size || !base_size.is_multiple_of(SECTOR_BYTES)) {
            return corrupt(
                "base_img_size",
                base_size,
                format!("must be a multiple of 512 no larger than the virtual disk ({virtual_size})"),
            );
        }
        let block_size = u64::from(header.block_size);
        if has_base && (block_size == 0 || !block_size.is_multiple_of(SECTOR_BYTES)) {
            return corrupt("block_size", block_size, "must be a positive multiple of 512".into());
        }
        let bitmap_blocks = if has_base { base_size.div_ceil(block_size) } else { 0 };
        let bitmap_needed = round_up(bitmap_blocks.div_ceil(8), 4096);
        if has_base && header.bitmap_offset != HEADER_REGION_BYTES {
            return corrupt(
                "bitmap_offset",
                header.bitmap_offset,
                format!("must be {HEADER_REGION_BYTES} when there is a base image"),
            );
        }
        if has_base && header.bitmap_size != bitmap_needed {
            return corrupt(
                "bitmap_size",
                header.bitmap_size,
                format!("must be {bitmap_needed} for {bitmap_blocks} blocks of {block_size} bytes"),
            );
        }
        let bitmap_size = if has_base { bitmap_needed } else { 0 };
        let after_bitmap = HEADER_REGION_BYTES + bitmap_size;
        let compact = header.compact_image;
        let (chunk_size, table_entries, table_size) = if compact {
            let chunk = header.chunk_size;
            if chunk == 0 || !chunk.is_multiple_of(SECTOR_BYTES) {
                return corrupt("chunk_size", chunk, "must be a positive multiple of 512".into());
            }
            let entries = virtual_size.div_ceil(chunk);
            if entries > u64::from(DIRTY_TABLE_BIT) {
                return corrupt("chunk_size", chunk, "gives more chunks than a table can address (2^31)".into());
            }
            if header.table_offset != after_bitmap {
                return corrupt(
                    "table_offset",
                    header.table_offset,
                    format!("must follow the bitmap at {after_bitmap}"),
                );
            }
            if header.storage_grow_unit < chunk {
                return corrupt(
                    "storage_grow_unit",
                    header.storage_grow_unit,
                    format!("must be at least chunk_size ({chunk})"),
                );
            }
            (chunk, entries, round_up(4 * entries, 4096))
        } else {
            (0, 0, 0)
        };
        let journal_offset = after_bitmap + table_size;
        let journal_size = header.journal_size;
        if journal_size > 0 && header.journal_offset != journal_offset {
            return corrupt(
                "journal_offset",
                header.journal_offset,
                format!("must follow the table at {journal_offset}"),
            );
        }
        if !journal_size.is_multiple_of(SECTOR_BYTES) {
            return corrupt("journal_size", journal_size, "must be a multiple of 512".into());
        }
        if journal_size > 0 && !has_base && !compact {
            return corrupt("journal_size", journal_size, "an image without bitmap or table has no journal".into());
        }
        let metadata_needed = journal_offset + journal_size;
        if header.metadata_size != metadata_needed {
            // v1 create writes exactly this sum, and v1 addresses the data area in sectors from
            // metadata_size / 512: any other value moves every data byte to the wrong offset.
            return corrupt(
                "metadata_size",
                header.metadata_size,
                format!(
                    "must be {metadata_needed}: the end of header, bitmap, table and journal, where the data area \
                     starts"
                ),
            );
        }
        if header.metadata_size > image_len {
            return corrupt(
                "metadata_size",
                header.metadata_size,
                format!("lies beyond the end of the image file ({image_len} bytes)"),
            );
        }
        let separate_data = !header.data_file.is_empty();
        let data_offset = if separate_data { 0 } else { header.metadata_size };
        if !compact && data_len.saturating_sub(data_offset) < virtual_size {
            return Err(FvdError::corrupt(
                "data area",
                format!("{} bytes", data_len.saturating_sub(data_offset)),
                format!(
                    "must hold the whole virtual disk ({virtual_size} bytes from offset {data_offset} of the {}; it \
                     is {data_len} bytes)",
                    if separate_data { "data file" } else { "image file" }
                ),
            ));
        }
        Ok(Layout {
            virtual_size,
            base_size,
            block_size: if has_base { block_size } else { 0 },
            bitmap_blocks,
            // Checked values only: without a base or a table the header's offsets are ignored.
            bitmap_offset: HEADER_REGION_BYTES,
            bitmap_size,
            compact,
            chunk_size,
            table_entries,
            table_offset: after_bitmap,
            table_size,
            journal_offset,
            journal_size,
            metadata_size: header.metadata_size,
            data_offset,
            separate_data,
            storage_grow_unit: header.storage_grow_unit,
        })
    }

    /// Whole physical chunks that data storage of `data_len` bytes holds past the data offset
    /// (compact images; 0 otherwise).
    pub fn storage_chunks(&self, data_len: u64) -> u64 {
        if self.compact { data_len.saturating_sub(self.data_offset) / self.chunk_size } else { 0 }
    }

    /// Checks one journal record against the layout before anything uses its numbers: a `BITMAP`
    /// record must lie inside the virtual disk, a `TABLE` record inside the table, and its entries
    /// inside the data storage (`storage_chunks`). Errors name the journal sector, the record's
    /// index in it and the field.
    pub fn check_journal_record(
        &self,
        record: &JournalRecord,
        storage_chunks: u64,
        sector: u64,
        index: usize,
    ) -> Result<(), FvdError> {
        let field = |name: &str| format!("journal sector {sector} record {index} {name}");
        match record {
            JournalRecord::Bitmap { first_sector, sectors } => {
                let disk_sectors = self.virtual_size / SECTOR_BYTES;
                if *first_sector >= disk_sectors {
                    return Err(FvdError::corrupt(
                        field("first_sector"),
                        first_sector,
                        format!("lies beyond the virtual disk ({disk_sectors} sectors)"),
                    ));
                }
                if first_sector.checked_add(u64::from(*sectors)).is_none_or(|end| end > disk_sectors) {
                    return Err(FvdError::corrupt(
                        field("sectors"),
                        sectors,
                        format!(
                            "runs from sector {first_sector} past the end of the virtual disk ({disk_sectors} sectors)"
                        ),
                    ));
                }
            }
            JournalRecord::Table { first_chunk, entries } => {
                if !self.compact {
                    return Err(FvdError::corrupt(field("type"), "TABLE", "an image that is not compact has no table"));
                }
                let first = u64::from(*first_chunk);
                if first >= self.table_entries {
                    return Err(FvdError::corrupt(
                        field("first_chunk"),
                        first_chunk,
                        format!("lies beyond the table ({} chunks)", self.table_entries),
                    ));
                }
                if first + entries.len() as u64 > self.table_entries {
                    return Err(FvdError::corrupt(
                        field("n"),
                        entries.len(),
                        format!("runs from chunk {first} past the end of the table ({} chunks)", self.table_entries),
                    ));
                }
                for (i, &raw) in entries.iter().enumerate() {
                    let entry = if raw == EMPTY_TABLE_ENTRY { raw } else { raw & !DIRTY_TABLE_BIT };
                    if entry != EMPTY_TABLE_ENTRY && u64::from(entry) >= storage_chunks {
                        return Err(FvdError::corrupt(
                            field(&format!("entry {i} (table[{}])", first + i as u64)),
                            entry,
                            format!("points beyond the data storage ({storage_chunks} chunks)"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// True when the image has a base image (and so a bitmap).
    pub fn has_base(&self) -> bool {
        self.bitmap_blocks > 0
    }

    /// Journal sectors.
    pub fn journal_sectors(&self) -> u64 {
        self.journal_size / SECTOR_BYTES
    }

    /// Sectors per bitmap block (copy-on-write and prefetch unit; `docs/format.md` §2).
    pub fn block_sectors(&self) -> u64 {
        debug_assert!(self.block_size.is_multiple_of(SECTOR_BYTES), "a block is whole sectors");
        self.block_size / SECTOR_BYTES
    }

    /// Sectors the bitmap covers (the base image's size in sectors; 0 without a base).
    pub fn base_sectors(&self) -> u64 {
        debug_assert!(self.base_size.is_multiple_of(SECTOR_BYTES), "the base covers whole sectors");
        self.base_size / SECTOR_BYTES
    }

    /// Sectors per chunk of a compact image.
    pub fn chunk_sectors(&self) -> u64 {
        debug_assert!(self.chunk_size.is_multiple_of(SECTOR_BYTES), "a chunk is whole sectors");
        self.chunk_size / SECTOR_BYTES
    }

    /// The block holding virtual byte `offset`.
    pub fn block_of(&self, offset: u64) -> u64 {
        offset / self.block_size
    }

    /// The chunk holding virtual byte `offset`.
    pub fn chunk_of(&self, offset: u64) -> u64 {
        offset / self.chunk_size
    }
}
