//! Sparse byte storage: only pages that were written take memory.
//!
//! A two-level radix table of 4 KiB pages (256 pages, 1 MiB, per leaf). Lookups are O(1) and
//! iteration is in address order, so hashing the whole image is deterministic. A 32 GiB device
//! costs 256 KiB of leaf pointers before anything is written.

use super::content::ContentSource;

/// Bytes per storage page.
pub const PAGE_BYTES: usize = 4096;
const PAGES_PER_LEAF: usize = 256;

/// One 4 KiB page.
pub type Page = [u8; PAGE_BYTES];

type Leaf = [Option<Box<Page>>; PAGES_PER_LEAF];

/// Sparse page storage with an optional read-only content source for pages never written.
#[derive(Default)]
pub struct SparseStore {
    leaves: Vec<Option<Box<Leaf>>>,
    resident_pages: u64,
}

impl std::fmt::Debug for SparseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseStore").field("resident_pages", &self.resident_pages).finish()
    }
}

fn split(page_index: u64) -> (usize, usize) {
    ((page_index / PAGES_PER_LEAF as u64) as usize, (page_index % PAGES_PER_LEAF as u64) as usize)
}

/// A fresh page holding what an unwritten page reads as: the content source's bytes, or zeros.
pub fn blank_page(page_index: u64, content: Option<&dyn ContentSource>) -> Box<Page> {
    let mut page: Box<Page> = vec![0u8; PAGE_BYTES].into_boxed_slice().try_into().expect("PAGE_BYTES long");
    if let Some(content) = content {
        content.fill(page_index * PAGE_BYTES as u64, &mut page[..]);
    }
    page
}

/// A heap copy of `page` (never staged on the stack).
pub fn copy_page(page: &Page) -> Box<Page> {
    // Built from a slice so the buffer is never zeroed first nor staged on the stack.
    page.to_vec().into_boxed_slice().try_into().expect("PAGE_BYTES long")
}

/// Recycles page buffers: the volatile cache frees a page per unflushed write at every flush, and
/// a 4 KiB `malloc`/`free` pair costs more than the copy it serves.
#[derive(Debug, Default)]
pub struct PagePool {
    free: Vec<Box<Page>>,
}

impl PagePool {
    /// Pages kept for reuse at most (16 MiB).
    pub const LIMIT: usize = 4096;

    /// A page holding a copy of `bytes`.
    pub fn copy_of(&mut self, bytes: &Page) -> Box<Page> {
        match self.free.pop() {
            Some(mut page) => {
                page.copy_from_slice(bytes);
                page
            }
            None => copy_page(bytes),
        }
    }

    /// Returns `page` for reuse.
    pub fn recycle(&mut self, page: Box<Page>) {
        if self.free.len() < Self::LIMIT {
            self.free.push(page);
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
        let in_page = (at % PAGE_BYTES as u64) as usize;
        let n = (PAGE_BYTES - in_page).min(len - done);
        let piece = (at / PAGE_BYTES as u64, in_page, done..done + n);
        done += n;
        Some(piece)
    })
}

impl SparseStore {
    /// An empty store.
    pub fn new() -> SparseStore {
        SparseStore::default()
    }

    /// Bytes of memory held by written pages.
    pub fn resident_bytes(&self) -> u64 {
        self.resident_pages * PAGE_BYTES as u64
    }

    /// The page at `page_index`, if it was ever written.
    pub fn page(&self, page_index: u64) -> Option<&Page> {
        let (leaf, slot) = split(page_index);
        self.leaves.get(leaf)?.as_ref()?[slot].as_deref()
    }

    /// The page at `page_index`, created from `content` (or zeros) if absent.
    pub fn page_mut(&mut self, page_index: u64, content: Option<&dyn ContentSource>) -> &mut Page {
        let (leaf, slot) = split(page_index);
        if self.leaves.len() <= leaf {
            self.leaves.resize_with(leaf + 1, || None);
        }
        let leaf = self.leaves[leaf].get_or_insert_with(|| Box::new([const { None }; PAGES_PER_LEAF]));
        if leaf[slot].is_none() {
            leaf[slot] = Some(blank_page(page_index, content));
            self.resident_pages += 1;
        }
        leaf[slot].as_deref_mut().expect("page was just inserted")
    }

    /// Replaces the page at `page_index` (None makes it unwritten again); returns the old one.
    pub fn replace_page(&mut self, page_index: u64, page: Option<Box<Page>>) -> Option<Box<Page>> {
        let (leaf_index, slot) = split(page_index);
        if page.is_none() && self.leaves.get(leaf_index).is_none_or(|l| l.is_none()) {
            return None;
        }
        if self.leaves.len() <= leaf_index {
            self.leaves.resize_with(leaf_index + 1, || None);
        }
        let leaf = self.leaves[leaf_index].get_or_insert_with(|| Box::new([const { None }; PAGES_PER_LEAF]));
        let added = u64::from(page.is_some());
        let old = std::mem::replace(&mut leaf[slot], page);
        self.resident_pages = self.resident_pages + added - u64::from(old.is_some());
        old
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`; unwritten bytes come from `content` or are
    /// zero.
    pub fn read(&self, offset: u64, buf: &mut [u8], content: Option<&dyn ContentSource>) {
        for (page_index, in_page, range) in page_pieces(offset, buf.len()) {
            let out = &mut buf[range.clone()];
            match self.page(page_index) {
                Some(page) => out.copy_from_slice(&page[in_page..in_page + range.len()]),
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
            self.page_mut(page_index, content)[in_page..in_page + range.len()].copy_from_slice(&data[range]);
        }
    }

    /// Forgets every byte at or after `len_bytes` (they read as zeros if the device grows again).
    pub fn discard_from(&mut self, len_bytes: u64) {
        let first_whole = len_bytes.div_ceil(PAGE_BYTES as u64);
        let in_page = (len_bytes % PAGE_BYTES as u64) as usize;
        let (leaf, slot) = split(len_bytes / PAGE_BYTES as u64);
        if in_page != 0
            && let Some(Some(leaf)) = self.leaves.get_mut(leaf)
            && let Some(page) = leaf[slot].as_mut()
        {
            page[in_page..].fill(0);
        }
        let indices: Vec<u64> = self.page_indices().filter(|&index| index >= first_whole).collect();
        for index in indices {
            self.replace_page(index, None);
        }
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

    #[test]
    fn unwritten_reads_zero_and_writes_straddle_pages() {
        let mut store = SparseStore::new();
        let mut buf = vec![1u8; 10_000];
        store.read(5, &mut buf, None);
        assert!(buf.iter().all(|b| *b == 0));
        let data: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        store.write(4000, &data, None);
        assert_eq!(store.resident_bytes(), 4 * PAGE_BYTES as u64);
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
        assert_eq!(store.resident_bytes(), 4096);
        assert_eq!(store.page_indices().count(), 1);
        assert!(store.replace_page(5, None).is_none());
    }
}
