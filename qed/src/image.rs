//! An open QED image: reads through the L1 and L2 tables, zero clusters and the backing file
//! (`docs/qed.md` §1.2).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use fvd_contract::{BlockDevice, Env, Progress, ProgressPoint};

use crate::format::{QedError, QedHeader, ZERO_CLUSTER, corrupt, table_entries};

/// L2 tables kept in memory at most (QEMU keeps 50: `MAX_L2_CACHE_SIZE`).
const L2_CACHE_TABLES: usize = 50;

/// Where one guest cluster's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Not in the image: the backing file's data, or zeros without one.
    Unallocated,
    /// A zero cluster (L2 entry 1): zeros, whatever the backing file holds.
    Zero,
    /// In the image at this byte offset.
    Data(u64),
}

/// An open QED image.
///
/// Writes follow QEMU's allocating-write order (`docs/qed.md` §2): clusters are appended at the
/// end of the file; without a backing file the header gets NEED_CHECK before the first allocating
/// write, then data, then a new L2 table, a flush, then the L1 entry; with a backing file data is
/// flushed before the L2 table and the L2 table before the L1 entry. Close flushes, clears
/// NEED_CHECK and flushes. Allocating writes are serialised by a lock, as QEMU serialises them;
/// writes to allocated clusters run concurrently with them.
pub struct QedImage {
    pub(crate) image: Rc<dyn BlockDevice>,
    pub(crate) backing: Option<Rc<dyn BlockDevice>>,
    pub(crate) header: RefCell<QedHeader>,
    pub(crate) writable: bool,
    /// End of the allocated clusters, bytes (the file's length rounded down to a cluster at open,
    /// as QEMU does): the next cluster is appended here.
    pub(crate) file_bytes: Cell<u64>,
    pub(crate) l1: RefCell<Vec<u64>>,
    pub(crate) l2_cache: RefCell<BTreeMap<u64, Rc<Vec<u64>>>>,
    pub(crate) allocating: fvd_contract::AsyncLock,
    /// Where named progress points are reported (the simulator crashes the world at them);
    /// `None` reports nothing.
    pub(crate) env: Option<Rc<dyn Env>>,
}

impl std::fmt::Debug for QedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QedImage").field("header", &self.header.borrow()).finish_non_exhaustive()
    }
}

pub(crate) fn io(what: &'static str) -> impl Fn(fvd_contract::DeviceError) -> QedError {
    move |source| QedError::Io { what, source }
}

impl QedImage {
    /// Reports `point` to the environment, if there is one.
    pub(crate) fn progress(&self, point: ProgressPoint, detail: u64) {
        if let Some(env) = &self.env {
            env.progress(Progress { point, detail });
        }
    }

    /// Opens `image` for reading, with `backing` as its backing file when the header names one.
    ///
    /// Errors: [`QedError::Corrupt`] for a header or L1 table that breaks a rule (named), a
    /// missing backing file, or [`QedError::Io`].
    pub async fn open(image: Rc<dyn BlockDevice>, backing: Option<Rc<dyn BlockDevice>>) -> Result<QedImage, QedError> {
        QedImage::open_with(image, backing, false, None).await
    }

    /// Opens `image` for reading and writing. An image whose NEED_CHECK bit is set (a crash
    /// during allocation) is checked and repaired first, as QEMU does.
    ///
    /// Errors: as [`QedImage::open`], and [`QedError::Corrupt`] for corruption the repair cannot
    /// fix (a cluster referenced twice).
    pub async fn open_writable(
        image: Rc<dyn BlockDevice>,
        backing: Option<Rc<dyn BlockDevice>>,
    ) -> Result<QedImage, QedError> {
        QedImage::open_with(image, backing, true, None).await
    }

    /// [`QedImage::open_writable`], reporting QED's named progress points (need-check written,
    /// L2 and L1 updates submitted) to `env`, where a simulation may crash the world.
    ///
    /// Errors: as [`QedImage::open_writable`].
    pub async fn open_writable_with_env(
        image: Rc<dyn BlockDevice>,
        backing: Option<Rc<dyn BlockDevice>>,
        env: Rc<dyn Env>,
    ) -> Result<QedImage, QedError> {
        QedImage::open_with(image, backing, true, Some(env)).await
    }

    async fn open_with(
        image: Rc<dyn BlockDevice>,
        backing: Option<Rc<dyn BlockDevice>>,
        writable: bool,
        env: Option<Rc<dyn Env>>,
    ) -> Result<QedImage, QedError> {
        let file_len = image.len_bytes();
        let mut bytes = vec![0u8; crate::format::HEADER_BYTES.min(file_len as usize)];
        image.read_at(0, &mut bytes).await.map_err(io("read header"))?;
        let header = QedHeader::decode(&bytes, file_len)?;
        if header.has_backing_file() && backing.is_none() {
            return Err(corrupt("features", format!("{:#x}", header.features), "names a backing file; none was given"));
        }
        // Bounded by the file's length (checked in decode).
        let mut l1_bytes = vec![0u8; header.table_bytes() as usize];
        image.read_at(header.l1_offset, &mut l1_bytes).await.map_err(io("read L1 table"))?;
        let l1 = table_entries(&l1_bytes);
        assert_eq!(l1.len() as u64, header.table_entries(), "an L1 table holds table_entries entries");
        let file_bytes = file_len / header.cluster_bytes * header.cluster_bytes;
        let needs_check = header.needs_check();
        let qed = QedImage {
            image,
            backing,
            header: RefCell::new(header),
            writable,
            file_bytes: Cell::new(file_bytes),
            l1: RefCell::new(l1),
            l2_cache: RefCell::new(BTreeMap::new()),
            allocating: fvd_contract::AsyncLock::new(),
            env,
        };
        if writable && needs_check {
            // Recovery after a crash during allocation: QEMU's check with fix (invalid entries
            // zeroed; NEED_CHECK cleared when nothing is left corrupt).
            let report = qed.check(true).await?;
            if !report.is_consistent() {
                return Err(corrupt(
                    "tables",
                    format!("{} corruption(s)", report.corruptions - report.corruptions_fixed),
                    format!("cannot be repaired: {}", report.messages.join("; ")),
                ));
            }
        }
        Ok(qed)
    }

    /// The header.
    pub fn header(&self) -> QedHeader {
        self.header.borrow().clone()
    }

    /// The backing file's name as the header records it (bytes, not NUL-terminated).
    ///
    /// Errors: [`QedError::Io`].
    pub async fn backing_name(&self) -> Result<Option<Vec<u8>>, QedError> {
        let header = self.header();
        if !header.has_backing_file() {
            return Ok(None);
        }
        let mut name = vec![0u8; header.backing_name_bytes as usize];
        self.image
            .read_at(u64::from(header.backing_name_offset), &mut name)
            .await
            .map_err(io("read backing file name"))?;
        Ok(Some(name))
    }

    /// Checks a table or cluster offset found in a table: aligned, after the header, and the
    /// `len` bytes there inside the file.
    pub(crate) fn check_offset(&self, what: &str, offset: u64, len: u64) -> Result<(), QedError> {
        let header = self.header.borrow();
        let header_end = header.header_clusters * header.cluster_bytes;
        let file_bytes = self.file_bytes.get();
        if !offset.is_multiple_of(header.cluster_bytes)
            || offset < header_end
            || offset.saturating_add(len) > file_bytes
        {
            return Err(corrupt(
                what,
                format!("{offset:#x}"),
                format!("must be cluster-aligned, after the header and within the {file_bytes}-byte file"),
            ));
        }
        Ok(())
    }

    pub(crate) async fn l2_table(&self, l1_index: u64) -> Result<Option<Rc<Vec<u64>>>, QedError> {
        let offset = self.l1.borrow()[l1_index as usize];
        if offset == 0 {
            return Ok(None);
        }
        if let Some(table) = self.l2_cache.borrow().get(&offset) {
            return Ok(Some(Rc::clone(table)));
        }
        let table_bytes = self.header.borrow().table_bytes();
        self.check_offset(&format!("L1[{l1_index}]"), offset, table_bytes)?;
        let mut bytes = vec![0u8; table_bytes as usize];
        self.image.read_at(offset, &mut bytes).await.map_err(io("read L2 table"))?;
        let table = Rc::new(table_entries(&bytes));
        self.cache_l2(offset, Rc::clone(&table));
        Ok(Some(table))
    }

    pub(crate) fn cache_l2(&self, offset: u64, table: Rc<Vec<u64>>) {
        let mut cache = self.l2_cache.borrow_mut();
        if cache.len() >= L2_CACHE_TABLES && !cache.contains_key(&offset) {
            let first = *cache.keys().next().expect("a full cache has a table");
            cache.remove(&first);
        }
        cache.insert(offset, table);
    }

    /// Where the guest cluster holding byte `offset` is.
    ///
    /// Errors: [`QedError::Corrupt`] for a table entry that breaks a rule (named), or
    /// [`QedError::Io`].
    pub async fn cluster_state(&self, offset: u64) -> Result<ClusterState, QedError> {
        let header = self.header();
        let (l1_index, l2_index, _) = header.split(offset);
        let Some(l2) = self.l2_table(l1_index).await? else { return Ok(ClusterState::Unallocated) };
        match l2[l2_index as usize] {
            0 => Ok(ClusterState::Unallocated),
            ZERO_CLUSTER => Ok(ClusterState::Zero),
            data => {
                self.check_offset(&format!("L2[{l1_index}][{l2_index}]"), data, header.cluster_bytes)?;
                Ok(ClusterState::Data(data))
            }
        }
    }

    /// Reads guest bytes at `offset` into `buf`.
    ///
    /// Errors: [`QedError::OutOfRange`], [`QedError::Corrupt`] for a table entry that breaks a
    /// rule, [`QedError::Io`].
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), QedError> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        let cluster_bytes = self.header.borrow().cluster_bytes;
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let in_cluster = at % cluster_bytes;
            let n = (cluster_bytes - in_cluster).min(len - done);
            let piece = &mut buf[done as usize..(done + n) as usize];
            match self.cluster_state(at).await? {
                ClusterState::Data(cluster) => {
                    self.image.read_at(cluster + in_cluster, piece).await.map_err(io("read data"))?
                }
                ClusterState::Zero => piece.fill(0),
                ClusterState::Unallocated => self.read_backing(at, piece).await?,
            }
            done += n;
        }
        Ok(())
    }

    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<(), QedError> {
        let image_bytes = self.header.borrow().image_bytes;
        if offset.checked_add(len).is_none_or(|end| end > image_bytes) {
            return Err(QedError::OutOfRange { offset_bytes: offset, len_bytes: len, image_bytes });
        }
        Ok(())
    }

    /// The backing file's bytes at `offset` (zeros beyond its end, or without one).
    pub(crate) async fn read_backing(&self, offset: u64, piece: &mut [u8]) -> Result<(), QedError> {
        piece.fill(0);
        let Some(backing) = &self.backing else { return Ok(()) };
        let available = backing.len_bytes().saturating_sub(offset).min(piece.len() as u64) as usize;
        if available > 0 {
            backing.read_at(offset, &mut piece[..available]).await.map_err(io("read backing file"))?;
        }
        Ok(())
    }
}
