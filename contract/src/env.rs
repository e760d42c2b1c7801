//! The environment handle: the engine's only source of time, randomness, background tasks and
//! progress reporting. The simulator implements it over virtual time and seeded ChaCha streams;
//! the host implementation uses the wall clock and a plain executor.

use std::future::Future;
use std::pin::Pin;

/// A boxed, single-threaded future.
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Resolves when a spawned task has finished. Dropping it does not cancel the task.
pub type Join = LocalFuture<'static, ()>;

/// A named point in the engine's work, reported through [`Env::progress`] so that a scenario can
/// crash the world exactly there (for example while a journal write is in flight).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProgressPoint {
    /// A journal write was submitted to the device (it is in flight).
    JournalWriteSubmitted,
    /// A journal write completed (landed, not yet acknowledged to the guest).
    JournalWriteCompleted,
    /// A journal recycle began (metadata about to be written home).
    RecycleBegin,
    /// A journal recycle ended (the journal is empty again).
    RecycleEnd,
    /// Bitmap or table sectors were written to their home location.
    MetadataWrittenHome,
    /// The header's clean-shutdown flag was written.
    CleanFlagWritten,
    /// Data copied from the base image (copy-on-read or prefetch) was stored in the image.
    CopyStored,
    /// A guest request was acknowledged.
    GuestAck,
    /// Group commit: a write's metadata change was queued for the next commit (the write is
    /// acknowledged next, its record not yet written). Detail: changes queued.
    RecordQueued,
    /// Group commit: the data flush that precedes a batch of records was submitted. Detail:
    /// records in the batch.
    CommitDataFlushSubmitted,
    /// Group commit: a batch of records is durable; the guest flush that asked for it is not yet
    /// acknowledged. Detail: records in the batch.
    CommitDurable,
    /// QED: the header with `QED_F_NEED_CHECK` was written (not yet flushed). Detail: 1 when the
    /// bit was set (before an allocating write), 0 when it was cleared (at close).
    NeedCheckWritten,
    /// QED: a write of L2 table entries was submitted (a new table or changed entries; in
    /// flight). Detail: the table's byte offset.
    L2UpdateSubmitted,
    /// QED: a write of an L1 table sector was submitted (in flight). Detail: the L1 index.
    L1UpdateSubmitted,
    /// Parallels: a write of the BAT was submitted (in flight, at a flush or close). Detail: BAT
    /// entries written.
    BatWriteSubmitted,
    /// Parallels: the header with the `in_use` flag was written (not yet flushed). Detail: 1 when
    /// set (a writable open), 0 when cleared (close).
    InUseWritten,
}

impl ProgressPoint {
    /// Every point, in declaration order (for listings and exhaustive sweeps).
    pub const ALL: [ProgressPoint; 16] = [
        ProgressPoint::JournalWriteSubmitted,
        ProgressPoint::JournalWriteCompleted,
        ProgressPoint::RecycleBegin,
        ProgressPoint::RecycleEnd,
        ProgressPoint::MetadataWrittenHome,
        ProgressPoint::CleanFlagWritten,
        ProgressPoint::CopyStored,
        ProgressPoint::GuestAck,
        ProgressPoint::RecordQueued,
        ProgressPoint::CommitDataFlushSubmitted,
        ProgressPoint::CommitDurable,
        ProgressPoint::NeedCheckWritten,
        ProgressPoint::L2UpdateSubmitted,
        ProgressPoint::L1UpdateSubmitted,
        ProgressPoint::BatWriteSubmitted,
        ProgressPoint::InUseWritten,
    ];

    /// The stable kebab-case name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ProgressPoint::JournalWriteSubmitted => "journal-write-submitted",
            ProgressPoint::JournalWriteCompleted => "journal-write-completed",
            ProgressPoint::RecycleBegin => "recycle-begin",
            ProgressPoint::RecycleEnd => "recycle-end",
            ProgressPoint::MetadataWrittenHome => "metadata-written-home",
            ProgressPoint::CleanFlagWritten => "clean-flag-written",
            ProgressPoint::CopyStored => "copy-stored",
            ProgressPoint::GuestAck => "guest-ack",
            ProgressPoint::RecordQueued => "record-queued",
            ProgressPoint::CommitDataFlushSubmitted => "commit-data-flush-submitted",
            ProgressPoint::CommitDurable => "commit-durable",
            ProgressPoint::NeedCheckWritten => "need-check-written",
            ProgressPoint::L2UpdateSubmitted => "l2-update-submitted",
            ProgressPoint::L1UpdateSubmitted => "l1-update-submitted",
            ProgressPoint::BatWriteSubmitted => "bat-write-submitted",
            ProgressPoint::InUseWritten => "in-use-written",
        }
    }
}

impl std::fmt::Display for ProgressPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One progress report: the point and a point-specific detail (a journal sequence number, a
/// sector, a byte count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Which point was reached.
    pub point: ProgressPoint,
    /// Point-specific detail, documented where the engine reports it.
    pub detail: u64,
}

/// Time, randomness, background tasks and progress events for the engine.
///
/// Implementations: `fvd_sim::SimEnv` (virtual time, the run's `engine` ChaCha stream, the
/// seeded executor) and the host environment in `fvd-scenarios` (wall clock, a plain executor).
pub trait Env {
    /// The current time in nanoseconds since an arbitrary, fixed origin.
    fn now_ns(&self) -> u64;

    /// A future that completes once `duration_ns` nanoseconds have passed.
    fn sleep_ns(&self, duration_ns: u64) -> LocalFuture<'static, ()>;

    /// The next 64 random bits of the engine's stream.
    fn random_u64(&self) -> u64;

    /// Starts `task` in the background under `name`; the returned [`Join`] resolves when it ends.
    fn spawn(&self, name: &str, task: LocalFuture<'static, ()>) -> Join;

    /// Reports that the engine reached `progress.point`. The simulator may halt the world here
    /// (a crash at a named point); the engine must not assume it runs past an await that follows.
    fn progress(&self, progress: Progress);

    /// Tells the executor what the current task is about to wait for (a lock, journal space,
    /// prefetch), so a stall report can name it. The default does nothing.
    fn waiting_on(&self, _what: &'static str) {}

    /// A uniform random integer in `0..bound` (`bound > 0`), unbiased (Lemire's method).
    fn random_below(&self, bound: u64) -> u64 {
        assert!(bound > 0, "random_below needs a positive bound");
        loop {
            let product = u128::from(self.random_u64()) * u128::from(bound);
            let low = product as u64;
            if low >= bound.wrapping_neg() % bound {
                return (product >> 64) as u64;
            }
        }
    }

    /// True with probability `numerator / denominator`.
    fn random_ratio(&self, numerator: u64, denominator: u64) -> bool {
        assert!(numerator <= denominator, "ratio above one");
        self.random_below(denominator) < numerator
    }
}

/// Ready-made futures for the engine: awaiting a value that is already at hand.
pub fn ready<T: 'static>(value: T) -> LocalFuture<'static, T> {
    Box::pin(std::future::ready(value))
}
