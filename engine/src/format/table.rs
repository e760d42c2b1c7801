//! The compact-image table: one little-endian `u32` per chunk, `0xFFFFFFFF` for an unallocated
//! chunk, otherwise the physical chunk index (`fvd-v1.md` §1.4). The `0x80000000` dirty bit exists
//! only in memory and in v1 journal records; on disk it is corruption.

use super::layout::{DIRTY_TABLE_BIT, EMPTY_TABLE_ENTRY};
use crate::error::FvdError;

/// Decodes `entries` table entries, checking that none is dirty, none points at or beyond
/// `storage_chunks` (the physical chunks the data storage holds), and no physical chunk is used
/// twice.
pub fn decode_table(on_disk: &[u8], entries: u64, storage_chunks: u64) -> Result<Vec<u32>, FvdError> {
    if (on_disk.len() as u64) < entries * 4 {
        return Err(FvdError::corrupt(
            "table",
            format!("{} bytes", on_disk.len()),
            format!("must hold {entries} entries"),
        ));
    }
    let table: Vec<u32> = on_disk
        .chunks_exact(4)
        .take(entries as usize)
        .map(|e| u32::from_le_bytes(e.try_into().expect("4 bytes")))
        .collect();
    let mut owner = std::collections::BTreeMap::new();
    for (chunk, &entry) in table.iter().enumerate() {
        if entry == EMPTY_TABLE_ENTRY {
            continue;
        }
        if entry & DIRTY_TABLE_BIT != 0 {
            return Err(FvdError::corrupt(
                format!("table[{chunk}]"),
                format!("{entry:#010x}"),
                "the dirty bit never reaches the on-disk table",
            ));
        }
        if u64::from(entry) >= storage_chunks {
            return Err(FvdError::corrupt(
                format!("table[{chunk}]"),
                entry,
                format!("points beyond the data storage ({storage_chunks} chunks)"),
            ));
        }
        if let Some(first) = owner.insert(entry, chunk) {
            return Err(FvdError::corrupt(
                format!("table[{chunk}]"),
                entry,
                format!("physical chunk already used by table[{first}]"),
            ));
        }
    }
    Ok(table)
}

/// Like [`decode_table`], for a dirty image about to be recovered: an entry that cannot be valid
/// (dirty bit set, beyond storage, or sharing a physical chunk) is a torn EMPTY→chunk change and
/// reads as EMPTY. Returns the table (`on_disk` must hold `entries` entries).
pub fn decode_table_recovering(on_disk: &[u8], entries: u64, storage_chunks: u64) -> Vec<u32> {
    let mut owner = std::collections::BTreeSet::new();
    on_disk
        .chunks_exact(4)
        .take(entries as usize)
        .map(|e| u32::from_le_bytes(e.try_into().expect("4 bytes")))
        .map(|entry| {
            let valid = entry != EMPTY_TABLE_ENTRY
                && entry & DIRTY_TABLE_BIT == 0
                && u64::from(entry) < storage_chunks
                && owner.insert(entry);
            if valid { entry } else { EMPTY_TABLE_ENTRY }
        })
        .collect()
}

/// Encodes `table` (dirty bits cleared) into `size_bytes` bytes, padding with `0xFF`.
pub fn encode_table(table: &[u32], size_bytes: u64) -> Vec<u8> {
    let mut out: Vec<u8> = table.iter().flat_map(|e| clean_entry(*e).to_le_bytes()).collect();
    out.resize(size_bytes as usize, 0xFF);
    out
}

/// An entry with the dirty bit cleared (EMPTY stays EMPTY).
pub fn clean_entry(entry: u32) -> u32 {
    if entry == EMPTY_TABLE_ENTRY { entry } else { entry & !DIRTY_TABLE_BIT }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips_and_rejects_bad_entries() {
        let table = vec![EMPTY_TABLE_ENTRY, 0, 2 | DIRTY_TABLE_BIT, 1];
        let bytes = encode_table(&table, 4096);
        assert_eq!(bytes.len(), 4096);
        assert_eq!(&bytes[8..12], &2u32.to_le_bytes(), "dirty bits never reach the disk");
        assert_eq!(decode_table(&bytes, 4, 3).unwrap(), vec![EMPTY_TABLE_ENTRY, 0, 2, 1]);
        let error = decode_table(&bytes, 4, 2).unwrap_err().to_string();
        assert!(error.contains("table[2]") && error.contains("beyond the data storage"), "{error}");
        let mut dirty = bytes.clone();
        dirty[7] = 0x80;
        assert!(decode_table(&dirty, 4, 3).unwrap_err().to_string().contains("dirty bit"));
        let mut torn = encode_table(&[0x0102, EMPTY_TABLE_ENTRY, 1], 4096);
        torn[2] = 0xFF; // entry 0 half old (EMPTY) half new: 0xFFFF0102... little-endian tear
        torn[3] = 0xFF;
        assert_eq!(decode_table_recovering(&torn, 3, 2), vec![EMPTY_TABLE_ENTRY, EMPTY_TABLE_ENTRY, 1]);
        let duplicate = encode_table(&[1, 1], 4096);
        assert!(decode_table(&duplicate, 2, 3).unwrap_err().to_string().contains("already used by table[0]"));
    }
}
