//! Copying base-image data into the image: copy-on-read and the prefetcher's stores
//! (`fvd-v1.md` §3.4–3.5). Copies are soft writes: they set only the fresh bitmap, are never
//! journaled, and reach disk only through a recycle or a clean close. A crash loses them and the
//! blocks are read (and copied) from the base again, which is correct because the base never
//! changes.

use super::FvdImage;
use super::state::{RangeLock, State};
use crate::env::ProgressPoint;
use crate::error::FvdError;
use crate::format::SECTOR_BYTES;

/// Who copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyKind {
    /// Copy-on-read.
    CopyOnRead,
    /// Whole-image prefetch.
    Prefetch,
}

impl FvdImage {
    /// True when reads copy base blocks into the image.
    pub(crate) fn copy_on_read_enabled(&self) -> bool {
        let state = self.inner.state.borrow();
        !self.inner.options.read_only
            && self.inner.options.copy_on_read.unwrap_or(state.header.copy_on_read)
            && !state.header.all_data_in_fvd_img
    }

    /// `[start, end)` rounded out to whole blocks and clipped to the base image.
    pub(crate) fn block_round(&self, start: u64, end: u64) -> (u64, u64) {
        let layout = self.inner.layout;
        let block = layout.block_sectors();
        let base = layout.base_sectors();
        let first = start / block * block;
        let last = (end.div_ceil(block) * block).min(base).max(end.min(base));
        (first, last.max(first))
    }

    /// v1's `find_region_in_base_img`: the first run of blocks in `[from, to)` (sectors) that are
    /// still in the base (fresh bit 0), trimmed so it overlaps no copy lock and no in-flight guest
    /// write. `None` if nothing is left to copy there.
    pub(crate) fn find_region(&self, state: &State, from: u64, to: u64) -> Option<(u64, u64)> {
        let layout = self.inner.layout;
        let block = layout.block_sectors();
        let to = to.min(layout.base_sectors());
        let mut first_block = from.div_ceil(block);
        let end_block = to.div_ceil(block);
        while first_block < end_block && state.fresh.get(first_block) {
            first_block += 1;
        }
        if first_block >= end_block {
            return None;
        }
        let mut last_block = first_block;
        while last_block < end_block && !state.fresh.get(last_block) {
            last_block += 1;
        }
        let mut begin = first_block * block;
        let mut end = (last_block * block).min(to);
        // Trim against locks: move the start past a lock holding it, the end to the start of the
        // first lock beginning inside.
        for locks in [&state.copy_locks, &state.write_locks] {
            for lock in locks.iter() {
                if lock.start <= begin && begin < lock.end {
                    begin = lock.end.div_ceil(block) * block;
                }
            }
            for lock in locks.iter() {
                if lock.start < end && lock.end > begin {
                    end = end.min(lock.start / block * block);
                }
            }
        }
        (begin < end).then_some((begin, end))
    }

    /// Stores base data already read into `data` for sectors `[start, end)` under a copy lock the
    /// caller took; sets the fresh bits on success. Never journaled.
    pub(crate) async fn store_copy(
        &self,
        kind: CopyKind,
        start: u64,
        data: &[u8],
        lock: RangeLock,
    ) -> Result<(), FvdError> {
        let inner = &self.inner;
        let block = inner.layout.block_sectors();
        {
            // A copy never overwrites newer guest data.
            let state = inner.state.borrow();
            for b in lock.start / block..lock.end.div_ceil(block) {
                assert!(!state.fresh.get(b), "a copy into block {b}, which already holds newer data");
            }
        }
        let result = self.store_data(start, data).await.map(|_| ());
        inner.progress(ProgressPoint::CopyStored, start);
        let mut state = inner.state.borrow_mut();
        if result.is_ok() {
            state.fresh.set_range(start / block, (start + data.len() as u64 / SECTOR_BYTES).div_ceil(block));
            match kind {
                CopyKind::CopyOnRead => {
                    state.stats.copy_on_read_stores += 1;
                    state.stats.copy_on_read_bytes += data.len() as u64;
                }
                CopyKind::Prefetch => state.stats.prefetch_bytes += data.len() as u64,
            }
        }
        state.copy_locks.remove(lock.id);
        state.wake_all();
        result
    }

    /// After a guest read: copies the base blocks in `whole` (starting at sector `start`) into the
    /// image in the background, region by region. Like v1, only the first region checks the cap
    /// on outstanding copy-on-read bytes.
    pub(crate) fn spawn_copy_on_read(&self, start: u64, whole: Vec<u8>) {
        let image = self.clone();
        let end = start + whole.len() as u64 / SECTOR_BYTES;
        let task = async move {
            let inner = &image.inner;
            let mut from = start;
            let mut first = true;
            while from < end {
                let picked = {
                    let mut state = inner.state.borrow_mut();
                    let cap = state.copy_on_read_cap_bytes;
                    if first && state.copy_on_read_outstanding_bytes >= cap {
                        state.stats.copy_on_read_skipped += 1;
                        None
                    } else {
                        image.find_region(&state, from, end).map(|(s, e)| {
                            let lock = RangeLock { id: state.lock_id(), start: s, end: e };
                            state.copy_locks.insert(lock);
                            state.copy_on_read_outstanding_bytes += (e - s) * SECTOR_BYTES;
                            (s, e, lock)
                        })
                    }
                };
                let Some((s, e, lock)) = picked else { break };
                first = false;
                let data = &whole[((s - start) * SECTOR_BYTES) as usize..((e - start) * SECTOR_BYTES) as usize];
                let _ = image.store_copy(CopyKind::CopyOnRead, s, data, lock).await;
                inner.state.borrow_mut().copy_on_read_outstanding_bytes -= (e - s) * SECTOR_BYTES;
                from = e;
            }
            let mut state = inner.state.borrow_mut();
            assert!(state.copy_on_read_tasks > 0, "a copy-on-read task ends once");
            state.copy_on_read_tasks -= 1;
            state.wake_all();
        };
        self.inner.state.borrow_mut().copy_on_read_tasks += 1;
        self.inner.spawn_background("copy-on-read", Box::pin(task));
    }
}
