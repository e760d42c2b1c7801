//! The FVD on-disk format: header, bitmap, table and journal sectors. Pure encoding and
//! decoding with validation; no I/O. Byte layout: `docs/format.md`.

pub mod bitmap;
pub mod header;
pub mod journal;
pub mod layout;
pub mod table;

pub use bitmap::Bitmap;
pub use header::{HEADER_BYTES, HEADER_REGION_BYTES, Header, HeaderExtension};
pub use journal::{DecodedSector, JournalRecord, SectorFormat};
pub use layout::{DIRTY_TABLE_BIT, EMPTY_TABLE_ENTRY, Layout, SECTOR_BYTES, round_up};
