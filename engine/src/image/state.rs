//! The in-memory state of an open image, the wait queue tasks park on, and the range locks.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::format::{Bitmap, DIRTY_TABLE_BIT, EMPTY_TABLE_ENTRY, Header, HeaderExtension};

/// A sector range `[start, end)` held by an in-flight operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RangeLock {
    pub(crate) id: u64,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// A set of range locks (v1's `copy_locks` and `write_locks`, `fvd-v1.md` §3.4).
#[derive(Debug, Default)]
pub(crate) struct LockSet {
    locks: Vec<RangeLock>,
}

impl LockSet {
    pub(crate) fn overlaps(&self, start: u64, end: u64) -> bool {
        self.locks.iter().any(|l| l.start < end && start < l.end)
    }

    pub(crate) fn insert(&mut self, lock: RangeLock) {
        assert!(lock.start < lock.end, "empty lock {lock:?}");
        self.locks.push(lock);
    }

    pub(crate) fn remove(&mut self, id: u64) {
        let before = self.locks.len();
        self.locks.retain(|l| l.id != id);
        assert_eq!(before, self.locks.len() + 1, "lock {id} released once");
    }

    pub(crate) fn len(&self) -> usize {
        self.locks.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &RangeLock> {
        self.locks.iter()
    }
}

/// Journal allocation state (`fvd-v1.md` §2.5).
#[derive(Debug, Default)]
pub(crate) struct JournalState {
    /// Next free journal sector.
    pub(crate) next_sector: u64,
    /// Journal writes in flight.
    pub(crate) ongoing: u32,
    /// A recycle is running.
    pub(crate) recycling: bool,
    /// Append sequence number stamped in hardened sectors.
    pub(crate) sequence: u64,
    /// A journal round's extension write failed: recycle before the next record.
    pub(crate) broken: bool,
    /// Group commit: changes whose data landed, acknowledged, waiting for the next commit.
    pub(crate) queued: Vec<super::journal::MetadataChange>,
    /// Group commit: a batch is being committed (commits are serialised).
    pub(crate) committing: bool,
    /// Group commit: a background commit is scheduled (the delay timer or the size threshold).
    pub(crate) commit_scheduled: bool,
    /// The image was closed: background commits do nothing.
    pub(crate) closed: bool,
}

/// Counters of engine activity (for reports and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Guest reads completed.
    pub reads: u64,
    /// Guest writes acknowledged.
    pub writes: u64,
    /// Writes that needed no metadata change.
    pub fast_path_writes: u64,
    /// Writes that copied partial blocks from the base image.
    pub copy_on_write_writes: u64,
    /// Bytes copied from the base image by copy-on-write.
    pub copy_on_write_bytes: u64,
    /// Journal writes (each one or more sectors).
    pub journal_writes: u64,
    /// Journal sectors written.
    pub journal_sectors: u64,
    /// Journal recycles.
    pub recycles: u64,
    /// Group commits that wrote records (batches).
    pub group_commits: u64,
    /// Changes those batches made durable.
    pub group_committed_changes: u64,
    /// Chunks allocated (compact).
    pub chunks_allocated: u64,
    /// Data storage grows (compact images grow their data file by `storage_grow_unit`).
    pub storage_grows: u64,
    /// Writes that found a copy-on-write overlapping them in flight and waited for it
    /// (dependent writes, `fvd-v1.md` §2.3).
    pub dependent_writes: u64,
    /// Guest flushes.
    pub flushes: u64,
    /// Copy-on-read stores completed, and their bytes.
    pub copy_on_read_stores: u64,
    /// Bytes stored by copy-on-read.
    pub copy_on_read_bytes: u64,
    /// Copy-on-read regions skipped because too many bytes were outstanding.
    pub copy_on_read_skipped: u64,
    /// Bytes stored by prefetch.
    pub prefetch_bytes: u64,
    /// Journal sectors applied at the last recovery.
    pub recovered_sectors: u64,
}

/// Everything mutable about an open image. Never borrowed across an await.
pub(crate) struct State {
    pub(crate) header: Header,
    /// Hardened images: the current extension (journal epoch).
    pub(crate) extension: Option<HeaderExtension>,
    /// The truth in memory: blocks whose data is in the image (set after their data landed).
    pub(crate) fresh: Bitmap,
    /// What is guaranteed on disk: home bitmap plus committed journal records. `stale ⊆ fresh`.
    pub(crate) stale: Bitmap,
    /// Chunk table; the dirty bit marks entries not yet committed to the journal or home.
    pub(crate) table: Vec<u32>,
    /// Chunks allocated whose first data write has not completed (never persisted home).
    pub(crate) unlanded: BTreeSet<u64>,
    /// Physical chunks handed out (bump pointer).
    pub(crate) used_chunks: u64,
    /// Physical chunks the data storage holds.
    pub(crate) storage_chunks: u64,
    /// A storage grow is running.
    pub(crate) growing: bool,
    /// A header-extension write is running (extension writes are serialised).
    pub(crate) extension_busy: bool,
    /// A metadata write-home is running (write-homes are serialised).
    pub(crate) home_busy: bool,
    pub(crate) journal: JournalState,
    pub(crate) copy_locks: LockSet,
    pub(crate) write_locks: LockSet,
    pub(crate) next_lock_id: u64,
    pub(crate) stats: EngineStats,
    /// Copy-on-read bytes being stored (v1's `outstanding_copy_on_read_data`).
    pub(crate) copy_on_read_outstanding_bytes: u64,
    /// The cap on them (v1: the header's value, or one block if that is under two blocks).
    pub(crate) copy_on_read_cap_bytes: u64,
    /// Copy-on-read tasks spawned and not yet finished (close waits for them).
    pub(crate) copy_on_read_tasks: u64,
    /// Whole-image prefetch, once started.
    pub(crate) prefetch: Option<super::prefetch::Prefetcher>,
    /// Tasks waiting for some state change.
    pub(crate) waiters: Vec<Waker>,
}

impl State {
    /// Wakes every waiting task (they re-check their condition).
    pub(crate) fn wake_all(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }

    pub(crate) fn lock_id(&mut self) -> u64 {
        self.next_lock_id += 1;
        self.next_lock_id
    }

    /// The physical chunk of virtual chunk `chunk`, if allocated.
    pub(crate) fn physical_chunk(&self, chunk: u64) -> Option<u64> {
        let entry = self.table[chunk as usize];
        (entry != EMPTY_TABLE_ENTRY).then_some(u64::from(entry & !DIRTY_TABLE_BIT))
    }

    /// Checks the invariants that must hold whenever no borrow is active.
    pub(crate) fn assert_invariants(&self) {
        assert!(self.stale.is_subset_of(&self.fresh), "stale ⊆ fresh");
        for (chunk, &entry) in self.table.iter().enumerate() {
            if entry != EMPTY_TABLE_ENTRY {
                let id = u64::from(entry & !DIRTY_TABLE_BIT);
                assert!(
                    id < self.storage_chunks && id < self.used_chunks,
                    "table[{chunk}] = {id} lies within storage and below the bump pointer"
                );
            }
        }
        for &chunk in &self.unlanded {
            assert!(self.table[chunk as usize] & DIRTY_TABLE_BIT != 0, "an unlanded chunk {chunk} is never committed");
        }
    }
}

/// A future that completes once `condition` holds, re-checked whenever the state wakes waiters.
/// `label` names what it waits for in stall reports.
pub(crate) struct Until<'a, F> {
    pub(crate) state: &'a RefCell<State>,
    pub(crate) env: &'a dyn crate::env::Env,
    pub(crate) label: &'static str,
    pub(crate) condition: F,
}

impl<F: Fn(&State) -> bool> Future for Until<'_, F> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.borrow_mut();
        if (self.condition)(&state) {
            return Poll::Ready(());
        }
        state.waiters.push(cx.waker().clone());
        drop(state);
        self.env.waiting_on(self.label);
        Poll::Pending
    }
}

/// Whichever of two futures completes first (both are polled; the other is dropped).
pub(crate) async fn first_of(a: crate::env::LocalFuture<'static, ()>, b: impl std::future::Future<Output = ()>) {
    let mut a = a;
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(move |cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
