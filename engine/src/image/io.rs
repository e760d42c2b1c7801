//! Guest reads and writes: the fast and slow paths, copy-on-write of partial blocks, and the
//! data store of plain and compact images (`fvd-v1.md` §3.2–3.6).

use super::FvdImage;
use super::journal::MetadataChange;
use super::state::RangeLock;
use crate::device::WriteFlags;
use crate::env::ProgressPoint;
use crate::error::FvdError;
use crate::format::{DIRTY_TABLE_BIT, EMPTY_TABLE_ENTRY, SECTOR_BYTES, round_up};

/// How many chunks a raise of the allocation high-water mark covers: one extension write per this
/// many allocations, and at most this many chunks left unused after a crash.
const ALLOCATION_MARK_STEP_CHUNKS: u64 = 64;

/// Where a run of guest sectors is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Image,
    Base,
}

impl FvdImage {
    fn validate(&self, kind: &'static str, offset_bytes: u64, len_bytes: u64) -> Result<(u64, u64), FvdError> {
        let disk_size_bytes = self.inner.layout.virtual_size;
        let bad = |rule| Err(FvdError::BadRequest { kind, offset_bytes, len_bytes, disk_size_bytes, rule });
        if !offset_bytes.is_multiple_of(SECTOR_BYTES) || !len_bytes.is_multiple_of(SECTOR_BYTES) {
            return bad("offset and length must be multiples of 512");
        }
        if len_bytes == 0 {
            return bad("length must be positive");
        }
        if offset_bytes.checked_add(len_bytes).is_none_or(|end| end > disk_size_bytes) {
            return bad("lies beyond the end of the virtual disk");
        }
        Ok((offset_bytes / SECTOR_BYTES, (offset_bytes + len_bytes) / SECTOR_BYTES))
    }

    /// True when no bitmap work is needed for a request starting at sector `start`.
    fn all_in_image(&self, start: u64) -> bool {
        let layout = self.inner.layout;
        let state = self.inner.state.borrow();
        state.header.all_data_in_fvd_img || !layout.has_base() || start * SECTOR_BYTES >= layout.base_size
    }

    /// Reads `buf.len()` bytes of the virtual disk at `offset_bytes` (both multiples of 512).
    ///
    /// Errors: [`FvdError::BadRequest`]; [`FvdError::Io`] (the image stays consistent).
    pub async fn read(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), FvdError> {
        // Guest latency feeds only the prefetch policy: no clock reads without prefetch.
        let timed = self.inner.state.borrow().prefetch.is_some();
        let started_ns = if timed { self.inner.env.now_ns() } else { 0 };
        let result = self.read_inner(offset_bytes, buf).await;
        if timed {
            self.note_guest_latency(self.inner.env.now_ns() - started_ns);
        }
        result
    }

    async fn read_inner(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), FvdError> {
        let (start, end) = self.validate("read", offset_bytes, buf.len() as u64)?;
        if self.all_in_image(start) {
            self.load_data(start, buf).await?;
        } else {
            // Snapshot the fresh bitmap now: it may change while the reads are in flight.
            let runs = self.read_runs(start, end);
            let copy_on_read = self.copy_on_read_enabled();
            let mut copies = Vec::new();
            for (source, run_start, run_end) in runs {
                let out = &mut buf
                    [((run_start - start) * SECTOR_BYTES) as usize..((run_end - start) * SECTOR_BYTES) as usize];
                match source {
                    Source::Image => self.load_data(run_start, out).await?,
                    Source::Base if copy_on_read => {
                        // Read whole blocks from the base (clipped to its end) so they can be copied.
                        let (copy_start, copy_end) = self.block_round(run_start, run_end);
                        let mut whole = vec![0u8; ((copy_end - copy_start) * SECTOR_BYTES) as usize];
                        self.read_base(copy_start, &mut whole).await?;
                        let from = ((run_start - copy_start) * SECTOR_BYTES) as usize;
                        out.copy_from_slice(&whole[from..from + out.len()]);
                        copies.push((copy_start, whole));
                    }
                    Source::Base => self.read_base(run_start, out).await?,
                }
            }
            // The guest read is acknowledged first; the copies run in the background.
            for (copy_start, whole) in copies {
                self.spawn_copy_on_read(copy_start, whole);
            }
        }
        self.inner.state.borrow_mut().stats.reads += 1;
        Ok(())
    }

    /// Splits `[start, end)` into runs by where the fresh bitmap says the data is.
    fn read_runs(&self, start: u64, end: u64) -> Vec<(Source, u64, u64)> {
        let layout = self.inner.layout;
        let state = self.inner.state.borrow();
        let block_sectors = layout.block_sectors();
        let base_sectors = layout.base_sectors();
        let mut runs: Vec<(Source, u64, u64)> = Vec::new();
        let mut at = start;
        while at < end {
            let block = at / block_sectors;
            // Sectors at or beyond the base end always live in the image, even inside a block
            // that straddles the end (v1 decides per sector there, `fvd-v1.md` §1.3).
            let block_end = (block + 1) * block_sectors;
            let next = if at < base_sectors { block_end.min(base_sectors) } else { block_end }.min(end);
            let source = if at >= base_sectors || state.fresh.get(block) { Source::Image } else { Source::Base };
            match runs.last_mut() {
                Some((last, _, last_end)) if *last == source && *last_end == at => *last_end = next,
                _ => runs.push((source, at, next)),
            }
            at = next;
        }
        runs
    }

    /// Reads base-image sectors; bytes beyond the base image's end read as zeros.
    async fn read_base(&self, start: u64, out: &mut [u8]) -> Result<(), FvdError> {
        let base = self.inner.devices.base.as_ref().expect("an image with a bitmap has a base device");
        let base_len = self.inner.layout.base_size.min(base.len_bytes());
        let offset = start * SECTOR_BYTES;
        let available = base_len.saturating_sub(offset).min(out.len() as u64) as usize;
        if available > 0 {
            base.read_at(offset, &mut out[..available]).await.map_err(FvdError::io("base image read"))?;
        }
        out[available..].fill(0);
        Ok(())
    }

    /// Reads image data for guest sectors starting at `start`.
    async fn load_data(&self, start: u64, out: &mut [u8]) -> Result<(), FvdError> {
        let layout = self.inner.layout;
        let data = self.inner.devices.data();
        if !layout.compact {
            return data
                .read_at(layout.data_offset + start * SECTOR_BYTES, out)
                .await
                .map_err(FvdError::io("image data read"));
        }
        let mut done = 0usize;
        while done < out.len() {
            let offset = start * SECTOR_BYTES + done as u64;
            let chunk = offset / layout.chunk_size;
            let in_chunk = offset % layout.chunk_size;
            let n = ((layout.chunk_size - in_chunk) as usize).min(out.len() - done);
            let physical = self.inner.state.borrow().physical_chunk(chunk);
            match physical {
                None => out[done..done + n].fill(0),
                Some(id) => data
                    .read_at(layout.data_offset + id * layout.chunk_size + in_chunk, &mut out[done..done + n])
                    .await
                    .map_err(FvdError::io("image data read"))?,
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset_bytes` (both multiples of 512). Acknowledged (returns `Ok`) once
    /// the data landed and, if the write changed metadata, its change is queued for the next group
    /// commit (hardened, [`super::CommitMode::Group`]: durable once a later guest flush
    /// completes), its journal record is durable ([`super::CommitMode::Sync`]), or its record
    /// was written (v1).
    ///
    /// Errors: [`FvdError::BadRequest`], [`FvdError::ReadOnly`], [`FvdError::NoSpace`],
    /// [`FvdError::Io`]; after an error the image stays consistent and later requests work.
    pub async fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<(), FvdError> {
        let timed = self.inner.state.borrow().prefetch.is_some();
        let started_ns = if timed { self.inner.env.now_ns() } else { 0 };
        let result = self.write_inner(offset_bytes, data).await;
        if timed {
            self.note_guest_latency(self.inner.env.now_ns() - started_ns);
        }
        result
    }

    async fn write_inner(&self, offset_bytes: u64, data: &[u8]) -> Result<(), FvdError> {
        let (start, end) = self.validate("write", offset_bytes, data.len() as u64)?;
        if self.inner.options.read_only {
            return Err(FvdError::ReadOnly);
        }
        let layout = self.inner.layout;
        let block_sectors = layout.block_size.max(SECTOR_BYTES) / SECTOR_BYTES;
        let fast = self.all_in_image(start) || {
            let state = self.inner.state.borrow();
            state.stale.all_set(start / block_sectors, end.div_ceil(block_sectors))
        };
        if fast {
            let table_changed = self.store_data(start, data).await?;
            if let Some(chunks) = table_changed {
                self.record(MetadataChange { bitmap: None, chunks: Some(chunks) }).await?;
            }
            let mut state = self.inner.state.borrow_mut();
            state.stats.writes += 1;
            state.stats.fast_path_writes += 1;
            drop(state);
            self.inner.progress(ProgressPoint::GuestAck, start);
            return Ok(());
        }
        self.write_slow(start, end, data).await
    }

    /// The slow path: copy-on-write of partial blocks under a copy lock, then the journal.
    async fn write_slow(&self, start: u64, end: u64, data: &[u8]) -> Result<(), FvdError> {
        let inner = &self.inner;
        let layout = inner.layout;
        let block_sectors = layout.block_sectors();
        let base_sectors = layout.base_sectors();
        // Wait for copies overlapping this write (dependent writes), classify, and make sure the
        // base data this write copies does not land over an in-flight guest write (a write that
        // covers a whole block takes no copy lock, so it is found through the write locks).
        // Checks and lock-taking happen in one step with no await between: no hold-and-wait.
        {
            let mut state = inner.state.borrow_mut();
            if state.copy_locks.overlaps(start, end) {
                state.stats.dependent_writes += 1;
            }
        }
        let (merged_start, merged_end, copy_lock, write_lock) = loop {
            inner
                .until("engine: a copy overlapping this write (dependent write)", |s| {
                    !s.copy_locks.overlaps(start, end)
                })
                .await;
            let blocked_on = {
                let mut state = inner.state.borrow_mut();
                assert!(!state.copy_locks.overlaps(start, end), "classification runs with no overlapping copy");
                let head_block = start / block_sectors;
                let tail_block = (end - 1) / block_sectors;
                let head_partial = !start.is_multiple_of(block_sectors)
                    && head_block * block_sectors < base_sectors
                    && !state.fresh.get(head_block);
                let tail_partial =
                    !end.is_multiple_of(block_sectors) && end < base_sectors && !state.fresh.get(tail_block);
                let merged_start = if head_partial { head_block * block_sectors } else { start };
                let merged_end =
                    if tail_partial { ((tail_block + 1) * block_sectors).min(base_sectors).max(end) } else { end };
                let copy_range = match (head_partial, tail_partial) {
                    (true, true) => Some((merged_start, merged_end)),
                    (true, false) => Some((merged_start, ((head_block + 1) * block_sectors).min(merged_end))),
                    (false, true) => Some((tail_block * block_sectors, merged_end)),
                    (false, false) => None,
                };
                match copy_range {
                    Some((s, e)) if state.write_locks.overlaps(s, e) => Err((s, e)),
                    _ => {
                        let copy_lock = copy_range.map(|(s, e)| {
                            let lock = RangeLock { id: state.lock_id(), start: s, end: e };
                            state.copy_locks.insert(lock);
                            lock
                        });
                        let write_lock = RangeLock { id: state.lock_id(), start, end };
                        state.write_locks.insert(write_lock);
                        Ok((merged_start, merged_end, copy_lock, write_lock))
                    }
                }
            };
            match blocked_on {
                Ok(locked) => break locked,
                Err((s, e)) => {
                    inner
                        .until("engine: in-flight writes under this copy-on-write", |state| {
                            !state.write_locks.overlaps(s, e)
                        })
                        .await
                }
            }
        };
        let result = self.copy_on_write_store(start, end, merged_start, merged_end, data, copy_lock).await;
        let table_change = {
            let mut state = inner.state.borrow_mut();
            if result.is_ok() {
                // The data landed: the blocks are in the image (fresh), before any journal record.
                state.fresh.set_range(start / block_sectors, end.div_ceil(block_sectors));
            }
            if let Some(lock) = copy_lock {
                state.copy_locks.remove(lock.id);
            }
            state.write_locks.remove(write_lock.id);
            state.wake_all();
            result?
        };
        self.record(MetadataChange { bitmap: Some((start, end - start)), chunks: table_change }).await?;
        let mut state = inner.state.borrow_mut();
        state.stats.writes += 1;
        if copy_lock.is_some() {
            state.stats.copy_on_write_writes += 1;
            state.stats.copy_on_write_bytes += ((start - merged_start) + (merged_end - end)) * SECTOR_BYTES;
        }
        drop(state);
        inner.progress(ProgressPoint::GuestAck, start);
        Ok(())
    }

    /// Reads the base parts of partial blocks, merges them around the guest data and stores the
    /// merged range. Returns the chunks whose table entries the journal must record.
    async fn copy_on_write_store(
        &self,
        start: u64,
        end: u64,
        merged_start: u64,
        merged_end: u64,
        data: &[u8],
        copy_lock: Option<RangeLock>,
    ) -> Result<Option<(u64, u64)>, FvdError> {
        if merged_start == start && merged_end == end {
            return self.store_data(start, data).await;
        }
        let mut merged = vec![0u8; ((merged_end - merged_start) * SECTOR_BYTES) as usize];
        let head = ((start - merged_start) * SECTOR_BYTES) as usize;
        let tail = ((end - merged_start) * SECTOR_BYTES) as usize;
        if head > 0 {
            self.read_base(merged_start, &mut merged[..head])
                .await
                .map_err(|e| relabel(e, "copy-on-write base read"))?;
        }
        if tail < merged.len() {
            self.read_base(end, &mut merged[tail..]).await.map_err(|e| relabel(e, "copy-on-write base read"))?;
        }
        merged[head..tail].copy_from_slice(data);
        if let Some(lock) = copy_lock {
            // A copy never overwrites newer guest data: the copied blocks are still in the base.
            let state = self.inner.state.borrow();
            let block_sectors = self.inner.layout.block_sectors();
            for block in lock.start / block_sectors..lock.end.div_ceil(block_sectors) {
                assert!(
                    !state.fresh.get(block) || (block * block_sectors >= start && (block + 1) * block_sectors <= end),
                    "copy-on-write into block {block}, which already holds newer data"
                );
            }
        }
        self.store_data(merged_start, &merged).await
    }

    /// Writes guest sectors starting at `start` into the image, allocating chunks (compact).
    /// Returns `Some(first_chunk, end_chunk)` when a touched chunk is not yet committed, so the
    /// journal must record the table entries.
    pub(crate) async fn store_data(&self, start: u64, data: &[u8]) -> Result<Option<(u64, u64)>, FvdError> {
        let inner = &self.inner;
        let layout = inner.layout;
        let device = inner.devices.data();
        if !layout.compact {
            device
                .write_at(layout.data_offset + start * SECTOR_BYTES, data, WriteFlags::NONE)
                .await
                .map_err(FvdError::io("image data write"))?;
            return Ok(None);
        }
        let offset = start * SECTOR_BYTES;
        let first_chunk = offset / layout.chunk_size;
        let end_chunk = (offset + data.len() as u64).div_ceil(layout.chunk_size);
        let newly_allocated = self.allocate_chunks(first_chunk, end_chunk).await?;
        let mut done = 0usize;
        let mut result = Ok(());
        while done < data.len() {
            let at = offset + done as u64;
            let chunk = at / layout.chunk_size;
            let in_chunk = at % layout.chunk_size;
            let n = ((layout.chunk_size - in_chunk) as usize).min(data.len() - done);
            let id = inner.state.borrow().physical_chunk(chunk).expect("chunks are allocated before the store");
            if let Err(error) = device
                .write_at(
                    layout.data_offset + id * layout.chunk_size + in_chunk,
                    &data[done..done + n],
                    WriteFlags::NONE,
                )
                .await
            {
                result = Err(FvdError::io("image data write")(error));
                break;
            }
            done += n;
        }
        let mut state = inner.state.borrow_mut();
        if result.is_ok() {
            // Data landed in every touched chunk, including chunks an earlier, failed write
            // allocated: each now holds data and its mapping may go home.
            for chunk in first_chunk..end_chunk {
                state.unlanded.remove(&chunk);
            }
        }
        drop(newly_allocated);
        result?;
        let uncommitted = (first_chunk..end_chunk)
            .any(|c| state.table[c as usize] & DIRTY_TABLE_BIT != 0 && state.table[c as usize] != EMPTY_TABLE_ENTRY);
        Ok(uncommitted.then_some((first_chunk, end_chunk)))
    }

    /// Allocates every empty chunk in `first..end`, raising the allocation mark and growing the
    /// storage as needed (one task at a time). Returns the chunks allocated by this call.
    async fn allocate_chunks(&self, first: u64, end: u64) -> Result<Vec<u64>, FvdError> {
        enum Step {
            AlreadyMapped,
            Allocated,
            RaiseMark,
            Grow { storage_chunks: u64, used_chunks: u64 },
        }
        let inner = &self.inner;
        let layout = inner.layout;
        let mut allocated = Vec::new();
        for chunk in first..end {
            loop {
                inner.until("engine: a storage grow or allocation-mark write", |s| !s.growing).await;
                let step = {
                    let mut state = inner.state.borrow_mut();
                    let at_mark =
                        inner.hardened() && state.extension.is_some_and(|e| state.used_chunks >= e.allocated_chunks);
                    if state.table[chunk as usize] != EMPTY_TABLE_ENTRY {
                        Step::AlreadyMapped
                    } else if at_mark {
                        state.growing = true;
                        Step::RaiseMark
                    } else if state.used_chunks < state.storage_chunks {
                        let id = state.used_chunks;
                        state.used_chunks += 1;
                        state.table[chunk as usize] = id as u32 | DIRTY_TABLE_BIT;
                        state.unlanded.insert(chunk);
                        state.stats.chunks_allocated += 1;
                        Step::Allocated
                    } else {
                        state.growing = true;
                        Step::Grow { storage_chunks: state.storage_chunks, used_chunks: state.used_chunks }
                    }
                };
                match step {
                    Step::AlreadyMapped => break,
                    Step::Allocated => {
                        allocated.push(chunk);
                        break;
                    }
                    Step::RaiseMark => {
                        let raised = self.raise_allocation_mark(ALLOCATION_MARK_STEP_CHUNKS).await;
                        let mut state = inner.state.borrow_mut();
                        state.growing = false;
                        state.wake_all();
                        drop(state);
                        raised?;
                    }
                    Step::Grow { storage_chunks, used_chunks } => {
                        let grow_chunks = (layout.storage_grow_unit / layout.chunk_size).max(1);
                        // Grow by whole units until the next chunk to hand out fits.
                        let units = (used_chunks + 1).saturating_sub(storage_chunks).div_ceil(grow_chunks).max(1);
                        let target_chunks = storage_chunks + grow_chunks * units;
                        let new_len = round_up(layout.data_offset + target_chunks * layout.chunk_size, SECTOR_BYTES);
                        let grown = inner.devices.data().set_len(new_len).await;
                        let mut state = inner.state.borrow_mut();
                        state.growing = false;
                        state.wake_all();
                        match grown {
                            Ok(()) => {
                                state.storage_chunks = target_chunks;
                                state.stats.storage_grows += 1;
                            }
                            Err(_) => {
                                return Err(FvdError::NoSpace {
                                    chunk,
                                    storage_bytes: storage_chunks * layout.chunk_size,
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(allocated)
    }
}

fn relabel(error: FvdError, context: &'static str) -> FvdError {
    match error {
        FvdError::Io { source, .. } => FvdError::Io { context, source },
        other => other,
    }
}
