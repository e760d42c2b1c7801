//! Committing metadata changes through the journal, and recycling it when full
//! (`docs/format.md` §7, `fvd-v1.md` §2.4–2.5).

use super::FvdImage;
use crate::device::WriteFlags;
use crate::env::ProgressPoint;
use crate::error::FvdError;
use crate::format::journal::{SectorFormat, encode_sector, pack_sectors};
use crate::format::table::clean_entry;
use crate::format::{DIRTY_TABLE_BIT, SECTOR_BYTES};

/// The metadata change of one guest write.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MetadataChange {
    /// Guest sectors `(first, count)` whose blocks enter the image.
    pub(crate) bitmap: Option<(u64, u64)>,
    /// Chunks `first..end` whose entries to record.
    pub(crate) chunks: Option<(u64, u64)>,
}

/// Journal sectors one piece of a batch takes at most (one write each).
const BATCH_PIECE_SECTORS: u64 = 64;

impl FvdImage {
    /// Records a write's metadata change: group commit queues it (the write is acknowledged next,
    /// durable at the next commit); otherwise it is committed now ([`Self::commit`]).
    pub(crate) async fn record(&self, change: MetadataChange) -> Result<(), FvdError> {
        let inner = &self.inner;
        if !inner.group_commit() {
            return self.commit(change).await;
        }
        debug_assert!(change.bitmap.is_some() || change.chunks.is_some(), "a change changes something");
        let (queued, schedule) = {
            let mut state = inner.state.borrow_mut();
            if let Some((first, sectors)) = change.bitmap
                && inner.layout.has_base()
            {
                let block = inner.layout.block_size;
                assert!(
                    state
                        .fresh
                        .all_set(first * SECTOR_BYTES / block, ((first + sectors) * SECTOR_BYTES).div_ceil(block)),
                    "a change is queued only after its data landed"
                );
            }
            state.journal.queued.push(change);
            let schedule = !state.journal.commit_scheduled;
            state.journal.commit_scheduled = true;
            (state.journal.queued.len(), schedule)
        };
        inner.progress(ProgressPoint::RecordQueued, queued as u64);
        if schedule {
            // The first change of a batch starts its timer; a full queue commits at once.
            let image = self.clone();
            inner.spawn_background(
                "group commit",
                Box::pin(async move {
                    let delay = image.inner.env.sleep_ns(crate::image::GROUP_COMMIT_DELAY_NS);
                    let full = image.inner.until("engine: the group-commit delay or a full queue", |s| {
                        s.journal.queued.len() >= crate::image::GROUP_COMMIT_MAX_QUEUED || s.journal.closed
                    });
                    super::state::first_of(delay, full).await;
                    image.inner.state.borrow_mut().journal.commit_scheduled = false;
                    if !image.inner.state.borrow().journal.closed {
                        // An error leaves the changes queued: the next guest flush retries and reports it.
                        let _ = image.commit_queued(false).await;
                    }
                }),
            );
        }
        Ok(())
    }

    /// Group commit: makes every queued change durable. Waits for a commit in flight, then: flush
    /// the data device (the data of every record is durable before the record can be), write the
    /// records in pieces of sequential FUA journal writes, then apply them to the stale bitmap and
    /// the table's dirty bits. `guest_flush`: the data device is flushed even with nothing queued.
    pub(crate) async fn commit_queued(&self, guest_flush: bool) -> Result<(), FvdError> {
        let inner = &self.inner;
        inner.until("engine: the group commit in flight", |s| !s.journal.committing).await;
        let changes = {
            let mut state = inner.state.borrow_mut();
            assert!(!state.journal.committing, "commits are serialised");
            if state.journal.queued.is_empty() && !guest_flush {
                return Ok(());
            }
            state.journal.committing = true;
            std::mem::take(&mut state.journal.queued)
        };
        let result = self.commit_batch(&changes).await;
        let mut state = inner.state.borrow_mut();
        state.journal.committing = false;
        if result.is_err() {
            // Not durable: keep the changes for the next commit, oldest first.
            let newer = std::mem::replace(&mut state.journal.queued, changes);
            state.journal.queued.extend(newer);
        }
        state.wake_all();
        result
    }

    /// Writes `changes` as one batch (see [`Self::commit_queued`]).
    async fn commit_batch(&self, changes: &[MetadataChange]) -> Result<(), FvdError> {
        let inner = &self.inner;
        let layout = inner.layout;
        inner.progress(ProgressPoint::CommitDataFlushSubmitted, changes.len() as u64);
        inner.devices.data().flush().await.map_err(FvdError::io("group commit: flush data before the records"))?;
        if changes.is_empty() {
            return Ok(());
        }
        // Each change packs into self-contained sector units (a bitmap record sits in the same
        // unit as the table entries its blocks need), and units are never split across sectors,
        // so any prefix or subset of the batch's sectors that survives a crash is consistent.
        let sectors_per_chunk = layout.chunk_sectors();
        let probe = SectorFormat::Hardened { epoch: 0 };
        let capacity = probe.capacity();
        let mut sectors: Vec<Vec<crate::format::journal::JournalRecord>> = Vec::new();
        let mut used = capacity;
        for change in changes {
            let entries: Option<(u32, Vec<u32>)> = change.chunks.map(|(first, end)| {
                let state = inner.state.borrow();
                (first as u32, state.table[first as usize..end as usize].iter().map(|&e| clean_entry(e)).collect())
            });
            let units = pack_sectors(
                probe,
                change.bitmap,
                entries.as_ref().map(|(f, e)| (*f, e.as_slice())),
                sectors_per_chunk,
            )?;
            for unit in units {
                let len: usize = unit.iter().map(crate::format::journal::JournalRecord::encoded_len).sum();
                assert!(len <= capacity, "a packed unit fits one sector");
                if used + len > capacity {
                    sectors.push(Vec::new());
                    used = 0;
                }
                sectors.last_mut().expect("a sector was just started").extend(unit);
                used += len;
            }
        }
        let total = layout.journal_sectors();
        for piece in sectors.chunks(BATCH_PIECE_SECTORS.min(total) as usize) {
            self.append_sectors(piece, "group commit: journal write").await?;
        }
        let mut state = inner.state.borrow_mut();
        for change in changes {
            apply_committed(&mut state, &layout, change);
        }
        debug_assert!(state.stale.is_subset_of(&state.fresh), "stale ⊆ fresh");
        state.stats.group_commits += 1;
        state.stats.group_committed_changes += changes.len() as u64;
        drop(state);
        inner.progress(ProgressPoint::CommitDurable, changes.len() as u64);
        Ok(())
    }

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
        let sectors_per_chunk = layout.chunk_sectors();
        let format_probe = if inner.hardened() { SectorFormat::Hardened { epoch: 0 } } else { SectorFormat::V1 };
        let packed = pack_sectors(
            format_probe,
            change.bitmap,
            entries.as_ref().map(|(f, e)| (*f, e.as_slice())),
            sectors_per_chunk,
        )?;
        let result = self.append_sectors(&packed, "journal write").await;
        if result.is_ok() {
            let mut state = inner.state.borrow_mut();
            apply_committed(&mut state, &layout, &change);
            debug_assert!(state.stale.is_subset_of(&state.fresh), "stale ⊆ fresh");
        }
        result
    }

    /// Appends `sectors` (the records of each sector) to the journal in one write: allocates them
    /// (recycling a full journal), stamps the epoch and sequence, writes them (hardened: FUA, so
    /// they are durable when the write completes), counts them. `context` names a failure.
    async fn append_sectors(
        &self,
        sectors: &[Vec<crate::format::journal::JournalRecord>],
        context: &'static str,
    ) -> Result<(), FvdError> {
        let inner = &self.inner;
        let count = sectors.len() as u64;
        assert!(count > 0, "a journal write holds at least one sector");
        let first = self.allocate_journal_sectors(count).await?;
        let (epoch, sequence) = {
            let mut state = inner.state.borrow_mut();
            let sequence = state.journal.sequence;
            state.journal.sequence += count;
            (state.extension.map_or(0, |e| e.journal_epoch), sequence)
        };
        let format = if inner.hardened() { SectorFormat::Hardened { epoch } } else { SectorFormat::V1 };
        let mut bytes = Vec::with_capacity((count * SECTOR_BYTES) as usize);
        for (i, records) in sectors.iter().enumerate() {
            bytes.extend_from_slice(&encode_sector(format, sequence + i as u64, records));
        }
        let flags = if inner.hardened() { WriteFlags::FUA } else { WriteFlags::NONE };
        let write = inner.devices.image.write_at(inner.layout.journal_offset + first * SECTOR_BYTES, &bytes, flags);
        inner.progress(ProgressPoint::JournalWriteSubmitted, first);
        let result = write.await;
        inner.progress(ProgressPoint::JournalWriteCompleted, first);
        let mut state = inner.state.borrow_mut();
        assert!(state.journal.ongoing > 0, "a journal write was allocated");
        state.journal.ongoing -= 1;
        state.stats.journal_writes += 1;
        state.stats.journal_sectors += count;
        state.wake_all();
        drop(state);
        result.map_err(FvdError::io(context))
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

/// A durable record's effect on memory: its blocks become stale (guaranteed on disk) and its
/// chunks' entries clean.
fn apply_committed(state: &mut super::state::State, layout: &crate::format::Layout, change: &MetadataChange) {
    if let Some((first_sector, sectors)) = change.bitmap
        && layout.has_base()
    {
        let first_block = first_sector * SECTOR_BYTES / layout.block_size;
        let end_block = ((first_sector + sectors) * SECTOR_BYTES).div_ceil(layout.block_size);
        assert!(state.fresh.all_set(first_block, end_block), "a block is committed only after its data landed");
        state.stale.set_range(first_block, end_block);
    }
    if let Some((first, end)) = change.chunks {
        for chunk in first..end {
            if !state.unlanded.contains(&chunk) {
                state.table[chunk as usize] &= !DIRTY_TABLE_BIT;
            }
        }
    }
}
