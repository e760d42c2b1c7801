//! The FVD v1 header: a packed little-endian struct of 4,336 bytes at offset 0, padded to 8 KiB,
//! plus fvdsim's hardened extension (two CRC-protected slots in the padding).
//!
//! Byte layout: `docs/format.md` §1 (from `fvd.h` and `fvd-v1.md` §1.1). Booleans are `i32` 0/1;
//! strings are NUL-terminated in fixed fields.

use crate::error::FvdError;

/// `('Q'<<24)|('C'<<16)|(0xF5<<8)|0xA9`, stored LE as `A9 F5 43 51`.
pub const HEADER_MAGIC: u32 = 0x5143_F5A9;
/// The only version this engine reads and writes.
pub const HEADER_VERSION: u32 = 1;
/// `sizeof(FvdHeader)` in the 2011 code.
pub const HEADER_BYTES: usize = 4336;
/// The header region: `ROUND_UP(4336, 4096)`; the bitmap starts here.
pub const HEADER_REGION_BYTES: u64 = 8192;

/// Field offsets of the packed v1 struct (`fvd-v1.md` §1.1).
mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const ALL_DATA_IN_FVD_IMG: usize = 8;
    pub const VIRTUAL_DISK_SIZE: usize = 12;
    pub const METADATA_SIZE: usize = 20;
    pub const BASE_IMG: usize = 28;
    pub const BASE_IMG_FMT: usize = 1052;
    pub const BASE_IMG_SIZE: usize = 1068;
    pub const BITMAP_OFFSET: usize = 1076;
    pub const BITMAP_SIZE: usize = 1084;
    pub const BLOCK_SIZE: usize = 1092;
    pub const COPY_ON_READ: usize = 1096;
    pub const MAX_OUTSTANDING_COPY_ON_READ_DATA: usize = 1100;
    pub const DATA_FILE: usize = 1108;
    pub const DATA_FILE_FMT: usize = 2132;
    pub const PREFETCH_START_DELAY: usize = 2148;
    pub const PREFETCH_PROFILE_OFFSET: usize = 2152;
    pub const PREFETCH_PROFILE_ENTRIES: usize = 2160;
    pub const NUM_PREFETCH_SLOTS: usize = 2168;
    pub const BYTES_PER_PREFETCH: usize = 2172;
    pub const PREFETCH_READ_MEASURE_TIME: usize = 2176;
    pub const PREFETCH_WRITE_MEASURE_TIME: usize = 2180;
    pub const PREFETCH_PERF_CALC_ALPHA: usize = 2184;
    pub const PREFETCH_MIN_READ_THROUGHPUT: usize = 2188;
    pub const PREFETCH_MIN_WRITE_THROUGHPUT: usize = 2192;
    pub const PREFETCH_MAX_READ_THROUGHPUT: usize = 2196;
    pub const PREFETCH_MAX_WRITE_THROUGHPUT: usize = 2200;
    pub const PREFETCH_THROTTLE_TIME: usize = 2204;
    pub const COMPACT_IMAGE: usize = 2208;
    pub const TABLE_OFFSET: usize = 2212;
    pub const CHUNK_SIZE: usize = 2220;
    pub const STORAGE_GROW_UNIT: usize = 2228;
    pub const ADD_STORAGE_CMD: usize = 2236;
    pub const JOURNAL_OFFSET: usize = 4284;
    pub const JOURNAL_SIZE: usize = 4292;
    pub const CLEAN_SHUTDOWN: usize = 4300;
    pub const NEED_ZERO_INIT: usize = 4304;
    pub const GENERATE_PREFETCH_PROFILE: usize = 4308;
    pub const UNIT_OF_PROFILE_ENTRY_LEN: usize = 4312;
    pub const PROFILE_DIRECTED_PREFETCH_START_DELAY: usize = 4316;
    pub const WRITE_UPDATES_BASE_IMG: usize = 4320;
    pub const END: usize = 4336;
}

/// The FVD v1 header, field for field. Sizes and offsets are bytes; `i64` fields of the C struct
/// are `u64` here and must not exceed `i64::MAX` on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// True when no base image is needed (none, or prefetch finished).
    pub all_data_in_fvd_img: bool,
    /// Virtual disk size, a multiple of 512.
    pub virtual_disk_size: u64,
    /// Bytes of header, bitmap, table and journal; the data area starts here (same-file data).
    pub metadata_size: u64,
    /// Base image name (empty: none).
    pub base_img: String,
    /// Base image format name.
    pub base_img_fmt: String,
    /// Bytes of the base image the bitmap covers: `min(virtual size, base length)`, rounded up to 512.
    pub base_img_size: u64,
    /// Bitmap offset (8192 when there is a base image).
    pub bitmap_offset: u64,
    /// Bitmap bytes, a multiple of 4096.
    pub bitmap_size: u64,
    /// Bytes per bitmap bit, a multiple of 512 (not necessarily a power of two).
    pub block_size: u32,
    /// Copy-on-read enabled.
    pub copy_on_read: bool,
    /// Cap on copy-on-read bytes in flight.
    pub max_outstanding_copy_on_read_data: u64,
    /// Separate data file name (empty: data follows the metadata in this file).
    pub data_file: String,
    /// Separate data file format.
    pub data_file_fmt: String,
    /// Seconds before prefetch starts; −1 disables it.
    pub prefetch_start_delay: i32,
    /// Reserved in v1 (0).
    pub prefetch_profile_offset: u64,
    /// Reserved in v1 (0).
    pub prefetch_profile_entries: u64,
    /// Prefetch slots.
    pub num_prefetch_slots: i32,
    /// Bytes per prefetch slot.
    pub bytes_per_prefetch: i32,
    /// Read-throughput measurement window, ms of accumulated latency.
    pub prefetch_read_throughput_measure_time: i32,
    /// Write-throughput measurement window, ms of accumulated latency.
    pub prefetch_write_throughput_measure_time: i32,
    /// Moving-average weight in percent (80 = 0.80).
    pub prefetch_perf_calc_alpha: i32,
    /// Minimum read throughput, KB/s.
    pub prefetch_min_read_throughput: i32,
    /// Minimum write throughput, KB/s.
    pub prefetch_min_write_throughput: i32,
    /// Maximum read throughput, KB/s (not implemented in v1).
    pub prefetch_max_read_throughput: i32,
    /// Maximum write throughput, KB/s (not implemented in v1).
    pub prefetch_max_write_throughput: i32,
    /// Longest prefetch pause, ms.
    pub prefetch_throttle_time: i32,
    /// Compact image (table of chunks).
    pub compact_image: bool,
    /// Table offset.
    pub table_offset: u64,
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Bytes the data storage grows by.
    pub storage_grow_unit: u64,
    /// External grow command (unused by fvdsim; kept byte for byte).
    pub add_storage_cmd: String,
    /// Journal offset.
    pub journal_offset: u64,
    /// Journal bytes (0: no journal).
    pub journal_size: u64,
    /// False while the image is open read-write.
    pub clean_shutdown: bool,
    /// Zero-filled base blocks were pre-marked in the bitmap at create.
    pub need_zero_init: bool,
    /// Not implemented in v1.
    pub generate_prefetch_profile: bool,
    /// Not implemented in v1 (4096).
    pub unit_of_prefetch_profile_entry_len: i32,
    /// Not implemented in v1 (−1).
    pub profile_directed_prefetch_start_delay: i32,
    /// Not implemented in v1.
    pub write_updates_base_img: String,
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}
fn put_i32(buf: &mut [u8], at: usize, value: i32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}
fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}
fn put_bool(buf: &mut [u8], at: usize, value: bool) {
    put_i32(buf, at, i32::from(value));
}
fn put_str(buf: &mut [u8], at: usize, len: usize, value: &str) {
    assert!(value.len() < len, "string fields are validated before encoding");
    buf[at..at + value.len()].copy_from_slice(value.as_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}
fn get_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(buf: &[u8], at: usize, field: &str) -> Result<u64, FvdError> {
    let value = i64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
    u64::try_from(value).map_err(|_| FvdError::corrupt(format!("header.{field}"), value, "must not be negative"))
}
fn get_bool(buf: &[u8], at: usize, field: &str) -> Result<bool, FvdError> {
    match get_i32(buf, at) {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(FvdError::corrupt(format!("header.{field}"), other, "a boolean must be 0 or 1")),
    }
}
fn get_str(buf: &[u8], at: usize, len: usize, field: &str) -> Result<String, FvdError> {
    let raw = &buf[at..at + len];
    let end = raw.iter().position(|b| *b == 0).ok_or_else(|| {
        FvdError::corrupt(format!("header.{field}"), format!("{len} bytes without NUL"), "must be NUL-terminated")
    })?;
    String::from_utf8(raw[..end].to_vec())
        .map_err(|_| FvdError::corrupt(format!("header.{field}"), format!("{:?}", &raw[..end]), "must be UTF-8"))
}

/// String field capacities (bytes, including the NUL).
pub const BASE_IMG_CAPACITY: usize = 1024;
/// Capacity of `data_file`.
pub const DATA_FILE_CAPACITY: usize = 1024;
/// Capacity of the format-name fields.
pub const FORMAT_NAME_CAPACITY: usize = 16;
const ADD_STORAGE_CMD_CAPACITY: usize = 2048;

impl Header {
    /// Encodes the 4,336 header bytes.
    ///
    /// Panics if a string field is too long; [`Header::check_strings`] reports that as an error.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut buf = [0u8; HEADER_BYTES];
        put_u32(&mut buf, off::MAGIC, HEADER_MAGIC);
        put_u32(&mut buf, off::VERSION, HEADER_VERSION);
        put_bool(&mut buf, off::ALL_DATA_IN_FVD_IMG, self.all_data_in_fvd_img);
        put_u64(&mut buf, off::VIRTUAL_DISK_SIZE, self.virtual_disk_size);
        put_u64(&mut buf, off::METADATA_SIZE, self.metadata_size);
        put_str(&mut buf, off::BASE_IMG, BASE_IMG_CAPACITY, &self.base_img);
        put_str(&mut buf, off::BASE_IMG_FMT, FORMAT_NAME_CAPACITY, &self.base_img_fmt);
        put_u64(&mut buf, off::BASE_IMG_SIZE, self.base_img_size);
        put_u64(&mut buf, off::BITMAP_OFFSET, self.bitmap_offset);
        put_u64(&mut buf, off::BITMAP_SIZE, self.bitmap_size);
        put_u32(&mut buf, off::BLOCK_SIZE, self.block_size);
        put_bool(&mut buf, off::COPY_ON_READ, self.copy_on_read);
        put_u64(&mut buf, off::MAX_OUTSTANDING_COPY_ON_READ_DATA, self.max_outstanding_copy_on_read_data);
        put_str(&mut buf, off::DATA_FILE, DATA_FILE_CAPACITY, &self.data_file);
        put_str(&mut buf, off::DATA_FILE_FMT, FORMAT_NAME_CAPACITY, &self.data_file_fmt);
        put_i32(&mut buf, off::PREFETCH_START_DELAY, self.prefetch_start_delay);
        put_u64(&mut buf, off::PREFETCH_PROFILE_OFFSET, self.prefetch_profile_offset);
        put_u64(&mut buf, off::PREFETCH_PROFILE_ENTRIES, self.prefetch_profile_entries);
        put_i32(&mut buf, off::NUM_PREFETCH_SLOTS, self.num_prefetch_slots);
        put_i32(&mut buf, off::BYTES_PER_PREFETCH, self.bytes_per_prefetch);
        put_i32(&mut buf, off::PREFETCH_READ_MEASURE_TIME, self.prefetch_read_throughput_measure_time);
        put_i32(&mut buf, off::PREFETCH_WRITE_MEASURE_TIME, self.prefetch_write_throughput_measure_time);
        put_i32(&mut buf, off::PREFETCH_PERF_CALC_ALPHA, self.prefetch_perf_calc_alpha);
        put_i32(&mut buf, off::PREFETCH_MIN_READ_THROUGHPUT, self.prefetch_min_read_throughput);
        put_i32(&mut buf, off::PREFETCH_MIN_WRITE_THROUGHPUT, self.prefetch_min_write_throughput);
        put_i32(&mut buf, off::PREFETCH_MAX_READ_THROUGHPUT, self.prefetch_max_read_throughput);
        put_i32(&mut buf, off::PREFETCH_MAX_WRITE_THROUGHPUT, self.prefetch_max_write_throughput);
        put_i32(&mut buf, off::PREFETCH_THROTTLE_TIME, self.prefetch_throttle_time);
        put_bool(&mut buf, off::COMPACT_IMAGE, self.compact_image);
        put_u64(&mut buf, off::TABLE_OFFSET, self.table_offset);
        put_u64(&mut buf, off::CHUNK_SIZE, self.chunk_size);
        put_u64(&mut buf, off::STORAGE_GROW_UNIT, self.storage_grow_unit);
        put_str(&mut buf, off::ADD_STORAGE_CMD, ADD_STORAGE_CMD_CAPACITY, &self.add_storage_cmd);
        put_u64(&mut buf, off::JOURNAL_OFFSET, self.journal_offset);
        put_u64(&mut buf, off::JOURNAL_SIZE, self.journal_size);
        put_bool(&mut buf, off::CLEAN_SHUTDOWN, self.clean_shutdown);
        put_bool(&mut buf, off::NEED_ZERO_INIT, self.need_zero_init);
        put_bool(&mut buf, off::GENERATE_PREFETCH_PROFILE, self.generate_prefetch_profile);
        put_i32(&mut buf, off::UNIT_OF_PROFILE_ENTRY_LEN, self.unit_of_prefetch_profile_entry_len);
        put_i32(&mut buf, off::PROFILE_DIRECTED_PREFETCH_START_DELAY, self.profile_directed_prefetch_start_delay);
        put_str(&mut buf, off::WRITE_UPDATES_BASE_IMG, FORMAT_NAME_CAPACITY, &self.write_updates_base_img);
        debug_assert_eq!(off::END, HEADER_BYTES);
        buf
    }

    /// Decodes and checks magic, version, booleans, signs and strings. Cross-field rules are
    /// [`crate::format::Layout::from_header`]'s.
    pub fn decode(buf: &[u8]) -> Result<Header, FvdError> {
        if buf.len() < HEADER_BYTES {
            return Err(FvdError::corrupt(
                "header",
                format!("{} bytes", buf.len()),
                format!("the image must hold the {HEADER_BYTES}-byte header"),
            ));
        }
        let magic = get_u32(buf, off::MAGIC);
        if magic != HEADER_MAGIC {
            return Err(FvdError::corrupt(
                "header.magic",
                format!("{magic:#010x}"),
                format!("must be {HEADER_MAGIC:#010x} (not an FVD image)"),
            ));
        }
        let version = get_u32(buf, off::VERSION);
        if version != HEADER_VERSION {
            return Err(FvdError::corrupt(
                "header.version",
                version,
                format!("only version {HEADER_VERSION} is supported"),
            ));
        }
        Ok(Header {
            all_data_in_fvd_img: get_bool(buf, off::ALL_DATA_IN_FVD_IMG, "all_data_in_fvd_img")?,
            virtual_disk_size: get_u64(buf, off::VIRTUAL_DISK_SIZE, "virtual_disk_size")?,
            metadata_size: get_u64(buf, off::METADATA_SIZE, "metadata_size")?,
            base_img: get_str(buf, off::BASE_IMG, BASE_IMG_CAPACITY, "base_img")?,
            base_img_fmt: get_str(buf, off::BASE_IMG_FMT, FORMAT_NAME_CAPACITY, "base_img_fmt")?,
            base_img_size: get_u64(buf, off::BASE_IMG_SIZE, "base_img_size")?,
            bitmap_offset: get_u64(buf, off::BITMAP_OFFSET, "bitmap_offset")?,
            bitmap_size: get_u64(buf, off::BITMAP_SIZE, "bitmap_size")?,
            block_size: u32::try_from(get_i32(buf, off::BLOCK_SIZE)).map_err(|_| {
                FvdError::corrupt("header.block_size", get_i32(buf, off::BLOCK_SIZE), "must not be negative")
            })?,
            copy_on_read: get_bool(buf, off::COPY_ON_READ, "copy_on_read")?,
            max_outstanding_copy_on_read_data: get_u64(
                buf,
                off::MAX_OUTSTANDING_COPY_ON_READ_DATA,
                "max_outstanding_copy_on_read_data",
            )?,
            data_file: get_str(buf, off::DATA_FILE, DATA_FILE_CAPACITY, "data_file")?,
            data_file_fmt: get_str(buf, off::DATA_FILE_FMT, FORMAT_NAME_CAPACITY, "data_file_fmt")?,
            prefetch_start_delay: get_i32(buf, off::PREFETCH_START_DELAY),
            prefetch_profile_offset: get_u64(buf, off::PREFETCH_PROFILE_OFFSET, "prefetch_profile_offset")?,
            prefetch_profile_entries: get_u64(buf, off::PREFETCH_PROFILE_ENTRIES, "prefetch_profile_entries")?,
            num_prefetch_slots: get_i32(buf, off::NUM_PREFETCH_SLOTS),
            bytes_per_prefetch: get_i32(buf, off::BYTES_PER_PREFETCH),
            prefetch_read_throughput_measure_time: get_i32(buf, off::PREFETCH_READ_MEASURE_TIME),
            prefetch_write_throughput_measure_time: get_i32(buf, off::PREFETCH_WRITE_MEASURE_TIME),
            prefetch_perf_calc_alpha: get_i32(buf, off::PREFETCH_PERF_CALC_ALPHA),
            prefetch_min_read_throughput: get_i32(buf, off::PREFETCH_MIN_READ_THROUGHPUT),
            prefetch_min_write_throughput: get_i32(buf, off::PREFETCH_MIN_WRITE_THROUGHPUT),
            prefetch_max_read_throughput: get_i32(buf, off::PREFETCH_MAX_READ_THROUGHPUT),
            prefetch_max_write_throughput: get_i32(buf, off::PREFETCH_MAX_WRITE_THROUGHPUT),
            prefetch_throttle_time: get_i32(buf, off::PREFETCH_THROTTLE_TIME),
            compact_image: get_bool(buf, off::COMPACT_IMAGE, "compact_image")?,
            table_offset: get_u64(buf, off::TABLE_OFFSET, "table_offset")?,
            chunk_size: get_u64(buf, off::CHUNK_SIZE, "chunk_size")?,
            storage_grow_unit: get_u64(buf, off::STORAGE_GROW_UNIT, "storage_grow_unit")?,
            add_storage_cmd: get_str(buf, off::ADD_STORAGE_CMD, ADD_STORAGE_CMD_CAPACITY, "add_storage_cmd")?,
            journal_offset: get_u64(buf, off::JOURNAL_OFFSET, "journal_offset")?,
            journal_size: get_u64(buf, off::JOURNAL_SIZE, "journal_size")?,
            clean_shutdown: get_bool(buf, off::CLEAN_SHUTDOWN, "clean_shutdown")?,
            need_zero_init: get_bool(buf, off::NEED_ZERO_INIT, "need_zero_init")?,
            generate_prefetch_profile: get_bool(buf, off::GENERATE_PREFETCH_PROFILE, "generate_prefetch_profile")?,
            unit_of_prefetch_profile_entry_len: get_i32(buf, off::UNIT_OF_PROFILE_ENTRY_LEN),
            profile_directed_prefetch_start_delay: get_i32(buf, off::PROFILE_DIRECTED_PREFETCH_START_DELAY),
            write_updates_base_img: get_str(
                buf,
                off::WRITE_UPDATES_BASE_IMG,
                FORMAT_NAME_CAPACITY,
                "write_updates_base_img",
            )?,
        })
    }

    /// Byte offset of the `clean_shutdown` field (it lives in header sector 8, bytes 4096..4608).
    pub const CLEAN_SHUTDOWN_OFFSET: usize = off::CLEAN_SHUTDOWN;

    /// Header sector 8 (bytes 4096..4608): the tail of the struct, `clean_shutdown` included,
    /// then zeros. The engine flips the clean flag by rewriting this one sector (`docs/format.md`
    /// §1), which leaves the extension slots in sectors 9 and 10 alone.
    pub fn sector_8(&self) -> [u8; 512] {
        let encoded = self.encode();
        let mut sector = [0u8; 512];
        sector[..HEADER_BYTES - 4096].copy_from_slice(&encoded[4096..]);
        sector
    }
}

/// fvdsim's hardened header extension, in the header padding (v1 readers ignore it). Two slots in
/// separate sectors; the valid slot with the higher generation wins, so a torn extension write
/// falls back to the previous one.
///
/// Slot layout (40 bytes, LE): `u32 magic "FVDH"`, `u32 version (1)`, `u64 generation`,
/// `u64 journal_epoch`, `u64 allocated_chunks`, `u32 flags`, `u32 crc32c` of the first 36 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderExtension {
    /// Increases with every extension write.
    pub generation: u64,
    /// Only journal sectors stamped with this epoch are replayed.
    pub journal_epoch: u64,
    /// Physical chunks ever handed out (a high-water mark raised before any chunk beyond it is
    /// used). Chunks below it that no table entry references may hold data of lost writes and are
    /// never reused; chunks at or above it have never been written.
    pub allocated_chunks: u64,
    /// Reserved flags (0).
    pub flags: u32,
}

/// `"FVDH"` little-endian.
pub const EXTENSION_MAGIC: u32 = u32::from_le_bytes(*b"FVDH");
/// Byte offsets of the two extension slots (sectors 9 and 10 of the header region).
pub const EXTENSION_SLOT_OFFSETS: [u64; 2] = [4608, 5120];
/// Bytes per slot.
pub const EXTENSION_SLOT_BYTES: usize = 40;

impl HeaderExtension {
    /// The 512-byte sector that holds this extension in its slot (`generation % 2`).
    pub fn encode_sector(&self) -> [u8; 512] {
        let mut sector = [0u8; 512];
        sector[0..4].copy_from_slice(&EXTENSION_MAGIC.to_le_bytes());
        sector[4..8].copy_from_slice(&1u32.to_le_bytes());
        sector[8..16].copy_from_slice(&self.generation.to_le_bytes());
        sector[16..24].copy_from_slice(&self.journal_epoch.to_le_bytes());
        sector[24..32].copy_from_slice(&self.allocated_chunks.to_le_bytes());
        sector[32..36].copy_from_slice(&self.flags.to_le_bytes());
        let crc = crc32c::crc32c(&sector[..36]);
        sector[36..40].copy_from_slice(&crc.to_le_bytes());
        sector
    }

    /// The slot offset this extension is written to.
    pub fn slot_offset(&self) -> u64 {
        EXTENSION_SLOT_OFFSETS[(self.generation % 2) as usize]
    }

    /// Decodes one slot; `None` if it is empty, torn or not an extension.
    pub fn decode_slot(bytes: &[u8]) -> Option<HeaderExtension> {
        if bytes.len() < EXTENSION_SLOT_BYTES || u32::from_le_bytes(bytes[0..4].try_into().ok()?) != EXTENSION_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(bytes[36..40].try_into().ok()?);
        if crc != crc32c::crc32c(&bytes[..36]) || u32::from_le_bytes(bytes[4..8].try_into().ok()?) != 1 {
            return None;
        }
        Some(HeaderExtension {
            generation: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
            journal_epoch: u64::from_le_bytes(bytes[16..24].try_into().ok()?),
            allocated_chunks: u64::from_le_bytes(bytes[24..32].try_into().ok()?),
            flags: u32::from_le_bytes(bytes[32..36].try_into().ok()?),
        })
    }

    /// The newest valid extension in the 8 KiB header region, if any.
    pub fn newest(region: &[u8]) -> Option<HeaderExtension> {
        EXTENSION_SLOT_OFFSETS
            .iter()
            .filter_map(|&at| {
                region.get(at as usize..at as usize + EXTENSION_SLOT_BYTES).and_then(HeaderExtension::decode_slot)
            })
            .max_by_key(|ext| ext.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Header {
        Header {
            all_data_in_fvd_img: false,
            virtual_disk_size: 1 << 30,
            metadata_size: 8192 + 4096 + 4096 + 65536,
            base_img: "base.raw".into(),
            base_img_fmt: "raw".into(),
            base_img_size: 512 << 20,
            bitmap_offset: 8192,
            bitmap_size: 4096,
            block_size: 65536,
            copy_on_read: true,
            max_outstanding_copy_on_read_data: 2_000_000,
            data_file: String::new(),
            data_file_fmt: String::new(),
            prefetch_start_delay: -1,
            prefetch_profile_offset: 0,
            prefetch_profile_entries: 0,
            num_prefetch_slots: 2,
            bytes_per_prefetch: 1 << 20,
            prefetch_read_throughput_measure_time: 100,
            prefetch_write_throughput_measure_time: 100,
            prefetch_perf_calc_alpha: 80,
            prefetch_min_read_throughput: 5120,
            prefetch_min_write_throughput: 5120,
            prefetch_max_read_throughput: 1_000_000_000,
            prefetch_max_write_throughput: 1_000_000_000,
            prefetch_throttle_time: 30_000,
            compact_image: true,
            table_offset: 8192 + 4096,
            chunk_size: 1 << 20,
            storage_grow_unit: 100 << 20,
            add_storage_cmd: String::new(),
            journal_offset: 8192 + 4096 + 4096,
            journal_size: 65536,
            clean_shutdown: true,
            need_zero_init: false,
            generate_prefetch_profile: false,
            unit_of_prefetch_profile_entry_len: 4096,
            profile_directed_prefetch_start_delay: -1,
            write_updates_base_img: String::new(),
        }
    }

    #[test]
    fn header_round_trips_and_lands_fields_at_v1_offsets() {
        let header = sample();
        let bytes = header.encode();
        assert_eq!(&bytes[0..4], &[0xA9, 0xF5, 0x43, 0x51], "magic is stored LE");
        assert_eq!(get_i32(&bytes, 1092), 65536, "block_size at 1092");
        assert_eq!(get_i32(&bytes, 4300), 1, "clean_shutdown at 4300");
        assert_eq!(&bytes[28..36], b"base.raw");
        assert_eq!(Header::decode(&bytes).unwrap(), header);
    }

    #[test]
    fn bad_headers_name_the_field() {
        let mut bytes = sample().encode();
        bytes[0] ^= 1;
        assert!(Header::decode(&bytes).unwrap_err().to_string().contains("header.magic"));
        let mut bytes = sample().encode();
        bytes[4] = 2;
        assert!(Header::decode(&bytes).unwrap_err().to_string().contains("header.version"));
        let mut bytes = sample().encode();
        bytes[4300] = 7;
        assert!(Header::decode(&bytes).unwrap_err().to_string().contains("header.clean_shutdown"));
        let mut bytes = sample().encode();
        bytes[28..28 + 1024].fill(b'a');
        assert!(Header::decode(&bytes).unwrap_err().to_string().contains("header.base_img"));
        let mut bytes = sample().encode();
        bytes[12 + 7] = 0x80;
        assert!(Header::decode(&bytes).unwrap_err().to_string().contains("must not be negative"));
        assert!(Header::decode(&bytes[..100]).is_err());
    }

    #[test]
    fn the_newest_valid_extension_slot_wins_and_torn_slots_are_ignored() {
        let mut region = vec![0u8; 8192];
        assert_eq!(HeaderExtension::newest(&region), None);
        for generation in [4u64, 5] {
            let ext = HeaderExtension { generation, journal_epoch: generation * 10, allocated_chunks: 3, flags: 0 };
            let at = ext.slot_offset() as usize;
            region[at..at + 512].copy_from_slice(&ext.encode_sector());
        }
        assert_eq!(HeaderExtension::newest(&region).unwrap().journal_epoch, 50);
        region[5120 + 17] ^= 0xff; // tear slot 1 (generation 5)
        assert_eq!(HeaderExtension::newest(&region).unwrap().journal_epoch, 40);
    }
}
