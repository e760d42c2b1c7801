//! One 4 KiB page of a simulated disk, held as bytes or as symbols.
//!
//! Most sectors a run writes are content the world can regenerate from a few numbers: copies of
//! the procedural base image (copy-on-write, copy-on-read, prefetch), workload stamps, zeros.
//! [`PageData`] keeps such a page as eight [`Symbol`]s (or one symbol and a run of consecutive
//! sectors) and materialises bytes only for reads. Every write is recognised sector by sector:
//! a sector that matches no symbol exactly keeps the whole page as bytes. Recognition is exact
//! (every word compared), so a page reads back byte for byte what was written, whatever its form.
//!
//! Memory: a page that is a run costs nothing beyond its slot in the store (32 bytes); a page of
//! mixed symbols 192 bytes; a page of bytes 4 KiB.

use super::content::{
    BASE_SECTOR_MAGIC, SECTOR_BYTES_USIZE, STAMP_MAGIC, base_word, fill_base_sector, fill_stamp, is_base_sector,
    is_stamp, is_zero_sector,
};

/// Bytes per storage page.
pub const PAGE_BYTES: usize = 4096;
/// Sectors per storage page.
pub const SECTORS_PER_PAGE: usize = PAGE_BYTES / SECTOR_BYTES_USIZE;

/// One 4 KiB page of bytes.
pub type Page = [u8; PAGE_BYTES];

const KIND_SHIFT: u32 = 62;
const ID_MASK: u64 = (1 << KIND_SHIFT) - 1;
const KIND_ZERO: u64 = 0;
const KIND_BASE: u64 = 1;
const KIND_STAMP: u64 = 2;

/// What one 512-byte sector holds, as the numbers that regenerate it: zeros, procedural base
/// sector `sector` under `seed`, or the stamp of write `write_id` for `sector` under `seed`.
/// 24 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Symbol {
    /// Kind in the top two bits; the write id (stamps, below 2^62) in the rest.
    kind_id: u64,
    sector: u64,
    seed: u64,
}

impl Symbol {
    /// A sector of zeros.
    pub const ZERO: Symbol = Symbol { kind_id: KIND_ZERO << KIND_SHIFT, sector: 0, seed: 0 };

    /// Procedural base sector `sector` under `seed`.
    pub fn base(seed: u64, sector: u64) -> Symbol {
        Symbol { kind_id: KIND_BASE << KIND_SHIFT, sector, seed }
    }

    /// The stamp of `write_id` for `sector` under `seed`; `None` if `write_id` is 2^62 or more
    /// (such a sector stays bytes).
    pub fn stamp(seed: u64, write_id: u64, sector: u64) -> Option<Symbol> {
        (write_id <= ID_MASK).then_some(Symbol { kind_id: KIND_STAMP << KIND_SHIFT | write_id, sector, seed })
    }

    fn kind(self) -> u64 {
        self.kind_id >> KIND_SHIFT
    }

    /// The symbol of the sector `n` after this one in a run (zeros stay zeros).
    fn advance(self, n: u64) -> Symbol {
        if self.kind() == KIND_ZERO { self } else { Symbol { sector: self.sector.wrapping_add(n), ..self } }
    }

    /// Writes the sector's 512 bytes into `out`.
    pub fn fill(self, out: &mut [u8]) {
        debug_assert_eq!(out.len(), SECTOR_BYTES_USIZE);
        match self.kind() {
            KIND_ZERO => out.fill(0),
            KIND_BASE => fill_base_sector(self.seed, self.sector, out),
            _ => fill_stamp(self.seed, self.kind_id & ID_MASK, self.sector, out),
        }
    }

    /// The symbol whose sector is exactly `bytes` (512), if any. Exact: every word is compared.
    pub fn recognise(bytes: &[u8]) -> Option<Symbol> {
        debug_assert_eq!(bytes.len(), SECTOR_BYTES_USIZE);
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        if word(0) == BASE_SECTOR_MAGIC {
            let (sector, seed) = (word(1), word(2));
            if is_base_sector(seed, sector, bytes) {
                return Some(Symbol::base(seed, sector));
            }
        }
        if &bytes[16..24] == STAMP_MAGIC {
            let (write_id, sector, seed) = (word(0), word(1), word(3));
            if is_stamp(seed, write_id, sector, bytes) {
                return Symbol::stamp(seed, write_id, sector);
            }
        }
        if is_zero_sector(bytes) {
            return Some(Symbol::ZERO);
        }
        None
    }

    /// Folds the symbol into an FNV-style `hash` (the same for a sector however it is held).
    fn hash_into(self, hash: &mut u64) {
        for word in [self.kind_id, self.sector, self.seed] {
            *hash = (*hash ^ word).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The first word of the sector (a cheap look used by tests).
    pub fn first_word(self) -> u64 {
        match self.kind() {
            KIND_ZERO => 0,
            KIND_BASE => base_word(self.seed, self.sector, 0),
            _ => self.kind_id & ID_MASK,
        }
    }
}

/// The content of one page.
#[derive(Debug)]
pub enum PageData {
    /// Bytes that are not (all) regenerable.
    Bytes(Box<Page>),
    /// Sector `i` holds `first` advanced by `i` (consecutive base sectors, one write's stamps
    /// for consecutive sectors, zeros).
    Run(Symbol),
    /// Eight symbols.
    Sectors(Box<[Symbol; SECTORS_PER_PAGE]>),
}

fn whole_sectors(from: usize, len: usize) -> bool {
    from.is_multiple_of(SECTOR_BYTES_USIZE) && len.is_multiple_of(SECTOR_BYTES_USIZE)
}

impl PageData {
    /// A page of zeros.
    pub fn zero() -> PageData {
        PageData::Run(Symbol::ZERO)
    }

    /// The page's eight symbols, if it is symbolic.
    fn symbols(&self) -> Option<[Symbol; SECTORS_PER_PAGE]> {
        match self {
            PageData::Bytes(_) => None,
            PageData::Run(first) => Some(std::array::from_fn(|i| first.advance(i as u64))),
            PageData::Sectors(symbols) => Some(**symbols),
        }
    }

    /// The compact form of eight symbols.
    fn from_symbols(symbols: [Symbol; SECTORS_PER_PAGE]) -> PageData {
        let first = symbols[0];
        if symbols.iter().enumerate().all(|(i, s)| *s == first.advance(i as u64)) {
            PageData::Run(first)
        } else {
            PageData::Sectors(Box::new(symbols))
        }
    }

    /// The page holding `bytes`: symbolic when every sector is recognised, else a pooled copy.
    pub fn from_bytes(bytes: &Page, pool: &mut PagePool) -> PageData {
        let mut symbols = [Symbol::ZERO; SECTORS_PER_PAGE];
        for (i, sector) in bytes.chunks_exact(SECTOR_BYTES_USIZE).enumerate() {
            match Symbol::recognise(sector) {
                Some(symbol) => symbols[i] = symbol,
                None => return PageData::Bytes(pool.copy_of(bytes)),
            }
        }
        PageData::from_symbols(symbols)
    }

    /// Heap bytes this page holds beyond its slot.
    pub fn heap_bytes(&self) -> u64 {
        match self {
            PageData::Bytes(_) => PAGE_BYTES as u64,
            PageData::Run(_) => 0,
            PageData::Sectors(_) => std::mem::size_of::<[Symbol; SECTORS_PER_PAGE]>() as u64,
        }
    }

    /// True if the page is held as symbols.
    pub fn is_symbolic(&self) -> bool {
        !matches!(self, PageData::Bytes(_))
    }

    /// A copy (bytes through `pool`).
    pub fn clone_in(&self, pool: &mut PagePool) -> PageData {
        match self {
            PageData::Bytes(page) => PageData::Bytes(pool.copy_of(page)),
            PageData::Run(first) => PageData::Run(*first),
            PageData::Sectors(symbols) => PageData::Sectors(symbols.clone()),
        }
    }

    /// Copies `out.len()` bytes starting `from` bytes into the page into `out`.
    pub fn read(&self, from: usize, out: &mut [u8]) {
        debug_assert!(from + out.len() <= PAGE_BYTES);
        let symbols = match self {
            PageData::Bytes(page) => return out.copy_from_slice(&page[from..from + out.len()]),
            _ => self.symbols().expect("symbolic"),
        };
        let mut done = 0usize;
        while done < out.len() {
            let at = from + done;
            let (sector, in_sector) = (at / SECTOR_BYTES_USIZE, at % SECTOR_BYTES_USIZE);
            let n = (SECTOR_BYTES_USIZE - in_sector).min(out.len() - done);
            if n == SECTOR_BYTES_USIZE {
                symbols[sector].fill(&mut out[done..done + n]);
            } else {
                let mut whole = [0u8; SECTOR_BYTES_USIZE];
                symbols[sector].fill(&mut whole);
                out[done..done + n].copy_from_slice(&whole[in_sector..in_sector + n]);
            }
            done += n;
        }
    }

    /// The page as bytes (through `pool`).
    pub fn materialise(&self, pool: &mut PagePool) -> Box<Page> {
        let mut page = pool.take();
        self.read(0, &mut page[..]);
        page
    }

    /// Writes `data` `from` bytes into the page. Whole recognised sectors stay symbolic; anything
    /// else turns the page into bytes.
    pub fn write(&mut self, from: usize, data: &[u8], pool: &mut PagePool) {
        debug_assert!(from + data.len() <= PAGE_BYTES);
        if data.is_empty() {
            return;
        }
        if whole_sectors(from, data.len()) {
            let recognised: Option<Vec<Symbol>> =
                data.chunks_exact(SECTOR_BYTES_USIZE).map(Symbol::recognise).collect();
            if let Some(new) = recognised {
                self.put_symbols(from / SECTOR_BYTES_USIZE, &new, pool);
                return;
            }
        }
        self.make_bytes(pool)[from..from + data.len()].copy_from_slice(data);
    }

    /// Copies `len` bytes at `from` of `source` into the same place of this page.
    pub fn copy_range(&mut self, from: usize, len: usize, source: &PageData, pool: &mut PagePool) {
        debug_assert!(from + len <= PAGE_BYTES);
        if len == 0 {
            return;
        }
        if whole_sectors(from, len)
            && let Some(symbols) = source.symbols()
        {
            let (first, count) = (from / SECTOR_BYTES_USIZE, len / SECTOR_BYTES_USIZE);
            self.put_symbols(first, &symbols[first..first + count], pool);
            return;
        }
        let mut bytes = [0u8; PAGE_BYTES];
        source.read(from, &mut bytes[..len]);
        self.write(from, &bytes[..len], pool);
    }

    /// Sets sectors `first..first + new.len()` to `new`.
    fn put_symbols(&mut self, first: usize, new: &[Symbol], pool: &mut PagePool) {
        match self.symbols() {
            Some(mut symbols) => {
                symbols[first..first + new.len()].copy_from_slice(new);
                *self = PageData::from_symbols(symbols);
            }
            None => {
                let page = self.make_bytes(pool);
                for (i, symbol) in new.iter().enumerate() {
                    let at = (first + i) * SECTOR_BYTES_USIZE;
                    symbol.fill(&mut page[at..at + SECTOR_BYTES_USIZE]);
                }
                // A bytes page whose foreign sectors were all overwritten becomes symbolic again.
                let mut symbols = [Symbol::ZERO; SECTORS_PER_PAGE];
                let all = page
                    .chunks_exact(SECTOR_BYTES_USIZE)
                    .enumerate()
                    .all(|(i, sector)| Symbol::recognise(sector).map(|s| symbols[i] = s).is_some());
                if all {
                    let PageData::Bytes(old) = std::mem::replace(self, PageData::from_symbols(symbols)) else {
                        unreachable!("a page without symbols holds bytes")
                    };
                    pool.recycle(old);
                }
            }
        }
    }

    /// The page's bytes, materialising a symbolic page first.
    fn make_bytes(&mut self, pool: &mut PagePool) -> &mut Page {
        if self.is_symbolic() {
            *self = PageData::Bytes(self.materialise(pool));
        }
        match self {
            PageData::Bytes(page) => page,
            _ => unreachable!("just made bytes"),
        }
    }

    /// Returns the page's buffer, if any, to `pool`.
    pub fn recycle(self, pool: &mut PagePool) {
        if let PageData::Bytes(page) = self {
            pool.recycle(page);
        }
    }

    /// Folds the page's content into `hash`: the same content hashes the same whether it is held
    /// as bytes or symbols (bytes sectors are recognised first).
    pub fn hash_into(&self, hash: &mut u64) {
        match self.symbols() {
            Some(symbols) => symbols.iter().for_each(|s| s.hash_into(hash)),
            None => {
                let PageData::Bytes(page) = self else { unreachable!("a page without symbols holds bytes") };
                for sector in page.chunks_exact(SECTOR_BYTES_USIZE) {
                    match Symbol::recognise(sector) {
                        Some(symbol) => symbol.hash_into(hash),
                        None => {
                            for word in sector.chunks_exact(8) {
                                let word = u64::from_le_bytes(word.try_into().expect("8-byte chunk"));
                                *hash = (*hash ^ word).wrapping_mul(0x0100_0000_01b3);
                            }
                        }
                    }
                }
            }
        }
    }
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
                self.warm_next();
                page
            }
            // Built from a slice so the buffer is never zeroed first nor staged on the stack.
            None => bytes.to_vec().into_boxed_slice().try_into().expect("PAGE_BYTES long"),
        }
    }

    /// A page with unspecified content (the caller overwrites all of it).
    pub fn take(&mut self) -> Box<Page> {
        let page = self.free.pop();
        self.warm_next();
        page.unwrap_or_else(|| vec![0u8; PAGE_BYTES].into_boxed_slice().try_into().expect("PAGE_BYTES long"))
    }

    /// Hints the cache to fetch the buffer the next copy will fill: a recycled buffer was last
    /// touched when its page was written, long ago on a large device, and filling it cold costs
    /// a cache miss per line on the critical path; fetched now, the misses overlap the
    /// simulator's work until then (`fvdsim bench sim`, foreign data: 64 MiB 0.68-0.74 -> 0.95
    /// M writes/s, 1 GiB 0.64-0.68 -> 0.72-0.77).
    fn warm_next(&self) {
        if let Some(next) = self.free.last() {
            crate::hint::prefetch_bytes(&next[..]);
        }
    }

    /// Returns `page` for reuse.
    pub fn recycle(&mut self, page: Box<Page>) {
        if self.free.len() < Self::LIMIT {
            self.free.push(page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::content::ProceduralContent;

    fn stamped(seed: u64, write_id: u64, first_sector: u64, sectors: usize) -> Vec<u8> {
        let mut out = vec![0u8; sectors * SECTOR_BYTES_USIZE];
        fill_stamp(seed, write_id, first_sector, &mut out);
        out
    }

    #[test]
    fn regenerable_pages_are_held_as_symbols_and_read_back_exactly() {
        let mut pool = PagePool::default();
        let base = ProceduralContent { seed: 7 };
        let mut bytes = [0u8; PAGE_BYTES];
        crate::disk::content::ContentSource::fill(&base, 80 * 512, &mut bytes);
        let page = PageData::from_bytes(&bytes, &mut pool);
        assert!(matches!(page, PageData::Run(_)), "eight consecutive base sectors are one run");
        assert_eq!(page.heap_bytes(), 0);
        let mut back = [0u8; PAGE_BYTES];
        page.read(0, &mut back);
        assert_eq!(back, bytes);
        // A stamped sector in the middle: mixed symbols, still exact, partial reads too.
        let mut page = page;
        let stamp = stamped(3, 99, 1000, 1);
        page.write(1024, &stamp, &mut pool);
        assert!(matches!(page, PageData::Sectors(_)));
        bytes[1024..1536].copy_from_slice(&stamp);
        let mut piece = [0u8; 700];
        page.read(1000, &mut piece);
        assert_eq!(&piece[..], &bytes[1000..1700]);
        // A foreign byte turns it into bytes; overwriting that sector makes it symbolic again.
        page.write(2047, &[0xee], &mut pool);
        assert!(!page.is_symbolic());
        bytes[2047] = 0xee;
        let mut back = [0u8; PAGE_BYTES];
        page.read(0, &mut back);
        assert_eq!(back, bytes);
        let again = stamped(3, 100, 1001, 1);
        page.write(1536, &again, &mut pool);
        assert!(page.is_symbolic(), "no foreign sector is left");
        bytes[1536..2048].copy_from_slice(&again);
        page.read(0, &mut back);
        assert_eq!(back, bytes);
    }

    #[test]
    fn recognition_is_exact_and_hashes_agree_across_forms() {
        let mut pool = PagePool::default();
        let mut sector = stamped(5, 1, 2, 1);
        assert!(Symbol::recognise(&sector).is_some());
        sector[511] ^= 1;
        assert_eq!(Symbol::recognise(&sector), None, "one flipped bit is not the stamp");
        assert_eq!(Symbol::recognise(&[0u8; 512]), Some(Symbol::ZERO));
        let bytes: Page = stamped(5, 8, 16, 8).try_into().unwrap();
        let symbolic = PageData::from_bytes(&bytes, &mut pool);
        assert!(matches!(symbolic, PageData::Run(_)));
        let held_as_bytes = PageData::Bytes(Box::new(bytes));
        let (mut a, mut b) = (0u64, 0u64);
        symbolic.hash_into(&mut a);
        held_as_bytes.hash_into(&mut b);
        assert_eq!(a, b);
    }
}
