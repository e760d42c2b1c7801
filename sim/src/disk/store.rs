//! Sparse page storage: only pages that were written take memory, and pages of regenerable
//! content (base copies, stamps, zeros) take almost none (see [`super::page`]).
//!
//! A two-level radix table of 4 KiB pages (256 pages, 1 MiB, per leaf). Lookups are O(1) and
//! iteration is in address order, so hashing the whole image is deterministic. A 32 GiB device
//! costs 256 KiB of leaf pointers before anything is written; a written leaf costs 8 KiB of
//! slots plus whatever its pages hold as bytes.

use super::content::ContentSource;
pub use super::page::{PAGE_BYTES, Page, PageData, PagePool};

const PAGES_PER_LEAF: usize = 256;
const PAGE: u64 = PAGE_BYTES as u64;

type Leaf = [Option<PageData>; PAGES_PER_LEAF];

/// Sparse page storage with an optional read-only content source for pages never written.
#[derive(Default)]
pub struct SparseStore {
    leaves: Vec<Option<Box<Leaf>>>,
    /// Page buffers for reuse (also lent to the volatile cache).
    pub pool: PagePool,
}

impl std::fmt::Debug for SparseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseStore").field("resident_bytes", &self.resident_bytes()).finish()
    }
}

fn split(page_index: u64) -> (usize, usize) {
    ((page_index / PAGES_PER_LEAF as u64) as usize, (page_index % PAGES_PER_LEAF as u64) as usize)
}

/// What an unwritten page reads as: the content source's page (symbolic when it can say), or
/// zeros.
pub fn blank_page(page_index: u64, content: Option<&dyn ContentSource>, pool: &mut PagePool) -> PageData {
    let Some(content) = content else { return PageData::zero() };
    match content.symbol(page_index * (PAGE / 512)) {
        // Procedural content: the page's consecutive sectors form a run.
        Some(symbol) => PageData::Run(symbol),
        None => {
            let mut page = pool.take();
            content.fill(page_index * PAGE, &mut page[..]);
            PageData::Bytes(page)
        }
    }
}

/// The pieces of `[offset, offset + len)` by page: `(page index, offset in the page, range of
/// the buffer)`.
fn page_pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, std::ops::Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = offset + done as u64;
        let in_page = (at % PAGE) as usize;
        let n = (PAGE_BYTES - in_page).min(len - done);
        let piece = (at / PAGE, in_page, done..done + n);
        done += n;
        Some(piece)
    })
}

impl SparseStore {
    /// An empty store.
    pub fn new() -> SparseStore {
        SparseStore::default()
    }

    /// Bytes of memory held by written pages: their slots in the leaves and what they hold on
    /// the heap (a walk over every page: for reports, not hot paths).
    pub fn resident_bytes(&self) -> u64 {
        let leaves = self.leaves.iter().flatten().count() as u64 * std::mem::size_of::<Leaf>() as u64;
        leaves + self.leaves.iter().flatten().flat_map(|l| l.iter().flatten()).map(PageData::heap_bytes).sum::<u64>()
    }

    /// Pages held as bytes (not symbols).
    pub fn byte_pages(&self) -> u64 {
        self.leaves.iter().flatten().flat_map(|l| l.iter().flatten()).filter(|p| !p.is_symbolic()).count() as u64
    }

    /// The page at `page_index`, if it was ever written.
    pub fn page(&self, page_index: u64) -> Option<&PageData> {
        let (leaf, slot) = split(page_index);
        self.leaves.get(leaf)?.as_ref()?[slot].as_ref()
    }

    /// A copy of the page at `page_index`, if it was ever written.
    pub fn copy_of_page(&mut self, page_index: u64) -> Option<PageData> {
        let (leaf, slot) = split(page_index);
        let page = self.leaves.get(leaf)?.as_ref()?[slot].as_ref()?;
        Some(page.clone_in(&mut self.pool))
    }

    /// Hints the processor to fetch the slot of page `page_index` into its caches (a write
    /// submitted now lands there after its simulated delay; without the hint, that landing
    /// waits on a cache miss). No effect on behaviour.
    #[inline]
    pub fn prefetch_slot(&self, page_index: u64) {
        let (leaf, slot) = split(page_index);
        if let Some(Some(leaf)) = self.leaves.get(leaf) {
            crate::hint::prefetch(&leaf[slot]);
        }
    }

    /// The slot of page `page_index`, its leaf created if absent.
    fn slot(&mut self, page_index: u64) -> &mut Option<PageData> {
        let (leaf, slot) = split(page_index);
        if self.leaves.len() <= leaf {
            self.leaves.resize_with(leaf + 1, || None);
        }
        &mut self.leaves[leaf].get_or_insert_with(|| Box::new([const { None }; PAGES_PER_LEAF]))[slot]
    }

    /// Runs `f` on the page at `page_index` (created from `content`, or zeros, if absent) and
    /// the pool.
    pub fn with_page<R>(
        &mut self,
        page_index: u64,
        content: Option<&dyn ContentSource>,
        f: impl FnOnce(&mut PageData, &mut PagePool) -> R,
    ) -> R {
        let mut pool = std::mem::take(&mut self.pool);
        let slot = self.slot(page_index);
        let page = slot.get_or_insert_with(|| blank_page(page_index, content, &mut pool));
        let result = f(page, &mut pool);
        self.pool = pool;
        result
    }

    /// Replaces the page at `page_index` (None makes it unwritten again); returns the old one.
    pub fn replace_page(&mut self, page_index: u64, page: Option<PageData>) -> Option<PageData> {
        let (leaf_index, _) = split(page_index);
        if page.is_none() && self.leaves.get(leaf_index).is_none_or(|l| l.is_none()) {
            return None;
        }
        std::mem::replace(self.slot(page_index), page)
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`; unwritten bytes come from `content` or are
    /// zero.
    pub fn read(&self, offset: u64, buf: &mut [u8], content: Option<&dyn ContentSource>) {
        for (page_index, in_page, range) in page_pieces(offset, buf.len()) {
            let out = &mut buf[range.clone()];
            match self.page(page_index) {
                Some(page) => page.read(in_page, out),
                None => match content {
                    Some(content) => content.fill(offset + range.start as u64, out),
                    None => out.fill(0),
                },
            }
        }
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8], content: Option<&dyn ContentSource>) {
        for (page_index, in_page, range) in page_pieces(offset, data.len()) {
            self.with_page(page_index, content, |page, pool| page.write(in_page, &data[range], pool));
        }
    }

    /// Copies `len_bytes` at `from` of `source` (a page's content) into page `page_index` at the
    /// same place.
    pub fn copy_range(
        &mut self,
        page_index: u64,
        from: usize,
        len_bytes: usize,
        source: &PageData,
        content: Option<&dyn ContentSource>,
    ) {
        self.with_page(page_index, content, |page, pool| page.copy_range(from, len_bytes, source, pool));
    }

    /// Forgets every byte at or after `len_bytes` (they read as zeros if the device grows again).
    pub fn discard_from(&mut self, len_bytes: u64) {
        let first_whole = len_bytes.div_ceil(PAGE);
        let in_page = (len_bytes % PAGE) as usize;
        let (leaf, slot) = split(len_bytes / PAGE);
        if in_page != 0 && self.leaves.get(leaf).is_some_and(|l| l.as_ref().is_some_and(|l| l[slot].is_some())) {
            let zeros = [0u8; PAGE_BYTES];
            self.with_page(len_bytes / PAGE, None, |page, pool| page.write(in_page, &zeros[in_page..], pool));
        }
        let indices: Vec<u64> = self.page_indices().filter(|&index| index >= first_whole).collect();
        for index in indices {
            if let Some(old) = self.replace_page(index, None) {
                old.recycle(&mut self.pool);
            }
        }
    }

    /// A copy of every page (symbolic pages cost a few bytes; byte pages are copied), with an
    /// empty pool: the starting point of a crash state that leaves this store untouched.
    pub fn deep_clone(&self) -> SparseStore {
        let mut pool = PagePool::default();
        let leaves = self
            .leaves
            .iter()
            .map(|leaf| {
                leaf.as_ref().map(|leaf| {
                    let mut copy: Box<Leaf> = Box::new([const { None }; PAGES_PER_LEAF]);
                    for (to, from) in copy.iter_mut().zip(leaf.iter()) {
                        *to = from.as_ref().map(|page| page.clone_in(&mut pool));
                    }
                    copy
                })
            })
            .collect();
        SparseStore { leaves, pool }
    }

    /// Indices of written pages, ascending.
    pub fn page_indices(&self) -> impl Iterator<Item = u64> + '_ {
        self.leaves.iter().enumerate().flat_map(|(leaf_index, leaf)| {
            leaf.iter().flat_map(move |leaf| {
                leaf.iter()
                    .enumerate()
                    .filter(|(_, page)| page.is_some())
                    .map(move |(slot, _)| (leaf_index * PAGES_PER_LEAF + slot) as u64)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAF_BYTES: u64 = std::mem::size_of::<Leaf>() as u64;

    #[test]
    fn unwritten_reads_zero_and_writes_straddle_pages() {
        let mut store = SparseStore::new();
        let mut buf = vec![1u8; 10_000];
        store.read(5, &mut buf, None);
        assert!(buf.iter().all(|b| *b == 0));
        let data: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        store.write(4000, &data, None);
        assert_eq!(store.resident_bytes(), LEAF_BYTES + 4 * PAGE_BYTES as u64);
        let mut back = vec![0u8; 9000];
        store.read(4000, &mut back, None);
        assert_eq!(back, data);
        store.discard_from(8192 + 100);
        let mut tail = vec![9u8; 200];
        store.read(8192, &mut tail, None);
        assert_eq!(&tail[..100], &data[4192..4292]);
        assert!(tail[100..].iter().all(|b| *b == 0));
        assert_eq!(store.page_indices().collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn far_pages_cost_only_their_leaf() {
        let mut store = SparseStore::new();
        store.write(32 * 1024 * 1024 * 1024 - 4096, &[7u8; 4096], None);
        assert_eq!(store.resident_bytes(), LEAF_BYTES + 4096);
        assert_eq!(store.page_indices().count(), 1);
        assert!(store.replace_page(5, None).is_none());
    }

    #[test]
    fn copies_of_the_base_and_stamps_cost_no_page_memory() {
        use crate::disk::content::{ProceduralContent, fill_stamp};
        let mut store = SparseStore::new();
        let base = ProceduralContent { seed: 11 };
        // 64 MiB copied from the base, shifted by 3 sectors (as a compact image's chunk is).
        let mut chunk = vec![0u8; 1 << 20];
        for mib in 0..64u64 {
            base.fill(mib * (1 << 20) + 3 * 512, &mut chunk);
            store.write(mib << 20, &chunk, None);
        }
        // 1,000 scattered one-sector stamped writes.
        let mut sector = [0u8; 512];
        for i in 0..1000u64 {
            fill_stamp(5, i, i * 977, &mut sector);
            store.write(i * 977 * 512 % (64 << 20), &sector, None);
        }
        assert_eq!(store.byte_pages(), 0);
        let resident = store.resident_bytes();
        assert!(resident < (64 << 20) / 50, "{resident} bytes for 64 MiB of regenerable data");
        let mut back = vec![0u8; 1 << 20];
        store.read(5 << 20, &mut back, None);
        base.fill((5 << 20) + 3 * 512, &mut chunk);
        let differing = back.chunks(512).zip(chunk.chunks(512)).filter(|(a, b)| a != b).count();
        assert!(differing <= 20, "only the stamped sectors differ ({differing})");
    }
}
