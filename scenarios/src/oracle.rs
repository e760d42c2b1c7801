//! The oracle: for every sector, the set of values it may legally hold.
//!
//! Values are write ids (`1..`), or [`ORIGINAL`] for the content a sector has before any write
//! (the base image's bytes, or zeros beyond it). The rules (issue #4, `docs/format.md` §8):
//!
//! - **During a run** a read returns, per sector, the value of a write that completed before the
//!   read was submitted and was not overwritten by a write submitted after it completed, or the
//!   value of a write in flight with the read.
//! - **After a crash and recovery** a sector holds its value as of the last completed guest flush
//!   (what the sector could hold when that flush was submitted) or that of any write not
//!   completed before that flush's submission (including writes in flight at the crash).
//! - **A write that failed** with an I/O error is indeterminate: it joins the possible values
//!   without replacing any.
//!
//! Storage is sparse: 128-sector leaves allocated on first touch, each sector holding three small
//! sets. Flushes snapshot only the sectors touched since the previous flush submission.

use smallvec::SmallVec;

/// The value of a never-written sector.
pub const ORIGINAL: u32 = 0;

/// A sector torn by a crash with no atomic unit: it holds no single value and any content is
/// accepted until a write replaces it.
pub const TORN: u32 = u32::MAX;

const LEAF_SECTORS: u64 = 128;

type Set = SmallVec<[u32; 2]>;

#[derive(Clone, Default)]
struct SectorState {
    /// Values a read submitted now may return (completed writes only).
    current: Set,
    /// Values as of the last applied flush.
    durable: Set,
    /// Writes not completed before the last applied flush's submission.
    since: Set,
    /// The flush epoch in which the sector was last put on the dirty list.
    dirty_epoch: u32,
    touched: bool,
}

#[derive(Debug, Clone, Copy)]
struct WriteInfo {
    first: u64,
    count: u64,
    submit_seq: u64,
    /// `u64::MAX` while in flight.
    complete_seq: u64,
}

struct InFlightRead {
    first: u64,
    count: u64,
    /// Per sector: values allowed when the read was submitted.
    allowed: Vec<Set>,
    /// Writes submitted while the read was in flight that overlap it.
    concurrent: Vec<u32>,
}

struct FlushSnapshot {
    submit_seq: u64,
    /// `(sector, current set at submission)`.
    sectors: Vec<(u64, Set)>,
}

/// A read in flight; hand it back to [`Oracle::read_completed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadTicket(u64);

/// A flush in flight; hand it back to [`Oracle::flush_completed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlushTicket(u64);

/// The per-sector legal-value tracker.
#[derive(Default)]
pub struct Oracle {
    leaves: Vec<Option<Box<[SectorState]>>>,
    writes: Vec<WriteInfo>,
    seq: u64,
    reads: std::collections::BTreeMap<u64, InFlightRead>,
    next_read: u64,
    flushes: std::collections::BTreeMap<u64, FlushSnapshot>,
    dirty: Vec<u64>,
    flush_epoch: u32,
    touched_sectors: u64,
    /// See [`Oracle::crash_generation`].
    crash_generation: u64,
}

impl std::fmt::Debug for Oracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oracle")
            .field("writes", &self.writes.len())
            .field("touched_sectors", &self.touched_sectors)
            .finish_non_exhaustive()
    }
}

fn original_set() -> Set {
    let mut set = Set::new();
    set.push(ORIGINAL);
    set
}

impl Oracle {
    /// An oracle for a disk where nothing was written yet.
    pub fn new() -> Oracle {
        Oracle { flush_epoch: 1, ..Oracle::default() }
    }

    fn state(&self, sector: u64) -> Option<&SectorState> {
        let leaf = self.leaves.get((sector / LEAF_SECTORS) as usize)?.as_ref()?;
        let state = &leaf[(sector % LEAF_SECTORS) as usize];
        state.touched.then_some(state)
    }

    fn state_mut(&mut self, sector: u64) -> &mut SectorState {
        let index = (sector / LEAF_SECTORS) as usize;
        if self.leaves.len() <= index {
            self.leaves.resize_with(index + 1, || None);
        }
        let leaf = self.leaves[index]
            .get_or_insert_with(|| vec![SectorState::default(); LEAF_SECTORS as usize].into_boxed_slice());
        let state = &mut leaf[(sector % LEAF_SECTORS) as usize];
        if !state.touched {
            state.touched = true;
            state.current = original_set();
            state.durable = original_set();
            self.touched_sectors += 1;
        }
        state
    }

    fn mark_dirty(&mut self, sector: u64) {
        let epoch = self.flush_epoch;
        let state = self.state_mut(sector);
        if state.dirty_epoch != epoch {
            state.dirty_epoch = epoch;
            self.dirty.push(sector);
        }
    }

    fn info(&self, id: u32) -> &WriteInfo {
        &self.writes[id as usize - 1]
    }

    /// Sectors ever written (candidates for verification), ascending.
    pub fn touched_sectors(&self) -> impl Iterator<Item = u64> + '_ {
        self.leaves.iter().enumerate().flat_map(|(leaf_index, leaf)| {
            leaf.iter().flat_map(move |leaf| {
                leaf.iter()
                    .enumerate()
                    .filter(|(_, s)| s.touched)
                    .map(move |(i, _)| leaf_index as u64 * LEAF_SECTORS + i as u64)
            })
        })
    }

    /// How many sectors were ever written.
    pub fn touched_count(&self) -> u64 {
        self.touched_sectors
    }

    /// Sectors whose crash outcome is open (a write not yet covered by a completed flush).
    pub fn unsettled_sectors(&self) -> Vec<u64> {
        self.touched_sectors().filter(|&s| self.state(s).is_some_and(|st| !st.since.is_empty())).collect()
    }

    /// The write with this id: `(first_sector, sectors)`.
    pub fn write_range(&self, id: u32) -> (u64, u64) {
        let info = self.info(id);
        (info.first, info.count)
    }

    /// A write of `count` sectors at `first` was submitted; returns its id (stamp it into the data).
    pub fn write_submitted(&mut self, first: u64, count: u64) -> u32 {
        self.seq += 1;
        self.crash_generation += 1;
        self.writes.push(WriteInfo { first, count, submit_seq: self.seq, complete_seq: u64::MAX });
        let id = u32::try_from(self.writes.len()).expect("fewer than 2^32 writes per run");
        for sector in first..first + count {
            self.mark_dirty(sector);
            self.state_mut(sector).since.push(id);
        }
        for read in self.reads.values_mut() {
            if first < read.first + read.count && read.first < first + count {
                read.concurrent.push(id);
            }
        }
        id
    }

    /// Write `id` completed; `ok` false for an I/O error (the write becomes indeterminate).
    pub fn write_completed(&mut self, id: u32, ok: bool) {
        self.seq += 1;
        if !ok {
            self.crash_generation += 1;
        }
        let seq = self.seq;
        let info = {
            let info = &mut self.writes[id as usize - 1];
            assert_eq!(info.complete_seq, u64::MAX, "write {id} completed twice");
            info.complete_seq = seq;
            *info
        };
        for sector in info.first..info.first + info.count {
            self.mark_dirty(sector);
            let writes = &self.writes;
            let leaf = self.leaves[(sector / LEAF_SECTORS) as usize].as_mut().expect("touched sectors have a leaf");
            let state = &mut leaf[(sector % LEAF_SECTORS) as usize];
            if ok {
                // Everything completed before this write was submitted is overwritten.
                state
                    .current
                    .retain(|v| *v != ORIGINAL && *v != TORN && writes[*v as usize - 1].complete_seq > info.submit_seq);
            }
            state.current.push(id);
        }
    }

    /// A read of `count` sectors at `first` was submitted.
    pub fn read_submitted(&mut self, first: u64, count: u64) -> ReadTicket {
        self.seq += 1;
        let allowed = (first..first + count)
            .map(|sector| match self.state(sector) {
                None => original_set(),
                Some(state) => {
                    let mut set = state.current.clone();
                    for &w in &state.since {
                        if self.info(w).complete_seq == u64::MAX && !set.contains(&w) {
                            set.push(w);
                        }
                    }
                    set
                }
            })
            .collect();
        self.next_read += 1;
        self.reads.insert(self.next_read, InFlightRead { first, count, allowed, concurrent: Vec::new() });
        ReadTicket(self.next_read)
    }

    /// A read completed; returns, per sector, the values it may legally return.
    pub fn read_completed(&mut self, ticket: ReadTicket) -> Vec<Set> {
        self.seq += 1;
        let read = self.reads.remove(&ticket.0).expect("read tickets are used once");
        let mut allowed = read.allowed;
        for &w in &read.concurrent {
            let info = *self.info(w);
            for sector in info.first.max(read.first)..(info.first + info.count).min(read.first + read.count) {
                let set = &mut allowed[(sector - read.first) as usize];
                if !set.contains(&w) {
                    set.push(w);
                }
            }
        }
        allowed
    }

    /// A guest flush was submitted.
    pub fn flush_submitted(&mut self) -> FlushTicket {
        self.seq += 1;
        let dirty = std::mem::take(&mut self.dirty);
        let sectors =
            dirty.into_iter().map(|s| (s, self.state(s).expect("dirty sectors are touched").current.clone())).collect();
        self.flush_epoch += 1;
        self.flushes.insert(self.seq, FlushSnapshot { submit_seq: self.seq, sectors });
        FlushTicket(self.seq)
    }

    /// A guest flush completed; a failed flush promises nothing (a later one covers its writes).
    pub fn flush_completed(&mut self, ticket: FlushTicket, ok: bool) {
        self.seq += 1;
        self.crash_generation += 1;
        if !ok {
            return;
        }
        // Every flush submitted no later than this one is now complete as far as durability goes.
        let done: Vec<u64> = self.flushes.range(..=ticket.0).map(|(k, _)| *k).collect();
        for key in done {
            let snapshot = self.flushes.remove(&key).expect("listed");
            for (sector, current) in snapshot.sectors {
                let writes = &self.writes;
                let leaf = self.leaves[(sector / LEAF_SECTORS) as usize].as_mut().expect("touched");
                let state = &mut leaf[(sector % LEAF_SECTORS) as usize];
                state.durable = current;
                state.since.retain(|w| writes[*w as usize - 1].complete_seq > snapshot.submit_seq);
            }
        }
    }

    /// The world crashed: requests in flight are lost (their writes stay possible forever after);
    /// flushes in flight promise nothing.
    pub fn crashed(&mut self) {
        self.seq += 1;
        self.crash_generation += 1;
        self.reads.clear();
        self.flushes.clear();
        let seq = self.seq;
        for info in &mut self.writes {
            if info.complete_seq == u64::MAX {
                info.complete_seq = seq;
            }
        }
    }

    /// The values `sector` may hold after a crash and recovery.
    pub fn allowed_after_crash(&self, sector: u64) -> Set {
        match self.state(sector) {
            None => original_set(),
            Some(state) => {
                let mut set = state.durable.clone();
                for &w in &state.since {
                    if !set.contains(&w) {
                        set.push(w);
                    }
                }
                set
            }
        }
    }

    /// A number that changes whenever [`Oracle::allowed_after_crash`] may answer differently (a
    /// write submitted, a flush completed, a crash, a sector settled). Write completions and
    /// reads leave it alone: an acknowledged write that no flush covers may still be lost.
    pub fn crash_generation(&self) -> u64 {
        self.crash_generation
    }

    /// After a crash was verified: the sector now holds exactly `value`, durably.
    pub fn settle(&mut self, sector: u64, value: u32) {
        self.crash_generation += 1;
        if value == ORIGINAL && self.state(sector).is_none() {
            return;
        }
        let state = self.state_mut(sector);
        state.current = SmallVec::from_slice(&[value]);
        state.durable = SmallVec::from_slice(&[value]);
        state.since.clear();
    }

    /// Drops dirty-list entries after a crash (everything is settled).
    pub fn settled_all(&mut self) {
        self.dirty.clear();
        self.flush_epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_writes_replace_earlier_ones_and_overlapping_ones_stay_possible() {
        let mut oracle = Oracle::new();
        let a = oracle.write_submitted(0, 2);
        let b = oracle.write_submitted(1, 2); // overlaps a in time and on sector 1
        oracle.write_completed(a, true);
        oracle.write_completed(b, true);
        let read = oracle.read_submitted(0, 3);
        let allowed = oracle.read_completed(read);
        assert_eq!(allowed[0].as_slice(), &[a]);
        assert!(allowed[1].contains(&a) && allowed[1].contains(&b), "in flight together: either may have landed last");
        assert_eq!(allowed[2].as_slice(), &[b]);
        let c = oracle.write_submitted(1, 1);
        oracle.write_completed(c, true);
        let read = oracle.read_submitted(1, 1);
        assert_eq!(
            oracle.read_completed(read)[0].as_slice(),
            &[c],
            "a write submitted after both completed replaces both"
        );
    }

    #[test]
    fn reads_allow_writes_in_flight_with_them() {
        let mut oracle = Oracle::new();
        let read = oracle.read_submitted(5, 1);
        let w1 = oracle.write_submitted(5, 1);
        oracle.write_completed(w1, true);
        let w2 = oracle.write_submitted(5, 1);
        oracle.write_completed(w2, true);
        let allowed = oracle.read_completed(read);
        assert!(allowed[0].contains(&ORIGINAL) && allowed[0].contains(&w1) && allowed[0].contains(&w2));
    }

    #[test]
    fn flushes_fix_durable_values_even_when_they_complete_out_of_order() {
        let mut oracle = Oracle::new();
        let a = oracle.write_submitted(0, 1);
        oracle.write_completed(a, true);
        let f1 = oracle.flush_submitted();
        let b = oracle.write_submitted(0, 1);
        oracle.write_completed(b, true);
        let f2 = oracle.flush_submitted();
        let c = oracle.write_submitted(0, 1); // in flight at the crash
        oracle.flush_completed(f2, true);
        oracle.flush_completed(f1, true); // late completion of the older flush changes nothing
        oracle.crashed();
        let allowed = oracle.allowed_after_crash(0);
        assert!(allowed.contains(&b) && allowed.contains(&c));
        assert!(!allowed.contains(&a) && !allowed.contains(&ORIGINAL), "flushed data is never lost: {allowed:?}");
    }

    #[test]
    fn failed_writes_and_failed_flushes_promise_nothing() {
        let mut oracle = Oracle::new();
        let a = oracle.write_submitted(3, 1);
        oracle.write_completed(a, false);
        let read = oracle.read_submitted(3, 1);
        let allowed = oracle.read_completed(read);
        assert!(allowed[0].contains(&ORIGINAL) && allowed[0].contains(&a), "a failed write is indeterminate");
        let f = oracle.flush_submitted();
        oracle.flush_completed(f, false);
        oracle.crashed();
        assert!(oracle.allowed_after_crash(3).contains(&a));
        assert!(oracle.allowed_after_crash(3).contains(&ORIGINAL));
        oracle.settle(3, a);
        assert_eq!(oracle.allowed_after_crash(3).as_slice(), &[a]);
        assert_eq!(
            oracle.allowed_after_crash(1000).as_slice(),
            &[ORIGINAL],
            "untouched sectors hold their original content"
        );
    }
}
