//! `check`: counts corruptions and leaks in an image, says what it would fix, and repairs with
//! an option (in the spirit of `qemu-img check`). Check never writes unless asked to repair, and
//! never writes to an image whose header it cannot decode.

use super::lifecycle::replay_record;
use super::{Devices, Profile};
use crate::device::{BlockDevice, WriteFlags};
use crate::error::FvdError;
use crate::format::journal::{DecodedSector, decode_sector};
use crate::format::table::encode_table;
use crate::format::{
    Bitmap, DIRTY_TABLE_BIT, EMPTY_TABLE_ENTRY, HEADER_REGION_BYTES, Header, HeaderExtension, Layout, SECTOR_BYTES,
};

/// What `check` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Damage that makes the image wrong or unopenable, one line each, naming field and value.
    pub corruptions: Vec<String>,
    /// Storage allocated but referenced by nothing (wasted, not wrong).
    pub leaks: Vec<String>,
    /// What a repair does (or did, when `repaired`).
    pub fixes: Vec<String>,
    /// The image was not shut down cleanly: its journal must be replayed.
    pub needs_recovery: bool,
    /// Journal sectors that a recovery would apply.
    pub journal_sectors_valid: u64,
    /// Journal sectors with a failing checksum (a torn write at a crash, or damage).
    pub journal_sectors_torn: u64,
    /// The header could not be decoded: nothing else was checked and nothing can be repaired.
    pub fatal: bool,
    /// A repair was requested and written.
    pub repaired: bool,
}

impl CheckReport {
    /// True when the image holds no corruption (leaks and a pending recovery are not corruption).
    pub fn is_clean(&self) -> bool {
        self.corruptions.is_empty()
    }
}

/// Checks the image on `devices`; with `repair`, fixes what it found: replays the journal (dropping
/// records that open would refuse), clears stray bits, dirty bits and the bits of blocks in
/// unmapped chunks, drops table entries beyond storage or sharing a chunk, writes the metadata home
/// and marks the image clean. The layout rules and journal replay are open's own functions.
///
/// Errors: [`FvdError::Io`]; [`FvdError::InvalidOption`] when the devices disagree with the header
/// about a separate data file. Everything wrong with the image goes in the report.
pub async fn check(devices: &Devices, profile: Profile, repair: bool) -> Result<CheckReport, FvdError> {
    let mut report = CheckReport::default();
    let image = &devices.image;
    let image_len = image.len_bytes();
    let mut region = vec![0u8; HEADER_REGION_BYTES.min(image_len) as usize];
    image.read_at(0, &mut region).await.map_err(FvdError::io("check: read header"))?;
    let header = match Header::decode(&region) {
        Ok(header) => header,
        Err(error) => {
            report.corruptions.push(error.to_string());
            report.fatal = true;
            return Ok(report);
        }
    };
    let data_len = super::data_len(devices, &header)?;
    // The same layout rules as open (one function), so check never calls clean what open refuses.
    let layout = match Layout::from_header(&header, image_len, data_len) {
        Ok(layout) => layout,
        Err(error) => {
            report.corruptions.push(error.to_string());
            report.fatal = true;
            return Ok(report);
        }
    };
    let mut header = header;
    let extension = if profile == Profile::Hardened { HeaderExtension::newest(&region) } else { None };
    // Bitmap: bits beyond the base image.
    let mut bitmap = Bitmap::new(layout.bitmap_blocks);
    if layout.has_base() {
        let mut bytes = vec![0u8; layout.bitmap_size as usize];
        image.read_at(layout.bitmap_offset, &mut bytes).await.map_err(FvdError::io("check: read bitmap"))?;
        bitmap = Bitmap::from_bits(&bytes, layout.bitmap_blocks);
        let stray = Bitmap::stray_bits(&bytes, layout.bitmap_blocks);
        if stray > 0 {
            report
                .corruptions
                .push(format!("bitmap: {stray} bit(s) set beyond the base image ({} blocks)", layout.bitmap_blocks));
            report.fixes.push(format!("clear {stray} bitmap bit(s) beyond the base image"));
        }
    }
    // Table: dirty bits, entries beyond storage, shared chunks.
    let storage_chunks = layout.storage_chunks(data_len);
    let mut table = Vec::new();
    if layout.compact {
        let mut bytes = vec![0u8; layout.table_size as usize];
        image.read_at(layout.table_offset, &mut bytes).await.map_err(FvdError::io("check: read table"))?;
        table = bytes
            .chunks_exact(4)
            .take(layout.table_entries as usize)
            .map(|e| u32::from_le_bytes(e.try_into().expect("4 bytes")))
            .collect();
        fix_table(&mut table, storage_chunks, &mut report, "table");
    }
    // Journal.
    report.needs_recovery = !header.clean_shutdown;
    if layout.journal_size > 0 {
        let mut journal = vec![0u8; layout.journal_size as usize];
        image.read_at(layout.journal_offset, &mut journal).await.map_err(FvdError::io("check: read journal"))?;
        for (index, sector) in journal.chunks_exact(SECTOR_BYTES as usize).enumerate() {
            let records = match (decode_sector(sector), extension) {
                (DecodedSector::Hardened { epoch, records, .. }, Some(ext)) if epoch == ext.journal_epoch => records,
                (DecodedSector::Torn, Some(_)) => {
                    report.journal_sectors_torn += 1;
                    continue;
                }
                (DecodedSector::V1 { records, stopped_at_garbage }, None) => {
                    if stopped_at_garbage && report.needs_recovery {
                        report.corruptions.push(format!(
                            "journal sector {index}: unknown record type after {} record(s)",
                            records.len()
                        ));
                    }
                    records
                }
                _ => continue,
            };
            if records.is_empty() {
                continue;
            }
            report.journal_sectors_valid += 1;
            if report.needs_recovery {
                for (at, record) in records.iter().enumerate() {
                    // Open refuses the image at the first invalid record; repair drops each one.
                    if let Err(error) =
                        replay_record(&mut bitmap, &mut table, &layout, storage_chunks, record, index as u64, at)
                    {
                        report.corruptions.push(error.to_string());
                        report.fixes.push(format!("drop journal sector {index} record {at} (not applied)"));
                    }
                }
            }
        }
        if report.needs_recovery {
            report
                .fixes
                .push(format!("replay {} journal sector(s) and write the metadata home", report.journal_sectors_valid));
            fix_table(&mut table, storage_chunks, &mut report, "journal-recovered table");
        }
    } else if report.needs_recovery && (layout.has_base() || layout.compact) {
        report.corruptions.push(
            "header.clean_shutdown = 0: not shut down cleanly and no journal, so the bitmap and table may miss changes"
                .into(),
        );
        report.fixes.push("accept the metadata as it is and mark the image clean".into());
    }
    // A block "in the image" inside an unmapped chunk reads zeros instead of its base data: the
    // crash signature of a bit made durable before the mapping it needs (docs/format.md §6.5 and
    // §7.4, the order rule). Neither the journal nor the home holds the mapping, so the block's
    // image data is unreachable; clearing the bit sends reads back to the base image.
    if layout.compact && layout.has_base() && !header.all_data_in_fvd_img {
        let unmapped = blocks_in_unmapped_chunks(&bitmap, &table, &layout);
        if let Some(&(block, chunk)) = unmapped.first() {
            report.corruptions.push(format!(
                "bitmap: {} block(s) marked in the image lie in unmapped chunks (first: block {block} in chunk \
                 {chunk}), so they read zeros instead of their base data",
                unmapped.len()
            ));
            report.fixes.push(format!(
                "clear {} bitmap bit(s) of blocks in unmapped chunks (they read their base data again)",
                unmapped.len()
            ));
            for (block, _) in unmapped {
                bitmap.clear(block);
            }
        }
    }
    // Leaks: physical chunks below the highest used one that nothing references.
    if layout.compact {
        let referenced: std::collections::BTreeSet<u32> =
            table.iter().copied().filter(|e| *e != EMPTY_TABLE_ENTRY).collect();
        if let Some(&highest) = referenced.iter().next_back() {
            let leaked = (0..highest).filter(|id| !referenced.contains(id)).count();
            if leaked > 0 {
                report.leaks.push(format!(
                    "{leaked} physical chunk(s) of {} bytes below chunk {highest} are allocated but unreferenced",
                    layout.chunk_size
                ));
            }
        }
    }
    if repair && (!report.fixes.is_empty() || report.needs_recovery) {
        if layout.has_base() {
            image
                .write_at(layout.bitmap_offset, &bitmap.encode(layout.bitmap_size), WriteFlags::NONE)
                .await
                .map_err(FvdError::io("repair: write bitmap"))?;
        }
        if layout.compact {
            image
                .write_at(layout.table_offset, &encode_table(&table, layout.table_size), WriteFlags::NONE)
                .await
                .map_err(FvdError::io("repair: write table"))?;
        }
        image.flush().await.map_err(FvdError::io("repair: flush"))?;
        if let Some(ext) = extension {
            // A new journal round: the replayed records can never be applied again.
            let referenced =
                table.iter().filter(|e| **e != EMPTY_TABLE_ENTRY).map(|e| u64::from(*e) + 1).max().unwrap_or(0);
            let next = HeaderExtension {
                generation: ext.generation + 1,
                journal_epoch: ext.journal_epoch + 1,
                allocated_chunks: ext.allocated_chunks.max(referenced),
                flags: ext.flags,
            };
            image
                .write_at(next.slot_offset(), &next.encode_sector(), WriteFlags::FUA)
                .await
                .map_err(FvdError::io("repair: write header extension"))?;
        } else if layout.journal_size > 0 {
            // A v1 image: zero the journal so its records are not replayed over the repair.
            image
                .write_at(layout.journal_offset, &vec![0u8; layout.journal_size as usize], WriteFlags::NONE)
                .await
                .map_err(FvdError::io("repair: clear journal"))?;
        }
        header.clean_shutdown = true;
        let sector = header.sector_8();
        image.write_at(4096, &sector, WriteFlags::FUA).await.map_err(FvdError::io("repair: write clean flag"))?;
        image.flush().await.map_err(FvdError::io("repair: flush"))?;
        report.repaired = true;
    }
    Ok(report)
}

fn fix_table(table: &mut [u32], storage_chunks: u64, report: &mut CheckReport, what: &str) {
    // Chunks mapping a physical chunk an earlier chunk already maps, each with that earlier one
    // (found by sorting the valid mappings: a sort costs less than a map insert per entry, and
    // check runs after every crash state's recovery), in chunk order.
    let mut mappings: Vec<(u32, usize)> = table
        .iter()
        .enumerate()
        .filter(|(_, entry)| **entry != EMPTY_TABLE_ENTRY)
        .map(|(chunk, entry)| (*entry & !DIRTY_TABLE_BIT, chunk))
        .filter(|(physical, _)| u64::from(*physical) < storage_chunks)
        .collect();
    mappings.sort_unstable();
    let mut shared: Vec<(usize, usize)> = mappings
        .windows(2)
        .scan(None, |owner: &mut Option<(u32, usize)>, pair| {
            let (earlier, later) = (pair[0], pair[1]);
            if owner.is_none_or(|(physical, _)| physical != earlier.0) {
                *owner = Some(earlier);
            }
            let first = owner.expect("set above").1;
            Some((earlier.0 == later.0).then_some((later.1, first)))
        })
        .flatten()
        .collect();
    shared.sort_unstable();
    let mut shared = shared.into_iter().peekable();
    for (chunk, entry) in table.iter_mut().enumerate() {
        if *entry == EMPTY_TABLE_ENTRY {
            continue;
        }
        if *entry & DIRTY_TABLE_BIT != 0 {
            report.corruptions.push(format!("{what}[{chunk}] = {entry:#010x}: the dirty bit never reaches the disk"));
            report.fixes.push(format!("clear the dirty bit of {what}[{chunk}]"));
            *entry &= !DIRTY_TABLE_BIT;
        }
        if u64::from(*entry) >= storage_chunks {
            report
                .corruptions
                .push(format!("{what}[{chunk}] = {entry}: beyond the data storage ({storage_chunks} chunks)"));
            report.fixes.push(format!("unmap {what}[{chunk}] (its data is lost)"));
            *entry = EMPTY_TABLE_ENTRY;
            continue;
        }
        if let Some((_, first)) = shared.next_if(|(later, _)| *later == chunk) {
            debug_assert!(first < chunk, "the owner is an earlier chunk");
            report
                .corruptions
                .push(format!("{what}[{chunk}] = {entry}: physical chunk already used by {what}[{first}]"));
            report.fixes.push(format!("unmap {what}[{chunk}]"));
            *entry = EMPTY_TABLE_ENTRY;
        }
    }
    debug_assert!(shared.next().is_none(), "every chunk sharing a physical chunk was met");
}

/// Blocks whose bit is set in `bitmap` while a chunk they overlap is unmapped in `table`, each with
/// the first such chunk.
fn blocks_in_unmapped_chunks(bitmap: &Bitmap, table: &[u32], layout: &Layout) -> Vec<(u64, u64)> {
    debug_assert_eq!(bitmap.blocks(), layout.bitmap_blocks);
    bitmap
        .set_blocks()
        .filter_map(|block| {
            let start = block * layout.block_size;
            let end = ((block + 1) * layout.block_size).min(layout.base_size);
            (start / layout.chunk_size..end.div_ceil(layout.chunk_size))
                .find(|&chunk| table.get(chunk as usize).is_none_or(|e| *e == EMPTY_TABLE_ENTRY))
                .map(|chunk| (block, chunk))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fix_table_unmaps_later_sharers_strays_and_dirty_bits_in_chunk_order() {
        const E: u32 = EMPTY_TABLE_ENTRY;
        // Physical 2 mapped by chunks 1, 4 and 6 (one with its dirty bit), 9 beyond 8 chunks of
        // storage, 5 mapped once.
        let mut table = vec![E, 2, 5, E, 2 | DIRTY_TABLE_BIT, 9, 2, E];
        let mut report = CheckReport::default();
        fix_table(&mut table, 8, &mut report, "table");
        assert_eq!(table, vec![E, 2, 5, E, E, E, E, E]);
        assert_eq!(
            report.corruptions,
            vec![
                "table[4] = 0x80000002: the dirty bit never reaches the disk",
                "table[4] = 2: physical chunk already used by table[1]",
                "table[5] = 9: beyond the data storage (8 chunks)",
                "table[6] = 2: physical chunk already used by table[1]",
            ]
        );
        assert_eq!(
            report.fixes,
            vec![
                "clear the dirty bit of table[4]",
                "unmap table[4]",
                "unmap table[5] (its data is lost)",
                "unmap table[6]",
            ]
        );
        // A clean table is left alone.
        let mut clean = vec![3, E, 0, 1];
        let mut report = CheckReport::default();
        fix_table(&mut clean, 4, &mut report, "table");
        assert_eq!(clean, vec![3, E, 0, 1]);
        assert!(report.corruptions.is_empty() && report.fixes.is_empty());
    }
}
