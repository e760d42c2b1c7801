//! The volatile write cache of a [`super::SimDisk`]: which executed writes are not yet durable,
//! and what the media would hold if power were lost now.
//!
//! # Representation
//!
//! The [`SparseStore`] always holds the *visible* image (durable data plus every executed write).
//! For each page touched by an unflushed write, a [`ShadowPage`] keeps the page's *durable*
//! content and a version chain: one entry per unflushed write touching the page, oldest first,
//! each with the page's content right after that write landed. The newest entry's content is the
//! store page itself, so it is kept only once a later write replaces it (or a crash takes it).
//! Unflushed writes ([`PendingWrite`]) are metadata only; their bytes are read back from the
//! versions.
//!
//! Write data is copied once, at submission, into [`WriteData`] (whole pages recognised as
//! symbols where they can be, see [`super::page`]); a write covering whole pages then *moves*
//! its pages into the store, and the replaced pages move into the shadow. Only partial-page
//! writes copy a page. Every page here is a [`PageData`], so versions of regenerable content
//! cost a few bytes each.
//!
//! Invariants (asserted): a page has a shadow iff some pending write touches it; its chain lists
//! exactly the pending writes touching it, in execution order; only the newest entry lacks
//! content.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};

use smallvec::{SmallVec, smallvec};

use super::content::ContentSource;
use super::crash::{CrashPlan, UnitFate, WriteFate, choose_fates, fate_letter, unit_pieces};
use super::store::{PAGE_BYTES, PageData, PagePool, SparseStore, blank_page};
use crate::rng::SimRng;

const PAGE: u64 = PAGE_BYTES as u64;

/// The bytes of a write, copied at submission: whole page buffers when the write is page-aligned
/// (so they can move into the store), bytes otherwise.
#[derive(Debug)]
pub(crate) enum WriteData {
    /// Page-aligned data, one page each.
    Pages(SmallVec<[PageData; 1]>),
    /// Any other data.
    Bytes(Vec<u8>),
}

impl WriteData {
    /// Copies `data` destined for `offset_bytes`.
    pub(crate) fn copy_from(offset_bytes: u64, data: &[u8], pool: &mut PagePool) -> WriteData {
        if offset_bytes.is_multiple_of(PAGE) && !data.is_empty() && data.len().is_multiple_of(PAGE_BYTES) {
            WriteData::Pages(
                data.chunks_exact(PAGE_BYTES)
                    .map(|chunk| PageData::from_bytes(chunk.try_into().expect("page-sized chunk"), pool))
                    .collect(),
            )
        } else {
            WriteData::Bytes(data.to_vec())
        }
    }

    /// Length in bytes.
    pub(crate) fn len_bytes(&self) -> u64 {
        match self {
            WriteData::Pages(pages) => pages.len() as u64 * PAGE,
            WriteData::Bytes(bytes) => bytes.len() as u64,
        }
    }

    /// `len` bytes starting `from` bytes into the write.
    pub(crate) fn slice(&self, from: u64, len: u64) -> std::borrow::Cow<'_, [u8]> {
        match self {
            WriteData::Bytes(bytes) => std::borrow::Cow::Borrowed(&bytes[from as usize..(from + len) as usize]),
            WriteData::Pages(pages) => {
                let mut out = vec![0u8; len as usize];
                let mut at = from;
                while at < from + len {
                    let (page, in_page) = ((at / PAGE) as usize, (at % PAGE) as usize);
                    let n = (PAGE_BYTES - in_page).min((from + len - at) as usize);
                    let done = (at - from) as usize;
                    pages[page].read(in_page, &mut out[done..done + n]);
                    at += n as u64;
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }

    /// A copy (pages copied into `pool`'s buffers).
    pub(crate) fn clone_in(&self, pool: &mut PagePool) -> WriteData {
        match self {
            WriteData::Bytes(bytes) => WriteData::Bytes(bytes.clone()),
            WriteData::Pages(pages) => WriteData::Pages(pages.iter().map(|p| p.clone_in(pool)).collect()),
        }
    }

    /// Converts to plain bytes (for a write that must land elsewhere than planned).
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        match self {
            WriteData::Bytes(bytes) => bytes,
            WriteData::Pages(pages) => {
                let mut out = vec![0u8; pages.len() * PAGE_BYTES];
                for (page, chunk) in pages.iter().zip(out.chunks_exact_mut(PAGE_BYTES)) {
                    page.read(0, chunk);
                }
                out
            }
        }
    }
}

/// An executed write that is not yet durable.
#[derive(Debug, Clone, Copy)]
struct PendingWrite {
    /// Unique, increasing position in execution order.
    seq: u64,
    /// The disk's request number (several entries may share one: a failed write lands in pieces).
    request: u64,
    offset_bytes: u64,
    len_bytes: u64,
    /// Already durable (FUA): always kept at a crash.
    forced: bool,
}

/// The pages `[offset, offset + len)` touches (not empty).
pub(crate) fn page_span(offset_bytes: u64, len_bytes: u64) -> std::ops::RangeInclusive<u64> {
    debug_assert!(len_bytes > 0, "empty writes never reach the cache");
    offset_bytes / PAGE..=(offset_bytes + len_bytes - 1) / PAGE
}

/// The byte range of `[offset, offset + len)` inside page `page`, as `(page_from, page_to)`.
fn in_page(page: u64, offset_bytes: u64, len_bytes: u64) -> (usize, usize) {
    let start = page * PAGE;
    let from = offset_bytes.max(start);
    let to = (offset_bytes + len_bytes).min(start + PAGE);
    ((from - start) as usize, (to - start) as usize)
}

/// The durable content and version chain of one page with unflushed writes.
struct ShadowPage {
    /// Durable content (`None`: never written, reads as zeros or the content source).
    durable: Option<PageData>,
    /// `(seq, content right after that write)`, oldest first; the newest content is `None`
    /// while it lives in the store. Inline for the common single version (no allocation per
    /// page written); taking the oldest (a destage under cache pressure) shifts the rest.
    versions: SmallVec<[(u64, Option<PageData>); 1]>,
}

/// What a crash left behind.
pub(crate) struct CrashOutcome {
    /// Every unflushed write, in resolution order.
    pub(crate) fates: Vec<WriteFate>,
    /// True when every unit of every write was kept.
    pub(crate) all_kept: bool,
}

/// The volatile cache bookkeeping.
#[derive(Default)]
pub(crate) struct VolatileCache {
    pending: VecDeque<PendingWrite>,
    pending_bytes: u64,
    shadow: BTreeMap<u64, ShadowPage>,
    next_seq: u64,
}

impl VolatileCache {
    /// A copy of the bookkeeping (versions copied into `pool`'s buffers), for a crash state
    /// resolved on a copy of the store.
    pub(crate) fn deep_clone(&self, pool: &mut PagePool) -> VolatileCache {
        let shadow = self
            .shadow
            .iter()
            .map(|(&page, entry)| {
                let durable = entry.durable.as_ref().map(|d| d.clone_in(pool));
                let versions =
                    entry.versions.iter().map(|(seq, v)| (*seq, v.as_ref().map(|v| v.clone_in(pool)))).collect();
                (page, ShadowPage { durable, versions })
            })
            .collect();
        VolatileCache {
            pending: self.pending.clone(),
            pending_bytes: self.pending_bytes,
            shadow,
            next_seq: self.next_seq,
        }
    }

    /// Pages an unflushed executed write touches, ascending.
    pub(crate) fn shadow_pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.shadow.keys().copied()
    }

    /// Unflushed executed writes.
    pub(crate) fn pending_writes(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of unflushed writes.
    pub(crate) fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Memory held by shadow pages and versions, bytes (an estimate for reports).
    pub(crate) fn resident_bytes(&self) -> u64 {
        self.shadow
            .values()
            .map(|s| {
                s.durable
                    .iter()
                    .chain(s.versions.iter().filter_map(|v| v.1.as_ref()))
                    .map(PageData::heap_bytes)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Lands an executed write in the store and records it as unflushed (unless it is FUA and
    /// shares no page with an unflushed write, in which case it is simply durable).
    pub(crate) fn land(
        &mut self,
        store: &mut SparseStore,
        content: Option<&dyn ContentSource>,
        request: u64,
        offset_bytes: u64,
        data: WriteData,
        fua: bool,
    ) {
        let len = data.len_bytes();
        let pages = page_span(offset_bytes, len);
        // Only a FUA write asks (it is simply durable unless it shares a page with an unflushed
        // write, whose order it must keep).
        let touches_unflushed = fua && pages.clone().any(|page| self.shadow.contains_key(&page));
        let seq = self.next_seq;
        if !fua || touches_unflushed {
            self.next_seq += 1;
            for page in pages.clone() {
                let covered = in_page(page, offset_bytes, len) == (0, PAGE_BYTES);
                // The content before this write: moved out of the store if the write covers the
                // page (it installs a fresh buffer), copied otherwise.
                let before = if covered { store.replace_page(page, None) } else { store.copy_of_page(page) };
                match self.shadow.entry(page) {
                    Entry::Vacant(vacant) => {
                        vacant.insert(ShadowPage { durable: before, versions: smallvec![(seq, None)] });
                    }
                    Entry::Occupied(mut occupied) => {
                        let shadow = occupied.get_mut();
                        let newest = shadow.versions.last_mut().expect("a shadow page has versions");
                        debug_assert!(newest.1.is_none(), "only the newest version lives in the store");
                        let before = before.unwrap_or_else(|| blank_page(page, content, &mut store.pool));
                        newest.1 = Some(before);
                        shadow.versions.push((seq, None));
                    }
                }
            }
            self.pending_bytes += len;
            self.pending.push_back(PendingWrite { seq, request, offset_bytes, len_bytes: len, forced: fua });
        }
        match data {
            WriteData::Pages(buffers) => {
                for (page, buffer) in pages.zip(buffers) {
                    if let Some(old) = store.replace_page(page, Some(buffer)) {
                        old.recycle(&mut store.pool);
                    }
                }
            }
            WriteData::Bytes(bytes) => store.write(offset_bytes, &bytes, content),
        }
    }

    /// Makes the oldest unflushed write durable (cache pressure); returns `(request, offset,
    /// len)` of it, or `None` if the cache is empty.
    pub(crate) fn destage_oldest(
        &mut self,
        content: Option<&dyn ContentSource>,
        pool: &mut PagePool,
    ) -> Option<(u64, u64, u64)> {
        let write = self.pending.pop_front()?;
        self.pending_bytes -= write.len_bytes;
        for page in page_span(write.offset_bytes, write.len_bytes) {
            let shadow = self.shadow.get_mut(&page).expect("every pending page has a shadow");
            assert!(!shadow.versions.is_empty(), "the chain lists every pending write");
            let (seq, after) = shadow.versions.remove(0);
            assert_eq!(seq, write.seq, "the oldest pending write heads every chain it is in");
            if shadow.versions.is_empty() {
                // No unflushed write touches the page any more: the store page is durable.
                if let Some(durable) = self.shadow.remove(&page).and_then(|s| s.durable) {
                    durable.recycle(pool);
                }
                continue;
            }
            let after = after.expect("a version followed by another has its content");
            let (from, to) = in_page(page, write.offset_bytes, write.len_bytes);
            if (from, to) == (0, PAGE_BYTES) {
                if let Some(old) = shadow.durable.replace(after) {
                    old.recycle(pool);
                }
            } else {
                let durable = shadow.durable.get_or_insert_with(|| blank_page(page, content, pool));
                durable.copy_range(from, to - from, &after, pool);
                after.recycle(pool);
            }
        }
        Some((write.request, write.offset_bytes, write.len_bytes))
    }

    /// A completed flush: everything executed is durable.
    pub(crate) fn flush(&mut self, pool: &mut PagePool) {
        self.pending.clear();
        self.pending_bytes = 0;
        for (_, shadow) in std::mem::take(&mut self.shadow) {
            shadow
                .durable
                .into_iter()
                .chain(shadow.versions.into_iter().filter_map(|v| v.1))
                .for_each(|page| page.recycle(pool));
        }
    }

    /// Overlays the durable content of shadowed pages onto `buf` (which holds the visible bytes
    /// at `offset_bytes`).
    pub(crate) fn overlay_durable(&self, offset_bytes: u64, buf: &mut [u8], content: Option<&dyn ContentSource>) {
        if buf.is_empty() {
            return;
        }
        for page in page_span(offset_bytes, buf.len() as u64) {
            let Some(shadow) = self.shadow.get(&page) else { continue };
            let (from, to) = in_page(page, offset_bytes, buf.len() as u64);
            let out_from = (page * PAGE + from as u64 - offset_bytes) as usize;
            let out = &mut buf[out_from..out_from + (to - from)];
            match &shadow.durable {
                Some(durable) => durable.read(from, out),
                None => match content {
                    Some(content) => content.fill(page * PAGE + from as u64, out),
                    None => out.fill(0),
                },
            }
        }
    }

    /// Power loss: restores the durable image in `store`, then re-applies the surviving units of
    /// every unflushed write (and of `in_flight` writes, which may or may not land) per `plan`.
    pub(crate) fn crash(
        &mut self,
        store: &mut SparseStore,
        content: Option<&dyn ContentSource>,
        plan: CrashPlan,
        rng: &mut SimRng,
        in_flight: Vec<(u64, u64, WriteData)>,
    ) -> CrashOutcome {
        // Take the newest versions out of the store and put the durable pages back.
        let mut shadow = std::mem::take(&mut self.shadow);
        for (&page, entry) in &mut shadow {
            let newest = store.replace_page(page, entry.durable.take());
            let newest = newest.unwrap_or_else(|| blank_page(page, content, &mut store.pool));
            entry.versions.last_mut().expect("a shadow page has versions").1 = Some(newest);
        }
        let executed: Vec<PendingWrite> = self.pending.drain(..).collect();
        self.pending_bytes = 0;
        let unit = plan.atomic_unit;
        let mut lengths: Vec<(u64, u64)> = executed.iter().map(|w| (w.offset_bytes, w.len_bytes)).collect();
        lengths.extend(in_flight.iter().map(|(_, offset, data)| (*offset, data.len_bytes())));
        let pieces: Vec<Vec<(u64, u64)>> =
            lengths.iter().map(|&(offset, len)| unit_pieces(offset, len, unit).collect()).collect();
        let counts: Vec<usize> = pieces.iter().map(Vec::len).collect();
        let mut forced: Vec<bool> = executed.iter().map(|w| w.forced).collect();
        forced.resize(lengths.len(), false);
        let fates = choose_fates(plan, rng, &counts, &forced, &|write, piece| pieces[write][piece].1);
        let all_kept = fates.iter().flatten().all(|f| *f == UnitFate::Kept);
        let mut records = Vec::with_capacity(lengths.len());
        for (index, &(offset, len)) in lengths.iter().enumerate() {
            for (&(start, piece_len), fate) in pieces[index].iter().zip(&fates[index]) {
                let keep = match *fate {
                    UnitFate::Kept => piece_len,
                    UnitFate::Dropped => continue,
                    UnitFate::TornPrefix { new_prefix_bytes } => u64::from(new_prefix_bytes),
                };
                match executed.get(index) {
                    Some(write) => {
                        // A piece never straddles a page: units are at most a page and aligned.
                        let page = start / PAGE;
                        let versions = &shadow.get(&page).expect("pending pages are shadowed").versions;
                        let (_, after) =
                            versions.iter().find(|(seq, _)| *seq == write.seq).expect("the chain lists the write");
                        let after = after.as_ref().expect("every version has content during a crash");
                        let from = (start - page * PAGE) as usize;
                        store.copy_range(page, from, keep as usize, after, content);
                    }
                    None => {
                        let (_, _, data) = &in_flight[index - executed.len()];
                        store.write(start, &data.slice(start - offset, keep), content);
                    }
                }
            }
            let (request, executed_flag) = match executed.get(index) {
                Some(write) => (write.request, true),
                None => (in_flight[index - executed.len()].0, false),
            };
            records.push(WriteFate {
                request,
                offset_bytes: offset,
                len_bytes: len,
                executed: executed_flag,
                units: fates[index].iter().map(|f| fate_letter(*f)).collect(),
            });
        }
        CrashOutcome { fates: records, all_kept }
    }

    /// Checks the documented invariants (debug builds and tests).
    pub(crate) fn assert_invariants(&self) {
        let mut expected: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for write in &self.pending {
            for page in page_span(write.offset_bytes, write.len_bytes) {
                expected.entry(page).or_default().push(write.seq);
            }
        }
        assert_eq!(expected.len(), self.shadow.len(), "a page has a shadow iff a pending write touches it");
        for (page, seqs) in expected {
            let chain = &self.shadow[&page].versions;
            assert!(
                chain.iter().map(|v| v.0).eq(seqs.iter().copied()),
                "page {page}: chain differs from the pending writes"
            );
            assert!(
                chain.iter().rev().skip(1).all(|v| v.1.is_some()),
                "page {page}: an older version lost its content"
            );
            assert!(
                chain.last().is_some_and(|v| v.1.is_none()),
                "page {page}: the newest version must live in the store"
            );
        }
        assert_eq!(self.pending_bytes, self.pending.iter().map(|w| w.len_bytes).sum::<u64>());
    }
}
