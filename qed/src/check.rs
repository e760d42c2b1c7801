//! `check` and repair with QEMU's semantics (`block/qed-check.c`; `docs/qed.md` §3): invalid
//! table offsets are corruptions (zeroed when fixing), a cluster referenced twice is a corruption
//! (never fixed), clusters nothing references are leaks (counted, never reclaimed).

use std::collections::BTreeSet;

use fvd_contract::WriteFlags;

use crate::format::{F_NEED_CHECK, QedError, ZERO_CLUSTER, table_entries_into};
use crate::image::{QedImage, io};

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QedCheckReport {
    /// Corruptions found (fixed ones included).
    pub corruptions: u64,
    /// Corruptions fixed (invalid offsets zeroed).
    pub corruptions_fixed: u64,
    /// Clusters after the header that nothing references.
    pub leaks: u64,
    /// Data clusters referenced.
    pub allocated_clusters: u64,
    /// One line per corruption, naming the entry.
    pub messages: Vec<String>,
}

impl QedCheckReport {
    /// True if nothing is left corrupt (leaks are not corruption).
    pub fn is_consistent(&self) -> bool {
        self.corruptions == self.corruptions_fixed
    }
}

impl QedImage {
    /// Checks the tables against the file; with `fix`, zeroes invalid L1 and L2 entries and
    /// writes the repaired tables back (the image must be writable), then, if nothing is left
    /// corrupt, flushes and clears NEED_CHECK (QEMU's `qed_check` with `fix`).
    ///
    /// Errors: [`QedError::Io`], or [`QedError::Corrupt`] when fixing a read-only image.
    pub async fn check(&self, fix: bool) -> Result<QedCheckReport, QedError> {
        if fix && !self.writable {
            return Err(crate::format::corrupt("open mode", "read-only", "repair needs a writable image"));
        }
        let header = self.header();
        let cluster = header.cluster_bytes;
        let file_clusters = self.file_bytes.get() / cluster;
        let header_clusters = header.header_clusters;
        let mut report = QedCheckReport::default();
        let mut used: BTreeSet<u64> = BTreeSet::new();
        let mark = |first: u64, count: u64, used: &mut BTreeSet<u64>| -> bool {
            let fresh = (first..first + count).all(|c| !used.contains(&c));
            used.extend(first..first + count);
            fresh
        };
        mark(header.l1_offset / cluster, header.table_clusters, &mut used);
        let valid = |offset: u64, clusters: u64| {
            offset.is_multiple_of(cluster)
                && offset / cluster >= header_clusters
                && offset / cluster + clusters <= file_clusters
        };
        let l1: Vec<u64> = self.l1.borrow().clone();
        let mut l1_fixed = false;
        // One buffer and one entry list for every L2 table read, not two allocations per table.
        let mut bytes = vec![0u8; header.table_bytes() as usize];
        let mut table: Vec<u64> = Vec::new();
        for (l1_index, &l2_offset) in l1.iter().enumerate() {
            if l2_offset == 0 {
                continue;
            }
            if !valid(l2_offset, header.table_clusters) {
                report.corruptions += 1;
                report.messages.push(format!("L1[{l1_index}] = {l2_offset:#x}: not a valid L2 table offset"));
                if fix {
                    self.l1.borrow_mut()[l1_index] = 0;
                    report.corruptions_fixed += 1;
                    l1_fixed = true;
                }
                continue;
            }
            if !mark(l2_offset / cluster, header.table_clusters, &mut used) {
                report.corruptions += 1;
                report.messages.push(format!("L1[{l1_index}] = {l2_offset:#x}: clusters already in use"));
                continue;
            }
            self.image.read_at(l2_offset, &mut bytes).await.map_err(io("check: read L2 table"))?;
            table_entries_into(&bytes, &mut table);
            let mut l2_fixed = false;
            // Most entries are unallocated (0) or zero clusters (1): eight at a time are passed
            // over when none is anything else (`entry & !ZERO_CLUSTER` is 0 for 0 and 1 only).
            for (chunk_index, chunk) in table.chunks_mut(8).enumerate() {
                if chunk.iter().fold(0, |any, entry| any | (entry & !ZERO_CLUSTER)) == 0 {
                    continue;
                }
                for (in_chunk, entry) in chunk.iter_mut().enumerate() {
                    let l2_index = chunk_index * 8 + in_chunk;
                    if *entry == 0 || *entry == ZERO_CLUSTER {
                        continue;
                    }
                    report.allocated_clusters += 1;
                    if !valid(*entry, 1) {
                        report.corruptions += 1;
                        report
                            .messages
                            .push(format!("L2[{l1_index}][{l2_index}] = {:#x}: not a valid cluster offset", *entry));
                        if fix {
                            *entry = 0;
                            report.corruptions_fixed += 1;
                            l2_fixed = true;
                        }
                        continue;
                    }
                    if !mark(*entry / cluster, 1, &mut used) {
                        report.corruptions += 1;
                        report
                            .messages
                            .push(format!("L2[{l1_index}][{l2_index}] = {:#x}: cluster referenced twice", *entry));
                    }
                }
            }
            if l2_fixed {
                let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
                self.image.write_at(l2_offset, &bytes, WriteFlags::NONE).await.map_err(io("check: write L2"))?;
                self.l2_cache.borrow_mut().remove(&l2_offset);
            }
        }
        if l1_fixed {
            let bytes: Vec<u8> = self.l1.borrow().iter().flat_map(|e| e.to_le_bytes()).collect();
            self.image.write_at(header.l1_offset, &bytes, WriteFlags::NONE).await.map_err(io("check: write L1"))?;
        }
        report.leaks = (header_clusters..file_clusters).filter(|c| !used.contains(c)).count() as u64;
        if fix && report.is_consistent() && header.needs_check() {
            self.image.flush().await.map_err(io("check: flush"))?;
            self.header.borrow_mut().features &= !F_NEED_CHECK;
            let bytes = self.header.borrow().encode();
            self.image.write_at(0, &bytes, WriteFlags::NONE).await.map_err(io("check: clear NEED_CHECK"))?;
            self.image.flush().await.map_err(io("check: flush"))?;
        }
        Ok(report)
    }
}
