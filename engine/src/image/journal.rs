//! Committing metadata changes through the journal, and recycling it when full
//! (`docs/format.md` §7, `fvd-v1.md` §2.4–2.5).

use super::FvdImage;
use crate::device::WriteFlags;
use crate::env::ProgressPoint;
use crate::error::FvdError;
use crate::format::journal::{SectorFormat, encode_sector, pack_sectors};
use crate::format::table::clean_entry;
use crate::format::{DIRTY_TABLE_BIT, SECTOR};

/// The metadata change of one guest write.
#[derive(Debug, Clone, Default)]
pub(crate) struct MetadataChange {
    /// Guest sectors `(first, count)` whose blocks enter the image.
    pub(crate) bitmap: Option<(u64, u64)>,
    /// Chunks `first..end` whose entries to record.
    pub(crate) chunks: Option<(u64, u64)>,
}

impl FvdImage {
    /// Makes `change` durable in the journal, then applies it to the stale bitmap and clears the
    /// chunks' dirty bits. Hardened: the data device is flushed first (so data is durable before
    /// its record can be) and the record is written with FUA (durable before the acknowledgement).
    pub(crate) async fn commit(&self, change: MetadataChange) -> Result<(), FvdError> {
        let inner = &self.inner;
        let layout = inner.layout;
        if layout.journal_size == 0 {
            // No journal: metadata reaches disk only at clean close (v1's dirty-image rule).
            return Ok(());
        }
        if inner.hardened() {
            inner.devices.data().flush().await.map_err(FvdError::io("journal: flush data before the record"))?;
        }
        let entries: Option<(u32, Vec<u32>)> = change.chunks.map(|(first, end)| {
            let state = inner.state.borrow();
            let entries = state.table[first as usize..end as usize]
                .iter()
                .map(|&e| if inner.hardened() { clean_entry(e) } else { e })
                .collect();
            (first as u32, entries)
        });
        let sectors_per_chunk = layout.chunk_size / SECTOR;
        let format_probe = if inner.hardened() { SectorFormat::Hardened { epoch: 0 } } else { SectorFormat::V1 };
        let packed = pack_sectors(
            format_probe,
            change.bitmap,
            entries.as_ref().map(|(f, e)| (*f, e.as_slice())),
            sectors_per_chunk,
        )?;
        let count = packed.len() as u64;
        let first = self.allocate_journal_sectors(count).await?;
        let (epoch, sequence) = {
            let mut state = inner.state.borrow_mut();
            let sequence = state.journal.sequence;
            state.journal.sequence += count;
            (state.extension.map_or(0, |e| e.journal_epoch), sequence)
        };
        let format = if inner.hardened() { SectorFormat::Hardened { epoch } } else { SectorFormat::V1 };
        let mut bytes = Vec::with_capacity((count * SECTOR) as usize);
        for (i, records) in packed.iter().enumerate() {
            bytes.extend_from_slice(&encode_sector(format, sequence + i as u64, records));
        }
        let flags = if inner.hardened() { WriteFlags::FUA } else { WriteFlags::NONE };
        let offset = layout.journal_offset + first * SECTOR;
        let write = inner.devices.image.write_at(offset, &bytes, flags);
        inner.progress(ProgressPoint::JournalWriteSubmitted, first);
        let result = write.await;
        inner.progress(ProgressPoint::JournalWriteCompleted, first);
        let mut state = inner.state.borrow_mut();
        state.journal.ongoing -= 1;
        state.stats.journal_writes += 1;
        state.stats.journal_sectors += count;
        if result.is_ok() {
            if let Some((first_sector, sectors)) = change.bitmap
                && layout.has_base()
            {
                let first_block = first_sector * SECTOR / layout.block_size;
                let end_block = ((first_sector + sectors) * SECTOR).div_ceil(layout.block_size);
                debug_assert!(
                    state.fresh.all_set(first_block, end_block),
                    "a block is committed only after its data landed"
                );
                state.stale.set_range(first_block, end_block);
            }
            if let Some((first, end)) = change.chunks {
                for chunk in first..end {
                    if !state.unlanded.contains(&chunk) {
                        state.table[chunk as usize] &= !DIRTY_TABLE_BIT;
                    }
                }
            }
            debug_assert!(state.stale.is_subset_of(&state.fresh), "stale ⊆ fresh");
        }
        state.wake_all();
        drop(state);
        result.map_err(FvdError::io("journal write"))
    }

    /// Reserves `count` consecutive journal sectors, recycling the journal when it is full and
    /// no journal write is in flight.
    async fn allocate_journal_sectors(&self, count: u64) -> Result<u64, FvdError> {
        let inner = &self.inner;
        let total = inner.layout.journal_sectors();
        if count > total {
            return Err(FvdError::InvalidOption {
                option: "journal_size",
                value: inner.layout.journal_size.to_string(),
                rule: format!("too small for one write's {count} journal sectors"),
            });
        }
        loop {
            inner
                .until("engine: journal space or the end of a recycle", |s| {
                    !s.journal.recycling
                        && ((!s.journal.broken && s.journal.next_sector + count <= total) || s.journal.ongoing == 0)
                })
                .await;
            let recycle = {
                let mut state = inner.state.borrow_mut();
                if !state.journal.broken && state.journal.next_sector + count <= total {
                    let first = state.journal.next_sector;
                    state.journal.next_sector += count;
                    state.journal.ongoing += 1;
                    return Ok(first);
                }
                state.journal.recycling = true;
                true
            };
            if recycle {
                let result = self.recycle().await;
                let mut state = inner.state.borrow_mut();
                state.journal.recycling = false;
                state.wake_all();
                result?;
            }
        }
    }

    /// Writes the metadata home and starts a new journal round (`docs/format.md` §7). Runs with
    /// no journal write in flight.
    async fn recycle(&self) -> Result<(), FvdError> {
        let inner = &self.inner;
        assert_eq!(inner.state.borrow().journal.ongoing, 0, "a recycle runs with no journal write in flight");
        let round = inner.state.borrow().stats.recycles;
        inner.progress(ProgressPoint::RecycleBegin, round);
        self.write_metadata_home().await?;
        self.start_new_journal_round().await?;
        inner.state.borrow_mut().stats.recycles += 1;
        inner.progress(ProgressPoint::RecycleEnd, round);
        Ok(())
    }
}
